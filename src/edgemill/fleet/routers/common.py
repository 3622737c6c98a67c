"""Lookups every router needs, each failing with a 404 that names the value and what exists."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from ...errors import ConflictError, NotFoundError, UserError
from ..db.tables import Deployment, Device, Fleet, Model, ModelVersion
from ..scope import scope_of


def _names(session: Session, column: Any, limit: int = 10) -> str:
    names = session.scalars(select(column).order_by(column).limit(limit + 1)).all()
    shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
    return shown or "none yet"


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFoundError("no model with that name", value=name, field="model",
                            fix=f"upload a package first (edgemill push); known models: {_names(session, Model.name)}")
    return model


def get_version(session: Session, name: str, version: str) -> ModelVersion:
    model = get_model(session, name)
    row = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version))
    if row is None:
        known = session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model.id)).all()
        raise NotFoundError(f"model {name!r} has no such version", value=version, field="version",
                            fix=f"use one of: {', '.join(known) or 'none'}")
    return row


def get_fleet(session: Session, name: str) -> Fleet:
    fleet = session.scalar(select(Fleet).where(Fleet.name == name))
    if fleet is None:
        raise NotFoundError("no fleet with that name", value=name, field="fleet",
                            fix=f"create it (POST /api/v1/fleets); known fleets: {_names(session, Fleet.name)}")
    return fleet


def get_device(session: Session, name: str) -> Device:
    device = session.scalar(select(Device).where(Device.name == name))
    if device is None:
        raise NotFoundError("no device with that name", value=name, field="device",
                            fix="list devices with GET /api/v1/devices; a device appears once it registers")
    return device


def get_deployment(session: Session, deployment_id: int) -> Deployment:
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise NotFoundError("no deployment with that id", value=deployment_id, field="id",
                            fix="list deployments with GET /api/v1/deployments")
    return row


def fleet_in_scope(request: Request, session: Session, name: str) -> Fleet:
    """The named fleet, if the request's key may touch it (404 when it does not exist, 403 when the key
    is limited to other fleets)."""
    fleet = get_fleet(session, name)
    scope_of(request).check(request, fleet.name)
    return fleet


def device_in_scope(request: Request, session: Session, name: str) -> Device:
    """The named device, if the request's key may touch its fleet (404 / 403 as for fleets)."""
    device = get_device(session, name)
    scope_of(request).check(request, device.fleet.name, f"device {name!r}")
    return device


def deployment_in_scope(request: Request, session: Session, deployment_id: int) -> Deployment:
    deployment = get_deployment(session, deployment_id)
    scope_of(request).check(request, deployment.fleet.name, f"deployment {deployment_id}")
    return deployment


def name_taken(kind: str, name: str, fix: str) -> ConflictError:
    """The 409 for a create whose name exists (found first, or lost to a concurrent create)."""
    return ConflictError(f"a {kind} with that name exists", value=name, field="name", fix=fix)


def checked_tags(tags: dict[str, str]) -> dict[str, str]:
    """Tags as given, or a 400 naming the tag at fault."""
    if len(tags) > 64:
        raise UserError("too many tags", value=len(tags), field="tags", fix="use at most 64 tags per device")
    for key, value in tags.items():
        if not key or len(key) > 64 or len(value) > 256:
            raise UserError("bad tag", value=f"{key}={value}", field=f"tags.{key}",
                            fix="keys 1-64 characters, values up to 256")
    return dict(tags)
