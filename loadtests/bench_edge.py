#!/usr/bin/env python3
"""Hit-path benchmark of the edge against nginx serving the same files.

Run by hand (it is not a test and nothing imports it)::

    .venv/bin/python loadtests/bench_edge.py            # full run, ~3 minutes
    .venv/bin/python loadtests/bench_edge.py --quick    # short smoke run
    .venv/bin/python loadtests/bench_edge.py --aiohttp-baseline -d 20 -c 64

It needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install nginx-light wrk``).
Everything listens on 127.0.0.1 only and lives in one temporary directory:

1. origin files: N objects of 2 MiB and M large objects (default 32 MiB) of random bytes;
2. nginx (1 worker, sendfile, tcp_nopush, open_file_cache, no access log) on that directory;
3. the edge (1 process, no access log) with that directory as ``file://`` origin and an
   empty cache, warmed by fetching every object in full (bodies compared with the files),
   then checked through ``/metrics`` and ``X-Cache`` to answer from cache;
4. wrk against nginx, then the edge (never both at once), same threads/connections/duration,
   per scenario: a short verification run whose Lua ``response`` callback checks every
   status and body length, then the measured run (wrk's own status>=400 and socket error
   counters plus a bytes-per-response check);
5. the table of req/s and MB/s, edge/nginx ratios against targets, and the edge's peak RSS.

Exit status: 0 all good, 1 errors (non-2xx, socket errors, wrong sizes, a server died),
2 a throughput target missed.  See loadtests/README.md for what the figures mean.
``--json FILE`` writes the figures against nginx as rows (loadtests/results.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from results import Row, measured, write_rows

HOST = "127.0.0.1"  # the only address this script ever talks to or listens on
MiB = 1 << 20
SMALL_SIZE = 2 * MiB
RANGE_LEN = 64 * 1024
REPO = Path(__file__).resolve().parent.parent
PREFIX = "/v/bench"

# -- process bookkeeping --------------------------------------------------------------------


class Proc:
    """A child in its own session (Ctrl-C reaches only us; we stop it ourselves)."""

    live: list[Proc] = []

    def __init__(self, name: str, argv: list[str], log_path: Path, **kw: object) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,  # type: ignore[arg-type]
        )
        Proc.live.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 15.0) -> int | None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                # Still running, so the process group (== its pid) is certainly ours.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.p.wait(5)
        self._log.close()
        with contextlib.suppress(ValueError):
            Proc.live.remove(self)
        return self.p.returncode


def stop_all() -> None:
    for proc in reversed(list(Proc.live)):
        proc.stop()


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_http(proc: Proc, port: int, path: str, want: int = 200, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}; see {proc.log_path}")
        try:
            status, _, _ = http_get(port, path, timeout=2.0)
            if status == want:
                return
            if status < 500:
                raise RuntimeError(f"{proc.name}: GET {path} answered {status}, not {want}")
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer on {HOST}:{port} within {timeout:.0f}s")


def proc_tree(pid: int) -> list[int]:
    pids = [pid]
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    pids.extend(proc_tree(int(c)))
    return pids


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]  # idle + iowait
    total = sum(v[:8])  # guest time is already in user
    return (total - idle) / tick, total / tick


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait until processes outside this benchmark use less than ``limit`` cores; returns
    the last reading (the benchmark's own servers are idle between runs)."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        b0, _ = machine_busy()
        time.sleep(1.0)
        b1, _ = machine_busy()
        busy = b1 - b0
        if busy < limit or time.monotonic() >= deadline:
            if busy >= limit:
                print(f"    note: machine still busy ({busy:.2f} cores used by other processes)")
            return busy
        if not warned:
            print(f"    waiting for a quiet machine ({busy:.2f} cores busy elsewhere) ...")
            warned = True


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM etc. in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k.startswith("Vm") and v.strip().endswith("kB"):
                out[k] = int(v.split()[0]) * 1024
    return out


# -- origin data ----------------------------------------------------------------------------


@dataclass
class Dataset:
    root: Path
    small: int
    large: int
    large_size: int

    def small_path(self, i: int) -> str:
        return f"{PREFIX}/obj{i}.m4s"

    def large_path(self, i: int) -> str:
        return f"{PREFIX}/big{i}.mp4"

    def file(self, url_path: str) -> Path:
        return self.root / url_path.lstrip("/")

    @property
    def total_bytes(self) -> int:
        return self.small * SMALL_SIZE + self.large * self.large_size


def make_dataset(root: Path, small: int, large: int, large_size: int) -> Dataset:
    ds = Dataset(root, small, large, large_size)
    d = root / PREFIX.lstrip("/")
    d.mkdir(parents=True)
    # nginx workers may run as nobody: everything down to the files must be readable.
    os.chmod(root.parent, 0o755)
    os.chmod(root, 0o755)
    os.chmod(root / "v", 0o755)
    os.chmod(d, 0o755)
    jobs = [(ds.small_path(i), SMALL_SIZE) for i in range(small)]
    jobs += [(ds.large_path(i), large_size) for i in range(large)]

    def write(job: tuple[str, int]) -> None:
        p, size = job
        with open(ds.file(p), "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
        os.chmod(ds.file(p), 0o644)

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(write, jobs))
    os.sync()  # no writeback of gigabytes of dirty pages during the measurements
    return ds


# -- servers --------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush {nopush};
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    open_file_cache max=10000 inactive=120s;
    open_file_cache_valid 120s;
    open_file_cache_errors on;
    default_type application/octet-stream;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port} backlog=1024;
        server_name bench;
        root {root};
        location / {{ }}
    }}
}}
"""


