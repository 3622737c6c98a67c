"""Held heartbeats (long poll), woken when their device's desired state may have changed.

A fleet holds most of its heartbeats most of the time: 10,000 devices long-polling for 25 s of every
30 are 8,000 held requests. Re-reading each one's desired state every check interval would be
thousands of queries a second doing nothing. Instead each replica runs one watcher that asks the
database, once per check interval, which devices were stamped ``desired_at`` since it last looked
(:func:`desired.stamp_changed` stamps them wherever a rollout assigns or rolls back), reads the desired
state of those of them that have held heartbeats here (one query for all: a rollout wave stamps
thousands at once), and wakes those heartbeats with it. A woken heartbeat answers if the generation
moved and goes on waiting otherwise. A stamp written by another replica is seen the same way: the
watcher reads the database, not memory, so replicas need no channel between them.

Clocks: stamps are the writing replica's clock. The watcher looks back ``lookback_s`` further than its
last pass, so a replica whose clock runs a little behind is still seen; a stamp seen twice wakes a
heartbeat that re-reads, finds nothing new, and goes on waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from ..errors import first_line
from . import schemas
from .db import Database, database_unavailable
from .db.tables import Device
from .desired import desired_state, rollouts_of_devices

log = logging.getLogger("edgemill.server")


class DesiredWatch:
    def __init__(self, db: Database, clock: Callable[[], float], check_s: float, lookback_s: float = 10.0,
                 interval_s: float = 30.0) -> None:
        self._db = db
        self._interval_s = interval_s
        self._clock = clock
        self._check_s = check_s
        self._lookback_s = max(lookback_s, 4 * check_s)
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._fresh: dict[int, schemas.DesiredStateOut] = {}  # device id → desired state read at its last wake
        self._seen: dict[int, float] = {}  # device id → the last stamp this watcher acted on
        self._since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    # --- the held heartbeat's side -----------------------------------------------------------

    def hold(self, device_id: int, answered_at: float) -> asyncio.Event:
        """Register a held heartbeat whose answer was computed at ``answered_at`` (server clock)."""
        self._ensure_running()
        event = asyncio.Event()
        self._waiters.setdefault(device_id, set()).add(event)
        stamp = self._seen.get(device_id)
        if stamp is not None and stamp >= answered_at - 1.0:  # a change raced the answer: re-read at once
            self._fresh.pop(device_id, None)  # (what the watcher read may be older than that answer)
            event.set()
        return event

    def fresh(self, device_id: int) -> schemas.DesiredStateOut | None:
        """The device's desired state as the watcher read it when it last woke the device's heartbeats
        (device and seq are not the heartbeat's: the caller fills them in); None if it has not."""
        return self._fresh.get(device_id)

    def release(self, device_id: int, event: asyncio.Event) -> None:
        waiting = self._waiters.get(device_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[device_id]
                self._fresh.pop(device_id, None)

    @property
    def held(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    # --- the watcher -------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._check_s)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - the database may be away; held heartbeats time out as usual
                log.warning("long-poll watcher: could not read desired-state stamps (%s)", first_line(exc),
                            exc_info=not database_unavailable(exc))
            if not self._waiters:
                self._task = None
                return  # restarted by the next held heartbeat

    async def check(self) -> int:
        """One pass: wake the held heartbeats of devices stamped since the last pass; returns how many."""
        now = self._clock()
        since = (self._since if self._since is not None else now) - self._lookback_s
        changed = await run_in_threadpool(self._stamped_since, since)
        self._since = now
        self.passes += 1
        due = []
        for device_id, stamp in changed:
            if self._seen.get(device_id) == stamp:
                continue
            self._seen[device_id] = stamp
            if device_id in self._waiters:
                due.append(device_id)
        horizon = now - 2 * self._lookback_s
        if len(self._seen) > 1000:
            self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
        if not due:
            return 0
        fresh = await run_in_threadpool(self._desired_of, due)
        woken = 0
        for device_id in due:
            waiting = self._waiters.get(device_id)
            if not waiting:  # answered while the states were read
                continue
            self._fresh[device_id] = fresh[device_id]
            for event in waiting:
                event.set()
                woken += 1
        return woken

    def _stamped_since(self, since: float) -> list[tuple[int, float]]:
        with self._db.session() as session:
            return [(i, t) for i, t in session.execute(select(Device.id, Device.desired_at)
                                                       .where(Device.desired_at > since))]

    def _desired_of(self, device_ids: list[int]) -> dict[int, schemas.DesiredStateOut]:
        with self._db.session() as session:
            rollouts = rollouts_of_devices(session, device_ids)
            return {i: desired_state(session, i, "", 0, self._interval_s, rollouts.get(i, [])) for i in device_ids}
