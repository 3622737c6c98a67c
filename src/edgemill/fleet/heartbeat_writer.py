"""Group commit for heartbeats: the ones that arrive while a write is under way go in the next one.

Written one by one, every heartbeat paid for its own transaction (five round trips, a commit, a trip to
a worker thread); at 10,000 devices that overhead alone kept one server process busy. Here a heartbeat
joins a queue; whenever no write is running, everything queued (up to ``max_batch``) goes to the
database in one transaction (:func:`.heartbeats.ingest_many`) and each handler gets its own outcome.
A lone heartbeat is written at once, so a quiet server answers as fast as before; a busy one writes
more per transaction instead of queueing transactions.

A refused heartbeat fails only its own request. A failure of the write itself (the database away)
fails the heartbeats of that write, each with the error (answered 503 like any other request);
a deadlock with another replica is retried once before that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError

from ..errors import UserError, first_line
from . import schemas
from .config import ServerConfig
from .db import Database
from .desired import desired_state, needs_action
from .drift_refs import References
from .heartbeats import Beat, ingest_many

log = logging.getLogger("edgemill.server")

MAX_BATCH = 256  # heartbeats per transaction: past this, longer transactions only hold row locks longer


@dataclass(frozen=True)
class Answered:
    """What a recorded heartbeat is answered with, and whether the device has something to do."""

    device_id: int
    desired: schemas.DesiredStateOut
    act: bool
    answered_at: float  # server clock, when its transaction ran


class HeartbeatWriter:
    def __init__(self, db: Database, config: ServerConfig, clock: Callable[[], float],
                 max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._config = config
        self._clock = clock
        self._max_batch = max_batch
        self._queue: list[tuple[Beat, asyncio.Future[Answered], float]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written (tests and benchmarks read these)
        self.written = 0  # heartbeats they carried, refused ones included
        self.metrics: Any = None  # observability.ServerMetrics, when the app has one
        self.references = References(config.drift_reference_ttl_s)  # drift references, cached per package

    async def submit(self, secret: str, body: schemas.HeartbeatIn) -> Answered:
        """Record one heartbeat (with whatever else is waiting) and return its answer; raises its refusal."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:  # a new event loop (tests): start over
            self._task, self._queue = None, []
        future: asyncio.Future[Answered] = loop.create_future()
        self._queue.append((Beat(secret, body), future, time.perf_counter()))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
            started = time.perf_counter()
            try:
                outcomes = await run_in_threadpool(self._write, [beat for beat, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every heartbeat of the batch is answered with it
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._observe(batch, started)
            for (_, future, _), outcome in zip(batch, outcomes):
                if future.done():  # the client went away; what it sent is recorded all the same
                    continue
                if isinstance(outcome, UserError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _observe(self, batch: list[tuple[Beat, asyncio.Future[Answered], float]], started: float) -> None:
        if self.metrics is None:
            return
        self.metrics.heartbeat_write.observe(time.perf_counter() - started)
        self.metrics.heartbeat_batch.observe(len(batch))
        for _, _, submitted in batch:
            self.metrics.heartbeat_queue.observe(started - submitted)

    def _write(self, beats: list[Beat]) -> list[Answered | UserError]:
        for attempt in (1, 2):
            try:
                return self._write_once(beats)
            except DBAPIError as exc:
                if attempt == 2 or not _is_deadlock(exc):
                    raise
                log.info("heartbeat batch retried after a deadlock (%s)", first_line(exc))
        raise AssertionError("unreachable")

    def _write_once(self, beats: list[Beat]) -> list[Answered | UserError]:
        now = self._clock()
        interval = self._config.heartbeat_interval_s
        answers: list[Answered | UserError] = []
        with self._db.session() as session:
            for beat, got in zip(beats, ingest_many(session, beats, now, self._config, self.references)):
                if isinstance(got, UserError):
                    answers.append(got)
                    continue
                desired = desired_state(session, got.device_id, got.device_name, beat.body.seq, interval, got.rollouts)
                reported = {m.name: m.package_id for m in beat.body.models}
                failed = {(f.model, f.package_id) for f in beat.body.failures}
                answers.append(Answered(got.device_id, desired, needs_action(desired, reported, failed), now))
        self.batches += 1
        self.written += len(beats)
        return answers


def _is_deadlock(exc: DBAPIError) -> bool:
    """PostgreSQL's deadlock_detected / serialization_failure, SQLite's busy snapshot: safe to run again."""
    code = getattr(exc.orig, "sqlstate", None)
    return code in ("40P01", "40001") or "database is locked" in str(exc.orig)
