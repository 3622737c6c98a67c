"""What every stage graph shares: how it becomes a model, and how a dimension is written."""

from __future__ import annotations

from typing import Any


def stage_model(graph: Any, opset: int) -> Any:
    """The checked ``onnx.ModelProto`` of a stage graph (IR 8: what older onnxruntime builds still load)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgemill")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def dim(d: Any) -> Any:
    """A static size as it is, a symbol as it is, anything else (-1, None) as the symbol ``batch``."""
    return d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else "batch")
