"""Check a feed dict against a model's input specs and say exactly what is wrong."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputMismatchError
from ..tensors import TensorSpec, dtype_name, numpy_dtype


_STATIC, _BATCH, _AXES = 0, 1, 2


def _shape_check(shape: tuple[Any, ...]) -> tuple[int, Any]:
    static = [isinstance(d, int) and d >= 0 for d in shape]
    if all(static):
        return _STATIC, tuple(shape)
    if shape and not static[0] and all(static[1:]):
        return _BATCH, (len(shape), tuple(shape[1:]))
    return _AXES, (len(shape), tuple((axis, d) for axis, d in enumerate(shape) if static[axis]))


class InputChecker:
    """Precomputes what it can so that the per-call check costs a few microseconds."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = tuple(specs)
        self._names = [s.name for s in self.specs]
        self._name_set = frozenset(self._names)
        self._dtypes = {s.name: numpy_dtype(s.dtype) for s in self.specs}
        # The correct call takes a fast path: dtype identity, rank, and the static sizes (None marks a
        # dynamic axis). A symbol shared between inputs needs the full check to compare sizes.
        symbols = [d for s in self.specs for d in s.shape if isinstance(d, str)]
        self._bound = tuple((s.name, s.value) for s in self.specs if s.value is not None)
        # Per input: (name, dtype, how its shape is checked, what with): the whole shape when it is static,
        # the shape after the batch axis when only that one is dynamic, else the rank and static axes.
        self._fast = None if len(symbols) != len(set(symbols)) else tuple(
            (s.name, self._dtypes[s.name], *_shape_check(s.shape)) for s in self.specs)
        self._count = len(self.specs)

    def check(self, feed: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
        fast = self._fast
        if fast is not None and type(feed) is dict and len(feed) == self._count:
            for name, dtype, kind, want in fast:
                value = feed.get(name)
                if type(value) is not np.ndarray or (value.dtype is not dtype and value.dtype != dtype):
                    break
                shape = value.shape
                if kind == _STATIC:
                    if shape != want:
                        break
                elif kind == _BATCH:
                    if len(shape) != want[0] or shape[1:] != want[1]:
                        break
                elif len(shape) != want[0] or any(shape[axis] != size for axis, size in want[1]):
                    break
            else:
                if self._bound:
                    self._check_bound(feed)
                return feed  # the common, correct call: nothing to convert
        out = self._check_slowly(feed)
        if self._bound:
            self._check_bound(out)
        return out

    def _check_bound(self, feed: Mapping[str, np.ndarray]) -> None:
        """An input the package was specialized for takes only the value it was compiled with."""
        for name, value in self._bound:
            given = feed[name]
            if not (given.item() == value if given.size == 1 else bool(np.all(given == value))):
                shown = given.reshape(-1)[0].item() if given.size else given.tolist()
                raise InputMismatchError(
                    f"input {name!r} was bound when this package was compiled", value=shown,
                    expected=f"{value} (compiled with --input {name}={value})",
                    fix=f"pass {name}={value}, or compile a package for this value with --input {name}=<value>")

    def _check_slowly(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InputMismatchError("inputs must be a dict of name -> array", value=type(feed).__name__,
                                     expected="{" + ", ".join(f"{n!r}: array" for n in self._names) + "}",
                                     fix="call model.run({name: array, ...})")
        if feed.keys() != self._name_set:
            self._explain_names(feed)
        out: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for spec in self.specs:
            value = feed[spec.name]
            want = self._dtypes[spec.name]
            if not isinstance(value, np.ndarray):
                try:
                    value = np.asarray(value, dtype=want)
                except (TypeError, ValueError):
                    raise InputMismatchError(f"input {spec.name!r} cannot be converted to {spec.dtype}",
                                             value=type(value).__name__, fix=f"pass a NumPy array of {spec.dtype}") from None
            elif value.dtype != want and not (spec.dtype == "str" and value.dtype.kind in "OUS"):
                raise InputMismatchError(f"input {spec.name!r} has the wrong dtype", value=dtype_name(value.dtype),
                                         expected=spec.dtype, fix=f"convert it with array.astype(np.{spec.dtype})"
                                         if spec.dtype != "str" else "pass an array of str")
            self._check_shape(spec, value.shape, symbols)
            out[spec.name] = value
        return out

    def _explain_names(self, feed: Mapping[str, Any]) -> None:
        unknown = [k for k in feed if k not in self._name_set]
        missing = [n for n in self._names if n not in feed]
        expected = ", ".join(repr(n) for n in self._names)
        if unknown:
            raise InputMismatchError("unknown input name", value=str(unknown[0]), expected=expected,
                                     fix="use the names listed by model.inputs or `edgemill inspect`")
        raise InputMismatchError("missing input", value=missing[0], expected=expected, fix="pass every input")

    @staticmethod
    def _check_shape(spec: TensorSpec, shape: tuple[int, ...], symbols: dict[str, tuple[int, str]]) -> None:
        if len(shape) != len(spec.shape):
            raise InputMismatchError(f"input {spec.name!r} has the wrong rank", value=list(shape),
                                     expected=f"{len(spec.shape)} dimensions {spec.shape_text()}",
                                     fix="reshape the array to the model's input shape")
        for axis, (got, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int) and want >= 0:
                if got != want:
                    raise InputMismatchError(f"input {spec.name!r} has the wrong shape", value=list(shape),
                                             expected=f"{spec.shape_text()} (axis {axis} must be {want})",
                                             fix="resize the input, or recompile with --input NAME:SHAPE to change it")
            elif isinstance(want, str):
                seen = symbols.get(want)
                if seen is None:
                    symbols[want] = (got, spec.name)
                elif seen[0] != got:
                    raise InputMismatchError(f"input {spec.name!r} disagrees on dimension {want!r}", value=got,
                                             expected=f"{seen[0]}, as in input {seen[1]!r}",
                                             fix="give every input the same size for a shared dimension")
