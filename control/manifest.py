"""Pure parts of playback authorization: the steering answer, edge URL prefixes, the
content steering URLs and the per-session HLS multivariant playlist.

No I/O here (the steering client is control/steer.py, the service control/playback.py), so
everything is table-tested without an event loop.

The per-session multivariant playlist
-------------------------------------
``hls_multivariant`` writes what origin/package.py ``master_playlist`` writes for a title,
restricted to the renditions the viewer's plan allows, with ABSOLUTE URIs under the session's
signed prefix on the first-ranked edge (``<edge>/_t/<TOKEN>/v/<key>/<rendition>/index.m3u8``),
and, when steering is configured, an ``EXT-X-CONTENT-STEERING`` tag (draft-pantos-hls-rfc8216bis,
4.4.6.6) plus ``PATHWAY-ID`` on every variant.

Pathways. The steering service builds its HLS steering manifest as PATHWAY-CLONES of a *base*
pathway, one clone per ranked edge, each replacing the HOST of the base pathway's URIs with the
edge's (steering/app.py ``_steering_doc``); it refuses an edge id as the base. So the playlist
names one neutral pathway, ``BASE_PATHWAY`` ("cdn"), whose host is the first-ranked edge; the
player starts on it and the steering manifest (``base=cdn``) clones it onto every edge in rank
order. The token is a path segment, the same for every edge, so a HOST replacement keeps it.

Audio. origin/package.py puts audio in separate renditions (``EXT-X-MEDIA`` groups named after
the audio track, e.g. ``audio_128k``, ``CHANNELS`` from the track). The origin's catalog feed
(origin/catalog.py ``summary``) carries per rendition only name, width, height, bandwidth,
codecs and frame_rate: no audio group. So: a rendition dict that names its audio track
(``"audio": "audio_128k"``, as manifest.json's rendition entries do) gets the group, with
``CHANNELS`` when ``"audio_channels"`` is known; a rendition without it is written without an
``AUDIO`` attribute (nothing is fetched to find out). Until the feed carries the audio name,
players that need the audio group use ``manifests.hls_edge`` (the origin's own master.m3u8
through the edge), which has it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from steering.manifests import hls_master_steering_tag

__all__ = [
    "BASE_PATHWAY",
    "HLS_CONTENT_TYPE",
    "HLS_VERSION",
    "RankedEdge",
    "SteerAnswerError",
    "allowed_renditions",
    "clean_rendition",
    "hls_multivariant",
    "parse_steer_answer",
    "steering_url",
    "title_prefix",
    "url_prefix",
]

BASE_PATHWAY: Final = "cdn"
HLS_VERSION: Final = 7  # as origin/package.py writes (fMP4 + EXT-X-MAP)
HLS_CONTENT_TYPE: Final = "application/vnd.apple.mpegurl"

# A path segment the origin can have written: no '/', no dot segment, no quote or space.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# Media keys are origin title ids (and episode keys): path segments of the same alphabet.
_KEY_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# RFC 6381 codecs list as HLS quotes it: no '"' (no escape exists), no spaces.
_CODECS_RE: Final = re.compile(
    r"[A-Za-z0-9]{4}(\.[A-Za-z0-9_-]+)*(,[A-Za-z0-9]{4}(\.[A-Za-z0-9_-]+)*)*"
)
# HLS pathway ids (and edge ids, which steering uses as pathway ids).
_PATHWAY_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_EDGES: Final = 64


class SteerAnswerError(ValueError):
    """A steering answer that names no usable edge."""


@dataclass(frozen=True, slots=True)
class RankedEdge:
    id: str  # the edge id (a valid HLS pathway id); "origin" for the origin
    url: str  # base URL, scheme://host[:port][/path], no trailing slash


def _base_url(value: object) -> str | None:
    """``value`` as an http(s) base URL without trailing slash, or None if it is not one."""
    if not isinstance(value, str) or not value or len(value) > 1024:
        return None
    if any(c.isspace() or not c.isprintable() or c in "\"'<>\\" for c in value):
        return None
    u = urlsplit(value)
    try:
        u.port  # noqa: B018  # raises ValueError on a malformed port
    except ValueError:
        return None
    if u.scheme.lower() not in ("http", "https") or not u.hostname or u.query or u.fragment:
        return None
    if "@" in u.netloc or "?" in value or "#" in value:
        return None
    return value.rstrip("/")


def parse_steer_answer(doc: object) -> list[RankedEdge]:
    """The ranked edges of a ``GET /v1/steer`` answer (``{"edges": [{"edge", "url", ...}]}``),
    in the answer's order. Entries with an invalid id or URL, and repeated ids, are left out;
    raises SteerAnswerError when nothing usable remains."""
    if not isinstance(doc, dict):
        raise SteerAnswerError("the steering answer is not a JSON object")
    entries = doc.get("edges")
    if not isinstance(entries, list):
        raise SteerAnswerError("the steering answer has no 'edges' list")
    out: list[RankedEdge] = []
    seen: set[str] = set()
    for entry in entries[:_MAX_EDGES]:
        if not isinstance(entry, dict):
            continue
        edge_id, url = entry.get("edge"), _base_url(entry.get("url"))
        if not isinstance(edge_id, str) or not _PATHWAY_RE.fullmatch(edge_id) or url is None:
            continue
        if edge_id in seen:
            continue
        seen.add(edge_id)
        out.append(RankedEdge(edge_id, url))
    if not out:
        raise SteerAnswerError("the steering answer names no usable edge")
    return out


def fallback_edge(origin_url: str) -> RankedEdge:
    """The configured origin as the only 'edge' (steering unreachable or not configured)."""
    url = _base_url(origin_url)
    if url is None:
        raise ValueError(f"not an http(s) base URL: {origin_url!r}")
    return RankedEdge("origin", url)


def valid_media_key(key: object) -> bool:
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


def title_prefix(media_key: str) -> str:
    """The path prefix a playback token is scoped to: ``/v/<key>/``."""
    if not valid_media_key(media_key):
        raise ValueError(f"invalid media key {media_key!r}")
    return f"/v/{media_key}/"


def url_prefix(edge_url: str, token: str, media_key: str) -> str:
    """``<edge>/_t/<TOKEN>/v/<key>/``: every file of the title below it carries the token."""
    from edge.tokens import signed_path

    return edge_url.rstrip("/") + signed_path(token, title_prefix(media_key))


def steering_url(
    public_url: str, kind: str, key: str, client: str, base: str = BASE_PATHWAY
) -> str:
    """The content steering server URI for players: ``/v1/steering/{hls|dash}`` of the steering
    service with the session's content key, client address and base pathway."""
    if kind not in ("hls", "dash"):
        raise ValueError(f"kind must be hls or dash, not {kind!r}")
    query = urlencode({"key": key, "client": client, "base": base})
    return f"{public_url.rstrip('/')}/v1/steering/{kind}?{query}"


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 10**12 else None


