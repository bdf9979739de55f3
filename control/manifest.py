"""Pure parts of playback authorization: the steering answer, edge URL prefixes, the
content steering URLs and the per-session HLS multivariant playlist.

No I/O here (the steering client is control/steer.py, the service control/playback.py), so
everything is table-tested without an event loop.

Tokens and the plan's resolution
--------------------------------
An edge token (edge/tokens.py) authorises every path below its prefix. A token for the whole
title (``/v/<key>/``, `title_prefix`) would let a player fetch every rendition, whatever its
plan, so the per-session playlist gives each rendition (and each audio track) its OWN token,
scoped to that rendition's directory (``/v/<key>/<rendition>/``, `rendition_prefix`): the
origin's media playlists name their init and media segments relatively, so every file the
player fetches for that rendition resolves below the same signed directory, and nothing else is
reachable with it. A title-wide token is handed out only when the plan allows the title's whole
ladder (`covers_ladder`); for a capped plan the player plays through the per-session playlist.

The per-session multivariant playlist
-------------------------------------
``hls_multivariant`` writes what origin/package.py ``master_playlist`` writes for a title,
restricted to the renditions the viewer's plan allows, with ABSOLUTE URIs on the first-ranked
edge, each under its own signed directory
(``<edge>/_t/<TOKEN of 720p>/v/<key>/720p/index.m3u8``), and, when steering is configured, an
``EXT-X-CONTENT-STEERING`` tag (draft-pantos-hls-rfc8216bis, 4.4.6.6) plus ``PATHWAY-ID`` on
every variant.

Pathways. The steering service builds its HLS steering manifest as PATHWAY-CLONES of a *base*
pathway, one clone per ranked edge, each replacing the HOST of the base pathway's URIs with the
edge's (steering/app.py ``_steering_doc``); it refuses an edge id as the base. So the playlist
names one neutral pathway, ``BASE_PATHWAY`` ("cdn"), whose host is the first-ranked edge; the
player starts on it and the steering manifest (``base=cdn``) clones it onto every edge in rank
order. Tokens are path segments, the same on every edge, so a HOST replacement keeps them.

Steering's "origin". The steering service ends every ``/v1/steer`` answer with the origin
(edge id ``"origin"``) as its own last resort; the origin refuses players (it only serves the
edges, with their fill credential), so `parse_steer_answer` leaves that entry out. When
steering is unreachable the control plane's own ``playback.fallback_url`` (an edge, or a
load-balanced name for the edges: something that checks tokens) is the only "edge"
(`fallback_edge`, id ``"fallback"``).

Audio. origin/package.py puts audio in separate renditions (``EXT-X-MEDIA`` groups named after
the audio track, e.g. ``audio_128k``, ``CHANNELS`` from the track, the track's directory as its
URI). The origin's catalog feed (origin/catalog.py ``summary``) carries per rendition the name
of its audio track (``"audio"``) and that track's channel count (``"audio_channels"``), and
control/feed.py keeps both; a rendition naming its audio track gets the group (with
``CHANNELS`` when the count is known, as the origin writes it), the group's URI its own token
for the audio track's directory. A rendition without ``audio`` is written without an ``AUDIO``
attribute (nothing is fetched to find out).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from steering.manifests import hls_master_steering_tag

__all__ = [
    "BASE_PATHWAY",
    "FALLBACK_EDGE_ID",
    "HLS_CONTENT_TYPE",
    "HLS_VERSION",
    "STEERING_ORIGIN_ID",
    "RankedEdge",
    "SteerAnswerError",
    "allowed_renditions",
    "clean_rendition",
    "covers_ladder",
    "fallback_edge",
    "hls_multivariant",
    "mpd_path",
    "parse_steer_answer",
    "playlist_path",
    "public_rendition",
    "rendition_directories",
    "rendition_prefix",
    "steering_url",
    "title_prefix",
    "url_prefix",
    "valid_media_key",
]

BASE_PATHWAY: Final = "cdn"
STEERING_ORIGIN_ID: Final = "origin"  # steering's last-resort entry: not for players
FALLBACK_EDGE_ID: Final = "fallback"  # playback.fallback_url as the only edge
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
    id: str  # the edge id (a valid HLS pathway id); FALLBACK_EDGE_ID for playback.fallback_url
    url: str  # base URL, scheme://host[:port][/path], no trailing slash
    # Steering's site of the edge ('' for the fallback URL or when not given): where the play
    # is counted in fill's popularity (control/fill.py). Not part of the edge's identity.
    site: str = field(default="", compare=False)


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
    in the answer's order. Entries with an invalid id or URL, repeated ids and steering's own
    last resort, the origin (id ``"origin"``: it refuses players), are left out; raises
    SteerAnswerError when nothing usable remains."""
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
        if edge_id in seen or edge_id == STEERING_ORIGIN_ID:
            continue
        seen.add(edge_id)
        site = entry.get("site")
        if not isinstance(site, str) or not _PATHWAY_RE.fullmatch(site):
            site = ""  # steering's origin has none; a name we would not accept is dropped
        out.append(RankedEdge(edge_id, url, site))
    if not out:
        raise SteerAnswerError("the steering answer names no usable edge")
    return out


