"""The figures every benchmark writes with ``--json FILE``, and the one table of them all.

Each ``loadtests/bench_*.py`` writes a JSON list of :class:`Row` (one figure each: what it
measured, against what peer, against which target, met or not). ``bench_all.py`` runs them one
after another and prints :func:`render_text` (or :func:`render_markdown`) of every row, with
rows of its own for a benchmark it skipped (:func:`skipped`) or that failed
(:func:`outcome_rows`), and exits with :func:`exit_status`. Everything here is pure except
:func:`cpu_model` (reads ``/proc/cpuinfo``) and the two file functions.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MEASURED = "measured"
SKIPPED = "skipped"
ERROR = "error"
STATUSES = (MEASURED, SKIPPED, ERROR)
COLUMNS = ("bench", "figure", "value", "unit", "peer", "peer value", "ratio", "target", "result")


@dataclass(frozen=True)
class Row:
    """One figure of one benchmark. ``ratio`` is value / peer_value (a missing or zero peer
    value leaves it None); ``met`` is None when the figure has no target. A row of status
    ``skipped`` or ``error`` has no value and says why in ``note``."""

    bench: str
    figure: str
    value: float | None
    unit: str = ""
    peer: str | None = None
    peer_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    status: str = MEASURED
    note: str = ""

    @property
    def result(self) -> str:
        """The table's last column: ok / MISSED against the target, or why it was not run."""
        if self.status == SKIPPED:
            return f"skipped: {self.note}"
        if self.status == ERROR:
            return self.note
        verdict = {True: "ok", False: "MISSED", None: ""}[self.met]
        return f"{verdict} ({self.note})" if verdict and self.note else verdict or self.note


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def measured(
    bench: str,
    figure: str,
    value: float | None,
    unit: str = "",
    *,
    peer: str | None = None,
    peer_value: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
    met: bool | None = None,
    note: str = "",
) -> Row:
    """A measured figure; the ratio to the peer is computed unless given. A value that is not
    finite (a ratio over a zero gap) becomes None, spelled out in the note, so the JSON stays
    standard JSON."""
    if value is not None and not math.isfinite(value):
        note = f"{note}; value {value}" if note else f"value {value}"
        value = None
    peer_value = _finite(peer_value)
    if ratio is None and value is not None and peer_value:
        ratio = value / peer_value
    return Row(
        bench, figure, value, unit, peer, peer_value, _finite(ratio), target, met, MEASURED, note
    )


def skipped(bench: str, reason: str) -> Row:
    return Row(bench, "", None, status=SKIPPED, note=reason)


def errored(bench: str, note: str) -> Row:
    return Row(bench, "", None, status=ERROR, note=note)


# -- the JSON file ------------------------------------------------------------------------------


def row_to_dict(row: Row) -> dict[str, Any]:
    return asdict(row)


def row_from_dict(d: Any) -> Row:
    """The inverse of :func:`row_to_dict`; raises ValueError on anything else."""
    if not isinstance(d, dict):
        raise ValueError(f"a row must be an object, not {type(d).__name__}")
    names = {f.name for f in fields(Row)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown row keys {sorted(unknown)}")
    for key in ("bench", "figure", "value"):
        if key not in d:
            raise ValueError(f"a row needs {key!r}")

    def number(key: str) -> float | None:
        v = d.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"{key} must be a number or null, not {v!r}")
        return float(v)

    def text(key: str, optional: bool) -> str | None:
        v = d.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise ValueError(f"{key} must be a string, not {v!r}")
        return v

    met = d.get("met")
    if met is not None and not isinstance(met, bool):
        raise ValueError(f"met must be true, false or null, not {met!r}")
    status = d.get("status", MEASURED)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return Row(
        bench=str(text("bench", False)),
        figure=str(text("figure", False)),
        value=number("value"),
        unit=str(text("unit", False)) if "unit" in d else "",
        peer=text("peer", True),
        peer_value=number("peer_value"),
        ratio=number("ratio"),
        target=text("target", True),
        met=met,
        status=status,
        note=str(text("note", False)) if "note" in d else "",
    )


def dumps_rows(rows: Iterable[Row]) -> str:
    return json.dumps([row_to_dict(r) for r in rows], indent=1, allow_nan=False) + "\n"


def loads_rows(text: str) -> list[Row]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(doc, dict) and "rows" in doc:  # bench_all.py's own file: rows plus machine
        doc = doc["rows"]
    if not isinstance(doc, list):
        raise ValueError("expected a list of rows")
    return [row_from_dict(d) for d in doc]


