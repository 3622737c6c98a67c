"""When the server's garbage collector may stop the world.

A long-polling control plane keeps every held heartbeat alive for most of an interval: at 10,000
devices that is some 8,000 requests, each a chain of a hundred or so objects, and every one of them
lives long enough to reach the collector's oldest generation. CPython (3.11) walks that whole
generation whenever it has grown by a quarter, which at that scale meant a 0.4-0.7 s pause every
few seconds, every request in flight waiting behind it (measured: it set the heartbeat p99).

Almost all of that garbage is freed by reference counting anyway; the collector is only needed for
reference cycles, and those are nearly always young (an exception and its traceback, a closure) and
caught by the cheap young-generation passes, which stay as they are. So the automatic full pass is
turned off while the server runs and one is run every ``full_every_s`` instead: the same pause, a
fraction as often, and cycles that outlive the young passes are still reclaimed within minutes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("edgemill.server")

FULL_EVERY_S = 300.0
_NEVER = 2**31 - 1  # young passes between automatic full passes: never, in practice


class CollectorSchedule:
    def __init__(self, full_every_s: float = FULL_EVERY_S) -> None:
        self.full_every_s = full_every_s
        self.full_passes = 0
        self.last_pause_s = 0.0
        self._saved: tuple[int, ...] | None = None

    def start(self) -> None:
        """Freeze what exists now (the loaded libraries: it lives as long as the process) and stop
        automatic full passes."""
        gc.collect()
        gc.freeze()
        self._saved = gc.get_threshold()
        young, middle = self._saved[0], self._saved[1]
        gc.set_threshold(young, middle, _NEVER)

    def stop(self) -> None:
        """Put the collector back as it was (an app started and stopped in a longer process: tests)."""
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            gc.unfreeze()
            self._saved = None

    def collect(self) -> int:
        """One full pass now; returns the objects it freed."""
        started = time.perf_counter()
        freed = gc.collect(2)
        self.last_pause_s = time.perf_counter() - started
        self.full_passes += 1
        log.debug("full garbage collection: %d objects freed in %.0f ms", freed, self.last_pause_s * 1000)
        return freed

    async def run(self, stop: asyncio.Event) -> None:
        """A full pass every ``full_every_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.full_every_s)
            except asyncio.TimeoutError:
                self.collect()
