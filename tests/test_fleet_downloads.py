"""The download limiter: slots, and a Retry-After that spreads a refused herd over its drain time."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("fastapi")

from edgemill.fleet.downloads import MAX_RETRY_S, MIN_RETRY_S, DownloadGate  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_slots_are_taken_refused_and_given_back() -> None:
    clock = Clock()
    gate = DownloadGate(2, clock=clock, rng=random.Random(1))
    first, second = gate.try_acquire(), gate.try_acquire()
    assert first is not None and second is not None and gate.try_acquire() is None
    gate.release(first)
    assert gate.try_acquire() is not None


def test_a_lone_refusal_comes_back_within_seconds() -> None:
    gate = DownloadGate(1, clock=Clock(), rng=random.Random(2))
    assert gate.try_acquire() is not None and gate.try_acquire() is None
    waits = [gate.retry_after_s() for _ in range(200)]
    assert all(MIN_RETRY_S <= w <= MIN_RETRY_S + 1.0 for w in waits)


def test_a_herd_is_spread_over_the_backlogs_drain_time_and_the_spread_shrinks_as_it_drains() -> None:
    clock = Clock()
    gate = DownloadGate(10, clock=clock, rng=random.Random(3))
    started = [gate.try_acquire() for _ in range(10)]
    clock.now += 0.5  # downloads take half a second here
    for s in started:
        gate.release(s)  # type: ignore[arg-type]
    for _ in range(10):
        gate.try_acquire()
    for _ in range(2000):  # a wave of 2,000 devices told at once
        assert gate.try_acquire() is None
    waits = [gate.retry_after_s() for _ in range(2000)]
    mean_s = 0.5 - (0.5 - 0.05) * 0.9 ** 10  # the moving mean after ten half-second downloads
    drain = 2000 * mean_s / 10  # 2,000 waiting, 10 slots: about 69 s of downloads
    assert max(waits) <= MIN_RETRY_S + max(1.0, drain) + 1e-9 and max(waits) > 0.8 * drain
    spread = sorted(waits)
    assert spread[len(spread) // 2] == pytest.approx(MIN_RETRY_S + drain / 2, rel=0.15)  # uniform: not one herd
    clock.now += 60  # refusals fade: a later lone device is not sent away for long
    assert gate.retry_after_s() <= MIN_RETRY_S + max(1.0, drain * 0.01)


def test_the_wait_is_bounded_however_large_the_backlog() -> None:
    clock = Clock()
    gate = DownloadGate(1, clock=clock, rng=random.Random(4))
    s = gate.try_acquire()
    clock.now += 30  # a slow link: 30 s a download
    gate.release(s)  # type: ignore[arg-type]
    gate.try_acquire()
    for _ in range(100_000):
        gate.try_acquire()
    assert all(w <= MAX_RETRY_S for w in (gate.retry_after_s() for _ in range(100)))


# --- through the API ------------------------------------------------------------------------------

from fastapi.testclient import TestClient  # noqa: E402

from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402

from ._fleet import build_model_package  # noqa: E402


def _fleet_with_a_deployment(tmp_path, keypair, **config):  # type: ignore[no-untyped-def]
    from .test_fleet_api import Device, FakeClock, register, upload

    settings = dict(db=f"sqlite:///{tmp_path / 'db.sqlite'}", store=f"file://{tmp_path / 'store'}",
                    trusted_keys=(keypair[1],), api_key_file=tmp_path / "operator.key", **config)
    app = create_app(ServerConfig(**settings), clock=FakeClock(), background=False)
    client = TestClient(app)
    client.__enter__()
    client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
    assert upload(client, build_model_package(tmp_path, "detector", "1.0.0", 16, keypair[0])).status_code == 201
    client.post("/api/v1/fleets", json={"name": "cams"})
    devices = [Device(client, f"cam-{i}", register(client, "cams", f"cam-{i}")) for i in range(3)]
    client.post("/api/v1/deployments", json={"model": "detector", "version": "1.0.0", "fleet": "cams",
                                             "strategy": {"canary_percent": 100}})
    return client, app.state.edgemill, devices


def test_a_wave_downloads_a_small_package_from_memory_reading_the_store_once(
        tmp_path, keypair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, state, devices = _fleet_with_a_deployment(tmp_path, keypair, max_concurrent_downloads=1)
    reads: list[str] = []
    real_get = state.store.get
    monkeypatch.setattr(state.store, "get", lambda key: reads.append(key) or real_get(key))
    try:
        held = state.downloads.try_acquire()  # the only slot is busy: a cached package does not need it
        for d in devices:
            d.apply(d.heartbeat())
        assert len(reads) == 1 and state.packages.hits == 2 and state.packages.misses == 1
        state.downloads.release(held)  # type: ignore[arg-type]
    finally:
        client.__exit__(None, None, None)
        state.db.engine.dispose()


def test_beyond_the_download_slots_a_device_gets_429_with_a_retry_after(tmp_path, keypair) -> None:  # type: ignore[no-untyped-def]
    client, state, devices = _fleet_with_a_deployment(tmp_path, keypair, max_concurrent_downloads=1,
                                                      package_cache_mb=0)
    try:
        wanted = devices[0].heartbeat()["models"][0]
        held = state.downloads.try_acquire()
        refused = client.get(wanted["download_path"], headers=devices[0].headers)
        assert refused.status_code == 429 and refused.json()["field"] == "package_id"
        assert 1 <= int(refused.headers["Retry-After"]) <= 300
        state.downloads.release(held)  # type: ignore[arg-type]
        ok = client.get(wanted["download_path"], headers=devices[0].headers)
        assert ok.status_code == 200 and len(ok.content) == wanted["size_bytes"]
        assert state.downloads.try_acquire() is not None  # the slot came back after the file was sent
    finally:
        client.__exit__(None, None, None)
        state.db.engine.dispose()
