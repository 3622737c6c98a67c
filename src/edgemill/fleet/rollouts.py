"""Carrying out rollout decisions on the database: the shell around the pure :mod:`rollout` core.

Each step reads a deployment and its devices, asks :func:`rollout.decide`, and applies the decision in
the same transaction, guarded by the deployment's ``rev`` so two replicas never apply one step twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .config import ServerConfig
from .db.tables import Deployment, DeploymentDevice, DeploymentEvent, Device, DeviceModel, MetricSample, ModelVersion
from .desired import stamp_changed
from .rollout import Decision, DeviceView, RolloutView, decide
from .schemas import Strategy

log = logging.getLogger("edgemill.server")


class LostRace(Exception):
    """Another replica changed the deployment first; this step is dropped (it will be recomputed)."""


def event(session: Session, deployment_id: int, now: float, kind: str, message: str) -> None:
    session.add(DeploymentEvent(deployment_id=deployment_id, at=now, kind=kind, message=message))


def bump(session: Session, deployment: Deployment, now: float, **values: object) -> None:
    moved = session.execute(update(Deployment).where(Deployment.id == deployment.id, Deployment.rev == deployment.rev)
                            .values(rev=deployment.rev + 1, updated_at=now, **values)).rowcount
    if not moved:
        raise LostRace(deployment.id)
    session.expire(deployment)


def device_views(session: Session, deployment: Deployment, now: float, config: ServerConfig) -> list[DeviceView]:
    # Columns, not ORM objects: a tick over a 10,000-device deployment reads 10,000 small tuples.
    rows = session.execute(
        select(DeploymentDevice.id, DeploymentDevice.wave, DeploymentDevice.state, DeploymentDevice.updated_at,
               DeploymentDevice.reason, Device.name, Device.last_seen_at)
        .join(Device, Device.id == DeploymentDevice.device_id)
        .where(DeploymentDevice.deployment_id == deployment.id).order_by(DeploymentDevice.position)).all()
    measured = _since_update(session, deployment)
    views = []
    for row_id, wave, state, updated_at, reason, name, seen in rows:
        requests, errors, p95 = 0, 0, None
        if state == "updated" and updated_at is not None:
            requests, errors, p95 = measured.get(row_id, (0, 0, None))
        views.append(DeviceView(name=name, wave=wave, state=state,
                                online=seen is not None and now - seen <= config.offline_after_s,
                                updated_at=updated_at, requests=requests, errors=errors, p95_ms=p95, failure=reason))
    return views


def _since_update(session: Session, deployment: Deployment) -> dict[int, tuple[int, int, float | None]]:
    """Requests, errors and worst p95 of the deployment's version on each updated device, from the
    samples strictly after its update (the one that reported the swap also counts requests served by
    the old version): one grouped query for all devices, keyed by deployment-device row id. Rows with
    no such sample are absent (read as 0, 0, None)."""
    version = deployment.version
    rows = session.execute(
        select(DeploymentDevice.id, func.coalesce(func.sum(MetricSample.requests), 0),
               func.coalesce(func.sum(MetricSample.errors), 0), func.max(MetricSample.p95_ms))
        .join(MetricSample, MetricSample.device_id == DeploymentDevice.device_id)
        .where(DeploymentDevice.deployment_id == deployment.id, DeploymentDevice.state == "updated",
               DeploymentDevice.updated_at.is_not(None), MetricSample.model_name == version.model.name,
               MetricSample.package_id == version.package_id, MetricSample.t > DeploymentDevice.updated_at)
        .group_by(DeploymentDevice.id))
    return {row_id: (int(requests), int(errors), None if p95 is None else float(p95))
            for row_id, requests, errors, p95 in rows}


def step(session: Session, deployment: Deployment, now: float, config: ServerConfig) -> Decision:
    """Decide and apply one step of a rolling deployment."""
    view = RolloutView(state=deployment.state, wave=deployment.wave, wave_started_at=deployment.wave_started_at,
                       strategy=Strategy.model_validate(deployment.strategy))
    decision = decide(view, device_views(session, deployment, now, config), now)
    if decision.action == "assign":
        assign(session, deployment, decision, now)
    elif decision.action == "succeed":
        bump(session, deployment, now, state="succeeded", reason=decision.reason)
        event(session, deployment.id, now, "succeeded", decision.reason or "every device runs the new version")
        log.info("deployment %d succeeded", deployment.id)
    elif decision.action == "rollback":
        roll_back(session, deployment, now, decision.reason, kind="rolled_back")
    elif decision.reason and decision.reason != deployment.reason:
        bump(session, deployment, now, reason=decision.reason)
    return decision


def assign(session: Session, deployment: Deployment, decision: Decision, now: float) -> None:
    """Take the decision's devices into its wave: a constant number of statements, whatever its size."""
    wanted = set(decision.devices)
    rows = [dd for dd, name in session.execute(
        select(DeploymentDevice, Device.name).join(Device, DeploymentDevice.device_id == Device.id)
        .where(DeploymentDevice.deployment_id == deployment.id, DeploymentDevice.state == "pending"))
        if name in wanted]
    bump(session, deployment, now, wave=decision.wave, wave_started_at=now, reason=decision.reason)
    previous = previous_versions(session, [dd.device_id for dd in rows], deployment)
    for dd in rows:
        dd.previous_version_id = previous.get(dd.device_id)
        dd.state, dd.wave, dd.assigned_at = "assigned", decision.wave, now
    stamp_changed(session, (dd.device_id for dd in rows), now)
    label = "canary" if decision.wave == 0 else f"wave {decision.wave}"
    names = sorted(wanted)
    listed = ", ".join(names[:EVENT_NAMES]) + (f" and {len(names) - EVENT_NAMES} more" if len(names) > EVENT_NAMES else "")
    event(session, deployment.id, now, "wave_started",
          f"{label}: {listed}" + (f" ({decision.reason})" if decision.reason else ""))
    log.info("deployment %d: %s assigned to %d device(s): %s", deployment.id, label, len(names), listed)


