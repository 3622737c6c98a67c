"""onnxruntime artifacts: the optimized fp32 graph, static INT8 (QDQ, calibrated), dynamic INT8
(MatMul/Gemm weights), and fp16 — each saved after onnxruntime's offline optimizer for the target.

Quantization uses onnxruntime's own tooling (``onnxruntime.quantization``): QDQ format, unsigned 8-bit
activations with signed 8-bit per-channel weights (what VNNI and Arm dot-product kernels run), and the
calibration method the user picks (minmax, entropy, percentile).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ...errors import BackendError, OptionError, first_line
from ..graph import to_bytes
from . import MODEL_DIR, TRANSFORMER_FUSED, Artifact, Candidate, transformer_fusion
from .ort_optimize import optimize
from .quiet import quiet_logger

if TYPE_CHECKING:
    from ...targets import Target
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
    if candidate.method == TRANSFORMER_FUSED:
        lowered = transformer_fusion.fuse(model, notes)
    elif candidate.precision == "fp32":
        lowered = model
    elif candidate.method == "static-qdq":
        lowered = quantize_static(model, ctx, notes)
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
    optimized, options = optimize(lowered, target, record, candidate.level)
    notes["ort_optimize"] = record
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: to_bytes(optimized)}, options, notes)


def build_reference(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: to_bytes(model)}, {}, {})


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
    as it is when that tool cannot handle it. Every node gets a unique name: the quantizer excludes
    operators by name (mixed precision)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw, prepared = os.path.join(folder, "in.onnx"), os.path.join(folder, "pre.onnx")
    onnx.save(model, raw)
    try:
        quant_pre_process(raw, prepared, skip_symbolic_shape=False)
        notes["pre_process"] = "onnxruntime quant_pre_process"
    except Exception as exc:  # the tool raises assorted errors for graphs it cannot infer
        notes["pre_process"] = f"skipped ({first_line(exc)[:200]})"
        prepared = raw
    loaded = onnx.load(prepared)
    if _name_nodes(loaded):
        onnx.save(loaded, prepared)
    return prepared


def _name_nodes(model: onnx.ModelProto) -> bool:
    """Give unnamed or same-named nodes a unique name; True when any changed."""
    seen: set[str] = set()
    changed = False
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}_edgemill"
            changed = True
        seen.add(node.name)
    return changed


def quantize_static(model: onnx.ModelProto, ctx: CompileContext, notes: dict[str, Any]) -> onnx.ModelProto:
    """The calibrated QDQ model. onnxruntime's and OpenVINO's INT8 candidates both start from it, so it
    is made once per compile (the same prepared model and calibration data) and shared, unchanged.
    When the fully quantized model misses the accuracy allowance, it is the mixed-precision one."""
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
        out, ranges = os.path.join(folder, "int8.onnx"), os.path.join(folder, "ranges.json")

        def quantize(keep_fp32: list[str]) -> onnx.ModelProto:
            # Calibrated once: the ranges are cached in the folder and reused for every exclusion.
            try:
                with quiet_logger():  # quantization logs advice to the root logger
                    ort_quantize_static(source, out, _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                        calibrate_method=methods[method], extra_options=extra,
                                        nodes_to_exclude=list(keep_fp32), calibration_cache_path=ranges)
            except Exception as exc:
                raise BackendError("onnxruntime could not quantize the model to static INT8",
                                   value=first_line(exc)[:300], fix="compile with --precision fp32, or report the model")
            return onnx.load(out)

        quantized = quantize([])
        notes["quantized_nodes"] = _require_quantized(quantized, "static INT8 quantization")
        notes.update(calibration_method=method, calibration_batches=len(feeds), format="QDQ",
                     activations="uint8", weights="int8 per-channel")
        if ctx.judge_int8 is not None and ctx.options.mixed_precision:
            quantized = _mixed_precision(ctx, onnx.load(source), quantized, quantize, notes)
    return quantized


def _mixed_precision(ctx: CompileContext, prepared: onnx.ModelProto, quantized: onnx.ModelProto,
                     quantize: Callable[[list[str]], onnx.ModelProto], notes: dict[str, Any]) -> onnx.ModelProto:
    """``quantized`` when it passes the gate, else the fewest of its most sensitive operators returned to
    FP32 that pass (the fully quantized model when none does: its candidate is then rejected as before)."""
    from .. import mixed_precision

    judge = ctx.judge_int8
    assert judge is not None
    full = judge(quantized)
    if full.passed:
        return quantized
    budget = ctx.options.tune_budget
    deadline = time.monotonic() + budget

    def time_left() -> float:
        return deadline - time.monotonic()

    with ctx.step("mixed_precision", f"static INT8 misses the allowance (drop {full.drop:.4g}): searching for the "
                  f"operators to keep in FP32 (at most {budget:g} s)") as record:
        # Ranked on the inputs the gate judges: ranges calibrated on other data may clip these, and that
        # is part of what the gate sees.
        ranked, out_of_time = mixed_precision.rank_layers(prepared, quantized, judge.feeds, time_left)
        outcome = mixed_precision.search(ranked, quantize, _int8_only(judge), time_left,
                                         lambda message: ctx.progress("mixed_precision", message, None))
        outcome.stopped_by_budget = outcome.stopped_by_budget or out_of_time
        outcome.full_drop = float(full.drop)
        record.update(outcome.to_dict())
    notes["mixed_precision"] = outcome.to_dict()
    if outcome.model is None:
        return quantized
    notes["quantized_nodes"] = _require_quantized(outcome.model, "mixed-precision INT8")
    return outcome.model


@dataclass(frozen=True)
class _NothingQuantized:
    """The verdict on a point with no operator left in INT8: it is the FP32 model, not a mixed one."""

    passed: bool = False
    drop: float = float("inf")


def _int8_only(judge: Callable[[onnx.ModelProto], Any]) -> Callable[[onnx.ModelProto], Any]:
    """``judge``, failing outright a model in which keeping some operators in FP32 left none quantized
    (the quantizer drops the pairs around data movement once its neighbours are FP32)."""
    def judged(model: onnx.ModelProto) -> Any:
        if not any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
            return _NothingQuantized()
        return judge(model)
    return judged


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
