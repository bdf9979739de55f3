"""The control plane's service shell: start-up on both backends, health, metrics, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml


async def test_starts_migrated_and_healthy(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.get("/healthz")
    assert r.status == 200, r
    assert r.body["status"] == "ok"
    assert r.body["database"] in ("sqlite", "postgresql")
    assert r.body["titles"] == 0 and isinstance(r.body["titles"], int)
    r = await rc.api.get("/metrics")
    assert r.status == 200
    assert "control_requests_total" in r.body


async def test_unknown_route_is_404_in_the_error_shape(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.get("/v1/nope")
    assert r.status == 404
    assert r.body["error"]["code"] == "not_found"
    assert rc.counter("control_requests", "unmatched", "GET", "404") == 1


async def test_a_second_start_on_the_same_database_migrates_nothing(start_control: Any) -> None:
    rc1 = await start_control()
    await rc1.runner.cleanup()
    rc2 = await start_control()
    r = await rc2.api.get("/healthz")
    assert r.status == 200


PLAYER = "http://player.example:8080"


async def test_cors_preflight_and_responses_for_the_web_player(start_control: Any) -> None:
    rc = await start_control(cors_origins=[PLAYER])
    pre = {"Origin": PLAYER, "Access-Control-Request-Method": "POST"}
    r = await rc.api.call("OPTIONS", "/v1/sessions", headers=pre)
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == PLAYER
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in r.headers  # bearer tokens, no cookies
    r = await rc.api.get("/v1/plans", headers={"Origin": PLAYER})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == PLAYER
    assert "Origin" in r.headers.getall("Vary")
    # Errors carry the header too, or the page could not read the reason.
    r = await rc.api.get("/v1/account", headers={"Origin": PLAYER})
    assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == PLAYER

    evil = "http://evil.example"
    r = await rc.api.call("OPTIONS", "/v1/sessions", headers={**pre, "Origin": evil})
    assert r.status == 403 and r.body["error"]["code"] == "forbidden"
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await rc.api.get("/v1/plans", headers={"Origin": evil})
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_cors_wildcard(start_control: Any) -> None:
    rc = await start_control(cors_origins=["*"])
    r = await rc.api.get("/v1/plans", headers={"Origin": "http://any.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_no_cors_by_default(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.get("/v1/plans", headers={"Origin": PLAYER})
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_wrong_method_is_405_with_allow_in_the_error_shape(start_control: Any) -> None:
    rc = await start_control()
    r = await rc.api.call("PATCH", "/v1/plans")
    assert r.status == 405 and r.body["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


async def test_every_error_has_one_shape_and_is_counted(start_control: Any) -> None:
    rc = await start_control(max_body="1KiB")
    cases = [
        ("POST", "/v1/sessions", {"data": b"{", "headers": {"Content-Type": "application/json"}},
         400, "bad_request"),
        ("POST", "/v1/sessions", {"data": b"x=1", "headers": {"Content-Type": "text/plain"}},
         415, "unsupported_media_type"),
        ("POST", "/v1/sessions", {"json": {"email": "a@b.io", "password": "x" * 2000}},
         413, "payload_too_large"),
        ("GET", "/v1/account", {}, 401, "unauthorized"),
        ("GET", "/v1/account", {"token": "forged"}, 401, "unauthorized"),
    ]  # fmt: skip
    for method, path, kw, status, code in cases:
        r = await rc.api.call(method, path, **kw)
        assert (r.status, r.body["error"]["code"]) == (status, code), (path, r)
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert isinstance(r.body["error"]["message"], str) and r.body["error"]["message"]
    assert rc.counter("control_requests", "/v1/sessions", "POST", "413") == 1
    assert rc.counter("control_requests", "/v1/account", "GET", "401") == 2


async def test_the_web_player_s_scripts_come_from_the_configured_node_modules(
    start_control: Any, tmp_path: Path
) -> None:
    """A non-editable install has no node_modules next to the package: `node_modules` says
    where `npm ci` put them."""
    modules = tmp_path / "node_modules"
    (modules / "hls.js" / "dist").mkdir(parents=True)
    (modules / "hls.js" / "dist" / "hls.min.js").write_text("/* hls.js */")
    rc = await start_control(node_modules=str(modules))
    async with aiohttp.ClientSession() as client:
        async with client.get(rc.url + "/vendor/hls.js") as r:
            assert (r.status, await r.text()) == (200, "/* hls.js */")
        async with client.get(rc.url + "/vendor/dash.js") as r:
            assert r.status == 404  # not in that directory
            assert "set node_modules" in (await r.json())["error"]["message"]


@pytest.mark.parametrize("value", ["/nonexistent/node_modules", "", 3])
def test_node_modules_must_be_a_readable_directory(tmp_path: Path, value: object) -> None:
    from control.config import ConfigError, load_config

    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump({"node_modules": value}))
    with pytest.raises(ConfigError, match="node_modules"):
        load_config(path)
