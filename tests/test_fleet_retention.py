"""Retention: old metric samples fold into hourly rollups (exactly once, even with two replicas at
it), rollups and captures expire by policy, and the charts read across the fold without a seam."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402
from edgemill.fleet.db import open_database  # noqa: E402
from edgemill.fleet.db.tables import Capture, Device, Fleet, MetricRollup, MetricSample  # noqa: E402
from edgemill.fleet.retention import fold_cutoff, fold_samples, run_retention  # noqa: E402
from edgemill.fleet.store import ServerStore  # noqa: E402

from ._fleet import drop_postgres_database, fresh_postgres_database, postgres_url  # noqa: E402

DAY = 86400.0
HOUR = 3600.0
NOW = 1_800_000_000.0  # a whole number of hours
DATABASES = ["sqlite"] + (["postgresql"] if postgres_url() else [])


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    url = fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    yield url
    drop_postgres_database(url)


def config_for(db_url: str, tmp_path: Path, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = dict(db=db_url, store=f"file://{tmp_path / 'store'}", api_key_file=tmp_path / "operator.key",
                                  metrics_retention_s=2 * DAY, metrics_rollup_s=HOUR, metrics_rollup_retention_s=30 * DAY,
                                  captures_retention_s=7 * DAY)
    values.update(overrides)
    return ServerConfig(**values)


def seed(db: Any, devices: int = 2, days: float = 4, every_s: float = 600) -> dict[str, int]:
    """Samples every ``every_s`` for ``days`` before NOW on each device: requests 10 a sample, 1 error
    every 5th, p50 2 or 4 ms (weighted by requests 10 and 30), p95 growing. Returns the totals."""
    rows = []
    with db.session() as session:
        fleet = Fleet(name="f", description="", created_at=0.0)
        session.add(fleet)
        session.flush()
        ids = []
        for i in range(devices):
            d = Device(name=f"d{i}", fleet_id=fleet.id, tags={}, credential_hash=f"{i:064d}", registered_at=0.0,
                       last_seq=0, agent={})
            session.add(d)
            session.flush()
            ids.append(d.id)
        n = int(days * DAY / every_s)
        for device_id in ids:
            for k in range(n):
                t = NOW - days * DAY + k * every_s + 1.0
                slow = k % 2 == 1
                rows.append({"device_id": device_id, "model_name": "m", "package_id": "p1", "t": t,
                             "requests": 30 if slow else 10, "errors": 1 if k % 5 == 0 else 0, "total_requests": 0,
                             "total_errors": 0, "p50_ms": 4.0 if slow else 2.0, "p95_ms": float(k % 50),
                             "p99_ms": None})
        session.execute(insert(MetricSample), rows)
    return {"requests": sum(r["requests"] for r in rows), "errors": sum(r["errors"] for r in rows), "samples": len(rows)}


def totals(db: Any) -> dict[str, int]:
    with db.session() as session:
        raw = session.execute(select(func.coalesce(func.sum(MetricSample.requests), 0),
                                     func.coalesce(func.sum(MetricSample.errors), 0), func.count())).one()
        rolled = session.execute(select(func.coalesce(func.sum(MetricRollup.requests), 0),
                                        func.coalesce(func.sum(MetricRollup.errors), 0),
                                        func.coalesce(func.sum(MetricRollup.samples), 0))).one()
    return {"requests": int(raw[0]) + int(rolled[0]), "errors": int(raw[1]) + int(rolled[1]),
            "samples": int(raw[2]) + int(rolled[2])}


def test_old_samples_fold_into_hourly_rollups_and_nothing_is_counted_twice(db_url: str, tmp_path: Path) -> None:
    config = config_for(db_url, tmp_path)
    db = open_database(db_url)
    try:
        seeded = seed(db)
        done = fold_samples(db, NOW, config)
        cutoff = fold_cutoff(NOW, config)
        assert cutoff == NOW - 2 * DAY  # whole hours: NOW is one
        with db.session() as session:
            oldest_raw = session.scalar(select(func.min(MetricSample.t)))
            rollups = session.execute(select(MetricRollup.device_id, MetricRollup.t, MetricRollup.span_s,
                                             MetricRollup.samples, MetricRollup.requests, MetricRollup.p50_ms,
                                             MetricRollup.p95_ms)).all()
        assert oldest_raw is not None and oldest_raw >= cutoff
        assert done.samples_folded == seeded["samples"] // 2 and done.rollups_written == len(rollups) == 2 * 48
        assert totals(db) == seeded  # conservation: every request and error is in exactly one place
        for _, t, span, samples, requests, p50, p95 in rollups:
            assert t % HOUR == 0 and span == HOUR and t < cutoff
            assert samples == 6 and requests == 3 * 10 + 3 * 30  # six 10-minute samples an hour, alternating
            assert p50 == pytest.approx((3 * 10 * 2.0 + 3 * 30 * 4.0) / 120)  # request-weighted
            assert p95 is not None and p95 >= 0
        # Folding again changes nothing; a day later folds the next day.
        assert fold_samples(db, NOW, config).samples_folded == 0
        later = fold_samples(db, NOW + DAY, config)
        assert later.samples_folded == seeded["samples"] // 4 and totals(db) == seeded
    finally:
        db.engine.dispose()


def test_two_replicas_folding_at_once_fold_each_span_exactly_once(db_url: str, tmp_path: Path) -> None:
    config = config_for(db_url, tmp_path)
    seeder = open_database(db_url)
    seeded = seed(seeder, devices=3, days=6, every_s=300)
    replicas = [open_database(db_url, migrate=False) for _ in range(2)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas))

    def run(db: Any) -> None:
        try:
            start.wait()
            fold_samples(db, NOW, config)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == [] and not any(t.is_alive() for t in threads)
        assert totals(seeder) == seeded
        with seeder.session() as session:
            spans = session.execute(select(MetricRollup.device_id, MetricRollup.t, func.count())
                                    .group_by(MetricRollup.device_id, MetricRollup.t)).all()
        assert spans and all(n == 1 for *_, n in spans)  # one rollup per device and hour, never two
        assert len(spans) == 3 * 4 * 24
    finally:
        for db in (seeder, *replicas):
            db.engine.dispose()


class FlakyStore(ServerStore):
    """A folder store whose deletes fail while ``down`` is set."""

    down = False

    def delete(self, key: str) -> None:
        if self.down:
            raise ConnectionError("store unreachable")
        super().delete(key)


def test_rollups_and_captures_expire_and_a_store_outage_keeps_the_records(db_url: str, tmp_path: Path) -> None:
    config = config_for(db_url, tmp_path, metrics_rollup_retention_s=3 * DAY)
    db = open_database(db_url)
    store = FlakyStore(config.store)
    try:
        seed(db, devices=1, days=4)
        keys = {}
        with db.session() as session:
            device_id = session.scalar(select(Device.id))
            for i, age_days in enumerate((10, 8, 6, 1)):
                key = f"captures/d0/c{i}.emc"
                store.put(key, b"capture %d" % i)
                keys[age_days] = key
                session.add(Capture(capture_id=f"c{i}", device_id=device_id, model_name="m", store_key=key, size_bytes=9,
                                    received_at=NOW - age_days * DAY))
        store.down = True
        first = run_retention(db, store, NOW, config)
        assert first.captures_expired == 0
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Capture)) == 4  # nothing lost while the store is away
        store.down = False
        done = run_retention(db, store, NOW, config)
        assert done.captures_expired == 2
        with db.session() as session:
            left = sorted(session.scalars(select(Capture.store_key)))
            oldest_rollup = session.scalar(select(func.min(MetricRollup.t)))
        assert left == sorted([keys[6], keys[1]])
        assert [store.local_path(keys[a]).exists() for a in (10, 8, 6, 1)] == [False, False, True, True]  # type: ignore[union-attr]
        # Rollups cover days 4..2 ago; those that ended more than 3 days ago went in the first pass.
        assert first.rollups_expired == 24 - 1 and done.rollups_expired == 0 and oldest_rollup == NOW - 3 * DAY - HOUR
    finally:
        db.engine.dispose()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_charts_read_across_the_fold_without_losing_a_request(db_url: str, tmp_path: Path) -> None:
    config = config_for(db_url, tmp_path)
    app = create_app(config, clock=Clock(NOW), background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
        state = app.state.edgemill
        seeded = seed(state.db)

        def chart() -> tuple[int, int, list[Any]]:
            body = client.get("/api/v1/metrics/series", params={"since_s": 5 * DAY, "buckets": 120}).json()
            points = [p for s in body for p in s["points"]]
            return sum(p["requests"] for p in points), sum(p["errors"] for p in points), body

        before = chart()
        assert before[:2] == (seeded["requests"], seeded["errors"])
        run_retention(state.db, state.store, NOW, config)
        after = chart()
        assert after[:2] == before[:2]
        # Same buckets hold the same requests: a rollup counts at its hour's middle, inside the bucket.
        assert [p["requests"] for p in after[2][0]["points"]] == [p["requests"] for p in before[2][0]["points"]]
        one_device = client.get("/api/v1/metrics/series", params={"since_s": 5 * DAY, "device": "d0"}).json()
        assert sum(p["requests"] for s in one_device for p in s["points"]) == seeded["requests"] // 2
    state.db.engine.dispose()


def test_the_server_flags_set_the_policy_and_zero_keeps_every_capture(tmp_path: Path) -> None:
    import argparse

    from edgemill.cli.server_cmd import add_parser, build_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["server", "--data-dir", str(tmp_path), "--metrics-retention-s", "3600",
                              "--metrics-rollup-s", "600", "--metrics-rollup-retention-s", "86400",
                              "--captures-retention-s", "0", "--db-pool-size", "8"])
    config = build_config(args)
    assert (config.metrics_retention_s, config.metrics_rollup_s, config.metrics_rollup_retention_s,
            config.captures_retention_s, config.db_pool_size) == (3600, 600, 86400, None, 8)
    args = parser.parse_args(["server", "--data-dir", str(tmp_path), "--metrics-rollup-s", "5"])
    with pytest.raises(Exception) as bad:
        build_config(args)
    assert "--metrics-rollup-s" in str(bad.value)
