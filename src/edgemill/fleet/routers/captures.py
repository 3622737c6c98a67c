"""Captured inputs/outputs that devices uploaded: list and fetch."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select

from ...errors import NotFoundError
from .. import schemas
from ..auth import require_operator
from ..db.tables import Capture
from ..state import server_state
from ..views import ts
from .common import get_device

router = APIRouter(prefix="/api/v1/captures", tags=["captures"])


def _out(c: Capture) -> schemas.CaptureOut:
    return schemas.CaptureOut(capture_id=c.capture_id, device=c.device.name, model=c.model_name, size_bytes=c.size_bytes,
                              key=c.store_key, received_at=ts(c.received_at))  # type: ignore[arg-type]


@router.get("", response_model=list[schemas.CaptureOut])
def list_captures(request: Request, device: str | None = None, model: str | None = None,
                  limit: int = Query(100, ge=1, le=1000), _: str = Depends(require_operator)) -> list[schemas.CaptureOut]:
    """Newest first; filter by device and/or model. Objects lie under captures/DEVICE/MODEL/ in the store."""
    state = server_state(request)
    with state.db.session() as session:
        stmt = select(Capture).order_by(Capture.received_at.desc(), Capture.id.desc()).limit(limit)
        if device is not None:
            stmt = stmt.where(Capture.device_id == get_device(session, device).id)
        if model is not None:
            stmt = stmt.where(Capture.model_name == model)
        return [_out(c) for c in session.scalars(stmt)]


@router.get("/{device}/{capture_id}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "The .emc record"},
                       404: {"model": schemas.ErrorOut}})
def get_capture(device: str, capture_id: str, request: Request, _: str = Depends(require_operator)) -> Response:
    state = server_state(request)
    with state.db.session() as session:
        row = session.scalar(select(Capture).where(Capture.device_id == get_device(session, device).id,
                                                   Capture.capture_id == capture_id))
        if row is None:
            raise NotFoundError("no capture with that id from this device", value=capture_id, field="capture_id",
                                fix=f"list them with GET /api/v1/captures?device={device}")
        key = row.store_key
    return Response(state.store.get(key), media_type="application/octet-stream")
