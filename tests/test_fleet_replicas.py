"""Two control-plane replicas on one database and one store behave as one: what one accepts the other
serves, and background ticks running on both at once apply each rollout step and each alert once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402
from edgemill.fleet.reconciler import tick  # noqa: E402

from ._fleet import build_model_package, drop_postgres_database, fresh_postgres_database, postgres_url  # noqa: E402
from .test_fleet_api import DATABASES, Device, FakeClock  # noqa: E402


@pytest.fixture(params=DATABASES)
def replicas(request: pytest.FixtureRequest, tmp_path: Path, keypair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    clock = FakeClock()
    config = ServerConfig(db=db, store=f"file://{tmp_path / 'store'}", trusted_keys=(keypair[1],),
                          api_key_file=tmp_path / "operator.key")
    apps = [create_app(config, clock=clock, background=False) for _ in range(2)]
    key = (tmp_path / "operator.key").read_text().strip()
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        for client in (a, b):
            client.headers["Authorization"] = f"Bearer {key}"
        yield a, b, apps, clock
    for app in apps:
        app.state.edgemill.db.engine.dispose()
    if request.param == "postgresql":
        drop_postgres_database(db)


def test_two_replicas_share_everything_and_apply_each_step_once(replicas, keypair: tuple[Path, Path],  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    a, b, apps, clock = replicas
    package = build_model_package(tmp_path, "detector", "1.0.0", 16, keypair[0])
    assert a.post("/api/v1/models/detector/versions", content=package.read_bytes()).status_code == 201
    assert b.post("/api/v1/models/detector/versions", content=package.read_bytes()).status_code == 200  # same package
    assert b.post("/api/v1/fleets", json={"name": "cams"}).status_code == 201
    token = a.post("/api/v1/fleets/cams/registration-tokens", json={"uses": 4}).json()["token"]
    devices = []
    for i, client in enumerate((a, b, a, b)):
        r = client.post("/api/v1/agent/register", json={"token": token, "device": f"cam-{i}"})
        assert r.status_code == 201
        devices.append(Device(b if client is a else a, f"cam-{i}", {"Authorization": f"Bearer {r.json()['credential']}"}))
    assert a.post("/api/v1/agent/register", json={"token": token, "device": "cam-9"}).status_code == 401  # 4 uses spent
    for d in devices:
        d.heartbeat()
    deployment = b.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "cams",
                                                     "strategy": {"canary_percent": 25, "bake_time_s": 10,
                                                                  "gates": {"min_requests": 1}}}).json()
    for d in devices:
        d.apply(d.heartbeat())
        d.heartbeat()
    clock.advance(11)

    def both_tick() -> None:
        barrier = threading.Barrier(2)

        def run(app) -> None:  # type: ignore[no-untyped-def]
            barrier.wait()
            tick(app.state.edgemill)

        threads = [threading.Thread(target=run, args=(app,)) for app in apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    both_tick()  # both replicas decide "next wave" at once: it must start once
    detail = a.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert [e["kind"] for e in detail["events"]].count("wave_started") == 2, detail["events"]
    assert detail["counts"] == {"updated": 1, "assigned": 3}
    for d in devices:
        d.apply(d.heartbeat())
        d.heartbeat()
    clock.advance(11)
    both_tick()
    done = b.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert done["state"] == "succeeded" and [e["kind"] for e in done["events"]].count("succeeded") == 1
    # Alerts: a rule breached, evaluated by both replicas at once, fires once.
    assert a.post("/api/v1/alert-rules", json={"name": "traffic", "metric": "requests_per_min", "op": "<",
                                               "threshold": 1000, "window_s": 60}).status_code == 201
    both_tick()
    alerts = b.get("/api/v1/alerts").json()
    assert len(alerts) == 1 and alerts[0]["state"] == "firing"
