"""The read paths a 10,000-device fleet leans on -- the device list, the overview and a rollout tick --
run a fixed number of SQL statements whatever the fleet's size, and answer what the fleet holds.

A fleet of devices, reported models, metric samples, a rolling deployment and a firing alert is
written straight into the database (the ORM, no API round trips: fast). Statements are counted with a
``before_cursor_execute`` listener on the engine and compared between 30 and 300 devices: a query per
device would show as a difference of hundreds. Every answer is checked against the fleet as the test
wrote it (its own list of devices and samples), device by device, so batching changed no result.
SQLite always; PostgreSQL too when EDGEMILL_TEST_POSTGRES_URL names a server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event, select  # noqa: E402

from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402
from edgemill.fleet.db.tables import (  # noqa: E402
    Alert, AlertRule, Deployment, DeploymentDevice, Device, DeviceModel, Fleet, MetricSample, Model, ModelVersion,
    WebhookDelivery)
from edgemill.fleet.reconciler import tick  # noqa: E402
from edgemill.fleet.rollouts import advance_all, device_views  # noqa: E402
from edgemill.fleet.routers.overview import PROBLEM_DEVICES_SHOWN, PROBLEM_WINDOW_S, overview  # noqa: E402
from edgemill.fleet.views import device_status, device_status_sql, dialect_of  # noqa: E402

from ._fleet import drop_postgres_database, fresh_postgres_database, postgres_url  # noqa: E402

NOW = 1_800_000_000.0
OFFLINE_AFTER_S = 90.0
DATABASES = ["sqlite"] + (["postgresql"] if postgres_url() else [])
PACKAGES = {("detector", "1.0.0"): "d1" * 32, ("detector", "2.0.0"): "d2" * 32, ("classifier", "1.0.0"): "c1" * 32}
WEIRD_TAG = ('we"ird.key$[0]', "x=y")  # a key no JSON path could carry as written
UPDATED_AT = NOW - 120.0
UPDATED_AT_EDGE = NOW - 60.0  # equal to a sample's time: that sample is not "after the update"


# --- the fleet, as the test knows it -------------------------------------------------------------


@dataclass
class DeviceSpec:
    name: str
    fleet: str
    tags: dict[str, str]
    last_seen: float | None
    agent: dict[str, Any]
    models: list[tuple[str, str]]  # (model, version) in the order the rows are written
    rollout: str | None = None  # its state in the deployment, when targeted
    updated_at: float | None = None


@dataclass
class FleetSpec:
    devices: list[DeviceSpec]
    samples: list[tuple[str, str, str, float, int, int, float | None]] = field(default_factory=list)
    # (device, model, package, t, requests, errors, p95)


def _status(d: DeviceSpec) -> str:
    """The rule, stated once more here: never seen, offline after OFFLINE_AFTER_S, degraded with problems."""
    if d.last_seen is None:
        return "never_seen"
    if NOW - d.last_seen > OFFLINE_AFTER_S:
        return "offline"
    return "degraded" if d.agent.get("problems") else "online"


def fleet_spec(n: int) -> FleetSpec:
    """``n`` devices cycling through every status and its edges (exactly at the offline limit, a clock
    ahead of the server's, an empty problem list, offline with problems), two fleets, tags, one or two
    models each, and a deployment of detector 2.0.0 to fleet alpha with its canary wave under way."""
    devices = []
    for i in range(n):
        kind = i % 8
        last_seen: float | None = {0: None, 1: NOW - 200, 2: NOW - OFFLINE_AFTER_S - 0.5, 3: NOW - OFFLINE_AFTER_S,
                                   4: NOW - 10, 5: NOW - 5, 6: NOW + 30, 7: NOW - 500}[kind]
        agent: dict[str, Any] = {}
        if kind in (4, 7):
            agent = {"memory": {"rss_mb": 80.0 + i}, "problems": [f"model classifier: error rate 40.0% ({i})", "second"]}
        elif kind == 3:
            agent = {"memory": {"rss_mb": 70.0}, "problems": []}
        elif last_seen is not None:
            agent = {"agent_version": "1.0", "capture": {"queued": i}}
        tags = {"site": "north" if i % 2 else "south", "rack": str(i % 3)}
        if i % 16 == 5:
            tags[WEIRD_TAG[0]] = WEIRD_TAG[1]
        models = [] if last_seen is None else [("detector", "1.0.0")] + ([("classifier", "1.0.0")] if i % 4 == 0 else [])
        devices.append(DeviceSpec(name=f"dev-{i:05d}", fleet="beta" if i % 3 == 0 else "alpha", tags=tags,
                                  last_seen=last_seen, agent=agent, models=models))
    targeted = [d for d in devices if d.fleet == "alpha"]
    canary = max(4, len(targeted) // 10)
    for position, d in enumerate(targeted):
        if position >= canary:
            d.rollout = "pending"
        elif position == 1:
            d.rollout = "failed"
        elif position % 3 == 2 and d.last_seen is not None:
            d.rollout = "assigned"
        elif d.last_seen is not None:
            d.rollout, d.updated_at = "updated", (UPDATED_AT_EDGE if position == 3 else UPDATED_AT)
            d.models = [("detector", "2.0.0") if m == "detector" else (m, v) for m, v in d.models]
        else:
            d.rollout = "assigned"
    spec = FleetSpec(devices)
    for i, d in enumerate(devices):
        for model, version in d.models:
            package = PACKAGES[(model, version)]
            if model == "detector":
                spec.samples += [(d.name, model, package, NOW - 700, 100, 1, 3.0),  # outside the overview's window
                                 (d.name, model, package, NOW - 300, 100, 2, 2.0 + i % 5),
                                 (d.name, model, package, NOW - 60, 80, i % 5, None if i % 6 == 0 else 1.0 + i % 7)]
            else:
                spec.samples += [(d.name, model, package, NOW - 200, 50, 20, None),
                                 (d.name, model, package, NOW - 30, 30, 15, 9.0 + i % 3)]
        if d.rollout == "updated":  # old-version traffic after the update: not the new version's
            spec.samples.append((d.name, "detector", PACKAGES[("detector", "1.0.0")], NOW - 30, 10, 10, 99.0))
    return spec


def write_fleet(db: Any, spec: FleetSpec) -> None:
    """The whole fleet in one transaction, straight through the ORM."""
    with db.session() as session:
        fleets = {name: Fleet(name=name, description="", created_at=NOW - 86400) for name in ("alpha", "beta")}
        session.add_all(fleets.values())
        models = {name: Model(name=name, created_at=NOW - 86400) for name in ("detector", "classifier")}
        session.add_all(models.values())
        session.flush()
        versions = {}
        for (model, version), package in PACKAGES.items():
            versions[(model, version)] = ModelVersion(
                model_id=models[model].id, version=version, package_id=package, stage="production", manifest={},
                report={}, signer="test", size_bytes=1000, sha256=package, store_key=f"packages/{package}.emp",
                created_at=NOW - 86400)
        session.add_all(versions.values())
        rows = {d.name: Device(name=d.name, fleet_id=fleets[d.fleet].id, tags=d.tags, credential_hash=f"{i:064x}",
                               registered_at=NOW - 86400 + i, last_seen_at=d.last_seen, last_seq=1, agent=d.agent)
                for i, d in enumerate(spec.devices)}
        session.add_all(rows.values())
        session.flush()
        for d in spec.devices:
            # Written detector first: the API must order a device's models by name, not by insertion.
            session.add_all(DeviceModel(device_id=rows[d.name].id, model_name=m, version=v,
                                        package_id=PACKAGES[(m, v)], since=NOW - 3600) for m, v in d.models)
        session.add_all(MetricSample(device_id=rows[name].id, model_name=model, package_id=package, t=t, requests=r,
                                     errors=e, total_requests=r, total_errors=e, p50_ms=None if p95 is None else p95 / 2,
                                     p95_ms=p95, p99_ms=None if p95 is None else p95 * 2)
                        for name, model, package, t, r, e, p95 in spec.samples)
        deployment = Deployment(
            model_id=models["detector"].id, version_id=versions[("detector", "2.0.0")].id, fleet_id=fleets["alpha"].id,
            tags={}, state="rolling", wave=0, waves=2, wave_started_at=NOW - 200, created_at=NOW - 300, updated_at=NOW - 200,
            strategy={"canary_percent": 10, "batch_size": 0, "bake_time_s": 86400,
                      "gates": {"max_error_rate": 1.0, "max_p95_ms": None, "max_failed_devices": 1_000_000, "min_requests": 20}})
        session.add(deployment)
        session.flush()
        targeted = [d for d in spec.devices if d.rollout is not None]
        session.add_all(DeploymentDevice(
            deployment_id=deployment.id, device_id=rows[d.name].id, position=p, wave=None if d.rollout == "pending" else 0,
            state=d.rollout, assigned_at=None if d.rollout == "pending" else NOW - 200, updated_at=d.updated_at,
            previous_version_id=versions[("detector", "1.0.0")].id, reason="checksum: mismatch" if d.rollout == "failed" else None)
            for p, d in enumerate(targeted))
        rule = AlertRule(name="classifier-errors", metric="error_rate", op=">", threshold=0.1, window_s=600,
                         model="classifier", created_at=NOW - 3600)
        session.add(rule)
        session.flush()
        firing = Alert(rule_id=rule.id, state="firing", value=0.4, message="error rate 40%", started_at=NOW - 100)
        resolved = Alert(rule_id=rule.id, state="resolved", value=0.2, message="was high", started_at=NOW - 3000,
                         resolved_at=NOW - 2000)
        session.add_all([firing, resolved])
        session.flush()
        # The next retry is a day away: a background tick in these tests leaves both deliveries alone.
        session.add_all([WebhookDelivery(alert_id=firing.id, url="http://127.0.0.1:9/a", body="{}", attempts=3,
                                         next_attempt_at=NOW + 86400, last_error="connection refused"),
                         WebhookDelivery(alert_id=firing.id, url="http://127.0.0.1:9/b", body="{}", attempts=1,
                                         next_attempt_at=NOW, delivered_at=NOW - 90)])


# --- servers over such fleets ----------------------------------------------------------------------


@dataclass
class Built:
    client: TestClient
    state: Any
    spec: FleetSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@contextmanager
def built_fleet(kind: str, n: int, work: Path) -> Iterator[Built]:
    db = f"sqlite:///{work / 'db.sqlite'}" if kind == "sqlite" else fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    config = ServerConfig(db=db, store=f"file://{work / 'store'}", api_key_file=work / "operator.key",
                          offline_after_s=OFFLINE_AFTER_S)
    app = create_app(config, clock=FakeClock(), background=False)
    state = app.state.edgemill
    spec = fleet_spec(n)
    write_fleet(state.db, spec)
    try:
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {(work / 'operator.key').read_text().strip()}"
            yield Built(client, state, spec)
    finally:
        state.db.engine.dispose()
        if kind == "postgresql":
            drop_postgres_database(db)


@pytest.fixture(scope="module", params=DATABASES)
def fleets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Built]]:
    """The same fleet at 30 and at 300 devices, each behind its own app."""
    with built_fleet(request.param, 30, tmp_path_factory.mktemp("fleet30")) as small, \
            built_fleet(request.param, 300, tmp_path_factory.mktemp("fleet300")) as large:
        yield {30: small, 300: large}


@contextmanager
def statements(engine: Any) -> Iterator[list[str]]:
    """Every SQL statement sent to the database inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _get(built: Built, path: str, **params: Any) -> Any:
    r = built.client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r


# --- statements per request -----------------------------------------------------------------------

READS = {
    "list devices": lambda b: _get(b, "/api/v1/devices"),
    "list devices, filtered": lambda b: _get(b, "/api/v1/devices", fleet="alpha", status="degraded", tag="site=north"),
    "overview": lambda b: _get(b, "/api/v1/overview"),
    "deployment list": lambda b: _get(b, "/api/v1/deployments"),
    "rollout tick": lambda b: advance_all(b.state.db, NOW, b.state.config),
    "background tick": lambda b: tick(b.state),
}
# Generous ceilings that a per-device query would still break at 30 devices.
MOST_STATEMENTS = {"list devices": 6, "list devices, filtered": 7, "overview": 14, "deployment list": 4,
                   "rollout tick": 6, "background tick": 14}


@pytest.mark.parametrize("read", list(READS))
def test_a_read_costs_the_same_statements_at_30_and_300_devices(fleets: dict[int, Built], read: str) -> None:
    counts = {}
    for n, built in fleets.items():
        READS[read](built)  # warm: a first tick may record its wait reason once
        with statements(built.state.db.engine) as seen:
            READS[read](built)
        counts[n] = len(seen)
    assert counts[30] == counts[300], f"{read}: {counts} statements (30 vs 300 devices): a query per device?"
    assert counts[300] <= MOST_STATEMENTS[read], (read, counts)


# --- the answers, checked against the fleet ------------------------------------------------------------


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def _expected_device(d: DeviceSpec) -> dict[str, Any]:
    return {"name": d.name, "fleet": d.fleet, "tags": d.tags, "status": _status(d), "last_seen_at": d.last_seen,
            "models": [{"name": m, "version": v, "package_id": PACKAGES[(m, v)]} for m, v in sorted(d.models)],
            "problems": list(d.agent.get("problems", [])), "agent": {k: v for k, v in d.agent.items() if k != "problems"}}


def _shown(device: dict[str, Any]) -> dict[str, Any]:
    return {**{k: device[k] for k in ("name", "fleet", "tags", "status", "models", "problems", "agent")},
            "last_seen_at": _epoch(device["last_seen_at"])}


def _pages(built: Built, limit: int, **filters: Any) -> tuple[list[dict[str, Any]], set[int]]:
    out, totals, offset = [], set(), 0
    while True:
        r = _get(built, "/api/v1/devices", limit=limit, offset=offset, **filters)
        totals.add(int(r.headers["X-Total-Count"]))
        page = r.json()
        assert len(page) <= limit
        out += page
        if len(page) < limit:
            return out, totals
        offset += limit


FILTERS: list[dict[str, Any]] = [
    {}, {"status": "online"}, {"status": "offline"}, {"status": "degraded"}, {"status": "never_seen"},
    {"fleet": "beta"}, {"tag": "site=north"}, {"tag": ["site=north", "rack=2"]}, {"tag": "=".join(WEIRD_TAG)},
    {"tag": "rack=9"}, {"fleet": "alpha", "status": "offline", "tag": "site=south"},
]


def _matches(d: DeviceSpec, filters: dict[str, Any]) -> bool:
    tags = filters.get("tag", [])
    wanted = dict(t.split("=", 1) for t in ([tags] if isinstance(tags, str) else tags))
    return (filters.get("fleet") in (None, d.fleet) and filters.get("status") in (None, _status(d))
            and all(d.tags.get(k) == v for k, v in wanted.items()))


@pytest.mark.parametrize("filters", FILTERS, ids=[str(f) or "all" for f in FILTERS])
def test_the_device_list_pages_through_exactly_the_matching_devices(fleets: dict[int, Built], filters: dict[str, Any]) -> None:
    built = fleets[300]
    expected = [_expected_device(d) for d in sorted(built.spec.devices, key=lambda d: d.name) if _matches(d, filters)]
    assert expected or filters.get("tag") == "rack=9"  # every filter but the last selects someone
    got, totals = _pages(built, 37, **filters)
    assert totals == {len(expected)}
    assert [_shown(d) for d in got] == expected
    one_page = _get(built, "/api/v1/devices", **filters)  # the default page holds them all
    assert [_shown(d) for d in one_page.json()] == expected


def test_paging_limits_are_enforced_and_an_offset_past_the_end_is_empty(fleets: dict[int, Built]) -> None:
    built = fleets[30]
    for bad in ({"limit": 0}, {"limit": 5001}, {"offset": -1}):
        r = built.client.get("/api/v1/devices", params=bad)
        assert r.status_code == 422, (bad, r.text)
    r = _get(built, "/api/v1/devices", offset=1000)
    assert r.json() == [] and r.headers["X-Total-Count"] == "30"
    assert built.client.get("/api/v1/devices", params={"fleet": "nowhere"}).status_code == 404
    assert built.client.get("/api/v1/devices", params={"tag": "site"}).status_code == 400


def test_the_database_and_python_agree_on_every_device_status(fleets: dict[int, Built]) -> None:
    for built in fleets.values():
        with built.state.db.session() as session:
            status = device_status_sql(dialect_of(session), NOW, built.state.config)
            for device, in_sql in session.execute(select(Device, status)):
                assert in_sql == device_status(device, NOW, built.state.config), device.name
    statuses = {_status(d) for d in fleets[30].spec.devices}
    assert statuses == {"online", "offline", "degraded", "never_seen"}


@pytest.mark.parametrize("n", [30, 300])
def test_the_overview_counts_sums_and_lists_what_the_fleet_holds(fleets: dict[int, Built], n: int) -> None:
    built = fleets[n]
    spec = built.spec
    ov = _get(built, "/api/v1/overview").json()
    statuses = [_status(d) for d in spec.devices]
    assert ov["devices"] == {"total": n, **{s: statuses.count(s) for s in ("online", "offline", "degraded", "never_seen")}}
    problems = [_expected_device(d) for d in sorted(spec.devices, key=lambda d: d.name) if _status(d) in ("degraded", "offline")]
    assert [_shown(d) for d in ov["problem_devices"]] == problems[:PROBLEM_DEVICES_SHOWN]
    if n == 300:
        assert len(problems) > PROBLEM_DEVICES_SHOWN  # the cap was exercised
        assert f"first {PROBLEM_DEVICES_SHOWN} degraded or offline" in " ".join((overview.__doc__ or "").split())
    expected_models = []
    for model in sorted({s[1] for s in spec.samples}):
        window = [s for s in spec.samples if s[1] == model and s[3] > NOW - PROBLEM_WINDOW_S]
        requests, errors = sum(s[4] for s in window), sum(s[5] for s in window)
        if requests and errors / requests > built.state.config.degraded_error_rate:
            expected_models.append({"name": model, "error_rate": errors / requests, "requests": requests,
                                    "p95_ms": max([0.0] + [s[6] for s in window if s[6] is not None]),
                                    "reason": f"error rate {errors / requests:.1%} over {requests} requests in the last 10 min"})
    assert ov["problem_models"] == expected_models and [m["name"] for m in expected_models] == ["classifier"]
    (active,) = ov["active_deployments"]
    targeted = [d.rollout for d in spec.devices if d.rollout is not None]
    assert active["counts"] == {s: targeted.count(s) for s in set(targeted)}
    assert (active["model"], active["version"], active["fleet"], active["wave"]) == ("detector", "2.0.0", "alpha", 0)
    (alert,) = ov["firing_alerts"]
    assert alert["rule"] == "classifier-errors" and alert["webhook"] == {
        "deliveries": 2, "delivered": 1, "attempts": 4, "gave_up": 0, "last_error": "connection refused"}
    assert (ov["fleets"], ov["models"], ov["versions"], ov["captures"]) == (2, 2, 3, 0)


@pytest.mark.parametrize("n", [30, 300])
def test_a_rollout_tick_sees_each_updated_devices_own_traffic_since_its_update(fleets: dict[int, Built], n: int) -> None:
    built = fleets[n]
    spec = built.spec
    package = PACKAGES[("detector", "2.0.0")]
    with built.state.db.session() as session:
        deployment = session.scalar(select(Deployment))
        views = device_views(session, deployment, NOW, built.state.config)
    targeted = [d for d in spec.devices if d.rollout is not None]
    assert [v.name for v in views] == [d.name for d in targeted]
    measured = 0
    for view, d in zip(views, targeted, strict=True):
        after = [s for s in spec.samples if s[0] == d.name and s[1] == "detector" and s[2] == package
                 and d.updated_at is not None and s[3] > d.updated_at] if d.rollout == "updated" else []
        p95s = [s[6] for s in after if s[6] is not None]
        assert (view.state, view.wave, view.updated_at) == (d.rollout, None if d.rollout == "pending" else 0, d.updated_at)
        assert view.online == (d.last_seen is not None and NOW - d.last_seen <= OFFLINE_AFTER_S), d.name
        assert (view.requests, view.errors, view.p95_ms) == (
            sum(s[4] for s in after), sum(s[5] for s in after), max(p95s) if p95s else None), d.name
        assert view.failure == ("checksum: mismatch" if d.rollout == "failed" else None)
        measured += bool(after)
    assert measured >= 1  # some device had traffic to sum (and the edge device at UPDATED_AT_EDGE had none)
    edge = next(v for v, d in zip(views, targeted) if d.updated_at == UPDATED_AT_EDGE)
    assert (edge.requests, edge.errors, edge.p95_ms) == (0, 0, None)


# --- the dashboard pages through a fleet larger than a page -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_dashboard_pages_through_devices_and_says_how_many_match(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        pytest.skip("no Chromium binary")
    from edgemill.fleet.db import open_database

    db_url = f"sqlite:///{tmp_path / 'edgemill.db'}"
    db = open_database(db_url)
    write_fleet(db, fleet_spec(520))  # more than the dashboard's page of 500
    db.engine.dispose()
    port = _free_port()
    key_file = tmp_path / "operator.key"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgemill", "server", "--db", db_url, "--store",
                             f"file://{tmp_path / 'store'}", "--listen", f"127.0.0.1:{port}", "--api-key-file",
                             str(key_file), "--tick-s", "60", "--log-format", "text"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200 and key_file.exists():
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"{url}/#devices&key={key_file.read_text().strip()}")
                rows = page.locator("main tbody tr")
                sync_api.expect(rows).to_have_count(500)
                assert page.locator(".pager-range").inner_text() == "Devices 1–500 of 520"
                assert page.locator("main tbody tr th").first.inner_text() == "dev-00000"
                assert page.locator("a[rel=prev]").count() == 0
                page.click("a[rel=next]")
                sync_api.expect(rows).to_have_count(20)
                assert page.locator(".pager-range").inner_text() == "Devices 501–520 of 520"
                assert page.locator("main tbody tr th").first.inner_text() == "dev-00500"
                assert page.locator("a[rel=next]").count() == 0
                page.click("a[rel=prev]")
                sync_api.expect(rows).to_have_count(500)
                page.click("a.chip.filter.never_seen")  # a filter starts again at its first page, and fits in one
                sync_api.expect(rows).to_have_count(65)
                assert page.locator(".pager").count() == 0
                # The overview lists the first problem devices and says how many there are in all.
                page.evaluate("location.hash = '#overview'")
                page.locator(".more").wait_for()
                assert page.locator(".more").inner_text().startswith(f"{PROBLEM_DEVICES_SHOWN} of ")
                assert not errors, errors
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
