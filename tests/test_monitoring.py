"""The monitoring kit: conf/prometheus (scrape config, alert rules and their promtool tests) and
conf/grafana/opencdn.json (the dashboard), against the metrics the services document and
expose.

- Every metric documented in a service's metrics docstring (edge/metrics.py, origin/metrics.py,
  steering/app.py, control/metrics.py) is on the dashboard; the dashboard and the alert rules
  name no other metric (``up`` aside), and select only labels the metric documents.
- promtool (Debian's prometheus package; bin/test installs it) checks the config and the
  rules and runs alerts.test.yml. Without promtool these tests skip with the reason, except
  under CI=true, where they fail.
- A live fleet on loopback (origin, control plane, steering, three edges, a nightly fill, a
  few requests) exposes every metric the rules and the dashboard use, with the documented
  type and labels, and counters are only ever read through rate()/increase().
- The dashboard imports into Grafana: a uid, unique panel ids, grid positions, data source
  references to its own variable, a target per query.
- What some alerts rely on holds on live services: the fill gauges during and after a fill
  (FillStalled, FillBehindSchedule), steering's usable edges per site
  (SteeringSiteWithoutEdges), control counters without labels exposed as 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import control.metrics
import edge.metrics
import origin.metrics
import steering.app
from control.config import load_config as load_control_config
from edge.config import FillConfig
from edge.fillplan import FillWindow
from origin.synth import synth_catalog

from .conftest import ADMIN_TOKEN, ROOT, TEST_KEYS, RunningEdge, blob, raw_request, start_edge
from .control_support import Api, FakeClock, RunningControl, control_settings, start_control_app
from .fleet_support import LoopbackFleet, secret, start_origin, until

PROM = ROOT / "conf" / "prometheus"
DASHBOARD = ROOT / "conf" / "grafana" / "opencdn.json"
MONITORING_DOC = ROOT / "docs" / "monitoring.md"
# Series Prometheus makes itself, not a service.
BUILTIN = {"up"}
# Labels Prometheus attaches to every series of a target (prometheus.yml): job and instance,
# and site on edges.
TARGET_LABELS = {"job", "instance", "site"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# -- what the services document -------------------------------------------------------------


def _labels(text: str | None) -> tuple[str, ...]:
    return tuple(x for x in (text or "").split(",") if x)


def _rst_table(doc: str, prefix: str) -> dict[str, tuple[str, ...]]:
    """``name -> labels`` from the reStructuredText simple table of a metrics docstring."""
    lines = doc.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("====")]
    assert len(rules) == 3, "expected a reStructuredText simple table"
    width = len(lines[rules[0]].split()[0])
    out: dict[str, tuple[str, ...]] = {}
    for line in lines[rules[1] + 1 : rules[2]]:
        cell = line[:width].strip()
        if not cell:
            continue  # the meaning column continued
        for part in cell.split(" / "):
            m = re.fullmatch(r"([a-z_]+)(?:\{([a-z_,]+)\})?", part.strip())
            assert m, part
            out[prefix + m.group(1)] = _labels(m.group(2))
    return out


def _backticked(text: str, prefix: str) -> dict[str, tuple[str, ...]]:
    return {
        m.group(1): _labels(m.group(2))
        for m in re.finditer(rf"``({prefix}[a-z_]+)(?:\{{([a-z_,]+)\}})?``", text)
    }


def _steering_section(doc: str) -> str:
    """The bullet list under "Metrics (``/metrics``, Prometheus):" in steering/app.py."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Metrics ("))
    end = lines.index("", start + 2)  # the blank line after the list
    return "\n".join(lines[start:end])


def documented() -> dict[str, dict[str, tuple[str, ...]]]:
    """Per service, every documented metric (its full series name, counters with _total,
    histograms without a suffix) and its labels."""
    docs = {
        "edge": edge.metrics.__doc__,
        "origin": origin.metrics.__doc__,
        "steering": steering.app.__doc__,
        "control": control.metrics.__doc__,
    }
    assert all(docs.values())
    return {
        "edge": _rst_table(docs["edge"] or "", "edge_"),
        "origin": _rst_table(docs["origin"] or "", "origin_"),
        "steering": _backticked(_steering_section(docs["steering"] or ""), "steering_"),
        "control": _backticked(docs["control"] or "", "control_"),
    }


