"""Generated inputs for the accuracy gate when the user gives no --validation file (see calibration.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..tensors import TensorSpec, random_feed

DYNAMIC_BATCH_SIZES = (1, 3)  # a dynamic leading dimension is checked at more than one size


def has_dynamic_batch(specs: Sequence[TensorSpec]) -> bool:
    return any(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in specs)


def generate(specs: Sequence[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    fix = ("fix it with --input NAME:SHAPE (e.g. " + ", ".join(f"{s.name}:" + "x".join(
        str(d) if isinstance(d, int) and d > 0 else "1" for d in s.shape) for s in specs) +
        "), or pass --validation DATA.npz with real inputs")
    return random_feed(specs, batch, seed, fix)
