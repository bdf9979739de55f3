"""A third-party client: dash.js (the DASH Industry Forum's player, npm package ``dashjs``) plays
the fleet's MPD (issue 7).

Against a real local fleet (conf/fleet.yaml with free ports and a short sample, as
tests/test_web_player.py starts it), the demo account starts playback through the API
(``POST /v1/playback``; its plan is uncapped, so ``manifests.dash`` is the origin's signed MPD
through the first edge). A minimal page on another origin (a static aiohttp server on
127.0.0.1) loads dash.js from the control plane's ``/vendor/dash.js`` and plays that URL,
muted, in Debian's headless chromium driven by playwright-core, the HTTP cache disabled. The
video must play to (near) the end with no dash.js error event, and every request for the MPD
or media must have gone to an edge of the fleet and been answered 200 or 206.

Outside CI the test is skipped, with the reason, when chromium, node, playwright-core or dash.js
is missing (bin/test installs them); under CI=true it fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from control.routes.webplayer import DASH_JS, NODE_MODULES

from .page_player import play_on_page, short_fleet
from .test_web_player import _demo_session, _missing

SAMPLE_SECONDS = 8
PLAYBACK_RATE = 2


@pytest.fixture
def dash_tools() -> None:
    dash_js = NODE_MODULES / DASH_JS
    missing = _missing() or (None if dash_js.is_file() else f"{dash_js} (npm ci)")
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{missing} is missing: bin/test installs it (npm ci, apt-get install chromium)"
        )
    pytest.skip(f"{missing} is missing (bin/test installs it)")


def _is_media(url: str) -> bool:
    path = urlsplit(url).path
    return path.endswith((".mpd", ".m4s", ".mp4", ".m4a", ".m4v"))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_dash_js_plays_the_mpd_through_the_edges(tmp_path: Path, dash_tools: None) -> None:
    async with short_fleet(tmp_path, SAMPLE_SECONDS) as (_, state):
        control = state["control_url"]
        password = Path(state["demo_password_file"]).read_text().strip()
        edges = {
            urlsplit(s["health_url"]).netloc
            for s in state["services"].values()
            if s["kind"] == "edge"
        }

        # Playback through the API, as any client starts it.
        async with aiohttp.ClientSession() as client:
            token, profile = await _demo_session(client, control, state["demo_email"], password)
            headers = {"Authorization": f"Bearer {token}"}
            params = {"profile_id": profile}
            async with client.get(control + "/v1/titles", params=params, headers=headers) as r:
                assert r.status == 200, await r.text()
                title_id = (await r.json())["items"][0]["id"]
            body = {"profile_id": profile, "title_id": title_id}
            async with client.post(control + "/v1/playback", json=body, headers=headers) as r:
                assert r.status == 201, await r.text()
                play = await r.json()
        assert play["capped"] is False, play
        mpd = play["manifests"]["dash"]
        assert urlsplit(mpd).netloc in edges and urlsplit(mpd).path.endswith(".mpd"), mpd

        done = await play_on_page(
            tmp_path, player="dash", script=control + "/vendor/dash.js", url=mpd,
            rate=PLAYBACK_RATE, play_seconds=25,
        )  # fmt: skip

    # Played to (near) the end, no dash.js error event.
    played = done["state"]
    assert played["errors"] == [] and not played["mediaError"], done
    assert played["currentTime"] >= SAMPLE_SECONDS - 1, done
    # The MPD and every segment from the fleet's edges, each a 200 or a 206.
    responses = done["responses"]
    media = [r for r in responses if _is_media(r["url"])]
    assert any(urlsplit(r["url"]).path.endswith(".m4s") for r in media), responses
    wrong = [r for r in media if urlsplit(r["url"]).netloc not in edges]
    assert wrong == [], wrong
    assert [r for r in media if r["status"] not in (200, 206)] == [], media
    assert [f for f in done["failed"] if _is_media(f["url"])] == [], done["failed"]
    print(f"dash.js {done['version']}: {len(media)} media responses")
