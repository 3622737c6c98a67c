"""The control-plane application: one FastAPI app over one database and one object store.

``create_app(config)`` opens (and migrates) the database, opens the store, loads the trusted keys,
mounts the API routers and the dashboard, and runs the background tick while the app is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import __version__
from ..package.keys import load_public_keys
from . import http_errors
from .auth import ensure_operator_key
from .config import ServerConfig
from .db import open_database
from .gc_policy import CollectorSchedule
from .observability import AccessLog, ServerMetrics, fleet_gauges
from .audit import AuditTrail
from .reconciler import run_forever
from .schemas import ErrorOut
from .routers import accuracy, agent, alerts, captures, deployments, drift, fleets, models, operators, overview, system
from .state import ServerState
from .store import ServerStore

log = logging.getLogger("edgemill.server")

DESCRIPTION = """The edgemill fleet control plane.

Operators authenticate with `Authorization: Bearer <API key>`; devices with their own credential
(from `/api/v1/agent/register`) and reach only `/api/v1/agent/*`, for themselves. Every error is JSON
with `error`, `message`, `field`, `value` and `fix`."""


# The device API first: routes are matched in order, and the heartbeat is most of all requests.
ROUTERS = (agent.router, models.router, fleets.router, deployments.router, captures.router, alerts.router,
           overview.router, drift.router, accuracy.router, operators.router, system.router)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, corrected to say what the server really answers: every error is ErrorOut
    (422 included, which FastAPI would describe as its own HTTPValidationError), and every operation
    behind a credential can answer 401."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorOut"] = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
    roles = _required_roles(ROUTERS)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            role = roles.get((method.upper(), path))
            if role is not None:  # the operator role it needs (auth.ROLES), for clients and the dashboard
                operation["x-required-role"] = role
                if role != "viewer":
                    responses.setdefault("403", {"description": f"The key's role is below {role}", **error})
            if "422" in responses or any(p.get("in") in ("query", "path") for p in operation.get("parameters", [])) \
                    or "requestBody" in operation:
                responses["422"] = {"description": "Invalid request: the field and the fix are named", **error}
            if operation.get("security"):
                responses.setdefault("401", {"description": "No or unknown credential", **error})
            for code, response in responses.items():
                if code.startswith(("4", "5")) and "content" not in response:
                    response.update(error)
    app.openapi_schema = document
    return document


def _required_roles(routers: tuple[Any, ...]) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the operator role its dependency requires (auth.require_role)."""
    from fastapi.routing import APIRoute

    found: dict[tuple[str, str], str] = {}
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            pending = list(route.dependant.dependencies)
            while pending:
                dependency = pending.pop()
                role = getattr(dependency.call, "required_role", None)
                if role is not None:
                    for method in route.methods:
                        found[(method, route.path)] = role
                pending.extend(dependency.dependencies)
    return found


def build_state(config: ServerConfig, clock: Callable[[], float] = time.time) -> ServerState:
    db = open_database(config.db, pool_size=config.db_pool_size)
    store = ServerStore(config.store, endpoint_url=config.s3_endpoint_url, region=config.s3_region)
    keys = load_public_keys([str(k) for k in config.trusted_keys]) if config.trusted_keys else []
    state = ServerState(config=config, db=db, store=store, trusted_keys=keys, clock=clock)
    state.metrics = ServerMetrics()
    state.heartbeats.metrics = state.metrics
    state.metrics.add_collector(fleet_gauges(state))
    if not keys:
        log.warning("no trusted keys: every package upload will be refused; start with --trusted-key PUBLIC.pem")
    return state


def create_app(config: ServerConfig | None = None, *, clock: Callable[[], float] = time.time,
               background: bool = True, state: ServerState | None = None) -> FastAPI:
    config = config or ServerConfig()
    state = state or build_state(config, clock)
    created = ensure_operator_key(state, config.api_key_file)
    if created:
        log.warning("created an operator API key in %s (keep it secret)", config.api_key_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Handlers that touch the database run in worker threads; as many as there are pooled
        # connections, so none waits for (or opens) a connection of its own.
        anyio.to_thread.current_default_thread_limiter().total_tokens = config.db_pool_size
        # Full garbage-collector passes stall every request in flight: what is loaded now is frozen
        # out of them, and they run on a schedule instead of whenever the held heartbeats grow the heap.
        collector = CollectorSchedule()
        collector.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(collector.run(stop))]
        if background:
            tasks.append(asyncio.create_task(run_forever(state, stop)))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            collector.stop()

    app = FastAPI(title="edgemill control plane", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.edgemill = state
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    http_errors.install(app)
    app.add_middleware(AccessLog, metrics=state.metrics)
    app.add_middleware(AuditTrail, state=state)
    for router in ROUTERS:
        app.include_router(router)
    try:
        from .dashboard import mount
    except ImportError:  # the dashboard package is optional in a stripped-down build
        mount = None  # type: ignore[assignment]
    if mount is not None:
        mount(app)
    return app


CONFIG_ENV = "EDGEMILL_SERVER_CONFIG"  # `edgemill server --workers N` hands each worker its config here
LOG_FORMAT_ENV = "EDGEMILL_SERVER_LOG_FORMAT"


def app_from_environment() -> FastAPI:
    """The app of one worker process of `edgemill server --workers N` (uvicorn calls this in each)."""
    from .observability import configure_logging

    configure_logging(json_lines=os.environ.get(LOG_FORMAT_ENV, "json") == "json")
    return create_app(ServerConfig.model_validate_json(os.environ[CONFIG_ENV]))
