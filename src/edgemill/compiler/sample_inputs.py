"""Inputs for the accuracy check: the user's validation file, or seeded generated tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import OptionError
from ..tensors import TensorSpec, dtype_name, numpy_dtype

DYNAMIC_BATCH_SIZES = (1, 3)  # a dynamic leading dimension is checked at more than one size


def concrete_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    dims = []
    for axis, d in enumerate(spec.shape):
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        elif axis == 0:
            dims.append(batch)
        else:
            raise OptionError(
                f"input {spec.name!r} has a dynamic dimension at axis {axis}", value=spec.shape_text(),
                expected="static sizes for every axis but the batch axis",
                fix=f"fix it with --input {spec.name}:" + "x".join(str(x if isinstance(x, int) and x > 0 else 1)
                                                                  for x in spec.shape)
                + f", or pass --validation DATA.npz with real inputs",
            )
    return tuple(dims)


def has_dynamic_batch(specs: Sequence[TensorSpec]) -> bool:
    return any(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in specs)


def generate(specs: Sequence[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random inputs: normal floats, small non-negative integers (safe as indices), random bools."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = concrete_shape(spec, batch)
        dt = numpy_dtype(spec.dtype)
        if dt.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(dt)
        elif dt.kind == "b":
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feed[spec.name] = np.array(rng.integers(0, 10, size=shape).astype(str), dtype=object)
    return feed


def from_file(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise OptionError("cannot read the validation file", value=str(path),
                          fix=f"save it with numpy.savez(path, **{{input_name: array}}) ({exc})") from None
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
