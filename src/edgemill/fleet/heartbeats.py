"""Taking in a heartbeat: sequence check, last seen, what runs, metric deltas, apply outcomes.

All in one transaction, in a handful of statements whatever the fleet's size (a heartbeat is the
control plane's hot path: 10,000 devices every 30 s is 333 a second). The sequence check is a
conditional UPDATE, so two copies of one heartbeat arriving at two replicas at once cannot both pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from ..errors import PermissionDeniedError, StaleRequestError
from . import schemas
from .auth import digest, unknown_device_credential
from .config import ServerConfig
from .db.tables import DeploymentDevice, DeploymentEvent, Device, DeviceModel, MetricSample
from .desired import DeviceRollout, device_rollouts

DEGRADED_MIN_REQUESTS = 10  # fewer requests in one heartbeat say too little about an error rate

# The hot path's statements, built once and run on the session's connection (no ORM objects).
_DEVICE_BY_CREDENTIAL = select(Device.id, Device.name, Device.metric_totals, Device.models_digest).where(
    Device.credential_hash == bindparam("hash"))
_RECORD_HEARTBEAT = (update(Device).where(Device.id == bindparam("device_id"), Device.last_seq < bindparam("seq"))
                     .values(last_seq=bindparam("seq"), last_seen_at=bindparam("now"),
                             models_digest=bindparam("models_digest"), agent=bindparam("agent", type_=Device.agent.type),
                             metric_totals=bindparam("totals", type_=Device.metric_totals.type)))
_DEVICE_MODELS = select(DeviceModel.id, DeviceModel.model_name, DeviceModel.package_id).where(
    DeviceModel.device_id == bindparam("device_id"))
_INSERT_SAMPLE = insert(MetricSample)


@dataclass
class Ingested:
    device_id: int
    device_name: str
    rollouts: list[DeviceRollout]  # the device's rollout rows after this heartbeat's transitions


def ingest(session: Session, secret: str, hb: schemas.HeartbeatIn, now: float, config: ServerConfig) -> Ingested:
    """Record one heartbeat from the device whose credential is ``secret``: one read (which is also
    the authentication) and one conditional write of the device row, the model rows only when the
    reported models changed, one batched insert of metric samples, one read of the device's rollout rows."""
    conn = session.connection()
    device = conn.execute(_DEVICE_BY_CREDENTIAL, {"hash": digest(secret)}).first()
    if device is None:
        raise unknown_device_credential(secret)
    device_id = int(device.id)
    if hb.device != device.name:
        raise PermissionDeniedError("a device may only send heartbeats for itself", value=hb.device, field="device",
                                    expected=f"{device.name!r} (the credential's device)",
                                    fix="set [device] name in the agent config to the name it registered with")
    reported = {m.name: m for m in hb.models}
    samples, totals, problems = _metric_samples(session, device_id, hb, reported, device.metric_totals, now, config)
    problems += [f"model {f.model}: package {f.package_id[:12]} refused"
                 + (f" ({f.refusal})" if f.refusal else "") + f": {f.reason}" for f in hb.failures]
    agent = {"memory": hb.memory, "capture": hb.capture, "agent_version": hb.agent_version,
             "started_at": hb.agent_started_at, "problems": problems[:20],
             "failures": [f.model_dump() for f in hb.failures]}
    # The sequence check is the WHERE clause: of two copies of one heartbeat, one moves the row.
    # (Totals were read before this write; an agent never sends two heartbeats at once, so the read
    # is the previous heartbeat's.)
    models_digest = _models_digest(hb.models)
    moved = conn.execute(_RECORD_HEARTBEAT, {"device_id": device_id, "seq": hb.seq, "now": now, "agent": agent,
                                             "totals": totals, "models_digest": models_digest}).rowcount
    if not moved:
        last_seq = session.scalar(select(Device.last_seq).where(Device.id == device_id))
        raise StaleRequestError("stale or replayed heartbeat: its sequence number is not newer than the last accepted",
                                value=hb.seq, field="seq", last_seq=last_seq,
                                fix=f"send seq > {last_seq} (the agent continues from last_seq + 1)")
    if models_digest != device.models_digest:
        _record_models(session, device_id, reported, now)
    if samples:
        conn.execute(_INSERT_SAMPLE, samples)
    rollouts = device_rollouts(session, device_id)
    _advance_rollout_rows(session, device.name, rollouts, reported, hb.failures, now)
    return Ingested(device_id, device.name, rollouts)


def _models_digest(models: list[schemas.LoadedModelIn]) -> str:
    text = "\n".join(sorted(f"{m.name}\t{m.version}\t{m.package_id}" for m in models))
    return hashlib.sha256(text.encode()).hexdigest()


def _record_models(session: Session, device_id: int, reported: dict[str, schemas.LoadedModelIn], now: float) -> None:
    conn = session.connection()
    rows = {name: (row_id, package) for row_id, name, package in conn.execute(_DEVICE_MODELS, {"device_id": device_id})}
    gone = [row_id for name, (row_id, _) in rows.items() if name not in reported]
    if gone:
        conn.execute(delete(DeviceModel).where(DeviceModel.id.in_(gone)))
    for name, m in reported.items():
        if name not in rows:
            conn.execute(insert(DeviceModel).values(device_id=device_id, model_name=name, version=m.version,
                                                    package_id=m.package_id, since=now))
        elif rows[name][1] != m.package_id:
            conn.execute(update(DeviceModel).where(DeviceModel.id == rows[name][0])
                         .values(version=m.version, package_id=m.package_id, since=now))


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


def _advance_rollout_rows(session: Session, device_name: str, rollouts: list[DeviceRollout],
                          reported: dict[str, schemas.LoadedModelIn], failures: list[schemas.ApplyFailureIn],
                          now: float) -> None:
    """Assigned rows become updated when the device runs their package, failed when it refused it."""
    failed = {(f.model, f.package_id): f for f in failures}
    for r in rollouts:
        if r.state != "assigned":
            continue
        name, version = r.version.model, r.version
        running = reported.get(name)
        if running is not None and running.package_id == version.package_id:
            r.state = "updated"
            session.execute(update(DeploymentDevice).where(DeploymentDevice.id == r.row_id)
                            .values(state="updated", updated_at=now, reason=None))
            session.add(DeploymentEvent(deployment_id=r.deployment_id, at=now, kind="device_updated",
                                        message=f"{device_name} runs {name} {version.version}"))
        elif (name, version.package_id) in failed:
            failure = failed[(name, version.package_id)]
            r.state = "failed"
            reason = (f"{failure.refusal}: " if failure.refusal else "") + failure.reason
            session.execute(update(DeploymentDevice).where(DeploymentDevice.id == r.row_id)
                            .values(state="failed", updated_at=now, reason=reason))
            session.add(DeploymentEvent(deployment_id=r.deployment_id, at=now, kind="device_failed",
                                        message=f"{device_name} could not apply {name} {version.version}: {reason}"))
