#!/usr/bin/env python3
"""Decisions per second of the steering service's JSON API (``GET /v1/steer``).

Run by hand (it is not a test and nothing imports it)::

    .venv/bin/python loadtests/bench_steering.py            # 10 and 50 edges, 10 s each
    .venv/bin/python loadtests/bench_steering.py --quick    # 3 s each
    .venv/bin/python loadtests/bench_steering.py --edges 200 -d 20 -c 64 --keys-dist uniform

It needs ``wrk`` on PATH (Debian: ``apt-get install wrk``) and reuses the process and
measurement helpers of ``bench_edge.py``. Everything listens on 127.0.0.1 only and lives in
one temporary directory. Per fleet size (``--edges``, default 10 and 50):

1. a steering config with 3 sites (ams, fra, lon); the edges are spread over them and every
   edge of site i serves the client prefix ``10.<i+1>.0.0/16``; ``10.9.0.0/16`` matches no
   edge and goes to the default site. ``probe_interval`` is 5 s and ``dead_after`` 30 s;
2. one small aiohttp process answering ``GET /healthz`` with 200 on one port per edge (the
   edges' URLs), so that the steering service's active probes keep every edge up;
3. ``python -m steering serve --config FILE`` (one process), waited for on ``/healthz``, then
   checked by hand: a client of each prefix must be steered to its site's edges;
4. wrk (default ``-t1 -c32 -d10s --latency``) with a Lua script sending
   ``GET /v1/steer?key=tNNNNN&client=10.X.Y.Z``: keys from 10,000 titles, Zipf-like
   (log-uniform rank, about Zipf s=1) or uniform, clients random in the four /16s. Its
   ``response`` callback counts every status other than 200 and every answer whose first entry
   is not an edge;
5. decisions per second, latency p50/p90/p99, CPU of the service and wrk, and the service's
   peak RSS (``VmHWM``); afterwards its ``steering_decisions`` must cover every response and no
   edge may have gone down.

Exit status: 0 all good, 1 errors (non-200, socket errors, wrong answers, a process died, an
edge went down, warnings on the service's stderr). See loadtests/README.md.
``--json FILE`` writes decisions/s, p99 and peak RSS per fleet size as rows
(loadtests/results.py); there is no throughput target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml  # type: ignore[import-untyped,unused-ignore]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_edge import (
    HOST,
    REPO,
    Interrupted,
    Proc,
    _on_signal,
    cpu_seconds,
    free_port,
    http_get,
    metrics,
    proc_status,
    stop_all,
    tail,
    wait_http,
    wait_quiet,
)
from results import Row, measured, write_rows

MiB = 1 << 20
SITES = [("ams", 52.37, 4.90), ("fra", 50.11, 8.68), ("lon", 51.51, -0.13)]
UNMAPPED = "10.9"  # a /16 no edge serves: the default site answers
DEFAULT_SITE = "ams"


def site_prefix(i: int) -> str:
    return f"10.{i + 1}"


# -- the fake edges ---------------------------------------------------------------------------

HEALTHZ_SERVER = '''\
"""Answers GET /healthz with 200 on every port given: the edges the steering service probes."""
import asyncio, sys
from aiohttp import web


async def healthz(request):
    return web.Response(text="ok\\n")


async def main():
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for _ in range(int(sys.argv[1])):  # port 0: the kernel picks free ports, no races
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])
    print("PORTS", " ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
'''


def start_edges(d: Path, edges: int) -> tuple[Proc, list[int]]:
    mod = d / "healthz_server.py"
    mod.write_text(HEALTHZ_SERVER)
    log = d / "edges.log"
    proc = Proc("edges", [sys.executable, str(mod), str(edges)], log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"^PORTS ([0-9 ]+)$", log.read_text(errors="replace"), re.M)
        if m:
            ports = [int(x) for x in m.group(1).split()]
            wait_http(proc, ports[-1], "/healthz")
            return proc, ports
        if not proc.alive():
            raise RuntimeError(f"edges exited with {proc.p.returncode}:\n{tail(log)}")
        time.sleep(0.1)
    raise RuntimeError("the edges' /healthz server did not start within 30s")


def write_config(d: Path, edges: int, edge_ports: list[int], port: int) -> Path:
    edge_list = []
    for n in range(edges):
        i = n % len(SITES)
        edge_list.append(
            {
                "id": f"e{n:03d}",
                "site": SITES[i][0],
                "url": f"http://{HOST}:{edge_ports[n]}",
                "weight": 1.0 if n % 2 == 0 else 2.0,
                "prefixes": [f"{site_prefix(i)}.0.0/16"],
            }
        )
    cfg = {
        "listen": f"{HOST}:{port}",
        "sites": [{"name": s, "latitude": lat, "longitude": lon} for s, lat, lon in SITES],
        "edges": edge_list,
        "origin_url": f"http://{HOST}:9",  # only named in answers, never contacted
        "default_site": DEFAULT_SITE,
        "probe_interval": "5s",
        "dead_after": "30s",
        "log_level": "info",
    }
    path = d / "steering.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_steering(d: Path, config: Path, port: int) -> Proc:
    argv = [sys.executable, "-m", "steering", "serve", "--config", str(config)]
    proc = Proc("steering", argv, d / "steering.log", cwd=str(REPO))
    wait_http(proc, port, "/healthz")
    return proc


def check_answers(port: int, edges: int) -> list[str]:
    """One client per prefix: steered to its site, site edges first, origin last."""
    problems = []
    expect = {f"{site_prefix(i)}.7.7": s[0] for i, s in enumerate(SITES)}
    expect[f"{UNMAPPED}.7.7"] = DEFAULT_SITE
    for client, site in expect.items():
        status, _, body = http_get(port, f"/v1/steer?key=t00001&client={client}")
        if status != 200:
            problems.append(f"check: client {client} answered {status}")
            continue
        doc = json.loads(body)
        first = doc["edges"][0] if doc["edges"] else {}
        want = min(3, (edges + len(SITES) - 1) // len(SITES))
        if doc["site"] != site or first.get("site") != site or doc["edges"][-1]["edge"] != "origin":
            problems.append(f"check: client {client} got site {doc['site']}, first {first}")
        elif sum(e["site"] == site for e in doc["edges"]) != want:
            problems.append(f"check: client {client}: not {want} edges of site {site}")
    return problems


# -- wrk ----------------------------------------------------------------------------------------

LUA = """\
local nkeys = %(keys)d
local zipf = %(zipf)s
local prefixes = {%(prefixes)s}
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
  bad, noedge, seen, first_bad = 0, 0, 0, ""
