"""Live accuracy of a model from its labeled captures (top-1 for classifiers, MAE/RMSE for regressors)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from .. import schemas
from ..accuracy import Labeled, summarize
from ..auth import require_viewer
from ..db.tables import Capture, Device, Fleet
from ..scope import scope_of
from ..state import server_state
from ..views import ts
from .common import device_in_scope, fleet_in_scope, get_model

router = APIRouter(prefix="/api/v1", tags=["captures"])


@router.get("/accuracy", response_model=schemas.AccuracyOut,
            responses={404: {"model": schemas.ErrorOut}, 422: {"model": schemas.ErrorOut}})
def accuracy(request: Request, model: str, version: str | None = None, device: str | None = None,
             fleet: str | None = None,
             range_s: float = Query(7 * 86400, ge=60, le=366 * 86400, description="Predictions made this long ago at most"),
             bucket_s: int = Query(3600, ge=60, le=30 * 86400, description="The series' step"),
             _: str = Depends(require_viewer)) -> schemas.AccuracyOut:
    """How often the model was right on the captures the operators labeled, by when the prediction was
    made: overall, over time, and per version, device and fleet, each with the labeled samples it rests
    on. ``task`` is None (and the figures absent) until a capture in scope is labeled."""
    state = server_state(request)
    now = state.clock()
    with state.db.session() as session:
        if session.scalar(select(Capture.id).where(Capture.model_name == model).limit(1)) is None:
            get_model(session, model)  # neither captured nor registered: a 404 naming the known models
        stmt = (select(Capture.created_unix, Capture.model_version, Device.name, Fleet.name, Capture.task,
                       Capture.prediction, Capture.label)
                .join(Device, Capture.device_id == Device.id).join(Fleet, Device.fleet_id == Fleet.id)
                .where(Capture.model_name == model, Capture.label.is_not(None), Capture.task.is_not(None),
                       Capture.created_unix > now - range_s, scope_of(request).device_filter(Capture.device_id)))
        if version is not None:
            stmt = stmt.where(Capture.model_version == version)
        if device is not None:
            stmt = stmt.where(Capture.device_id == device_in_scope(request, session, device).id)
        if fleet is not None:
            stmt = stmt.where(Device.fleet_id == fleet_in_scope(request, session, fleet).id)
        rows = [Labeled(t=float(t), version=v or "?", device=d, fleet=f, task=task, prediction=p or [], label=y or [])
                for t, v, d, f, task, p, y in session.execute(stmt)]
    s = summarize(rows, bucket_s)

    def groups(items: list[tuple[str, int, float]]) -> list[schemas.AccuracyGroup]:
        return [schemas.AccuracyGroup(name=n, samples=c, value=v) for n, c, v in items]

    return schemas.AccuracyOut(model=model, version=version, scope={"fleet": fleet, "device": device},
                               task=s.task, samples=s.samples, captures=s.captures, top1=s.top1, mae=s.mae,  # type: ignore[arg-type]
                               rmse=s.rmse, bucket_s=bucket_s,
                               series=[schemas.AccuracyPoint(t=ts(t), samples=c, value=v) for t, c, v in s.series],  # type: ignore[arg-type]
                               by_version=groups(s.by_version), by_device=groups(s.by_device),
                               by_fleet=groups(s.by_fleet))