def start_nginx(tmp: Path, ds: Dataset, port: int, nopush: str) -> Proc:
    d = tmp / "nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=d, host=HOST, port=port, root=ds.root, nopush=nopush))
    argv = [
        shutil.which("nginx") or "nginx",
        "-p",
        f"{d}/",
        "-c",
        str(conf),
        "-e",
        f"{d}/error.log",
    ]
    proc = Proc("nginx", argv, d / "stdout.log")
    wait_http(proc, port, ds.small_path(0))
    return proc


AIOHTTP_SERVER = '''\
"""Plain aiohttp + uvloop static server: a reference point, not the edge."""
import asyncio, os, sys
import uvloop
from aiohttp import web

ROOT = os.path.realpath(sys.argv[1])
PORT = int(sys.argv[2])


async def handle(request):
    full = os.path.realpath(os.path.join(ROOT, request.match_info["tail"]))
    if not full.startswith(ROOT + "/") or not os.path.isfile(full):
        raise web.HTTPNotFound()
    return web.FileResponse(full)


async def main():
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT, backlog=1024).start()
    await asyncio.Event().wait()


uvloop.run(main())
'''


def start_aiohttp(tmp: Path, ds: Dataset, port: int) -> Proc:
    d = tmp / "aiohttp"
    d.mkdir()
    mod = d / "static_server.py"
    mod.write_text(AIOHTTP_SERVER)
    proc = Proc("aiohttp", [sys.executable, str(mod), str(ds.root), str(port)], d / "stderr.log")
    wait_http(proc, port, ds.small_path(0))
    return proc


def start_edge(tmp: Path, ds: Dataset, port: int, admin_port: int, cache_size: str) -> Proc:
    d = tmp / "edge"
    (d / "cache").mkdir(parents=True)
    cfg = d / "edge.yaml"
    cfg.write_text("log:\n  access_log: false\n")
    argv = [
        sys.executable, "-m", "edge", "serve",
        "--config", str(cfg),
        "-a", f"{HOST}:{port}",
        "--admin-listen", f"{HOST}:{admin_port}",
        "-b", f"file://{ds.root}",
        "-s", str(d / "cache"),
        "--cache-size", cache_size,
        "--public-prefix", "/",
    ]  # fmt: skip
    proc = Proc("edge", argv, d / "stderr.log", cwd=str(REPO))
    wait_http(proc, port, "/healthz")
    return proc


# -- warming the edge -----------------------------------------------------------------------


def metrics(port: int) -> dict[str, float]:
    status, _, body = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[k] = float(v)
    return out


HIT = 'edge_cache_lookups_total{result="hit"}'
MISS = 'edge_cache_lookups_total{result="miss"}'


