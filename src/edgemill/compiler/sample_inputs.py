"""Inputs for the accuracy check: the user's validation file, or seeded generated tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import OptionError
from ..tensors import TensorSpec, dtype_name, random_feed

DYNAMIC_BATCH_SIZES = (1, 3)  # a dynamic leading dimension is checked at more than one size


def has_dynamic_batch(specs: Sequence[TensorSpec]) -> bool:
    return any(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in specs)


def generate(specs: Sequence[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    fix = ("fix it with --input NAME:SHAPE (e.g. " + ", ".join(f"{s.name}:" + "x".join(
        str(d) if isinstance(d, int) and d > 0 else "1" for d in s.shape) for s in specs) +
        "), or pass --validation DATA.npz with real inputs")
    return random_feed(specs, batch, seed, fix)


def from_file(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        hint = " and string inputs as np.asarray(x, dtype=str)" if "allow_pickle" in str(exc) else ""
        raise OptionError("cannot read the validation file", value=str(path),
                          fix=f"save it with numpy.savez(path, **{{input_name: array}}){hint} ({exc})") from None
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OptionError("validation file lacks an input", value=missing[0], expected="arrays named " + ", ".join(names),
                          fix="save one array per model input, named after it")
    feed = {}
    for spec in specs:
        arr = arrays[spec.name]
        if dtype_name(arr.dtype) != spec.dtype:
            raise OptionError(f"validation array {spec.name!r} has the wrong dtype", value=dtype_name(arr.dtype),
                              expected=spec.dtype, fix=f"save it as {spec.dtype}")
        feed[spec.name] = arr
    return feed
