"""Static INT8 (calibrated QDQ) for every backend that runs it, judged on the kernels that run it.

onnxruntime's quantizer makes the QDQ model once per compile (pre-processing, calibration); onnxruntime's
INT8 candidate runs it, and OpenVINO converts the same model to its INT8 IR. The two run different
kernels, which round differently: a model that passes the gate on one can miss it on the other by a
sample (measured: a MobileNet passed on onnxruntime with a top-1 drop of 0.5 % and missed 1 % on
OpenVINO by one of 197 images). So each kind of kernels gets its own verdict:

1. the fully quantized model, when it passes on these kernels;
2. else a mixed-precision model another backend's search found, when it passes here too (no new search);
3. else a mixed-precision search (:mod:`..mixed_precision`) judged on these kernels, in what is left of
   the one ``--tune-budget`` all the searches of a compile share. It starts where an earlier search on
   other kernels found a passing point (the same operators hurt on both), and its pruning stops at its
   share of what is left, so that the kernels judged after it still get a search: a search that passes
   gives a candidate, and pruning only makes one a little faster (measured on an encoder: all of the
   20 s went to onnxruntime's search, and OpenVINO's INT8+bf16, the fastest passing encoder in an
   earlier run, was rejected for want of time). When 2. finds a model whose pruning was cut short, these
   kernels go on pruning it with their share, so the time kept for them is not lost when they need no
   search of their own.

Calibration ranges, the ranking of operators and every searched model are shared; only verdicts differ.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ...errors import BackendError, OptionError, first_line
from .quiet import quiet_logger

if TYPE_CHECKING:
    from ..context import CompileContext, QuantizedJudge
    from ..mixed_precision import Layer, Outcome

PERCENTILE = 99.999
QUANTIZED_OPS = ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QAttention",
                 "QLinearConv", "QLinearMatMul")


def require_quantized(model: onnx.ModelProto, what: str) -> int:
    """Count the quantized nodes; a 'quantized' model with none is the fp32 model under another name."""
    count = sum(n.op_type in QUANTIZED_OPS for n in model.graph.node)
    if count == 0:
        raise BackendError(f"{what} left no operator quantized", value=", ".join(sorted({n.op_type for n in model.graph.node}))[:200],
                           fix="this model's operators have no INT8 kernels in onnxruntime; use --precision fp32")
    return count


def quantized_model(model: onnx.ModelProto, ctx: CompileContext, kernels: str, notes: dict[str, Any]) -> onnx.ModelProto:
    """The QDQ model for the candidate whose kernels are ``kernels`` (a key of ``ctx.int8_judge``: the
    candidate's label). Calibrated once per compile; judged, and searched when it misses, per kernels."""
    if ctx.static_int8 is None:
        ctx.static_int8 = StaticInt8(model, ctx)
    return ctx.static_int8.for_kernels(kernels, notes)


@dataclass
class _Verdict:
    model: onnx.ModelProto
    notes: dict[str, Any] = field(default_factory=dict)
    found: Outcome | None = None  # the search whose passing model this is (None: not a mixed model)
    seed: _Verdict | None = None  # the verdict whose model that search went on pruning

    @property
    def mixed(self) -> bool:
        return self.found is not None

    @property
    def kept(self) -> list[Layer]:
        """The operators in FP32."""
        return self.found.kept if self.found is not None else []

    @property
    def cut_short(self) -> bool:
        """Its search stopped pruning at its share of the budget."""
        return self.found is not None and self.found.pruning_cut_short

    @property
    def passing_prefix(self) -> int | None:
        """How many of the worst ranked operators the search that grew this model needed in FP32."""
        if self.seed is not None:
            return self.seed.passing_prefix
        return self.found.passing_prefix if self.found is not None else None

    @property
    def prune_tried(self) -> list[str]:
        """The kept operators every pruning of this model tried back in INT8."""
        before = self.seed.prune_tried if self.seed is not None else []
        return before + (self.found.prune_tried if self.found is not None else [])


class StaticInt8:
    """The calibrated quantizer of one compile and the verdicts of each kind of kernels on its models."""

    def __init__(self, model: onnx.ModelProto, ctx: CompileContext) -> None:
        feeds = ctx.calibration or []
        if not feeds:
            raise OptionError("static INT8 needs calibration data", value=None, fix="pass --calibration DATA.npz")
        self._ctx = ctx
        self._feeds = feeds
        self._method = ctx.options.calibration_method
        self._folder = tempfile.TemporaryDirectory(prefix="edgemill-quant-")
        self.notes: dict[str, Any] = {}
        try:
            self._source = _prepare_for_quantization(model, self._folder.name, self.notes)
            self.full = self.quantize([])
        except BaseException:
            self.close()
            raise
        self.notes["quantized_nodes"] = require_quantized(self.full, "static INT8 quantization")
        self.notes.update(calibration_method=self._method, calibration_batches=len(feeds), format="QDQ",
                          activations="uint8", weights="int8 per-channel")
        self._verdicts: dict[str, _Verdict] = {}
        self._ranked: tuple[list[Layer], bool] | None = None
        self._deadline: float | None = None  # set when the first search starts: all share one budget

    def close(self) -> None:
        self._folder.cleanup()

    def quantize(self, keep_fp32: list[str]) -> onnx.ModelProto:
        """The model with ``keep_fp32`` (node names) left in FP32. Calibrated on the first call: the
        ranges are cached in the folder and reused for every exclusion."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
        from onnxruntime.quantization import quantize_static as ort_quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        extra: dict[str, Any] = {"CalibPercentile": PERCENTILE} if self._method == "percentile" else {}
        out, ranges = os.path.join(self._folder.name, "int8.onnx"), os.path.join(self._folder.name, "ranges.json")
        try:
            with quiet_logger():  # quantization logs advice to the root logger
                ort_quantize_static(self._source, out, _Reader(self._feeds), quant_format=QuantFormat.QDQ,
                                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=methods[self._method], extra_options=extra,
                                    nodes_to_exclude=list(keep_fp32), calibration_cache_path=ranges)
        except Exception as exc:
            raise BackendError("onnxruntime could not quantize the model to static INT8",
                               value=first_line(exc)[:300], fix="compile with --precision fp32, or report the model")
        return onnx.load(out)

    def for_kernels(self, kernels: str, notes: dict[str, Any]) -> onnx.ModelProto:
        """The model ``kernels`` should run, with what the search found in ``notes``."""
        if kernels not in self._verdicts:
            self._verdicts[kernels] = self._verdict(kernels)
        verdict = self._verdicts[kernels]
        notes.update(self.notes)
        notes.update(verdict.notes)
        return verdict.model

    def _verdict(self, kernels: str) -> _Verdict:
        ctx = self._ctx
        judge = ctx.int8_judge(kernels) if ctx.int8_judge is not None and ctx.options.mixed_precision else None
        if judge is None:
            return _Verdict(self.full)
        full = judge(self.full)
        if full.passed:
            return _Verdict(self.full)
        for verdict in sorted(self._verdicts.values(), key=lambda v: len(v.kept)):  # the most INT8 first
            if verdict.mixed and judge(verdict.model).passed:
                if verdict.cut_short and self._time_left() > 0:  # prune it further on these kernels
                    return self._search(kernels, judge, float(full.drop), seed=verdict)
                mixed = dict(verdict.notes["mixed_precision"], also_passes_on=kernels, full_int8_drop_here=float(full.drop))
                return _Verdict(verdict.model, {**verdict.notes, "mixed_precision": mixed}, verdict.found, verdict.seed)
        return self._search(kernels, judge, float(full.drop))

    def _time_left(self) -> float:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._ctx.options.tune_budget
        return self._deadline - time.monotonic()

    def _search(self, kernels: str, judge: QuantizedJudge, full_drop: float, seed: _Verdict | None = None) -> _Verdict:
        from .. import mixed_precision

        ctx = self._ctx
        budget = ctx.options.tune_budget
        time_left = self._time_left
        # Judged after these: each gets an equal share of the time left for pruning (not for finding a pass).
        later = [k for k in ctx.int8_kernels if k != kernels and k not in self._verdicts]
        warm = [v.passing_prefix for v in self._verdicts.values() if v.passing_prefix]
        what = (f"{len(seed.kept)} operators kept in FP32 by the search on {seed.notes['mixed_precision']['judged_on']} "
                "pass here too: returning more of them to INT8" if seed is not None else
                "searching for the operators to keep in FP32")
        with ctx.step("mixed_precision", f"static INT8 misses the allowance on {kernels} (drop {full_drop:.4g}): "
                      f"{what} ({max(0.0, time_left()):.0f} s left of {budget:g} s)") as record:
            if self._ranked is None:
                # Ranked on the inputs the gate judges: ranges calibrated on other data may clip these, and
                # that is part of what the gate sees. The ranking is the quantization's, whatever kernels.
                self._ranked = mixed_precision.rank_layers(onnx.load(self._source), self.full, judge.feeds, time_left)
            ranked, out_of_time = self._ranked
            reserve = max(0.0, time_left()) * len(later) / (len(later) + 1)
            outcome = mixed_precision.search(ranked, self.quantize, _int8_only(judge), time_left,
                                             lambda message: ctx.progress("mixed_precision", message, None),
                                             start=min(warm) if warm else 1,
                                             prune_time_left=lambda: time_left() - reserve,
                                             seed=(seed.kept, seed.model, seed.prune_tried) if seed is not None else None)
            outcome.stopped_by_budget = outcome.stopped_by_budget or out_of_time
            outcome.full_drop = full_drop
            found = {**outcome.to_dict(), "judged_on": kernels}
            if seed is not None:
                found["pruned_from"] = seed.notes["mixed_precision"]["judged_on"]
            record.update(found)
        notes: dict[str, Any] = {"mixed_precision": found}
        if outcome.model is None:
            return _Verdict(self.full, notes)
        notes["quantized_nodes"] = require_quantized(outcome.model, "mixed-precision INT8")
        return _Verdict(outcome.model, notes, outcome, seed)


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
