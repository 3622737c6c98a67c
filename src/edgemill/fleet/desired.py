"""What a device should run: derived from deployments on every read, never cached in memory.

For each model, the newest deployment that has taken this device into a wave decides:
assigned/updated → that deployment's version; failed/rolled_back → the version the device was told
to run before it (an explicit rollback, so the agent accepts an older version); none before → the
model is not desired.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, aliased

from . import schemas
from .db.tables import Deployment, DeploymentDevice, Device, Model, ModelVersion


@dataclass(frozen=True)
class VersionRef:
    """The few columns of a model version that the heartbeat and the download need."""

    id: int
    model: str
    version: str
    package_id: str
    size_bytes: int
    store_key: str


@dataclass
class DeviceRollout:
    """One of a device's rollout rows (not pending), with its version and the one before it."""

    row_id: int
    state: str  # the heartbeat may move it: assigned → updated or failed
    deployment_id: int
    model_id: int
    version: VersionRef
    previous: VersionRef | None


_previous = aliased(ModelVersion)
_previous_model = aliased(Model)
# Built once: heartbeats run this for every device every interval, so it reads columns (no ORM
# objects, no JSON manifests) through the connection, for all the devices of a write at once.
_ROLLOUTS_OF_DEVICES = (
    select(DeploymentDevice.device_id, DeploymentDevice.id, DeploymentDevice.state, Deployment.id, Deployment.model_id,
           ModelVersion.id, Model.name, ModelVersion.version, ModelVersion.package_id, ModelVersion.size_bytes,
           ModelVersion.store_key,
           _previous.id, _previous_model.name, _previous.version, _previous.package_id, _previous.size_bytes,
           _previous.store_key)
    .join(Deployment, DeploymentDevice.deployment_id == Deployment.id)
    .join(ModelVersion, Deployment.version_id == ModelVersion.id)
    .join(Model, ModelVersion.model_id == Model.id)
    .outerjoin(_previous, DeploymentDevice.previous_version_id == _previous.id)
    .outerjoin(_previous_model, _previous.model_id == _previous_model.id)
    .where(DeploymentDevice.device_id.in_(bindparam("device_ids", expanding=True)), DeploymentDevice.state != "pending")
    .order_by(Deployment.id.desc()))


def _rollout(row: Any) -> DeviceRollout:
    previous = VersionRef(*row[11:17]) if row[11] is not None else None
    return DeviceRollout(row[1], row[2], row[3], row[4], VersionRef(*row[5:11]), previous)


def device_rollouts(session: Session, device_id: int) -> list[DeviceRollout]:
    """A device's rollout rows that took it into a wave (not pending), newest deployment first."""
    return rollouts_of_devices(session, [device_id]).get(device_id, [])


def rollouts_of_devices(session: Session, device_ids: list[int]) -> dict[int, list[DeviceRollout]]:
    """:func:`device_rollouts` for several devices in one query (those with none are left out)."""
    out: dict[int, list[DeviceRollout]] = {}
    for row in session.connection().execute(_ROLLOUTS_OF_DEVICES, {"device_ids": device_ids}):
        out.setdefault(row[0], []).append(_rollout(row))
    return out


def versions_from(rollouts: list[DeviceRollout]) -> dict[int, tuple[VersionRef, bool, int | None]]:
    """model id → (version, allow_rollback, deployment id), from :func:`device_rollouts`' rows."""
    out: dict[int, tuple[VersionRef, bool, int | None]] = {}
    decided: set[int] = set()
    for r in rollouts:
        if r.model_id in decided:
            continue
        decided.add(r.model_id)
        if r.state in ("assigned", "updated"):
            out[r.model_id] = (r.version, False, r.deployment_id)
        elif r.previous is not None:
            out[r.model_id] = (r.previous, r.state == "rolled_back", r.deployment_id)
    return out


def desired_versions(session: Session, device_id: int) -> dict[int, tuple[VersionRef, bool, int | None]]:
    """model id → (version, allow_rollback, deployment id) for one device."""
    return versions_from(device_rollouts(session, device_id))


def stamp_changed(session: Session, device_ids: Iterable[int], now: float) -> None:
    """Mark devices whose desired state may have changed, so their held heartbeats answer now."""
    ids = sorted(set(device_ids))
    for start in range(0, len(ids), 1000):
        session.execute(update(Device).where(Device.id.in_(ids[start:start + 1000])).values(desired_at=now))


def desired_state(session: Session, device_id: int, device_name: str, seq: int, interval_s: float,
                  rollouts: list[DeviceRollout] | None = None) -> schemas.DesiredStateOut:
    """The answer to a heartbeat; ``rollouts`` saves the query when the caller has just loaded them."""
    if rollouts is None:
        rollouts = device_rollouts(session, device_id)
    models = []
    for version, allow_rollback, deployment_id in sorted(versions_from(rollouts).values(),
                                                         key=lambda item: item[0].model):
        models.append(schemas.DesiredModelOut(
            name=version.model, version=version.version, package_id=version.package_id,
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
