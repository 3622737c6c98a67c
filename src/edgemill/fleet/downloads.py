"""This replica's package-download limiter, and when to tell a refused device to come back.

A rollout wave tells thousands of devices at once (their long polls wake together). At most
``limit`` downloads run at a time; the rest get 429 with a Retry-After that spreads them over the
time the backlog needs at the measured download rate (refusals lately × mean download time ÷ slots),
jittered, so the fleet does not come back in one herd and fill the server with refusals.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

MIN_RETRY_S = 1.0
MAX_RETRY_S = 300.0
REFUSALS_TAU_S = 10.0  # refusals count for about this long (exponential decay)
FIRST_GUESS_S = 0.05  # the mean download time before any download has finished


class DownloadGate:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._refusals = 0.0  # decaying count
        self._refusals_at = clock()
        self._mean_s = FIRST_GUESS_S  # moving mean of download durations

    def try_acquire(self) -> float | None:
        """The start time of a download slot taken, or None when all are busy (the refusal is counted)."""
        if self._slots.acquire(blocking=False):
            return self._clock()
        with self._lock:
            self._decay()
            self._refusals += 1
        return None

    def release(self, started: float) -> None:
        """Give the slot back; ``started`` is what try_acquire returned (feeds the mean duration)."""
        took = max(0.0, self._clock() - started)
        with self._lock:
            self._mean_s += 0.1 * (took - self._mean_s)
        self._slots.release()

    def retry_after_s(self) -> float:
        """When a refused device should try again: the backlog's drain time, jittered, within bounds."""
        with self._lock:
            self._decay()
            drain = self._refusals * self._mean_s / self.limit
        spread = min(MAX_RETRY_S - MIN_RETRY_S, max(1.0, drain))
        return MIN_RETRY_S + self._rng.uniform(0.0, spread)

    def _decay(self) -> None:
        now = self._clock()
        self._refusals *= math.exp(-(now - self._refusals_at) / REFUSALS_TAU_S)
        self._refusals_at = now
