"""Prometheus metrics and structured (JSON line) logs for the server.

HTTP metrics are labelled by route template (``/api/v1/devices/{name}``), never the raw path, so a
fleet of ten thousand devices does not become ten thousand time series.
"""

from __future__ import annotations

import json
import logging
import time
import random
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("edgemill.server.http")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgemill_server_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("edgemill_server_request_seconds", "HTTP request latency", ["method", "route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 60),
                                 registry=self.registry)
        # The heartbeat writer (group commit): how long a heartbeat waits for a write to start, how long
        # the write takes, and how many heartbeats it carries. Queue waits near the write time mean the
        # writer keeps up; growing waits mean the database or this process is the limit.
        self.heartbeat_queue = Histogram("edgemill_server_heartbeat_queue_seconds",
                                         "Time a heartbeat waited for its write to start",
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                                         registry=self.registry)
        self.heartbeat_write = Histogram("edgemill_server_heartbeat_write_seconds",
                                         "Time one heartbeat write (transaction) took",
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
                                         registry=self.registry)
        self.heartbeat_batch = Histogram("edgemill_server_heartbeat_batch_size", "Heartbeats per write",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.ticks = Counter("edgemill_server_tick_changes", "Changes made by the background tick", ["kind"],
                             registry=self.registry)

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        class _Callback(Collector):
            def collect(self) -> Iterable[Any]:
                return collect()

        self.registry.register(_Callback())


def fleet_gauges(state: Any) -> Callable[[], Iterable[Any]]:
    """Devices by status and firing alerts, counted by the database at scrape time (a scrape of a
    10,000-device fleet reads two rows of counts, not 10,000 device records)."""
    from sqlalchemy import func, select

    from .db.tables import Alert
    from .views import status_counts

    def collect() -> Iterable[Any]:
        now = state.clock()
        with state.db.session() as session:
            counts = status_counts(session, now, state.config)
            firing = session.scalar(select(func.count(Alert.id)).where(Alert.state == "firing")) or 0
        devices = GaugeMetricFamily("edgemill_fleet_devices", "Registered devices by status", labels=["status"])
        for name in ("online", "offline", "degraded", "never_seen"):
            devices.add_metric([name], counts[name])
        yield devices
        alerts = GaugeMetricFamily("edgemill_fleet_alerts_firing", "Alerts firing now")
        alerts.add_metric([], firing)
        yield alerts

    return collect


# Routes that probes and every device call all the time: a line per success would be most of the log
# (10,000 devices heartbeating every 30 s make 29 million a day). Their failures are logged; all of
# them are counted, with their latency, in /metrics.
QUIET_ROUTES = frozenset({"/healthz", "/metrics", "/api/v1/agent/heartbeat", "/api/v1/agent/captures/{capture_id}"})


_ids = random.Random()  # request ids need to be distinct, not secret: no system call per request


class AccessLog:
    """Request ids, per-route Prometheus metrics and one structured log line per request, as plain
    ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a copy of every response body,
    which the heartbeat path cannot afford at fleet scale)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None) \
            or f"{_ids.getrandbits(64):016x}"
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            routine = route in QUIET_ROUTES and status < 400
            if not routine and log.isEnabledFor(logging.INFO):
                log.info("request", extra={"fields": {"request_id": request_id, "method": method, "route": route,
                                                      "path": scope["path"], "status": status,
                                                      "ms": round(elapsed * 1e3, 2)}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"t": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edgemill")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
