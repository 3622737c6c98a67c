"""The background tick every replica runs: advance rollouts, evaluate alerts, deliver webhooks, apply
the retention policy (fold old metric samples, expire rollups and captures). Each job claims its work
in the database, so replicas share it without a leader."""

from __future__ import annotations

import asyncio
import logging

from fastapi.concurrency import run_in_threadpool

from ..errors import first_line
from .alerting import deliver_due, evaluate_all
from .db import database_unavailable
from .audit_retention import fold_audit
from .drift_retention import fold_drift
from .retention import run_retention
from .rollouts import advance_all
from .state import ServerState

log = logging.getLogger("edgemill.server")


def tick(state: ServerState) -> dict[str, int]:
    now = state.clock()
    changes = {"rollouts": advance_all(state.db, now, state.config),
               "alerts": evaluate_all(state.db, now, state.config),
               "webhooks": deliver_due(state.db, now, state.config)}
    if now >= state.retention_due_at:
        state.retention_due_at = now + state.config.retention_every_s
        done = run_retention(state.db, state.store, now, state.config)
        changes.update({"samples_folded": done.samples_folded, "captures_expired": done.captures_expired,
                        "drift_folded": fold_drift(state.db, now, state.config)[0],
                        "audit_folded": fold_audit(state.db, now, state.config)})
    if state.metrics is not None:
        for kind, n in changes.items():
            state.metrics.ticks.labels(kind).inc(n)
    return changes


async def run_forever(state: ServerState, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await run_in_threadpool(tick, state)
        except Exception as exc:  # noqa: BLE001 - one failed tick is logged; the next one retries
            if database_unavailable(exc):  # an outage: one line per tick, not a traceback each
                log.warning("background tick skipped: the database is unavailable (%s)", first_line(exc))
            else:
                log.exception("background tick failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=state.config.tick_s)
        except asyncio.TimeoutError:
            pass
