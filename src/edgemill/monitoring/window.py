"""Histograms of one loaded model's features over a sliding window, counted on the device.

The Predict path only copies what it needs into buffers allocated once and reused: each small watched
tensor as it came (a tabular row, a classifier's scores) and, of a large image, the regular grid of
pixels its channel statistics are taken on (``features.grid_view``); no reference to a caller's buffer
is held. Statistics and binning happen in batches, when the pending rows pass ``flush_rows``, a buffer
passes ``flush_bytes`` or someone reads the counts (a heartbeat, a metrics scrape): vectorised over many
rows, they cost little per call.

Counts go to two places: ``totals()``, cumulative since the window was made (a heartbeat sends them
under the window's ``epoch``, like Prometheus counters: a lost heartbeat loses nothing, and the server
gets any interval's counts by subtraction, a new epoch telling it the counters restarted), and a ring
of ``slots`` time slots covering ``window_s`` seconds, for the device's own drift scores.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .drift import js_distance, psi
from .features import Feature, bins_digest, channel_stats, grid_view, per_sample

SMALL_TENSOR = 4096  # elements per call below which a tensor is copied and reduced later, in a batch


class FeatureWindow:
    def __init__(self, features: Sequence[Feature], window_s: float = 600.0, slots: int = 10,
                 flush_rows: int = 512, flush_bytes: int = 2 << 20, clock: Callable[[], float] = time.monotonic) -> None:
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
        self._raw: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in self._groups}  # small tensors' copies
        self._grids = {k: _GridBuffer(max(1, flush_bytes), flush_rows) for k in self._groups}  # images' pixel grids
        self._pending_stats: dict[tuple[str, str, str], list[np.ndarray]] = {}  # other large tensors, reduced
        self._pending_rows = 0
        self.samples = 0  # counted so far (for "not enough data yet")

    # --- Predict path ---------------------------------------------------------------------------------
    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        rows, full = 0, False
        with self._lock:
            for (side, tensor), members in self._groups.items():
                array = (inputs if side == "input" else outputs).get(tensor)
                if array is None:
                    continue
                a = np.asarray(array)
                rows = max(rows, a.shape[0] if a.ndim else 1)
                if a.size <= SMALL_TENSOR:
                    self._raw[(side, tensor)].append(a.copy())
                    continue
                layout = members[0][1].layout
                if layout:  # an image: keep its grid (a strided read); the statistics are taken in the batch
                    full = self._grids[(side, tensor)].add(grid_view(a, layout)) or full
                    continue
                for statistic in {f.statistic for _, f in members}:
                    self._pending_stats.setdefault((side, tensor, statistic), []).append(
                        np.atleast_1d(per_sample(statistic, a)))
            self._pending_rows += rows
            if full or self._pending_rows >= self._flush_rows:
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
            raw = self._raw[(side, tensor)]
            batches = _batches(raw)
            raw.clear()
            for grid in self._grids[(side, tensor)].take():  # both channel statistics of every pending frame
                mean, std = channel_stats(grid, members[0][1].layout)
                self._pending_stats.setdefault((side, tensor, "channel_mean"), []).append(mean)
                self._pending_stats.setdefault((side, tensor, "channel_std"), []).append(std)
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


class _GridBuffer:
    """Images' pixel grids kept for the next batch, as float32: copied on the Predict path into one block
    allocated once and reused (no allocation per call and no joining at the flush) while the per-frame
    shape stays the same; grids of another shape (a dynamic axis) are kept as copies beside it. Holds at
    most about ``budget`` bytes: ``add`` says when it is full and the window must flush."""

    def __init__(self, budget: int, max_rows: int) -> None:
        self._budget = budget
        self._max_rows = max(1, max_rows)
        self._block: np.ndarray | None = None
        self._used = 0  # rows of the block holding data
        self._row_bytes = 0  # of the block
        self._others: list[np.ndarray] = []
        self._bytes = 0  # held in all: the block's used rows and the others

    def add(self, rows: np.ndarray) -> bool:
        """Copy ``rows`` (axis 0: samples; any strides and dtype) in; True once the buffer is full."""
        n, used, block = rows.shape[0], self._used, self._block
        if block is not None and used + n <= len(block) and block.shape[1:] == rows.shape[1:]:
            block[used:used + n] = rows  # the fast path: same shape as the calls before
            self._used = used = used + n
            self._bytes += n * self._row_bytes
            return used >= len(block) or self._bytes >= self._budget
        row_bytes = math.prod(rows.shape[1:]) * 4
        if used == 0:  # (re)shape the block for what comes now
            capacity = max(1, min(self._max_rows, self._budget // max(1, row_bytes)))
            self._block, self._row_bytes = np.empty((capacity, *rows.shape[1:]), dtype=np.float32), row_bytes
            if n <= capacity:
                return self.add(rows)
        self._others.append(np.array(rows, dtype=np.float32))
        self._bytes += n * row_bytes
        return self._bytes >= self._budget

    def take(self) -> list[np.ndarray]:
        """Everything kept, as few arrays as the shapes allow, and empty again. The block's part is a view:
        use it before the next ``add``."""
        out = [self._block[:self._used]] if self._block is not None and self._used else []
        out += _batches(self._others)
        self._used, self._others, self._bytes = 0, [], 0
        return out


def _batches(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Copies joined into as few batches as their shapes allow (a dynamic axis gives several)."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for a in arrays:
        a = a if a.ndim else a.reshape(1)
        groups.setdefault(a.shape[1:], []).append(a)
    return [group[0] if len(group) == 1 else np.concatenate(group) for group in groups.values()]
