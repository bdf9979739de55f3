"""A third-party player (hls.js or dash.js) on a minimal page in Debian's chromium, against a
short real fleet: shared by tests/test_dash_player.py and the byte-range test of
tests/test_web_player.py.

The page lives on an origin of its own (a small static server), so the player loads its
script from the control plane and its media from the edges across origins, as a web player
embedded elsewhere would. A Node script drives chromium with playwright-core (HTTP cache
off), plays until the end, an error or a deadline, and records every response: URL, Range
header, status, Content-Range, body length, and the text of playlists.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from .conftest import ROOT
from .test_fleet import SMALL_SAMPLE, FleetProcess, free_ports

CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = ROOT / "node_modules" / "playwright-core"


async def _read_line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not raw:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        raise AssertionError(f"the driver ended: {err.decode(errors='replace')[-3000:]}")
    msg: dict[str, Any] = json.loads(raw)
    assert msg.get("event") != "failed", msg.get("error")
    return msg


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>{player}</title>
<video id="v" muted playsinline></video>
<script src="{script}"></script>
"""

# Plays cfg.url with cfg.player ("hls" or "dash"), then prints one JSON line: {"event":
# "done", version, state, responses, failed} or {"event": "failed", error}. Every wait has a
# deadline.
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
    const pending = [];
    const failed = [];
    page.on("response", (resp) => {
      pending.push((async () => {
        const req = resp.request();
        const headers = await req.allHeaders();
        let length = null, text = null;
        try {
          const body = await resp.body();
          length = body.length;
          if (/\.(m3u8|mpd)(\?|$)/.test(req.url())) text = body.toString("utf8");
        } catch (e) { length = null; }
        responses.push({
          url: req.url(), method: req.method(), range: headers["range"] || null,
          status: resp.status(), contentRange: resp.headers()["content-range"] || null,
          length, text,
        });
      })());
    });
    page.on("requestfailed", (q) => failed.push({ url: q.url(), error: q.failure().errorText }));
    page.on("pageerror", (e) => failed.push({ url: "page", error: String(e) }));
    await page.goto(cfg.page);
    await page.waitForFunction(
      (p) => (p === "hls" ? window.Hls : window.dashjs) !== undefined, cfg.player,
      { timeout: 10000 });
    const version = await page.evaluate(([player, url, rate]) => {
      const video = document.getElementById("v");
      video.muted = true;
      window.playerErrors = [];
      video.addEventListener("playing", () => { video.playbackRate = rate; });
      if (player === "hls") {
        const hls = new Hls();
        hls.on(Hls.Events.ERROR, (_, d) => {
          if (d.fatal) window.playerErrors.push(`${d.type} ${d.details}`);
        });
        hls.on(Hls.Events.MANIFEST_PARSED, () => video.play());
        hls.loadSource(url);
        hls.attachMedia(video);
        return Hls.version;
      }
      const dash = dashjs.MediaPlayer().create();
      dash.on(dashjs.MediaPlayer.events.ERROR, (e) => {
        window.playerErrors.push(JSON.stringify(e.error || e));
      });
      dash.initialize(video, url, true);
      return dash.getVersion();
    }, [cfg.player, cfg.url, cfg.rate]);
    const end = Date.now() + cfg.playSeconds * 1000;
    let state;
    for (;;) {
      state = await page.evaluate(() => {
        const v = document.getElementById("v");
        return { currentTime: v.currentTime, duration: v.duration, ended: v.ended,
          errors: window.playerErrors, mediaError: v.error && v.error.code };
      });
      if (state.ended || state.errors.length || state.mediaError) break;
      if (Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await Promise.all(pending);
    say({ event: "done", version, state, responses, failed });
  } finally {
    await browser.close();
  }
})().catch((e) => {
  say({ event: "failed", error: String(e && e.stack || e) });
  process.exit(1);
});
"""


@asynccontextmanager
async def short_fleet(tmp_path: Path, seconds: int) -> AsyncIterator[tuple[FleetProcess, Any]]:
    """conf/fleet.yaml as a subprocess, with a ``seconds``-long small sample; yields the
    fleet and its fleet.json once ready, and stops it."""
    data = tmp_path / "data"
    args = ["--data", str(data)]
    sample = [kv for kv in SMALL_SAMPLE if not kv.startswith("sample.duration=")]
    for kv in [*free_ports(), *sample, f"sample.duration={seconds}", "stop_timeout=5s"]:
        args += ["--set", kv]
    fleet = await FleetProcess.start(tmp_path, *args)
    try:
        await fleet.wait_for(r"^fleet ready in ([\d.]+) s$", 60)
        yield fleet, json.loads((data / "fleet.json").read_text())
    finally:
        if fleet.proc.returncode is None:
            fleet.proc.send_signal(signal.SIGTERM)
            try:
                await fleet.exit_code(20)
            except TimeoutError:
                pass
        await fleet.close()


async def play_on_page(
    tmp_path: Path, *, player: str, script: str, url: str, rate: float, play_seconds: float
) -> dict[str, Any]:
    """Play ``url`` with ``player`` ("hls" or "dash", its script from ``script``) on a page of
    its own origin; the driver's "done" line (it must exit 0)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE.format(player=player, script=script))
    app = web.Application()
    app.router.add_static("/", site)
    runner = web.AppRunner(app)
    await runner.setup()
    driver: asyncio.subprocess.Process | None = None
    try:
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = runner.addresses[0][1]
        driver_file = tmp_path / "driver.cjs"
        driver_file.write_text(DRIVER)
        cfg = {
            "chromium": str(CHROMIUM),
            "page": f"http://127.0.0.1:{port}/index.html",
            "player": player,
            "url": url,
            "rate": rate,
            "playSeconds": play_seconds,
        }
        env = {**os.environ, "PLAYWRIGHT_CORE": str(PLAYWRIGHT)}
        driver = await asyncio.create_subprocess_exec(
            "node", str(driver_file), json.dumps(cfg), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        done = await _read_line(driver, play_seconds + 20)
        assert await asyncio.wait_for(driver.wait(), 15) == 0
        return done
    finally:
        if driver is not None and driver.returncode is None:
            driver.kill()
            await driver.wait()
        await runner.cleanup()
