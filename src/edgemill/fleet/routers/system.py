"""Operations endpoints: /healthz for load balancers, /metrics for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..state import server_state

router = APIRouter(tags=["system"])


@router.get("/healthz", responses={503: {"description": "The database or the object store is unreachable"}})
def healthz(request: Request) -> JSONResponse:
    """200 when this replica can reach its database and object store."""
    state = server_state(request)
    checks: dict[str, str] = {}
    for name, check in (("database", state.db.ping), ("store", state.store.check)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure makes the replica unhealthy; say which
            checks[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unhealthy", **checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text: requests by route and status, latency, fleet gauges."""
    state = server_state(request)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
