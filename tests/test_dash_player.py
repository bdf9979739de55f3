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

import asyncio
import json
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from control.routes.webplayer import DASH_JS

from .test_fleet import SMALL_SAMPLE, FleetProcess, free_ports
from .test_web_player import CHROMIUM, PLAYWRIGHT, _demo_session, _missing, _read_line

SAMPLE_SECONDS = 8
PLAYBACK_RATE = 2

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>dash.js</title>
<video id="v" muted playsinline></video>
<script src="{dash_js}"></script>
"""

# Plays cfg.mpd in the page, then prints one JSON line: {"event": "done", ...} or
# {"event": "failed", "error": ...}. Every wait has a deadline.
DRIVER = r"""
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const cfg = JSON.parse(process.argv[2]);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
(async () => {
  const browser = await chromium.launch({
    executablePath: cfg.chromium, headless: true,
    args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
  });
  try {
    const page = await browser.newPage();
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    const responses = [];
    const failed = [];
    page.on("response", (r) => responses.push({ url: r.url(), status: r.status() }));
    page.on("requestfailed", (q) => failed.push({ url: q.url(), error: q.failure().errorText }));
    page.on("pageerror", (e) => failed.push({ url: "page", error: String(e) }));
    await page.goto(cfg.page);
    await page.waitForFunction(() => window.dashjs !== undefined, null, { timeout: 10000 });
    const version = await page.evaluate(([url, rate]) => {
      const video = document.getElementById("v");
      video.muted = true;
      window.dashErrors = [];
      const player = dashjs.MediaPlayer().create();
      player.on(dashjs.MediaPlayer.events.ERROR, (e) => {
        window.dashErrors.push(JSON.stringify(e.error || e));
      });
      video.addEventListener("playing", () => { video.playbackRate = rate; });
      player.initialize(video, url, true);
      window.player = player;
      return player.getVersion();
    }, [cfg.mpd, cfg.rate]);
    const end = Date.now() + cfg.playSeconds * 1000;
    let state;
    for (;;) {
      state = await page.evaluate(() => {
        const v = document.getElementById("v");
        return { currentTime: v.currentTime, duration: v.duration, ended: v.ended,
          errors: window.dashErrors, mediaError: v.error && v.error.code };
      });
      if (state.ended || state.errors.length || state.mediaError) break;
      if (Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    say({ event: "done", version, state, responses, failed });
  } finally {
    await browser.close();
  }
})().catch((e) => {
  say({ event: "failed", error: String(e && e.stack || e) });
  process.exit(1);
});
"""


@pytest.fixture
def dash_tools() -> None:
    missing = _missing() or (None if DASH_JS.is_file() else f"{DASH_JS} (npm ci)")
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
    data = tmp_path / "data"
    args = ["--data", str(data)]
    sample = [kv for kv in SMALL_SAMPLE if not kv.startswith("sample.duration=")]
    for kv in [*free_ports(), *sample, f"sample.duration={SAMPLE_SECONDS}", "stop_timeout=5s"]:
        args += ["--set", kv]
    fleet = await FleetProcess.start(tmp_path, *args)
    runner: web.AppRunner | None = None
    driver: asyncio.subprocess.Process | None = None
    try:
        await fleet.wait_for(r"^fleet ready in ([\d.]+) s$", 60)
        state = json.loads((data / "fleet.json").read_text())
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

        # The page, on an origin of its own.
        site = tmp_path / "site"
        site.mkdir()
        (site / "index.html").write_text(PAGE.format(dash_js=control + "/vendor/dash.js"))
        app = web.Application()
        app.router.add_static("/", site)
        runner = web.AppRunner(app)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        script = tmp_path / "driver.cjs"
        script.write_text(DRIVER)
        cfg = {
            "chromium": str(CHROMIUM),
            "page": f"http://127.0.0.1:{port}/index.html",
            "mpd": mpd,
            "rate": PLAYBACK_RATE,
            "playSeconds": 25,
        }
        env = {**os.environ, "PLAYWRIGHT_CORE": str(PLAYWRIGHT)}
        driver = await asyncio.create_subprocess_exec(
            "node", str(script), json.dumps(cfg), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        done = await _read_line(driver, 45)
        assert await asyncio.wait_for(driver.wait(), 15) == 0

        # Played to (near) the end, no dash.js error event.
        played = done["state"]
        assert isinstance(played, dict), done
        assert played["errors"] == [] and not played["mediaError"], done
        assert played["currentTime"] >= SAMPLE_SECONDS - 1, done
        # The MPD and every segment from the fleet's edges, each a 200 or a 206.
        responses = done["responses"]
        assert isinstance(responses, list)
        media = [r for r in responses if _is_media(r["url"])]
        assert any(urlsplit(r["url"]).path.endswith(".m4s") for r in media), responses
        wrong = [r for r in media if urlsplit(r["url"]).netloc not in edges]
        assert wrong == [], wrong
        assert [r for r in media if r["status"] not in (200, 206)] == [], media
        assert [f for f in done["failed"] if _is_media(f["url"])] == [], done["failed"]
        print(f"dash.js {done['version']}: {len(media)} media responses")
    finally:
        if driver is not None and driver.returncode is None:
            driver.kill()
            await driver.wait()
        if runner is not None:
            await runner.cleanup()
        if fleet.proc.returncode is None:
            fleet.proc.send_signal(signal.SIGTERM)
            try:
                await fleet.exit_code(20)
            except TimeoutError:
                pass
        await fleet.close()