def write_rows(path: Path | str, rows: Iterable[Row]) -> None:
    """Written to a temporary name and renamed: a reader never sees half a file."""
    path = Path(path)
    text = dumps_rows(rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_rows(path: Path | str) -> list[Row]:
    return loads_rows(Path(path).read_text(encoding="utf-8"))


# -- one benchmark's outcome -----------------------------------------------------------------


def outcome_rows(
    bench: str,
    exit_code: int | None,
    rows: Sequence[Row] | None,
    log: str,
    *,
    timeout: float | None = None,
) -> list[Row]:
    """What the table shows for a benchmark that ran: its rows when it finished (exit 0, or 2
    for a missed target), else one error row. ``exit_code`` None means it was stopped after
    ``timeout`` seconds; ``rows`` None means it wrote no JSON file."""
    if exit_code is None:
        return [errored(bench, f"error, timed out after {timeout or 0:g} s, see {log}")]
    if exit_code in (0, 2):
        if not rows:
            return [errored(bench, f"error, exit {exit_code} but no figures written, see {log}")]
        out = list(rows)
        if exit_code == 2 and not any(r.met is False for r in out):
            out.append(
                measured(bench, "its own verdict", None, target="exit status 0", met=False,
                         note=f"exit 2, see {log}")
            )  # fmt: skip
        return out
    if exit_code == 130 or exit_code < 0:
        return [errored(bench, f"error, interrupted (exit {exit_code}), see {log}")]
    return [errored(bench, f"error, exit {exit_code}, see {log}")]


def exit_status(rows: Iterable[Row]) -> int:
    """0 when every benchmark run met its targets (skipped ones do not count), 2 when a
    target was missed, 1 when a benchmark failed (which wins over a missed target)."""
    rows = list(rows)
    if any(r.status == ERROR for r in rows):
        return 1
    if any(r.status == MEASURED and r.met is False for r in rows):
        return 2
    return 0


def summary(rows: Iterable[Row]) -> str:
    rows = list(rows)
    benches = list(dict.fromkeys(r.bench for r in rows))
    failed = list(dict.fromkeys(r.bench for r in rows if r.status == ERROR))
    skipped_ = [b for b in benches if all(r.status == SKIPPED for r in rows if r.bench == b)]
    missed = Counter(r.bench for r in rows if r.status == MEASURED and r.met is False)
    run = len(benches) - len(skipped_)
    parts = [f"{run} of {len(benches)} benchmarks run"]
    if skipped_:
        parts.append(f"skipped: {', '.join(skipped_)}")
    head = "; ".join(parts)
    status = exit_status(rows)
    if status == 1:
        return f"result: ERRORS in {', '.join(failed)} ({head})"
    if status == 2:
        where = ", ".join(f"{b} {n}" for b, n in missed.items())
        total = sum(missed.values())
        return f"result: {total} target{'s' if total > 1 else ''} MISSED: {where} ({head})"
    if run == 0:
        return f"result: nothing measured ({head})"
    return f"result: every target met ({head})"


# -- the table -----------------------------------------------------------------------------------


def fmt_number(x: float | None) -> str:
    """A figure for the table: whole from 100 up (thousands separated) and whole numbers
    without decimals; four significant digits below 100, three below 1."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 100 or (x == int(x) and a < 1e15):
        return f"{x:,.0f}"
    if a >= 1:
        return f"{x:.4g}"
    return f"{x:.3g}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def cells(row: Row) -> list[str]:
    if row.status != MEASURED:
        return [row.bench, row.figure or "-", "-", "", "", "", "", "", row.result]
    return [
        row.bench,
        row.figure,
        fmt_number(row.value),
        row.unit,
        row.peer or "",
        fmt_number(row.peer_value) if row.peer else "",
        fmt_ratio(row.ratio) if row.peer else "",
        row.target or "",
        row.result,
    ]


RIGHT = {2, 5, 6}  # value, peer value, ratio


def render_text(rows: Sequence[Row], header: Sequence[str] = ()) -> str:
    """Fixed-width columns, a rule under the head, the header lines above and the summary
    below."""
    body = [cells(r) for r in rows]
    # A list, not max(a, *b): max(a) of one int fails when there is no row at all.
    widths = [max([len(c), *(len(b[i]) for b in body)]) for i, c in enumerate(COLUMNS)]

    def line(cs: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in RIGHT else c.ljust(w)
            for i, (c, w) in enumerate(zip(cs, widths, strict=True))
        ).rstrip()

    out = list(header)
    if header:
        out.append("")
    out.append(line(COLUMNS))
    out.append("  ".join("-" * w for w in widths))
    out += [line(b) for b in body]
    out += ["", summary(rows)]
    return "\n".join(out) + "\n"


def _md(cell: str) -> str:
    return cell.replace("\\", "\\\\").replace("|", "\\|")


def render_markdown(rows: Sequence[Row], header: Sequence[str] = ()) -> str:
    """A GitHub table: the header lines as text above it, the summary below."""
    out = [_md(h) for h in header]
    if header:
        out.append("")
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---:" if i in RIGHT else "---" for i in range(len(COLUMNS))) + "|")
    out += ["| " + " | ".join(_md(c) for c in cells(r)) + " |" for r in rows]
    out += ["", _md(summary(rows))]
    return "\n".join(out) + "\n"


# -- the machine ---------------------------------------------------------------------------------


def parse_cpu_model(cpuinfo: str, fallback: str) -> str:
    """The model name and family of the first processor of a ``/proc/cpuinfo`` text."""
    info: dict[str, str] = {}
    for row in cpuinfo.splitlines():
        key, sep, value = row.partition(":")
        if not sep:
            break  # the end of the first processor's block
        info.setdefault(key.strip(), value.strip())
    name = info.get("model name", fallback)
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def cpu_model() -> str:
    """The CPU's model name and family (from /proc/cpuinfo), or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    return parse_cpu_model(text, platform.machine())


def machine_line() -> str:
    return f"machine: {cpu_model()}, {os.cpu_count()} cores"
