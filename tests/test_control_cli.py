"""`python -m control ...` as an operator runs it: real subprocesses on both backends."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import PYTHON, ROOT, free_port, subprocess_env
from tests.control_support import PASSWORD


def _write_config(tmp_path: Path, db_url: str, port: int = 0, **extra: object) -> Path:
    doc = {
        "listen": f"127.0.0.1:{port or free_port()}",
        "database": {"url": db_url},
        "kdf": {"n": 2, "r": 1, "p": 1},
        "recommend": {"interval": 0},
        **extra,
    }
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "control", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=ROOT,
    )


def test_check_config_accepts_the_example() -> None:
    r = _run("check-config", "--config", str(ROOT / "conf" / "control.example.yaml"))
    assert r.returncode == 0, r.stderr
    assert "configuration ok" in r.stdout


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("listen: [1]\n", "listen"),
        ("database: {url: 'mysql://x'}\n", "database.url"),
        ("plans: []\n", "plans"),
        ("sesions: {}\n", 'did you mean "sessions"'),
        ("kdf: {n: 3}\n", "kdf.n"),
    ],
)
def test_check_config_names_the_bad_key(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    r = _run("check-config", "--config", str(path))
    assert r.returncode == 2
    assert str(path) in r.stderr and needle in r.stderr, r.stderr


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    r = _run("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_migrate_is_idempotent(tmp_path: Path, control_db_url: str) -> None:
    path = _write_config(tmp_path, control_db_url)
    first = _run("migrate", "--config", str(path))
    assert first.returncode == 0, first.stderr
    assert "schema version" in first.stdout
    again = _run("migrate", "--config", str(path))
    assert again.returncode == 0 and again.stdout == first.stdout


def test_unreachable_database_is_a_clear_runtime_error(tmp_path: Path) -> None:
    path = _write_config(tmp_path, "sqlite:////proc/forbidden/control.db")
    r = _run("migrate", "--config", str(path))
    assert r.returncode == 1
    assert "database error" in r.stderr or "error" in r.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_create_admin_sign_in_and_stop(
    tmp_path: Path, control_db_url: str, workers: int
) -> None:
    port = free_port()
    path = _write_config(tmp_path, control_db_url, port, workers=workers)
    made = _run(
        "create-admin", "--config", str(path), "--email", "Root@Example.com", stdin=PASSWORD + "\n"
    )
    assert made.returncode == 0, made.stderr
    dup = _run("create-admin", "--config", str(path), "--email", "root@example.com", stdin="x\n")
    assert dup.returncode == 2
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "control",
        "serve",
        "--config",
        str(path),
        env=subprocess_env(),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        lines = []
        while True:  # ready when it says so; a crash ends the stream and fails here
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "".join(lines)
            lines.append(line)
            ready = sum("event=control_ready" in x for x in lines)
            if ready == workers:
                break
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
            async with http.post(
                base + "/v1/sessions", json={"email": "root@example.com", "password": PASSWORD}
            ) as r:
                assert r.status == 201, await r.text()
                body = await r.json()
            async with http.get(
                base + "/v1/account", headers={"Authorization": f"Bearer {body['token']}"}
            ) as r:
                assert (await r.json())["role"] == "admin"
            # /metrics counts the whole service, whichever worker answers the scrape.
            for _ in range(10):
                async with http.get(base + "/v1/plans") as r:
                    assert r.status == 200
            seen = await _plans_count(http, base, want=10)
            assert seen == 10
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = (await proc.stderr.read()).decode()
        assert rest.count("event=control_stopped") == workers
        # No secret reaches the log: neither the password nor the session token.
        log = "".join(lines) + rest
        assert PASSWORD not in log and body["token"] not in log
        assert "event=request" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _plans_count(http: aiohttp.ClientSession, base: str, want: int) -> int:
    """Scrape until the counted GET /v1/plans requests reach ``want`` (workers publish their
    counts every second); a count must never go down between scrapes."""
    pattern = re.compile(r'control_requests_total\{[^}]*route="/v1/plans"[^}]*\} (\S+)')
    last = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline:
        async with http.get(base + "/metrics") as r:
            text = await r.text()
        count = int(sum(float(v) for v in pattern.findall(text)))
        assert count >= last, "a counter went backwards"
        last = count
        if count >= want:
            return count
        await asyncio.sleep(0.1)
    return last


def test_recompute_runs_once(tmp_path: Path, control_db_url: str) -> None:
    path = _write_config(tmp_path, control_db_url)
    r = _run("recompute", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "recomputed home rows for 0 profiles" in r.stdout
    assert r.stdout.count("\n") == 1
