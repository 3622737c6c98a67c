"""Transformer fusions: onnxruntime's transformer optimizer (``onnxruntime.transformers``) rewrites
attention, skip + layer normalization and bias + GELU subgraphs into its fused CPU kernels.

The rewrite is meant to keep the answer but changes the arithmetic order, so the result is an FP32
candidate like any other: it must match the reference within ``--tolerance`` to be kept. It is planned
only for graphs with a transformer's layer normalization (:func:`looks_like_transformer`), and a
graph where the optimizer finds nothing to fuse fails the candidate with that reason.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import onnx

from ...errors import BackendError, first_line
from .quiet import quiet_logger

# Fused operators worth a candidate (the optimizer's statistics also count ones it merely kept).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "GemmFastGelu", "EmbedLayerNormalization", "RotaryEmbedding")


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    """A layer normalization, as one operator or as the ReduceMean/Pow/Sqrt chain older exporters write,
    beside a MatMul: what the transformer optimizer's fusions start from."""
    ops = {node.op_type for node in model.graph.node}
    if "MatMul" not in ops:
        return False
    return "LayerNormalization" in ops or {"ReduceMean", "Pow", "Sqrt"} <= ops


def fuse(model: onnx.ModelProto, notes: dict[str, Any]) -> onnx.ModelProto:
    """The model with the optimizer's fusions (no onnxruntime graph optimization: that follows as for
    every onnxruntime candidate). Raises BackendError when nothing was fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory(prefix="edgemill-fuse-") as folder, quiet_logger("onnxruntime.transformers"):
        source = os.path.join(folder, "in.onnx")
        onnx.save(model, source)
        try:
            optimized = optimize_model(source, model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                       use_gpu=False)
            fused = {op: int(n) for op, n in optimized.get_fused_operator_statistics().items()
                     if op in FUSED_OPS and n}
        except Exception as exc:  # the optimizer raises assorted errors on graphs it does not expect
            raise BackendError("onnxruntime's transformer optimizer failed on this model",
                               value=first_line(exc)[:300], fix="nothing to do: the other candidates go on") from None
    if not fused:
        raise BackendError("the transformer optimizer found no attention, skip-layer-norm or GELU pattern to fuse",
                           value="no fusion", fix="nothing to do: the plain onnxruntime candidate covers this model")
    notes["transformer_fusions"] = fused
    return optimized.model
