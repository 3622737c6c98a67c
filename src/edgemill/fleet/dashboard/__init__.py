"""The operator dashboard: static pages served by the control-plane app under ``/dashboard/``.

The pages are plain HTML, CSS and JavaScript with a vendored chart library (static/vendor/): no build
step and no request leaves the server, so the dashboard works on an offline site. They read the same
``/api/v1`` an operator's scripts use, with the operator's API key; nothing here is in the OpenAPI
contract.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"

# The pages render names and messages that devices send (failure reasons, agent versions): the policy
# keeps any markup that slips through from running or loading anything. uPlot sets inline styles.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """Revalidated on every load (the ETag makes that cheap): the scripts are not versioned by name, so
    a browser must not keep running yesterday's modules against an upgraded server."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at ``/dashboard/`` (and redirect ``/`` there)."""

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard", include_in_schema=False)
    def _dashboard_slashless() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/", include_in_schema=False)
    def _dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    app.mount("/dashboard/static", _StaticFiles(directory=STATIC), name="dashboard-static")
