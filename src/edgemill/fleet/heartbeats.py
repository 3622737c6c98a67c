"""Taking in a heartbeat: sequence check, last seen, what runs, metric deltas, apply outcomes.

All in one transaction. The sequence check is a conditional UPDATE, so two copies of one heartbeat
arriving at two replicas at once cannot both pass.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..errors import PermissionDeniedError, StaleRequestError
from . import schemas
from .config import ServerConfig
from .db.tables import Deployment, DeploymentDevice, DeploymentEvent, Device, DeviceModel, MetricSample, ModelVersion

DEGRADED_MIN_REQUESTS = 10  # fewer requests in one heartbeat say too little about an error rate


def ingest(session: Session, device_id: int, hb: schemas.HeartbeatIn, now: float, config: ServerConfig) -> Device:
    device = session.get(Device, device_id)
    assert device is not None  # the credential resolved to it in this request
    if hb.device != device.name:
        raise PermissionDeniedError("a device may only send heartbeats for itself", value=hb.device, field="device",
                                    expected=f"{device.name!r} (the credential's device)",
                                    fix="set [device] name in the agent config to the name it registered with")
    moved = session.execute(update(Device).where(Device.id == device_id, Device.last_seq < hb.seq)
                            .values(last_seq=hb.seq, last_seen_at=now)).rowcount
    if not moved:
        session.refresh(device)
        raise StaleRequestError("stale or replayed heartbeat: its sequence number is not newer than the last accepted",
                                value=hb.seq, field="seq", last_seq=device.last_seq,
                                fix=f"send seq > {device.last_seq} (the agent continues from last_seq + 1)")
    reported = {m.name: m for m in hb.models}
    _record_models(session, device_id, reported, now)
    problems = _record_metrics(session, device_id, hb, reported, now, config)
    problems += [f"model {f.model}: package {f.package_id[:12]} refused"
                 + (f" ({f.refusal})" if f.refusal else "") + f": {f.reason}" for f in hb.failures]
    _advance_rollout_rows(session, device_id, reported, hb.failures, now)
    session.refresh(device)
    device.agent = {"memory": hb.memory, "capture": hb.capture, "agent_version": hb.agent_version,
                    "started_at": hb.agent_started_at, "problems": problems[:20],
                    "failures": [f.model_dump() for f in hb.failures]}
    return device


def _record_models(session: Session, device_id: int, reported: dict[str, schemas.LoadedModelIn], now: float) -> None:
    rows = {r.model_name: r for r in session.scalars(select(DeviceModel).where(DeviceModel.device_id == device_id))}
    for name, row in rows.items():
        if name not in reported:
            session.delete(row)
    for name, m in reported.items():
        row = rows.get(name)
        if row is None:
            session.add(DeviceModel(device_id=device_id, model_name=name, version=m.version, package_id=m.package_id, since=now))
        elif row.package_id != m.package_id:
            row.version, row.package_id, row.since = m.version, m.package_id, now


def _record_metrics(session: Session, device_id: int, hb: schemas.HeartbeatIn,
                    reported: dict[str, schemas.LoadedModelIn], now: float, config: ServerConfig) -> list[str]:
    problems: list[str] = []
    for name, m in hb.metrics.items():
        last = session.scalar(select(MetricSample).where(MetricSample.device_id == device_id, MetricSample.model_name == name)
                              .order_by(MetricSample.t.desc(), MetricSample.id.desc()).limit(1))
        # Counters restart with the agent: a total below the last one is a fresh count.
        restarted = last is None or m.requests < last.total_requests or m.errors < last.total_errors
        requests = m.requests if restarted else m.requests - last.total_requests  # type: ignore[union-attr]
        errors = m.errors if restarted else m.errors - last.total_errors  # type: ignore[union-attr]
        package = reported[name].package_id if name in reported else None
        session.add(MetricSample(device_id=device_id, model_name=name, package_id=package, t=now, requests=requests,
                                 errors=errors, total_requests=m.requests, total_errors=m.errors,
                                 p50_ms=m.latency_ms.p50, p95_ms=m.latency_ms.p95, p99_ms=m.latency_ms.p99))
        if requests >= DEGRADED_MIN_REQUESTS and errors / requests > config.degraded_error_rate:
            problems.append(f"model {name}: error rate {errors / requests:.1%} over the last {requests} requests")
    return problems


def _advance_rollout_rows(session: Session, device_id: int, reported: dict[str, schemas.LoadedModelIn],
                          failures: list[schemas.ApplyFailureIn], now: float) -> None:
    """Assigned rows become updated when the device runs their package, failed when it refused it."""
    failed = {(f.model, f.package_id): f for f in failures}
    rows = session.execute(
        select(DeploymentDevice, Deployment, ModelVersion)
        .join(Deployment, DeploymentDevice.deployment_id == Deployment.id)
        .join(ModelVersion, Deployment.version_id == ModelVersion.id)
        .where(DeploymentDevice.device_id == device_id, DeploymentDevice.state == "assigned")).all()
    for dd, deployment, version in rows:
        name = version.model.name
        running = reported.get(name)
        if running is not None and running.package_id == version.package_id:
            dd.state, dd.updated_at, dd.reason = "updated", now, None
            session.add(DeploymentEvent(deployment_id=deployment.id, at=now, kind="device_updated",
                                        message=f"{dd.device.name} runs {name} {version.version}"))
        elif (name, version.package_id) in failed:
            failure = failed[(name, version.package_id)]
            dd.state, dd.updated_at = "failed", now
            dd.reason = (f"{failure.refusal}: " if failure.refusal else "") + failure.reason
            session.add(DeploymentEvent(deployment_id=deployment.id, at=now, kind="device_failed",
                                        message=f"{dd.device.name} could not apply {name} {version.version}: {dd.reason}"))
