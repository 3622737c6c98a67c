"""What a device should run: derived from deployments on every read, never cached in memory.

For each model, the newest deployment that has taken this device into a wave decides:
assigned/updated → that deployment's version; failed/rolled_back → the version the device was told
to run before it (an explicit rollback, so the agent accepts an older version); none before → the
model is not desired.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import schemas
from .db.tables import Deployment, DeploymentDevice, ModelVersion


def desired_versions(session: Session, device_id: int) -> dict[int, tuple[ModelVersion, bool, int | None]]:
    """model id → (version, allow_rollback, deployment id) for one device."""
    rows = session.execute(
        select(DeploymentDevice, Deployment).join(Deployment, DeploymentDevice.deployment_id == Deployment.id)
        .where(DeploymentDevice.device_id == device_id, DeploymentDevice.state != "pending")
        .order_by(Deployment.id.desc())).all()
    out: dict[int, tuple[ModelVersion, bool, int | None]] = {}
    decided: set[int] = set()
    for dd, deployment in rows:
        if deployment.model_id in decided:
            continue
        decided.add(deployment.model_id)
        if dd.state in ("assigned", "updated"):
            out[deployment.model_id] = (deployment.version, False, deployment.id)
        elif dd.previous_version_id is not None:
            previous = session.get(ModelVersion, dd.previous_version_id)
            if previous is not None:
                out[deployment.model_id] = (previous, dd.state == "rolled_back", deployment.id)
    return out


def desired_state(session: Session, device_id: int, device_name: str, seq: int, interval_s: float) -> schemas.DesiredStateOut:
    models = []
    for version, allow_rollback, deployment_id in sorted(desired_versions(session, device_id).values(),
                                                         key=lambda item: item[0].model.name):
        models.append(schemas.DesiredModelOut(
            name=version.model.name, version=version.version, package_id=version.package_id,
            size_bytes=version.size_bytes, download_path=f"/api/v1/agent/packages/{version.package_id}",
            allow_rollback=allow_rollback, deployment_id=deployment_id))
    generation = hashlib.sha256(json.dumps([m.model_dump() for m in models], sort_keys=True).encode()).hexdigest()[:32]
    return schemas.DesiredStateOut(device=device_name, seq=seq, models=models, heartbeat_interval_s=interval_s,
                                   generation=generation)


def needs_action(desired: schemas.DesiredStateOut, reported: dict[str, str], failed: set[tuple[str, str]]) -> bool:
    """True when the agent has something to do: a desired package it does not run (and has not
    already refused). A model it runs that is not desired is not counted: it may have been loaded by
    hand, which the agent leaves alone (the ones the control plane placed are removed when the
    desired state changes, which answers a held heartbeat anyway)."""
    return any(reported.get(m.name) != m.package_id and (m.name, m.package_id) not in failed for m in desired.models)
