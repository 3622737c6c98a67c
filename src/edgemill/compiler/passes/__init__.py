"""Graph passes: one module each, registered in pipeline order.

A pass takes an ONNX model and the compile context and returns a (possibly new) model, recording
what it did. These passes are target-independent; what depends on the backend and precision lives
in ``compiler/lowering``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import onnx

from ..context import CompileContext

PassFn = Callable[[onnx.ModelProto, CompileContext, dict[str, Any]], onnx.ModelProto]


@dataclass(frozen=True)
class Pass:
    name: str
    description: str
    order: int  # position in the pipeline; passes run in ascending order
    applies: Callable[[CompileContext], bool]
    run: PassFn


_REGISTRY: dict[str, Pass] = {}


def register(name: str, description: str, order: int, applies: Callable[[CompileContext], bool] = lambda ctx: True
             ) -> Callable[[PassFn], PassFn]:
    def wrap(fn: PassFn) -> PassFn:
        _REGISTRY[name] = Pass(name, description, order, applies, fn)
        return fn

    return wrap


def all_passes() -> list[Pass]:
    from . import bind_inputs, static_shapes  # noqa: F401 - registers them

    return sorted(_REGISTRY.values(), key=lambda p: p.order)


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)
