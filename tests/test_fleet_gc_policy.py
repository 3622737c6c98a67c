"""The server's collector schedule: no automatic full passes while it runs, one every full_every_s,
and the collector put back as it was when the server stops."""

from __future__ import annotations

import asyncio
import gc

from edgemill.fleet.gc_policy import CollectorSchedule


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_full_passes_run_on_the_schedule_and_reclaim_old_cycles() -> None:
    before = gc.get_threshold()
    schedule = CollectorSchedule(full_every_s=0.05)
    schedule.start()
    try:
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 10**9
        for _ in range(3):  # old garbage: survives young passes, only a full one frees it
            cycle = Cycle()
            gc.collect(1)
            gc.collect(1)
            del cycle

        async def run_briefly() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(schedule.run(stop))
            while schedule.full_passes < 2:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(task, 5)

        asyncio.run(run_briefly())
        assert schedule.full_passes >= 2 and schedule.last_pause_s > 0
        assert not any(isinstance(o, Cycle) for o in gc.get_objects())
    finally:
        schedule.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
