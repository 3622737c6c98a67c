"""Rows to API bodies (schemas.*): one place that decides how a record is shown."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, and_, case, cast, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
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


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def has_problems_sql(dialect: str) -> ColumnElement[bool]:
    """SQL for the truth of ``device.agent.get("problems")``: a non-empty list (heartbeats write a list)."""
    if dialect == "postgresql":
        problems = cast(Device.agent, PG_JSON)["problems"]
        return case((func.json_typeof(problems) == "array", func.json_array_length(problems)), else_=0) > 0
    return func.coalesce(func.json_array_length(Device.agent, "$.problems"), 0) > 0


def device_status_sql(dialect: str, now: float, config: ServerConfig) -> ColumnElement[str]:
    """:func:`device_status` as a SQL expression over ``devices``, the same tests in the same order
    (and the same float arithmetic), so the database can filter and count by status."""
    return case((Device.last_seen_at.is_(None), "never_seen"),
                (literal(now) - Device.last_seen_at > config.offline_after_s, "offline"),
                (has_problems_sql(dialect), "degraded"), else_="online")


def status_counts(session: Session, now: float, config: ServerConfig, *where: Any) -> dict[str, int]:
    """Devices by status (every status present, zeros included), counted by the database; ``where``
    narrows the devices (a fleet scope)."""
    by_status = select(device_status_sql(dialect_of(session), now, config).label("status")).where(*where).subquery()
    counts = {s: 0 for s in ("online", "offline", "degraded", "never_seen")}
    counts.update({s: int(n) for s, n in session.execute(
        select(by_status.c.status, func.count()).group_by(by_status.c.status))})
    return counts


def device_tag_sql(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """SQL for ``device.tags.get(key) == value``. The key is a bound value, never part of a JSON path,
    so any key (quotes, dots, ``$``) is matched as written."""
    if dialect == "postgresql":
        return cast(Device.tags, PG_JSON)[key].astext == value
    pairs = func.json_each(Device.tags).table_valued("key", "value", "type").alias("tag")
    return exists(select(1).select_from(pairs).where(
        and_(pairs.c.key == key, pairs.c.type == "text", pairs.c.value == value)))


def device_out(session: Session, device: Device, now: float, config: ServerConfig) -> schemas.DeviceOut:
    return devices_out(session, [device], now, config)[0]


def devices_out(session: Session, devices: Sequence[Device], now: float, config: ServerConfig) -> list[schemas.DeviceOut]:
    """Many devices in one read of their models (a query per device does not hold 10,000 devices).
    Callers pass at most a page of devices (list_devices caps it at 5,000, under both databases'
    bound-parameter limits)."""
    models: dict[int, list[DeviceModel]] = defaultdict(list)
    if devices:
        for m in session.scalars(select(DeviceModel).where(DeviceModel.device_id.in_([d.id for d in devices]))
                                 .order_by(DeviceModel.device_id, DeviceModel.model_name)):
            models[m.device_id].append(m)
    return [_device_out(d, models[d.id], now, config) for d in devices]


def _device_out(device: Device, models: list[DeviceModel], now: float, config: ServerConfig) -> schemas.DeviceOut:
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


def deployment_out(session: Session, d: Deployment) -> schemas.DeploymentOut:
    """One deployment with every device's row and its events (the summaries leave both out)."""
    # Columns, not ORM objects: a 10,000-device deployment is read on every poll of its page.
    rows = session.execute(
        select(Device.name, DeploymentDevice.wave, DeploymentDevice.state, DeploymentDevice.previous_version_id,
               DeploymentDevice.updated_at, DeploymentDevice.reason)
        .join(Device, Device.id == DeploymentDevice.device_id)
        .where(DeploymentDevice.deployment_id == d.id).order_by(DeploymentDevice.position)).all()
    previous_ids = {r.previous_version_id for r in rows if r.previous_version_id is not None}
    versions = dict(session.execute(select(ModelVersion.id, ModelVersion.version)
                                    .where(ModelVersion.id.in_(previous_ids))).all()) if previous_ids else {}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    events = session.scalars(select(DeploymentEvent).where(DeploymentEvent.deployment_id == d.id)
                             .order_by(DeploymentEvent.id)).all()
    return _deployment_out(d, counts, [schemas.DeploymentDeviceOut(
        device=r.name, wave=r.wave, state=r.state,  # type: ignore[arg-type]
        previous_version=versions.get(r.previous_version_id) if r.previous_version_id else None,
        updated_at=ts(r.updated_at), reason=r.reason) for r in rows],  # type: ignore[arg-type]
        [schemas.DeploymentEventOut(at=ts(e.at), kind=e.kind, message=e.message) for e in events])  # type: ignore[arg-type]


def deployment_summaries(session: Session, deployments: Sequence[Deployment]) -> list[schemas.DeploymentOut]:
    """Deployments with their device counts by state and no per-device rows or events: one grouped
    query for all of them, whatever the number of devices."""
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    if deployments:
        for deployment_id, state, n in session.execute(
                select(DeploymentDevice.deployment_id, DeploymentDevice.state, func.count())
                .where(DeploymentDevice.deployment_id.in_([d.id for d in deployments]))
                .group_by(DeploymentDevice.deployment_id, DeploymentDevice.state)
                .order_by(DeploymentDevice.deployment_id, DeploymentDevice.state)):
            counts[deployment_id][state] = int(n)
    return [_deployment_out(d, counts[d.id], [], []) for d in deployments]


def _deployment_out(d: Deployment, counts: dict[str, int], devices: list[schemas.DeploymentDeviceOut],
                    events: list[schemas.DeploymentEventOut]) -> schemas.DeploymentOut:
    return schemas.DeploymentOut(
        id=d.id, model=d.version.model.name, version=d.version.version, fleet=d.fleet.name, tags=d.tags or {},
        strategy=schemas.Strategy.model_validate(d.strategy), state=d.state,  # type: ignore[arg-type]
        wave=d.wave, waves=d.waves, reason=d.reason, created_at=ts(d.created_at), updated_at=ts(d.updated_at),  # type: ignore[arg-type]
        counts=counts, devices=devices, events=events)


def alert_out(session: Session, a: Alert) -> schemas.AlertOut:
    return alerts_out(session, [a])[0]


def alerts_out(session: Session, alerts: Sequence[Alert]) -> list[schemas.AlertOut]:
    """Alerts with their webhook delivery summaries, read in one query for all of them."""
    deliveries: dict[int, list[WebhookDelivery]] = defaultdict(list)
    if alerts:
        for w in session.scalars(select(WebhookDelivery).where(WebhookDelivery.alert_id.in_([a.id for a in alerts]))
                                 .order_by(WebhookDelivery.id)):
            deliveries[w.alert_id].append(w)
    return [_alert_out(a, deliveries[a.id]) for a in alerts]


def _alert_out(a: Alert, deliveries: list[WebhookDelivery]) -> schemas.AlertOut:
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
