"""The local fleet as a subprocess: ``python -m fleet run --config conf/fleet.yaml`` on free
ports and a temporary data directory, its output read line by line, waited for by what it
prints (never by sleeping), stopped with a signal. Shared by tests/test_fleet.py (which tests
the fleet itself), the browser player tests and the locust smoke runs (tests/test_locust.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .conftest import ROOT, subprocess_env

FLEET_YAML = ROOT / "conf" / "fleet.yaml"
# A short, small sample: the ingest dominates the first start.
SMALL_SAMPLE = (
    "sample.duration=4",
    "sample.size=320x180",
    "sample.fps=15",
    "sample.preset=ultrafast",
    "sample.segment_seconds=2",
    "sample.ladder=[{name: 180p, height: 180, video_kbps: 300, audio_kbps: 64}]",
)


class FleetProcess:
    """``python -m fleet run`` as a subprocess; stdout and stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        self._eof = 0
        assert proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()
        self._pumps = [
            loop.create_task(self._pump(proc.stdout, self.out)),
            loop.create_task(self._pump(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, cwd: Path, *args: str) -> FleetProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet", "run", "--config", str(FLEET_YAML), *args,
            env=subprocess_env(), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def _pump(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        async for raw in stream:
            into.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._eof += 1
        self._changed.set()

    @property
    def text(self) -> str:
        return "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err)

    async def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first stdout line matching ``pattern``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    for line in self.out:
                        if m := re.search(pattern, line):
                            return m
                    if self._eof == 2:
                        raise AssertionError(f"fleet exited before {pattern!r}:\n{self.text}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text}") from None

    async def exit_code(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._pumps)
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(*self._pumps)


def free_ports() -> list[str]:
    """--set overrides giving every service a free port on its own address."""
    wanted = [
        ("origin.listen", "127.0.0.1"),
        ("control.listen", "127.0.0.1"),
        ("steering.listen", "127.0.0.1"),
    ]
    for i, host in ((1, "127.0.0.11"), (2, "127.0.0.12"), (3, "127.0.0.13")):
        wanted += [(f"edges.e{i}.listen", host), (f"edges.e{i}.admin", host)]
    socks = []
    out = []
    try:
        for key, host in wanted:  # all held until all are chosen: no port handed out twice
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
            out.append(f"{key}={host}:{s.getsockname()[1]}")
    finally:
        for s in socks:
            s.close()
    return out


@asynccontextmanager
async def started_fleet(
    tmp: Path, overrides: Sequence[str] = SMALL_SAMPLE, *, ready_timeout: float = 90
) -> AsyncIterator[tuple[FleetProcess, dict[str, Any]]]:
    """conf/fleet.yaml on free ports, data under ``tmp``/data, with ``overrides`` (--set
    items; the small sample by default): the fleet and its fleet.json once it printed that it
    is ready; SIGTERM and its exit after."""
    data = tmp / "data"
    args = ["--data", str(data)]
    for kv in [*free_ports(), *overrides, "stop_timeout=5s"]:
        args += ["--set", kv]
    fleet = await FleetProcess.start(tmp, *args)
    try:
        await fleet.wait_for(r"^fleet ready in ([\d.]+) s$", ready_timeout)
        yield fleet, json.loads((data / "fleet.json").read_text())
    finally:
        if fleet.proc.returncode is None:
            fleet.proc.send_signal(signal.SIGTERM)
            try:
                await fleet.exit_code(20)
            except TimeoutError:
                pass
        await fleet.close()
