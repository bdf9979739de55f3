"""Steering configuration: the example loads, every setting is documented, errors name keys."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from steering.config import (
    ConfigError,
    EdgeConfig,
    FillConfig,
    SiteConfig,
    SteeringConfig,
    load_config,
)

from .conftest import free_port, subprocess_env

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "steering.example.yaml"


def test_example_loads_and_documents_every_setting():
    config = load_config(EXAMPLE)
    assert [e.id for e in config.edges] == ["par1", "par2", "isp-a-1", "fra1"]
    assert config.edges[2].embedded and config.edges[2].prefixes[1] == "2001:db8:a::/48"
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"\b([a-z_]+):", text))
    for cls in (SteeringConfig, SiteConfig, EdgeConfig, FillConfig):
        for f in dataclasses.fields(cls):
            assert f.name in documented, f"{cls.__name__}.{f.name}"


def test_empty_file_means_defaults(tmp_path):
    (tmp_path / "s.yaml").write_text("")
    config = load_config(tmp_path / "s.yaml")
    assert (config.dead_after, config.recover_after, config.bounded_load) == (3.0, 3, 1.25)
    assert config.fill == FillConfig()  # fill disabled: no popularity_url
    assert (config.fill.refresh, config.fill.share, config.fill.max_copies) == (3600.0, 0.9, 3)


def test_fill_section_and_fill_capacity(tmp_path):
    (tmp_path / "feed.token").write_text("t\n")
    (tmp_path / "s.yaml").write_text(
        "sites: [{name: a, latitude: 1, longitude: 0}]\n"
        "edges: [{id: e, site: a, url: 'http://x', fill_capacity: 2GiB}]\n"
        "fill: {popularity_url: 'http://127.0.0.1:8000/', refresh: 10m, share: 0.5,\n"
        f"       max_copies: 2, stickiness: 1.5, credential_file: {tmp_path / 'feed.token'},\n"
        f"       state_file: {tmp_path / 'fill.json'}}}\n"
    )
    config = load_config(tmp_path / "s.yaml")
    assert config.edges[0].fill_capacity == 2 * 1024**3
    f = config.fill
    assert (f.popularity_url, f.refresh, f.share, f.max_copies, f.stickiness) == (
        "http://127.0.0.1:8000",
        600.0,
        0.5,
        2,
        1.5,
    )
    assert f.state_file == tmp_path / "fill.json"
    assert f.feed_limit == 100_000  # the default
    (tmp_path / "s.yaml").write_text("fill: {feed_limit: 1000000}\n")
    assert load_config(tmp_path / "s.yaml").fill.feed_limit == 1_000_000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("listn: 1.2.3.4:5\n", "listn"),
        ("sites: [{name: a, latitude: 91, longitude: 0}]\n", "sites[0].latitude"),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\nedges: [{id: e, site: b, url: 'http://x'}]\n",
            "edges[0].site",
        ),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\nedges: [{id: e, site: a, url: 'ftp://x'}]\n",
            "edges[0].url",
        ),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\n"
            "edges: [{id: e, site: a, url: 'http://x', prefixes: [10.0.0.0/33]}]\n",
            "edges[0].prefixes[0]",
        ),
        ("trusted_proxies: [nonsense]\n", "trusted_proxies[0]"),
        ("dead_after: forever\n", "dead_after"),
        ("bounded_load: 0.5\n", "bounded_load"),
        ("coverage_zone_file: /nonexistent.json\n", "coverage_zone_file"),
        ("fill: {popularity_url: 'ftp://x'}\n", "fill.popularity_url"),
        ("fill: {share: 0}\n", "fill.share"),
        ("fill: {share: 1.5}\n", "fill.share"),
        ("fill: {max_copies: 0}\n", "fill.max_copies"),
        ("fill: {max_copies: 2.5}\n", "fill.max_copies"),
        ("fill: {stickiness: 0.9}\n", "fill.stickiness"),
        ("fill: {refresh: soon}\n", "fill.refresh"),
        ("fill: {credential_file: /nonexistent.token}\n", "fill.credential_file"),
        ("fill: {state_file: /nonexistent-dir/fill.json}\n", "fill.state_file"),
        ("fill: {refesh: 1h}\n", "fill.refesh"),
        ("fill: {feed_limit: 0}\n", "fill.feed_limit"),
        ("fill: {feed_limit: 1000001}\n", "fill.feed_limit"),
        ("fill: {feed_limit: 5.5}\n", "fill.feed_limit"),
        ("fill: {feed_limit: true}\n", "fill.feed_limit"),
        ("fill: {popularity_url: 'http://fill:secret@control:8090'}\n", "fill.popularity_url"),
        ("origin_url: 'http://u@origin:8000'\n", "origin_url"),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\n"
            "edges: [{id: e, site: a, url: 'http://user:password@edge1:8080'}]\n",
            "edges[0].url",
        ),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\n"
            "edges: [{id: e, site: a, url: 'https://:pw@edge1'}]\n",
            "edges[0].url",
        ),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\n"
            "edges: [{id: e, site: a, url: 'http://x', fill_capacity: lots}]\n",
            "edges[0].fill_capacity",
        ),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}]\n"
            "edges: [{id: e, site: a, url: 'http://x', fill_capacity: 0}]\n",
            "edges[0].fill_capacity",
        ),
        (
            "sites: [{name: a, latitude: 1, longitude: 0}, {name: a, latitude: 1, longitude: 0}]\n",
            "sites",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, key):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(f) in str(info.value) and key in str(info.value), str(info.value)
    # A URL with user:password@ is refused without being quoted back (logs keep errors).
    assert not re.search(r"@(control|origin|edge1)", str(info.value)), str(info.value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steering", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )


def test_check_config_cli(tmp_path):
    ok = _cli("check-config", "--config", str(EXAMPLE))
    assert ok.returncode == 0 and "4 edges" in ok.stdout, ok.stderr
    broken = tmp_path / "czf.json"
    broken.write_text('{"coverageZones": {"z": {"network": ["999.0.0.0/8"]}}}')
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"coverage_zone_file: {broken}\n")
    bad = _cli("check-config", "--config", str(cfg))
    assert (
        bad.returncode == 2 and "coverage_zone_file" in bad.stderr and "999.0.0.0/8" in bad.stderr
    )


def test_serve_cli_answers_and_stops(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steering",
            "serve",
            "--config",
            str(EXAMPLE),
            "-a",
            f"127.0.0.1:{port}",
        ],
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v1/steer?key=/v/t1/&client=203.0.113.5", timeout=2
                ) as r:
                    doc = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert doc["edges"][0]["edge"] == "isp-a-1"  # the embedded edge owns 203.0.113.0/24
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
