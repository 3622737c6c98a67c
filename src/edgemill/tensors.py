"""Tensor descriptions shared by the compiler, the package and the runtime.

Dtypes are named as NumPy names them (``float32``, ``int64``, ``bool``...). ONNX element types are
mapped by their integer codes so that this module (and the runtime) never imports ``onnx``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .errors import OptionError

Dim = Union[int, str]  # a static size, -1 (unknown) or a symbol such as "batch"

# ONNX TensorProto.DataType codes -> NumPy dtype names (the subset NumPy can represent).
ONNX_ELEM_TO_DTYPE: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}
DTYPE_TO_ONNX_ELEM: dict[str, int] = {v: k for k, v in ONNX_ELEM_TO_DTYPE.items()}
# Aliases users type on the command line.
_DTYPE_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "f32": "float32",
    "half": "float16",
    "fp16": "float16",
    "f16": "float16",
    "double": "float64",
    "fp64": "float64",
    "int": "int64",
    "long": "int64",
    "i64": "int64",
    "i32": "int32",
    "u8": "uint8",
    "i8": "int8",
    "string": "str",
}


def normalize_dtype(name: str) -> str:
    """Canonical dtype name for ``name``, or an :class:`OptionError` listing the known ones."""
    key = name.strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_TO_ONNX_ELEM:
        raise OptionError(
            "unknown dtype",
            value=name,
            expected="one of " + ", ".join(sorted(DTYPE_TO_ONNX_ELEM)),
            fix="spell the dtype as NumPy does, e.g. float32",
        )
    return key


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(object) if name == "str" else np.dtype(name)


def dtype_name(dtype: Any) -> str:
    """The canonical name of a NumPy dtype (``np.float32`` -> ``"float32"``)."""
    dt = np.dtype(dtype)
    if dt.kind in ("U", "S", "O"):
        return "str"
    return dt.name


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(data["shape"]))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{self.shape_text()}"


@dataclass(frozen=True)
class InputOverride:
    """What ``--input NAME:SHAPE[:DTYPE]`` asks for: fix this input's shape (and check its dtype)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str | None = None


_DIM_SPLIT = re.compile(r"[x,×]")


def parse_input_override(text: str) -> InputOverride:
    """Parse ``NAME:SHAPE[:DTYPE]`` where SHAPE is ``1x3x224x224`` or ``1,3,224,224``.

    A dimension may be a symbol (``Nx3x224x224``) to keep it dynamic.
    """
    example = "input:1x3x224x224:float32"
    # Names may contain ':' (TensorFlow's "input:0"), so peel DTYPE and SHAPE off the right.
    dtype: str | None = None
    rest = text
    head, sep, tail = text.rpartition(":")
    if sep and _is_dtype(tail):
        dtype, rest = normalize_dtype(tail), head
    name, sep, shape_text = rest.rpartition(":")
    if not sep or not name or not shape_text:
        raise OptionError(
            "cannot read --input",
            value=text,
            expected="NAME:SHAPE[:DTYPE]",
            fix=f"write it like {example}",
        )
    dims: list[Dim] = []
    for raw in _DIM_SPLIT.split(shape_text.strip("[]() ")):
        raw = raw.strip()
        if not raw:
            raise OptionError("empty dimension in --input", value=text, fix=f"write it like {example}")
        if raw.lstrip("-").isdigit():
            size = int(raw)
            if size == 0 or size < -1:
                raise OptionError(
                    "bad dimension in --input",
                    value=raw,
                    expected="a positive size, -1, or a symbol",
                    fix=f"write it like {example}",
                )
            dims.append(size)
        elif raw.isidentifier():
            dims.append(raw)
        else:
            raise OptionError(
                "bad dimension in --input",
                value=raw,
                expected="a positive size, -1, or a symbol",
                fix=f"write it like {example}",
            )
    return InputOverride(name=name, shape=tuple(dims), dtype=dtype)


def _is_dtype(text: str) -> bool:
    key = text.strip().lower()
    return _DTYPE_ALIASES.get(key, key) in DTYPE_TO_ONNX_ELEM


def concrete_shape(spec: TensorSpec, batch: int, fix: str) -> tuple[int, ...]:
    """``spec``'s shape with a dynamic leading (batch) axis set to ``batch``; other dynamic axes are an
    error whose fix is ``fix`` (the caller knows how its user can supply a shape)."""
    dims = []
    for axis, d in enumerate(spec.shape):
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        elif axis == 0:
            dims.append(batch)
        else:
            raise OptionError(f"input {spec.name!r} has a dynamic dimension at axis {axis}", value=spec.shape_text(),
                              expected="static sizes for every axis but the batch axis", fix=fix)
    return tuple(dims)


def random_feed(specs: Any, batch: int, seed: int, fix: str) -> dict[str, np.ndarray]:
    """Seeded random inputs: normal floats, 0/1 integers (safe as indices and masks), random bools."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = concrete_shape(spec, batch, fix)
        dt = numpy_dtype(spec.dtype)
        if dt.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iub":
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            feed[spec.name] = np.array(rng.integers(0, 10, size=shape).astype(str), dtype=object)
    return feed
