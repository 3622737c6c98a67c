"""Compare the compiled model's outputs with the original's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


# An optimizer that reorders float arithmetic may move a result by a unit in the last place of the
# output's own type. For float16 one unit is ~1e-3 of the value, so the default 1e-4 tolerance would
# reject every optimized half-precision model for rounding noise. Outputs narrower than float32 get a
# floor of a few of their own epsilons: rounding, not accuracy loss. float32/float64 get none, so
# --tolerance 0 still means "bit-identical" for them.
ULP_FLOOR = 4


def rounding_floor(dtype: np.dtype) -> float:
    return ULP_FLOOR * float(np.finfo(dtype).eps) if dtype.kind == "f" and dtype.itemsize < 4 else 0.0


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    max_relative_error: float  # max |compiled - original| / max |original|
    exact: bool  # integer, bool and string outputs must match exactly
    rounding_floor: float = 0.0  # differences up to this are rounding of the output's dtype
    scale: float = 0.0  # max |original|: what the relative error is relative to

    def allowed(self, tolerance: float) -> float:
        return max(tolerance, self.rounding_floor)

    def to_dict(self) -> dict[str, object]:
        return {"output": self.name, "max_abs_error": self.max_abs_error,
                "max_relative_error": self.max_relative_error, "exact_match_required": self.exact,
                "rounding_floor": self.rounding_floor}


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
    return OutputComparison(name, max_abs, rel, exact=False, rounding_floor=rounding_floor(want.dtype), scale=scale)


def compare_all(names: Sequence[str], got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> list[OutputComparison]:
    return [compare(n, g, w) for n, g, w in zip(names, got, want)]


def pool(comparisons: Sequence[OutputComparison]) -> list[OutputComparison]:
    """One comparison per output over all check feeds: the largest difference relative to the output's
    largest magnitude over all of them. Per feed, an output that happens to be tiny (a probability near 0
    on one sample) would turn rounding of 1e-8 into a "relative" error of 1e-3."""
    groups: dict[str, list[OutputComparison]] = {}
    for c in comparisons:
        groups.setdefault(c.name, []).append(c)
    pooled = []
    for name, group in groups.items():
        if any(c.exact for c in group) or any(c.max_abs_error == float("inf") for c in group):
            worst = max(group, key=lambda c: c.max_relative_error)
            pooled.append(worst)
            continue
        max_abs = max(c.max_abs_error for c in group)
        scale = max(c.scale for c in group)
        rel = max_abs / scale if scale > 0 else max_abs
        pooled.append(OutputComparison(name, max_abs, rel, exact=False, rounding_floor=max(c.rounding_floor for c in group),
                                       scale=scale))
    return pooled


def worst(comparisons: Sequence[OutputComparison]) -> float:
    return max((c.max_relative_error for c in comparisons), default=0.0)


def failures(comparisons: Sequence[OutputComparison], tolerance: float,
             spread: Mapping[str, float] | None = None) -> list[OutputComparison]:
    """Comparisons whose error exceeds what is allowed (NaN never passes). ``spread`` widens the allowance
    per output to what the source runtime's own default configuration differs by (reference.py)."""
    spread = spread or {}
    return [c for c in comparisons if not c.max_relative_error <= max(c.allowed(tolerance), spread.get(c.name, 0.0))]
