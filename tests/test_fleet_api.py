"""The control plane's REST API in process (FastAPI TestClient) on a real database: SQLite always,
PostgreSQL too when EDGEMILL_TEST_POSTGRES_URL names a server (CI starts one). Time is a fake clock,
so bake times and windows pass instantly; the background tick is driven by hand."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from edgemill.captures.record import CaptureRecord  # noqa: E402
from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402
from edgemill.fleet.reconciler import tick  # noqa: E402
from edgemill.package import sign_package  # noqa: E402

from ._fleet import build_model_package, drop_postgres_database, fresh_postgres_database, postgres_url, tampered_copy  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def fleet_packages(keypair: tuple[Path, Path], other_keypair: tuple[Path, Path],
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fleet-packages")
    v1 = build_model_package(out, "detector", "1.0.0", 64, keypair[0])
    v2 = build_model_package(out, "detector", "2.0.0", 32, keypair[0])
    (out / "alt").mkdir()
    other = build_model_package(out / "alt", "detector", "1.0.0", 64, keypair[0], seed=7)
    unsigned = out / "unsigned.emp"
    shutil.copy(v1, unsigned)
    import tarfile

    with tarfile.open(v1) as tar:  # rebuild without the signature
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and not m.name.startswith("signature/")}  # type: ignore[union-attr]
    from edgemill.package import write_package

    write_package(files, unsigned)
    foreign = out / "foreign.emp"
    shutil.copy(v1, foreign)
    sign_package(foreign, other_keypair[0])
    return {"v1": v1, "v2": v2, "v1_different": other, "unsigned": unsigned, "foreign": foreign,
            "tampered": tampered_copy(v1, out / "tampered.emp")}


DATABASES = ["sqlite"] + (["postgresql"] if postgres_url() else [])


@pytest.fixture(params=DATABASES)
def server(request: pytest.FixtureRequest, tmp_path: Path, keypair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    clock = FakeClock()
    config = ServerConfig(db=db, store=f"file://{tmp_path / 'store'}", trusted_keys=(keypair[1],),
                          api_key_file=tmp_path / "operator.key", offline_after_s=90, max_upload_mb=1,
                          max_capture_mb=1, long_poll_max_s=2, long_poll_check_s=0.05)
    app = create_app(config, clock=clock, background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
        client.clock = clock  # type: ignore[attr-defined]
        client.state = app.state.edgemill  # type: ignore[attr-defined]
        client.store_root = tmp_path / "store"  # type: ignore[attr-defined]
        yield client
    app.state.edgemill.db.engine.dispose()
    if request.param == "postgresql":
        drop_postgres_database(db)


def upload(client: TestClient, package: Path, name: str = "detector"):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{name}/versions", content=package.read_bytes(),
                       headers={"Content-Type": "application/octet-stream"})


def register(client: TestClient, fleet: str, device: str, tags: dict[str, str] | None = None) -> dict[str, str]:
    if client.get(f"/api/v1/fleets/{fleet}").status_code == 404:
        assert client.post("/api/v1/fleets", json={"name": fleet}).status_code == 201
    token = client.post(f"/api/v1/fleets/{fleet}/registration-tokens", json={}).json()["token"]
    r = client.post("/api/v1/agent/register", json={"token": token, "device": device, "tags": tags or {}},
                    headers={"Authorization": ""})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['credential']}"}


class Device:
    """A scripted agent: sends heartbeats as the real one does, reports what it runs."""

    def __init__(self, client: TestClient, name: str, headers: dict[str, str]) -> None:
        self.client, self.name, self.headers = client, name, headers
        self.seq = 0
        self.models: dict[str, dict[str, str]] = {}
        self.requests = self.errors = 0
        self.failures: list[dict[str, str]] = []

    def heartbeat(self, p95: float = 2.0):  # type: ignore[no-untyped-def]
        self.seq += 1
        metrics = {m: {"requests": self.requests, "errors": self.errors, "latency_ms": {"p50": 1.0, "p95": p95, "p99": p95}}
                   for m in self.models}
        r = self.client.post("/api/v1/agent/heartbeat", headers=self.headers, json={
            "device": self.name, "seq": self.seq, "models": list(self.models.values()), "metrics": metrics,
            "failures": self.failures})
        assert r.status_code == 200, r.text
        return r.json()

    def apply(self, desired: dict) -> None:  # type: ignore[type-arg]
        """Run what the server asks (downloading it, as the agent would)."""
        self.models = {}
        for m in desired["models"]:
            r = self.client.get(m["download_path"], headers=self.headers)
            assert r.status_code == 200, r.text
            assert len(r.content) == m["size_bytes"]
            self.models[m["name"]] = {"name": m["name"], "version": m["version"], "package_id": m["package_id"]}


# --- registry ----------------------------------------------------------------------------------


def test_a_signed_package_is_registered_once_with_its_lineage(server: TestClient, fleet_packages: dict[str, Path]) -> None:
    r = upload(server, fleet_packages["v1"])
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["model"], v["version"], v["stage"]) == ("detector", "1.0.0", "none")
    assert v["signer"] and v["inputs"][0]["shape"] == [1, 64]
    again = upload(server, fleet_packages["v1"])
    assert again.status_code == 200 and again.json()["package_id"] == v["package_id"]
    conflict = upload(server, fleet_packages["v1_different"])
    assert conflict.status_code == 409 and conflict.json()["field"] == "version"
    lineage = server.get("/api/v1/models/detector/versions/1.0.0/lineage").json()
    assert lineage["source"]["sha256"] and lineage["package"]["id"] == v["package_id"]
    assert lineage["compile"]["target"] and lineage["deployments"] == [] and lineage["devices"] == []
    staged = server.patch("/api/v1/models/detector/versions/1.0.0", json={"stage": "production"})
    assert staged.json()["stage"] == "production"
    assert server.get("/api/v1/models").json()[0]["production_version"] == "1.0.0"
    download = server.get("/api/v1/models/detector/versions/1.0.0/package")
    assert download.content == fleet_packages["v1"].read_bytes()


@pytest.mark.parametrize("which, reason", [("unsigned", "not_signed"), ("foreign", "untrusted_key"),
                                           ("tampered", "file_modified")])
def test_unsigned_foreign_and_tampered_packages_are_refused_and_nothing_is_stored(
        server: TestClient, fleet_packages: dict[str, Path], which: str, reason: str) -> None:
    r = upload(server, fleet_packages[which])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["reason"] == reason and body["fix"]
    assert server.get("/api/v1/models").json() == []
    assert not list((server.store_root).rglob("*.emp"))  # type: ignore[attr-defined]


def test_upload_errors_name_the_field(server: TestClient, fleet_packages: dict[str, Path]) -> None:
    wrong = upload(server, fleet_packages["v1"], name="other-model")
    assert wrong.status_code == 400 and "detector" in wrong.json()["message"]
    empty = server.post("/api/v1/models/detector/versions", content=b"")
    assert empty.status_code == 400 and empty.json()["field"] == "body"
    garbage = server.post("/api/v1/models/detector/versions", content=b"not a package")
    assert garbage.status_code == 422 and garbage.json()["reason"] == "corrupt_package"
    huge = server.post("/api/v1/models/detector/versions", content=b"x" * (1024 * 1024 + 1))
    assert huge.status_code == 413 and "max-upload-mb" in huge.json()["fix"]
    assert server.get("/api/v1/models/nope").status_code == 404
    missing = server.get("/api/v1/models/detector/versions/9.9.9")
    assert missing.status_code == 404
    bad_stage = server.patch("/api/v1/models/detector/versions/1.0.0", json={"stage": "live"})
    assert bad_stage.status_code == 422 and bad_stage.json()["field"] == "stage"


# --- auth ---------------------------------------------------------------------------------------


def test_operator_and_device_credentials_reach_only_their_own_endpoints(server: TestClient) -> None:
    device = register(server, "cams", "cam-1")
    other = register(server, "cams", "cam-2")
    assert server.get("/api/v1/devices", headers={"Authorization": ""}).status_code == 401
    assert server.get("/api/v1/devices", headers=device).status_code == 401  # a device is not an operator
    r = server.post("/api/v1/agent/heartbeat", headers={"Authorization": "Bearer " + server.headers["Authorization"][7:]},
                    json={"device": "cam-1", "seq": 1})
    assert r.status_code == 401  # an operator key is not a device credential
    spoof = server.post("/api/v1/agent/heartbeat", headers=other, json={"device": "cam-1", "seq": 1})
    assert spoof.status_code == 403 and spoof.json()["field"] == "device"
    assert server.post("/api/v1/agent/heartbeat", headers=device, json={"device": "cam-1", "seq": 1}).status_code == 200
    assert server.delete("/api/v1/devices/cam-1").status_code == 204
    gone = server.post("/api/v1/agent/heartbeat", headers=device, json={"device": "cam-1", "seq": 2})
    assert gone.status_code == 401


def test_registration_tokens_are_one_time_and_expire(server: TestClient) -> None:
    server.post("/api/v1/fleets", json={"name": "cams"})
    token = server.post("/api/v1/fleets/cams/registration-tokens", json={"expires_in_s": 60}).json()["token"]
    assert server.post("/api/v1/agent/register", json={"token": token, "device": "a1"}).status_code == 201
    used = server.post("/api/v1/agent/register", json={"token": token, "device": "a2"})
    assert used.status_code == 401 and "already used" in used.json()["message"]
    token = server.post("/api/v1/fleets/cams/registration-tokens", json={"expires_in_s": 60, "uses": 5}).json()["token"]
    taken = server.post("/api/v1/agent/register", json={"token": token, "device": "a1"})
    assert taken.status_code == 409 and taken.json()["field"] == "device"
    server.clock.advance(61)  # type: ignore[attr-defined]
    expired = server.post("/api/v1/agent/register", json={"token": token, "device": "a3"})
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    bad_name = server.post("/api/v1/agent/register", json={"token": token, "device": "../etc"})
    assert bad_name.status_code == 422 and bad_name.json()["field"] == "device"


def test_a_registration_retried_with_the_devices_own_credential_is_recognised(server: TestClient) -> None:
    server.post("/api/v1/fleets", json={"name": "cams"})
    server.post("/api/v1/fleets", json={"name": "other"})
    token = server.post("/api/v1/fleets/cams/registration-tokens", json={"expires_in_s": 60}).json()["token"]
    chosen = "emd_" + "A" * 43
    first = server.post("/api/v1/agent/register", json={"token": token, "device": "a1", "credential": chosen})
    assert first.status_code == 201 and first.json() == {"device": "a1", "fleet": "cams", "credential": chosen}
    # The answer was lost; the same request again (the token is spent by now) is told the same.
    again = server.post("/api/v1/agent/register", json={"token": token, "device": "a1", "credential": chosen})
    assert again.status_code == 201 and again.json() == first.json()
    beat = server.post("/api/v1/agent/heartbeat", headers={"Authorization": f"Bearer {chosen}"},
                       json={"device": "a1", "seq": 1})
    assert beat.status_code == 200
    # Another credential for the name, or the right one with another fleet's token, is no retry.
    other = "emd_" + "B" * 43
    assert server.post("/api/v1/agent/register", json={"token": token, "device": "a1", "credential": other}).status_code == 401
    fresh = server.post("/api/v1/fleets/cams/registration-tokens", json={"expires_in_s": 60}).json()["token"]
    taken = server.post("/api/v1/agent/register", json={"token": fresh, "device": "a1", "credential": other})
    assert taken.status_code == 409 and taken.json()["field"] == "device"
    elsewhere = server.post("/api/v1/fleets/other/registration-tokens", json={"expires_in_s": 60}).json()["token"]
    assert server.post("/api/v1/agent/register",
                       json={"token": elsewhere, "device": "a1", "credential": chosen}).status_code == 409
    weak = server.post("/api/v1/agent/register", json={"token": fresh, "device": "a2", "credential": "emd_short"})
    assert weak.status_code == 422 and weak.json()["field"] == "credential"


def test_a_held_heartbeat_answers_when_a_wave_takes_the_device_or_when_the_wait_ends(
        server: TestClient, fleet_packages: dict[str, Path]) -> None:
    import threading
    import time

    assert upload(server, fleet_packages["v1"]).status_code == 201
    server.post("/api/v1/fleets", json={"name": "cams"})
    device = Device(server, "cam-1", register(server, "cams", "cam-1"))
    device.heartbeat()
    # Nothing to do: held for the whole wait (the fixture caps it at long_poll_max_s = 2 s).
    started = time.monotonic()
    quiet = server.post("/api/v1/agent/heartbeat?wait_s=30", headers=device.headers, json={"device": "cam-1", "seq": 2})
    assert quiet.status_code == 200 and quiet.json()["models"] == []
    assert time.monotonic() - started >= 1.9 and float(quiet.headers["X-Edgemill-Held-Ms"]) >= 1900
    # A wave that takes the device wakes the held heartbeat, which answers with the new desired state.
    answer: dict[str, Any] = {}

    def hold() -> None:
        answer["r"] = server.post("/api/v1/agent/heartbeat?wait_s=30", headers=device.headers,
                                  json={"device": "cam-1", "seq": 3})

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    created = server.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "cams",
                                                       "strategy": {"canary_percent": 100}})
    assert created.status_code == 201, created.text
    holder.join(10)
    woken = answer["r"]
    assert woken.status_code == 200 and [m["version"] for m in woken.json()["models"]] == ["1.0.0"]
    assert 200 <= float(woken.headers["X-Edgemill-Held-Ms"]) < 1500  # woken, not timed out


def test_a_wave_wakes_every_held_heartbeat_it_takes_with_one_read_of_their_states(
        server: TestClient, fleet_packages: dict[str, Path]) -> None:
    import threading
    import time

    assert upload(server, fleet_packages["v1"]).status_code == 201
    devices = [Device(server, f"cam-{i}", register(server, "cams", f"cam-{i}")) for i in range(5)]
    for d in devices:
        d.heartbeat()
    watch = server.state.watch  # type: ignore[attr-defined]
    reads: list[list[int]] = []
    real = watch._desired_of
    watch._desired_of = lambda ids: reads.append(list(ids)) or real(ids)
    answers: dict[str, Any] = {}

    def hold(d: Device) -> None:
        answers[d.name] = server.post("/api/v1/agent/heartbeat?wait_s=30", headers=d.headers,
                                      json={"device": d.name, "seq": d.seq + 1})

    holders = [threading.Thread(target=hold, args=(d,)) for d in devices]
    for t in holders:
        t.start()
    deadline = time.monotonic() + 5
    while watch.held < len(devices) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watch.held == len(devices)
    created = server.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "cams",
                                                       "strategy": {"canary_percent": 100}})
    assert created.status_code == 201, created.text
    for t in holders:
        t.join(10)
    for d in devices:
        woken = answers[d.name]
        assert woken.status_code == 200 and woken.json()["device"] == d.name and woken.json()["seq"] == d.seq + 1
        assert [m["version"] for m in woken.json()["models"]] == ["1.0.0"]
        assert float(woken.headers["X-Edgemill-Held-Ms"]) < 1500  # woken, not timed out
    assert len(reads) == 1 and len(reads[0]) == len(devices)  # one read for the whole wave


def test_stale_and_replayed_heartbeats_are_refused_with_the_last_sequence(server: TestClient) -> None:
    headers = register(server, "cams", "cam-1")
    assert server.post("/api/v1/agent/heartbeat", headers=headers, json={"device": "cam-1", "seq": 5}).status_code == 200
    for seq in (5, 4):
        r = server.post("/api/v1/agent/heartbeat", headers=headers, json={"device": "cam-1", "seq": seq})
        assert r.status_code == 409 and r.json()["last_seq"] == 5 and r.json()["field"] == "seq"
    negative = server.post("/api/v1/agent/heartbeat", headers=headers, json={"device": "cam-1", "seq": -1})
    assert negative.status_code == 422


# --- devices and status -------------------------------------------------------------------------


def test_device_status_follows_heartbeats_errors_and_silence(server: TestClient) -> None:
    headers = register(server, "cams", "cam-1", tags={"site": "north"})
    register(server, "cams", "cam-2")
    statuses = {d["name"]: d["status"] for d in server.get("/api/v1/devices").json()}
    assert statuses == {"cam-1": "never_seen", "cam-2": "never_seen"}
    cam = Device(server, "cam-1", headers)
    cam.models = {"m": {"name": "m", "version": "1.0.0", "package_id": "p" * 64}}
    cam.requests = 100
    cam.heartbeat()
    assert server.get("/api/v1/devices/cam-1").json()["status"] == "online"
    cam.requests, cam.errors = 200, 40
    cam.heartbeat()
    degraded = server.get("/api/v1/devices/cam-1").json()
    assert degraded["status"] == "degraded" and "error rate" in degraded["problems"][0]
    assert [d["name"] for d in server.get("/api/v1/devices", params={"tag": "site=north"}).json()] == ["cam-1"]
    assert server.get("/api/v1/devices", params={"tag": "site"}).status_code == 400
    server.clock.advance(91)  # type: ignore[attr-defined]
    assert server.get("/api/v1/devices/cam-1").json()["status"] == "offline"
    overview = server.get("/api/v1/overview").json()
    assert overview["devices"] == {"total": 2, "online": 0, "offline": 1, "degraded": 0, "never_seen": 1}
    series = server.get("/api/v1/metrics/series", params={"device": "cam-1", "since_s": 600}).json()
    assert series[0]["key"] == "device/cam-1/model/m"
    assert sum(p["requests"] for p in series[0]["points"]) == 200
    assert sum(p["errors"] for p in series[0]["points"]) == 40


# --- rollouts -----------------------------------------------------------------------------------


def _fleet_of(server: TestClient, n: int, fleet: str = "cams") -> list[Device]:
    return [Device(server, f"cam-{i}", register(server, fleet, f"cam-{i}")) for i in range(n)]


def _deploy(server: TestClient, version: str, **strategy):  # type: ignore[no-untyped-def]
    body = {"model": "detector", "version": version, "fleet": "cams",
            "strategy": {"canary_percent": 25, "batch_size": 0, "bake_time_s": 60,
                         "gates": {"max_error_rate": 0.05, "min_requests": 10, **strategy.pop("gates", {})}, **strategy}}
    r = server.post("/api/v1/deployments", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_healthy_rollout_goes_canary_then_the_rest(server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    devices = _fleet_of(server, 4)
    for d in devices:
        d.heartbeat()
    deployment = _deploy(server, "1.0.0")
    canary = [x["device"] for x in deployment["devices"] if x["state"] == "assigned"]
    assert len(canary) == 1 and deployment["waves"] == 2
    for d in devices:
        d.apply(d.heartbeat())
    assert sum(1 for d in devices if d.models) == 1
    for d in devices:
        d.requests += 50
        d.heartbeat()
    tick(server.state)  # type: ignore[attr-defined]
    assert server.get(f"/api/v1/deployments/{deployment['id']}").json()["wave"] == 0  # still baking
    server.clock.advance(61)  # type: ignore[attr-defined]
    for d in devices:
        d.requests += 50
        d.heartbeat()
    tick(server.state)  # type: ignore[attr-defined]
    for d in devices:
        d.apply(d.heartbeat())
    assert all(d.models["detector"]["version"] == "1.0.0" for d in devices)
    for d in devices:
        d.heartbeat()
    server.clock.advance(61)  # type: ignore[attr-defined]
    for d in devices:
        d.requests += 50
        d.heartbeat()
    tick(server.state)  # type: ignore[attr-defined]
    done = server.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert done["state"] == "succeeded" and done["counts"] == {"updated": 4}
    kinds = [e["kind"] for e in done["events"]]
    assert kinds[0] == "created" and kinds.count("wave_started") == 2 and kinds[-1] == "succeeded"
    lineage = server.get("/api/v1/models/detector/versions/1.0.0/lineage").json()
    assert lineage["devices"] == sorted(d.name for d in devices) and lineage["deployments"][0]["devices_updated"] == 4


def test_a_device_that_joins_after_a_rollout_succeeded_runs_the_fleets_version(
        server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    (first,) = _fleet_of(server, 1)
    first.heartbeat()
    deployment = _deploy(server, "1.0.0", canary_percent=100, bake_time_s=0)
    first.apply(first.heartbeat())
    first.heartbeat()
    tick(server.state)  # type: ignore[attr-defined]
    assert server.get(f"/api/v1/deployments/{deployment['id']}").json()["state"] == "succeeded"

    late = Device(server, "cam-late", register(server, "cams", "cam-late"))  # a replacement camera, say
    desired = late.heartbeat()
    assert [(m["name"], m["version"]) for m in desired["models"]] == [("detector", "1.0.0")]
    late.apply(desired)
    late.heartbeat()
    done = server.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert done["state"] == "succeeded" and done["counts"] == {"updated": 2}
    assert any(e["kind"] == "device_joined" and "cam-late" in e["message"] for e in done["events"])


def test_a_device_that_joins_during_a_rollout_is_taken_into_a_later_wave(
        server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    devices = _fleet_of(server, 2)
    for d in devices:
        d.heartbeat()
    deployment = _deploy(server, "1.0.0", canary_percent=50, bake_time_s=0)
    late = Device(server, "cam-late", register(server, "cams", "cam-late"))
    assert late.heartbeat()["models"] == []  # not before its wave
    rows = {x["device"]: x["state"] for x in server.get(f"/api/v1/deployments/{deployment['id']}").json()["devices"]}
    assert rows["cam-late"] == "pending" and sorted(rows.values()) == ["assigned", "pending", "pending"]
    for _ in range(3):  # canary, then the rest: the late device among them
        for d in [*devices, late]:
            d.apply(d.heartbeat())
            d.heartbeat()
        tick(server.state)  # type: ignore[attr-defined]
    done = server.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert done["state"] == "succeeded" and done["counts"] == {"updated": 3}
    assert late.models["detector"]["version"] == "1.0.0"


def test_a_joining_device_skips_deployments_to_named_devices_or_other_tags(
        server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    upload(server, fleet_packages["v2"])

    def rows(deployment: dict) -> set[str]:  # type: ignore[type-arg]
        return {x["device"] for x in server.get(f"/api/v1/deployments/{deployment['id']}").json()["devices"]}

    register(server, "cams", "cam-a", tags={"site": "a"})
    named = server.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "cams",
                                                     "devices": ["cam-a"]})
    assert named.status_code == 201, named.text
    register(server, "cams", "cam-b", tags={"site": "a"})
    assert rows(named.json()) == {"cam-a"}  # named devices only: a newcomer is not one of them

    tagged = server.post("/api/v1/deployments", json={"model": "detector", "version": "2.0.0", "fleet": "cams",
                                                      "tags": {"site": "a"}})
    assert tagged.status_code == 201, tagged.text
    register(server, "cams", "cam-c", tags={"site": "c"})
    register(server, "cams", "cam-d", tags={"site": "a"})
    assert rows(tagged.json()) == {"cam-a", "cam-b", "cam-d"}  # site a's deployment takes site a's newcomer only


def test_a_failing_canary_is_rolled_back_and_the_rest_never_get_it(server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    upload(server, fleet_packages["v2"])
    devices = _fleet_of(server, 4)
    _deploy(server, "1.0.0", canary_percent=100, bake_time_s=0)
    for d in devices:
        d.apply(d.heartbeat())
        d.heartbeat()
    deployment = _deploy(server, "2.0.0")
    canary = next(d for d in devices if d.name == next(x["device"] for x in deployment["devices"] if x["state"] == "assigned"))
    for d in devices:
        d.apply(d.heartbeat())
    assert canary.models["detector"]["version"] == "2.0.0"
    canary.heartbeat()
    server.clock.advance(5)  # type: ignore[attr-defined]
    canary.requests, canary.errors = canary.requests + 30, canary.errors + 30  # v2 breaks its clients
    canary.heartbeat()
    tick(server.state)  # type: ignore[attr-defined]
    rolled = server.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert rolled["state"] == "rolled_back" and "max_error_rate" in rolled["reason"]
    assert rolled["counts"] == {"rolled_back": 1, "pending": 3}
    desired = canary.heartbeat()
    assert desired["models"][0]["version"] == "1.0.0" and desired["models"][0]["allow_rollback"] is True
    for d in devices:
        d.apply(d.heartbeat())
        assert d.models["detector"]["version"] == "1.0.0"
    v2_id = upload(server, fleet_packages["v2"]).json()["package_id"]
    forbidden = server.get(f"/api/v1/agent/packages/{v2_id}", headers=devices[0].headers)
    assert forbidden.status_code == 404  # a device may download only what it is told to run


def test_a_device_that_refuses_the_package_fails_the_gate(server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    devices = _fleet_of(server, 2)
    deployment = _deploy(server, "1.0.0", canary_percent=50)
    desired = [d.heartbeat() for d in devices]
    refusing = next(d for d, want in zip(devices, desired) if want["models"])
    package_id = next(m for m in desired if m["models"])["models"][0]["package_id"]
    refusing.failures = [{"model": "detector", "package_id": package_id, "reason": "a file differs from its hash",
                          "refusal": "file_modified"}]
    again = refusing.heartbeat()
    assert again["models"] == []  # failed: told to keep what it had (nothing before)
    tick(server.state)  # type: ignore[attr-defined]
    detail = server.get(f"/api/v1/deployments/{deployment['id']}").json()
    assert detail["state"] == "rolled_back" and "file_modified" in detail["reason"]
    device = server.get(f"/api/v1/devices/{refusing.name}").json()
    assert device["status"] == "degraded" and "file_modified" in device["problems"][0]


def test_deployment_bad_input_gets_a_named_field(server: TestClient, fleet_packages: dict[str, Path]) -> None:
    upload(server, fleet_packages["v1"])
    server.post("/api/v1/fleets", json={"name": "empty"})
    empty = server.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "empty"})
    assert empty.status_code == 400 and empty.json()["field"] == "fleet" and "register" in empty.json()["fix"]
    for strategy, field in (({"canary_percent": 0}, "strategy.canary_percent"), ({"batch_size": -1}, "strategy.batch_size"),
                            ({"gates": {"max_error_rate": 2}}, "strategy.gates.max_error_rate"),
                            ({"bake_time_s": "soon"}, "strategy.bake_time_s")):
        r = server.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "empty",
                                                     "strategy": strategy})
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert server.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "nope"}).status_code == 404
    assert server.post("/api/v1/deployments", json={"model": "nope", "version": "1.0.0", "fleet": "empty"}).status_code == 404
    assert server.get("/api/v1/deployments/999").status_code == 404
    assert server.post("/api/v1/deployments/999/pause").status_code == 404
    devices = _fleet_of(server, 1)
    d = _deploy(server, "1.0.0")
    assert devices
    assert server.post(f"/api/v1/deployments/{d['id']}/resume").status_code == 409
    assert server.post(f"/api/v1/deployments/{d['id']}/pause").json()["state"] == "paused"
    assert server.post(f"/api/v1/deployments/{d['id']}/resume").json()["state"] == "rolling"
    assert server.post(f"/api/v1/deployments/{d['id']}/rollback").json()["state"] == "rolled_back"
    assert server.post(f"/api/v1/deployments/{d['id']}/pause").status_code == 409


# --- captures, alerts -----------------------------------------------------------------------------


def test_captures_land_under_the_device_prefix_once(server: TestClient) -> None:
    headers = register(server, "cams", "cam-1")
    other = register(server, "cams", "cam-2")
    record = CaptureRecord(capture_id="c-1", model="detector", model_version="1.0.0", device="cam-1",
                           created_unix=server.clock.now, inputs={"x": np.ones((1, 4), np.float32)},  # type: ignore[attr-defined]
                           outputs={"y": np.zeros((1, 2), np.float32)}, auxiliary={}, sampled=False)
    data = record.encode()
    for expected in (201, 200):
        r = server.put("/api/v1/agent/captures/c-1", params={"model": "detector"}, content=data, headers=headers)
        assert r.status_code == expected, r.text
    assert r.json()["key"].startswith("captures/cam-1/detector/")
    listed = server.get("/api/v1/captures", params={"device": "cam-1"}).json()
    assert [c["capture_id"] for c in listed] == ["c-1"]
    assert server.get("/api/v1/captures/cam-1/c-1").content == data
    spoof = server.put("/api/v1/agent/captures/c-1", params={"model": "detector"}, content=data, headers=other)
    assert spoof.status_code == 403 and spoof.json()["field"] == "device"
    torn = server.put("/api/v1/agent/captures/c-2", params={"model": "detector"}, content=data[:-3], headers=headers)
    assert torn.status_code == 400 and torn.json()["field"] == "body"
    big = server.put("/api/v1/agent/captures/c-3", params={"model": "detector"}, content=b"x" * (1024 * 1024 + 1), headers=headers)
    assert big.status_code == 413


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []  # type: ignore[type-arg]
    fail_first = 1

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.fail_first > 0:
            _Receiver.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        _Receiver.bodies.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_alert_fires_and_resolves_and_reaches_the_webhook_with_retries(server: TestClient) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.bodies, _Receiver.fail_first = [], 1
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        r = server.post("/api/v1/alert-rules", json={"name": "detector-errors", "metric": "error_rate", "threshold": 0.1,
                                                     "window_s": 60, "model": "m", "webhook_url": url})
        assert r.status_code == 201, r.text
        assert server.post("/api/v1/alert-rules", json={"name": "detector-errors", "metric": "error_rate",
                                                        "threshold": 0.1}).status_code == 409
        silly = server.post("/api/v1/alert-rules", json={"name": "x", "metric": "error_rate", "threshold": 2})
        assert silly.status_code == 400 and silly.json()["fix"]
        cam = Device(server, "cam-1", register(server, "cams", "cam-1"))
        cam.models = {"m": {"name": "m", "version": "1.0.0", "package_id": "p" * 64}}
        cam.requests, cam.errors = 100, 50
        cam.heartbeat()
        tick(server.state)  # type: ignore[attr-defined]  # fires; the first delivery gets a 503
        alerts = server.get("/api/v1/alerts").json()
        assert alerts[0]["state"] == "firing" and alerts[0]["webhook"]["attempts"] == 1 and not alerts[0]["webhook"]["delivered"]
        server.clock.advance(30)  # type: ignore[attr-defined]  # past the retry backoff
        tick(server.state)  # type: ignore[attr-defined]
        assert [b["state"] for b in _Receiver.bodies] == ["firing"]
        server.clock.advance(61)  # type: ignore[attr-defined]
        cam.requests += 100
        cam.heartbeat()
        tick(server.state)  # type: ignore[attr-defined]
        assert server.get("/api/v1/alerts").json()[0]["state"] == "resolved"
        assert [b["state"] for b in _Receiver.bodies] == ["firing", "resolved"]
        assert server.delete("/api/v1/alert-rules/detector-errors").status_code == 204
        assert server.delete("/api/v1/alert-rules/detector-errors").status_code == 404
    finally:
        receiver.shutdown()


def test_health_and_metrics_endpoints(server: TestClient) -> None:
    health = server.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok", "store": "ok"}
    server.get("/api/v1/devices")
    text = server.get("/metrics").text
    assert 'edgemill_server_requests_total{method="GET",route="/api/v1/devices",status="200"}' in text
    assert 'edgemill_fleet_devices{status="online"}' in text
