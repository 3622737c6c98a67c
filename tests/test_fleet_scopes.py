"""Operator keys limited to fleets, walked over every operation of /openapi.json: a key for `north` gets
403 on everything of `south` (devices, deployments, captures, tokens, alert rules), never a 403 on the
same thing of `north`, and sees only `north` in every list and aggregate. An operation missing from the
table below fails the walk, so a new endpoint gets a decision. SQLite always, PostgreSQL when CI has it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from edgemill.captures.record import CaptureRecord  # noqa: E402
from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402

from ._fleet import build_model_package, drop_postgres_database, fresh_postgres_database, postgres_url  # noqa: E402
from .test_fleet_roles import FakeClock, operator_operations  # noqa: E402

DATABASES = ["sqlite"] + (["postgresql"] if postgres_url() else [])

# Operations no fleet owns. SHARED: a limited key may (the registry, its own identity, scoped lists and
# aggregates, checked separately below). EVERY_FLEET: only a key for every fleet may (a limited admin must
# not mint itself a wider key or a new fleet, nor change what every fleet's devices share).
SHARED = {
    "GET /api/v1/models", "GET /api/v1/models/{name}", "GET /api/v1/models/{name}/versions/{version}",
    "GET /api/v1/models/{name}/versions/{version}/package", "GET /api/v1/models/{name}/versions/{version}/lineage",
    "POST /api/v1/models/{name}/versions", "GET /api/v1/whoami", "GET /api/v1/audit", "GET /api/v1/audit/folded",
    "GET /api/v1/overview", "GET /api/v1/alerts", "GET /api/v1/alert-rules", "GET /api/v1/fleets",
    "GET /api/v1/deployments",
}
EVERY_FLEET = {  # with a valid body, so that only the scope can refuse them
    "POST /api/v1/fleets": {"name": "east"}, "GET /api/v1/operator-keys": None,
    "POST /api/v1/operator-keys": {"name": "wider", "role": "admin"}, "DELETE /api/v1/operator-keys/{name}": None,
    "PATCH /api/v1/models/{name}/versions/{version}": {"stage": "production"},
    "PUT /api/v1/models/{name}/versions/{version}/drift-reference": {"last_s": 60},
    "DELETE /api/v1/models/{name}/versions/{version}/drift-reference": None,
}


def fleet_bound(fleet: str, world: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every fleet-owned operation, as a request on ``fleet``'s own things: path and request arguments."""
    device, capture, deployment = f"cam-{fleet}", f"c-{fleet}", world["deployments"][fleet]
    csv = f"device,capture_id,label\n{device},{capture},1\n"
    return {
        "GET /api/v1/fleets/{name}": (f"/api/v1/fleets/{fleet}", {}),
        "POST /api/v1/fleets/{name}/registration-tokens": (f"/api/v1/fleets/{fleet}/registration-tokens", {"json": {}}),
        "GET /api/v1/devices": ("/api/v1/devices", {"params": {"fleet": fleet}}),
        "GET /api/v1/devices/{name}": (f"/api/v1/devices/{device}", {}),
        "PATCH /api/v1/devices/{name}": (f"/api/v1/devices/{device}", {"json": {"tags": {"site": fleet}}}),
        "DELETE /api/v1/devices/{name}": (f"/api/v1/devices/{device}-spare", {}),
        "POST /api/v1/deployments": ("/api/v1/deployments", {"json": {
            "model": "detector", "version": "1.0.0", "fleet": fleet}}),
        "GET /api/v1/deployments/{deployment_id}": (f"/api/v1/deployments/{deployment}", {}),
        "POST /api/v1/deployments/{deployment_id}/pause": (f"/api/v1/deployments/{deployment}/pause", {}),
        "POST /api/v1/deployments/{deployment_id}/resume": (f"/api/v1/deployments/{deployment}/resume", {}),
        "POST /api/v1/deployments/{deployment_id}/rollback": (f"/api/v1/deployments/{deployment}/rollback", {}),
        "GET /api/v1/captures": ("/api/v1/captures", {"params": {"device": device}}),
        "GET /api/v1/captures/{device}/{capture_id}": (f"/api/v1/captures/{device}/{capture}", {}),
        "GET /api/v1/captures/{device}/{capture_id}/view": (f"/api/v1/captures/{device}/{capture}/view", {}),
        "PUT /api/v1/captures/{device}/{capture_id}/label": (f"/api/v1/captures/{device}/{capture}/label",
                                                             {"json": {"label": 1}}),
        "DELETE /api/v1/captures/{device}/{capture_id}/label": (f"/api/v1/captures/{device}/{capture}/label", {}),
        "POST /api/v1/captures/labels": ("/api/v1/captures/labels", {
            "content": csv.encode(), "headers": {"Content-Type": "text/csv"}}),
        "POST /api/v1/alert-rules": ("/api/v1/alert-rules", {"json": {
            "name": f"{fleet}-slow", "metric": "p95_latency_ms", "threshold": 50, "fleet": fleet}}),
        "DELETE /api/v1/alert-rules/{name}": (f"/api/v1/alert-rules/{fleet}-errors", {}),
        "GET /api/v1/metrics/series": ("/api/v1/metrics/series", {"params": {"device": device}}),
        "GET /api/v1/drift": ("/api/v1/drift", {"params": {"model": "detector", "fleet": fleet}}),
        "GET /api/v1/accuracy": ("/api/v1/accuracy", {"params": {"model": "detector", "device": device}}),
    }


