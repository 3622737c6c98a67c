"""Fleets, registration tokens, devices (list, tags, removal)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ...errors import UserError
from .. import schemas
from ..auth import digest, new_secret, require_admin, require_viewer
from ..db.tables import Device, Fleet, RegistrationToken
from ..scope import scope_of
from ..state import server_state
from ..views import count, device_out, device_status, device_status_sql, device_tag_sql, devices_out, dialect_of, ts
from .common import checked_tags, device_in_scope, fleet_in_scope, name_taken

router = APIRouter(prefix="/api/v1", tags=["fleets"])
_FLEET_FIX = "pick another name, or use the existing fleet"


def _fleet_out(session, fleet: Fleet, now: float, config) -> schemas.FleetOut:  # type: ignore[no-untyped-def]
    devices = session.scalars(select(Device).where(Device.fleet_id == fleet.id)).all()
    states = [device_status(d, now, config) for d in devices]
    return schemas.FleetOut(name=fleet.name, description=fleet.description, created_at=ts(fleet.created_at),  # type: ignore[arg-type]
                            devices=len(devices), online=states.count("online"), offline=states.count("offline"),
                            degraded=states.count("degraded"))


@router.post("/fleets", response_model=schemas.FleetOut, status_code=201, responses={409: {"model": schemas.ErrorOut}})
def create_fleet(body: schemas.FleetIn, request: Request, _: str = Depends(require_admin)) -> schemas.FleetOut:
    state = server_state(request)
    scope_of(request).require_every_fleet(request, "creating a fleet")
    request.state.audit_fleet = body.name
    try:
        with state.db.session() as session:
            if session.scalar(select(Fleet).where(Fleet.name == body.name)) is not None:
                raise name_taken("fleet", body.name, _FLEET_FIX)
            fleet = Fleet(name=body.name, description=body.description, created_at=state.clock())
            session.add(fleet)
            session.flush()
            return _fleet_out(session, fleet, state.clock(), state.config)
    except IntegrityError:
        raise name_taken("fleet", body.name, _FLEET_FIX) from None


@router.get("/fleets", response_model=list[schemas.FleetOut])
def list_fleets(request: Request, _: str = Depends(require_viewer)) -> list[schemas.FleetOut]:
    state = server_state(request)
    scope = scope_of(request)
    with state.db.session() as session:
        return [_fleet_out(session, f, state.clock(), state.config)
                for f in session.scalars(select(Fleet).where(scope.fleet_filter(Fleet.id)).order_by(Fleet.name))]


@router.get("/fleets/{name}", response_model=schemas.FleetOut)
def get_fleet_detail(name: str, request: Request, _: str = Depends(require_viewer)) -> schemas.FleetOut:
    state = server_state(request)
    with state.db.session() as session:
        return _fleet_out(session, fleet_in_scope(request, session, name), state.clock(), state.config)


@router.post("/fleets/{name}/registration-tokens", response_model=schemas.TokenOut, status_code=201)
def create_token(name: str, body: schemas.TokenIn, request: Request, _: str = Depends(require_admin)) -> schemas.TokenOut:
    """A registration token for devices of this fleet: shown once, stored hashed, expires."""
    state = server_state(request)
    token = new_secret("emt")
    now = state.clock()
    with state.db.session() as session:
        fleet = fleet_in_scope(request, session, name)
        session.add(RegistrationToken(fleet_id=fleet.id, token_hash=digest(token), expires_at=now + body.expires_in_s,
                                      uses_left=body.uses, created_at=now))
    return schemas.TokenOut(token=token, fleet=name, expires_at=ts(now) + timedelta(seconds=body.expires_in_s),  # type: ignore[operator]
                            uses=body.uses)


DEVICE_PAGE_DEFAULT = 500
DEVICE_PAGE_MAX = 5000
TOTAL_HEADER = "X-Total-Count"


@router.get("/devices", response_model=list[schemas.DeviceOut], responses={200: {"headers": {TOTAL_HEADER: {
    "description": "How many devices match the filters (all pages)", "schema": {"type": "integer"}}}}})
def list_devices(request: Request, response: Response, fleet: str | None = None,
                 status: schemas.DeviceStatus | None = None,
                 tag: list[str] = Query(default=[], description="KEY=VALUE; repeat to require several tags"),
                 limit: int = Query(DEVICE_PAGE_DEFAULT, ge=1, le=DEVICE_PAGE_MAX, description="devices per page"),
                 offset: int = Query(0, ge=0, le=2**31 - 1, description="devices to skip (by name order)"),
                 _: str = Depends(require_viewer)) -> list[schemas.DeviceOut]:
    """Devices by name, one page at a time; the X-Total-Count header says how many match in all.
    Filters and paging run in the database: a request reads one page, whatever the fleet's size."""
    state = server_state(request)
    wanted: dict[str, str] = {}
    for item in tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError("bad tag filter", value=item, field="tag", fix="write tag=KEY=VALUE, e.g. tag=site=north")
        wanted[key] = value
    now = state.clock()
    with state.db.session() as session:
        dialect = dialect_of(session)
        where = [device_tag_sql(dialect, k, v) for k, v in wanted.items()]
        where.append(scope_of(request).fleet_filter(Device.fleet_id))
        if fleet is not None:
            where.append(Device.fleet_id == fleet_in_scope(request, session, fleet).id)
        if status is not None:
            where.append(device_status_sql(dialect, now, state.config) == status)
        response.headers[TOTAL_HEADER] = str(count(session, select(Device.id).where(*where)))
        page = session.scalars(select(Device).where(*where).order_by(Device.name).limit(limit).offset(offset)).all()
        return devices_out(session, page, now, state.config)


@router.get("/devices/{name}", response_model=schemas.DeviceOut)
def get_device_detail(name: str, request: Request, _: str = Depends(require_viewer)) -> schemas.DeviceOut:
    state = server_state(request)
    with state.db.session() as session:
        return device_out(session, device_in_scope(request, session, name), state.clock(), state.config)


@router.patch("/devices/{name}", response_model=schemas.DeviceOut)
def patch_device(name: str, body: schemas.DevicePatch, request: Request, _: str = Depends(require_admin)) -> schemas.DeviceOut:
    state = server_state(request)
    with state.db.session() as session:
        device = device_in_scope(request, session, name)
        if body.tags is not None:
            device.tags = checked_tags(body.tags)
        session.flush()
        return device_out(session, device, state.clock(), state.config)


@router.delete("/devices/{name}", status_code=204, response_class=Response)
def delete_device(name: str, request: Request, _: str = Depends(require_admin)) -> Response:
    """Forget a device: its credential stops working at once; its captures stay in the store."""
    state = server_state(request)
    with state.db.session() as session:
        session.delete(device_in_scope(request, session, name))
    return Response(status_code=204)
