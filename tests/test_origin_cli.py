"""The origin from its command line: ingest, jobs, crash recovery, and playback through an edge."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
from aiohttp import web

from edge.config import SigningConfig
from origin.app import ORIGIN, create_app
from origin.config import load_config
from origin.jobs import JobQueue

from .conftest import TEST_KEYS, edge_config, start_edge, subprocess_env
from .test_origin_ingest import make_media

FILL = "fill-token-for-cli-tests-0123456789"
LADDER = (
    "- {name: 240p, height: 240, video_kbps: 300, audio_kbps: 64}\n"
    "- {name: 360p, height: 360, video_kbps: 600, audio_kbps: 96}\n"
)


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    (tmp_path / "fill.tokens").write_text(FILL + "\n")
    (tmp_path / "ladder.yaml").write_text(LADDER)
    (tmp_path / "origin.yaml").write_text(
        "listen: 127.0.0.1:0\n"
        f"storage: {{backend: local, root: {tmp_path / 'assets'}}}\n"
        f"fill_credentials_file: {tmp_path / 'fill.tokens'}\n"
        f"catalog_db: {tmp_path / 'catalog.sqlite'}\n"
        f"ingest: {{work_dir: {tmp_path / 'work'}, segment_seconds: 2, "
        f"ladder_file: {tmp_path / 'ladder.yaml'}, preset: ultrafast}}\n"
        f"jobs: {{db: {tmp_path / 'jobs.sqlite'}, lease: 2s, max_attempts: 3}}\n"
        "access_log: false\n"
    )
    make_media(
        tmp_path / "source.mp4",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440",
        "-t", "6", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
    )  # fmt: skip
    return tmp_path


def origin_cli(tmp: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "origin", *args, "--config", str(tmp / "origin.yaml")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=tmp,
    )


@pytest.mark.timeout(180)
async def test_ingest_publish_and_play_through_a_signed_edge(setup: Path, client):
    tmp = setup
    done = await asyncio.to_thread(
        origin_cli, tmp, "ingest", str(tmp / "source.mp4"), "--title", "clip1"
    )
    assert done.returncode == 0, done.stderr
    assert "published clip1" in done.stdout
    jobs = await asyncio.to_thread(origin_cli, tmp, "jobs", "--all")
    assert re.search(r"ingest\s+clip1\s+done", jobs.stdout), jobs.stdout
    again = await asyncio.to_thread(
        origin_cli, tmp, "ingest", str(tmp / "source.mp4"), "--title", "clip1"
    )
    assert again.returncode == 2 and "already published" in again.stderr

    runner = web.AppRunner(create_app(load_config(tmp / "origin.yaml")), handle_signals=False)
    await runner.setup()
    origin_url = f"http://127.0.0.1:{runner.app[ORIGIN].server.port}"  # type: ignore[union-attr]
    (tmp / "fill.cred").write_text(FILL + "\n")
    (tmp / "edge").mkdir()
    config = edge_config(tmp / "edge", [origin_url], signed=True)
    config = dataclasses.replace(
        config,
        upstreams=(dataclasses.replace(config.upstreams[0], credential_file=tmp / "fill.cred"),),
        signing=SigningConfig(key_file=config.signing.key_file, public_prefixes=()),
    )
    assert TEST_KEYS
    edge = await start_edge(config)
    try:
        root = tmp / "assets" / "v" / "clip1"
        master = edge.signed("/v/clip1/master.m3u8", "/v/clip1/")
        seen: set[str] = set()

        async def walk(url: str) -> None:
            """Fetch like a player: playlists, then what they reference, by relative URLs."""
            if url in seen:
                return
            seen.add(url)
            async with client.get(url) as r:
                assert r.status == 200, url
                body = await r.read()
            rel = url.split("/v/clip1/", 1)[1]
            assert body == (root / rel).read_bytes(), rel
            if rel.endswith(".m3u8"):
                text = body.decode()
                refs = re.findall(r'URI="([^"]+)"', text)
                refs += [line for line in text.splitlines() if line and not line.startswith("#")]
                for ref in refs:
                    await walk(urljoin(url, ref))

        await walk(master)
        await walk(edge.signed("/v/clip1/master_single.m3u8", "/v/clip1/"))
        assert any(u.endswith(".m4s") for u in seen) and any(u.endswith("single.mp4") for u in seen)
        mpd = (root / "manifest.mpd").read_text()
        assert "SegmentTemplate" in mpd or "SegmentList" in mpd
        assert edge.counter("edge_checksum_failures_total") == 0
        assert edge.counter("edge_upstream_failures_total", reason="status_401") == 0
    finally:
        await edge.stop()
        await runner.cleanup()


@pytest.mark.timeout(180)
async def test_worker_killed_mid_ingest_then_retry_publishes(setup: Path):
    tmp = setup
    queued = await asyncio.to_thread(
        origin_cli, tmp, "ingest", str(tmp / "source.mp4"), "--title", "clip2", "--enqueue-only"
    )
    assert queued.returncode == 0, queued.stderr
    # A slow encode (veryslow preset, via a ladder-independent config change) keeps the job
    # running long enough to kill its worker for sure.
    cfg = (tmp / "origin.yaml").read_text().replace("preset: ultrafast", "preset: veryslow")
    (tmp / "origin.yaml").write_text(cfg)
    worker = subprocess.Popen(
        [sys.executable, "-m", "origin", "worker", "--config", str(tmp / "origin.yaml")],
        env=subprocess_env(),
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    queue = JobQueue(tmp / "jobs.sqlite")
    try:
        deadline = time.monotonic() + 60
        while True:
            (job,) = queue.list(limit=1)
            if job.state == "running" and (job.progress or 0) > 0:
                break
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        # Nothing of the title is visible while its job is unfinished.
        assert not (tmp / "assets" / "v" / "clip2" / "manifest.json").exists()
        (tmp / "origin.yaml").write_text(cfg.replace("preset: veryslow", "preset: ultrafast"))
        # Once the dead worker's lease (2 s) runs out, the next worker takes the job over;
        # until then a worker finds nothing to do.
        deadline = time.monotonic() + 90
        while True:
            retry = await asyncio.to_thread(origin_cli, tmp, "worker", "--once")
            assert retry.returncode == 0, retry.stderr
            job = queue.get(job.id)
            assert job is not None
            if job.state != "running" or time.monotonic() > deadline:
                break
        assert (job.state, job.attempts) == ("done", 2), job
        assert (tmp / "assets" / "v" / "clip2" / "manifest.json").exists()
    finally:
        if worker.poll() is None:
            worker.kill()
        queue.close()


@pytest.mark.parametrize(
    ("make", "title", "message"),
    [
        (lambda p: p.write_bytes(b""), "ok1", "empty"),
        (lambda p: p.write_text("not a video\n" * 50), "ok2", ""),
        (None, "../evil", "title"),
        (None, "Bad Title", "title"),
    ],
)
def test_ingest_refuses_bad_input_before_queueing(setup: Path, make, title, message):
    tmp = setup
    src = tmp / "source.mp4"
    if make is not None:
        src = tmp / "bad.mp4"
        make(src)
    result = origin_cli(tmp, "ingest", str(src), "--title", title)
    assert result.returncode == 2, result.stdout
    assert message.lower() in result.stderr.lower()
    assert not (tmp / "jobs.sqlite").exists() or "ingest" not in origin_cli(tmp, "jobs").stdout
    assert not (tmp / "assets" / "v").exists()
