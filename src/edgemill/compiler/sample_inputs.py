"""Generated inputs for the accuracy gate when the user gives no --validation file (see calibration.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..tensors import Scalar, TensorSpec, random_feed, shape_spelling

DYNAMIC_BATCH_SIZES = (1, 3)  # a dynamic leading dimension is checked at more than one size


def has_dynamic_batch(specs: Sequence[TensorSpec]) -> bool:
    return any(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in specs)


def generate(specs: Sequence[TensorSpec], batch: int, seed: int,
             values: Mapping[str, Scalar] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for ``specs``; inputs bound with ``--input NAME=VALUE`` get their value."""
    fix = ("fix it with --input NAME:SHAPE (e.g. " + ", ".join(f"{s.name}:{shape_spelling(s.shape)}" for s in specs)
           + "), or pass --validation DATA.npz with real inputs")
    return random_feed(specs, batch, seed, fix, dict(values or {}))
