#!/usr/bin/env python3
"""Read throughput of the origin against nginx on 2 MiB byte ranges of large files.

Run by hand (it is not a test and nothing imports it)::

    .venv/bin/python loadtests/bench_origin.py            # full run, ~2 minutes
    .venv/bin/python loadtests/bench_origin.py --quick    # short smoke run
    .venv/bin/python loadtests/bench_origin.py --repeat 3 -d 20 -c 64

It needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install nginx-light wrk``) and
reuses the process, wrk and measurement helpers of ``bench_edge.py``. Everything listens on
127.0.0.1 only and lives in one temporary directory:

1. an asset root: T published titles (default 32), each ``v/tN/r.mp4`` of random bytes
   (default 64 MiB) plus ``v/tN/manifest.json``, written as if copied in by hand (no sidecars);
2. the origin (``python -m origin serve``: one process, ``access_log: false``, local storage on
   that root, a fill credential file), warmed with one authenticated HEAD per file so that it
   computes every ``.meta/`` sidecar (checksum) before the load; then checks: 401 without the
   credential, and random ranges of both servers compared byte for byte with the files;
3. nginx (1 worker, ``sendfile on``, ``tcp_nopush off``, ``access_log off``) on the same root;
4. wrk against nginx, then the origin (never both at once), with a Lua script that sends
   ``Authorization: Bearer TOKEN`` (nginx ignores it) and a random 2 MiB ``Range`` in a random
   file, at 2 MiB-aligned offsets and at any offset: per scenario a short verification run
   (one wrk thread) whose ``response`` callback checks every status (206) and body length, then
   the measured run (default two wrk threads: one cannot read as fast as the servers send);
   after the load the origin's ``/metrics`` must show nothing but 206s (plus the scrape itself
   and connections cut when wrk stopped);
5. the table of req/s and MB/s, origin/nginx ratios against the target (0.8x), and the
   origin's peak RSS.

Exit status: 0 all good, 1 errors (non-206, socket errors, wrong sizes or bytes, a server
died, warnings on the origin's stderr), 2 a throughput target missed. See loadtests/README.md.
``--json FILE`` writes the figures against nginx as rows (loadtests/results.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from results import measured, write_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_edge import (
    HOST,
    NGINX_CONF,
    REPO,
    MiB,
    Proc,
    Run,
    Scenario,
    cpu_seconds,
    edge_log_anomalies,
    free_port,
    metrics,
    proc_status,
    proc_tree,
    ratio_rows,
    run_benchmark,
    run_wrk,
    wait_http,
)

RANGE_LEN = 2 * MiB
TARGET = 0.8  # minimum origin/nginx req/s ratio


# -- the asset root ------------------------------------------------------------------------


@dataclass
class Assets:
    root: Path
    titles: int
    size: int  # bytes of each r.mp4

    def key(self, i: int) -> str:
        return f"v/t{i}/r.mp4"

    def manifest(self, i: int) -> str:
        return f"v/t{i}/manifest.json"

    def file(self, key: str) -> Path:
        return self.root / key

    @property
    def total_bytes(self) -> int:
        return self.titles * self.size


def make_assets(root: Path, titles: int, size: int) -> Assets:
    a = Assets(root, titles, size)
    # nginx workers may run as nobody: everything down to the files must be readable.
    os.chmod(root.parent, 0o755)
    root.mkdir(mode=0o755)
    (root / "v").mkdir(mode=0o755)

    def write(i: int) -> None:
        d = root / "v" / f"t{i}"
        d.mkdir(mode=0o755)
        with open(a.file(a.key(i)), "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
        m = a.file(a.manifest(i))
        m.write_text(json.dumps({"title": f"t{i}", "files": ["r.mp4"]}) + "\n")
        for p in (a.file(a.key(i)), m):
            os.chmod(p, 0o644)

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(write, range(titles)))
    os.sync()  # no writeback of gigabytes of dirty pages during the measurements
    return a


# -- servers --------------------------------------------------------------------------------


def start_nginx(tmp: Path, a: Assets, port: int) -> Proc:
    d = tmp / "nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=d, host=HOST, port=port, root=a.root, nopush="off"))
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
    wait_http(proc, port, "/" + a.manifest(0))
    return proc


def start_origin(tmp: Path, a: Assets, port: int, token: str) -> Proc:
    d = tmp / "origin"
    d.mkdir()
    cred = d / "fill_tokens"
    cred.write_text(f"# bench_origin.py\n{token}\n")
    os.chmod(cred, 0o600)
    cfg = d / "origin.yaml"
    cfg.write_text(
        f"listen: {HOST}:{port}\n"
        "access_log: false\n"
        "log_level: info\n"
        "storage:\n"
        "  backend: local\n"
        f"  root: {a.root}\n"
        f"fill_credentials_file: {cred}\n"
        f"catalog_db: {d / 'catalog.sqlite'}\n"
        "jobs:\n"
        f"  db: {d / 'jobs.sqlite'}\n"
        "ingest:\n"
        f"  work_dir: {d / 'work'}\n"
    )
    argv = [sys.executable, "-m", "origin", "serve", "--config", str(cfg)]
    proc = Proc("origin", argv, d / "stderr.log", cwd=str(REPO))
    wait_http(proc, port, "/healthz")
    return proc


def request(
    port: int, method: str, path: str, headers: dict[str, str], timeout: float = 120.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def warm_origin(port: int, a: Assets, token: str) -> str:
    """One authenticated HEAD per file: the origin hashes each one and writes its sidecar."""
    auth = {"Authorization": f"Bearer {token}"}

    def head(key: str) -> None:
        status, h, _ = request(port, "HEAD", "/" + key, auth)
        want = a.file(key).stat().st_size
        if status != 200 or int(h.get("content-length", -1)) != want:
            raise RuntimeError(f"warm-up HEAD /{key}: status {status}, {h.get('content-length')}")
        if not h.get("x-checksum-xxh64"):
            raise RuntimeError(f"warm-up HEAD /{key}: no X-Checksum-XXH64")

    keys = [a.manifest(i) for i in range(a.titles)] + [a.key(i) for i in range(a.titles)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(head, keys))
    took = time.monotonic() - t0
    missing = [k for k in keys if not (a.root / ".meta" / (k + ".json")).is_file()]
    if missing:
        raise RuntimeError(f"no sidecar after warm-up for {len(missing)} files, e.g. {missing[0]}")
    return f"{len(keys)} HEADs in {took:.2f}s, {len(keys)} sidecars under {a.root / '.meta'}"


def check_servers(ports: dict[str, int], a: Assets, token: str, per_server: int = 24) -> str:
    """401 without the credential; random 2 MiB ranges equal to the files' bytes on both."""
    status, h, _ = request(ports["origin"], "GET", "/" + a.key(0), {"Range": "bytes=0-99"})
    if status != 401:
        raise RuntimeError(f"origin answered {status} to a request without a credential")
    rng = random.Random(7)
    auth = {"Authorization": f"Bearer {token}"}
    for server, port in ports.items():
        for n in range(per_server):
            i = rng.randrange(a.titles)
            length = min(RANGE_LEN, a.size)
            if n % 2:
                off = rng.randrange(a.size // length) * length
            else:
                off = rng.randrange(a.size - length + 1)
            rh = {**auth, "Range": f"bytes={off}-{off + length - 1}"}
            status, h, body = request(port, "GET", "/" + a.key(i), rh)
            with open(a.file(a.key(i)), "rb") as f:
                f.seek(off)
                want = f.read(length)
            cr = f"bytes {off}-{off + length - 1}/{a.size}"
            if status != 206 or h.get("content-range") != cr or body != want:
                raise RuntimeError(
                    f"{server}: GET /{a.key(i)} bytes {off}+{length}: status {status}, "
                    f"Content-Range {h.get('content-range')!r}, body "
                    f"{'equal' if body == want else 'DIFFERENT'} ({len(body)} bytes)"
                )
    return f"401 without credential; {per_server} random ranges per server byte-identical"


# -- wrk ------------------------------------------------------------------------------------

LUA_RANGE = """\
local auth = "Bearer %(token)s"
function request()
  local i = math.random(0, %(n)d - 1)
  local off
  if %(aligned)s then
    off = math.random(0, %(size)d / %(len)d - 1) * %(len)d
  else
    off = math.random(0, %(size)d - %(len)d)
  end
  return wrk.format("GET", "/v/t" .. i .. "/r.mp4", {
    ["Authorization"] = auth,
    ["Range"] = string.format("bytes=%%d-%%d", off, off + %(len)d - 1),
  })
end
"""


def scenarios(a: Assets, token: str) -> list[Scenario]:
    out = []
    for aligned, label in ((True, "aligned"), (False, "any offset")):
        body = LUA_RANGE % {
            "token": token, "n": a.titles, "size": a.size, "len": RANGE_LEN,
            "aligned": "true" if aligned else "false",
        }  # fmt: skip
        out.append(Scenario(f"2 MiB ranges, {label}", body, 206, RANGE_LEN, TARGET))
    return out


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--titles", type=int, default=32, help="titles, one file each (default 32)")
    ap.add_argument(
        "--file-size", type=int, default=64, metavar="MIB", help="MiB per file (default 64)"
    )
    ap.add_argument(
        "-d", "--duration", type=float, default=10.0, help="seconds per measured wrk run (10)"
    )
    ap.add_argument("-c", "--connections", type=int, default=32, help="wrk connections (32)")
    ap.add_argument(
        "-t",
        "--threads",
        type=int,
        default=2,
        help="wrk threads (default 2: one thread cannot read 2 MiB responses as fast as "
        "either server sends them)",
    )
    ap.add_argument(
        "--verify-seconds",
        type=float,
        default=2.0,
        help="seconds of each verification/warm-up run before the measured one (default 2)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="short run: 3 s runs, 1 s verification, 8 titles"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure each server N times, alternating, and keep the best run (default 1)",
    )
    ap.add_argument("--quiet-limit", type=float, default=0.3, metavar="CORES")
    ap.add_argument("--quiet-wait", type=float, default=120.0, metavar="SECONDS")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--tmpdir", type=Path, default=None, help="where to create the work dir")
    ap.add_argument("--seed", type=int, default=12345, help="wrk Lua random seed")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the figures as rows here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.verify_seconds = min(args.verify_seconds, 1.0)
        args.titles = min(args.titles, 8)
    if args.titles < 1 or args.file_size < 2 or args.file_size * MiB < RANGE_LEN:
        ap.error("need at least one title of at least 2 MiB")
    if args.duration <= 0 or args.threads < 1 or args.connections < args.threads:
        ap.error("bad --duration/--connections/--threads")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args


def print_table(results: list[tuple[Scenario, dict[str, Run]]]) -> bool:
    cols = ["scenario", "nginx req/s", "nginx MB/s", "origin req/s", "origin MB/s"]
    cols += ["origin/nginx", "target", ""]
    rows = []
    ok = True
    for sc, runs in results:
        n, o = runs["nginx"], runs["origin"]
        ratio = o.rps / n.rps if n.rps else 0.0
        met = ratio >= sc.target
        ok &= met
        rows.append(
            [
                sc.name, f"{n.rps:,.0f}", f"{n.mbps:,.0f}", f"{o.rps:,.0f}", f"{o.mbps:,.0f}",
                f"{ratio:.2f}x", f">= {sc.target:.1f}x", "ok" if met else "MISSED",
            ]
        )  # fmt: skip
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
        "the whole machine and by other processes just before the run; server CPU time per "
        "response"
    )
    for sc, runs in results:
        for s in ("nginx", "origin"):
            r = runs[s]
            print(
                f"  {sc.name:<24} {s:<7} p50 {r.lat_p50_ms:7.2f}  p99 {r.lat_p99_ms:7.2f}  "
                f"cpu: server {r.server_cpu:4.2f} wrk {r.wrk_cpu:4.2f} "
                f"machine {r.machine_cpu:4.2f} (other before {r.busy_before:4.2f})  "
                f"{per_response_us(r):4.0f} us/response  {r.requests} responses in {r.seconds:.1f}s"
            )
    return ok


