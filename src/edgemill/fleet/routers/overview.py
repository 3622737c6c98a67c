"""What the dashboard draws: the fleet at a glance, and metric series over time."""

from __future__ import annotations

from collections import defaultdict

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from .. import schemas
from ..auth import require_operator
from ..db.tables import Alert, Capture, Deployment, Device, Fleet, MetricSample, Model, ModelVersion
from ..state import server_state
from ..views import alert_out, count, deployment_out, device_out, device_status
from .common import get_device

router = APIRouter(prefix="/api/v1", tags=["dashboard"])
PROBLEM_WINDOW_S = 600.0


@router.get("/overview", response_model=schemas.OverviewOut)
def overview(request: Request, _: str = Depends(require_operator)) -> schemas.OverviewOut:
    state = server_state(request)
    now = state.clock()
    config = state.config
    with state.db.session() as session:
        devices = session.scalars(select(Device).order_by(Device.name)).all()
        statuses = {d.id: device_status(d, now, config) for d in devices}
        counts = {s: sum(1 for v in statuses.values() if v == s) for s in ("online", "offline", "degraded", "never_seen")}
        problem_devices = [device_out(session, d, now, config) for d in devices if statuses[d.id] in ("degraded", "offline")]
        totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
        for s in session.scalars(select(MetricSample).where(MetricSample.t > now - PROBLEM_WINDOW_S)):
            entry = totals[s.model_name]
            entry[0] += s.requests
            entry[1] += s.errors
            entry[2] = max(entry[2], s.p95_ms or 0.0)
        problem_models = []
        for name, (requests, errors, p95) in sorted(totals.items()):
            rate = errors / requests if requests else None
            if rate is not None and rate > config.degraded_error_rate:
                problem_models.append({"name": name, "error_rate": rate, "p95_ms": p95, "requests": requests,
                                       "reason": f"error rate {rate:.1%} over {int(requests)} requests in the last "
                                                 f"{PROBLEM_WINDOW_S / 60:.0f} min"})
        active = session.scalars(select(Deployment).where(Deployment.state.in_(("rolling", "paused")))
                                 .order_by(Deployment.id.desc())).all()
        firing = session.scalars(select(Alert).where(Alert.state == "firing").order_by(Alert.started_at.desc())).all()
        return schemas.OverviewOut(
            devices={"total": len(devices), **counts}, fleets=count(session, select(Fleet.id)),
            models=count(session, select(Model.id)), versions=count(session, select(ModelVersion.id)),
            problem_devices=problem_devices, problem_models=problem_models,
            active_deployments=[deployment_out(session, d) for d in active],
            firing_alerts=[alert_out(session, a) for a in firing], captures=count(session, select(Capture.id)))


@router.get("/metrics/series", response_model=list[schemas.SeriesOut])
def series(request: Request, model: str | None = None, device: str | None = None,
           since_s: float = Query(3600, gt=0, le=30 * 86400), buckets: int = Query(60, ge=1, le=1000),
           _: str = Depends(require_operator)) -> list[schemas.SeriesOut]:
    """Requests, errors, error rate and latency over time, in ``buckets`` equal intervals. Without a
    filter: one series per model over the whole fleet; with ``device``: one per model on that device.
    Latency per bucket is the worst device's percentile (a fleet-wide percentile cannot be rebuilt
    from per-device ones)."""
    state = server_state(request)
    now = state.clock()
    start = now - since_s
    width = since_s / buckets
    with state.db.session() as session:
        stmt = select(MetricSample).where(MetricSample.t > start).order_by(MetricSample.t)
        prefix = ""
        if device is not None:
            stmt = stmt.where(MetricSample.device_id == get_device(session, device).id)
            prefix = f"device/{device}/"
        if model is not None:
            stmt = stmt.where(MetricSample.model_name == model)
        grouped: dict[str, dict[int, list[MetricSample]]] = defaultdict(lambda: defaultdict(list))
        for s in session.scalars(stmt):
            index = min(buckets - 1, int((s.t - start) // width))
            grouped[f"{prefix}model/{s.model_name}"][index].append(s)
    out = []
    for key in sorted(grouped):
        points = []
        for index in sorted(grouped[key]):
            rows = grouped[key][index]
            requests = sum(r.requests for r in rows)
            errors = sum(r.errors for r in rows)

            def worst(values: list[float | None]) -> float | None:
                present = [v for v in values if v is not None]
                return max(present) if present else None

            points.append(schemas.SeriesPoint(
                t=start + (index + 1) * width, requests=requests, errors=errors,
                error_rate=errors / requests if requests else None, p50_ms=worst([r.p50_ms for r in rows]),
                p95_ms=worst([r.p95_ms for r in rows]), p99_ms=worst([r.p99_ms for r in rows])))
        out.append(schemas.SeriesOut(key=key, points=points))
    return out