def all_documented() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for metrics in documented().values():
        out.update(metrics)
    return out


def resolve(name: str, docs: dict[str, tuple[str, ...]]) -> str | None:
    """The documented metric a series name belongs to (a histogram's _bucket, _sum and _count
    belong to the histogram), or None."""
    if name in docs:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in docs:
            return name.removesuffix(suffix)
    return None


# -- PromQL ---------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on"}
_SELECTOR = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions,
    aggregations, keywords, label names (in selectors and grouping clauses) or numbers."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or m.group(1) in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(m.group(1))
    return names


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric, label names matched) for each ``metric{...}`` selector."""
    text = _STRING.sub('""', expr)
    # The matchers' values were blanked above; read label names from the original positions.
    for m in _SELECTOR.finditer(text):
        yield m.group(1), set(_MATCHER.findall(m.group(2)))


def range_uses(expr: str) -> Iterator[tuple[str, str | None]]:
    """(metric, the function reading it) for every metric in ``expr``: the function is the
    one whose argument is ``metric{...}[range]``, None when the metric is read as an instant
    vector."""
    text = _STRING.sub('""', expr)
    for name in metric_names(expr):
        for m in re.finditer(rf"(?<![\w.$]){re.escape(name)}(?![\w:])", text):
            rest = text[m.end() :]
            rest = re.sub(r"^\s*\{[^}]*\}", "", rest)
            if not rest.lstrip().startswith("["):
                yield name, None
                continue
            # The innermost unclosed "(" before the metric and the identifier before it.
            depth, i = 0, m.start() - 1
            while i >= 0:
                if text[i] == ")":
                    depth += 1
                elif text[i] == "(":
                    if depth == 0:
                        break
                    depth -= 1
                i -= 1
            fn = re.search(r"([a-z_]+)\s*$", text[:i]) if i >= 0 else None
            yield name, fn.group(1) if fn else ""


def load_alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries (the
    metric of ``label_values(metric{...}, label)``)."""
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert m, query
        exprs.append(m.group(1))
    return exprs


def alert_exprs() -> list[str]:
    return [rule["expr"] for rule in load_alerts()]


# -- the documentation and the files agree ---------------------------------------------------


def test_metric_docstrings_are_parsed() -> None:
    docs = documented()
    assert len(docs["edge"]) == 39
    assert docs["edge"]["edge_fill_objects_total"] == ("source", "result")
    assert docs["edge"]["edge_ttfb_seconds"] == ("cache",)
    assert docs["origin"] == {
        "origin_requests_total": ("status",),
        "origin_response_bytes_total": (),
        "origin_storage_errors_total": ("op",),
        "origin_storage_latency_seconds": (),
        "origin_auth_failures_total": ("credential",),
        "origin_connections_open": (),
        "origin_published_titles": (),
    }
    assert docs["steering"]["steering_site_usable_edges"] == ("site",)
    assert docs["steering"]["steering_edge_fill_bytes_total"] == ("edge",)
    assert len(docs["steering"]) == 13
    # The control plane declares its metrics in code too: the docstring lists them all.
    declared = {name + "_total" for name in control.metrics.COUNTERS}
    declared |= set(control.metrics.GAUGES) | {"control_request_seconds"}
    assert set(docs["control"]) == declared
    for name, (_, labels) in control.metrics.COUNTERS.items():
        assert docs["control"][name + "_total"] == labels, name


