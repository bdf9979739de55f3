"""The catalog feed: how published titles reach the control plane.

The origin does not call the control plane; the control plane reads a feed from
the origin (``GET /catalog/feed?since=SEQ`` with a catalog credential), so an
origin never blocks on, or loses an announcement to, a control plane that is
down. Every publication gets a sequence number; a reader remembers the last
one it saw and asks for what came after. A re-published title appears again
with a higher number; an unpublished one appears with ``"published": false``.

Entries carry what a catalog needs without fetching anything else: duration,
renditions (name, resolution, bandwidth, codecs), artwork and playlist paths,
all relative to ``/v/<title>/`` on any edge.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    published INTEGER NOT NULL,
    entry TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feed_title ON feed(title);
"""


class CatalogFeed:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(SCHEMA)
        self.clock = clock

    def announce(self, title: str, manifest: dict[str, Any]) -> int:
        entry = summary(title, manifest)
        cur = self.db.execute(
            "INSERT INTO feed(title, published, entry, at) VALUES (?, 1, ?, ?)",
            (title, json.dumps(entry, separators=(",", ":")), self.clock()),
        )
        return int(cur.lastrowid or 0)

    def withdraw(self, title: str) -> int:
        cur = self.db.execute(
            "INSERT INTO feed(title, published, entry, at) VALUES (?, 0, ?, ?)",
            (title, json.dumps({"title": title}), self.clock()),
        )
        return int(cur.lastrowid or 0)

    def since(self, seq: int, limit: int = 500) -> tuple[list[dict[str, Any]], int]:
        rows = self.db.execute(
            "SELECT seq, title, published, entry, at FROM feed WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        out = []
        for s, title, published, entry, at in rows:
            item = json.loads(entry)
            item.update(seq=s, title=title, published=bool(published), at=at)
            out.append(item)
        return out, (rows[-1][0] if rows else seq)

    def is_announced(self, title: str, job: int) -> bool:
        """Whether the latest entry for ``title`` announces the publication by ``job``."""
        row = self.db.execute(
            "SELECT published, entry FROM feed WHERE title = ? ORDER BY seq DESC LIMIT 1", (title,)
        ).fetchone()
        return bool(row and row[0] and json.loads(row[1]).get("job") == job)

    def published_count(self) -> int:
        """Titles whose latest feed entry is a publication."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM feed f WHERE published = 1 AND seq = "
            "(SELECT MAX(seq) FROM feed g WHERE g.title = f.title)"
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()


_RENDITION_KEYS = ("name", "width", "height", "bandwidth", "codecs", "frame_rate", "audio")


def _rendition(r: dict[str, Any], channels: dict[Any, Any]) -> dict[str, Any]:
    # The audio group and its channel count let the control plane write a per-session
    # multivariant playlist with the same EXT-X-MEDIA groups as master.m3u8.
    out = {k: r.get(k) for k in _RENDITION_KEYS}
    out["audio_channels"] = channels.get(r.get("audio") or "")
    return out


def summary(title: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The catalog's view of a manifest.json: no per-file list, just what a catalog shows."""
    channels = {
        a.get("name"): a.get("channels") for a in manifest.get("audio", []) if isinstance(a, dict)
    }
    return {
        "title": title,
        "duration": manifest.get("duration"),
        "renditions": [_rendition(r, channels) for r in manifest.get("renditions", [])],
        "hls": "master.m3u8",
        "hls_single_file": "master_single.m3u8",
        "dash": "manifest.mpd",
        "poster": manifest.get("poster", "poster.jpg"),
        "sprite": manifest.get("sprite", "sprite.jpg"),
        "base_path": f"/v/{title}/",
        "job": manifest.get("job"),
    }
