"""Graph optimization with onnxruntime's offline optimizer: constant folding, redundant-node and
dead-node removal, operator fusions (Conv+BN, Conv+activation, Gemm+activation, LayerNorm, GELU...).

The optimized graph is saved into the package so the device does no optimization work at load. How
far we go depends on the target: hardware-specific layouts only for this very machine.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import onnx

from ...errors import BackendError
from ...targets import runnable_here
from ..context import CompileContext
from ..graph import to_bytes
from . import node_count, register


def plan(ctx: CompileContext) -> tuple[str, str]:
    """(level saved into the package, level the runtime applies at load)."""
    target = ctx.target
    if target.name == "host":
        return "all", "none"  # includes NCHWc layouts for this CPU: nothing left to do at load
    if target.accelerators:
        return "basic", "all"  # keep standard ONNX ops that any execution provider can claim
    return "extended", "all"  # CPU fusions; the device adds its own layout at load


@register("ort_optimize", "onnxruntime graph optimizations, saved into the package", order=50,
          applies=lambda ctx: ctx.backend == "onnxruntime")
def run(model: onnx.ModelProto, ctx: CompileContext, record: dict[str, Any]) -> onnx.ModelProto:
    import onnxruntime as ort

    save_level, load_level = plan(ctx)
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    before = node_count(model)
    with tempfile.TemporaryDirectory(prefix="edgemill-ort-") as tmp:
        out_path = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[save_level]
        so.optimized_model_filepath = out_path
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        try:
            ort.InferenceSession(to_bytes(model), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError("onnxruntime cannot load the model", value=str(exc).strip().splitlines()[0][:300],
                               fix="check that onnxruntime supports every operator and opset in the model") from None
        optimized = onnx.load(out_path)
    # onnxruntime names the file it wrote in no field, but clear anything path-like to stay deterministic.
    optimized.graph.doc_string = ""
    ctx.backend_options["load_optimization"] = load_level
    ctx.backend_options["execution_providers"] = list(ctx.target.execution_providers)
    if save_level == "all":
        ctx.backend_options["requires_cpu_features"] = list(ctx.target.cpu_features)
    record.update(level=save_level, load_level=load_level, nodes_before=before, nodes_after=node_count(optimized),
                  summary=f"{before} -> {node_count(optimized)} nodes (onnxruntime level '{save_level}')")
    if not runnable_here(ctx.target):
        record["note"] = f"target {ctx.target.name} cannot run here: hardware-specific layouts are left to the device"
    return optimized
