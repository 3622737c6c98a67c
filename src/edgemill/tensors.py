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
Scalar = Union[int, float, bool]  # a value bound to an input with --input NAME=VALUE

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
    """Name, dtype and shape of one model input or output. ``value`` is set on an input the package was
    specialized for (``--input NAME=VALUE``): the only value it accepts."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    value: Scalar | None = None

    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.value is not None:
            out["value"] = self.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        value = data.get("value")
        if value is not None and not isinstance(value, (bool, int, float)):
            raise TypeError(f"bound value of {data.get('name')!r} must be a number or bool")
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(data["shape"]), value=value)

    def __str__(self) -> str:
        bound = f" = {_value_text(self.value)}" if self.value is not None else ""
        return f"{self.name}: {self.dtype}{self.shape_text()}{bound}"


SCALAR_SHAPE_WORDS = ("scalar", "[]", "()")  # how --input spells a 0-d input's shape


@dataclass(frozen=True)
class InputOverride:
    """What one ``--input`` asks for: fix this input's shape (``NAME:SHAPE[:DTYPE]``), bind it to a value
    (``NAME=VALUE``), or both (``NAME:SHAPE[:DTYPE]=VALUE``). ``shape`` is None when only a value is given
    (the model's own shape stays); ``()`` is a 0-d (scalar) input."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str | None = None
    value: Scalar | None = None

    @property
    def fixes_shape(self) -> bool:
        return self.shape is not None

    @property
    def binds_value(self) -> bool:
        return self.value is not None

    def text(self) -> str:
        """How the user would write it again (for messages and reports)."""
        out = self.name
        if self.shape is not None:
            out += ":" + ("scalar" if self.shape == () else "x".join(str(d) for d in self.shape))
            if self.dtype:
                out += f":{self.dtype}"
        if self.value is not None:
            out += f"={_value_text(self.value)}"
        return out


_DIM_SPLIT = re.compile(r"[x,×]")
_EXAMPLE = "input:1x3x224x224:float32, sr:scalar:int64 or sr=16000"


def _value_text(value: Scalar) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)


def parse_input_override(text: str) -> InputOverride:
    """Parse one ``--input``: ``NAME:SHAPE[:DTYPE]``, ``NAME=VALUE`` or ``NAME:SHAPE[:DTYPE]=VALUE``.

    SHAPE is ``1x3x224x224`` or ``1,3,224,224``; a dimension may be a symbol (``Nx3x224x224``) to keep it
    dynamic; ``scalar`` (or ``[]``) is a 0-d input. VALUE is a number or ``true``/``false``: the input is
    fed that value (filled to its shape) wherever edgemill makes inputs itself (the accuracy check,
    tuning), and PyTorch ``int``/``float``/``bool`` arguments are traced with it.
    """
    head, eq, value_text = text.partition("=")
    if not eq:
        return _checked_name(_parse_shape_spec(head, text), text)
    value = _parse_value(value_text.strip(), text)
    try:
        override = _parse_shape_spec(head, text) if ":" in head else None
    except OptionError:
        override = None  # a name with ':' in it ("input:0=5"), not NAME:SHAPE
    if override is None:
        return _checked_name(InputOverride(name=head.strip(), shape=None, value=value), text)
    return _checked_name(InputOverride(override.name, override.shape, override.dtype, value), text)


def _checked_name(override: InputOverride, text: str) -> InputOverride:
    if not override.name:
        raise OptionError("--input has no input name", value=text, expected="NAME:SHAPE[:DTYPE] or NAME=VALUE",
                          fix=f"write it like {_EXAMPLE}")
    return override


def _parse_value(raw: str, text: str) -> Scalar:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        raise OptionError("cannot read the value in --input NAME=VALUE", value=text,
                          expected="a number or true/false, e.g. sr=16000 or threshold=0.5",
                          fix="write the value as a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise OptionError("the value in --input NAME=VALUE must be finite", value=text, fix="write a finite number")
    return value


def _parse_shape_spec(text: str, whole: str) -> InputOverride:
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
            value=whole,
            expected="NAME:SHAPE[:DTYPE], NAME=VALUE or NAME:SHAPE=VALUE",
            fix=f"write it like {_EXAMPLE}",
        )
    if shape_text.strip().lower() in SCALAR_SHAPE_WORDS:
        return InputOverride(name=name, shape=(), dtype=dtype)
    dims: list[Dim] = []
    for raw in _DIM_SPLIT.split(shape_text.strip("[]() ")):
        raw = raw.strip()
        if not raw:
            raise OptionError("empty dimension in --input", value=whole, fix=f"write it like {_EXAMPLE}")
        if raw.lstrip("-").isdigit():
            size = int(raw)
            if size == 0 or size < -1:
                raise OptionError(
                    "bad dimension in --input",
                    value=raw,
                    expected="a positive size, -1, or a symbol",
                    fix=f"write it like {_EXAMPLE}",
                )
            dims.append(size)
        elif raw.isidentifier():
            dims.append(raw)
        else:
            raise OptionError(
                "bad dimension in --input",
                value=raw,
                expected="a positive size, -1, a symbol, or 'scalar' for a 0-d input",
                fix=f"write it like {_EXAMPLE}",
            )
    return InputOverride(name=name, shape=tuple(dims), dtype=dtype)


def shape_spelling(shape: tuple[Dim, ...]) -> str:
    """How ``--input`` writes ``shape`` (``scalar`` for 0-d)."""
    if not shape:
        return "scalar"
    return "x".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in shape)


def _is_dtype(text: str) -> bool:
    key = text.strip().lower()
    return _DTYPE_ALIASES.get(key, key) in DTYPE_TO_ONNX_ELEM


def concrete_shape(spec: TensorSpec, batch: int, fix: str, batch_symbols: frozenset[str] = frozenset()
                   ) -> tuple[int, ...]:
    """``spec``'s shape with a dynamic leading (batch) axis set to ``batch``, as is any axis named by one of
    ``batch_symbols`` (a recurrent state ``[2, batch, 128]`` shares the batch of the data); other dynamic
    axes are an error whose fix is ``fix`` (the caller knows how its user can supply a shape)."""
    dims = []
    for axis, d in enumerate(spec.shape):
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        elif axis == 0 or (isinstance(d, str) and d in batch_symbols):
            dims.append(batch)
        else:
            raise OptionError(f"input {spec.name!r} has a dynamic dimension at axis {axis}", value=spec.shape_text(),
                              expected="static sizes for every axis but the batch axis", fix=fix)
    return tuple(dims)


def random_feed(specs: Any, batch: int, seed: int, fix: str,
                values: dict[str, Scalar] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs: normal floats, 0/1 integers (safe as indices and masks), random bools.
    An input named in ``values`` is filled with that value instead."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    values = values or {}
    batch_symbols = frozenset(s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str))
    for spec in specs:
        shape = concrete_shape(spec, batch, fix, batch_symbols)
        dt = numpy_dtype(spec.dtype)
        if spec.name in values:
            feed[spec.name] = np.full(shape, values[spec.name], dtype=dt)
        elif dt.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iub":
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            feed[spec.name] = np.array(rng.integers(0, 10, size=shape).astype(str), dtype=object)
    return feed
