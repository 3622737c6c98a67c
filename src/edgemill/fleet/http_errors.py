"""Every failure leaves as JSON (schemas.ErrorOut) with the right status, naming the field and the fix.

EdgemillError subclasses map through the one status table in edgemill.errors; request validation
errors name the first offending field; anything unexpected is logged with its traceback and answered
as a 500 that says where to look, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EdgemillError, RateLimitedError, StaleRequestError, VerificationError, status_for
from .db import database_unavailable

log = logging.getLogger("edgemill.server")


def error_body(exc: EdgemillError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": type(exc).__name__, "message": exc.one_line(), "field": exc.field,
        "value": None if exc.value is None else str(exc.value)[:500], "fix": exc.fix,
    }
    if isinstance(exc, VerificationError):
        body["reason"] = exc.reason.value
    if isinstance(exc, StaleRequestError):
        body["last_seq"] = exc.last_seq
    return body


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


async def _edgemill_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EdgemillError)
    headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, RateLimitedError) else None
    if status_for(exc).http_status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(exc), status_code=status_for(exc).http_status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field(tuple(first.get("loc", ())))
    value = first.get("input")
    shown = None if value is None or isinstance(value, (dict, list)) else str(value)[:200]
    message = f"invalid {field or 'request'}: {first.get('msg')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return JSONResponse({"error": "ValidationError", "message": message, "field": field, "value": shown,
                         "fix": f"correct {field or 'the request'}; the API schema is at /openapi.json"},
                        status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    fixes = {404: "check the path; the API is documented at /docs", 405: "check the HTTP method at /docs"}
    return JSONResponse({"error": "HTTPError", "message": str(exc.detail), "field": None, "value": request.url.path,
                         "fix": fixes.get(exc.status_code)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


DATABASE_RETRY_AFTER_S = 5


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        return await _unexpected(request, exc)
    # One line, no traceback: during an outage every request lands here.
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, cause)
    return JSONResponse({"error": "ServiceUnavailable", "message": f"the database is unavailable: {cause}",
                         "field": None, "value": None,
                         "fix": "retry after the Retry-After delay; operators: check the database (GET /healthz)"},
                        status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "InternalError", "message": f"internal error: {type(exc).__name__}",
                         "field": None, "value": None,
                         "fix": "this is a bug in edgemill: the server log has the details; please report it"},
                        status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(EdgemillError, _edgemill_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