EVENT_NAMES = 20  # devices named in a wave's event; the rest are counted


def previous_versions(session: Session, device_ids: list[int], deployment: Deployment) -> dict[int, int]:
    """What a rollback returns each device to: what the control plane last told it to run for this
    model, else the registered version it reports running (placed by hand, or before it joined the
    fleet). Devices with neither are absent."""
    out: dict[int, int] = {}
    decided: set[int] = set()
    model_name = deployment.version.model.name
    for start in range(0, len(device_ids), CHUNK):
        chunk = device_ids[start:start + CHUNK]
        told = session.execute(
            select(DeploymentDevice.device_id, DeploymentDevice.state, DeploymentDevice.previous_version_id,
                   Deployment.version_id)
            .join(Deployment, DeploymentDevice.deployment_id == Deployment.id)
            .where(DeploymentDevice.device_id.in_(chunk), Deployment.model_id == deployment.model_id,
                   Deployment.id != deployment.id, DeploymentDevice.state != "pending")
            .order_by(Deployment.id.desc()))
        for device_id, state, previous_id, version_id in told:
            if device_id in decided:
                continue
            decided.add(device_id)  # the newest deployment that took the device in decides
            chosen = version_id if state in ("assigned", "updated") else previous_id
            if chosen is not None:
                out[device_id] = chosen
        running = dict(session.execute(select(DeviceModel.device_id, DeviceModel.package_id)
                                       .where(DeviceModel.device_id.in_([d for d in chunk if d not in out]),
                                              DeviceModel.model_name == model_name)).all())
        if running:
            registered = dict(session.execute(select(ModelVersion.package_id, func.min(ModelVersion.id))
                                              .where(ModelVersion.model_id == deployment.model_id,
                                                     ModelVersion.package_id.in_(set(running.values())))
                                              .group_by(ModelVersion.package_id)).all())
            out.update({d: registered[p] for d, p in running.items() if p in registered})
    return out


CHUNK = 1000  # ids per IN (...) list


def roll_back(session: Session, deployment: Deployment, now: float, reason: str, kind: str) -> int:
    """Send every device already given the version back to what it ran before; the rest never get it."""
    bump(session, deployment, now, state="rolled_back", reason=reason)
    affected = session.scalars(select(DeploymentDevice.device_id).where(
        DeploymentDevice.deployment_id == deployment.id,
        DeploymentDevice.state.in_(("assigned", "updated", "failed")))).all()
    session.execute(update(DeploymentDevice).where(DeploymentDevice.deployment_id == deployment.id,
                                                   DeploymentDevice.state.in_(("assigned", "updated", "failed")))
                    .values(state="rolled_back"))
    stamp_changed(session, affected, now)
    moved = len(affected)
    event(session, deployment.id, now, kind, f"{reason}; {moved} device(s) sent back to their previous version")
    log.warning("deployment %d rolled back: %s", deployment.id, reason)
    return moved


def advance_all(db, now: float, config: ServerConfig) -> int:  # type: ignore[no-untyped-def]
    """One pass over every rolling deployment; returns how many changed."""
    with db.session() as session:
        ids = session.scalars(select(Deployment.id).where(Deployment.state == "rolling")).all()
    changed = 0
    for deployment_id in ids:
        try:
            with db.session() as session:
                deployment = session.get(Deployment, deployment_id)
                if deployment is None or deployment.state != "rolling":
                    continue
                if step(session, deployment, now, config).action != "wait":
                    changed += 1
        except LostRace:
            continue
    return changed