def clean_rendition(r: object) -> dict[str, Any] | None:
    """A rendition entry of the catalog feed, checked (None when it cannot be written into a
    playlist): name, width, height, bandwidth, codecs, frame_rate (0 when unknown), plus audio
    (group name or None) and audio_channels when the entry carries them."""
    if not isinstance(r, Mapping):
        return None
    name = r.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return None
    width, height, bandwidth = (_positive_int(r.get(k)) for k in ("width", "height", "bandwidth"))
    if width is None or height is None or bandwidth is None:
        return None
    codecs = r.get("codecs")
    if not isinstance(codecs, str) or not _CODECS_RE.fullmatch(codecs):
        return None
    rate = r.get("frame_rate")
    frame_rate = (
        float(rate)
        if isinstance(rate, int | float)
        and not isinstance(rate, bool)
        and 0 < rate < 1000  # before isfinite: a huge integer overflows a float
        and math.isfinite(rate)
        else 0.0
    )
    out: dict[str, Any] = {
        "name": name,
        "width": width,
        "height": height,
        "bandwidth": bandwidth,
        "codecs": codecs,
        "frame_rate": round(frame_rate, 3),
    }
    average = _positive_int(r.get("avg_bandwidth"))
    if average is not None and average <= bandwidth:
        out["avg_bandwidth"] = average
    audio = r.get("audio")
    if isinstance(audio, str) and _NAME_RE.fullmatch(audio):
        out["audio"] = audio
        channels = _positive_int(r.get("audio_channels"))
        if channels is not None and channels <= 64:
            out["audio_channels"] = channels
    return out


