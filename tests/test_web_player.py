"""The web player (control/web/, served by control/routes/webplayer.py) in a real browser.

Debian's chromium (/usr/bin/chromium), headless, driven by playwright-core from the repository's
node_modules (``npm ci``) through a small Node script (``DRIVER`` below, written to the test's
temporary directory and run as a subprocess), against a real local fleet (conf/fleet.yaml with
free ports and a short sample made by ffmpeg): the demo account signs in through the page,
finds the sample with the search box's autocomplete, adds it to My List and plays it with
hls.js, the browser's HTTP cache disabled (so every byte crosses the edges). Mid-play the test
kills the edge serving the fragments (its pid from the fleet's fleet.json); hls.js must move to
another edge through HLS Content Steering with no fatal error and play to the end. Every
response is recorded by the script: each ranged request must have got a correct 206. The page's
heartbeats and stop must have saved the resume position.

Outside CI the test is skipped, with the reason, when chromium or node_modules is missing (bin/test
installs both); under CI=true it fails instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from .conftest import ROOT
from .page_player import CHROMIUM, PLAYWRIGHT, _read_line, play_on_page, short_fleet
from .test_fleet import SMALL_SAMPLE, FleetProcess, free_ports

HLS_JS = ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js"
# Long enough that the kill lands with fragments still to fetch (the page buffers 12 s ahead),
# short enough to play in a few seconds at the rate the driver sets.
SAMPLE_SECONDS = 30
PLAYBACK_RATE = 4
# Typed into the search box: a prefix of a word of the sample's name ("Opencdn Demo", the
# origin key prettified by control/feed.py).
TYPED = "dem"


def _missing() -> str | None:
    node = shutil.which("node")
    for what, ok in (
        (str(CHROMIUM), CHROMIUM.exists()),
        ("node", node is not None),
        (f"{PLAYWRIGHT} (npm ci)", PLAYWRIGHT.is_dir()),
        (f"{HLS_JS} (npm ci)", HLS_JS.is_file()),
    ):
        if not ok:
            return what
    return None


@pytest.fixture
def browser_tools() -> None:
    missing = _missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{missing} is missing: bin/test installs it (npm ci, apt-get install chromium)"
        )
    pytest.skip(f"{missing} is missing (bin/test installs it)")


# The driver. stdin/stdout carry one JSON object per line: it prints {"event": "serving",
# "host": ...} once playback is under way, waits for {"event": "killed"}, and ends with
# {"event": "done", ...} (what the test asserts). Every wait has a deadline.
DRIVER = r"""
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const readline = require("readline");
const cfg = JSON.parse(process.argv[2]);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin });
const fromTest = [];
let wake = null;
lines.on("line", (l) => { fromTest.push(JSON.parse(l)); if (wake) wake(); });
async function heard(event, ms) {
  const end = Date.now() + ms;
  while (!fromTest.some((m) => m.event === event)) {
    if (Date.now() > end) throw new Error(`no ${event} from the test within ${ms} ms`);
    await new Promise((r) => { wake = r; setTimeout(r, 100); });
  }
}
async function until(page, fn, arg, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await page.evaluate(fn, arg);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
  });
  const responses = [];
  const pending = [];
  const consoleErrors = [];
  let killedAt = null;
  try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const page = await context.newPage();
    // The browser's HTTP cache off: every request reaches the servers and is recorded.
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    // Script errors and refused requests (CORS) count; a failed load (the dead edge) does not.
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
        consoleErrors.push(m.text());
      }
    });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    page.on("response", (resp) => {
      pending.push((async () => {
        const req = resp.request();
        const headers = await req.allHeaders();
        let length = null, text = null;
        try {
          const body = await resp.body();
          length = body.length;
          if (/\.m3u8(\?|$)/.test(req.url())) text = body.toString("utf8");
        } catch (e) { length = null; }
        responses.push({
          url: req.url(), host: new URL(req.url()).host, method: req.method(),
          range: headers["range"] || null, status: resp.status(), post: req.postData(),
          contentRange: resp.headers()["content-range"] || null, length, text,
          afterKill: killedAt !== null,
        });
      })());
    });

    // Sign in as the demo account.
    await page.goto(cfg.control + "/#/signin");
    await page.fill("#signin input[name=email]", cfg.email);
    await page.fill("#signin input[name=password]", cfg.password);
    await page.click("#signin button[type=submit]");
    await page.waitForURL(/#\/(home|profiles)$/, { timeout: 10000 });
    if (page.url().endsWith("#/profiles")) await page.click("button.profile");
    await page.waitForSelector("#search:not([hidden])", { timeout: 10000 });
    await page.waitForSelector("a.card", { timeout: 10000 }); // the home rows
    if (cfg.shots) await page.screenshot({ path: `${cfg.shots}/home.png`, fullPage: true });
    // Search with autocomplete: type a prefix, pick the suggestion, open the title.
    await page.fill("#q", cfg.typed);
    await page.waitForSelector("#suggest li", { timeout: 10000 });
    const suggestion = await page.textContent("#suggest li");
    await page.click("#suggest li");
    await page.waitForSelector("main h1:has-text('Results for')", { timeout: 10000 });
    if (cfg.shots) await page.screenshot({ path: `${cfg.shots}/search.png`, fullPage: true });
    await page.click("a.card");
    await page.waitForSelector("#mylist", { timeout: 10000 });
    if (cfg.shots) await page.screenshot({ path: `${cfg.shots}/title.png`, fullPage: true });
    const titleUrl = page.url();
    await page.click("#mylist");
    await page.waitForFunction(() => document.querySelector("#mylist").textContent.includes("✓"),
      null, { timeout: 10000 });
    await page.click("#play");

    // Playing: wait for the first seconds, then name the edge serving the fragments.
    await until(page, () => {
      const v = window.opencdnPlayer.video;
      return v && v.currentTime > 0.5;
    }, null, 20000, "playback starts");
    if (cfg.shots) await page.screenshot({ path: `${cfg.shots}/watch.png`, fullPage: true });
    await page.evaluate((rate) => { window.opencdnPlayer.video.playbackRate = rate; }, cfg.rate);
    await Promise.all(pending);
    const frags = responses.filter((r) => /\.m4s$/.test(new URL(r.url).pathname));
    const serving = frags[frags.length - 1].host;
    say({ event: "serving", host: serving });
    await heard("killed", 20000);
    killedAt = await page.evaluate(() => window.opencdnPlayer.video.currentTime);

    const end = await until(page, () => {
      const v = window.opencdnPlayer.video;
      const p = window.opencdnPlayer;
      if (p.fatal.length) return { fatal: p.fatal };
      return v.ended ? { ended: true, currentTime: v.currentTime, duration: v.duration } : null;
    }, null, cfg.playSeconds * 1000, "playback reaches the end");
    // The page's stop event (sent on "ended") is answered before the test looks at resume.
    const stopEnd = Date.now() + 5000;
    for (;;) {
      await Promise.all(pending);
      if (!end.ended || responses.some((r) => /"kind":"stop"/.test(r.post || ""))) break;
      if (Date.now() > stopEnd) throw new Error("no stop event from the page");
      await new Promise((r) => setTimeout(r, 100));
    }
    const debug = await page.evaluate(() => ({
      errors: window.opencdnPlayer.errors, fatal: window.opencdnPlayer.fatal,
      playId: window.opencdnPlayer.play && window.opencdnPlayer.play.play_id,
    }));
    say({ event: "done", end, killedAt, suggestion, titleUrl, serving, responses,
      consoleErrors, ...debug });
  } finally {
    await browser.close();
    lines.close();
  }
})().catch((e) => {
  say({ event: "failed", error: String(e && e.stack || e) });
  process.exit(1);
});
"""


def _check_ranged(responses: list[dict[str, object]]) -> list[str]:
    """What is wrong with the ranged answers: each a 206 whose Content-Range is the range asked
    for (RFC 9110 14.4) and whose body has exactly that many bytes."""
    bad = []
    for r in responses:
        spec = r["range"]
        if not spec:
            continue
        where = f"{r['url']} Range: {spec}"
        unit, _, rng = str(spec).partition("=")
        first, _, last = rng.partition("-")
        cr = str(r["contentRange"] or "")
        if r["status"] != 206 or unit != "bytes" or not cr.startswith("bytes "):
            bad.append(f"{where}: {r['status']} Content-Range {cr!r}")
            continue
        span, _, total = cr[6:].partition("/")
        a, _, b = span.partition("-")
        if first and int(a) != int(first):
            bad.append(f"{where}: starts at {a}")
        if last and int(b) != min(int(last), int(total) - 1):
            bad.append(f"{where}: ends at {b}")
        if r["length"] != int(b) - int(a) + 1:
            bad.append(f"{where}: {r['length']} bytes for {cr}")
    return bad


def test_range_check_finds_wrong_answers() -> None:
    ok = {"url": "u", "range": "bytes=0-9", "status": 206, "contentRange": "bytes 0-9/100"}
    assert _check_ranged([{**ok, "length": 10}, {**ok, "range": None, "status": 200}]) == []
    assert _check_ranged([{**ok, "length": 9}])
    assert _check_ranged([{**ok, "length": 10, "status": 200}])
    assert _check_ranged([{**ok, "length": 10, "contentRange": "bytes 1-10/100"}])
    assert _check_ranged([{**ok, "length": 100, "contentRange": None}])


EDGE_HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


def _fleet_ports() -> list[str]:
    """free_ports(), but the three edges share one port, as a real fleet's do (443): a content
    steering pathway clone replaces the URI's host NAME only (hls.js sets URL.hostname), so
    the port of the playlist's URIs must be right on every edge."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((EDGE_HOSTS[0], 0))
            port = first.getsockname()[1]
            others = [socket.socket() for _ in EDGE_HOSTS[1:]]
            try:
                for s, host in zip(others, EDGE_HOSTS[1:], strict=True):
                    s.bind((host, port))
            except OSError:
                continue
            finally:
                for s in others:
                    s.close()
        shared = [f"edges.e{i}.listen={h}:{port}" for i, h in enumerate(EDGE_HOSTS, 1)]
        keep = [kv for kv in free_ports() if not re.match(r"edges\.e\d\.listen=", kv)]
        if not any(kv.endswith(f":{port}") for kv in keep):
            return keep + shared
    raise AssertionError("no port free on all three edge addresses")


