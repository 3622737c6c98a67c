"""A device that joins a fleet gets what the fleet runs: it is added to the fleet's current deployments.

A deployment targets the devices registered when it is made. Without this step a device registered
later (a replacement, the 301st camera) would run nothing until the next deployment. At registration,
for each model, the newest deployment to the device's fleet that is ``rolling``, ``paused`` or
``succeeded``, whose tags the device has, and that was not limited to named devices, takes the device:

* rolling or paused: as ``pending``, so it is taken into a later wave like the devices not yet reached
  (the health gates judge it with the others);
* succeeded: as ``assigned`` straight away, so it runs the version the rest of the fleet already runs.

Superseded and rolled-back deployments are skipped: what the fleet runs then comes from an older one.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .db.tables import Deployment, DeploymentDevice, Device
from .rollout import has_tags
from .rollouts import event

JOINABLE = ("rolling", "paused", "succeeded")


def join_fleet_deployments(session: Session, device: Device, now: float) -> list[int]:
    """Add a newly registered ``device`` (flushed: it has an id) to its fleet's current deployments;
    returns the ids of the deployments it joined."""
    rows = session.scalars(select(Deployment)
                           .where(Deployment.fleet_id == device.fleet_id, Deployment.state.in_(JOINABLE),
                                  Deployment.named_devices.is_(False))
                           .order_by(Deployment.id.desc())).all()
    joined: list[int] = []
    decided: set[int] = set()
    for deployment in rows:
        if deployment.model_id in decided or not has_tags(device.tags, deployment.tags):
            continue
        decided.add(deployment.model_id)
        position = session.scalar(select(func.coalesce(func.max(DeploymentDevice.position), -1))
                                  .where(DeploymentDevice.deployment_id == deployment.id)) + 1
        if deployment.state == "succeeded":
            session.add(DeploymentDevice(deployment_id=deployment.id, device_id=device.id, position=position,
                                         wave=max(deployment.wave, 0), state="assigned", assigned_at=now))
            message = f"{device.name} joined the fleet: assigned the version the fleet runs"
        else:
            session.add(DeploymentDevice(deployment_id=deployment.id, device_id=device.id, position=position,
                                         state="pending"))
            message = f"{device.name} joined the fleet: pending, it is taken into a later wave"
        event(session, deployment.id, now, "device_joined", message)
        joined.append(deployment.id)
    return joined
