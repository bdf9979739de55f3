"""Steering configuration: the example loads, every setting is documented, errors name keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from steering.config import ConfigError, EdgeConfig, SiteConfig, SteeringConfig, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "steering.example.yaml"


def test_example_loads_and_documents_every_setting():
    config = load_config(EXAMPLE)
    assert [e.id for e in config.edges] == ["par1", "par2", "isp-a-1", "fra1"]
    assert config.edges[2].embedded and config.edges[2].prefixes[1] == "2001:db8:a::/48"
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"\b([a-z_]+):", text))
    for cls in (SteeringConfig, SiteConfig, EdgeConfig):
        for f in dataclasses.fields(cls):
            assert f.name in documented, f"{cls.__name__}.{f.name}"


def test_empty_file_means_defaults(tmp_path):
    (tmp_path / "s.yaml").write_text("")
    config = load_config(tmp_path / "s.yaml")
    assert (config.dead_after, config.recover_after, config.bounded_load) == (3.0, 3, 1.25)


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
