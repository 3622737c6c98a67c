"""onnxruntime artifacts: the optimized fp32 graph, static INT8 (QDQ, calibrated), dynamic INT8
(MatMul/Gemm weights), and fp16 — each saved after onnxruntime's offline optimizer for the target.

Quantization uses onnxruntime's own tooling (``onnxruntime.quantization``): QDQ format, unsigned 8-bit
activations with signed 8-bit per-channel weights (what VNNI and Arm dot-product kernels run), and the
calibration method the user picks (minmax, entropy, percentile).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import onnx

from ...errors import BackendError, OptionError, first_line
from ...targets import runnable_here
from ..graph import to_bytes
from . import MODEL_DIR, TRANSFORMER_FUSED, Artifact, Candidate, transformer_fusion
from .ort_optimize import optimize
from .quiet import quiet_logger
from .static_int8 import quantized_model, require_quantized

if TYPE_CHECKING:
    from ...targets import Target
    from ..context import CompileContext

ENTRYPOINT = f"{MODEL_DIR}/model.onnx"
DYNAMIC_OPS = ("MatMul", "Attention")  # what onnxruntime quantizes dynamically (not Gemm)


def build(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    notes: dict[str, Any] = {}
    if candidate.method == TRANSFORMER_FUSED:
        lowered = transformer_fusion.fuse(model, notes)
    elif candidate.precision == "fp32":
        lowered = model
    elif candidate.method == "static-qdq":
        lowered = quantized_model(model, ctx, candidate.label, notes)
    elif candidate.method == "dynamic":
        lowered = quantize_dynamic(model, notes)
    elif candidate.method == "fp16-cast":
        lowered = to_fp16(model, notes)
    else:
        raise OptionError("unknown onnxruntime build method", value=candidate.method, fix="use --precision auto")
    return optimized_artifact(lowered, candidate, ctx.target, notes)


def optimized_artifact(lowered: onnx.ModelProto, candidate: Candidate, target: Target,
                       notes: dict[str, Any] | None = None) -> Artifact:
    """The package files of ``lowered`` after onnxruntime's offline optimizer for ``target`` (what it did
    goes into ``notes["ort_optimize"]``)."""
    notes = {} if notes is None else notes
    record: dict[str, Any] = {}
    if candidate.precision == "fp16" and not runnable_here(target):
        # This machine's onnxruntime would wrap every fp16 operator its own CPU kernels lack (x86: MatMul,
        # Conv...) in casts to fp32 while optimizing, and save that: the device would then compute in fp32.
        # The graph goes as converted; the device's onnxruntime optimizes it at load for its own kernels.
        record.update(level="none", load_level="all",
                      summary=f"saved as converted: {target.name}'s onnxruntime optimizes it at load for its fp16 kernels")
        notes["ort_optimize"] = record
        options = {"load_optimization": "all", "execution_providers": list(target.execution_providers)}
        return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: to_bytes(lowered)}, options, notes)
    optimized, options = optimize(lowered, target, record, candidate.level)
    notes["ort_optimize"] = record
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: to_bytes(optimized)}, options, notes)


def build_reference(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: to_bytes(model)}, {}, {})


def quantize_dynamic(model: onnx.ModelProto, notes: dict[str, Any]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ops = sorted({n.op_type for n in model.graph.node} & set(DYNAMIC_OPS))
    if not ops:
        raise BackendError("dynamic INT8 quantizes MatMul weights, and this model has none",
                           value=", ".join(sorted({n.op_type for n in model.graph.node}))[:200],
                           fix="use static INT8 with --calibration for convolutional models")
    with tempfile.TemporaryDirectory(prefix="edgemill-quant-") as folder:
        source, out = os.path.join(folder, "in.onnx"), os.path.join(folder, "int8.onnx")
        onnx.save(model, source)
        try:
            with quiet_logger():  # quantization logs advice to the root logger
                ort_quantize_dynamic(source, out, weight_type=QuantType.QInt8, op_types_to_quantize=list(ops))
        except Exception as exc:
            raise BackendError("onnxruntime could not quantize the model dynamically",
                               value=first_line(exc)[:300], fix="compile with --precision fp32")
        quantized = onnx.load(out)
    notes["quantized_nodes"] = require_quantized(quantized, "dynamic INT8 quantization")
    notes.update(format="dynamic", quantized_ops=ops, weights="int8")
    return quantized


def to_fp16(model: onnx.ModelProto, notes: dict[str, Any]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:
        raise BackendError("could not convert the model to fp16", value=first_line(exc)[:300],
                           fix="compile with --precision fp32 or int8")
    notes.update(format="fp16 weights and compute, fp32 inputs/outputs")
    return converted
