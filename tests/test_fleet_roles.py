"""Operator roles and the audit trail, walked over every operation of /openapi.json: a new endpoint that
forgets its role or its audit event fails here. SQLite always, PostgreSQL too when CI offers it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402

from ._fleet import drop_postgres_database, fresh_postgres_database, postgres_url  # noqa: E402

ROLES = ("viewer", "deployer", "admin")
DATABASES = ["sqlite"] + (["postgresql"] if postgres_url() else [])
# What each operation needs. Reads: viewer. Everything else is listed: an operation missing here fails
# test_every_operation_has_a_declared_role, so a new endpoint gets a decision, not a default.
DEPLOYER = {
    "POST /api/v1/models/{name}/versions", "PATCH /api/v1/models/{name}/versions/{version}",
    "POST /api/v1/deployments", "POST /api/v1/deployments/{deployment_id}/pause",
    "POST /api/v1/deployments/{deployment_id}/resume", "POST /api/v1/deployments/{deployment_id}/rollback",
    "PUT /api/v1/captures/{device}/{capture_id}/label", "DELETE /api/v1/captures/{device}/{capture_id}/label",
    "POST /api/v1/captures/labels", "PUT /api/v1/models/{name}/versions/{version}/drift-reference",
    "DELETE /api/v1/models/{name}/versions/{version}/drift-reference",
}
ADMIN = {
    "POST /api/v1/fleets", "POST /api/v1/fleets/{name}/registration-tokens", "PATCH /api/v1/devices/{name}",
    "DELETE /api/v1/devices/{name}", "POST /api/v1/alert-rules", "DELETE /api/v1/alert-rules/{name}",
    "GET /api/v1/operator-keys", "POST /api/v1/operator-keys", "DELETE /api/v1/operator-keys/{name}",
}
UNAUTHENTICATED = {"GET /healthz", "GET /metrics"}  # probes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=DATABASES)
def server(request: pytest.FixtureRequest, tmp_path: Path, keypair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    config = ServerConfig(db=db, store=f"file://{tmp_path / 'store'}", trusted_keys=(keypair[1],),
                          api_key_file=tmp_path / "operator.key", max_upload_mb=1)
    app = create_app(config, clock=FakeClock(), background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
        client.clock = app.state.edgemill.clock  # type: ignore[attr-defined]
        yield client
    app.state.edgemill.db.engine.dispose()
    if request.param == "postgresql":
        drop_postgres_database(db)


def operator_operations(client: TestClient) -> list[tuple[str, str]]:
    """(METHOD, path template) of every operator operation in the OpenAPI document."""
    spec = client.get("/openapi.json").json()
    out = []
    for path, item in spec["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "patch", "delete") and not path.startswith("/api/v1/agent/"):
                out.append((method.upper(), path))
    return sorted(out)


def required_role(method: str, path: str) -> str | None:
    operation = f"{method} {path}"
    if operation in UNAUTHENTICATED or not path.startswith("/api/v1/"):
        return None
    if operation in ADMIN:
        return "admin"
    if operation in DEPLOYER:
        return "deployer"
    assert method == "GET", f"{operation} changes state but has no declared role in this test: decide one"
    return "viewer"


def concrete(path: str) -> str:
    """A path with placeholder values (they need not exist: a refusal comes before any lookup)."""
    return re.sub(r"\{([^}]+)\}", lambda m: "1" if m.group(1).endswith("_id") else "nothing-here", path)


def call(client: TestClient, method: str, path: str, key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {"Authorization": ""}
    body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return client.request(method, concrete(path), headers=headers, **body)


def keys_by_role(client: TestClient) -> dict[str, str]:
    keys = {}
    for role in ROLES:
        r = client.post("/api/v1/operator-keys", json={"name": f"k-{role}", "role": role})
        assert r.status_code == 201, r.text
        assert r.json()["key"].startswith("emk_") and r.json()["role"] == role
        keys[role] = r.json()["key"]
    return keys


def test_every_operation_is_allowed_exactly_to_its_roles(server: TestClient) -> None:
    keys = keys_by_role(server)
    operations = operator_operations(server)
    assert len(operations) > 40
    spec = server.get("/openapi.json").json()
    for method, path in operations:
        needed = required_role(method, path)
        assert spec["paths"][path][method.lower()].get("x-required-role") == needed, (method, path)  # documented
        for role, key in keys.items():
            r = call(server, method, path, key)
            assert r.status_code < 500, (method, path, role, r.text)
            if needed is not None and ROLES.index(role) < ROLES.index(needed):
                assert r.status_code == 403, (method, path, role, r.status_code, r.text)
                assert f"needs {needed}" in r.json()["message"], r.text
            else:
                assert r.status_code not in (401, 403), (method, path, role, r.status_code, r.text)
        if needed is not None:
            assert call(server, method, path, None).status_code == 401, (method, path)


def test_every_state_changing_operation_appends_exactly_one_audit_event(server: TestClient) -> None:
    keys = keys_by_role(server)
    changing = [(m, p) for m, p in operator_operations(server) if m != "GET"]
    assert len(changing) >= 19
    for method, path in changing:
        before = int(server.get("/api/v1/audit", params={"limit": 1}).headers["X-Total-Count"])
        r = call(server, method, path, keys["deployer"])
        events = server.get("/api/v1/audit", params={"limit": 5}).json()
        total = int(server.get("/api/v1/audit", params={"limit": 1}).headers["X-Total-Count"])
        assert total == before + 1, (method, path)
        event = events[0]
        assert event["operation"] == f"{method} {path}" and event["key"] == "k-deployer", event
        assert event["role"] == "deployer" and event["status"] == r.status_code
        assert event["outcome"] == ("refused" if r.status_code in (401, 403) else
                                    "ok" if r.status_code < 400 else "rejected"), event
    # Reads leave no trace.
    before = int(server.get("/api/v1/audit", params={"limit": 1}).headers["X-Total-Count"])
    for method, path in operator_operations(server):
        if method == "GET":
            call(server, method, path, keys["viewer"])
    assert int(server.get("/api/v1/audit", params={"limit": 1}).headers["X-Total-Count"]) == before


def test_a_revoked_or_expired_key_is_refused_on_its_next_request(server: TestClient) -> None:
    created = server.post("/api/v1/operator-keys", json={"name": "ci", "role": "deployer", "expires_in_s": 3600}).json()
    ci = {"Authorization": f"Bearer {created['key']}"}
    assert server.get("/api/v1/whoami", headers=ci).json()["role"] == "deployer"
    server.clock.now += 3601  # type: ignore[attr-defined]
    r = server.get("/api/v1/models", headers=ci)
    assert r.status_code == 401 and "expired" in r.json()["message"]

    other = server.post("/api/v1/operator-keys", json={"name": "watcher", "role": "viewer"}).json()
    watcher = {"Authorization": f"Bearer {other['key']}"}
    assert server.get("/api/v1/models", headers=watcher).status_code == 200
    assert server.delete("/api/v1/operator-keys/watcher").status_code == 204
    r = server.get("/api/v1/models", headers=watcher)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    listed = {k["name"]: k for k in server.get("/api/v1/operator-keys").json()}
    assert listed["watcher"]["active"] is False and listed["watcher"]["revoked_at"]
    assert listed["ci"]["active"] is False and listed["admin"]["role"] == "admin"
    assert all("key" not in k for k in listed.values())  # secrets are shown once, at creation


def test_the_last_admin_key_cannot_be_revoked_and_names_are_never_reused(server: TestClient) -> None:
    r = server.delete("/api/v1/operator-keys/admin")
    assert r.status_code == 409 and "last active admin" in r.json()["message"]
    second = server.post("/api/v1/operator-keys", json={"name": "second", "role": "admin"}).json()["key"]
    assert server.delete("/api/v1/operator-keys/admin").status_code == 204  # revokes the key making the call
    assert server.get("/api/v1/whoami").status_code == 401
    server.headers["Authorization"] = f"Bearer {second}"
    r = server.post("/api/v1/operator-keys", json={"name": "admin", "role": "viewer"})
    assert r.status_code == 409
    r = server.post("/api/v1/operator-keys", json={"name": "x", "role": "root"})
    assert r.status_code == 422


def test_a_device_credential_is_never_an_operator(server: TestClient) -> None:
    assert server.post("/api/v1/fleets", json={"name": "cams"}).status_code == 201
    token = server.post("/api/v1/fleets/cams/registration-tokens", json={}).json()["token"]
    credential = server.post("/api/v1/agent/register", json={"token": token, "device": "cam-0"},
                             headers={"Authorization": ""}).json()["credential"]
    r = server.get("/api/v1/devices", headers={"Authorization": f"Bearer {credential}"})
    assert r.status_code == 401
    r = server.post("/api/v1/operator-keys", json={"name": "evil", "role": "admin"},
                    headers={"Authorization": f"Bearer {credential}"})
    assert r.status_code == 401


@pytest.mark.slow
def test_operator_keys_and_the_audit_trail_from_the_cli(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    from .conftest import run_cli
    from ._fleet import ServerProcess, build_model_package

    package = build_model_package(tmp_path, "detector", "1.0.0", 16, keypair[0])
    with ServerProcess(tmp_path / "server", keypair[1]) as server:
        admin = ["--server", server.url, "--api-key", server.api_key]
        made = run_cli("keys", "operator", "create", "ci", "--role", "deployer", "--expires", "30d", *admin)
        assert made.code == 0, made.err
        secret = made.out.splitlines()[1]
        assert secret.startswith("emk_") and "shown this once" in made.out
        ci = ["--server", server.url, "--api-key", secret]
        assert run_cli("push", package, *ci).code == 0
        refused = run_cli("fleet", "create", "cams", *ci)
        assert refused.code == 1 and "'ci' is a deployer; this needs admin" in refused.err
        assert "--role admin" in refused.err and "Traceback" not in refused.err
        listed = run_cli("keys", "operator", "list", *admin)
        assert "ci" in listed.out and "deployer" in listed.out and "active" in listed.out
        assert run_cli("keys", "operator", "revoke", "ci", *admin).code == 0
        after = run_cli("push", package, *ci)
        assert after.code == 1 and "revoked" in after.err
        trail = run_cli("audit", *admin)
        lines = trail.out.splitlines()
        assert lines[0].startswith("WHEN")
        ops = [line.split()[-2:] for line in lines[1:]]
        assert ["DELETE", "/api/v1/operator-keys/ci"] in ops and ["POST", "/api/v1/models/detector/versions"] in ops
        assert any(" ci " in line and " refused " in line and "/api/v1/fleets" in line for line in lines), trail.out
        folded = run_cli("audit", "--folded", *admin)  # nothing past a retention period the server does not have
        assert folded.code == 0 and folded.out.splitlines() == [folded.out.splitlines()[0]] and "DAY" in folded.out
        bad = run_cli("keys", "operator", "create", "x", "--role", "viewer", "--expires", "soon", *admin)
        assert bad.code == 2 and "'soon'" in bad.err

        # A key limited to one fleet: made, listed with its fleet, refused another fleet, in the trail.
        for fleet in ("north", "south"):
            assert run_cli("fleet", "create", fleet, *admin).code == 0
        made = run_cli("keys", "operator", "create", "north-ops", "--role", "admin", "--fleet", "north", *admin)
        assert made.code == 0 and "fleets north" in made.out, made.err
        north = ["--server", server.url, "--api-key", made.out.splitlines()[1]]
        assert run_cli("fleet", "token", "north", *north).code == 0
        refused = run_cli("fleet", "token", "south", *north)
        assert refused.code == 1 and "limited to fleet(s) north" in refused.err and "Traceback" not in refused.err
        wider = run_cli("keys", "operator", "create", "wider", "--role", "admin", *north)
        assert wider.code == 1 and "needs a key for every fleet" in wider.err
        listed = run_cli("keys", "operator", "list", *admin).out.splitlines()
        assert listed[0].split()[-1] == "FLEETS" and next(r for r in listed if r.startswith("north-ops")).endswith("north")
        trail = run_cli("audit", "--fleet", "south", *admin).out.splitlines()
        assert any(" north-ops " in line and " refused " in line and " south " in line for line in trail), trail
        unknown = run_cli("keys", "operator", "create", "ghost", "--role", "viewer", "--fleet", "nowhere", *admin)
        assert unknown.code == 1 and "'nowhere'" in unknown.err


def test_the_audit_trail_filters_by_key_path_and_outcome(server: TestClient) -> None:
    assert server.post("/api/v1/fleets", json={"name": "cams"}).status_code == 201
    keys = keys_by_role(server)
    viewer = {"Authorization": f"Bearer {keys['viewer']}"}
    assert server.post("/api/v1/deployments/7/rollback", headers=viewer).status_code == 403
    assert server.post("/api/v1/deployments/7/pause").status_code == 404
    assert server.post("/api/v1/deployments/70/pause").status_code == 404
    seven = server.get("/api/v1/audit", params={"path": "/api/v1/deployments/7"}).json()
    assert [(e["key"], e["outcome"], e["path"]) for e in seven] == [
        ("admin", "rejected", "/api/v1/deployments/7/pause"), ("k-viewer", "refused", "/api/v1/deployments/7/rollback")]
    refused = server.get("/api/v1/audit", params={"outcome": "refused"}).json()
    assert [e["key"] for e in refused] == ["k-viewer"]
    page = server.get("/api/v1/audit", params={"key": "admin", "limit": 2})
    assert int(page.headers["X-Total-Count"]) >= 5 and len(page.json()) == 2
    older = server.get("/api/v1/audit", params={"key": "admin", "limit": 2, "before_id": page.json()[-1]["id"]}).json()
    assert older and all(e["id"] < page.json()[-1]["id"] for e in older)


@pytest.mark.parametrize("database", DATABASES)
def test_audit_events_past_the_retention_period_are_folded_into_counts_not_dropped(
        database: str, tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    from edgemill.fleet.audit_retention import fold_audit

    clock = FakeClock()
    db = f"sqlite:///{tmp_path / 'db.sqlite'}" if database == "sqlite" else fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    config = ServerConfig(db=db, store=f"file://{tmp_path / 'store'}",
                          trusted_keys=(keypair[1],), api_key_file=tmp_path / "operator.key", audit_retention_s=86400)
    app = create_app(config, clock=clock, background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
        assert client.post("/api/v1/fleets", json={"name": "cams"}).status_code == 201
        assert client.post("/api/v1/fleets", json={"name": "cams"}).status_code == 409
        assert client.post("/api/v1/fleets/cams/registration-tokens", json={}).status_code == 201
        clock.now += 3 * 86400  # two whole days past the retention period
        assert client.post("/api/v1/fleets", json={"name": "lab"}).status_code == 201  # recent: kept
        state = app.state.edgemill
        assert fold_audit(state.db, clock.now, config) == 3
        assert fold_audit(state.db, clock.now, config) == 0  # folded once, whatever runs it again
        page = client.get("/api/v1/audit")
        assert [e["path"] for e in page.json()] == ["/api/v1/fleets"] and page.headers["X-Folded-Count"] == "3"
        folded = client.get("/api/v1/audit/folded").json()
        assert sum(f["events"] for f in folded) == 3
        by = {(f["operation"], f["outcome"]): f["events"] for f in folded}
        assert by == {("POST /api/v1/fleets", "ok"): 1, ("POST /api/v1/fleets", "rejected"): 1,
                      ("POST /api/v1/fleets/{name}/registration-tokens", "ok"): 1}
        assert all(f["key"] == "admin" for f in folded)
    app.state.edgemill.db.engine.dispose()
    if database == "postgresql":
        drop_postgres_database(db)
