"""Histograms of one loaded model's features over a sliding window, counted on the device.

The Predict path only keeps what it needs: a copy of each small watched tensor (a tabular row, a
classifier's scores) or, for a large one (an image), its per-sample channel statistics, computed at once
so no reference to a caller's buffer is held. Binning happens in batches, when the pending rows pass
``flush_rows`` or when someone reads the counts (a heartbeat, a metrics scrape): vectorised over many
rows, it costs little per call.

Counts go to two places: ``totals()``, cumulative since the window was made (a heartbeat sends them
under the window's ``epoch``, like Prometheus counters: a lost heartbeat loses nothing, and the server
gets any interval's counts by subtraction, a new epoch telling it the counters restarted), and a ring
of ``slots`` time slots covering ``window_s`` seconds, for the device's own drift scores.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .drift import js_distance, psi
from .features import Feature, bins_digest, channel_stats, image_grid, per_sample

SMALL_TENSOR = 4096  # elements per call below which a tensor is copied and reduced later, in a batch


class FeatureWindow:
    def __init__(self, features: Sequence[Feature], window_s: float = 600.0, slots: int = 10,
                 flush_rows: int = 512, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1 or window_s <= 0:
            raise ValueError(f"need slots >= 1 and window_s > 0, got {slots}, {window_s}")
        self.features = list(features)
        self._clock = clock
        self._slot_s = window_s / slots
        self._ring = np.zeros((slots, sum(f.bins for f in self.features)), dtype=np.int64)
        self._ring_start = [0.0] * slots  # when each slot's interval began
        self._total = np.zeros(self._ring.shape[1], dtype=np.int64)
        self.epoch = uuid.uuid4().hex[:12]  # names this run of the counters
        self.bins_digest = bins_digest(self.features)  # what the counts are over (the server checks it)
        self._offsets = np.cumsum([0] + [f.bins for f in self.features])
        self._flush_rows = flush_rows
        self._lock = threading.Lock()
        # What each call keeps, per (side, tensor): "raw" copies or reduced per-sample statistic groups.
        self._groups: dict[tuple[str, str], list[tuple[int, Feature]]] = {}
        for i, f in enumerate(self.features):
            self._groups.setdefault((f.side, f.tensor), []).append((i, f))
        self._pending: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in self._groups}
        self._pending_stats: dict[tuple[str, str, str], list[np.ndarray]] = {}
        self._pending_rows = 0
        self.samples = 0  # counted so far (for "not enough data yet")

    # --- Predict path ---------------------------------------------------------------------------------
    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        rows = 0
        with self._lock:
            for (side, tensor), members in self._groups.items():
                array = (inputs if side == "input" else outputs).get(tensor)
                if array is None:
                    continue
                a = np.asarray(array)
                rows = max(rows, a.shape[0] if a.ndim else 1)
                if a.size <= SMALL_TENSOR:
                    self._pending[(side, tensor)].append(a.copy())
                    continue
                layout = members[0][1].layout
                statistics = {f.statistic for _, f in members}
                if layout:  # an image: grid it once, both channel statistics in one pass
                    mean, std = channel_stats(image_grid(a, layout), layout)
                    values = {"channel_mean": mean, "channel_std": std}
                else:
                    values = {statistic: np.atleast_1d(per_sample(statistic, a)) for statistic in statistics}
                for statistic in statistics:
                    self._pending_stats.setdefault((side, tensor, statistic), []).append(values[statistic])
            self._pending_rows += rows
            if self._pending_rows >= self._flush_rows:
                self._flush_locked()

    # --- readers ----------------------------------------------------------------------------------------
    def totals(self) -> dict[str, list[int]]:
        """Counts per feature key since this window was made (see ``epoch``)."""
        with self._lock:
            self._flush_locked()
            total = self._total.copy()
        return {f.key: total[self._offsets[i]:self._offsets[i + 1]].tolist() for i, f in enumerate(self.features)}

    def totals_in_order(self) -> list[list[int]]:
        """``totals()`` as a list in the features' order (the heartbeat's compact form)."""
        with self._lock:
            self._flush_locked()
            total = self._total.tolist()
        return [total[self._offsets[i]:self._offsets[i + 1]] for i in range(len(self.features))]

    def window_counts(self) -> dict[str, np.ndarray]:
        """Counts per feature key over the sliding window."""
        with self._lock:
            self._flush_locked()
            self._expire_locked()
            total = self._ring.sum(axis=0)
        return {f.key: total[self._offsets[i]:self._offsets[i + 1]] for i, f in enumerate(self.features)}

    def drift(self) -> dict[str, dict[str, float | None]]:
        """PSI and Jensen-Shannon distance of the window against the baseline, per feature key."""
        counts = self.window_counts()
        return {f.key: {"psi": psi(f.baseline, counts[f.key]), "js": js_distance(f.baseline, counts[f.key])}
                for f in self.features if f.baseline}

    # --- internals --------------------------------------------------------------------------------------
    def _flush_locked(self) -> None:
        if not self._pending_rows:
            return
        counts = np.zeros_like(self._total)
        for (side, tensor), members in self._groups.items():
            raw = self._pending[(side, tensor)]
            batches = _batches(raw)
            raw.clear()
            cache: dict[str, np.ndarray] = {}
            for i, f in members:
                if f.statistic not in cache:
                    parts = self._pending_stats.pop((side, tensor, f.statistic), [])
                    parts += [np.atleast_1d(per_sample(f.statistic, b, f.layout)) for b in batches]
                    cache[f.statistic] = np.concatenate(parts) if parts else np.empty(0)
                values = cache[f.statistic]
                if values.size == 0:
                    continue
                if f.index >= 0 and values.ndim > 1:
                    values = values[:, f.index]
                counts[self._offsets[i]:self._offsets[i + 1]] += f.count(values)
        self._pending_stats.clear()
        self._pending_rows = 0
        self._total += counts
        self._expire_locked()
        self._ring[self._current_slot_locked()] += counts
        n = [int(counts[self._offsets[i]:self._offsets[i + 1]].sum()) for i in range(len(self.features))]
        self.samples += max(n, default=0)

    def _current_slot_locked(self) -> int:
        now = self._clock()
        slot = int(now // self._slot_s) % len(self._ring)
        start = (now // self._slot_s) * self._slot_s
        if self._ring_start[slot] != start:  # the slot last held an older interval
            self._ring[slot] = 0
            self._ring_start[slot] = start
        return slot

    def _expire_locked(self) -> None:
        horizon = self._clock() - self._slot_s * len(self._ring)
        for slot, start in enumerate(self._ring_start):
            if start <= horizon:
                self._ring[slot] = 0


def _batches(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Pending copies joined into as few batches as their shapes allow (a dynamic axis gives several)."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for a in arrays:
        a = a if a.ndim else a.reshape(1)
        groups.setdefault(a.shape[1:], []).append(a)
    return [group[0] if len(group) == 1 else np.concatenate(group) for group in groups.values()]