end
function request()
  local rank
  if zipf then
    -- log-uniform rank: P(rank) ~ 1/rank, about Zipf with s = 1
    rank = math.min(nkeys, math.floor((nkeys + 1) ^ math.random()))
  else
    rank = math.random(nkeys)
  end
  local client = prefixes[math.random(#prefixes)] .. "." .. math.random(0, 255) .. "." ..
    math.random(1, 254)
  return wrk.format("GET", string.format("/v1/steer?key=t%%05d&client=%%s", rank, client))
end
function response(status, headers, body)
  seen = seen + 1
  if status ~= 200 then
    bad = bad + 1
    if first_bad == "" then first_bad = "status " .. status end
  elseif not string.find(body, '"edges": [{"edge": "e', 1, true) then
    noedge = noedge + 1
    if first_bad == "" then first_bad = "no edge first" end
  end
end
function done(summary, latency, requests)
  local bad, noedge, seen, first_bad = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("bad") or 0)
    noedge = noedge + (t:get("noedge") or 0)
    seen = seen + (t:get("seen") or 0)
    if first_bad == "" then first_bad = t:get("first_bad") or "" end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"duration_us":%%.0f,"requests":%%.0f,"connect":%%.0f,"read":%%.0f,' ..
    '"write":%%.0f,"status":%%.0f,"timeout":%%.0f,"lat_p50_us":%%.0f,"lat_p90_us":%%.0f,' ..
    '"lat_p99_us":%%.0f,"lat_max_us":%%.0f,"bad":%%.0f,"noedge":%%.0f,"seen":%%.0f,' ..
    '"first_bad":"%%s"}\\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    bad, noedge, seen, first_bad))
end
"""


@dataclass
class Run:
    edges: int
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu: float = 0.0
    wrk_cpu: float = 0.0
    rss_idle: int = 0
    rss_peak: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(d: Path, args: argparse.Namespace, port: int, pid: int, run: Run) -> None:
    prefixes = [site_prefix(i) for i in range(len(SITES))] + [UNMAPPED]
    script = d / "steer.lua"
    script.write_text(
        LUA
        % {
            "keys": args.keys,
            "zipf": "true" if args.keys_dist == "zipf" else "false",
            "prefixes": ", ".join(f'"{p}"' for p in prefixes),
            "seed": args.seed,
        }
    )
    argv = [
        shutil.which("wrk") or "wrk",
        f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration:g}s",
        "--timeout", "10s", "--latency", "-s", str(script), f"http://{HOST}:{port}/",
    ]  # fmt: skip
    busy = wait_quiet(args.quiet_limit, args.quiet_wait)
    if busy >= args.quiet_limit:
        run.problems.append(f"WARNING: machine busy before the run ({busy:.2f} cores)")
    cpu0 = cpu_seconds(pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = p.communicate(timeout=args.duration + 60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise RuntimeError("wrk did not finish") from None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = cpu_seconds(pid)
    text = out.decode(errors="replace")
    m = re.search(r"^BENCHJSON (\{.*\})$", text, re.M)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{text}")
    j = json.loads(m.group(1))
    run.requests = int(j["requests"])
    run.seconds = j["duration_us"] / 1e6
    run.p50_ms, run.p90_ms = j["lat_p50_us"] / 1000, j["lat_p90_us"] / 1000
    run.p99_ms, run.max_ms = j["lat_p99_us"] / 1000, j["lat_max_us"] / 1000
    run.server_cpu = (cpu1 - cpu0) / wall
    run.wrk_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    errors = {k: j[k] for k in ("connect", "read", "write", "status", "timeout") if j[k]}
    if errors:
        run.problems.append(f"wrk errors {errors}")
    if run.requests == 0:
        run.problems.append("no responses")
    if j["bad"] or j["noedge"]:
        run.problems.append(
            f"{j['bad']:.0f} responses not 200, {j['noedge']:.0f} answers not starting with "
            f"an edge (first: {j['first_bad']})"
        )
    if j["seen"] != j["requests"]:
        run.problems.append(f"response callback saw {j['seen']:.0f} of {run.requests}")


# -- one fleet size -----------------------------------------------------------------------------


def bench_one(tmp: Path, args: argparse.Namespace, edges: int) -> Run:
    d = tmp / f"edges{edges}"
    d.mkdir()
    run = Run(edges)
    edge_proc, edge_ports = start_edges(d, edges)
    port = free_port()
    config = write_config(d, edges, edge_ports, port)
    steering = start_steering(d, config, port)
    try:
        run.problems += check_answers(port, edges)
        run.rss_idle = proc_status(steering.pid).get("VmRSS", 0)
        before = metrics(port)
        run_wrk(d, args, port, steering.pid, run)
        if not steering.alive():
            raise RuntimeError(f"steering exited with {steering.p.returncode}")
        run.rss_peak = proc_status(steering.pid).get("VmHWM", 0)
        after = metrics(port)
        decided = sum(v for k, v in after.items() if k.startswith("steering_decisions_total"))
        decided -= sum(v for k, v in before.items() if k.startswith("steering_decisions_total"))
        if decided < run.requests:
            run.problems.append(f"steering_decisions grew by {decided:.0f} < {run.requests}")
        _, _, body = http_get(port, "/healthz")
        counts = json.loads(body)["edges"]
        if counts.get("down") or counts.get("draining"):
            run.problems.append(f"edges not all up after the run: {counts}")
    finally:
        steering.stop()
        edge_proc.stop()
    for line in (d / "steering.log").read_text(errors="replace").splitlines():
        if "level=INFO" not in line:
            run.problems.append(f"steering stderr: {line[:200]}")
    return run


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--edges",
        default="10,50",
        help="comma-separated fleet sizes, one steering process each (default 10,50)",
    )
    ap.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("-c", "--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--keys", type=int, default=10_000, help="distinct title keys (10000)")
    ap.add_argument("--keys-dist", choices=("zipf", "uniform"), default="zipf")
    ap.add_argument("--quick", action="store_true", help="3 s runs")
    ap.add_argument("--quiet-limit", type=float, default=0.3, help="cores busy elsewhere")
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="max seconds to wait")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--tmpdir", help="create the temporary directory here")
    ap.add_argument("--seed", type=int, default=12345, help="wrk Lua random seed")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    args.edge_counts = [int(x) for x in args.edges.split(",") if x.strip()]
    if not args.edge_counts or min(args.edge_counts) < 1:
        ap.error("--edges: expected positive integers")
    return args


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-steering-", dir=args.tmpdir))
    try:
        yield tmp
    finally:
        stop_all()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk not found on PATH (apt-get install wrk)", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    print(
        f"steering /v1/steer: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"{args.keys} keys ({args.keys_dist}), clients in {len(SITES) + 1} /16s, "
        f"{len(SITES)} sites, {os.cpu_count()} CPUs"
    )
    runs: list[Run] = []
    try:
        with workdir(args) as tmp:
            for n in args.edge_counts:
                try:
                    runs.append(bench_one(tmp, args, n))
                except RuntimeError as exc:
                    print(f"\nerror ({n} edges): {exc}", file=sys.stderr)
                    log = tail(tmp / f"edges{n}" / "steering.log")
                    if log:
                        print(f"steering stderr (last lines):\n{log}", file=sys.stderr)
                    return 1
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130

    print()
    head = (
        f"{'edges':>5}  {'decisions/s':>11}  {'p50 ms':>7}  {'p90 ms':>7}  {'p99 ms':>7}  "
        f"{'max ms':>7}  {'cpu svc':>7}  {'cpu wrk':>7}  {'RSS idle':>8}  {'RSS peak':>8}"
    )
    print(head)
    for r in runs:
        print(
            f"{r.edges:>5}  {r.rps:>11,.0f}  {r.p50_ms:>7.2f}  {r.p90_ms:>7.2f}  "
            f"{r.p99_ms:>7.2f}  {r.max_ms:>7.1f}  {r.server_cpu:>7.2f}  {r.wrk_cpu:>7.2f}  "
            f"{r.rss_idle / MiB:>5.0f} MiB  {r.rss_peak / MiB:>5.0f} MiB"
        )
    print("(cpu in cores; RSS peak is the steering process's VmHWM after the run)")
    if args.json:
        rows: list[Row] = []
        for r in runs:
            rows += [
                measured("steering", f"decisions, {r.edges} edges", r.rps, "req/s"),
                measured("steering", f"latency p99, {r.edges} edges", r.p99_ms, "ms"),
                measured("steering", f"peak RSS, {r.edges} edges", r.rss_peak / MiB, "MiB"),
            ]
        write_rows(args.json, rows)
    problems = [f"{r.edges} edges: {p}" for r in runs for p in r.problems]
    errors = [p for p in problems if "WARNING" not in p]
    for p in problems:
        print(f"  {p}")
    if errors:
        print("result: ERRORS")
        return 1
    print(f"result: no errors, all {sum(r.requests for r in runs):,} responses 200 with an edge")
    return 0


if __name__ == "__main__":
    sys.exit(main())
