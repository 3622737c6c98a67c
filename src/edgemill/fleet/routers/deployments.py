"""Deployments: create (with a rollout strategy), inspect, pause, resume, roll back."""

from __future__ import annotations

import hashlib

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import select

from ...errors import ConflictError, NotFoundError, UserError
from .. import schemas
from ..auth import require_deployer, require_viewer
from ..db.tables import Deployment, DeploymentDevice, Device
from ..rollout import has_tags, wave_sizes
from ..rollouts import LostRace, bump, event, roll_back, step
from ..scope import scope_of
from ..state import ServerState, server_state
from ..views import deployment_out, deployment_summaries
from .common import deployment_in_scope, fleet_in_scope, get_version

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
DeploymentId = Annotated[int, Path(ge=1, le=schemas.INT32_MAX, description="The deployment's id")]
ERRORS = {404: {"model": schemas.ErrorOut}, 409: {"model": schemas.ErrorOut}, 422: {"model": schemas.ErrorOut}}


@router.post("", response_model=schemas.DeploymentOut, status_code=201, responses=ERRORS)
def create_deployment(body: schemas.DeploymentIn, request: Request, operator: str = Depends(require_deployer)) -> schemas.DeploymentOut:
    """Roll a model version out to a fleet (optionally only devices with given tags or names): a canary
    wave first, then batches, each baked and checked against the health gates; a failing gate rolls
    the updated devices back automatically."""
    # Superseding an active deployment races the reconciler's tick (on any replica) for that row's rev;
    # a lost race rolls the whole transaction back, so trying again from the top is safe.
    for _ in range(RETRIES):
        try:
            return _create(request, body, operator)
        except LostRace:
            continue
    raise ConflictError("the fleet's deployments kept changing while this request ran", value=body.fleet, field="fleet",
                        fix="retry the request")


RETRIES = 5


def _create(request: Request, body: schemas.DeploymentIn, operator: str) -> schemas.DeploymentOut:
    state: ServerState = server_state(request)
    now = state.clock()
    with state.db.session() as session:
        version = get_version(session, body.model, body.version)
        fleet = fleet_in_scope(request, session, body.fleet)
        devices = session.scalars(select(Device).where(Device.fleet_id == fleet.id).order_by(Device.name)).all()
        if body.devices:
            by_name = {d.name: d for d in devices}
            unknown = [n for n in body.devices if n not in by_name]
            if unknown:
                raise NotFoundError(f"device not in fleet {fleet.name!r}", value=unknown[0], field="devices",
                                    fix="list the fleet's devices with GET /api/v1/devices?fleet=" + fleet.name)
            devices = [by_name[n] for n in dict.fromkeys(body.devices)]
        devices = [d for d in devices if has_tags(d.tags, body.tags)]
        if not devices:
            what = f"fleet {fleet.name!r}" + (f" with tags {body.tags}" if body.tags else "")
            raise UserError("the deployment targets no devices", value=what, field="fleet",
                            fix="register devices in the fleet first (registration token → agent), or widen the tags")
        active = session.scalars(select(Deployment).where(Deployment.model_id == version.model_id,
                                                          Deployment.fleet_id == fleet.id,
                                                          Deployment.state.in_(("rolling", "paused")))).all()
        for old in active:
            if old.version_id == version.id and old.tags == body.tags:
                raise ConflictError("this version is already rolling out to that fleet", value=f"deployment {old.id}",
                                    field="version", fix=f"watch it (GET /api/v1/deployments/{old.id}) or roll it back first")
        sizes = wave_sizes(len(devices), body.strategy.canary_percent, body.strategy.batch_size)
        deployment = Deployment(model_id=version.model_id, version_id=version.id, fleet_id=fleet.id, tags=body.tags,
                                named_devices=bool(body.devices),
                                strategy=body.strategy.model_dump(), state="rolling", wave=-1, waves=len(sizes),
                                created_at=now, updated_at=now, rev=0)
        session.add(deployment)
        session.flush()
        for old in active:
            bump(session, old, now, state="superseded", reason=f"superseded by deployment {deployment.id}")
            event(session, old.id, now, "superseded", f"superseded by deployment {deployment.id} ({version.version})")
        # Canary choice: online devices first (they can report health soonest), then a stable
        # per-deployment shuffle so the same devices are not always the canaries.
        def order(d: Device) -> tuple[bool, str]:
            fresh = d.last_seen_at is not None and now - d.last_seen_at <= state.config.offline_after_s
            return (not fresh, hashlib.sha256(f"{deployment.id}/{d.name}".encode()).hexdigest())

        for position, d in enumerate(sorted(devices, key=order)):
            session.add(DeploymentDevice(deployment_id=deployment.id, device_id=d.id, position=position, state="pending"))
        event(session, deployment.id, now, "created",
              f"{body.model} {body.version} to {len(devices)} device(s) of {fleet.name} in {len(sizes)} wave(s) by {operator}")
        session.flush()
        step(session, deployment, now, state.config)  # the canary is told at once (long polls wake up)
        session.refresh(deployment)
        return deployment_out(session, deployment)


