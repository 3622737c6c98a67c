"""Per-feature statistics of a model's recent inputs (mean, std, min, max over a window), for drift."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np


class FeatureWindow:
    """The last ``window`` rows of one input, first ``max_features`` features of each row.

    A row is one item of the batch (axis 0), flattened. Updating costs one copy of at most
    ``max_features`` values per item; the statistics are computed only when asked for.
    """

    def __init__(self, window: int, max_features: int) -> None:
        self.window = window
        self.max_features = max_features
        self._rows: np.ndarray | None = None
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, array: np.ndarray) -> None:
        if array.dtype.kind not in "biuf" or array.size == 0:
            return
        rows = array.reshape(array.shape[0] if array.ndim > 1 else 1, -1)[:, : self.max_features]
        rows = rows[-self.window:]
        with self._lock:
            if self._rows is None or self._rows.shape[1] != rows.shape[1]:
                self._rows = np.zeros((self.window, rows.shape[1]), dtype=np.float64)
                self._next = self._filled = 0
            end = self._next + len(rows)
            if end <= self.window:
                self._rows[self._next:end] = rows
            else:
                split = self.window - self._next
                self._rows[self._next:] = rows[:split]
                self._rows[: end - self.window] = rows[split:]
            self._next = end % self.window
            self._filled = min(self.window, self._filled + len(rows))

    def stats(self) -> dict[str, list[float]] | None:
        with self._lock:
            if self._rows is None or self._filled == 0:
                return None
            rows = self._rows[: self._filled].copy()
        return {"count": [float(len(rows))] * rows.shape[1],
                "mean": rows.mean(axis=0).tolist(), "std": rows.std(axis=0).tolist(),
                "min": rows.min(axis=0).tolist(), "max": rows.max(axis=0).tolist()}


class InputStats:
    """One :class:`FeatureWindow` per input name of one model."""

    def __init__(self, window: int, max_features: int) -> None:
        self._window = window
        self._max_features = max_features
        self._inputs: dict[str, FeatureWindow] = {}
        self._lock = threading.Lock()

    def add(self, inputs: Mapping[str, np.ndarray]) -> None:
        for name, array in inputs.items():
            feature_window = self._inputs.get(name)
            if feature_window is None:
                with self._lock:
                    feature_window = self._inputs.setdefault(name, FeatureWindow(self._window, self._max_features))
            feature_window.add(array)

    def stats(self) -> dict[str, dict[str, list[float]]]:
        with self._lock:
            items = list(self._inputs.items())
        return {name: s for name, w in items if (s := w.stats()) is not None}
