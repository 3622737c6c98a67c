"""How far one histogram is from another over the same bins: PSI and Jensen-Shannon distance.

Both take raw counts (a device's window, a fleet's merged counts, the package baseline) and compare the
proportions. How to read them:

* **PSI** (population stability index), sum over bins of (a - e) * ln(a / e): under 0.1 no meaningful
  change, 0.1-0.25 a moderate shift worth a look, over 0.25 a significant shift. Unbounded above.
  Empty bins are smoothed (``SMOOTHING``) so one new bin does not make it infinite.
* **Jensen-Shannon distance**, the square root of the JS divergence in bits: 0 for identical
  distributions, 1 for distributions with no bin in common. Symmetric and bounded, so it can be
  compared across features.

Pure functions over arrays: no I/O, usable on the device and on the server alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SMOOTHING = 1e-4  # proportion given to an empty bin before renormalising (PSI only)


def proportions(counts: Sequence[float] | np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Counts as proportions summing to 1 (all zeros stay zeros: no data is not a distribution)."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or (c < 0).any():
        raise ValueError(f"counts must be a flat sequence of non-negative numbers, got shape {c.shape}")
    total = c.sum()
    if total <= 0:
        return np.zeros_like(c)
    p = c / total
    if smoothing > 0:
        p = np.maximum(p, smoothing)
        p = p / p.sum()
    return p


def _check(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> None:
    if len(expected) != len(actual):
        raise ValueError(f"histograms over different bins: {len(expected)} vs {len(actual)} bins")


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float | None:
    """Population stability index of ``actual`` against ``expected``; None when either is empty."""
    _check(expected, actual)
    if float(np.sum(expected)) <= 0 or float(np.sum(actual)) <= 0:
        return None
    e = proportions(expected, SMOOTHING)
    a = proportions(actual, SMOOTHING)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float | None:
    """Jensen-Shannon distance (base 2, in [0, 1]); None when either histogram is empty."""
    _check(expected, actual)
    if float(np.sum(expected)) <= 0 or float(np.sum(actual)) <= 0:
        return None
    p = proportions(expected)
    q = proportions(actual)
    m = (p + q) / 2
    divergence = (_kl(p, m) + _kl(q, m)) / 2
    return float(np.sqrt(max(0.0, min(1.0, divergence))))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log2(p[nonzero] / q[nonzero])))
