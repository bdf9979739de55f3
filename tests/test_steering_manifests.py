"""steering.manifests: HLS and DASH-IF Content Steering documents and the strict parser."""

from __future__ import annotations

import json
from typing import Any

import pytest

from steering.manifests import (
    PathwayClone,
    SteeringError,
    SteeringManifest,
    dash_steering,
    hls_master_steering_tag,
    hls_steering,
    parse_dash_steering,
    parse_hls_steering,
    pathway_id,
)

EDGES = ["edge-fra-1", "edge-ams.2", "edge_par_3"]


def test_hls_for_three_edges_parses() -> None:
    doc = hls_steering(EDGES, ttl=300, reload_uri="/steer/v1?session=abc")
    assert doc == {
        "VERSION": 1,
        "TTL": 300,
        "RELOAD-URI": "/steer/v1?session=abc",
        "PATHWAY-PRIORITY": EDGES,
    }
    assert parse_hls_steering(doc) == SteeringManifest(
        1, 300, "/steer/v1?session=abc", tuple(EDGES), ()
    )


def test_dash_for_three_edges_uses_service_location_keys() -> None:
    doc = dash_steering(EDGES, ttl=60, reload_uri=None)
    assert doc == {"VERSION": 1, "TTL": 60, "SERVICE-LOCATION-PRIORITY": EDGES}
    assert parse_dash_steering(doc).priority == tuple(EDGES)
    # The two dialects are not interchangeable: each player reads its own key.
    with pytest.raises(SteeringError, match="unknown keys"):
        parse_hls_steering(doc)
    with pytest.raises(SteeringError, match="unknown keys"):
        parse_dash_steering(hls_steering(EDGES, ttl=60, reload_uri=None))


CLONES = (
    PathwayClone("edge-fra-1", "edge-fra-9", "e9.fra.cdn.example", {"token": "t1"}),
    PathwayClone("edge-fra-1", "edge-v6", "[2001:db8::1]:8443"),
)


@pytest.mark.parametrize(
    ("build", "parse", "key"),
    [
        (hls_steering, parse_hls_steering, "PATHWAY-PRIORITY"),
        (dash_steering, parse_dash_steering, "SERVICE-LOCATION-PRIORITY"),
    ],
)
def test_json_round_trip_with_clones(build: Any, parse: Any, key: str) -> None:
    doc = build([*EDGES, "edge-fra-9", "edge-v6"], ttl=30, reload_uri="https://s/x", clones=CLONES)
    assert doc["PATHWAY-CLONES"] == [
        {
            "BASE-ID": "edge-fra-1",
            "ID": "edge-fra-9",
            "URI-REPLACEMENT": {"HOST": "e9.fra.cdn.example", "PARAMS": {"token": "t1"}},
        },
        {
            "BASE-ID": "edge-fra-1",
            "ID": "edge-v6",
            "URI-REPLACEMENT": {"HOST": "[2001:db8::1]:8443"},
        },
    ]
    text = json.dumps(doc)
    again = json.loads(text)
    assert again == doc
    parsed = parse(again)
    assert parsed.clones == CLONES
    assert parsed.priority[-2:] == ("edge-fra-9", "edge-v6")
    assert list(again)[-2:] == [key, "PATHWAY-CLONES"]


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True, "300", None])
def test_ttl_must_be_positive_integer(ttl: Any) -> None:
    with pytest.raises(SteeringError, match="TTL"):
        hls_steering(EDGES, ttl=ttl, reload_uri=None)
    with pytest.raises(SteeringError, match="TTL"):
        parse_hls_steering({"VERSION": 1, "TTL": ttl, "PATHWAY-PRIORITY": EDGES})


@pytest.mark.parametrize(
    ("reload_uri", "ok"),
    [
        (None, True),  # key omitted: the player reuses the current steering URI
        ("/steer?s=1", True),  # relative: resolved against the manifest URI
        ("https://steer.example/v1?s=1&p=2", True),
        ("", False),
        ("/steer path", False),
        ("/steer\n", False),
    ],
)
def test_reload_uri(reload_uri: str | None, ok: bool) -> None:
    if ok:
        doc = hls_steering(EDGES, ttl=10, reload_uri=reload_uri)
        assert ("RELOAD-URI" in doc) is (reload_uri is not None)
        assert parse_hls_steering(doc).reload_uri == reload_uri
    else:
        with pytest.raises(SteeringError, match="RELOAD-URI"):
            hls_steering(EDGES, ttl=10, reload_uri=reload_uri)


@pytest.mark.parametrize(
    ("edge_id", "ok"),
    [
        ("edge-1", True),
        ("EDGE.fra_2", True),
        ("0", True),
        ("", False),
        ("edge 1", False),
        ("edge/1", False),
        ('edge"1', False),
        ("edge,1", False),
        ("édge", False),
        ("edge\n", False),
    ],
)
def test_pathway_id(edge_id: str, ok: bool) -> None:
    if ok:
        assert pathway_id(edge_id) == edge_id
    else:
        with pytest.raises(SteeringError, match="pathway id"):
            pathway_id(edge_id)
        with pytest.raises(SteeringError):
            hls_steering([edge_id], ttl=10, reload_uri=None)


BASE: dict[str, Any] = {"VERSION": 1, "TTL": 300, "PATHWAY-PRIORITY": ["a", "b"]}
GOOD_CLONE: dict[str, Any] = {"BASE-ID": "a", "ID": "c", "URI-REPLACEMENT": {"HOST": "c.example"}}


