"""Operator keys (named, with a role and an optional expiry) and the audit trail of what they changed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ...errors import ConflictError, NotFoundError
from .. import schemas
from ..auth import Operator, digest, new_secret, require_admin, require_viewer
from ..db.tables import ApiKey, AuditEvent, AuditFold, Fleet
from ..scope import FleetScope, scope_of
from ..state import server_state
from ..views import ts
from .common import name_taken

router = APIRouter(prefix="/api/v1", tags=["operators"])
_KEY_FIX = "pick another name (names stay taken after a revoke, so the audit trail keeps one meaning per name)"
AUDIT_PAGE_DEFAULT = 100
AUDIT_PAGE_MAX = 1000
TOTAL_HEADER = "X-Total-Count"
FOLDED_HEADER = "X-Folded-Count"


def _key_out(key: ApiKey, now: float) -> schemas.OperatorKeyOut:
    active = key.revoked_at is None and (key.expires_at is None or key.expires_at > now)
    return schemas.OperatorKeyOut(name=key.name, role=key.role, fleets=key.fleets, created_at=ts(key.created_at),  # type: ignore[arg-type]
                                  created_by=key.created_by, expires_at=ts(key.expires_at),
                                  revoked_at=ts(key.revoked_at), active=active)


@router.get("/whoami", response_model=schemas.WhoAmIOut)
def whoami(request: Request, _: str = Depends(require_viewer)) -> schemas.WhoAmIOut:
    """The key that made this request: its name, role, expiry and fleets (the dashboard shows what it may do)."""
    operator: Operator = request.state.operator
    return schemas.WhoAmIOut(name=operator.name, role=operator.role, expires_at=ts(operator.expires_at),  # type: ignore[arg-type]
                             fleets=None if operator.fleets is None else list(operator.fleets))


@router.get("/operator-keys", response_model=list[schemas.OperatorKeyOut])
def list_keys(request: Request, _: str = Depends(require_admin)) -> list[schemas.OperatorKeyOut]:
    """Every operator key, revoked and expired ones included (never the secrets)."""
    scope_of(request).require_every_fleet(request, "managing operator keys")
    state = server_state(request)
    with state.db.session() as session:
        return [_key_out(k, state.clock()) for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))]


@router.post("/operator-keys", response_model=schemas.OperatorKeyCreated, status_code=201,
             responses={409: {"model": schemas.ErrorOut}})
def create_key(body: schemas.OperatorKeyIn, request: Request, admin: str = Depends(require_admin)) -> schemas.OperatorKeyCreated:
    """A new operator key: the secret is in this response only; the server keeps its sha256. With
    ``fleets``, the key sees and changes only what belongs to those fleets (they must exist)."""
    scope_of(request).require_every_fleet(request, "managing operator keys")
    state = server_state(request)
    secret = new_secret("emk")
    now = state.clock()
    fleets = None if body.fleets is None else sorted(set(body.fleets))
    key = ApiKey(name=body.name, key_hash=digest(secret), created_at=now, role=body.role, created_by=admin,
                 expires_at=None if body.expires_in_s is None else now + body.expires_in_s, fleets=fleets)
    try:
        with state.db.session() as session:
            if session.scalar(select(ApiKey.id).where(ApiKey.name == body.name)) is not None:
                raise name_taken("operator key", body.name, _KEY_FIX)
            if fleets is not None:
                known = set(session.scalars(select(Fleet.name).where(Fleet.name.in_(fleets))))
                missing = [f for f in fleets if f not in known]
                if missing:
                    raise NotFoundError("no fleet with that name", value=missing[0], field="fleets",
                                        fix="create the fleet first (POST /api/v1/fleets), or list them with "
                                            "GET /api/v1/fleets")
            session.add(key)
            session.flush()
            return schemas.OperatorKeyCreated(**_key_out(key, now).model_dump(), key=secret)
    except IntegrityError:
        raise name_taken("operator key", body.name, _KEY_FIX) from None


@router.delete("/operator-keys/{name}", status_code=204, response_class=Response,
               responses={404: {"model": schemas.ErrorOut}, 409: {"model": schemas.ErrorOut}})
def revoke_key(name: str, request: Request, _: str = Depends(require_admin)) -> Response:
    """Revoke a key: refused from its next request on. The last active admin key for every fleet cannot be
    revoked (only such a key manages keys)."""
    scope_of(request).require_every_fleet(request, "managing operator keys")
    state = server_state(request)
    now = state.clock()
    with state.db.session() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.name == name))
        if key is None:
            known = ", ".join(session.scalars(select(ApiKey.name).order_by(ApiKey.name)).all()) or "none"
            raise NotFoundError("no operator key with that name", value=name, field="name",
                                fix=f"known keys: {known}")
        if key.revoked_at is None:
            if key.role == "admin" and key.fleets is None:
                admins = session.scalar(select(func.count(ApiKey.id)).where(
                    ApiKey.role == "admin", ApiKey.revoked_at.is_(None), ApiKey.fleets.is_(None),
                    (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now)))
                if (admins or 0) <= 1:
                    raise ConflictError("this is the last active admin key: revoking it would lock every operator out",
                                        value=name, field="name",
                                        fix="create another admin key first (edgemill keys operator create NAME --role admin)")
            key.revoked_at = now
    return Response(status_code=204)


@router.get("/audit", response_model=list[schemas.AuditEventOut], responses={200: {"headers": {
    TOTAL_HEADER: {"description": "How many events match the filters (all pages)", "schema": {"type": "integer"}},
    FOLDED_HEADER: {"description": "How many older events the retention period folded into per-day counts "
                                   "(GET /api/v1/audit/folded)", "schema": {"type": "integer"}}}}})
def audit(request: Request, response: Response, key: str | None = None, operation: str | None = None,
          fleet: str | None = Query(None, description="changes to this fleet's things"),
          path: str | None = Query(None, description="requests to this path or below it, e.g. /api/v1/deployments/7"),
          outcome: schemas.Outcome | None = None, since: float | None = Query(None, description="unix seconds"),
          until: float | None = Query(None, description="unix seconds"),
          before_id: int | None = Query(None, ge=1, le=schemas.INT32_MAX, description="page: events older than this id"),
          limit: int = Query(AUDIT_PAGE_DEFAULT, ge=1, le=AUDIT_PAGE_MAX),
          _: str = Depends(require_viewer)) -> list[schemas.AuditEventOut]:
    """State-changing operator requests, newest first: who (key name), from where, what, the outcome, and
    the fleet it touched. ``operation`` matches part of the route (e.g. ``deployments``). A key limited to
    some fleets sees the changes to those fleets and its own requests."""
    state = server_state(request)
    scope = scope_of(request)
    where = []
    if scope.limited:
        where.append(AuditEvent.fleet.in_(sorted(scope.fleets or ())) | (AuditEvent.key_name == scope.key))
    if fleet is not None:
        where.append(AuditEvent.fleet == fleet)
    if key is not None:
        where.append(AuditEvent.key_name == key)
    if operation is not None:
        where.append(AuditEvent.operation.contains(operation))
    if path is not None:
        prefix = path.rstrip("/")
        where.append((AuditEvent.path == prefix) | AuditEvent.path.startswith(prefix + "/", autoescape=True))
    if outcome is not None:
        where.append(AuditEvent.outcome == outcome)
    if since is not None:
        where.append(AuditEvent.at >= since)
    if until is not None:
        where.append(AuditEvent.at < until)
    with state.db.session() as session:
        response.headers[TOTAL_HEADER] = str(session.scalar(select(func.count(AuditEvent.id)).where(*where)))
        response.headers[FOLDED_HEADER] = str(session.scalar(select(func.coalesce(func.sum(AuditFold.events), 0))
                                                             .where(*_fold_scope(scope))))
        if before_id is not None:
            where.append(AuditEvent.id < before_id)
        rows = session.scalars(select(AuditEvent).where(*where).order_by(AuditEvent.id.desc()).limit(limit))
        return [schemas.AuditEventOut(id=e.id, at=ts(e.at), key=e.key_name, role=e.role, remote=e.remote,  # type: ignore[arg-type]
                                      method=e.method, path=e.path, operation=e.operation, status=e.status,
                                      outcome=e.outcome, fleet=e.fleet) for e in rows]


def _fold_scope(scope: FleetScope) -> list[Any]:
    """Folded counts carry no fleet: a key limited to some fleets sees only its own."""
    return [AuditFold.key_name == scope.key] if scope.limited else []


@router.get("/audit/folded", response_model=list[schemas.AuditFoldOut])
def audit_folded(request: Request, key: str | None = None, _: str = Depends(require_viewer)) -> list[schemas.AuditFoldOut]:
    """What the retention period folded (``--audit-retention-s``): per UTC day, key, operation and outcome,
    how many events there were, newest day first (a key limited to some fleets: its own only)."""
    state = server_state(request)
    where = _fold_scope(scope_of(request)) + ([] if key is None else [AuditFold.key_name == key])
    with state.db.session() as session:
        rows = session.execute(select(AuditFold.day, AuditFold.key_name, AuditFold.operation, AuditFold.outcome,
                                      func.sum(AuditFold.events)).where(*where)
                               .group_by(AuditFold.day, AuditFold.key_name, AuditFold.operation, AuditFold.outcome)
                               .order_by(AuditFold.day.desc(), AuditFold.key_name, AuditFold.operation)).all()
    return [schemas.AuditFoldOut(day=ts(day), key=name or None, operation=operation, outcome=outcome,  # type: ignore[arg-type]
                                 events=int(events)) for day, name, operation, outcome, events in rows]