def per_response_us(r: Run) -> float:
    """Server CPU per complete response (run_wrk's CPU share is over its own wall time,
    which is a little longer than wrk's run time)."""
    return r.server_cpu * r.seconds / r.requests * 1e6 if r.requests else 0.0


def status_counts(port: int) -> dict[str, float]:
    m = metrics(port)
    prefix = 'origin_requests_total{status="'
    return {k[len(prefix) : -2]: v for k, v in m.items() if k.startswith(prefix)}


def bench(tmp: Path, args: argparse.Namespace, problems: list[str]) -> bool:
    t0 = time.monotonic()
    a = make_assets(tmp / "assets", args.titles, args.file_size * MiB)
    print(
        f"assets: {a.titles} titles x {args.file_size} MiB = {a.total_bytes / MiB:,.0f} MiB "
        f"in {a.root} ({time.monotonic() - t0:.1f}s)"
    )
    token = secrets.token_urlsafe(24)
    ports = {"nginx": free_port(), "origin": free_port()}
    nginx = start_nginx(tmp, a, ports["nginx"])
    origin = start_origin(tmp, a, ports["origin"], token)
    procs = {"nginx": nginx, "origin": origin}
    print(
        f"nginx pid {nginx.pid} on {HOST}:{ports['nginx']}, origin pid {origin.pid} on "
        f"{HOST}:{ports['origin']}"
    )
    print("warming the origin:", warm_origin(ports["origin"], a, token))
    print("checks:", check_servers(ports, a, token))
    rss_warm = proc_status(origin.pid)
    print(
        f"origin after warm-up: VmRSS {rss_warm['VmRSS'] / MiB:.0f} MiB, "
        f"VmHWM {rss_warm['VmHWM'] / MiB:.0f} MiB"
    )

    before = status_counts(ports["origin"])
    origin_requests = 0  # complete responses wrk counted from the origin
    origin_runs = 0
    results: list[tuple[Scenario, dict[str, Run]]] = []
    # Verification runs use one wrk thread: with two, wrk's Lua response() callback on 2 MiB
    # bodies often stalls for a second or more per response (a few dozen checked per run).
    vargs = argparse.Namespace(**{**vars(args), "threads": 1})
    for sc in scenarios(a, token):
        runs: dict[str, Run] = {}
        for rep in range(args.repeat):
            for s in ("nginx", "origin"):
                proc = procs[s]
                if rep == 0:
                    v = run_wrk(
                        tmp, sc, s, ports[s], proc.pid, vargs, args.verify_seconds, True, args.seed
                    )
                    problems.extend(f"{sc.name} / {s} / verification: {p}" for p in v.problems)
                    checked = f"  (verification run: {v.requests} responses checked)"
                    if s == "origin":
                        origin_requests += v.requests
                        origin_runs += 1
                else:
                    checked = f"  (repeat {rep + 1})"
                seed = args.seed + 1 + rep
                r = run_wrk(tmp, sc, s, ports[s], proc.pid, args, args.duration, False, seed)
                problems.extend(f"{sc.name} / {s} / measured: {p}" for p in r.problems)
                if s == "origin":
                    origin_requests += r.requests
                    origin_runs += 1
                if not proc.alive():
                    raise RuntimeError(f"{s} died during '{sc.name}' (exit {proc.p.returncode})")
                if s not in runs or r.rps > runs[s].rps:
                    runs[s] = r
                print(f"  {sc.name:<24} {s:<7} {r.rps:10,.0f} req/s {r.mbps:8,.0f} MB/s{checked}")
        results.append((sc, runs))

    after = status_counts(ports["origin"])
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    delta = {k: v for k, v in delta.items() if v}
    # The first /metrics scrape counts itself (200) once it has been answered; wrk cuts the
    # responses in flight when it stops (499), at most one per connection and run.
    cut_max = origin_runs * args.connections
    n206 = delta.pop("206", 0)
    if delta.get("200", 0) <= 1:
        delta.pop("200", None)
    cut = delta.pop("499", 0)
    if cut > cut_max:
        problems.append(f"origin cut {cut:.0f} responses (at most {cut_max} expected)")
    if delta:
        problems.append(f"origin answered other statuses than 206 during the load: {delta}")
    if not origin_requests <= n206 <= origin_requests + cut_max:
        problems.append(f"origin counted {n206:.0f} 206s, wrk {origin_requests} complete responses")
    final = proc_status(origin.pid)
    nginx_hwm = sum(proc_status(p)["VmHWM"] for p in proc_tree(nginx.pid))
    origin_cpu = cpu_seconds(origin.pid)

    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s per server and scenario "
        f"(after a {args.verify_seconds:g}s verification run; best of {args.repeat}), "
        f"servers one at a time on {HOST}; {os.cpu_count()} CPUs; "
        f"{a.titles} files of {args.file_size} MiB"
    )
    print()
    targets_ok = print_table(results)
    if args.json:
        peak = measured("origin", "origin peak RSS (VmHWM)", final["VmHWM"] / MiB, "MiB",
                        peer="nginx", peer_value=nginx_hwm / MiB)  # fmt: skip
        write_rows(args.json, [*ratio_rows("origin", results, "origin", ["origin"]), peak])
    print()
    print(
        f"origin statuses during the load (/metrics): 206 x {n206:,.0f}, cut by wrk at stop "
        f"(499) x {cut:.0f}; wrk counted {origin_requests:,} complete responses"
    )
    print(
        f"origin memory: peak RSS (VmHWM) {final['VmHWM'] / MiB:.0f} MiB, RSS now "
        f"{final['VmRSS'] / MiB:.0f} MiB (after warm-up: RSS {rss_warm['VmRSS'] / MiB:.0f}, "
        f"peak {rss_warm['VmHWM'] / MiB:.0f} MiB); CPU {origin_cpu:.0f} s in total"
    )
    print(f"nginx memory: peak RSS (VmHWM, master + worker) {nginx_hwm / MiB:.0f} MiB")

    for s, proc in procs.items():
        if not proc.alive():
            problems.append(f"{s} exited early with {proc.p.returncode}")
    rc = origin.stop()
    if rc != 0:
        problems.append(f"origin exited with {rc} on SIGTERM")
    anomalies = edge_log_anomalies(origin.log_path)
    if anomalies:
        problems.append(f"origin stderr has {len(anomalies)} non-INFO lines, first: {anomalies[0]}")
    nginx_err = (tmp / "nginx" / "error.log").read_text(errors="replace")
    nginx_err_lines = [ln for ln in nginx_err.splitlines() if "[notice]" not in ln]
    if nginx_err_lines:
        problems.append(f"nginx error.log: {nginx_err_lines[0]}")
    return targets_ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(
        args,
        lambda tmp, problems: bench(tmp, args, problems),
        "origin",
        missed="the throughput target was missed",
        met="target met",
    )


if __name__ == "__main__":
    sys.exit(main())
