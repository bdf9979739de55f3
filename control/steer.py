"""The steering client: which edges a player should use for one title, in rank order.

``GET {steering_url}/v1/steer?key=<media key>&client=<player address>`` on the steering service
(steering/app.py), bounded by ``playback.steering_timeout``. Any failure (timeout, connection
refused, non-200, an answer naming no usable edge) raises `SteeringFailed` with the outcome for
``control_steering_requests{outcome}``; the caller falls back to ``playback.fallback_url``.
Steering's own last resort, the origin (edge id ``"origin"``, last in every answer), is never
returned (control/manifest.py ``parse_steer_answer``): the origin refuses players. An answer
naming nothing but the origin (no edge alive) is therefore a failure (``error``) and the caller
falls back too.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from .manifest import RankedEdge, SteerAnswerError, parse_steer_answer

MAX_ANSWER_BYTES = 256 * 1024


class SteeringFailed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome  # error | timeout
        self.detail = detail


async def ranked_edges(
    http: aiohttp.ClientSession, steering_url: str, key: str, client: str, timeout: float
) -> list[RankedEdge]:
    """The steering service's ranked edges for ``key`` and the player at ``client``."""
    url = steering_url.rstrip("/") + "/v1/steer"
    try:
        async with asyncio.timeout(timeout):
            async with http.get(
                url,
                params={"key": key, "client": client},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as r:
                if r.status != 200:
                    raise SteeringFailed("error", f"status {r.status}")
                # read(n) answers what has arrived (one chunk), not n bytes: read to the end.
                raw = b""
                while len(raw) <= MAX_ANSWER_BYTES:
                    chunk = await r.content.read(MAX_ANSWER_BYTES + 1 - len(raw))
                    if not chunk:
                        break
                    raw += chunk
    except SteeringFailed:
        raise
    except TimeoutError:  # aiohttp's ServerTimeoutError is one too
        raise SteeringFailed("timeout", f"no answer within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise SteeringFailed("error", str(exc)[:200] or type(exc).__name__) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise SteeringFailed("error", "answer too large")
    try:
        return parse_steer_answer(json.loads(raw))
    except (ValueError, SteerAnswerError) as exc:
        raise SteeringFailed("error", str(exc)[:200]) from None
