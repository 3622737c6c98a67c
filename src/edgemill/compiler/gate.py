"""The accuracy gate: how much a candidate loses against the original model, in the metric that fits
the data the user gave.

* ``top1``: validation data with labels, classifier-shaped first output (``[N, classes]``): accuracy
  of the argmax. Drop = original accuracy - candidate accuracy.
* ``agreement``: classifier-shaped output, no labels: share of samples whose argmax matches the
  original's. Drop = 1 - agreement.
* ``relative_error``: anything else: max |candidate - original| / max |original| over the outputs.
  Drop = that error.

Lossless candidates (fp32, or the source file run natively) must also stay within ``--tolerance`` of the
reference's outputs, whatever the metric: they are not allowed to lose anything. Where the source
runtime's own default configuration differs from the reference by more (an ONNX source: onnxruntime's
default session against its unoptimized run, see ``reference.py``), that measured spread is allowed too. Reduced-precision
candidates pass when their drop is at most ``--max-accuracy-drop``.

The reference is the source framework's own runtime where the frontend provides one and it is
installed (see ``reference.py``), else onnxruntime on the converted graph with optimizations off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import accuracy

def classifier_shaped(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] >= 2 and output.dtype.kind == "f"


def choose_metric(reference: Sequence[Sequence[np.ndarray]], labels: np.ndarray | None) -> str:
    firsts = [np.asarray(outs[0]) for outs in reference if len(outs)]
    if firsts and all(classifier_shaped(f) for f in firsts) and len({f.shape[1] for f in firsts}) == 1:
        return "top1" if labels is not None else "agreement"
    return "relative_error"


@dataclass(frozen=True)
class Evaluation:
    metric: str
    original: float  # the original model's value (1.0 for agreement, 0.0 for relative error)
    value: float  # the candidate's
    drop: float
    allowed: float
    max_relative_error: float
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "original": round(self.original, 6), "value": round(self.value, 6),
                "drop": float(f"{self.drop:.4g}"), "allowed": self.allowed,
                "max_relative_error": float(f"{self.max_relative_error:.3g}"), "passed": self.passed,
                "reason": self.reason}


def evaluate(lossless: bool, reference: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]],
             names: Sequence[str], labels: np.ndarray | None, max_drop: float, tolerance: float,
             task_metric: bool = True, spread: Mapping[str, float] | None = None, spread_from: str = "") -> Evaluation:
    """Compare a candidate's outputs with the original's on the same feeds. ``task_metric=False``
    (generated inputs, not real data) judges by relative output error only: agreement on random
    inputs says little about accuracy on real ones."""
    comparisons = accuracy.pool([c for want, have in zip(reference, got) for c in accuracy.compare_all(names, have, want)])
    rel = accuracy.worst(comparisons)
    metric = choose_metric(reference, labels) if task_metric else "relative_error"
    if metric == "relative_error":
        original, value, drop = 0.0, rel, rel
    else:
        ref_first = np.concatenate([outs[0] for outs in reference])
        got_first = np.concatenate([outs[0] for outs in got])
        if metric == "top1":
            assert labels is not None
            truth = labels[: len(ref_first)]
            original = float((ref_first.argmax(1) == truth).mean())
            value = float((got_first.argmax(1) == truth).mean())
        else:
            original, value = 1.0, float((got_first.argmax(1) == ref_first.argmax(1)).mean())
        drop = original - value
    if lossless:
        spread = spread or {}
        strict_pass = not accuracy.failures(comparisons, tolerance)
        passed = strict_pass or not accuracy.failures(comparisons, tolerance, spread)
        allowed = tolerance
        if passed and not strict_pass:  # let through by the source's own spread
            widest = max(spread.values())
            allowed = float(f"{widest:.3g}")
            reason = (f"max relative error {rel:.2e} <= {widest:.2e}, the distance of {spread_from or 'the source runtime'} "
                      f"from the reference (tolerance {tolerance:.0e})")
        elif passed:
            reason = f"max relative error {rel:.2e} <= {tolerance:.0e}"
        else:
            widest = max(spread.values(), default=0.0)
            reason = (f"max relative error {rel:.2e} > tolerance {tolerance:.0e}"
                      + (f" (and > {widest:.2e}, {spread_from or 'the source runtime'}'s own distance)" if widest > tolerance else "")
                      + ": a lossless build must match")
    else:
        allowed = max_drop if metric != "relative_error" else max(max_drop, tolerance)
        passed = bool(drop <= allowed + 1e-12) and not np.isnan(drop)
        reason = (f"{metric} drop {drop:.4g} <= allowed {allowed:g}" if passed else
                  f"{metric} drop {drop:.4g} > allowed {allowed:g} (by {drop - allowed:.4g})")
    return Evaluation(metric, original, value, float(drop), allowed, float(rel), passed, reason)
