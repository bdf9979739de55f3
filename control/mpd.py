"""The per-session DASH MPD of a capped plan: the origin's MPD cut to what the plan may play.

A plan that allows the title's whole ladder plays the origin's own manifest.mpd through the
first edge with a title-wide token. A capped plan gets no title-wide token (it would open the
renditions above the cap, see control/manifest.py), so its players need an MPD whose every
Representation carries its own directory token: this module rewrites the origin's MPD
(origin/package.py ``dash_mpd``) for one session. Pure, like manifest.py: no I/O.

- Video Representations taller than the plan's ``max_height`` are dropped, and so is any
  Representation whose directory has no token (an audio track no allowed rendition names); an
  AdaptationSet left empty is dropped, and a video set's maxWidth/maxHeight follow what is left.
- Each Representation gets a BaseURL ``<edge>/_t/<its directory's token>/v/<key>/``, to which
  its SegmentTemplate's ``<directory>/init.mp4`` and ``<directory>/seg$Number%05d$.m4s`` are
  relative (ISO/IEC 23009-1 section 5.6: BaseURL resolution), with ``serviceLocation`` the
  base pathway, placed before the SegmentTemplate as the schema orders a Representation.
- With a steering server: ``<ContentSteering defaultServiceLocation="cdn">`` (DASH-IF Content
  Steering, CTA-5004), whose manifests clone the base pathway onto the other edges, as the
  HLS playlist's EXT-X-CONTENT-STEERING does.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Final
from xml.parsers import expat

from .manifest import BASE_PATHWAY, _base_url, url_prefix

DASH_CONTENT_TYPE: Final = "application/dash+xml"
MAX_MPD_BYTES: Final = 2 * 1024 * 1024
_NS: Final = "urn:mpeg:dash:schema:mpd:2011"
_Q: Final = "{" + _NS + "}"


ET.register_namespace("", _NS)  # the MPD's default namespace, written without a prefix


class MpdError(ValueError):
    """The origin's MPD is not one this module can rewrite."""


def _refuse_dtd(*_: object) -> None:
    raise MpdError("the MPD has a document type or entity declaration")


def parse_mpd(data: str | bytes) -> ET.Element:
    """The root of a static MPD; MpdError for anything else. A document type or entity
    declaration anywhere is refused as expat meets it, before anything is expanded (the
    origin writes none; entities would let a body grow many times over)."""
    if len(data) > MAX_MPD_BYTES:
        raise MpdError("the MPD is too large")
    # ElementTree's C parser hides its expat: a first pass with one of our own stops at a
    # declaration, whatever the document's encoding or wherever the declaration is.
    scan = expat.ParserCreate()
    scan.StartDoctypeDeclHandler = _refuse_dtd
    scan.EntityDeclHandler = _refuse_dtd
    try:
        scan.Parse(data, True)
        root = ET.fromstring(data)
    except (expat.ExpatError, ET.ParseError) as exc:
        raise MpdError(f"the MPD is not well-formed XML: {exc}") from None
    if root.tag != _Q + "MPD":
        raise MpdError("not an MPD (root element)")
    if root.get("type", "static") != "static":
        raise MpdError("only static (on-demand) MPDs are rewritten")
    return root


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _directory(rep: ET.Element) -> str | None:
    """The directory a Representation's segments live in: the first path segment its
    SegmentTemplate's initialization (else media) template names."""
    template = rep.find(_Q + "SegmentTemplate")
    if template is None:
        return None
    path = template.get("initialization") or template.get("media") or ""
    head, sep, _ = path.partition("/")
    return head if sep and head and "$" not in head and head not in (".", "..") else None


def session_mpd(
    origin_mpd: str | bytes,
    *,
    max_height: int,
    edge_url: str,
    media_key: str,
    tokens: Mapping[str, str],
    steering_uri: str | None = None,
    pathway: str = BASE_PATHWAY,
) -> str:
    """The session's MPD: ``origin_mpd`` keeping the Representations the plan allows (height
    at most ``max_height``, a token in ``tokens`` for their directory), each under its own
    BaseURL on ``edge_url``. MpdError when the MPD cannot be read or nothing playable is left."""
    base = _base_url(edge_url)
    if base is None:
        raise ValueError(f"edge_url must be an absolute http(s) URL: {edge_url!r}")
    root = parse_mpd(origin_mpd)
    videos = 0
    for period in root.findall(_Q + "Period"):
        for aset in list(period.findall(_Q + "AdaptationSet")):
            kept_heights: list[tuple[int, int]] = []
            for rep in list(aset.findall(_Q + "Representation")):
                height = _int(rep.get("height"))
                directory = _directory(rep)
                token = tokens.get(directory) if directory else None
                if (height is not None and height > max_height) or not token:
                    aset.remove(rep)
                    continue
                url = ET.Element(_Q + "BaseURL", {"serviceLocation": pathway})
                url.text = url_prefix(base, token, media_key)
                template = rep.find(_Q + "SegmentTemplate")
                rep.insert(list(rep).index(template) if template is not None else len(rep), url)
                if height is not None:
                    kept_heights.append((_int(rep.get("width")) or 0, height))
            if aset.find(_Q + "Representation") is None:
                period.remove(aset)
                continue
            if kept_heights:
                videos += len(kept_heights)
                if aset.get("maxWidth") is not None:
                    aset.set("maxWidth", str(max(w for w, _ in kept_heights)))
                if aset.get("maxHeight") is not None:
                    aset.set("maxHeight", str(max(h for _, h in kept_heights)))
    if videos == 0:
        raise MpdError("no video representation the plan allows")
    for old in root.findall(_Q + "ContentSteering") + root.findall(_Q + "BaseURL"):
        root.remove(old)  # the origin's, if any: this session's edges and steering replace them
    if steering_uri is not None:
        steer = ET.Element(
            _Q + "ContentSteering",
            {"defaultServiceLocation": pathway, "queryBeforeStart": "false"},
        )
        steer.text = steering_uri
        first_period = next(i for i, e in enumerate(root) if e.tag == _Q + "Period")
        root.insert(first_period, steer)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
