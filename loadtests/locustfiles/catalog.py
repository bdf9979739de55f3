"""The catalog as the control plane browses it, and Zipf title popularity over it."""

from __future__ import annotations

import logging
import random
from typing import Any
from urllib.parse import quote

from gevent.lock import Semaphore

from .accounts import Account, auth, forget_session_on_401, judge_json, page_shape
from .workload import Zipf

log = logging.getLogger("opencdn.loadtest")

CATALOG_PAGE = 100  # GET /v1/titles' largest page


# -- the catalog -----------------------------------------------------------------------------


class Catalog:
    """The titles in browse order (most popular first), read once per process by the first user
    that needs them, up to ``limit`` titles; the Zipf ranks of title popularity."""

    def __init__(self, limit: int, alpha: float) -> None:
        self.limit = limit
        self.alpha = alpha
        self.titles: list[dict[str, Any]] = []
        self.zipf: Zipf | None = None
        self._lock = Semaphore()

    def ensure(self, user: Any, account: Account) -> bool:
        with self._lock:
            if self.titles:
                return True
            titles: list[dict[str, Any]] = []
            while len(titles) < self.limit:
                size = min(CATALOG_PAGE, self.limit - len(titles))
                with user.client.get(
                    f"/v1/titles?profile_id={account.profile_id}&limit={size}&offset={len(titles)}",
                    headers=auth(account),
                    name="GET /v1/titles",
                    catch_response=True,
                ) as r:
                    doc = judge_json(r, (200,), _titles_shape)
                    if doc is not None and not titles and not doc["items"]:
                        r.failure("the catalog is empty: nothing to watch")
                        return False
                if doc is None:
                    forget_session_on_401(account, r.status_code)
                    return False
                titles += doc["items"]
                if len(doc["items"]) < size or len(titles) >= doc["total"]:
                    break
            self.titles = titles
            self.zipf = Zipf(len(titles), self.alpha)
            log.info("event=catalog_read titles=%d zipf_alpha=%g", len(titles), self.alpha)
            return True

    def pick(self, rng: random.Random) -> dict[str, Any]:
        assert self.zipf is not None
        return self.titles[self.zipf.pick(rng)]


def _titles_shape(doc: Any) -> str | None:
    problem = page_shape(doc)
    if problem:
        return problem
    for t in doc["items"]:
        if not isinstance(t, dict) or not isinstance(t.get("id"), str) or "name" not in t:
            return "a title card without id or name"
    return None


def q(text: str) -> str:
    return quote(text, safe="")
