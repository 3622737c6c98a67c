"""onnxruntime artifacts: the optimized fp32 graph, static INT8 (QDQ, calibrated), dynamic INT8
(MatMul/Gemm weights), and fp16 — each saved after onnxruntime's offline optimizer for the target.

Quantization uses onnxruntime's own tooling (``onnxruntime.quantization``): QDQ format, unsigned 8-bit
activations with signed 8-bit per-channel weights (what VNNI and Arm dot-product kernels run), and the
calibration method the user picks (minmax, entropy, percentile).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ...errors import BackendError, OptionError, first_line
from ..graph import to_bytes
from . import MODEL_DIR, Artifact, Candidate
from .ort_optimize import optimize

if TYPE_CHECKING:
    from ..context import CompileContext

ENTRYPOINT = f"{MODEL_DIR}/model.onnx"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999
DYNAMIC_OPS = ("MatMul", "Attention")  # what onnxruntime quantizes dynamically (not Gemm)
QUANTIZED_OPS = ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QAttention",
                 "QLinearConv", "QLinearMatMul")


def _require_quantized(model: onnx.ModelProto, what: str) -> int:
    """Count the quantized nodes; a 'quantized' model with none is the fp32 model under another name."""
    count = sum(n.op_type in QUANTIZED_OPS for n in model.graph.node)
    if count == 0:
        raise BackendError(f"{what} left no operator quantized", value=", ".join(sorted({n.op_type for n in model.graph.node}))[:200],
                           fix="this model's operators have no INT8 kernels in onnxruntime; use --precision fp32")
    return count


def build(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    notes: dict[str, Any] = {}
    if candidate.precision == "fp32":
        lowered = model
    elif candidate.method == "static-qdq":
        lowered = quantize_static(model, ctx, notes)
    elif candidate.method == "dynamic":
        lowered = quantize_dynamic(model, notes)
    elif candidate.method == "fp16-cast":
        lowered = to_fp16(model, notes)
    else:
        raise OptionError("unknown onnxruntime build method", value=candidate.method, fix="use --precision auto")
    record: dict[str, Any] = {}
    optimized, options = optimize(lowered, ctx.target, record, candidate.level)
    notes["ort_optimize"] = record
    data = to_bytes(optimized)
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: data}, options, notes)


def build_reference(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: to_bytes(model)}, {}, {})


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice to the root logger ("consider pre-processing"); our
    progress lines say what happens, so keep its warnings out of the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _prepare_for_quantization(model: onnx.ModelProto, folder: str, notes: dict[str, Any]) -> str:
    """onnxruntime's recommended pre-processing (shape inference + fusions), falling back to the model
    as it is when that tool cannot handle it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw, prepared = os.path.join(folder, "in.onnx"), os.path.join(folder, "pre.onnx")
    onnx.save(model, raw)
    try:
        quant_pre_process(raw, prepared, skip_symbolic_shape=False)
        notes["pre_process"] = "onnxruntime quant_pre_process"
        return prepared
    except Exception as exc:  # the tool raises assorted errors for graphs it cannot infer
        notes["pre_process"] = f"skipped ({first_line(exc)[:200]})"
        return raw


def quantize_static(model: onnx.ModelProto, ctx: CompileContext, notes: dict[str, Any]) -> onnx.ModelProto:
    """The calibrated QDQ model. onnxruntime's and OpenVINO's INT8 candidates both start from it, so it
    is made once per compile (the same prepared model and calibration data) and shared, unchanged."""
    if ctx.qdq is None:
        made_notes: dict[str, Any] = {}
        ctx.qdq = (_quantize_static(model, ctx, made_notes), made_notes)
    quantized, made_notes = ctx.qdq
    notes.update(made_notes)
    return quantized


def _quantize_static(model: onnx.ModelProto, ctx: CompileContext, notes: dict[str, Any]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    feeds = ctx.calibration or []
    if not feeds:
        raise OptionError("static INT8 needs calibration data", value=None, fix="pass --calibration DATA.npz")
    method = ctx.options.calibration_method
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra: dict[str, Any] = {"CalibPercentile": PERCENTILE} if method == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="edgemill-quant-") as folder:
        source = _prepare_for_quantization(model, folder, notes)
        out = os.path.join(folder, "int8.onnx")
        try:
            with _quiet_root_logger():
                ort_quantize_static(source, out, _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=methods[method], extra_options=extra)
        except Exception as exc:
            raise BackendError("onnxruntime could not quantize the model to static INT8",
                               value=first_line(exc)[:300], fix="compile with --precision fp32, or report the model")
        quantized = onnx.load(out)
    notes["quantized_nodes"] = _require_quantized(quantized, "static INT8 quantization")
    notes.update(calibration_method=method, calibration_batches=len(feeds), format="QDQ",
                 activations="uint8", weights="int8 per-channel")
    return quantized


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
            with _quiet_root_logger():
                ort_quantize_dynamic(source, out, weight_type=QuantType.QInt8, op_types_to_quantize=list(ops))
        except Exception as exc:
            raise BackendError("onnxruntime could not quantize the model dynamically",
                               value=first_line(exc)[:300], fix="compile with --precision fp32")
        quantized = onnx.load(out)
    notes["quantized_nodes"] = _require_quantized(quantized, "dynamic INT8 quantization")
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
