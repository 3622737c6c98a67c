"""Alert rules (metric, scope, threshold, window → webhook) and the alerts they raise."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ...errors import NotFoundError, UserError
from .. import schemas
from ..alerting import rule_of
from ..alerts import validate_rule
from ..auth import require_admin, require_viewer
from ..db.tables import Alert, AlertRule
from ..scope import scope_of
from ..state import server_state
from ..views import alert_out, ts
from .common import device_in_scope, fleet_in_scope, name_taken

router = APIRouter(prefix="/api/v1", tags=["alerts"])
_RULE_FIX = "pick another name, or delete the old rule first (DELETE /api/v1/alert-rules/NAME)"


def _rule_out(r: AlertRule) -> schemas.AlertRuleOut:
    return schemas.AlertRuleOut(name=r.name, metric=r.metric, threshold=r.threshold, op=r.op, window_s=r.window_s,  # type: ignore[arg-type]
                                model=r.model, device=r.device, fleet=r.fleet, feature=r.feature,
                                min_samples=r.min_samples, webhook_url=r.webhook_url, created_at=ts(r.created_at))  # type: ignore[arg-type]


def _check_rule_scope(request: Request, session: Any, fleet: str | None, device: str | None) -> None:
    """A key limited to some fleets makes and removes only rules about them (a fleet or a device of theirs)."""
    scope = scope_of(request)
    if fleet is not None:
        if scope.limited:
            fleet_in_scope(request, session, fleet)
        request.state.audit_fleet = fleet
    if device is not None and scope.limited:
        device_in_scope(request, session, device)
    if fleet is None and device is None:
        scope.require_every_fleet(request, "an alert rule over every fleet")


@router.post("/alert-rules", response_model=schemas.AlertRuleOut, status_code=201,
             responses={409: {"model": schemas.ErrorOut}, 422: {"model": schemas.ErrorOut}})
def create_rule(body: schemas.AlertRuleIn, request: Request, _: str = Depends(require_admin)) -> schemas.AlertRuleOut:
    state = server_state(request)
    row = AlertRule(name=body.name, metric=body.metric, op=body.op, threshold=body.threshold, window_s=body.window_s,
                    model=body.model, device=body.device, fleet=body.fleet, feature=body.feature,
                    min_samples=body.min_samples, webhook_url=body.webhook_url, created_at=state.clock(), rev=0)
    problem = validate_rule(rule_of(row))
    if problem:
        field = ("feature" if problem.startswith(("feature", "input_drift judges", "prediction_drift judges"))
                 else "min_samples" if problem.startswith("min_samples") else "threshold")
        raise UserError("this alert rule cannot work", value=body.name, field=field, fix=problem)
    try:
        with state.db.session() as session:
            _check_rule_scope(request, session, body.fleet, body.device)
            if session.scalar(select(AlertRule.id).where(AlertRule.name == body.name)) is not None:
                raise name_taken("alert rule", body.name, _RULE_FIX)
            session.add(row)
            session.flush()
            return _rule_out(row)
    except IntegrityError:
        raise name_taken("alert rule", body.name, _RULE_FIX) from None


@router.get("/alert-rules", response_model=list[schemas.AlertRuleOut])
def list_rules(request: Request, _: str = Depends(require_viewer)) -> list[schemas.AlertRuleOut]:
    state = server_state(request)
    with state.db.session() as session:
        return [_rule_out(r) for r in session.scalars(select(AlertRule).where(scope_of(request).rule_filter())
                                                      .order_by(AlertRule.name))]


@router.delete("/alert-rules/{name}", status_code=204, response_class=Response, responses={404: {"model": schemas.ErrorOut}})
def delete_rule(name: str, request: Request, _: str = Depends(require_admin)) -> Response:
    state = server_state(request)
    with state.db.session() as session:
        row = session.scalar(select(AlertRule).where(AlertRule.name == name))
        if row is None:
            raise NotFoundError("no alert rule with that name", value=name, field="name",
                                fix="list rules with GET /api/v1/alert-rules")
        _check_rule_scope(request, session, row.fleet, row.device)
        session.delete(row)
    return Response(status_code=204)


@router.get("/alerts", response_model=list[schemas.AlertOut])
def list_alerts(request: Request, state_filter: str | None = Query(None, alias="state", pattern="^(firing|resolved)$"),
                limit: int = Query(100, ge=1, le=1000), _: str = Depends(require_viewer)) -> list[schemas.AlertOut]:
    """Firing first, then newest."""
    state = server_state(request)
    with state.db.session() as session:
        stmt = (select(Alert).join(AlertRule, Alert.rule_id == AlertRule.id).where(scope_of(request).rule_filter())
                .order_by((Alert.state == "firing").desc(), Alert.started_at.desc(), Alert.id.desc()).limit(limit))
        if state_filter:
            stmt = stmt.where(Alert.state == state_filter)
        return [alert_out(session, a) for a in session.scalars(stmt)]
