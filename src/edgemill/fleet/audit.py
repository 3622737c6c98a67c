"""The audit trail: one event per state-changing operator request (POST, PUT, PATCH, DELETE under /api/v1,
the device API apart), appended once the request is answered, whatever the answer: who (the key's name,
never its secret), from where, which operation, the status and its outcome, and the fleet it touched
when it touched one (noted by fleet/scope.py's check).

Plain ASGI middleware, so no route can forget it: a new endpoint is audited the day it exists (a test
walks the OpenAPI document to hold that). Reads never write an event. The event is written after the
response, in a worker thread; should the database refuse it, the event goes to the log at ERROR level
instead, so it is never silently dropped.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db.tables import AuditEvent
from .state import ServerState

log = logging.getLogger("edgemill.fleet.audit")
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_PREFIX = "/api/v1/"
DEVICE_PREFIX = "/api/v1/agent/"  # devices' own requests (register, heartbeat, captures): not operators'


def audited(method: str, path: str) -> bool:
    return method in CHANGING and path.startswith(AUDITED_PREFIX) and not path.startswith(DEVICE_PREFIX)


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "refused"
    return "rejected" if status < 500 else "failed"


def _append(state: ServerState, event: dict[str, Any]) -> None:
    try:
        with state.db.session() as session:
            session.add(AuditEvent(**event))
    except Exception:  # noqa: BLE001 - the request is answered; keep the event in the log rather than lose it
        log.exception("could not append an audit event; it follows here", extra={"fields": event})


class AuditTrail:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        status = 500

        async def keep_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, keep_status)
        finally:
            request_state = scope.get("state") or {}
            operator = request_state.get("operator")
            route = getattr(scope.get("route"), "path", None) or scope["path"]
            client = scope.get("client")
            event = {"at": self.state.clock(), "key_name": getattr(operator, "name", None),
                     "role": getattr(operator, "role", None), "remote": client[0] if client else "",
                     "method": scope["method"], "path": scope["path"][:2000],
                     "operation": f"{scope['method']} {route}"[:256], "status": status, "outcome": outcome_of(status),
                     "fleet": request_state.get("audit_fleet")}
            await anyio.to_thread.run_sync(partial(_append, self.state, event))