def fallback_edge(fallback_url: str) -> RankedEdge:
    """``playback.fallback_url`` (a token-checking edge, or a load-balanced name for the edges)
    as the only 'edge' (steering unreachable or not configured)."""
    url = _base_url(fallback_url)
    if url is None:
        raise ValueError(f"not an http(s) base URL: {fallback_url!r}")
    return RankedEdge(FALLBACK_EDGE_ID, url)


def valid_media_key(key: object) -> bool:
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


def title_prefix(media_key: str) -> str:
    """The path prefix a playback token is scoped to: ``/v/<key>/``."""
    if not valid_media_key(media_key):
        raise ValueError(f"invalid media key {media_key!r}")
    return f"/v/{media_key}/"


def rendition_prefix(media_key: str, name: str) -> str:
    """The path prefix a per-rendition token is scoped to: ``/v/<key>/<rendition>/`` (a video
    rendition's or an audio track's directory)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid rendition name {name!r}")
    return f"{title_prefix(media_key)}{name}/"


def url_prefix(edge_url: str, token: str, media_key: str, rendition: str | None = None) -> str:
    """``<edge>/_t/<TOKEN>/v/<key>/`` (every file of the title below it carries the token), or
    with ``rendition`` ``<edge>/_t/<TOKEN>/v/<key>/<rendition>/``."""
    from edge.tokens import signed_path

    path = title_prefix(media_key) if rendition is None else rendition_prefix(media_key, rendition)
    return edge_url.rstrip("/") + signed_path(token, path)


_PLAY_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def playlist_path(play_id: str) -> str:
    """The per-session playlist's path on the control plane, which is also the prefix its
    query token (``?token=``) is signed for: ``/v1/playback/<play_id>/master.m3u8``."""
    if not isinstance(play_id, str) or not _PLAY_ID_RE.fullmatch(play_id):
        raise ValueError(f"invalid play id {play_id!r}")
    return f"/v1/playback/{play_id}/master.m3u8"


def mpd_path(play_id: str) -> str:
    """The per-session DASH MPD's path on the control plane (capped plans, control/mpd.py),
    which its query token is signed for: ``/v1/playback/<play_id>/manifest.mpd``."""
    return playlist_path(play_id).removesuffix("master.m3u8") + "manifest.mpd"


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


def covers_ladder(ladder: Sequence[object], allowed: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``allowed`` (see `allowed_renditions`) holds every rendition of the title's
    ``ladder`` (its raw rendition entries): only then may the player get a title-wide token. An
    entry that is not a valid rendition is never allowed, so it counts as withheld."""
    names = {r["name"] for r in allowed}
    return bool(ladder) and all(isinstance(r, Mapping) and r.get("name") in names for r in ladder)


def rendition_directories(renditions: Sequence[Mapping[str, Any]]) -> list[str]:
    """The directories a player of ``renditions`` fetches from: each rendition's, then each
    audio track's it names (each once, in order). Each gets its own token."""
    out: list[str] = []
    for name in [r["name"] for r in renditions] + [
        r["audio"] for r in renditions if r.get("audio")
    ]:
        if name not in out:
            out.append(name)
    return out


def public_rendition(c: Mapping[str, Any]) -> dict[str, Any]:
    """What the playback answer shows of a rendition."""
    return {k: c[k] for k in ("name", "width", "height", "bandwidth", "codecs", "frame_rate")}


def hls_multivariant(
    renditions: Sequence[Mapping[str, Any]],
    *,
    edge_url: str,
    media_key: str,
    tokens: Mapping[str, str],
    steering_uri: str | None = None,
    pathway: str = BASE_PATHWAY,
) -> str:
    """The per-session multivariant playlist over ``renditions`` (already allowed and cleaned,
    see `allowed_renditions`), with absolute URIs on ``edge_url``, each variant's and each audio
    group's under its own directory signed with ``tokens[directory]`` (see
    `rendition_directories`; a missing token is a ValueError). With ``steering_uri``: the
    EXT-X-CONTENT-STEERING tag naming ``pathway`` as the starting pathway, and PATHWAY-ID on
    every variant. The attribute set is origin/package.py ``master_playlist``'s."""
    base = _base_url(edge_url)
    if base is None:
        raise ValueError(f"edge_url must be an absolute http(s) URL: {edge_url!r}")
    if not renditions:
        raise ValueError("no renditions")

    def uri(directory: str) -> str:
        token = tokens.get(directory)
        if not token:
            raise ValueError(f"no token for {directory!r}")
        return url_prefix(base, token, media_key, directory) + "index.m3u8"

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
        attrs.append(f'URI="{uri(group)}"')
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
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), uri(r["name"])]
    return "\n".join(lines) + "\n"