def send(client: TestClient, operation: str, path: str, kwargs: dict[str, Any], auth: dict[str, str]) -> Any:
    extra = dict(kwargs)
    headers = {**auth, **extra.pop("headers", {})}
    return client.request(operation.split()[0], path, headers=headers, **extra)


@pytest.fixture(params=DATABASES)
def world(request: pytest.FixtureRequest, tmp_path: Path, keypair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    """Fleets north and south, each with a device (cam-F, plus cam-F-spare to delete), a deployment of
    detector 1.0.0, a labeled capture, an error-rate alert rule and a metric sample; keys limited to north."""
    db = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    clock = FakeClock()
    config = ServerConfig(db=db, store=f"file://{tmp_path / 'store'}", trusted_keys=(keypair[1],),
                          api_key_file=tmp_path / "operator.key", max_upload_mb=2)
    app = create_app(config, clock=clock, background=False)
    package = build_model_package(tmp_path, "detector", "1.0.0", 8, keypair[0])
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
        assert client.post("/api/v1/models/detector/versions", content=package.read_bytes(),
                           headers={"Content-Type": "application/octet-stream"}).status_code == 201
        world: dict[str, Any] = {"client": client, "deployments": {}, "keys": {}}
        for fleet in ("north", "south"):
            assert client.post("/api/v1/fleets", json={"name": fleet}).status_code == 201
            for device in (f"cam-{fleet}", f"cam-{fleet}-spare"):
                token = client.post(f"/api/v1/fleets/{fleet}/registration-tokens", json={}).json()["token"]
                r = client.post("/api/v1/agent/register", json={"token": token, "device": device},
                                headers={"Authorization": ""})
                assert r.status_code == 201, r.text
                world[device] = {"Authorization": f"Bearer {r.json()['credential']}"}
            device_auth = world[f"cam-{fleet}"]
            heartbeat = {"device": f"cam-{fleet}", "seq": 1, "models": [], "failures": [], "metrics": {
                "detector": {"requests": 10, "errors": 5, "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}}}}
            assert client.post("/api/v1/agent/heartbeat", json=heartbeat, headers=device_auth).status_code == 200
            record = CaptureRecord(capture_id=f"c-{fleet}", model="detector", model_version="1.0.0",
                                   device=f"cam-{fleet}", created_unix=clock.now,
                                   inputs={"x": np.ones((1, 8), np.float32)},
                                   outputs={"logits": np.array([[0.1, 0.9]], np.float32)}, auxiliary={}, sampled=False)
            assert client.put(f"/api/v1/agent/captures/c-{fleet}", params={"model": "detector"},
                              content=record.encode(), headers=device_auth).status_code == 201
            r = client.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": fleet})
            assert r.status_code == 201, r.text
            world["deployments"][fleet] = r.json()["id"]
            assert client.post("/api/v1/alert-rules", json={"name": f"{fleet}-errors", "metric": "error_rate",
                                                             "threshold": 0.1, "fleet": fleet}).status_code == 201
        for role in ("viewer", "deployer", "admin"):
            r = client.post("/api/v1/operator-keys", json={"name": f"north-{role}", "role": role, "fleets": ["north"]})
            assert r.status_code == 201, r.text
            assert r.json()["fleets"] == ["north"]
            world["keys"][role] = {"Authorization": f"Bearer {r.json()['key']}"}
        yield world
    app.state.edgemill.db.engine.dispose()
    if request.param == "postgresql":
        drop_postgres_database(db)


def test_a_fleet_key_is_refused_everything_of_another_fleet_and_nothing_of_its_own(world: dict[str, Any]) -> None:
    client, north_admin = world["client"], world["keys"]["admin"]
    operations = {f"{m} {p}" for m, p in operator_operations(client) if p.startswith("/api/v1/")}
    south, north = fleet_bound("south", world), fleet_bound("north", world)
    unclassified = operations - SHARED - set(EVERY_FLEET) - set(south)
    assert not unclassified, f"decide whether a fleet owns these: {sorted(unclassified)}"
    for operation, (path, kwargs) in south.items():  # the limited admin has every role: only the fleet refuses
        r = send(client, operation, path, kwargs, north_admin)
        assert r.status_code == 403, (operation, r.status_code, r.text)
        assert "limited to fleet(s) north" in r.json()["message"], r.text
    for operation, (path, kwargs) in north.items():
        r = send(client, operation, path, kwargs, north_admin)
        assert r.status_code not in (401, 403) and r.status_code < 500, (operation, r.status_code, r.text)
    for operation, body in EVERY_FLEET.items():
        method, template = operation.split()
        path = template.replace("{name}", "north-viewer" if "operator-keys" in template else "detector")
        r = client.request(method, path.replace("{version}", "1.0.0"), headers=north_admin, json=body)
        assert r.status_code == 403 and "needs a key for every fleet" in r.json()["message"], (operation, r.text)


def test_nothing_of_another_fleet_changed(world: dict[str, Any]) -> None:
    """The refusals came before any change: south's deployment rolls, its device keeps its tags, its
    capture keeps its label, its rule stays."""
    client = world["client"]
    for operation, (path, kwargs) in fleet_bound("south", world).items():
        send(client, operation, path, kwargs, world["keys"]["admin"])
    assert client.get(f"/api/v1/deployments/{world['deployments']['south']}").json()["state"] == "rolling"
    assert client.get("/api/v1/devices/cam-south").json()["tags"] == {}
    assert client.get("/api/v1/devices/cam-south-spare").status_code == 200
    assert [c["label"] for c in client.get("/api/v1/captures", params={"device": "cam-south"}).json()] == [None]
    assert "south-errors" in {r["name"] for r in client.get("/api/v1/alert-rules").json()}
    assert len(client.get("/api/v1/deployments").json()) == 2  # no deployment was added to south


def test_every_list_and_aggregate_shows_only_the_keys_fleets(world: dict[str, Any]) -> None:
    client, viewer = world["client"], world["keys"]["viewer"]

    def get(path: str, **params: Any) -> Any:
        r = client.get(path, headers=viewer, params=params)
        assert r.status_code == 200, (path, r.text)
        return r

    assert [f["name"] for f in get("/api/v1/fleets").json()] == ["north"]
    assert [d["name"] for d in get("/api/v1/devices").json()] == ["cam-north", "cam-north-spare"]
    assert get("/api/v1/devices").headers["X-Total-Count"] == "2"
    assert {d["fleet"] for d in get("/api/v1/deployments").json()} == {"north"}
    assert [c["device"] for c in get("/api/v1/captures").json()] == ["cam-north"]
    assert [r["name"] for r in get("/api/v1/alert-rules").json()] == ["north-errors"]
    overview = get("/api/v1/overview").json()
    assert overview["devices"]["total"] == 2 and overview["fleets"] == 1 and overview["captures"] == 1
    assert {d["fleet"] for d in overview["active_deployments"]} == {"north"}
    assert {d["name"] for d in overview["problem_devices"]} <= {"cam-north", "cam-north-spare"}
    series = get("/api/v1/metrics/series").json()
    assert sum(p["requests"] for s in series for p in s["points"]) == 10  # north's heartbeat alone (south: 20 in all)
    lineage = get("/api/v1/models/detector/versions/1.0.0/lineage").json()
    assert [d["fleet"] for d in lineage["deployments"]] == ["north"]
    assert get("/api/v1/drift", model="detector").json()["fleet"] == "north"  # a key for one fleet: that fleet
    # The unlimited key still sees both.
    assert len(client.get("/api/v1/fleets").json()) == 2 and len(client.get("/api/v1/captures").json()) == 2
    assert client.get("/api/v1/whoami", headers=viewer).json()["fleets"] == ["north"]


def test_a_fleet_key_reads_its_fleets_audit_trail_and_its_own_events(world: dict[str, Any]) -> None:
    client, deployer = world["client"], world["keys"]["deployer"]
    north_deployment = world["deployments"]["north"]
    assert client.post(f"/api/v1/deployments/{north_deployment}/pause", headers=deployer).status_code == 200
    assert client.post(f"/api/v1/deployments/{world['deployments']['south']}/pause", headers=deployer).status_code == 403
    assert client.post(f"/api/v1/deployments/{world['deployments']['south']}/pause").status_code == 200  # by the admin
    seen = client.get("/api/v1/audit", headers=deployer, params={"limit": 1000}).json()
    assert all(e["fleet"] == "north" or e["key"] == "north-deployer" for e in seen), seen
    assert any(e["key"] == "admin" and e["fleet"] == "north" for e in seen)  # the admin's setup of north
    refused = [e for e in seen if e["outcome"] == "refused"]
    assert [(e["fleet"], e["path"]) for e in refused] == [
        ("south", f"/api/v1/deployments/{world['deployments']['south']}/pause")]  # its own refusal, with the fleet
    everything = client.get("/api/v1/audit", params={"limit": 1000, "fleet": "south"}).json()
    assert everything and all(e["fleet"] == "south" for e in everything)


def test_limited_keys_are_checked_when_made(world: dict[str, Any]) -> None:
    client = world["client"]
    r = client.post("/api/v1/operator-keys", json={"name": "ghost", "role": "viewer", "fleets": ["nowhere"]})
    assert r.status_code == 404 and "nowhere" in r.text
    r = client.post("/api/v1/operator-keys", json={"name": "empty", "role": "viewer", "fleets": []})
    assert r.status_code == 422
    listed = {k["name"]: k["fleets"] for k in client.get("/api/v1/operator-keys").json()}
    assert listed["north-admin"] == ["north"] and listed["admin"] is None
    both = client.post("/api/v1/operator-keys", json={"name": "both", "role": "viewer", "fleets": ["south", "north"]})
    assert both.json()["fleets"] == ["north", "south"]
    auth = {"Authorization": f"Bearer {both.json()['key']}"}
    drift = client.get("/api/v1/drift", params={"model": "detector"}, headers=auth)
    assert drift.status_code == 200 and drift.json()["fleet"] is None  # over both fleets' devices
    assert len(client.get("/api/v1/devices", headers=auth).json()) == 4
    # The last admin for every fleet stays: a limited admin does not count.
    assert client.delete("/api/v1/operator-keys/admin").status_code == 409