class ConnPool:
    """One keep-alive HTTPConnection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
            try:
                conn.request("GET", path, headers=headers or {})
                r = conn.getresponse()
                body = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if r.will_close:
                    conn.close()
                    self.local.conn = None
                return r.status, hdrs, body
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def warm_edge(edge_port: int, ds: Dataset, workers: int = 4) -> str:
    """Fetch every object in full through the edge; bodies must equal the origin files."""
    pool = ConnPool(edge_port)
    paths = [ds.small_path(i) for i in range(ds.small)] + [
        ds.large_path(i) for i in range(ds.large)
    ]

    def fetch(p: str) -> None:
        status, _, body = pool.get(p)
        if status != 200:
            raise RuntimeError(f"warm-up GET {p}: status {status}")
        if body != ds.file(p).read_bytes():
            raise RuntimeError(f"warm-up GET {p}: body differs from the origin file")

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(fetch, paths))
    took = time.monotonic() - t0
    return f"{len(paths)} objects, {ds.total_bytes / MiB:.0f} MiB in {took:.1f}s"


def check_hits(edge_port: int, ds: Dataset) -> str:
    """Every object again (a 64 KiB range for large ones): all must be cache hits."""
    pool = ConnPool(edge_port)
    rng = random.Random(1)
    before = metrics(edge_port)
    not_hit = 0
    n = 0
    for i in range(ds.small):
        p = ds.small_path(i)
        status, h, body = pool.get(p)
        n += 1
        if status != 200 or len(body) != SMALL_SIZE:
            raise RuntimeError(f"check GET {p}: status {status}, {len(body)} bytes")
        not_hit += h.get("x-cache") != "HIT"
    for i in range(ds.large):
        p = ds.large_path(i)
        off = rng.randrange(ds.large_size - RANGE_LEN)
        status, h, body = pool.get(p, {"Range": f"bytes={off}-{off + RANGE_LEN - 1}"})
        n += 1
        with open(ds.file(p), "rb") as f:
            f.seek(off)
            want = f.read(RANGE_LEN)
        if status != 206 or body != want:
            raise RuntimeError(f"check GET {p} range at {off}: status {status}, wrong body")
        not_hit += h.get("x-cache") != "HIT"
    after = metrics(edge_port)
    hits = after.get(HIT, 0) - before.get(HIT, 0)
    misses = after.get(MISS, 0) - before.get(MISS, 0)
    if not_hit or misses or hits < n:
        raise RuntimeError(
            f"edge is not serving from cache after warm-up: {not_hit}/{n} responses without "
            f"X-Cache: HIT, lookups hit +{hits:.0f} miss +{misses:.0f}"
        )
    return f"{n} requests, lookups hit +{hits:.0f} miss +{misses:.0f}, all X-Cache: HIT"


# -- wrk ------------------------------------------------------------------------------------

LUA_COMMON = """\
local nthreads = 0
local threads = {}
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(%(seed)d + 7919 * tid)
  for _ = 1, 10 do math.random() end
  bad, badlen, seen, first_bad = 0, 0, 0, ""
  if prepare then prepare() end
end
%(verify)s
function done(summary, latency, requests)
  local bad, badlen, seen, first_bad = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("bad") or 0)
    badlen = badlen + (t:get("badlen") or 0)
    seen = seen + (t:get("seen") or 0)
    if first_bad == "" then first_bad = t:get("first_bad") or "" end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"duration_us":%%.0f,"requests":%%.0f,"bytes":%%.0f,"connect":%%.0f,' ..
    '"read":%%.0f,"write":%%.0f,"status":%%.0f,"timeout":%%.0f,"lat_mean_us":%%.1f,' ..
    '"lat_p50_us":%%.0f,"lat_p99_us":%%.0f,"lat_max_us":%%.0f,"bad":%%.0f,"badlen":%%.0f,' ..
    '"seen":%%.0f,"first_bad":"%%s"}\\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(99), latency.max,
    bad, badlen, seen, first_bad))
end
"""

LUA_VERIFY = """\
function response(status, headers, body)
  seen = seen + 1
  if status ~= %(status)d then
    bad = bad + 1
    if first_bad == "" then first_bad = "status " .. status end
  elseif #body ~= %(length)d then
    badlen = badlen + 1
    if first_bad == "" then first_bad = "length " .. #body end
  end