async def _demo_session(
    client: aiohttp.ClientSession, control: str, email: str, password: str
) -> tuple[str, str]:
    async with client.post(
        control + "/v1/sessions", json={"email": email, "password": password}
    ) as r:
        assert r.status == 201, await r.text()
        token = (await r.json())["token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with client.get(control + "/v1/profiles", headers=headers) as r:
        profile = (await r.json())["items"][0]["id"]
    return token, profile


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_web_player_plays_through_the_fleet_and_survives_an_edge_kill(
    tmp_path: Path, browser_tools: None
) -> None:
    data = tmp_path / "data"
    args = ["--data", str(data)]
    sample = [kv for kv in SMALL_SAMPLE if not kv.startswith("sample.duration=")]
    for kv in [*_fleet_ports(), *sample, f"sample.duration={SAMPLE_SECONDS}", "stop_timeout=5s"]:
        args += ["--set", kv]
    fleet = await FleetProcess.start(tmp_path, *args)
    driver: asyncio.subprocess.Process | None = None
    try:
        await fleet.wait_for(r"^fleet ready in ([\d.]+) s$", 90)
        state = json.loads((data / "fleet.json").read_text())
        control = state["control_url"]
        password = Path(state["demo_password_file"]).read_text().strip()

        # The page and its files, as a browser gets them.
        async with aiohttp.ClientSession() as client:
            async with client.get(control + "/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                assert "/vendor/hls.js" in await r.text()
            async with client.get(control + "/vendor/hls.js") as r:
                assert r.status == 200 and len(await r.read()) > 100_000
            async with client.get(control + "/web/..%2Fapp.py") as r:
                assert r.status == 404

        script = tmp_path / "driver.cjs"
        script.write_text(DRIVER)
        cfg = {
            "chromium": str(CHROMIUM),
            "control": control,
            "email": state["demo_email"],
            "password": password,
            "typed": TYPED,
            "rate": PLAYBACK_RATE,
            "playSeconds": 60,
            # OPENCDN_SCREENSHOTS=DIR keeps what the phone-sized window showed, to look at.
            "shots": os.environ.get("OPENCDN_SCREENSHOTS"),
        }
        env = {**os.environ, "PLAYWRIGHT_CORE": str(PLAYWRIGHT)}
        driver = await asyncio.create_subprocess_exec(
            "node", str(script), json.dumps(cfg), env=env, cwd=tmp_path,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        serving = await _read_line(driver, 60)
        assert serving["event"] == "serving"
        edges = {
            urlsplit(s["health_url"]).netloc: (name, s["pid"])
            for name, s in state["services"].items()
            if s["kind"] == "edge"
        }
        assert serving["host"] in edges, (serving, edges)
        killed, pid = edges[str(serving["host"])]
        os.kill(pid, signal.SIGKILL)  # no drain, no goodbye: as if the machine died
        assert driver.stdin is not None
        driver.stdin.write(b'{"event": "killed"}\n')
        await driver.stdin.drain()
        done = await _read_line(driver, 70)
        assert await asyncio.wait_for(driver.wait(), 15) == 0

        # Played to the end, no fatal hls.js error, no script error on the page.
        end = done["end"]
        assert isinstance(end, dict) and end.get("ended"), done
        assert end["currentTime"] >= SAMPLE_SECONDS - 1, end
        assert done["fatal"] == [] and done["consoleErrors"] == [], done
        assert TYPED in str(done["suggestion"]).lower(), done["suggestion"]
        # The kill landed mid-play, and fragments then came from another edge.
        assert float(done["killedAt"]) < SAMPLE_SECONDS - 4, done["killedAt"]  # type: ignore[arg-type]
        responses = done["responses"]
        assert isinstance(responses, list)
        after = [
            r for r in responses if r["afterKill"] and urlsplit(r["url"]).path.endswith(".m4s")
        ]
        assert after and all(r["status"] == 200 for r in after), after
        assert {r["host"] for r in after} - {serving["host"]}, "no fragment from another edge"
        assert all(r["host"] in edges for r in after)
        # Ranged requests: each a correct 206. hls.js sends them for byte-range playlists
        # (EXT-X-BYTERANGE, RFC 8216 4.3.2.2): when the playlists have some, there must be
        # ranged requests too.
        assert _check_ranged(responses) == []
        byteranges = any("#EXT-X-BYTERANGE" in (r["text"] or "") for r in responses)
        assert not byteranges or any(r["range"] for r in responses)
        # Nothing was fetched from a third party: the page, the API and hls.js from the
        # control plane, media from the edges, steering manifests from steering.
        allowed = {urlsplit(control).netloc, urlsplit(state["steering_url"]).netloc, *edges}
        assert {r["host"] for r in responses if r["url"].startswith("http")} <= allowed

        # The page's heartbeats and stop saved the position, and My List has the title.
        title_id = str(done["titleUrl"]).rsplit("/", 1)[1]
        async with aiohttp.ClientSession() as client:
            token, profile = await _demo_session(client, control, state["demo_email"], password)
            headers = {"Authorization": f"Bearer {token}"}
            base = f"{control}/v1/profiles/{profile}"
            async with client.get(f"{base}/resume/{title_id}", headers=headers) as r:
                positions = (await r.json())["positions"]
            assert positions and positions[0]["position"] >= SAMPLE_SECONDS - 2, positions
            async with client.get(f"{base}/list", headers=headers) as r:
                assert title_id in [e["title"]["id"] for e in (await r.json())["items"]]
        print(f"killed {killed}; after the kill: {sorted({r['host'] for r in after})}")
    finally:
        if driver is not None and driver.returncode is None:
            driver.kill()
            await driver.wait()
        if fleet.proc.returncode is None:
            fleet.proc.send_signal(signal.SIGTERM)
            try:
                await fleet.exit_code(20)
            except TimeoutError:
                pass
        await fleet.close()


BYTERANGE_SECONDS = 8


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_hls_js_plays_the_byte_range_variant_with_correct_206s(
    tmp_path: Path, browser_tools: None
) -> None:
    """hls.js plays the origin's byte-range variant (master_single.m3u8: EXT-X-BYTERANGE into
    single.mp4) through an edge, so the ranged-request check above has ranged requests to
    check: at least one per segment, each answered by a correct 206."""
    async with short_fleet(tmp_path, BYTERANGE_SECONDS) as (fleet, state):
        master = (await fleet.wait_for(r"(http://127\.0\.0\.11:\d+/_t/\S+/master\.m3u8)$", 1))[1]
        # The token covers the title's directory: the byte-range variant is beside master.m3u8.
        url = master.removesuffix("master.m3u8") + "master_single.m3u8"
        done = await play_on_page(
            tmp_path, player="hls", script=state["control_url"] + "/vendor/hls.js", url=url,
            rate=2, play_seconds=20,
        )  # fmt: skip

    # Played to (near) the end, no fatal hls.js error.
    played = done["state"]
    assert played["errors"] == [] and not played["mediaError"], done
    assert played["currentTime"] >= BYTERANGE_SECONDS - 1, played
    responses = done["responses"]
    # The media playlists fetched are byte-range ones, and each of their segments was
    # fetched with a Range request.
    media_playlists = [
        str(r["text"]) for r in responses if r["text"] and "#EXTINF" in str(r["text"])
    ]
    assert media_playlists, responses
    assert all("#EXT-X-BYTERANGE" in t for t in media_playlists), media_playlists
    ranged = [r for r in responses if r["range"]]
    assert all(urlsplit(r["url"]).path.endswith("/single.mp4") for r in ranged), ranged
    wanted = set()
    for text in media_playlists:
        wanted |= _byteranges(text)
    asked = {str(r["range"]) for r in ranged}
    missing = sorted(wanted - asked)
    segments = max(t.count("#EXTINF") for t in media_playlists)
    assert len(ranged) >= segments and not missing, (missing, sorted(asked))
    # Every ranged request: a 206 with the Content-Range asked for and that many bytes.
    assert _check_ranged(responses) == []
    assert [f for f in done["failed"] if "single" in f["url"]] == [], done["failed"]
    print(f"hls.js {done['version']}: {len(ranged)} ranged requests, all correct 206s")


def _byteranges(playlist: str) -> set[str]:
    """The Range headers fetching every segment of a byte-range media playlist takes
    (RFC 8216 4.3.2.2: ``#EXT-X-BYTERANGE:<n>[@<o>]``, without @o following the previous)."""
    ranges = set()
    offset = 0
    for line in playlist.splitlines():
        if not line.startswith("#EXT-X-BYTERANGE:"):
            continue
        n, _, o = line.partition(":")[2].partition("@")
        if o:
            offset = int(o)
        ranges.add(f"bytes={offset}-{offset + int(n) - 1}")
        offset += int(n)
    return ranges