# Strict parser: what hls.js would refuse or misread, and our own extra strictness.
@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "JSON object"),
        ({"TTL": 300, "PATHWAY-PRIORITY": ["a"]}, "VERSION"),
        ({"VERSION": 1, "PATHWAY-PRIORITY": ["a"]}, "TTL"),
        ({"VERSION": 1, "TTL": 300}, "PATHWAY-PRIORITY"),
        (BASE | {"VERSION": 2}, "VERSION"),
        (BASE | {"VERSION": "1"}, "VERSION"),
        (BASE | {"VERSION": True}, "VERSION"),
        (BASE | {"VERSION": 1.0}, "VERSION"),
        (BASE | {"PATHWAY-PRIORITY": []}, "non-empty"),
        (BASE | {"PATHWAY-PRIORITY": "a"}, "non-empty list"),
        (BASE | {"PATHWAY-PRIORITY": ["a", "a"]}, "duplicate"),
        (BASE | {"PATHWAY-PRIORITY": ["a", 1]}, "pathway id"),
        (BASE | {"RELOAD_URI": "/x"}, "unknown keys"),
        (BASE | {"RELOAD-URI": 5}, "RELOAD-URI"),
        (BASE | {"PATHWAY-CLONES": {}}, "must be a list"),
        (BASE | {"PATHWAY-CLONES": ["a"]}, "object"),
        (BASE | {"PATHWAY-CLONES": [{"BASE-ID": "a", "ID": "c"}]}, "lacks"),
        (BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"X": 1}]}, "unknown PATHWAY-CLONES"),
        (BASE | {"PATHWAY-CLONES": [GOOD_CLONE, GOOD_CLONE]}, "duplicate clone"),
        (BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"ID": "a"}]}, "itself"),
        (BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"ID": "c d"}]}, "pathway id"),
        (BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"URI-REPLACEMENT": "x"}]}, "object"),
        (BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"URI-REPLACEMENT": {}}]}, "replaces nothing"),
        (
            BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"URI-REPLACEMENT": {"HOST": "h/x"}}]},
            "HOST",
        ),
        (
            BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"URI-REPLACEMENT": {"HOST": "https://h"}}]},
            "HOST",
        ),
        (
            BASE
            | {
                "PATHWAY-CLONES": [
                    GOOD_CLONE | {"URI-REPLACEMENT": {"HOST": "h", "PARAMS": {"k": 1}}}
                ]
            },
            "PARAMS",
        ),
        (
            BASE | {"PATHWAY-CLONES": [GOOD_CLONE | {"BASE-ID": "d"}, GOOD_CLONE | {"ID": "d"}]},
            "defined later",
        ),
    ],
)
def test_strict_parser_refuses(doc: Any, message: str) -> None:
    with pytest.raises(SteeringError, match=message):
        parse_hls_steering(doc)


def test_parser_accepts_clone_of_earlier_clone_and_per_variant_uris() -> None:
    doc = BASE | {
        "PATHWAY-CLONES": [
            GOOD_CLONE,
            {"BASE-ID": "c", "ID": "d", "URI-REPLACEMENT": {"HOST": "d.example"}},
            {
                "BASE-ID": "a",
                "ID": "e",
                "URI-REPLACEMENT": {"PER-VARIANT-URIS": {"v1": "https://e/v1.m3u8"}},
            },
        ]
    }
    assert [c.id for c in parse_hls_steering(doc).clones] == ["c", "d", "e"]


@pytest.mark.parametrize(
    "clone",
    [
        PathwayClone("a", "a", "h.example"),
        PathwayClone("a b", "c", "h.example"),
        PathwayClone("a", "c", "h.example/path"),
        PathwayClone("a", "c", ""),
        PathwayClone("a", "c", "h.example", {"": "v"}),
    ],
)
def test_builder_refuses_bad_clones(clone: PathwayClone) -> None:
    with pytest.raises(SteeringError):
        hls_steering(["a", "c"], ttl=10, reload_uri=None, clones=[clone])


@pytest.mark.parametrize(
    ("server_uri", "pathway", "expected"),
    [
        (
            "https://steer.example/v1/hls?s=1",
            "edge-fra-1",
            '#EXT-X-CONTENT-STEERING:SERVER-URI="https://steer.example/v1/hls?s=1",'
            'PATHWAY-ID="edge-fra-1"',
        ),
        ("/steer", None, '#EXT-X-CONTENT-STEERING:SERVER-URI="/steer"'),
        # Commas are fine inside a quoted-string.
        ("/steer?a=1,2", "p", '#EXT-X-CONTENT-STEERING:SERVER-URI="/steer?a=1,2",PATHWAY-ID="p"'),
    ],
)
def test_hls_tag(server_uri: str, pathway: str | None, expected: str) -> None:
    assert hls_master_steering_tag(server_uri, pathway) == expected


# HLS quoted-strings have no escapes: '"', CR and LF cannot be written at all.
@pytest.mark.parametrize(
    ("server_uri", "pathway", "message"),
    [
        ('/steer?x="1"', "p", "SERVER-URI"),
        ("/steer\r\n#EXT-X-ENDLIST", "p", "SERVER-URI"),
        ("", "p", "SERVER-URI"),
        ("/steer", 'p"', "pathway id"),
        ("/steer", "p q", "pathway id"),
        ("/steer", "", "pathway id"),
    ],
)
def test_hls_tag_refuses_unquotable(server_uri: str, pathway: str, message: str) -> None:
    with pytest.raises(SteeringError, match=message):
        hls_master_steering_tag(server_uri, pathway)


def test_steering_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        pathway_id("bad id")
