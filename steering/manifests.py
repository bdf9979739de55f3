"""HLS and DASH Content Steering manifests, so unmodified players follow steering.

Pure functions building the JSON documents a steering server returns, plus a
strict parser used by tests and by the steering server's self-check.

References:

* HLS: Apple, "HLS Content Steering" (steering manifest JSON: VERSION, TTL,
  RELOAD-URI, PATHWAY-PRIORITY, PATHWAY-CLONES) and the EXT-X-CONTENT-STEERING
  tag of the HLS spec (draft-pantos-hls-rfc8216bis, section 4.4.6.6).
* DASH: DASH-IF Content Steering (CTA-5004 / ETSI TS 103 998): the same JSON
  shape with SERVICE-LOCATION-PRIORITY instead of PATHWAY-PRIORITY; entries
  match BaseURL@serviceLocation in the MPD's <ContentSteering> setup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

# HLS spec, EXT-X-CONTENT-STEERING: a Pathway ID "MUST consist only of the
# characters [a..z], [A..Z], [0..9], '.', '-', and '_'". CTA-5004 copies it for
# service locations in steering manifests; we use the same rule for both.
_PATHWAY_RE = re.compile(r"[A-Za-z0-9._-]+")
# A host (optionally :port) for URI-REPLACEMENT HOST: no scheme, path or userinfo.
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?"
)
_CLONE_KEYS = frozenset({"BASE-ID", "ID", "URI-REPLACEMENT"})
_REPLACEMENT_KEYS = frozenset({"HOST", "PARAMS", "PER-VARIANT-URIS", "PER-RENDITION-URIS"})


class SteeringError(ValueError):
    """A steering manifest or tag that a player would reject or misread."""


@dataclass(frozen=True)
class PathwayClone:
    """A new pathway (service location) copied from ``base_id`` on another host.

    Clones let the server add an edge that is not in the multivariant playlist
    or MPD: the player copies every URI of ``base_id``, replaces the host with
    ``host`` and adds ``params`` as query parameters (HLS Content Steering,
    PATHWAY-CLONES / URI-REPLACEMENT).
    """

    base_id: str
    id: str
    host: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SteeringManifest:
    """A parsed, validated steering manifest (HLS or DASH)."""

    version: int
    ttl: int
    reload_uri: str | None
    priority: tuple[str, ...]  # PATHWAY-PRIORITY or SERVICE-LOCATION-PRIORITY
    clones: tuple[PathwayClone, ...] = ()


def pathway_id(edge_id: str) -> str:
    """The Pathway ID for an edge: the edge id itself if it is valid, else an error.

    We refuse rather than escape: escaping would make two edge ids collide or
    make ids in player logs differ from the config. Edge ids come from config,
    so the error surfaces at config load.
    """
    if not isinstance(edge_id, str) or not _PATHWAY_RE.fullmatch(edge_id):
        raise SteeringError(
            f"invalid pathway id {edge_id!r}: use only letters, digits, '.', '-' and '_'"
        )
    return edge_id


_valid_pathway_id = pathway_id  # hls_master_steering_tag's parameter shadows the name


def _quoted(name: str, value: str) -> str:
    # HLS quoted-string: "MUST NOT contain CR, LF or the double quote" and
    # there is no escape mechanism, so such values cannot be written at all.
    if not value or any(c in value for c in '"\r\n'):
        raise SteeringError(f"{name} must be non-empty without '\"', CR or LF: {value!r}")
    return f'{name}="{value}"'


def hls_master_steering_tag(server_uri: str, pathway_id: str | None = None) -> str:
    """The EXT-X-CONTENT-STEERING tag for a multivariant playlist.

    PATHWAY-ID names the pathway the player starts on, before its first
    steering manifest load; without it the player picks any pathway.
    """
    attrs = [_quoted("SERVER-URI", server_uri)]
    if pathway_id is not None:
        attrs.append(_quoted("PATHWAY-ID", _valid_pathway_id(pathway_id)))
    return "#EXT-X-CONTENT-STEERING:" + ",".join(attrs)


def _check_ttl(ttl: object) -> int:
    # TTL is required: the number of seconds before the player reloads. 0 would
    # make players reload in a tight loop; bool is an int in Python, not in JSON.
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise SteeringError(f"TTL must be an integer > 0, not {ttl!r}")
    return ttl


def _check_reload_uri(uri: object) -> str:
    # RELOAD-URI is optional; when absent the player reuses the current
    # steering URI. It may be relative (resolved against the manifest's URI).
    if not isinstance(uri, str) or not uri or any(c.isspace() for c in uri):
        raise SteeringError(f"RELOAD-URI must be a non-empty URI without spaces, not {uri!r}")
    return uri


def _check_host(host: object) -> str:
    if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
        raise SteeringError(f"HOST must be a host name (optionally :port), not {host!r}")
    return host


def _clone_json(clone: PathwayClone) -> JSON:
    replacement: JSON = {"HOST": _check_host(clone.host)}
    if clone.params:
        replacement["PARAMS"] = dict(clone.params)
    return {
        "BASE-ID": pathway_id(clone.base_id),
        "ID": pathway_id(clone.id),
        "URI-REPLACEMENT": replacement,
    }


def _build(
    priority_key: str,
    priority: Sequence[str],
    ttl: int,
    reload_uri: str | None,
    clones: Sequence[PathwayClone],
) -> JSON:
    doc: JSON = {"VERSION": 1, "TTL": _check_ttl(ttl)}
    if reload_uri is not None:
        doc["RELOAD-URI"] = _check_reload_uri(reload_uri)
    doc[priority_key] = [pathway_id(p) for p in priority]
    if clones:
        doc["PATHWAY-CLONES"] = [_clone_json(c) for c in clones]
    _parse(doc, priority_key)  # never hand a player something our own checker refuses
    return doc


def hls_steering(
    pathways: Sequence[str],
    *,
    ttl: int,
    reload_uri: str | None,
    clones: Sequence[PathwayClone] = (),
) -> JSON:
    """An HLS steering manifest: the player tries ``pathways`` in order."""
    return _build("PATHWAY-PRIORITY", pathways, ttl, reload_uri, clones)


def dash_steering(
    service_locations: Sequence[str],
    *,
    ttl: int,
    reload_uri: str | None,
    clones: Sequence[PathwayClone] = (),
) -> JSON:
    """A DASH-IF (CTA-5004) steering manifest: same shape, SERVICE-LOCATION-PRIORITY."""
    return _build("SERVICE-LOCATION-PRIORITY", service_locations, ttl, reload_uri, clones)


def _ids(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SteeringError(f"{key} must be a non-empty list")
    ids = tuple(pathway_id(v) for v in value)
    if len(set(ids)) != len(ids):
        raise SteeringError(f"{key} has duplicate ids: {list(ids)}")
    return ids


def _parse_clone(obj: object) -> PathwayClone:
    if not isinstance(obj, dict):
        raise SteeringError("each PATHWAY-CLONES entry must be an object")
    missing = _CLONE_KEYS - obj.keys()
    if missing:
        raise SteeringError(f"PATHWAY-CLONES entry lacks {sorted(missing)}")
    if obj.keys() - _CLONE_KEYS:
        raise SteeringError(f"unknown PATHWAY-CLONES keys {sorted(obj.keys() - _CLONE_KEYS)}")
    base_id, clone_id = pathway_id(obj["BASE-ID"]), pathway_id(obj["ID"])
    if base_id == clone_id:
        raise SteeringError(f"clone {clone_id!r} has itself as BASE-ID")
    rep = obj["URI-REPLACEMENT"]
    if not isinstance(rep, dict):
        raise SteeringError("URI-REPLACEMENT must be an object")
    if rep.keys() - _REPLACEMENT_KEYS:
        raise SteeringError(
            f"unknown URI-REPLACEMENT keys {sorted(rep.keys() - _REPLACEMENT_KEYS)}"
        )
    # HOST is optional in the spec (PER-VARIANT-URIS alone is allowed), but a
    # clone that neither moves host nor gives URIs is the base pathway again.
    if "HOST" not in rep and "PER-VARIANT-URIS" not in rep and "PER-RENDITION-URIS" not in rep:
        raise SteeringError(f"clone {clone_id!r} replaces nothing")
    host = _check_host(rep["HOST"]) if "HOST" in rep else ""
    params = rep.get("PARAMS", {})
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in params.items()
    ):
        raise SteeringError("PARAMS must be an object of non-empty names to string values")
    return PathwayClone(base_id, clone_id, host, dict(params))


def _parse(doc: object, priority_key: str) -> SteeringManifest:
    if not isinstance(doc, dict):
        raise SteeringError("a steering manifest is a JSON object")
    allowed = {"VERSION", "TTL", "RELOAD-URI", priority_key, "PATHWAY-CLONES"}
    # Players ignore unknown keys, which is exactly why we refuse them here: a
    # typo such as "RELOAD_URI" would be silently ignored in the field.
    unknown = doc.keys() - allowed
    if unknown:
        raise SteeringError(f"unknown keys {sorted(unknown)}")
    for key in ("VERSION", "TTL", priority_key):
        if key not in doc:
            raise SteeringError(f"missing required key {key}")
    version = doc["VERSION"]
    # Only VERSION 1 exists; hls.js and dash.js refuse to apply other versions.
    if isinstance(version, bool) or version != 1 or not isinstance(version, int):
        raise SteeringError(f"VERSION must be 1, not {version!r}")
    ttl = _check_ttl(doc["TTL"])
    reload_uri = _check_reload_uri(doc["RELOAD-URI"]) if "RELOAD-URI" in doc else None
    priority = _ids(priority_key, doc[priority_key])
    clones: tuple[PathwayClone, ...] = ()
    if "PATHWAY-CLONES" in doc:
        raw = doc["PATHWAY-CLONES"]
        if not isinstance(raw, list):
            raise SteeringError("PATHWAY-CLONES must be a list")
        clones = tuple(_parse_clone(c) for c in raw)
        ids = [c.id for c in clones]
        if len(set(ids)) != len(ids):
            raise SteeringError(f"duplicate clone ids {ids}")
        # The spec requires a clone ID to be new: cloning onto an existing
        # pathway id is ignored by players. A clone's id may (and usually does)
        # appear in the priority list; its base must not be a later clone, since
        # players apply clones in order.
        for i, c in enumerate(clones):
            if c.base_id in ids[i:]:
                raise SteeringError(f"clone {c.id!r} is based on a clone defined later")
    return SteeringManifest(1, ttl, reload_uri, priority, clones)


def parse_hls_steering(doc: object) -> SteeringManifest:
    """Validate an HLS steering manifest as strictly as a player reads it."""
    return _parse(doc, "PATHWAY-PRIORITY")


def parse_dash_steering(doc: object) -> SteeringManifest:
    """Validate a DASH-IF steering manifest (SERVICE-LOCATION-PRIORITY)."""
    return _parse(doc, "SERVICE-LOCATION-PRIORITY")
