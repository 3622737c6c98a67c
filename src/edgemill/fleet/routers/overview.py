"""What the dashboard draws: the fleet at a glance, and metric series over time."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import schemas
from ..auth import require_viewer
from ..db import floor_div
from ..config import ServerConfig
from ..db.tables import (Alert, AlertRule, Capture, Deployment, Device, DriftSample, Fleet, MetricRollup, MetricSample, Model,
                         ModelVersion)
from ..scope import FleetScope, scope_of
from ..state import server_state
from ..views import (alerts_out, count, deployment_summaries, device_status_sql, devices_out, dialect_of,
                     status_counts)
from .common import device_in_scope

router = APIRouter(prefix="/api/v1", tags=["dashboard"])
PROBLEM_WINDOW_S = 600.0
PROBLEM_DEVICES_SHOWN = 100  # the rest: GET /devices?status=degraded or offline


@router.get("/overview", response_model=schemas.OverviewOut)
def overview(request: Request, _: str = Depends(require_viewer)) -> schemas.OverviewOut:
    """The fleet at a glance, counted and summed by the database whatever the fleet's size.
    `problem_devices` holds the first 100 degraded or offline devices by name (`devices.degraded` +
    `devices.offline` say how many there are; GET /api/v1/devices?status=... lists them all), and
    `active_deployments` carry their device counts by state, not per-device rows or events
    (GET /api/v1/deployments/{id} has those)."""
    state = server_state(request)
    now = state.clock()
    config = state.config
    scope = scope_of(request)  # a key limited to some fleets sees those fleets' numbers; the registry is shared
    in_fleets = scope.fleet_filter(Device.fleet_id)
    with state.db.session() as session:
        status = device_status_sql(dialect_of(session), now, config)
        counts = status_counts(session, now, config, in_fleets)
        problem_devices = devices_out(session, session.scalars(
            select(Device).where(status.in_(("degraded", "offline")), in_fleets).order_by(Device.name)
            .limit(PROBLEM_DEVICES_SHOWN)).all(), now, config)
        problem_models = _problem_models(session, now, config.degraded_error_rate, scope)
        active = session.scalars(select(Deployment).where(Deployment.state.in_(("rolling", "paused")),
                                                          scope.fleet_filter(Deployment.fleet_id))
                                 .order_by(Deployment.id.desc())).all()
        firing = session.scalars(select(Alert).join(AlertRule, Alert.rule_id == AlertRule.id)
                                 .where(Alert.state == "firing", scope.rule_filter())
                                 .order_by(Alert.started_at.desc())).all()
        return schemas.OverviewOut(
            devices={"total": sum(counts.values()), **counts},
            fleets=count(session, select(Fleet.id).where(scope.fleet_filter(Fleet.id))),
            models=count(session, select(Model.id)), versions=count(session, select(ModelVersion.id)),
            problem_devices=problem_devices, problem_models=problem_models,
            active_deployments=deployment_summaries(session, active),
            firing_alerts=alerts_out(session, firing),
            captures=count(session, select(Capture.id).where(scope.device_filter(Capture.device_id))),
            drifting=_drifting(session, now, config, scope))


DRIFTING_SHOWN = 50


def _drifting(session: Session, now: float, config: ServerConfig, scope: FleetScope) -> list[schemas.DriftingOut]:
    """Models whose devices drift, then the devices: per device and model, its latest closed drift bucket
    (within three buckets' time) with an input or prediction PSI above ``drift_attention_psi``."""
    since = now - max(3 * config.drift_bucket_s, PROBLEM_WINDOW_S)
    latest: dict[tuple[int, str], Any] = {}
    for row in session.execute(select(DriftSample.device_id, DriftSample.model_name, DriftSample.package_id,
                                      DriftSample.t.label("at"), DriftSample.samples, DriftSample.input_psi,
                                      DriftSample.prediction_psi, DriftSample.scores)
                                   .where(DriftSample.t > since, scope.device_filter(DriftSample.device_id))):
        key = (row.device_id, row.model_name)
        if key not in latest or row.at > latest[key].at:
            latest[key] = row
    limit = config.drift_attention_psi

    def worst_psi(r: Any) -> float:
        return max(r.input_psi or 0.0, r.prediction_psi or 0.0)

    hot = sorted((r for r in latest.values() if worst_psi(r) > limit), key=lambda r: -worst_psi(r))
    if not hot:
        return []
    names = dict(session.execute(select(Device.id, Device.name).where(Device.id.in_({r.device_id for r in hot}))).all())
    versions = dict(session.execute(select(ModelVersion.package_id, ModelVersion.version)
                                    .where(ModelVersion.package_id.in_({r.package_id for r in hot}))).all())
    devices = [schemas.DriftingOut(
        model=r.model_name, version=versions.get(r.package_id), device=names.get(r.device_id), devices=1,
        input_psi=r.input_psi, prediction_psi=r.prediction_psi,
        feature=max(r.scores, key=r.scores.__getitem__) if r.scores else None, samples=int(r.samples),
        reason=f"PSI {worst_psi(r):.2f} > {limit:g} in its latest {int(r.samples):,} samples") for r in hot]
    models: dict[tuple[str, str | None], list[schemas.DriftingOut]] = defaultdict(list)
    for d in devices:
        models[(d.model, d.version)].append(d)
    summary = [schemas.DriftingOut(
        model=model, version=version, device=None, devices=len(ds),
        input_psi=max((d.input_psi for d in ds if d.input_psi is not None), default=None),
        prediction_psi=max((d.prediction_psi for d in ds if d.prediction_psi is not None), default=None),
        feature=ds[0].feature, samples=sum(d.samples for d in ds),
        reason=f"{len(ds)} device(s) drifting (PSI > {limit:g})")
        for (model, version), ds in sorted(models.items(), key=lambda kv: kv[0][0])]
    return summary + devices[:DRIFTING_SHOWN]


def _problem_models(session: Session, now: float, max_error_rate: float, scope: FleetScope) -> list[dict[str, Any]]:
    """Models whose fleet-wide error rate over the last PROBLEM_WINDOW_S is above the limit, with the
    worst device's p95 (0 when none was reported): one grouped query over the window's samples."""
    rows = session.execute(
        select(MetricSample.model_name, func.coalesce(func.sum(MetricSample.requests), 0),
               func.coalesce(func.sum(MetricSample.errors), 0), func.max(MetricSample.p95_ms))
        .where(MetricSample.t > now - PROBLEM_WINDOW_S, scope.device_filter(MetricSample.device_id))
        .group_by(MetricSample.model_name))
    out = []
    for name, requests, errors, p95 in sorted(rows, key=lambda r: r[0]):
        requests, errors = int(requests), int(errors)
        rate = errors / requests if requests else None
        if rate is not None and rate > max_error_rate:
            out.append({"name": name, "error_rate": rate, "p95_ms": max(0.0, float(p95 or 0.0)), "requests": requests,
                        "reason": f"error rate {rate:.1%} over {requests} requests in the last "
                                  f"{PROBLEM_WINDOW_S / 60:.0f} min"})
    return out


@router.get("/metrics/series", response_model=list[schemas.SeriesOut])
def series(request: Request, model: str | None = None, device: str | None = None,
           since_s: float = Query(3600, gt=0, le=30 * 86400), buckets: int = Query(60, ge=1, le=1000),
           _: str = Depends(require_viewer)) -> list[schemas.SeriesOut]:
    """Requests, errors, error rate and latency over time, in ``buckets`` equal intervals. Without a
    filter: one series per model over the whole fleet; with ``device``: one per model on that device.
    Latency per bucket is the worst device's percentile (a fleet-wide percentile cannot be rebuilt
    from per-device ones)."""
    state = server_state(request)
    now = state.clock()
    start = now - since_s
    width = since_s / buckets
    # Aggregated in the database, one row per model and bucket: a fleet-wide chart of an hour at
    # 10,000 devices covers 1.2 million samples, which must not travel to Python one by one. Recent
    # samples and the hourly rollups older ones were folded into (retention.py) never cover the same
    # time; a rollup counts at its span's middle.
    scope = scope_of(request)  # a key limited to some fleets: its fleets' devices only
    with state.db.session() as session:
        dialect = session.get_bind().dialect.name
        device_id = device_in_scope(request, session, device).id if device is not None else None
        rows = [*session.execute(_bucketed(MetricSample, MetricSample.t, MetricSample.t > start,
                                           dialect, start, width, device_id, model)
                                 .where(scope.device_filter(MetricSample.device_id))),
                *session.execute(_bucketed(MetricRollup, MetricRollup.t + MetricRollup.span_s / 2,
                                           MetricRollup.t + MetricRollup.span_s > start,
                                           dialect, start, width, device_id, model)
                                 .where(scope.device_filter(MetricRollup.device_id)))]
    prefix = f"device/{device}/" if device is not None else ""
    points: dict[str, dict[int, list[Any]]] = defaultdict(dict)
    for name, index, requests, errors, p50, p95, p99 in rows:
        index = min(buckets - 1, max(0, int(index)))
        merged = points[f"{prefix}model/{name}"].get(index)
        if merged is None:
            points[f"{prefix}model/{name}"][index] = [int(requests), int(errors), p50, p95, p99]
        else:
            merged[0] += int(requests)
            merged[1] += int(errors)
            merged[2:] = [_worst(a, b) for a, b in zip(merged[2:], (p50, p95, p99))]
    out = []
    for key in sorted(points):
        out.append(schemas.SeriesOut(key=key, points=[schemas.SeriesPoint(
            t=start + (index + 1) * width, requests=requests, errors=errors,
            error_rate=errors / requests if requests else None, p50_ms=p50, p95_ms=p95, p99_ms=p99)
            for index, (requests, errors, p50, p95, p99) in sorted(points[key].items())]))
    return out


def _bucketed(table: Any, at: Any, since: Any, dialect: str, start: float, width: float, device_id: int | None,
              model: str | None) -> Any:
    """Per model and bucket: summed requests and errors, the worst p50/p95/p99."""
    index = floor_div(dialect, at - start, width).label("index")
    stmt = (select(table.model_name, index, func.coalesce(func.sum(table.requests), 0),
                   func.coalesce(func.sum(table.errors), 0), func.max(table.p50_ms), func.max(table.p95_ms),
                   func.max(table.p99_ms))
            .where(since).group_by(table.model_name, index))
    if device_id is not None:
        stmt = stmt.where(table.device_id == device_id)
    if model is not None:
        stmt = stmt.where(table.model_name == model)
    return stmt


def _worst(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
