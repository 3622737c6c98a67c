"""Group commit of heartbeats: the ones that arrive together share one transaction, and each still gets
its own answer or its own refusal (SQLite always, PostgreSQL too when the environment offers one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.exc import DBAPIError, OperationalError  # noqa: E402

from edgemill.errors import AuthenticationError, PermissionDeniedError, StaleRequestError  # noqa: E402
from edgemill.fleet import heartbeat_writer  # noqa: E402
from edgemill.fleet.db.tables import Device, MetricSample  # noqa: E402
from edgemill.fleet.heartbeat_writer import Answered, HeartbeatWriter  # noqa: E402
from edgemill.fleet.schemas import HeartbeatIn  # noqa: E402

from .test_fleet_api import register, server  # noqa: E402,F401 - the fixture is shared


def _beat(device: str, seq: int, requests: int = 0) -> HeartbeatIn:
    return HeartbeatIn.model_validate({"device": device, "seq": seq, "metrics": {
        "det": {"requests": requests, "errors": 0, "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}}}})


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def _together(writer: HeartbeatWriter, beats: list[tuple[str, HeartbeatIn]]) -> list[Any]:
    return await asyncio.gather(*(writer.submit(secret, body) for secret, body in beats), return_exceptions=True)


def test_heartbeats_that_arrive_together_share_one_transaction_and_keep_their_own_outcomes(server: TestClient) -> None:
    a, b = _secret(register(server, "cams", "cam-a")), _secret(register(server, "cams", "cam-b"))
    writer: HeartbeatWriter = server.state.heartbeats  # type: ignore[attr-defined]
    before = writer.batches
    outcomes = asyncio.run(_together(writer, [
        (a, _beat("cam-a", 1, requests=10)),
        (b, _beat("cam-b", 1)),
        (b, _beat("cam-a", 2)),  # another device's name
        ("emd_unknown", _beat("cam-a", 3)),  # a credential of no device
        (a, _beat("cam-a", 1)),  # a replay within the same batch
        (b, _beat("cam-b", 2)),  # the same device again, newer: both recorded
        (a, _beat("cam-a", 2, requests=25)),
    ]))
    assert writer.batches == before + 1
    ok = [o for o in outcomes if isinstance(o, Answered)]
    assert [o.desired.device for o in ok] == ["cam-a", "cam-b", "cam-b", "cam-a"]
    assert [o.desired.seq for o in ok] == [1, 1, 2, 2]
    assert isinstance(outcomes[2], PermissionDeniedError) and outcomes[2].value == "cam-a"
    assert isinstance(outcomes[3], AuthenticationError)
    assert isinstance(outcomes[4], StaleRequestError) and outcomes[4].last_seq == 1
    with server.state.db.session() as session:  # type: ignore[attr-defined]
        seqs = dict(session.execute(select(Device.name, Device.last_seq)).all())
        samples = session.execute(select(MetricSample.requests).join(Device, Device.id == MetricSample.device_id)
                                  .where(Device.name == "cam-a").order_by(MetricSample.id)).scalars().all()
    assert seqs == {"cam-a": 2, "cam-b": 2}
    assert samples == [10, 15]  # the second delta is taken from the first, written in the same batch


def test_a_lone_heartbeat_is_written_at_once_and_a_busy_writer_batches(server: TestClient) -> None:
    secrets = [_secret(register(server, "cams", f"cam-{i}")) for i in range(20)]
    writer: HeartbeatWriter = server.state.heartbeats  # type: ignore[attr-defined]

    async def scenario() -> tuple[int, int]:
        before = writer.batches
        await writer.submit(secrets[0], _beat("cam-0", 1))
        lone = writer.batches - before
        before = writer.batches
        await _together(writer, [(s, _beat(f"cam-{i}", 2)) for i, s in enumerate(secrets)])
        return lone, writer.batches - before

    lone, busy = asyncio.run(scenario())
    assert lone == 1 and busy == 1


def test_a_failed_write_fails_its_heartbeats_once_and_a_deadlock_is_retried(
        server: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _secret(register(server, "cams", "cam-1"))
    writer: HeartbeatWriter = server.state.heartbeats  # type: ignore[attr-defined]
    real = heartbeat_writer.ingest_many
    failures: list[Exception] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(heartbeat_writer, "ingest_many", flaky)

    class Deadlock(Exception):
        sqlstate = "40P01"

    failures.append(OperationalError("SELECT", {}, ConnectionRefusedError("connection refused")))
    outcomes = asyncio.run(_together(writer, [(secret, _beat("cam-1", 1)), (secret, _beat("cam-1", 2))]))
    assert all(isinstance(o, OperationalError) for o in outcomes)
    failures.append(DBAPIError("SELECT", {}, Deadlock("deadlock detected")))
    answered = asyncio.run(writer.submit(secret, _beat("cam-1", 1)))  # nothing was written by the failed batch
    assert answered.desired.seq == 1 and not failures


def test_the_http_heartbeat_goes_through_the_writer(server: TestClient) -> None:
    headers = register(server, "cams", "cam-1")
    writer: HeartbeatWriter = server.state.heartbeats  # type: ignore[attr-defined]
    before = writer.written
    r = server.post("/api/v1/agent/heartbeat", headers=headers, json={"device": "cam-1", "seq": 1})
    assert r.status_code == 200 and r.json()["seq"] == 1
    assert writer.written == before + 1