def test_every_documented_metric_is_on_the_dashboard() -> None:
    used = set()
    docs = all_documented()
    for expr in dashboard_exprs(load_dashboard()):
        used |= {resolve(n, docs) for n in metric_names(expr)}
    missing = sorted(set(docs) - used)
    assert not missing, f"documented but on no dashboard panel: {missing}"


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_only_documented_metrics_and_labels_are_used(where: str) -> None:
    docs = all_documented()
    exprs = dashboard_exprs(load_dashboard()) if where == "dashboard" else alert_exprs()
    assert exprs
    for expr in exprs:
        for name in metric_names(expr):
            assert name in BUILTIN or resolve(name, docs), f"{name} is not documented: {expr}"
        for name, labels in selectors(expr):
            metric = resolve(name, docs)
            allowed = set(TARGET_LABELS)
            if metric is not None:
                allowed |= set(docs[metric])
                if name.endswith("_bucket") and name != metric:
                    allowed.add("le")
            unknown = labels - allowed
            assert not unknown, f"{name} has no label {sorted(unknown)}: {expr}"


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (job, instance) (rate(edge_x_total{cache="hit", a=~"$site"}[$__rate_interval]))'
        " / ignoring(le) histogram_quantile(0.99, rate(origin_y_bucket[5m] offset 1d)) > 1e6"
        " and on (instance) up == 0 unless time() - control_z > 6 * 3600"
    )
    assert metric_names(expr) == {"edge_x_total", "origin_y_bucket", "up", "control_z"}
    assert dict(range_uses(expr)) == {
        "edge_x_total": "rate",
        "origin_y_bucket": "rate",
        "up": None,
        "control_z": None,
    }
    assert list(selectors(expr)) == [("edge_x_total", {"cache", "a"})]


def test_alerts_are_complete() -> None:
    rules = load_alerts()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    required = {
        "EdgeDown",
        "EdgeHitRatioFalling",
        "FillBehindSchedule",
        "FillStalled",
        "EdgeDiskErrors",
        "EdgeDiskFailed",
        "TokenRejectionsSpiking",
        "OriginErrors",
    }
    assert required <= set(names)
    doc = MONITORING_DOC.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"\d+[smhd]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        ann = r["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, r["alert"]
        # The runbook is the alert's own section of docs/monitoring.md.
        assert ann["runbook_url"] == f"docs/monitoring.md#{r['alert'].lower()}"
        assert r["alert"].lower() in anchors, f"docs/monitoring.md has no section {r['alert']}"
        # The description names every metric the rule reads.
        for name in metric_names(r["expr"]) - BUILTIN:
            base = resolve(name, all_documented())
            assert base is not None and base in ann["description"], (r["alert"], name)


def test_runbook_links_lead_to_sections_of_the_operations_guide() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", guide, re.M)}
    text = (PROM / "alerts.yml").read_text() + MONITORING_DOC.read_text()
    linked = set(re.findall(r"operations\.md#([\w-]+)", text))
    assert {"draining-an-edge", "replacing-a-failed-disk", "upgrading-and-rolling-back"} <= linked
    assert linked <= anchors, f"no such section in docs/operations.md: {linked - anchors}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_unit_tests_that_fire_it_and_that_do_not() -> None:
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for t in case["alert_rule_test"]:
            (fired if t["exp_alerts"] else quiet).add(t["alertname"])
    names = {r["alert"] for r in load_alerts()}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test expects quiet"


def test_scrape_targets_are_the_local_fleet() -> None:
    fleet = yaml.safe_load((ROOT / "conf" / "fleet.yaml").read_text())
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"edge", "origin", "steering", "control"}
    for service in ("origin", "steering", "control"):
        (group,) = jobs[service]["static_configs"]
        assert group["targets"] == [fleet[service]["listen"]], service
    edges = {
        target: group["labels"]
        for group in jobs["edge"]["static_configs"]
        for target in group["targets"]
    }
    assert edges == {e["admin"]: {"site": e["site"], "node": e["id"]} for e in fleet["edges"]}
    assert config["rule_files"] == ["alerts.yml"]