@router.get("", response_model=list[schemas.DeploymentOut])
def list_deployments(request: Request, model: str | None = None, state_filter: schemas.DeploymentState | None = Query(None, alias="state"),
                     limit: int = Query(50, ge=1, le=500), _: str = Depends(require_viewer)) -> list[schemas.DeploymentOut]:
    state = server_state(request)
    with state.db.session() as session:
        stmt = (select(Deployment).where(scope_of(request).fleet_filter(Deployment.fleet_id))
                .order_by(Deployment.id.desc()).limit(limit))
        if state_filter is not None:
            stmt = stmt.where(Deployment.state == state_filter)
        rows = [d for d in session.scalars(stmt).all() if model is None or d.version.model.name == model]
        return deployment_summaries(session, rows)


@router.get("/{deployment_id}", response_model=schemas.DeploymentOut, responses=ERRORS)
def get_deployment_detail(deployment_id: DeploymentId, request: Request, _: str = Depends(require_viewer)) -> schemas.DeploymentOut:
    state = server_state(request)
    with state.db.session() as session:
        return deployment_out(session, deployment_in_scope(request, session, deployment_id))


def _change(request: Request, deployment_id: DeploymentId, operator: str, action: str) -> schemas.DeploymentOut:
    state = server_state(request)
    now = state.clock()
    try:
        with state.db.session() as session:
            d = deployment_in_scope(request, session, deployment_id)
            allowed = {"pause": ("rolling",), "resume": ("paused",), "rollback": ("rolling", "paused", "succeeded")}[action]
            if d.state not in allowed:
                raise ConflictError(f"cannot {action} a deployment that is {d.state}", value=deployment_id, field="id",
                                    expected=" or ".join(allowed),
                                    fix="create a new deployment to change what the devices run")
            if action == "pause":
                bump(session, d, now, state="paused", reason=f"paused by {operator}")
                event(session, d.id, now, "paused", f"paused by {operator}")
            elif action == "resume":
                bump(session, d, now, state="rolling", reason=f"resumed by {operator}")
                event(session, d.id, now, "resumed", f"resumed by {operator}")
            else:
                roll_back(session, d, now, f"rolled back by {operator}", kind="rolled_back")
            session.refresh(d)
            return deployment_out(session, d)
    except LostRace:
        raise ConflictError("the deployment changed while this request ran", value=deployment_id, field="id",
                            fix="read it again and retry") from None


@router.post("/{deployment_id}/pause", response_model=schemas.DeploymentOut, responses=ERRORS)
def pause(deployment_id: DeploymentId, request: Request, operator: str = Depends(require_deployer)) -> schemas.DeploymentOut:
    """Stop taking new devices; devices already updated keep the version."""
    return _change(request, deployment_id, operator, "pause")


@router.post("/{deployment_id}/resume", response_model=schemas.DeploymentOut, responses=ERRORS)
def resume(deployment_id: DeploymentId, request: Request, operator: str = Depends(require_deployer)) -> schemas.DeploymentOut:
    return _change(request, deployment_id, operator, "resume")


@router.post("/{deployment_id}/rollback", response_model=schemas.DeploymentOut, responses=ERRORS)
def rollback(deployment_id: DeploymentId, request: Request, operator: str = Depends(require_deployer)) -> schemas.DeploymentOut:
    """Send every device that got this version back to what it ran before."""
    return _change(request, deployment_id, operator, "rollback")
