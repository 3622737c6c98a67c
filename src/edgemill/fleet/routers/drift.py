"""Drift: how far a model version's inputs and outputs on the devices are from its reference, and the
reference itself (the package baseline, or a window the operator pins)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response

from ...errors import UserError
from .. import schemas
from ..auth import require_deployer, require_viewer
from ..db.tables import DriftReference
from ..drift_refs import samples_of
from ..drift_view import Fleets, drift_report, reference_out, window_counts
from ..scope import scope_of
from ..state import server_state
from .common import device_in_scope, fleet_in_scope, get_version

router = APIRouter(prefix="/api/v1", tags=["drift"])
ERRORS = {404: {"model": schemas.ErrorOut}, 422: {"model": schemas.ErrorOut}}


@router.get("/drift", response_model=schemas.DriftOut, responses=ERRORS)
def drift(request: Request, model: str, version: str | None = None, device: str | None = None,
          fleet: str | None = None,
          window_s: float = Query(3600, ge=1, le=30 * 86400, description="The window the histograms cover"),
          range_s: float = Query(86400, ge=60, le=90 * 86400, description="The time span of the series"),
          _: str = Depends(require_viewer)) -> schemas.DriftOut:
    """Drift of one model version over a scope (one device, one fleet, or every device): per feature the
    window's histogram against the reference with PSI and Jensen-Shannon distance, the devices worst
    first, and a series of the worst and the median device's PSI. Without ``version``: the version most
    devices in scope run now. ``status`` says when the scores cannot be read as drift (``no_baseline``,
    ``no_data``, ``few_samples``)."""
    state = server_state(request)
    scope = scope_of(request)
    with state.db.session() as session:
        if scope.limited:  # a key limited to some fleets reads their devices only
            if device is not None:
                device_in_scope(request, session, device)
            if fleet is not None:
                fleet_in_scope(request, session, fleet)
        within: Fleets = fleet
        if scope.limited and device is None and fleet is None:  # every device the key may see
            fleets = tuple(sorted(scope.fleets or ()))
            within = fleets[0] if len(fleets) == 1 else fleets
        return drift_report(session, state.heartbeats.references, state.config, state.clock(), model, version,
                            device, within, window_s, range_s)


@router.put("/models/{name}/versions/{version}/drift-reference", response_model=schemas.DriftReferenceOut,
            responses=ERRORS)
def pin_reference(name: str, version: str, body: schemas.DriftPinIn, request: Request,
                  operator: str = Depends(require_deployer)) -> schemas.DriftReferenceOut:
    """Make the counts every device reported for this version in a window the reference drift is measured
    against (instead of the package baseline), e.g. a week the operator knows was good: ``last_s`` seconds
    up to now (the devices' open buckets included), or ``start``..``end`` (stored buckets). Buckets closed
    from now on are scored against it; DELETE goes back to the baseline. The reference is the version's on
    every fleet, so it needs a key for every fleet."""
    scope_of(request).require_every_fleet(request, "pinning a version's drift reference")
    state = server_state(request)
    now = state.clock()
    if body.last_s is not None:
        if body.start is not None or body.end is not None:
            raise UserError("give either last_s or start and end, not both", value=body.last_s, field="last_s",
                            fix='send {"last_s": 3600} or {"start": T0, "end": T1}')
        start, end = now - body.last_s, now
    elif body.start is None or body.end is None:
        raise UserError("no window to pin", field="start", fix='send {"last_s": 3600} or {"start": T0, "end": T1}')
    else:
        start, end = body.start, body.end
    if end <= start:
        raise UserError("the window ends before it starts", value=f"{start}..{end}", field="end",
                        fix="send start < end (unix seconds)")
    with state.db.session() as session:
        row = get_version(session, name, version)
        reference = state.heartbeats.references.get_many(session, [row.package_id]).get(row.package_id)
        if reference is None:
            raise UserError("this version has no baseline, so its devices' counts cannot be scored against a window",
                            value=version, field="version", fix="recompile the model (its package then carries a "
                            "baseline) and deploy that version")
        merged = window_counts(session, name, row.package_id, None, None, start, [f.bins for f in reference.features],
                               until=None if body.last_s else end).merged()  # last_s: the open buckets too
        if merged is None or samples_of(merged) == 0:
            raise UserError("no drift counts of this version in that window", value=f"{start}..{end}",
                            field="start", fix="pick a window in which devices ran this version (GET /api/v1/drift "
                            "shows its series); counts are stored once a device's bucket closes")
        pin = session.get(DriftReference, row.package_id)
        if pin is None:
            pin = DriftReference(package_id=row.package_id)
            session.add(pin)
        pin.start, pin.end, pin.samples, pin.counts = start, end, samples_of(merged), merged
        pin.created_at, pin.created_by = state.clock(), operator
        session.flush()
    state.heartbeats.references.forget(row.package_id)
    with state.db.session() as session:
        return reference_out(state.heartbeats.references.get_many(session, [row.package_id])[row.package_id])  # type: ignore[return-value]


@router.delete("/models/{name}/versions/{version}/drift-reference", status_code=204, response_class=Response,
               responses=ERRORS)
def unpin_reference(name: str, version: str, request: Request, _: str = Depends(require_deployer)) -> Response:
    """Measure this version's drift against its package baseline again."""
    scope_of(request).require_every_fleet(request, "unpinning a version's drift reference")
    state = server_state(request)
    with state.db.session() as session:
        row = get_version(session, name, version)
        pin = session.get(DriftReference, row.package_id)
        if pin is not None:
            session.delete(pin)
    state.heartbeats.references.forget(row.package_id)
    return Response(status_code=204)
