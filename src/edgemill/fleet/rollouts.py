"""Carrying out rollout decisions on the database: the shell around the pure :mod:`rollout` core.

Each step reads a deployment and its devices, asks :func:`rollout.decide`, and applies the decision in
the same transaction, guarded by the deployment's ``rev`` so two replicas never apply one step twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .config import ServerConfig
from .db.tables import Deployment, DeploymentDevice, DeploymentEvent, DeviceModel, MetricSample, ModelVersion
from .desired import desired_versions
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
    rows = session.scalars(select(DeploymentDevice).where(DeploymentDevice.deployment_id == deployment.id)
                           .order_by(DeploymentDevice.position)).all()
    name, package = deployment.version.model.name, deployment.version.package_id
    views = []
    for dd in rows:
        requests = errors = 0
        p95 = None
        if dd.state == "updated" and dd.updated_at is not None:
            # Samples strictly after the update: the one that reported the swap also counts requests
            # served by the old version.
            requests, errors, p95 = session.execute(
                select(func.coalesce(func.sum(MetricSample.requests), 0), func.coalesce(func.sum(MetricSample.errors), 0),
                       func.max(MetricSample.p95_ms))
                .where(MetricSample.device_id == dd.device_id, MetricSample.model_name == name,
                       MetricSample.package_id == package, MetricSample.t > dd.updated_at)).one()
        seen = dd.device.last_seen_at
        views.append(DeviceView(name=dd.device.name, wave=dd.wave, state=dd.state,
                                online=seen is not None and now - seen <= config.offline_after_s,
                                updated_at=dd.updated_at, requests=int(requests), errors=int(errors),
                                p95_ms=None if p95 is None else float(p95), failure=dd.reason))
    return views


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
    wanted = set(decision.devices)
    rows = [dd for dd in session.scalars(select(DeploymentDevice).where(DeploymentDevice.deployment_id == deployment.id))
            if dd.device.name in wanted and dd.state == "pending"]
    bump(session, deployment, now, wave=decision.wave, wave_started_at=now, reason=decision.reason)
    for dd in rows:
        dd.previous_version_id = _previous_version(session, dd.device_id, deployment)
        dd.state, dd.wave, dd.assigned_at = "assigned", decision.wave, now
    label = "canary" if decision.wave == 0 else f"wave {decision.wave}"
    event(session, deployment.id, now, "wave_started",
          f"{label}: {', '.join(sorted(wanted))}" + (f" ({decision.reason})" if decision.reason else ""))
    log.info("deployment %d: %s assigned to %s", deployment.id, label, ", ".join(sorted(wanted)))


def _previous_version(session: Session, device_id: int, deployment: Deployment) -> int | None:
    """What a rollback returns the device to: what the control plane told it to run, else the
    registered version it reports running (placed by hand, or before it joined the fleet)."""
    before = desired_versions(session, device_id).get(deployment.model_id)
    if before is not None:
        return before[0].id
    running = session.scalar(select(DeviceModel.package_id).where(DeviceModel.device_id == device_id,
                                                                  DeviceModel.model_name == deployment.version.model.name))
    if running is None:
        return None
    return session.scalar(select(ModelVersion.id).where(ModelVersion.model_id == deployment.model_id,
                                                        ModelVersion.package_id == running).limit(1))


def roll_back(session: Session, deployment: Deployment, now: float, reason: str, kind: str) -> int:
    """Send every device already given the version back to what it ran before; the rest never get it."""
    bump(session, deployment, now, state="rolled_back", reason=reason)
    moved = 0
    for dd in session.scalars(select(DeploymentDevice).where(DeploymentDevice.deployment_id == deployment.id,
                                                             DeploymentDevice.state.in_(("assigned", "updated", "failed")))):
        dd.state = "rolled_back"
        moved += 1
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
