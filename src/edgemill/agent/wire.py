"""Tensors on the wire: raw little-endian bytes (or a shared-memory region) plus dtype and shape.

Shared by every protocol translator so each checks byte lengths, shapes and dtypes the same way and
says the same thing when they are wrong. Text (str) tensors, which have no fixed size per element, are
``wire_text``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from ..errors import InputMismatchError
from .shm import mapped

T = TypeVar("T")

_LITTLE = np.dtype("<u2").byteorder  # "=" on little-endian hosts
MAX_DIMS = 32  # NumPy's own limit (1.x); no model input has more


def dtype_lookup(by_name: Mapping[str, T]) -> Callable[[np.dtype], T | None]:
    """``by_name`` (keyed by NumPy dtype name) looked up by the dtype itself: ``dtype.name`` costs more
    than a microsecond, a noticeable share of a small model's request. A byte-swapped dtype, which the
    fast table does not hold, goes by its name; text and objects find nothing."""
    fast = {dtype: value for name, value in by_name.items() if (dtype := np.dtype(name)).kind in "biuf"}

    def lookup(dtype: np.dtype) -> T | None:
        found = fast.get(dtype)
        return found if found is not None or dtype.kind not in "biuf" else by_name.get(dtype.name)

    return lookup


def check_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as ints after checking it can describe data: no negative dimension, at most MAX_DIMS."""
    if len(shape) > MAX_DIMS:
        raise InputMismatchError(f"tensor {name!r} has {len(shape)} dimensions", value=len(shape),
                                 expected=f"at most {MAX_DIMS}", fix="send the tensor's real shape")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InputMismatchError(f"tensor {name!r} has a negative dimension", value=list(dims),
                                 fix="send the concrete shape of the data (no -1)")
    return dims


def tensor_from_bytes(name: str, data: bytes | memoryview, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """An array over ``data`` (no copy) after checking that its length matches dtype x shape."""
    shape = check_shape(name, shape)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InputMismatchError(f"tensor {name!r} has {len(data)} bytes but shape {list(shape)} of {dtype.name} "
                                 f"needs {expected}", value=len(data),
                                 fix="send exactly prod(shape) * itemsize bytes, C-order, little-endian")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)


def tensor_from_shared_memory(name: str, shm_name: str, offset: int, size: int, dtype: np.dtype,
                              shape: Sequence[int]) -> np.ndarray:
    """A copy of the region's contents as an array (the region is unmapped before returning)."""
    with mapped(shm_name, offset, size) as region:
        return tensor_from_bytes(name, region, dtype, shape).copy()


def write_to_shared_memory(array: np.ndarray, shm_name: str, offset: int, size: int) -> int:
    """Write ``array`` C-order into the region; returns the bytes written."""
    data = np.ascontiguousarray(array)
    if data.nbytes > size:
        raise InputMismatchError(f"output needs {data.nbytes} bytes but the shared-memory region has {size}",
                                 value=shm_name, fix="pass a larger output region")
    with mapped(shm_name, offset, data.nbytes, writable=True) as region:
        region[:] = data.reshape(-1).view(np.uint8).data
    return data.nbytes


def tensor_bytes(array: np.ndarray) -> bytes:
    """C-order little-endian bytes of ``array``."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()
