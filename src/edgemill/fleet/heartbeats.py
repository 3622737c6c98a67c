"""Taking in heartbeats: sequence check, last seen, what runs, metric deltas, apply outcomes.

A heartbeat is the control plane's hot path (10,000 devices every 30 s is 333 a second), so the
heartbeats that arrive together are written together (:mod:`.heartbeat_writer` gathers them): one
read of their devices (which is also the authentication), one batched write of the device rows, one
batched insert of metric samples, one read of their rollout rows and one commit, however many there
are. The devices' rows are read ``FOR NO KEY UPDATE`` (which does not block the key-share locks that
inserts referencing a device take), so two copies of one heartbeat arriving at two
replicas at once cannot both pass the sequence check. A heartbeat that is refused (unknown
credential, another device's name, a stale sequence number) writes nothing and costs the others nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from ..errors import PermissionDeniedError, StaleRequestError, UserError
from . import schemas
from .auth import digest, unknown_device_credential
from .config import ServerConfig
from .db.tables import DeploymentDevice, DeploymentEvent, Device, DeviceModel, DriftSample, MetricSample
from .desired import DeviceRollout, rollouts_of_devices
from .drift_ingest import fold
from .drift_refs import References

DEGRADED_MIN_REQUESTS = 10  # fewer requests in one heartbeat say too little about an error rate

# The hot path's statements, built once and run on the session's connection (no ORM objects).
_DEVICES_BY_CREDENTIAL = (select(Device.id, Device.name, Device.metric_totals, Device.models_digest, Device.last_seq,
                                 Device.credential_hash, Device.drift_state)
                          .where(Device.credential_hash.in_(bindparam("hashes", expanding=True)))
                          .order_by(Device.id).with_for_update(key_share=True))
_RECORD_HEARTBEAT = (update(Device).where(Device.id == bindparam("device_id"))
                     .values(last_seq=bindparam("seq"), last_seen_at=bindparam("now"),
                             models_digest=bindparam("models_digest"), agent=bindparam("agent", type_=Device.agent.type),
                             metric_totals=bindparam("totals", type_=Device.metric_totals.type),
                             drift_state=bindparam("drift", type_=Device.drift_state.type)))
_MODELS_OF_DEVICES = select(DeviceModel.id, DeviceModel.device_id, DeviceModel.model_name, DeviceModel.package_id).where(
    DeviceModel.device_id.in_(bindparam("device_ids", expanding=True)))
_CHANGE_MODEL = (update(DeviceModel).where(DeviceModel.id == bindparam("row_id"))
                 .values(version=bindparam("new_version"), package_id=bindparam("new_package_id"),
                         since=bindparam("new_since")))
_MOVE_ROLLOUT_ROW = (update(DeploymentDevice).where(DeploymentDevice.id == bindparam("row_id"))
                     .values(state=bindparam("new_state"), updated_at=bindparam("new_updated_at"),
                             reason=bindparam("new_reason")))
_INSERT_SAMPLE = insert(MetricSample)
_INSERT_DRIFT = insert(DriftSample)


@dataclass(frozen=True)
class Beat:
    """One heartbeat as received: the credential it came with and its body."""

    secret: str
    body: schemas.HeartbeatIn


@dataclass
class Ingested:
    device_id: int
    device_name: str
    rollouts: list[DeviceRollout]  # the device's rollout rows after this heartbeat's transitions


@dataclass
class _DeviceNow:
    """A device row as this batch has left it so far (a device may appear twice in one batch)."""

    id: int
    name: str
    totals: dict[str, Any] | None
    models_digest: str | None
    last_seq: int
    drift: dict[str, Any] | None


def ingest_many(session: Session, beats: list[Beat], now: float, config: ServerConfig,
                references: References | None = None) -> list[Ingested | UserError]:
    """Record heartbeats in one transaction; for each, what it recorded or why it was refused (in order)."""
    conn = session.connection()
    hashes = [digest(b.secret) for b in beats]
    devices = {row.credential_hash: _DeviceNow(int(row.id), row.name, row.metric_totals, row.models_digest,
                                               int(row.last_seq), row.drift_state)
               for row in conn.execute(_DEVICES_BY_CREDENTIAL, {"hashes": sorted(set(hashes))})}
    outcomes: list[Ingested | UserError] = []
    writes: dict[int, dict[str, Any]] = {}  # device id → its row's new values (the newest heartbeat's)
    samples: list[dict[str, Any]] = []
    drift_rows: list[dict[str, Any]] = []
    package_ids = {d.package_id for b in beats for d in b.body.drift}
    package_ids |= {e["package_id"] for d in devices.values() for e in (d.drift or {}).values() if e.get("package_id")}
    refs = (references or References(config.drift_reference_ttl_s)).get_many(session, package_ids) if package_ids else {}
    accepted: list[tuple[Beat, dict[str, schemas.LoadedModelIn], Ingested]] = []  # with what each reported
    models_changed: dict[int, dict[str, schemas.LoadedModelIn]] = {}  # device id → what it now runs
    for beat, hash_ in zip(beats, hashes):
        device = devices.get(hash_)
        refusal = _refusal(beat, device)
        if refusal is not None:
            outcomes.append(refusal)
            continue
        assert device is not None
        hb = beat.body
        reported = {m.name: m for m in hb.models}
        new_samples, totals, problems = _metric_samples(session, device.id, hb, reported, device.totals, now, config)
        problems += [f"model {f.model}: package {f.package_id[:12]} refused"
                     + (f" ({f.refusal})" if f.refusal else "") + f": {f.reason}" for f in hb.failures]
        drift = fold(device.drift, hb, refs, now, config) if (hb.drift or device.drift) else None
        if drift is not None:
            problems += drift.problems
            drift_rows += [dict(row, device_id=device.id) for row in drift.rows]
        agent = {"memory": hb.memory, "capture": hb.capture, "agent_version": hb.agent_version,
                 "started_at": hb.agent_started_at, "problems": problems[:20],
                 "failures": [f.model_dump() for f in hb.failures]}
        models_digest = _models_digest(hb.models)
        if models_digest != device.models_digest:
            models_changed[device.id] = reported
        drift_state = drift.state if drift is not None else device.drift
        writes[device.id] = {"device_id": device.id, "seq": hb.seq, "now": now, "agent": agent, "totals": totals,
                             "models_digest": models_digest, "drift": drift_state}
        device.last_seq, device.totals, device.models_digest, device.drift = hb.seq, totals, models_digest, drift_state
        samples += new_samples
        ingested = Ingested(device.id, device.name, [])
        accepted.append((beat, reported, ingested))
        outcomes.append(ingested)
    if writes:
        conn.execute(_RECORD_HEARTBEAT, list(writes.values()))
    if samples:
        conn.execute(_INSERT_SAMPLE, samples)
    if drift_rows:
        conn.execute(_INSERT_DRIFT, drift_rows)
    if models_changed:
        _record_models(session, models_changed, now)
    if accepted:
        rollouts = rollouts_of_devices(session, sorted({ingested.device_id for _, _, ingested in accepted}))
        moves: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for beat, reported, ingested in accepted:  # a device twice in the batch: the second sees the first's moves
            ingested.rollouts = rollouts.get(ingested.device_id, [])
            _advance_rollout_rows(ingested.device_name, ingested.rollouts, reported, beat.body.failures, now,
                                  moves, events)
        if moves:
            conn.execute(_MOVE_ROLLOUT_ROW, moves)
            conn.execute(insert(DeploymentEvent), events)
    return outcomes


def _refusal(beat: Beat, device: _DeviceNow | None) -> UserError | None:
    """Why this heartbeat may not be recorded, or None."""
    if device is None:
        return unknown_device_credential(beat.secret)
    hb = beat.body
    if hb.device != device.name:
        return PermissionDeniedError("a device may only send heartbeats for itself", value=hb.device, field="device",
                                     expected=f"{device.name!r} (the credential's device)",
                                     fix="set [device] name in the agent config to the name it registered with")
    if hb.seq <= device.last_seq:
        return StaleRequestError("stale or replayed heartbeat: its sequence number is not newer than the last accepted",
                                 value=hb.seq, field="seq", last_seq=device.last_seq,
                                 fix=f"send seq > {device.last_seq} (the agent continues from last_seq + 1)")
    return None


def _models_digest(models: list[schemas.LoadedModelIn]) -> str:
    text = "\n".join(sorted(f"{m.name}\t{m.version}\t{m.package_id}" for m in models))
    return hashlib.sha256(text.encode()).hexdigest()


def _record_models(session: Session, reported: dict[int, dict[str, schemas.LoadedModelIn]], now: float) -> None:
    """Bring the model rows of these devices to what each now runs (a few statements for all of them)."""
    conn = session.connection()
    rows: dict[int, dict[str, tuple[int, str]]] = {device_id: {} for device_id in reported}
    for row_id, device_id, name, package in conn.execute(_MODELS_OF_DEVICES, {"device_ids": sorted(reported)}):
        rows[device_id][name] = (row_id, package)
    gone, added, changed = [], [], []
    for device_id, models in reported.items():
        gone += [row_id for name, (row_id, _) in rows[device_id].items() if name not in models]
        for name, m in models.items():
            if name not in rows[device_id]:
                added.append({"device_id": device_id, "model_name": name, "version": m.version,
                              "package_id": m.package_id, "since": now})
            elif rows[device_id][name][1] != m.package_id:
                changed.append({"row_id": rows[device_id][name][0], "new_version": m.version,
                                "new_package_id": m.package_id, "new_since": now})
    if gone:
        conn.execute(delete(DeviceModel).where(DeviceModel.id.in_(gone)))
    if added:
        conn.execute(insert(DeviceModel), added)
    if changed:
        conn.execute(_CHANGE_MODEL, changed)


def _metric_samples(session: Session, device_id: int, hb: schemas.HeartbeatIn, reported: dict[str, schemas.LoadedModelIn],
                    known: dict[str, Any] | None, now: float,
                    config: ServerConfig) -> tuple[list[dict[str, Any]], dict[str, list[int]], list[str]]:
    """The samples to insert (deltas since the last heartbeat), the new totals, and problems seen."""
    samples: list[dict[str, Any]] = []
    totals: dict[str, list[int]] = {}
    problems: list[str] = []
    for name, m in hb.metrics.items():
        last = (known or {}).get(name)
        if last is None and known is None:  # a device from before totals were kept: read its last sample
            row = session.execute(select(MetricSample.total_requests, MetricSample.total_errors)
                                  .where(MetricSample.device_id == device_id, MetricSample.model_name == name)
                                  .order_by(MetricSample.t.desc(), MetricSample.id.desc()).limit(1)).first()
            last = list(row) if row is not None else None
        # Counters restart with the agent: a total below the last one is a fresh count.
        restarted = last is None or m.requests < last[0] or m.errors < last[1]
        requests = m.requests if restarted else m.requests - last[0]  # type: ignore[index]
        errors = m.errors if restarted else m.errors - last[1]  # type: ignore[index]
        totals[name] = [m.requests, m.errors]
        samples.append({"device_id": device_id, "model_name": name,
                        "package_id": reported[name].package_id if name in reported else None, "t": now,
                        "requests": requests, "errors": errors, "total_requests": m.requests,
                        "total_errors": m.errors, "p50_ms": m.latency_ms.p50, "p95_ms": m.latency_ms.p95,
                        "p99_ms": m.latency_ms.p99})
        if requests >= DEGRADED_MIN_REQUESTS and errors / requests > config.degraded_error_rate:
            problems.append(f"model {name}: error rate {errors / requests:.1%} over the last {requests} requests")
    return samples, totals, problems


def _advance_rollout_rows(device_name: str, rollouts: list[DeviceRollout], reported: dict[str, schemas.LoadedModelIn],
                          failures: list[schemas.ApplyFailureIn], now: float,
                          moves: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Assigned rows become updated when the device runs their package, failed when it refused it
    (``rollouts`` is updated in place; the row updates and their events are added to ``moves`` and
    ``events``, written by the caller for the whole batch)."""
    failed = {(f.model, f.package_id): f for f in failures}
    for r in rollouts:
        if r.state != "assigned":
            continue
        name, version = r.version.model, r.version
        running = reported.get(name)
        if running is not None and running.package_id == version.package_id:
            r.state = "updated"
            moves.append({"row_id": r.row_id, "new_state": "updated", "new_updated_at": now, "new_reason": None})
            events.append({"deployment_id": r.deployment_id, "at": now, "kind": "device_updated",
                           "message": f"{device_name} runs {name} {version.version}"})
        elif (name, version.package_id) in failed:
            failure = failed[(name, version.package_id)]
            r.state = "failed"
            reason = (f"{failure.refusal}: " if failure.refusal else "") + failure.reason
            moves.append({"row_id": r.row_id, "new_state": "failed", "new_updated_at": now, "new_reason": reason})
            events.append({"deployment_id": r.deployment_id, "at": now, "kind": "device_failed",
                           "message": f"{device_name} could not apply {name} {version.version}: {reason}"})