def allowed_renditions(renditions: Sequence[object], max_height: int) -> list[dict[str, Any]]:
    """The valid renditions no taller than ``max_height``, lowest bandwidth first. Never empty
    while any valid rendition exists: when none fits, the lowest one is kept (a plan below the
    whole ladder still plays, at the ladder's bottom)."""
    clean = [c for c in (clean_rendition(r) for r in renditions) if c is not None]
    names: set[str] = set()
    unique = []
    for c in clean:
        if c["name"] not in names:
            names.add(c["name"])
            unique.append(c)
    fit = [c for c in unique if c["height"] <= max_height]
    if not fit and unique:
        fit = [min(unique, key=lambda c: (c["height"], c["bandwidth"]))]
    return sorted(fit, key=lambda c: (c["bandwidth"], c["height"], c["name"]))


def public_rendition(c: Mapping[str, Any]) -> dict[str, Any]:
    """What the playback answer shows of a rendition."""
    return {k: c[k] for k in ("name", "width", "height", "bandwidth", "codecs", "frame_rate")}


def hls_multivariant(
    renditions: Sequence[Mapping[str, Any]],
    *,
    prefix: str,
    steering_uri: str | None = None,
    pathway: str = BASE_PATHWAY,
) -> str:
    """The per-session multivariant playlist over ``renditions`` (already allowed and cleaned,
    see `allowed_renditions`), with absolute URIs under ``prefix`` (a `url_prefix`, ending in
    '/'). With ``steering_uri``: the EXT-X-CONTENT-STEERING tag naming ``pathway`` as the
    starting pathway, and PATHWAY-ID on every variant."""
    if not prefix.endswith("/") or _base_url(prefix.rstrip("/")) is None:
        raise ValueError(f"prefix must be an absolute http(s) URL ending in '/': {prefix!r}")
    if not renditions:
        raise ValueError("no renditions")
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if steering_uri is not None:
        lines.append(hls_master_steering_tag(steering_uri, pathway))
    lines.append("")
    groups: dict[str, int | None] = {}
    for r in renditions:
        if r.get("audio") and r["audio"] not in groups:
            groups[r["audio"]] = r.get("audio_channels")
    for group, channels in groups.items():
        attrs = [
            "TYPE=AUDIO",
            f'GROUP-ID="{group}"',
            'NAME="audio"',
            "DEFAULT=YES",
            "AUTOSELECT=YES",
        ]
        if channels:
            attrs.append(f'CHANNELS="{channels}"')
        attrs.append(f'URI="{prefix}{group}/index.m3u8"')
        lines.append("#EXT-X-MEDIA:" + ",".join(attrs))
    if groups:
        lines.append("")
    for r in renditions:
        attrs = [f"BANDWIDTH={r['bandwidth']}"]
        if r.get("avg_bandwidth"):
            attrs.append(f"AVERAGE-BANDWIDTH={r['avg_bandwidth']}")
        attrs.append(f'CODECS="{r["codecs"]}"')
        attrs.append(f"RESOLUTION={r['width']}x{r['height']}")
        if r.get("frame_rate"):
            attrs.append(f"FRAME-RATE={float(r['frame_rate']):.3f}")
        if r.get("audio"):
            attrs.append(f'AUDIO="{r["audio"]}"')
        if steering_uri is not None:
            attrs.append(f'PATHWAY-ID="{pathway}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), f"{prefix}{r['name']}/index.m3u8"]
    return "\n".join(lines) + "\n"
