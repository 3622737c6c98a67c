"""The background tick every replica runs: advance rollouts, evaluate alerts, deliver webhooks, trim
old metric samples. Each job claims its work in the database, so replicas share it without a leader."""

from __future__ import annotations

import asyncio
import logging

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete

from .alerting import deliver_due, evaluate_all
from .db.tables import MetricSample
from .rollouts import advance_all
from .state import ServerState

log = logging.getLogger("edgemill.server")


def tick(state: ServerState) -> dict[str, int]:
    now = state.clock()
    changes = {"rollouts": advance_all(state.db, now, state.config),
               "alerts": evaluate_all(state.db, now, state.config),
               "webhooks": deliver_due(state.db, now, state.config)}
    with state.db.session() as session:
        session.execute(delete(MetricSample).where(MetricSample.t < now - state.config.metrics_retention_s))
    if state.metrics is not None:
        for kind, n in changes.items():
            state.metrics.ticks.labels(kind).inc(n)
    return changes


async def run_forever(state: ServerState, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await run_in_threadpool(tick, state)
        except Exception:  # noqa: BLE001 - one failed tick is logged; the next one retries
            log.exception("background tick failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=state.config.tick_s)
        except asyncio.TimeoutError:
            pass
