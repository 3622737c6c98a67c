"""Compare the compiled model's outputs with the original's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    max_relative_error: float  # max |compiled - original| / max |original|
    exact: bool  # integer, bool and string outputs must match exactly

    def to_dict(self) -> dict[str, object]:
        return {"output": self.name, "max_abs_error": self.max_abs_error,
                "max_relative_error": self.max_relative_error, "exact_match_required": self.exact}


def compare(name: str, got: np.ndarray, want: np.ndarray) -> OutputComparison:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return OutputComparison(name, float("inf"), float("inf"), exact=False)
    if want.dtype.kind not in "fc":
        same = bool(np.array_equal(got, want))
        return OutputComparison(name, 0.0 if same else float("inf"), 0.0 if same else float("inf"), exact=True)
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    if not np.array_equal(nan_g, nan_w):
        return OutputComparison(name, float("inf"), float("inf"), exact=False)
    finite = ~nan_w & np.isfinite(w)
    if not np.array_equal(g[~finite & ~nan_w], w[~finite & ~nan_w]):  # infinities must agree
        return OutputComparison(name, float("inf"), float("inf"), exact=False)
    if not finite.any():
        return OutputComparison(name, 0.0, 0.0, exact=False)
    diff = np.abs(g[finite] - w[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(w[finite]).max())
    rel = max_abs / scale if scale > 0 else max_abs
    return OutputComparison(name, max_abs, rel, exact=False)


def compare_all(names: Sequence[str], got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> list[OutputComparison]:
    return [compare(n, g, w) for n, g, w in zip(names, got, want)]


def worst(comparisons: Sequence[OutputComparison]) -> float:
    return max((c.max_relative_error for c in comparisons), default=0.0)
