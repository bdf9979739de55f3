"""The benchmarks' common rows and table (loadtests/results.py), and loadtests/bench_all.py run
for real on the fast pure benchmarks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.results import (
    ERROR,
    MEASURED,
    Row,
    dumps_rows,
    errored,
    exit_status,
    fmt_number,
    fmt_ratio,
    loads_rows,
    measured,
    outcome_rows,
    parse_cpu_model,
    read_rows,
    render_markdown,
    render_text,
    row_from_dict,
    skipped,
    summary,
    write_rows,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_ALL = ROOT / "loadtests" / "bench_all.py"

OK = measured("edge", "2 MiB objects", 1200.0, "req/s", peer="nginx", peer_value=1000.0,
              target=">= 1.0x nginx", met=True)  # fmt: skip
MISSED = measured("fill", "gap closed, 20%", 0.45, target=">= 0.5", met=False)
PLAIN = measured("steering", "decisions, 10 edges", 12345.6, "req/s")
SKIP = skipped("origin", "nginx not on PATH")
ERR = errored("control", "error, exit 1, see /tmp/x/control.log")


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (None, "-"),
        (0.0, "0"),
        (3.0, "3"),
        (1.0057, "1.006"),
        (24.567, "24.57"),
        (99.99, "99.99"),
        (100.4, "100"),
        (1234.6, "1,235"),
        (2_500_000.0, "2,500,000"),
        (0.5, "0.5"),
        (0.07794, "0.0779"),
        (-3.25, "-3.25"),
        (math.inf, "inf"),
    ],
)
def test_fmt_number(x: float | None, text: str) -> None:
    assert fmt_number(x) == text


@pytest.mark.parametrize(("x", "text"), [(None, "-"), (0.8234, "0.82x"), (2.0, "2.00x")])
def test_fmt_ratio(x: float | None, text: str) -> None:
    assert fmt_ratio(x) == text


@pytest.mark.parametrize(
    ("value", "peer_value", "given", "ratio"),
    [
        (1200.0, 1000.0, None, 1.2),  # computed: value / peer
        (1200.0, None, None, None),  # no peer
        (1200.0, 0.0, None, None),  # a zero peer gives no ratio, not a division error
        (None, 1000.0, None, None),  # no value
        (0.25, 0.1, 2.5, 2.5),  # given (recommend's lift)
        (1.0, 4.0, math.inf, None),  # not finite: dropped
    ],
)
def test_measured_ratio(
    value: float | None, peer_value: float | None, given: float | None, ratio: float | None
) -> None:
    row = measured("b", "f", value, peer="p", peer_value=peer_value, ratio=given)
    assert row.ratio == (pytest.approx(ratio) if ratio is not None else None)
    assert row.status == MEASURED


def test_a_value_that_is_not_finite_becomes_none_and_a_note() -> None:
    row = measured("fill", "gap closed", math.inf, target=">= 0.5", met=True)
    assert row.value is None and row.note == "value inf" and row.met is True
    json.loads(dumps_rows([row]))  # still standard JSON


@pytest.mark.parametrize(
    ("row", "result"),
    [
        (OK, "ok"),
        (MISSED, "MISSED"),
        (PLAIN, ""),
        (measured("b", "f", 1.0, met=False, note="byte hit 0.6"), "MISSED (byte hit 0.6)"),
        (measured("b", "f", 1.0, note="just a note"), "just a note"),
        (SKIP, "skipped: nginx not on PATH"),
        (ERR, "error, exit 1, see /tmp/x/control.log"),
    ],
)
def test_result_column(row: Row, result: str) -> None:
    assert row.result == result


# -- one benchmark's outcome and the exit status ------------------------------------------------


def test_outcome_rows() -> None:
    log = "/tmp/l/edge.log"
    cases: list[tuple[int | None, list[Row] | None, list[tuple[str, bool | None, str]]]] = [
        # (exit code, rows written, expected (status, met, result) per row)
        (0, [OK, PLAIN], [(MEASURED, True, "ok"), (MEASURED, None, "")]),
        (2, [OK, MISSED], [(MEASURED, True, "ok"), (MEASURED, False, "MISSED")]),
        # exit 2 although no row says so: its own verdict becomes a MISSED row
        (2, [OK], [(MEASURED, True, "ok"), (MEASURED, False, f"MISSED (exit 2, see {log})")]),
        (0, None, [(ERROR, None, f"error, exit 0 but no figures written, see {log}")]),
        (0, [], [(ERROR, None, f"error, exit 0 but no figures written, see {log}")]),
        (1, [OK], [(ERROR, None, f"error, exit 1, see {log}")]),  # figures of a failed run: out
        (3, None, [(ERROR, None, f"error, exit 3, see {log}")]),
        (130, None, [(ERROR, None, f"error, interrupted (exit 130), see {log}")]),
        (-9, None, [(ERROR, None, f"error, interrupted (exit -9), see {log}")]),
        (None, None, [(ERROR, None, f"error, timed out after 900 s, see {log}")]),
    ]
    for code, rows, want in cases:
        got = outcome_rows("edge", code, rows, log, timeout=900)
        assert [(r.status, r.met, r.result) for r in got] == want, (code, rows)
        assert all(r.bench == "edge" for r in got if r not in (rows or []))


@pytest.mark.parametrize(
    ("rows", "status"),
    [
        ([], 0),
        ([OK, PLAIN], 0),
        ([OK, SKIP], 0),  # skipped benchmarks do not count
        ([SKIP], 0),
        ([OK, MISSED], 2),
        ([MISSED, SKIP], 2),
        ([OK, ERR], 1),
        ([MISSED, ERR], 1),  # an error wins over a missed target
    ],
)
def test_exit_status(rows: list[Row], status: int) -> None:
    assert exit_status(rows) == status


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        ([OK, PLAIN], "result: every target met (2 of 2 benchmarks run)"),
        ([OK, SKIP], "result: every target met (1 of 2 benchmarks run; skipped: origin)"),
        ([SKIP], "result: nothing measured (0 of 1 benchmarks run; skipped: origin)"),
        ([OK, MISSED], "result: 1 target MISSED: fill 1 (2 of 2 benchmarks run)"),
        (
            [MISSED, MISSED, OK, replace(OK, met=False)],
            "result: 3 targets MISSED: fill 2, edge 1 (2 of 2 benchmarks run)",
        ),
        ([MISSED, ERR, SKIP], "result: ERRORS in control (2 of 3 benchmarks run; skipped: origin)"),
        # a benchmark with one backend skipped still ran
        ([PLAIN, skipped("steering", "x")], "result: every target met (1 of 1 benchmarks run)"),
    ],
)
def test_summary(rows: list[Row], text: str) -> None:
    assert summary(rows) == text


# -- the JSON file ------------------------------------------------------------------------------


def test_rows_round_trip_through_a_file(tmp_path: Path) -> None:
    rows = [OK, MISSED, PLAIN, SKIP, ERR, measured("fill", "x", math.nan)]
    path = tmp_path / "rows.json"
    write_rows(path, rows)
    assert read_rows(path) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]  # no temporary left
    doc = json.loads(path.read_text())
    assert doc[0] == {
        "bench": "edge", "figure": "2 MiB objects", "value": 1200.0, "unit": "req/s",
        "peer": "nginx", "peer_value": 1000.0, "ratio": 1.2, "target": ">= 1.0x nginx",
        "met": True, "status": "measured", "note": "",
    }  # fmt: skip


def test_bench_alls_own_file_reads_too() -> None:
    doc = {"machine": {"cpu": "x", "cores": 2}, "rows": json.loads(dumps_rows([OK, SKIP]))}
    assert loads_rows(json.dumps(doc)) == [OK, SKIP]


def test_the_shape_of_the_issue_reads() -> None:
    minimal = {"bench": "edge", "figure": "hit 2 MiB req/s", "value": 1234.5, "unit": "req/s",
               "peer": "nginx", "peer_value": 1500, "ratio": 0.82, "target": ">= 0.8x nginx",
               "met": True}  # fmt: skip
    row = row_from_dict(minimal)
    assert row.peer_value == 1500.0 and row.status == MEASURED and row.note == ""


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ('{"a": 1}', "expected a list of rows"),
        ("[1]", "a row must be an object"),
        ('[{"bench": "b", "figure": "f"}]', "a row needs 'value'"),
        ('[{"bench": "b", "figure": "f", "value": "12"}]', "value must be a number"),
        ('[{"bench": "b", "figure": "f", "value": true}]', "value must be a number"),
        ('[{"bench": "b", "figure": "f", "value": 1, "met": "yes"}]', "met must be"),
        ('[{"bench": "b", "figure": "f", "value": 1, "status": "odd"}]', "status must be"),
        ('[{"bench": "b", "figure": "f", "value": 1, "colour": 1}]', "unknown row keys"),
        ('[{"bench": 3, "figure": "f", "value": 1}]', "bench must be a string"),
    ],
)
def test_bad_files_are_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        loads_rows(text)


# -- the table ----------------------------------------------------------------------------------


def test_render_text() -> None:
    out = render_text([OK, MISSED, PLAIN, SKIP, ERR], ["machine: a CPU, 2 cores"])
    assert out == (
        "machine: a CPU, 2 cores\n"
        "\n"
        "bench     figure                value  unit   peer   peer value  ratio  target"
        "         result\n"
        "--------  -------------------  ------  -----  -----  ----------  -----  -------------"
        "  -------------------------------------\n"
        "edge      2 MiB objects         1,200  req/s  nginx       1,000  1.20x  >= 1.0x nginx"
        "  ok\n"
        "fill      gap closed, 20%        0.45                                   >= 0.5"
        "         MISSED\n"
        "steering  decisions, 10 edges  12,346  req/s\n"
        "origin    -                         -                                                "
        "  skipped: nginx not on PATH\n"
        "control   -                         -                                                "
        "  error, exit 1, see /tmp/x/control.log\n"
        "\n"
        "result: ERRORS in control (4 of 5 benchmarks run; skipped: origin)\n"
    )


def test_render_markdown_escapes_pipes() -> None:
    row = measured("b", "a|b", 2.0, "x", target="< 3")
    out = render_markdown([row], ["cpu: x|y"])
    assert out.splitlines() == [
        "cpu: x\\|y",
        "",
        "| bench | figure | value | unit | peer | peer value | ratio | target | result |",
        "|---|---|---:|---|---|---:|---:|---|---|",
        "| b | a\\|b | 2 | x |  |  |  | < 3 |  |",
        "",
        "result: every target met (1 of 1 benchmarks run)",
    ]


@pytest.mark.parametrize(
    ("cpuinfo", "model"),
    [
        (
            "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: other\n",
            "AMD EPYC (family 25 model 17)",
        ),
        ("processor\t: 0\nCPU implementer\t: 0x41\n\n", "aarch64 (family ? model ?)"),
        ("", "aarch64 (family ? model ?)"),
    ],
)
def test_parse_cpu_model(cpuinfo: str, model: str) -> None:
    assert parse_cpu_model(cpuinfo, "aarch64") == model


# -- bench_all.py for real ----------------------------------------------------------------------


def run_all(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 100
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH_ALL), "--log-dir", str(tmp_path / "logs"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_all_runs_the_pure_benchmarks(tmp_path: Path) -> None:
    names = ["ring", "index", "recommend", "search"]
    out_json = tmp_path / "all.json"
    proc = run_all(tmp_path, "--only", ",".join(names), "--quick", "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "machine: " in out and f"{os.cpu_count()} cores" in out
    assert "result: every target met (4 of 4 benchmarks run)" in out
    table = out[out.index("\nbench ") :].splitlines()
    for name in names:
        lines = [ln for ln in table if ln.split()[:1] == [name]]
        assert lines, (name, out)
        assert any(" ok" in ln for ln in lines), (name, out)  # every one has a target

    doc = json.loads(out_json.read_text())
    assert doc["quick"] is True and doc["machine"]["cores"] == os.cpu_count()
    rows = loads_rows(out_json.read_text())
    assert {r.bench for r in rows} == set(names)
    for r in rows:
        assert r.status == MEASURED and r.value is not None and math.isfinite(r.value), r
    assert all(r.met is not False for r in rows)
    assert [b["bench"] for b in doc["benches"]] == ["index", "ring", "search", "recommend"]
    for b in doc["benches"]:
        assert b["exit"] == 0 and Path(b["log"]).stat().st_size > 0
    assert str(tmp_path / "logs") in out


def test_bench_all_skips_what_cannot_run(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()  # a PATH with neither nginx nor wrk
    proc = run_all(
        tmp_path, "--only", "edge,origin,steering", env={**os.environ, "PATH": str(empty)}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("skipped: nginx and wrk not on PATH") == 2 * 2  # progress + table
    assert proc.stdout.count("skipped: wrk not on PATH") == 2
    assert "result: nothing measured (0 of 3 benchmarks run; skipped: edge, origin, steering)" in (
        proc.stdout
    )


def test_bench_all_reports_a_benchmark_stopped_at_its_timeout(tmp_path: Path) -> None:
    proc = run_all(tmp_path, "--only", "fill", "--timeout", "0.5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    log = tmp_path / "logs" / "fill.log"
    assert f"error, timed out after 0.5 s, see {log}" in proc.stdout
    assert "result: ERRORS in fill" in proc.stdout
    assert log.read_text().startswith("$ ")


def test_bench_all_refuses_an_unknown_name(tmp_path: Path) -> None:
    proc = run_all(tmp_path, "--only", "ring,nope")
    assert proc.returncode == 1
    assert "unknown benchmark nope" in proc.stderr


def test_render_text_without_rows() -> None:
    """No row at all (nothing selected, or an interrupt before the first) is still a table."""
    out = render_text([], ["machine: a CPU, 2 cores"])
    assert out.splitlines()[2].split() == ["bench", "figure", "value", "unit", "peer", "peer",
                                           "value", "ratio", "target", "result"]  # fmt: skip
    assert out.endswith("result: nothing measured (0 of 0 benchmarks run)\n")


def test_bench_all_refuses_a_selection_that_leaves_nothing(tmp_path: Path) -> None:
    proc = run_all(tmp_path, "--only", "ring", "--skip", "ring")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "--only and --skip leave no benchmark to run" in proc.stderr