end
"""

LUA_SMALL = """\
local reqs = {}
function prepare()
  for i = 0, %(n)d - 1 do
    reqs[i + 1] = wrk.format("GET", "%(prefix)s/obj" .. i .. ".m4s")
  end
end
function request()
  return reqs[math.random(1, %(n)d)]
end
"""

LUA_RANGE = """\
function request()
  local i = math.random(0, %(n)d - 1)
  local off
  if %(aligned)s then
    off = math.random(0, %(size)d / %(len)d - 1) * %(len)d
  else
    off = math.random(0, %(size)d - %(len)d)
  end
  return wrk.format("GET", "%(prefix)s/big" .. i .. ".mp4",
                    {["Range"] = "bytes=" .. off .. "-" .. (off + %(len)d - 1)})
end
"""


@dataclass
class Scenario:
    name: str
    body: str  # Lua defining prepare()/request()
    status: int
    length: int  # expected body bytes per response
    target: float  # minimum edge/nginx req/s ratio


def scenarios(ds: Dataset) -> list[Scenario]:
    out = []
    if ds.small:
        out.append(
            Scenario(
                "2 MiB objects", LUA_SMALL % {"n": ds.small, "prefix": PREFIX}, 200, SMALL_SIZE, 1.0
            )
        )
    if ds.large:
        for aligned, label in ((True, "aligned"), (False, "any offset")):
            body = LUA_RANGE % {
                "n": ds.large, "prefix": PREFIX, "size": ds.large_size, "len": RANGE_LEN,
                "aligned": "true" if aligned else "false",
            }  # fmt: skip
            out.append(Scenario(f"64 KiB ranges, {label}", body, 206, RANGE_LEN, 0.5))
    return out


@dataclass
class Run:
    server: str
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    lat_p50_ms: float = 0.0
    lat_p99_ms: float = 0.0
    server_cpu: float = 0.0  # fraction of one core
    wrk_cpu: float = 0.0
    machine_cpu: float = 0.0  # all processes, interrupts included, in cores
    busy_before: float = 0.0  # cores busy just before the run (other processes)
    problems: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def run_wrk(
    tmp: Path,
    sc: Scenario,
    server: str,
    port: int,
    server_pid: int,
    args: argparse.Namespace,
    duration: float,
    verify: bool,
    seed: int,
) -> Run:
    lua = (
        LUA_COMMON
        % {
            "seed": seed,
            "verify": LUA_VERIFY % {"status": sc.status, "length": sc.length} if verify else "",
        }
        + sc.body
    )
    script = (
        tmp / "wrk" / f"{re.sub(r'[^a-z0-9]+', '_', sc.name.lower())}_{'v' if verify else 'm'}.lua"
    )
    script.parent.mkdir(exist_ok=True)
    script.write_text(lua)
    argv = [
        shutil.which("wrk") or "wrk",
        f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--timeout", "10s",
        "-s", str(script), f"http://{HOST}:{port}/",
    ]  # fmt: skip
    busy_before = wait_quiet(args.quiet_limit, args.quiet_wait) if not verify else 0.0
    cpu0 = cpu_seconds(server_pid)
    m0, _ = machine_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = p.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise RuntimeError(f"wrk against {server} did not finish") from None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = cpu_seconds(server_pid)
    m1, _ = machine_busy()
    text = out.decode(errors="replace")
    m = re.search(r"^BENCHJSON (\{.*\})$", text, re.M)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{text}")
    j = json.loads(m.group(1))
    run = Run(server)
    run.requests = j["requests"]
    run.bytes = j["bytes"]
    run.seconds = j["duration_us"] / 1e6
    run.errors = {k: j[k] for k in ("connect", "read", "write", "status", "timeout") if j[k]}
    run.lat_p50_ms = j["lat_p50_us"] / 1000
    run.lat_p99_ms = j["lat_p99_us"] / 1000
    run.server_cpu = (cpu1 - cpu0) / wall
    run.wrk_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    run.machine_cpu = (m1 - m0) / wall
    run.busy_before = busy_before
    if run.errors:
        run.problems.append(f"wrk errors {run.errors}")
    # wrk's byte count also holds the responses still in flight when the run stopped.
    head_max = 2048
    low = run.requests * sc.length
    high = (run.requests + args.connections) * (sc.length + head_max)
    if run.requests == 0:
        run.problems.append("no responses")
    elif not low <= run.bytes <= high:
        per = run.bytes / run.requests
        run.problems.append(f"{per:.0f} bytes per response, expected {sc.length} + head")
    if verify:
        if j["bad"] or j["badlen"]:
            run.problems.append(
                f"{j['bad']} responses not {sc.status}, {j['badlen']} with a body not "
                f"{sc.length} bytes (first: {j['first_bad']})"
            )
        if j["seen"] != run.requests:
            run.problems.append(f"response callback saw {j['seen']} of {run.requests}")
    return run


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=128, help="2 MiB objects (default 128)")
    ap.add_argument(
        "--large-objects",
        type=int,
        default=128,
        help="large objects for the 64 KiB range scenarios (default 128)",
    )
    ap.add_argument(
        "--large-size",
        type=int,
        default=32,
        metavar="MIB",
        help="size of each large object in MiB (default 32)",
    )
    ap.add_argument(
        "-d",
        "--duration",
        type=float,
        default=10.0,
        help="seconds per measured wrk run (default 10)",
    )
    ap.add_argument(
        "-c", "--connections", type=int, default=32, help="wrk connections (default 32)"
    )
    ap.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument(
        "--verify-seconds",
        type=float,
        default=2.0,
        help="seconds of each verification/warm-up run before the measured one (default 2)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="short run: 3 s per measurement, 1 s verification, 8 MiB large objects",
    )
    ap.add_argument(
        "--aiohttp-baseline",
        action="store_true",
        help="also measure a plain aiohttp FileResponse server on uvloop",
    )
    ap.add_argument(
        "--nginx-nopush",
        choices=("on", "off"),
        default="on",
        help="nginx tcp_nopush (default on; off avoids nginx's 40 ms stalls on unaligned ranges)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure each server N times, alternating, and keep the best run (default 1)",
    )
    ap.add_argument(
        "--quiet-limit",
        type=float,
        default=0.3,
        metavar="CORES",
        help="before each measured run wait until other processes use fewer cores (default 0.3)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up waiting for a quiet machine after this long (default 120)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--tmpdir", type=Path, default=None, help="where to create the work dir")
    ap.add_argument("--seed", type=int, default=12345, help="wrk Lua random seed")  # fmt: skip
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.verify_seconds = min(args.verify_seconds, 1.0)
        args.large_size = min(args.large_size, 8)
    if args.objects < 0 or args.large_objects < 0 or args.objects + args.large_objects == 0:
        ap.error("need some objects")
    if (
        args.large_size < 1
        or args.duration <= 0
        or args.connections < args.threads
        or args.threads < 1
    ):
        ap.error("bad --large-size/--duration/--connections/--threads")
    return args


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def print_table(results: list[tuple[Scenario, dict[str, Run]]], servers: list[str]) -> bool:
    cols = ["scenario"]
    for s in servers:
        cols += [f"{s} req/s", f"{s} MB/s"]
    cols += ["edge/nginx", "target", ""]
    rows = []
    ok = True
    for sc, runs in results:
        row = [sc.name]
        for s in servers:
            r = runs[s]
            row += [f"{r.rps:,.0f}", f"{r.mbps:,.0f}"]
        ratio = runs["edge"].rps / runs["nginx"].rps if runs["nginx"].rps else 0.0
        met = ratio >= sc.target
        ok &= met
        row += [fmt_ratio(ratio), f">= {sc.target:.1f}x", "ok" if met else "MISSED"]
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    line = fmt(cols)
    print(line)
    print("-" * len(line))
    for r in rows:
        print(fmt(r))
    print()
    print(
        "details (measured runs): latency p50/p99 ms; CPU in cores used by the server, wrk, "
        "the whole machine (kernel network work and other processes included) and by other "
        "processes just before the run"
    )
    for sc, runs in results:
        for s in servers:
            r = runs[s]
            print(
                f"  {sc.name:<26} {s:<8} p50 {r.lat_p50_ms:7.2f}  p99 {r.lat_p99_ms:7.2f}  "
                f"cpu: server {r.server_cpu:4.2f} wrk {r.wrk_cpu:4.2f} "
                f"machine {r.machine_cpu:4.2f} (other before {r.busy_before:4.2f})  "
                f"{r.requests} responses in {r.seconds:.1f}s"
            )
    return ok


def ratio_rows(
    bench: str, results: list[tuple[Scenario, dict[str, Run]]], server: str, servers: list[str]
) -> list[Row]:
    """Per scenario, req/s of ``server`` against nginx with the scenario's target (the same
    verdict as the printed table), and of any other server (a baseline) without a target."""
    out = []
    for sc, runs in results:
        nginx = runs["nginx"]
        for s in servers:
            if s == "nginx":
                continue
            r = runs[s]
            ratio = r.rps / nginx.rps if nginx.rps else 0.0
            mine = s == server
            out.append(
                measured(bench, f"{sc.name}" + ("" if mine else f" ({s})"), r.rps, "req/s",
                         peer="nginx", peer_value=nginx.rps, ratio=ratio,
                         target=f">= {sc.target:.1f}x nginx" if mine else None,
                         met=ratio >= sc.target if mine else None)
            )  # fmt: skip
    return out


def edge_log_anomalies(path: Path) -> list[str]:
    bad = []
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            if "level=INFO" in line or "level=DEBUG" in line:
                continue
            bad.append(line.rstrip())
    return bad


@contextlib.contextmanager
def workdir(args: argparse.Namespace, name: str = "edge") -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{name}.", dir=args.tmpdir))
    try:
        yield tmp
    finally:
        stop_all()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def bench(tmp: Path, args: argparse.Namespace, servers: list[str], problems: list[str]) -> bool:
    """Everything between creating the work dir and removing it; returns targets met."""
    large_size = args.large_size * MiB
    t0 = time.monotonic()
    ds = make_dataset(tmp / "origin", args.objects, args.large_objects, large_size)
    print(
        f"origin: {ds.small} x 2 MiB + {ds.large} x {args.large_size} MiB "
        f"= {ds.total_bytes / MiB:,.0f} MiB in {tmp} ({time.monotonic() - t0:.1f}s)"
    )
    # Room for every slice plus headers, so nothing is evicted.
    cache_mib = ds.total_bytes * 5 // 4 // MiB + 1024
    ports = {s: free_port() for s in servers}
    admin_port = free_port()

    nginx = start_nginx(tmp, ds, ports["nginx"], args.nginx_nopush)
    edge = start_edge(tmp, ds, ports["edge"], admin_port, f"{cache_mib}MiB")
    procs = {"nginx": nginx, "edge": edge}
    if args.aiohttp_baseline:
        procs["aiohttp"] = start_aiohttp(tmp, ds, ports["aiohttp"])
    print(
        f"nginx pid {nginx.pid} on {HOST}:{ports['nginx']}, edge pid {edge.pid} on "
        f"{HOST}:{ports['edge']} (cache {cache_mib} MiB)"
    )

    print("warming the edge:", warm_edge(ports["edge"], ds))
    print("cache check:", check_hits(ports["edge"], ds))
    rss_warm = proc_status(edge.pid)
    print(
        f"edge after warm-up: VmRSS {rss_warm['VmRSS'] / MiB:.0f} MiB, "
        f"VmHWM {rss_warm['VmHWM'] / MiB:.0f} MiB"
    )
    m_before = metrics(ports["edge"])

    results: list[tuple[Scenario, dict[str, Run]]] = []
    noisy = 0
    for sc in scenarios(ds):
        runs: dict[str, Run] = {}
        for rep in range(args.repeat):
            for s in servers:
                proc = procs[s]
                if rep == 0:
                    v = run_wrk(
                        tmp, sc, s, ports[s], proc.pid, args, args.verify_seconds, True, args.seed
                    )
                    problems.extend(f"{sc.name} / {s} / verification: {p}" for p in v.problems)
                    checked = f"  (verification run: {v.requests} responses checked)"
                else:
                    checked = f"  (repeat {rep + 1})"
                seed = args.seed + 1 + rep
                r = run_wrk(tmp, sc, s, ports[s], proc.pid, args, args.duration, False, seed)
                problems.extend(f"{sc.name} / {s} / measured: {p}" for p in r.problems)
                if not proc.alive():
                    raise RuntimeError(f"{s} died during '{sc.name}' (exit {proc.p.returncode})")
                noisy += r.busy_before >= args.quiet_limit
                if s not in runs or r.rps > runs[s].rps:
                    runs[s] = r  # best of --repeat
                print(f"  {sc.name:<26} {s:<8} {r.rps:10,.0f} req/s {r.mbps:8,.0f} MB/s{checked}")
        results.append((sc, runs))

    m_after = metrics(ports["edge"])
    final = proc_status(edge.pid)
    hits = m_after.get(HIT, 0) - m_before.get(HIT, 0)
    misses = m_after.get(MISS, 0) - m_before.get(MISS, 0)
    evictions = m_after.get("edge_evictions_total", 0)
    if misses or evictions:
        problems.append(f"edge cache misses during load: {misses:.0f}, evictions {evictions:.0f}")
    nginx_hwm = sum(proc_status(p)["VmHWM"] for p in proc_tree(nginx.pid))

    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s per server and scenario "
        f"(after a {args.verify_seconds:g}s verification run; best of {args.repeat}), "
        f"servers one at a time on {HOST}; "
        f"{os.cpu_count()} CPUs"
    )
    print()
    targets_ok = print_table(results, servers)
    if args.json:
        peak = measured("edge", "edge peak RSS (VmHWM)", final["VmHWM"] / MiB, "MiB",
                        peer="nginx", peer_value=nginx_hwm / MiB)  # fmt: skip
        write_rows(args.json, [*ratio_rows("edge", results, "edge", servers), peak])
    print()
    print(
        f"edge memory: peak RSS (VmHWM) {final['VmHWM'] / MiB:.0f} MiB, RSS now "
        f"{final['VmRSS'] / MiB:.0f} MiB (after warm-up {rss_warm['VmRSS'] / MiB:.0f} MiB)"
    )
    print(f"nginx memory: peak RSS (VmHWM, master + worker) {nginx_hwm / MiB:.0f} MiB")
    print(
        f"edge lookups during load: hit +{hits:,.0f}, miss +{misses:,.0f}; evictions {evictions:.0f}"
    )

    for s, proc in procs.items():
        if not proc.alive():
            problems.append(f"{s} exited early with {proc.p.returncode}")
    rc = edge.stop()
    if rc != 0:
        problems.append(f"edge exited with {rc} on SIGTERM")
    anomalies = edge_log_anomalies(edge.log_path)
    if anomalies:
        problems.append(f"edge stderr has {len(anomalies)} non-INFO lines, first: {anomalies[0]}")
    nginx_err = (tmp / "nginx" / "error.log").read_text(errors="replace")
    nginx_err_lines = [ln for ln in nginx_err.splitlines() if "[notice]" not in ln]
    if nginx_err_lines:
        problems.append(f"nginx error.log: {nginx_err_lines[0]}")
    return targets_ok


def tail(path: Path, n: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def run_benchmark(
    args: argparse.Namespace,
    bench: Callable[[Path, list[str]], bool],
    server: str,
    *,
    missed: str = "a throughput target was missed",
    met: str = "all targets met",
) -> int:
    """The shared driver of the benchmarks against nginx: tools check, signals, work dir,
    error and problem reporting, exit code (0 ok, 1 errors, 2 a target missed)."""
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(
                f"error: {tool} not found on PATH (apt-get install nginx-light wrk)",
                file=sys.stderr,
            )
            return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    problems: list[str] = []
    try:
        with workdir(args, server) as tmp:
            try:
                targets_ok = bench(tmp, problems)
            except RuntimeError as exc:
                stop_all()
                print(f"\nerror: {exc}", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
                log = tail(tmp / server / "stderr.log")
                if log:
                    print(f"{server} stderr (last lines):\n{log}", file=sys.stderr)
                return 1
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130

    print()
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print(f"  {p}")
        return 1
    if not targets_ok:
        print(f"result: no errors, but {missed}")
        return 2
    print(f"result: no errors, {met}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = ["nginx", "edge"] + (["aiohttp"] if args.aiohttp_baseline else [])
    return run_benchmark(args, lambda tmp, problems: bench(tmp, args, servers, problems), "edge")


if __name__ == "__main__":
    sys.exit(main())
