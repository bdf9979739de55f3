"""What docs/operations.md tells operators, checked on real edges over loopback.

- "Replacing a failed disk": a disk that fails while the edge runs is taken out of service
  (edge_disks_failed, health degraded) and serving goes on; one that is dead at start is left
  out (check-config warns, the edge starts); after one cache directory is replaced by an empty
  one and the edge restarted, the other disks' objects are still hits, without an upstream
  fetch, and the new disk fills again.
- "Draining an edge": ``python -m edge drain --wait`` drains through the admin API and returns
  once no client connection is open; ``python -m edge undrain`` ends it. (The drain endpoint
  and signals themselves are tested in tests/test_edge_ops.py and tests/test_edge_cli.py.)

Every check is on the edge's counters (its /metrics numbers), never on timings.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from edge.store import decode_header, slice_key

from .conftest import (
    ADMIN_TOKEN,
    RunningEdge,
    blob,
    edge_config,
    put,
    start_edge,
    subprocess_env,
)

SLICE = 64 * 1024
TIMEOUT = 30.0  # for one CLI run


def slices_in(cache: Path) -> set[tuple[str, int]]:
    """(object path, slice index) of every complete slice file under a cache directory."""
    out = set()
    for f in cache.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
        if f.is_file() and not f.name.endswith(".tmp"):
            _, path, index, _, _ = decode_header(f.read_bytes()[:4096])
            out.add((path, index))
    return out


def objects(origin_dir: Path) -> dict[str, bytes]:
    """Single-slice and multi-slice objects, so that both disks get some of each."""
    out = {}
    for i in range(24):
        out[f"/v/t{i % 3}/seg{i}.m4s"] = put(origin_dir, f"/v/t{i % 3}/seg{i}.m4s", blob(9000, i))
    for i in range(2):
        path = f"/v/big{i}/single.mp4"
        out[path] = put(origin_dir, path, blob(5 * SLICE + 100, 100 + i))
    return out


async def fetch_all(
    edge: RunningEdge, client: aiohttp.ClientSession, objs: dict[str, bytes]
) -> dict[str, str]:
    """GET every object, check its body; X-Cache of each."""
    seen = {}
    for path, data in objs.items():
        status, headers, body = await edge.get(client, path)
        assert (status, body) == (200, data), path
        seen[path] = headers["X-Cache"]
    return seen


async def health(client: aiohttp.ClientSession, edge: RunningEdge) -> dict:
    async with client.get(edge.admin + "/healthz") as r:
        return await r.json()


# -- replacing a failed disk ---------------------------------------------------------------


async def test_replacing_a_disk_keeps_the_other_disks_objects(
    origin_dir: Path, tmp_path: Path, client
):
    config = edge_config(tmp_path, [f"file://{origin_dir}"], cache_dirs=2, slice_size=SLICE)
    disk0, disk1 = (d.path for d in config.cache.dirs)
    objs = objects(origin_dir)
    total = 24 + 2 * 6

    edge = await start_edge(config)
    try:
        assert set((await fetch_all(edge, client, objs)).values()) == {"MISS"}
        assert edge.counter("edge_upstream_fetches_total") == total
    finally:
        await edge.stop()
    kept, lost = slices_in(disk0), slices_in(disk1)
    assert len(kept) + len(lost) == total
    assert len(kept) >= 5 and len(lost) >= 5, (len(kept), len(lost))

    # The disk behind cache1 is replaced: a new, empty filesystem at the same mount point,
    # in the same place of the configuration (same path, same size).
    shutil.rmtree(disk1)
    disk1.mkdir()

    edge = await start_edge(config)
    try:
        assert edge.counter("edge_cache_objects") == len(kept)
        assert edge.counter("edge_disks_failed") == 0
        seen = await fetch_all(edge, client, objs)
        # Every slice on the surviving disk is a hit: no upstream fetch for it ...
        assert edge.counter("edge_cache_lookups_total", result="hit") == len(kept)
        assert edge.counter("edge_cache_lookups_total", result="miss") == len(lost)
        assert edge.counter("edge_upstream_fetches_total") == len(lost)
        for path in objs:
            if all((path, i) in kept for i in range(6 if "big" in path else 1)):
                assert seen[path] == "HIT", path
        # ... and the new disk takes back exactly the slices the old one held.
        assert slices_in(disk1) == lost
        assert slices_in(disk0) == kept
        assert set((await fetch_all(edge, client, objs)).values()) == {"HIT"}
        assert edge.counter("edge_upstream_fetches_total") == len(lost)
        assert (await health(client, edge))["state"] == "ok"
    finally:
        await edge.stop()


async def test_changing_the_slice_size_empties_the_cache_rather_than_serve_wrong_bytes(
    origin_dir: Path, tmp_path: Path, client
):
    """Slices are named by (path, index): cut at 64 KiB, index 2 holds bytes 128-192 KiB; at
    128 KiB it would be read as bytes 256-384 KiB. A changed cache.slice_size sweeps them."""
    import dataclasses

    config = edge_config(tmp_path, [f"file://{origin_dir}"], cache_dirs=2, slice_size=SLICE)
    objs = objects(origin_dir)
    edge = await start_edge(config)
    try:
        assert set((await fetch_all(edge, client, objs)).values()) == {"MISS"}
    finally:
        await edge.stop()

    bigger = dataclasses.replace(
        config, cache=dataclasses.replace(config.cache, slice_size=2 * SLICE)
    )
    edge = await start_edge(bigger)
    try:
        assert edge.counter("edge_cache_objects") == 0
        # Every body is the origin's (fetch_all compares them), fetched again.
        assert set((await fetch_all(edge, client, objs)).values()) == {"MISS"}
        assert edge.counter("edge_upstream_fetches_total") == 24 + 2 * 3
        status, headers, body = await edge.get(
            client, "/v/big0/single.mp4", headers={"Range": f"bytes={4 * SLICE}-{5 * SLICE}"}
        )
        assert (status, headers["X-Cache"]) == (206, "HIT")
        assert body == objs["/v/big0/single.mp4"][4 * SLICE : 5 * SLICE + 1]
    finally:
        await edge.stop()


async def test_a_disk_failing_while_serving_is_taken_out_of_service(
    origin_dir: Path, tmp_path: Path, client
):
    config = edge_config(tmp_path, [f"file://{origin_dir}"], cache_dirs=2, slice_size=SLICE)
    disk0, disk1 = (d.path for d in config.cache.dirs)
    edge = await start_edge(config)
    try:
        store = edge.edge.store
        assert store is not None
        # Objects the placement puts on the second disk.
        on_disk1 = []
        i = 0
        while len(on_disk1) < 5:
            path = f"/v/t/seg{i}.m4s"
            if store.disk_for(slice_key(path, 0)).root == disk1:
                on_disk1.append(path)
                put(origin_dir, path, blob(5000, i))
            i += 1
        # The SSD dies: its filesystem is gone, and nothing can be written there any more.
        shutil.rmtree(disk1)
        disk1.write_bytes(b"")
        objs = {p: (origin_dir / p.lstrip("/")).read_bytes() for p in on_disk1}
        assert set((await fetch_all(edge, client, objs)).values()) == {"MISS"}
        # Three write errors take the disk out of service; every request was still answered.
        assert edge.counter("edge_disks_failed") == 1
        assert edge.counter("edge_disk_errors_total") == 3
        assert edge.counter("edge_health_state", state="degraded") == 1
        doc = await health(client, edge)
        assert doc["state"] == "degraded"
        assert f"disk_failed: {disk1}" in doc["reasons"]
        # From then on the disk's share of new objects goes to the surviving disks.
        assert set((await fetch_all(edge, client, objs)).values()) <= {"HIT", "MISS"}
        assert set((await fetch_all(edge, client, objs)).values()) == {"HIT"}
        assert {p for p, _ in slices_in(disk0)} >= set(on_disk1)
    finally:
        await edge.stop()


async def run_cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        *args,
        env=subprocess_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def cli_config(
    tmp_path: Path, dirs: list[Path], admin: str = "127.0.0.1:0", token: str = ADMIN_TOKEN
) -> Path:
    """An edge.yaml for the command line (its own admin token file)."""
    listed = "".join(f"    - {{path: {d}, size: 1MiB}}\n" for d in dirs)
    (tmp_path / "cli-token").write_text(token + "\n")
    path = tmp_path / "edge.yaml"
    path.write_text(
        f'listen: "127.0.0.1:0"\n'
        f'admin: {{listen: "{admin}", credential_file: {tmp_path / "cli-token"}}}\n'
        f"upstreams:\n  - url: file://{tmp_path}\n"
        f"cache:\n  slice_size: 64KiB\n  dirs:\n{listed}"
        f'signing: {{public_prefixes: ["/"]}}\n'
    )
    return path


async def test_a_disk_dead_at_start_is_left_out(origin_dir: Path, tmp_path: Path, client):
    config = edge_config(tmp_path, [f"file://{origin_dir}"], cache_dirs=2, slice_size=SLICE)
    disk0, disk1 = (d.path for d in config.cache.dirs)
    disk1.write_bytes(b"")  # what the edge finds where the dead disk's directory was
    code, out, err = await run_cli("check-config", "--config", str(cli_config(tmp_path, [disk0])))
    assert (code, err) == (0, ""), err
    yaml = cli_config(tmp_path, [disk0, disk1])
    code, out, err = await run_cli("check-config", "--config", str(yaml))
    assert code == 0, err
    assert out.startswith("configuration ok")
    assert f"warning: cache.dirs[1].path: {disk1} exists and is not a directory" in err
    assert "the edge serves without this disk" in err
    # Only with no usable disk at all is the configuration refused.
    disk0.write_bytes(b"")
    code, out, err = await run_cli("check-config", "--config", str(yaml))
    assert code == 2
    assert f"configuration error: cache.dirs[0].path: {disk0} exists" in err
    disk0.unlink()

    objs = objects(origin_dir)
    edge = await start_edge(config)
    try:
        assert edge.counter("edge_disks_failed") == 1
        assert set((await fetch_all(edge, client, objs)).values()) == {"MISS"}
        assert set((await fetch_all(edge, client, objs)).values()) == {"HIT"}
        assert edge.counter("edge_upstream_fetches_total") == 24 + 2 * 6
        assert f"disk_failed: {disk1}" in (await health(client, edge))["reasons"]
    finally:
        await edge.stop()
    assert len(slices_in(disk0)) == 24 + 2 * 6


# -- draining an edge -------------------------------------------------------------------------


async def test_drain_cli_waits_for_connections_to_close_then_undrain(
    edges, origin_dir: Path, tmp_path: Path, client
):
    data = put(origin_dir, "/v/t/a.m4s", blob(3000))
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    admin = edge.admin.removeprefix("http://")
    yaml = cli_config(tmp_path, [tmp_path / "unused"], admin=admin)
    request = b"GET /v/t/a.m4s HTTP/1.1\r\nHost: edge\r\n\r\n"

    # A player with a keep-alive connection open between two segment requests.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        assert await reader.readexactly(len(data)) == data
        assert edge.counter("edge_connections_open") == 1

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge",
            "drain",
            "--wait",
            "--interval",
            "0.05",
            "--timeout",
            str(TIMEOUT),
            "--config",
            str(yaml),
            env=subprocess_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            lines = []
            async with asyncio.timeout(TIMEOUT):
                while not lines or lines[-1] != "1 client connections open":
                    line = await proc.stdout.readline()
                    assert line, (lines, await proc.stderr.read())
                    lines.append(line.decode().rstrip("\n"))
            assert lines[0].startswith("draining: ")
            assert edge.edge.draining
            # The player's next request is refused, and its connection closed, so that it
            # goes to another edge.
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503")
            assert b"Connection: close" in head and b"Retry-After: 2" in head
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        assert out.decode().splitlines()[-1] == "drained: no client connections open"
    finally:
        writer.close()
    assert edge.counter("edge_connections_open") == 0
    assert edge.counter("edge_overload_rejections_total", reason="draining") == 1
    assert edge.counter("edge_health_state", state="draining") == 1

    code, out, err = await run_cli("undrain", "--config", str(yaml))
    assert (code, out) == (0, "undrained: health ok\n"), err
    assert not edge.edge.draining
    status, _, body = await edge.get(client, "/v/t/a.m4s")
    assert (status, body) == (200, data)


async def test_drain_cli_with_a_wrong_token_changes_nothing(
    edges, origin_dir: Path, tmp_path: Path
):
    edge = await edges(edge_config(tmp_path, [f"file://{origin_dir}"]))
    admin = edge.admin.removeprefix("http://")
    yaml = cli_config(tmp_path, [tmp_path / "unused"], admin=admin, token="not-" + ADMIN_TOKEN)
    for command in ("drain", "undrain"):
        code, out, err = await run_cli(command, "--config", str(yaml))
        assert (code, out) == (1, "")
        assert err.startswith("error: status 401"), err
    assert not edge.edge.draining


# -- what the guide's commands and claims rest on -------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def shell_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_commands_after_the_release_switch_run_the_new_release():
    """A shell in /opt/opencdn/current keeps the old release as its working directory once the
    symlink is switched (`ln -sfn`): a relative .venv/bin/python there runs the old version
    (e.g. `control migrate` would migrate nothing and print the old schema version)."""
    switched_blocks = 0
    for path in (DOCS / "operations.md", DOCS / "install.md"):
        for block in shell_blocks(path.read_text()):
            switched = False
            for line in block:
                if re.search(r"\bln -sfn\b.*\s/opt/opencdn/current$", line):
                    switched = True
                    switched_blocks += 1
                elif switched and re.search(r"(?<![\w/])\.venv/bin/", line):
                    pytest.fail(f"{path.name}: {line!r} runs the old release after the switch")
    assert switched_blocks >= 2  # the control plane's and the edges' upgrade


def test_token_rotation_names_only_the_files_that_take_several_tokens(tmp_path: Path):
    """operations.md rotates service tokens by adding the new one as a line of the accepting
    file. Origin's and steering's files are lists; the control plane's feed token is one
    token, its first line: a second line is refused, so the guide must not list it."""
    from control.errors import Unauthorized
    from control.fill import FillFeed
    from origin.config import read_tokens as origin_tokens
    from steering.app import read_tokens as steering_tokens

    old, new = "old-token-0123456789abcdef", "new-token-0123456789abcdef"
    two = tmp_path / "two.tokens"
    two.write_text(f"{old}\n{new}\n")
    assert origin_tokens(two) == [old, new]
    assert steering_tokens(two) == [old, new]
    feed = FillFeed(
        SimpleNamespace(config=SimpleNamespace(fill=SimpleNamespace(credential_file=two)))
    )
    feed.authorize(f"Bearer {old}")
    with pytest.raises(Unauthorized):
        feed.authorize(f"Bearer {new}")

    text = " ".join((DOCS / "operations.md").read_text().split())
    m = re.search(r"add the new token as a line to the accepting file \(([^)]*)\)", text)
    assert m, "the rotation paragraph of operations.md moved"
    named = set(re.findall(r"`([\w.]+)`", m.group(1)))
    assert named == {"fill.tokens", "catalog.tokens", "heartbeat.token"}, named