# -- promtool --------------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is missing: bin/test installs it (apt-get install prometheus)")
    pytest.skip("promtool is missing (bin/test installs it as root: apt-get install prometheus)")


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(promtool: str, args: list[str]) -> None:
    result = subprocess.run(
        [promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- the dashboard imports -------------------------------------------------------------------


def test_dashboard_is_importable() -> None:
    dash = load_dashboard()
    assert dash["uid"] == "opencdn-fleet" and dash["title"]
    assert dash["id"] is None  # Grafana assigns it
    assert 36 <= dash["schemaVersion"] <= 41
    (ds_input,) = dash["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS" and ds_input["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert {"site", "instance"} <= set(variables)
    ds_ref = {"type": "prometheus", "uid": "${datasource}"}
    for name in ("site", "instance"):
        assert variables[name]["datasource"] == ds_ref
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows][:1] == ["Overview"]
    assert {"Origin", "Steering"} <= {r["title"] for r in rows}
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"}, panel["title"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            assert panel["panels"] == [] and not panel["collapsed"]
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == ds_ref, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == ds_ref and t["expr"].strip(), panel["title"]
            # Edge panels follow the site and edge variables.
            for name, labels in selectors(t["expr"]):
                if name.startswith("edge_"):
                    assert {"site", "instance"} <= labels, (panel["title"], t["expr"])


# -- a live fleet exposes what the rules and the dashboard read ------------------------------

CATALOG = "catalog-token-for-monitoring-0123"
ORIGIN_FILL = "origin-fill-token-for-monitoring"
FEED = "popularity-feed-token-monitoring"
HEARTBEAT = "heartbeat-token-for-monitoring-01"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Labelled families whose series only appear once something goes wrong (or something the
# fleet test does not do happens): the family is exposed, with no sample yet.
EVENT_ONLY = {
    "edge_upstream_failures_total",  # an upstream failing
    "steering_fill_feed_skipped_objects_total",  # a feed breaking the contract
    "control_sessions_revoked_total",  # sign-outs
    "control_rate_limited_total",  # rate limits hit
    "control_recompute_runs_total",  # the recommendation batch (off in tests)
}
# Watched by an alert's increase(), so exported from 0 before the first failure.
FROM_ZERO = {
    "origin_storage_errors_total": {("stat",), ("read",)},
    "control_db_errors_total": {("integrity",), ("unavailable",), ("other",)},
}


async def _scrape(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with client.get(url + "/metrics") as r:
        assert r.status == 200, url
        text = await r.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_a_live_fleet_exposes_every_metric_the_rules_and_the_dashboard_use(
    tmp_path: Path,
) -> None:
    """A real origin (two synthetic titles), control plane (SQLite), steering planning fill
    manifests from the control plane's popularity feed, and three edges; then a viewer, a
    nightly fill on e1 and a few players' requests, and a scrape of every service."""
    origin = await start_origin(tmp_path / "origin", fill_token=ORIGIN_FILL, catalog_token=CATALOG)
    lf = LoopbackFleet.plan(tmp_path, HEARTBEAT)
    control_runner = None
    async with aiohttp.ClientSession() as client:
        try:
            keys = synth_catalog(origin.media, titles=2, renditions=1, duration=8.0, seed=3)
            for key in keys:
                doc = json.loads((origin.media / "v" / key / "manifest.json").read_text())
                origin.feed.announce(key, doc)
            (tmp_path / "edge.keys").write_text(TEST_KEYS)
            settings = control_settings(
                f"sqlite:///{tmp_path}/control.db",
                tmp_path,
                catalog_feed={
                    "url": origin.url,
                    "credential_file": secret(tmp_path / "catalog.token", CATALOG),
                    "interval": 3600,
                },
                playback={
                    "signing_keys_file": str(tmp_path / "edge.keys"),
                    "steering_url": lf.steering_url,
                    "lease_ttl": "1h",
                },
                fill={
                    "credential_file": secret(tmp_path / "feed.token", FEED),
                    "origin_credential_file": secret(tmp_path / "origin-fill.token", ORIGIN_FILL),
                    "boost_views": 1.0,
                    "cache_ttl": 0,
                },
            )
            (tmp_path / "control.yaml").write_text(yaml.safe_dump(settings))
            clock = FakeClock()
            control_runner, control_url = await start_control_app(
                load_control_config(tmp_path / "control.yaml"), clock
            )
            rc = RunningControl(
                control_url,
                control_runner.app,
                control_runner,
                clock,
                Api(client, control_url),
                None,
            )
            admin = await rc.admin()
            r = await rc.api.post("/v1/admin/catalog/sync", token=admin.token)
            assert r.status == 200, r
            await until(
                lambda: rc.counter("control_media_files_fetches", "ok") >= len(keys),
                "the titles' file lists",
            )
            await lf.start_steering(
                extra=f"fill: {{popularity_url: '{control_url}', "
                f"credential_file: '{tmp_path / 'feed.token'}'}}\n"
            )
            # A one-hour UTC window two hours from now: the fill runs when the test asks.
            now = int(time.time() // 60) % 1440
            window = FillWindow((now + 120) % 1440, (now + 180) % 1440)
            await lf.start_edges(
                origin, ORIGIN_FILL, fill=FillConfig(window=window, timezone="UTC")
            )
            await _traffic(client, rc, lf, origin.url)
            # Each edge saw part of the traffic: the edge job's series are all of theirs.
            edge_families: dict[str, Any] = {}
            for e in lf.edges.values():
                for name, family in (await _scrape(client, e.admin)).items():
                    if name in edge_families:
                        edge_families[name].samples.extend(family.samples)
                    else:
                        edge_families[name] = family
            families = {
                "edge": edge_families,
                "origin": await _scrape(client, origin.url),
                "steering": await _scrape(client, lf.steering_url),
                "control": await _scrape(client, control_url),
            }
        finally:
            others = [origin.runner] if control_runner is None else [control_runner, origin.runner]
            await lf.stop(also=others)
    _check_exposition(families)


async def _traffic(
    client: aiohttp.ClientSession, rc: RunningControl, lf: LoopbackFleet, origin_url: str
) -> None:
    """A fill on e1 and players' requests: the labelled series the panels and rules read."""
    # A viewer: subscription (invoices), search, a played title (steering, events).
    user = await rc.subscriber()
    r = await rc.api.get("/v1/search", params={"q": "synth", "profile_id": user.profile_id},
                         token=user.token)  # fmt: skip
    assert r.status == 200, r
    title_id = r.body["items"][0]["id"]
    r = await rc.api.post(
        "/v1/playback", json={"profile_id": user.profile_id, "title_id": title_id},
        token=user.token,
    )  # fmt: skip
    assert r.status == 201, r
    play = r.body["play_id"]
    r = await rc.api.post(
        f"/v1/playback/{play}/events",
        json={"kind": "progress", "position": 4.0, "client_at": rc.clock()},
        token=user.token,
    )
    assert r.status == 200, r
    assert (await rc.api.delete(f"/v1/playback/{play}", token=user.token)).status == 204
    r = await rc.api.post("/v1/sessions", json={"email": user.email, "password": "wrong"})
    assert r.status == 401

    # Steering plans e1's manifest from the popularity feed; e1 fills from it.
    auth = {"Authorization": f"Bearer {HEARTBEAT}"}
    deadline = asyncio.get_running_loop().time() + 15
    manifest: dict[str, Any] = {}
    while not manifest.get("objects"):
        async with client.post(lf.steering_url + "/fill/refresh", headers=auth) as resp:
            assert resp.status == 200, await resp.text()
        async with client.get(lf.steering_url + "/fill/manifest/e1", headers=auth) as resp:
            if resp.status == 200:
                manifest = await resp.json()
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("no fill manifest for e1")
        await asyncio.sleep(0.05)
    e1: RunningEdge = lf.edges["e1"]
    fill = e1.edge.fill
    assert fill is not None
    fill.finished.clear()
    async with client.post(e1.admin + "/admin/fill", headers=ADMIN_AUTH) as resp:
        assert resp.status == 202, await resp.text()
    await asyncio.wait_for(fill.finished.wait(), 30)
    assert fill.state == "done", fill.status()
    # Steering hears e1's progress with its next heartbeats.
    assert lf.steering is not None
    s = lf.steering.app[steering.app.STEERING]
    await until(
        lambda: (p := s.fill.progress.get("e1")) is not None and p.bytes_done > 0,
        "e1's fill progress at steering",
    )

    # Players on e2: a miss, a hit, a bad token, a malformed request; a peer-style
    # only-if-cached request to e1; a drained e3 refusing a player.
    e2: RunningEdge = lf.edges["e2"]
    path = next(o["path"] for o in manifest["objects"] if o["path"].endswith(".m4s"))
    for cache in ("MISS", "HIT"):
        status, headers, _ = await e2.get(client, e2.signed(path).removeprefix(e2.url))
        assert status == 200 and headers["X-Cache"] == cache
    async with client.get(e2.url + "/_t/not-a-token" + path) as resp:
        assert resp.status == 403
    assert b" 400 " in await raw_request(e2.port, b"NONSENSE\r\n\r\n", read_timeout=2)
    async with client.get(e1.signed(path), headers={"Cache-Control": "only-if-cached"}) as resp:
        assert resp.status == 200
    e3: RunningEdge = lf.edges["e3"]
    async with client.post(e3.admin + "/admin/drain", headers=ADMIN_AUTH) as resp:
        assert resp.status == 200
    async with client.get(e3.signed(path)) as resp:
        assert resp.status == 503
    # The origin refuses a request without a fill credential.
    async with client.get(origin_url + path) as resp:
        assert resp.status == 401


def _check_exposition(families: dict[str, dict[str, Any]]) -> None:
    docs = documented()
    referenced: set[str] = set()
    exprs = dashboard_exprs(load_dashboard()) + alert_exprs()
    for expr in exprs:
        referenced |= metric_names(expr) - BUILTIN
    family_of: dict[str, tuple[str, Any]] = {}
    for service, metrics in docs.items():
        for name in metrics:
            family = families[service].get(name.removesuffix("_total"))
            if family is None or family.type not in ("counter", "gauge", "histogram"):
                family = families[service].get(name)
            assert family is not None, f"{service} does not expose {name}"
            family_of[name] = (service, family)
    assert set(family_of) >= EVENT_ONLY
    empty = []
    for name in sorted(referenced):
        base = resolve(name, {n: () for n in family_of})
        assert base is not None, name
        service, family = family_of[base]
        # Counters are named with _total, histograms without a suffix, in the docs as on the
        # wire; what the rules and panels select is exposed under that name.
        kind = family.type
        if kind == "counter":
            assert base.endswith("_total"), base
        if name != base:
            assert kind == "histogram", (name, kind)
        samples = [s for s in family.samples if s.name == name]
        if not samples and base not in EVENT_ONLY:
            empty.append(name)
        for s in samples:
            expected = set(docs[service][base]) | ({"le"} if s.name.endswith("_bucket") else set())
            assert set(s.labels) == expected, (name, s.labels)
    assert not empty, f"exposed with no series after the traffic: {empty}"
    for name, label_sets in FROM_ZERO.items():
        family = family_of[name][1]
        seen = {tuple(s.labels.values()) for s in family.samples if s.name == name}
        assert seen >= label_sets, (name, seen)
    # Counters (and histogram series) are read with rate() or increase(), gauges as they are.
    for expr in exprs:
        for name, fn in range_uses(expr):
            if name in BUILTIN:
                continue
            base = resolve(name, {n: () for n in family_of})
            assert base is not None
            kind = family_of[base][1].type
            if kind in ("counter", "histogram"):
                assert fn in ("rate", "increase"), f"{name} read raw ({fn}): {expr}"
            else:
                assert fn in (None, "changes"), f"gauge {name} read with {fn}(): {expr}"


# -- what the alerts rely on, on live services -------------------------------------------------


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


async def test_the_fill_gauges_behave_as_the_fill_alerts_read_them(tmp_path: Path) -> None:
    """FillStalled: while a fill runs and waits, edge_fill_running is 1 with bytes pending and
    edge_fill_bytes_total still. FillBehindSchedule: once a run is over with an object it could
    not fill, edge_fill_running is 0 and edge_fill_pending_bytes is that object's size; after a
    complete run, pending is 0."""
    from .test_edge_fill import HoldingOrigin, Steering, fill_config, fill_now, manifest

    steering_standin, origin = Steering(), HoldingOrigin()
    await steering_standin.start()
    await origin.start()
    edge: RunningEdge | None = None
    try:
        held = origin.files["/v/m/a.m4s"] = blob(300_000, seed=1)
        missing = blob(200_000, seed=2)  # in the manifest, not (yet) at the origin
        origin.hold = {"/v/m/a.m4s"}
        steering_standin.manifests["e1"] = manifest(
            "e1", [("/v/m/a.m4s", held, ("e1",), 2.0), ("/v/m/b.m4s", missing, ("e1",), 1.0)]
        )
        edge = await start_edge(
            fill_config(tmp_path, "e1", [origin.url], steering_standin, concurrency=1)
        )
        fill = edge.edge.fill
        assert fill is not None
        async with aiohttp.ClientSession() as client:
            async with client.post(edge.admin + "/admin/fill", headers=ADMIN_AUTH) as r:
                assert r.status == 202
            await asyncio.wait_for(origin.held.wait(), 10)
            running = await _scrape(client, edge.admin)
            downloaded = sum(
                _value(running, "edge_fill_bytes_total", source=s)
                for s in ("peer", "parent", "origin")
            )
            origin.release.set()
            await asyncio.wait_for(fill.finished.wait(), 30)
            over = await _scrape(client, edge.admin)
            origin.files["/v/m/b.m4s"] = missing
            assert (await fill_now(client, edge))["objects_left"] == 0
            done = await _scrape(client, edge.admin)
    finally:
        if edge is not None:
            await edge.stop()
        await origin.stop()
        await steering_standin.stop()
    assert _value(running, "edge_fill_running") == 1
    assert _value(running, "edge_fill_pending_bytes") == len(held) + len(missing)
    assert downloaded < len(held)  # held mid-object: nothing verified yet
    assert _value(over, "edge_fill_running") == 0
    assert _value(over, "edge_fill_pending_bytes") == len(missing)
    assert _value(over, "edge_fill_pending_objects") == 1
    assert _value(over, "edge_fill_objects_total", source="origin", result="not_found") == 1
    assert _value(done, "edge_fill_running") == 0
    assert _value(done, "edge_fill_pending_bytes") == 0


async def test_steering_counts_the_usable_edges_of_each_site(tmp_path: Path) -> None:
    """steering_site_usable_edges{site}: a drained edge and a dead one leave the count; a
    site whose every edge is gone reads 0 (SteeringSiteWithoutEdges)."""
    origin = await start_origin(tmp_path / "origin", fill_token=ORIGIN_FILL, catalog_token=CATALOG)
    lf = LoopbackFleet.plan(tmp_path, HEARTBEAT)
    try:
        s = await lf.start_steering()
        await lf.start_edges(origin, ORIGIN_FILL)
        async with aiohttp.ClientSession() as client:

            async def usable() -> dict[str, float]:
                families = await _scrape(client, lf.steering_url)
                return {
                    smp.labels["site"]: smp.value
                    for smp in families["steering_site_usable_edges"].samples
                }

            assert await usable() == {"paris": 2, "lyon": 1}
            async with client.post(lf.edges["e3"].admin + "/admin/drain", headers=ADMIN_AUTH) as r:
                assert r.status == 200
            await until(lambda: not s.fleet.usable("e3"), "steering sees e3 draining")
            assert await usable() == {"paris": 2, "lyon": 0}
            await lf.edges.pop("e2").stop()
            await until(lambda: not s.fleet.usable("e2"), "steering sees e2 down", timeout=10)
            assert await usable() == {"paris": 1, "lyon": 0}
            # The drained e3 is draining or, once its /healthz probes answered 503, down.
            families = await _scrape(client, lf.steering_url)
            gone = sum(_value(families, "steering_edges", state=x) for x in ("down", "draining"))
            assert gone == 2
    finally:
        await lf.stop(also=[origin.runner])


async def test_control_counters_without_labels_start_at_zero(tmp_path: Path) -> None:
    """rate() and increase() over an unlabelled control counter work before its first count;
    a labelled one has no series until counted."""
    settings = control_settings(f"sqlite:///{tmp_path}/control.db", tmp_path)
    (tmp_path / "control.yaml").write_text(yaml.safe_dump(settings))
    runner, url = await start_control_app(
        load_control_config(tmp_path / "control.yaml"), FakeClock()
    )
    try:
        async with aiohttp.ClientSession() as client:
            families = await _scrape(client, url)
    finally:
        await runner.cleanup()
    for name, (_, labels) in control.metrics.COUNTERS.items():
        samples = families[name].samples
        if labels:
            assert all(s.labels for s in samples), name
        else:
            assert [(s.name, s.value) for s in samples] == [(name + "_total", 0.0)], name
