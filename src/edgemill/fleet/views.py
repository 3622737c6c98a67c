"""Rows to API bodies (schemas.*): one place that decides how a record is shown."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import schemas
from .config import ServerConfig
from .db.tables import Alert, Deployment, DeploymentDevice, DeploymentEvent, Device, DeviceModel, ModelVersion, WebhookDelivery


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def device_status(device: Device, now: float, config: ServerConfig) -> str:
    if device.last_seen_at is None:
        return "never_seen"
    if now - device.last_seen_at > config.offline_after_s:
        return "offline"
    return "degraded" if device.agent.get("problems") else "online"


def device_out(session: Session, device: Device, now: float, config: ServerConfig) -> schemas.DeviceOut:
    models = session.scalars(select(DeviceModel).where(DeviceModel.device_id == device.id)
                             .order_by(DeviceModel.model_name)).all()
    agent = {k: v for k, v in device.agent.items() if k != "problems"}
    return schemas.DeviceOut(
        name=device.name, fleet=device.fleet.name, tags=device.tags or {}, status=device_status(device, now, config),  # type: ignore[arg-type]
        registered_at=ts(device.registered_at), last_seen_at=ts(device.last_seen_at),  # type: ignore[arg-type]
        models=[schemas.DeviceModelOut(name=m.model_name, version=m.version, package_id=m.package_id) for m in models],
        problems=list(device.agent.get("problems", [])), agent=agent)


def _tensors(specs: list[dict[str, Any]]) -> list[schemas.TensorOut]:
    return [schemas.TensorOut(name=s.get("name", ""), dtype=s.get("dtype", ""), shape=list(s.get("shape", [])))
            for s in specs]


def version_out(v: ModelVersion) -> schemas.VersionOut:
    m = v.manifest
    target = m.get("target", {})
    return schemas.VersionOut(
        model=v.model.name, version=v.version, package_id=v.package_id, stage=v.stage,  # type: ignore[arg-type]
        target=target.get("name", "") if isinstance(target, dict) else str(target),
        backend=m.get("backend", ""), precision=m.get("precision", ""), size_bytes=v.size_bytes, signer=v.signer,
        source=m.get("source", {}), inputs=_tensors(m.get("inputs", [])), outputs=_tensors(m.get("outputs", [])),
        created_at=ts(v.created_at), uploaded_by=v.uploaded_by)  # type: ignore[arg-type]


def deployment_out(session: Session, d: Deployment, detail: bool = True) -> schemas.DeploymentOut:
    rows = session.scalars(select(DeploymentDevice).where(DeploymentDevice.deployment_id == d.id)
                           .order_by(DeploymentDevice.position)).all()
    versions = {v.id: v.version for v in session.scalars(select(ModelVersion).where(
        ModelVersion.id.in_({r.previous_version_id for r in rows if r.previous_version_id is not None})))}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    events = session.scalars(select(DeploymentEvent).where(DeploymentEvent.deployment_id == d.id)
                             .order_by(DeploymentEvent.id)).all() if detail else []
    return schemas.DeploymentOut(
        id=d.id, model=d.version.model.name, version=d.version.version, fleet=d.fleet.name, tags=d.tags or {},
        strategy=schemas.Strategy.model_validate(d.strategy), state=d.state,  # type: ignore[arg-type]
        wave=d.wave, waves=d.waves, reason=d.reason, created_at=ts(d.created_at), updated_at=ts(d.updated_at),  # type: ignore[arg-type]
        counts=counts,
        devices=[schemas.DeploymentDeviceOut(
            device=r.device.name, wave=r.wave, state=r.state,  # type: ignore[arg-type]
            previous_version=versions.get(r.previous_version_id) if r.previous_version_id else None,
            updated_at=ts(r.updated_at), reason=r.reason) for r in rows] if detail else [],
        events=[schemas.DeploymentEventOut(at=ts(e.at), kind=e.kind, message=e.message) for e in events])  # type: ignore[arg-type]


def alert_out(session: Session, a: Alert) -> schemas.AlertOut:
    deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.alert_id == a.id)
                                 .order_by(WebhookDelivery.id)).all()
    webhook: dict[str, Any] = {"deliveries": len(deliveries),
                               "delivered": sum(1 for w in deliveries if w.delivered_at is not None),
                               "attempts": sum(w.attempts for w in deliveries),
                               "gave_up": sum(1 for w in deliveries if w.gave_up),
                               "last_error": next((w.last_error for w in reversed(deliveries) if w.last_error), None)}
    return schemas.AlertOut(id=a.id, rule=a.rule.name, metric=a.rule.metric, state=a.state,  # type: ignore[arg-type]
                            value=a.value, threshold=a.rule.threshold, started_at=ts(a.started_at),  # type: ignore[arg-type]
                            resolved_at=ts(a.resolved_at), message=a.message, webhook=webhook)


def count(session: Session, stmt: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
