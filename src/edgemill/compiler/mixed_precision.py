"""Accuracy-aware mixed precision: when a statically quantized model misses the accuracy allowance,
return the operators that hurt accuracy most to FP32, a few at a time, until it passes.

1. **Rank** (:func:`rank_layers`): for each quantized operator, run the float model with only that
   operator reading (and, where the quantizer does so, writing) its tensors through their
   quantize/dequantize pairs, on a few of the gate's inputs, and score it by the relative error of the
   model's outputs. Measuring at the outputs, not at the operator, sees what later layers do to the
   error: a small error before a normalization can be a large one after it.
2. **Search** (:func:`search`): keep the ``k`` worst operators in FP32 for ``k = 1, 2, 4, ...`` until the
   gate passes, bisect between the last failing and the first passing ``k``, then try each kept operator
   back in INT8 (the ranking is an estimate: a tensor between two quantized operators counts for both):
   the matrix products and convolutions first, where INT8 pays when the time runs out before the end,
   each kind the least sensitive first. Each point is a re-quantization (the calibration ranges are reused) judged
   by the same gate as every candidate, on the real INT8 kernels. The result: the fewest operators in
   FP32 that pass, never all of them (that would be the FP32 model).
3. **Budget**: the search stops when its time is up, keeping the best passing point found so far (or
   none), and says so. Pruning only makes a passing model a little faster, so the caller can stop it
   earlier (``prune_time_left``) to leave time for other searches, which may find a faster model.
4. **Warm start** (``start``): a search for other kernels of the same quantized model can begin its growth
   at the number of operators the first search needed, not at 1: the kernels round differently, but
   the same operators hurt. And where another search's model passes on these kernels too but its
   pruning was cut short, the search can go on pruning it (``seed``) instead of starting over.

Nothing here knows about onnxruntime's quantizer or the gate: the caller passes ``quantize`` (the model
with these operators kept in FP32) and ``judge`` (its gate evaluation). See lowering/static_int8.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from . import accuracy

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
RANK_SAMPLES = 8  # check inputs the ranking runs: enough to see which operator loses precision
# Where INT8 pays: an operator of these returns to FP32 only when it costs COMPUTE_WEIGHT times the
# accuracy an element-wise or normalization operator costs (see rank_layers).
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention")
COMPUTE_WEIGHT = 4.0
# Quantized only to keep INT8 flowing between their neighbours; not measured in the ranking.
DATA_MOVEMENT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Concat", "Slice",
                     "Gather", "Expand", "Tile", "Resize", "MaxPool", "Pad", "DepthToSpace", "SpaceToDepth")


@dataclass(frozen=True)
class Layer:
    """One quantized operator and its sensitivity: the relative output error with it alone in INT8
    (NaN when the time ran out before it was measured)."""

    name: str
    op_type: str
    error_alone: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op_type, "error_alone": float(f"{self.error_alone:.3g}")}


@dataclass(frozen=True)
class Point:
    """One point of the search: the ``fp32`` worst layers kept in FP32, and what the gate said."""

    fp32: int
    drop: float
    passed: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_layers": self.fp32, "drop": float(f"{self.drop:.4g}"), "passed": self.passed,
                "seconds": round(self.seconds, 2)}


@dataclass
class Outcome:
    """What the search found: the best passing model (None when no point passed) and how it got there."""

    model: onnx.ModelProto | None
    kept: list[Layer]  # the layers in FP32 in ``model``, worst first
    quantized: int  # quantized operators in the all-INT8 model
    points: list[Point] = field(default_factory=list)
    stopped_by_budget: bool = False
    full_drop: float | None = None  # the gate's drop with every operator in INT8, when the caller knows it
    started_at: int = 1  # the first point's number of FP32 operators (warm start; with a seed, its size)
    seeded: bool = False  # pruning went on from a passing point found before (``seed``), without growing
    prune_tried: list[str] = field(default_factory=list)  # the kept layers tried back in INT8, in order
    passing_prefix: int | None = None  # the fewest of the worst ranked operators found to pass, before pruning
    pruning_cut_short: bool = False  # pruning stopped to leave the rest of the budget to other searches

    @property
    def summary(self) -> str:
        tried = f"{len(self.points)} point(s) tried"
        if self.model is None:
            why = ("the time budget ran out before any point passed (raise --tune-budget to search further)"
                   if self.stopped_by_budget else "no point passed the gate")
            return f"mixed precision: {why} ({tried})"
        names = ", ".join(layer.name for layer in self.kept[:5]) + (", ..." if len(self.kept) > 5 else "")
        stop = ("; the time budget ran out, so this is the best point found, not necessarily the fewest "
                "(raise --tune-budget to search further)" if self.stopped_by_budget else
                "; pruning stopped at this search's share of the budget, so this is not necessarily the fewest "
                "(raise --tune-budget to search further)" if self.pruning_cut_short else "")
        return (f"mixed precision: {len(self.kept)} of {self.quantized} quantized operators kept in FP32 "
                f"({names}) to pass the gate ({tried}{stop})")

    def to_dict(self) -> dict[str, Any]:
        return {"quantized_operators": self.quantized, "full_int8_drop": self.full_drop,
                "fp32_layers": [layer.to_dict() for layer in self.kept],
                "passed": self.model is not None, "stopped_by_budget": self.stopped_by_budget,
                "pruning_cut_short": self.pruning_cut_short, "started_at": self.started_at, "seeded": self.seeded,
                "passing_prefix": self.passing_prefix, "points": [p.to_dict() for p in self.points],
                "summary": self.summary}


def quantized_layers(qdq: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Each operator of a QDQ model that reads a dequantized tensor (activation or weight)."""
    dequantized = {out for node in qdq.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node for node in qdq.graph.node
            if node.op_type not in QDQ_OPS and any(i in dequantized for i in node.input)]


def with_one_quantized(float_model: onnx.ModelProto, qdq: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """``float_model`` with only ``node`` reading its inputs through the quantize/dequantize pairs that
    ``qdq`` gives it: the error of that one operator in INT8, everything else exact."""
    producers = {out: n for n in qdq.graph.node for out in n.output}
    initializers = {i.name: i for i in qdq.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    target = next(n for n in model.graph.node if n.name == node.name)
    have = {i.name for i in model.graph.initializer}
    added: list[onnx.NodeProto] = []
    for index, name in enumerate(node.input):
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or index >= len(target.input):
            continue
        # Copies with outputs of their own: the quantizer may give a dequantized bias its float name.
        dq_copy = _renamed_copy(dq, f"{index}")
        chain = [dq_copy]
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            q_copy = _renamed_copy(q, f"{index}")
            q_copy.input[0] = target.input[index]  # quantize the float model's own tensor
            dq_copy.input[0] = q_copy.output[0]
            chain = [q_copy, dq_copy]
        _add_initializers(model, chain, initializers, have)
        added.extend(chain)
        target.input[index] = dq_copy.output[0]
    position = list(model.graph.node).index(target)
    for n in reversed(added):
        model.graph.node.insert(position, n)
    after = _output_pairs(qdq, node, target, initializers, have, model)
    position = list(model.graph.node).index(target) + 1
    for n in reversed(after):
        model.graph.node.insert(position, n)
    return model


def _output_pairs(qdq: onnx.ModelProto, node: onnx.NodeProto, target: onnx.NodeProto,
                  initializers: dict[str, onnx.TensorProto], have: set[str], model: onnx.ModelProto
                  ) -> list[onnx.NodeProto]:
    """The quantize/dequantize pairs ``qdq`` puts on ``node``'s outputs, re-created after ``target``
    so that every reader of the output (a model output too) gets the dequantized tensor. The
    quantizer quantizes some operators' outputs along with their inputs, and a pair on an output is
    gone when its operator is excluded, so it counts as that operator's error (a pair the next
    operator reads counts for that one as well: the ranking is an estimate, the search checks it)."""
    added: list[onnx.NodeProto] = []
    for index, name in enumerate(node.output):
        if index >= len(target.output):
            continue
        q = next((n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name), None)
        dq = next((n for n in qdq.graph.node if q is not None and n.op_type == "DequantizeLinear"
                   and n.input[0] == q.output[0]), None)
        if q is None or dq is None:
            continue
        float_name = target.output[index]
        q_copy, dq_copy = _renamed_copy(q, f"out{index}"), _renamed_copy(dq, f"out{index}")
        target.output[index] = f"{float_name}__edgemill_float"
        q_copy.input[0] = target.output[index]
        dq_copy.input[0] = q_copy.output[0]
        dq_copy.output[0] = float_name
        _add_initializers(model, [q_copy, dq_copy], initializers, have)
        added += [q_copy, dq_copy]
    return added


def _add_initializers(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto],
                      initializers: dict[str, onnx.TensorProto], have: set[str]) -> None:
    """Copy into ``model`` the initializers of the QDQ model (scales, zero points, INT8 weights) that
    ``nodes`` read and ``model`` lacks; ``have`` holds the names it has, and is updated."""
    for node in nodes:
        for name in node.input:
            if name in initializers and name not in have:
                model.graph.initializer.append(initializers[name])
                have.add(name)


def _renamed_copy(node: onnx.NodeProto, tag: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.output):
        copy.output[i] = f"{name}__edgemill_only_{tag}"
    copy.name = f"{node.name}__edgemill_only_{tag}"
    return copy


def _relative_error(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """The gate's relative error (max |got - ref| / max |ref|, the worst output)."""
    names = [str(i) for i in range(len(ref))]
    return accuracy.worst(accuracy.compare_all(names, got, ref))


def _session(model: onnx.ModelProto) -> Any:
    """An unoptimized single-thread onnxruntime session: QDQ pairs run as written (fake quantization)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def rank_layers(float_model: onnx.ModelProto, qdq: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]],
                time_left: Callable[[], float] = lambda: 1.0) -> tuple[list[Layer], bool]:
    """The quantized operators of ``qdq`` in the order to return them to FP32, and whether the time ran out.

    An operator's sensitivity is the relative error of the model's outputs when it alone is in INT8
    (:func:`with_one_quantized`), on the first :data:`RANK_SAMPLES` of ``feeds``: what the model loses
    downstream of it, normalizations included, not only at the operator. ``float_model`` is the model
    ``qdq`` was quantized from (same node names).

    The order: most sensitive first, except that the operators INT8 is for (:data:`COMPUTE_OPS`) count
    :data:`COMPUTE_WEIGHT` times less sensitive, so a matrix product goes back to FP32 before an
    element-wise operator only when it costs that much more accuracy. Operators that only move data
    (:data:`DATA_MOVEMENT_OPS`) are not measured (their pairs count for their neighbours) and come last,
    as do operators not reached before the time ran out (their score is NaN)."""
    samples = list(feeds)[:RANK_SAMPLES]
    float_names = {n.name for n in float_model.graph.node if n.name}
    layers = [node for node in quantized_layers(qdq) if node.name in float_names]
    reference = _session(float_model)
    expected = [reference.run(None, feed) for feed in samples]
    scored: list[Layer] = []
    unranked: list[Layer] = []
    out_of_time = False
    for node in layers:
        if node.op_type in DATA_MOVEMENT_OPS or time_left() <= 0:
            out_of_time = out_of_time or node.op_type not in DATA_MOVEMENT_OPS
            unranked.append(Layer(node.name, node.op_type, float("nan")))
            continue
        session = _session(with_one_quantized(float_model, qdq, node))
        error = max((_relative_error(session.run(None, feed), ref) for feed, ref in zip(samples, expected)),
                    default=0.0)
        scored.append(Layer(node.name, node.op_type, error))
    scored.sort(key=lambda layer: -layer.error_alone / (COMPUTE_WEIGHT if layer.op_type in COMPUTE_OPS else 1.0))
    return scored + unranked, out_of_time


Judge = Callable[[onnx.ModelProto], Any]  # returns an object with .passed and .drop (gate.Evaluation)
Quantize = Callable[[list[str]], onnx.ModelProto]  # the model with these operators kept in FP32


def search(ranked: Sequence[Layer], quantize: Quantize, judge: Judge, time_left: Callable[[], float],
           progress: Callable[[str], None] = lambda message: None, start: int = 1,
           prune_time_left: Callable[[], float] | None = None,
           seed: tuple[Sequence[Layer], onnx.ModelProto, Sequence[str]] | None = None) -> Outcome:
    """The fewest of the worst ``ranked`` layers (every quantized operator) to keep in FP32 for ``judge``
    to pass (see the module docstring). ``time_left`` says how many seconds remain; the search stops
    when it is not positive. Growth begins at ``start`` layers (a warm start; when that point passes,
    the bisection starts from 0). Pruning stops when ``prune_time_left`` (default: ``time_left``) is not
    positive. ``seed``: these layers kept in FP32, the model they give (already judged to pass), and the
    layers an earlier pruning of it tried; the search only prunes it further, the untried layers first."""
    quantized = len(ranked)
    most = len(ranked) - 1
    outcome = Outcome(None, [], quantized, started_at=max(1, min(start, most)) if most >= 1 else 1)
    results: dict[tuple[str, ...], bool] = {}
    best: tuple[list[Layer], onnx.ModelProto] | None = None

    def tried(kept: list[Layer]) -> bool | None:
        nonlocal best
        key = tuple(layer.name for layer in kept)
        if key in results:
            return results[key]
        if time_left() <= 0:
            outcome.stopped_by_budget = True
            return None
        started = time.perf_counter()
        model = quantize(list(key))
        evaluation = judge(model)
        passed = bool(evaluation.passed)
        outcome.points.append(Point(len(kept), float(evaluation.drop), passed, time.perf_counter() - started))
        progress(f"{len(kept)} of {quantized} operators in FP32: drop {evaluation.drop:.4g} "
                 + ("passes" if passed else "fails"))
        results[key] = passed
        if passed and (best is None or len(kept) <= len(best[0])):
            best = (list(kept), model)
        return passed

    failing, passing, k = 0, None, outcome.started_at
    if seed is not None:
        best = (list(seed[0]), seed[1])
        results[tuple(layer.name for layer in seed[0])] = True
        outcome.seeded, outcome.started_at, most = True, len(seed[0]), 0  # no growing, no bisecting
    # Grow: start, 2 start, 4 start, ... up to all ranked layers but one (all of them is the FP32 model).
    while most >= 1:
        k = min(k, most)
        verdict = tried(list(ranked[:k]))
        if verdict is None:
            break
        if verdict:
            passing = k
            break
        failing = k
        if k == most:
            break
        k *= 2
    # Bisect between the largest failing and the smallest passing point.
    while passing is not None and passing - failing > 1:
        middle = (failing + passing) // 2
        verdict = tried(list(ranked[:middle]))
        if verdict is None:
            break
        if verdict:
            passing = middle
        else:
            failing = middle
    outcome.passing_prefix = passing if seed is None else None
    # Prune: the ranking is an estimate (a quantized tensor between two operators counts for both), so
    # try each kept layer back in INT8, and leave it there if the gate still passes. The compute operators
    # first (where INT8 pays, if the time runs out before the rest), each kind the least sensitive first.
    if best is not None and not outcome.stopped_by_budget:
        order = sorted(reversed(best[0]), key=lambda x: x.op_type not in COMPUTE_OPS)  # stable
        if seed is not None:  # what the earlier pruning tried, last: it failed there, it may fail here
            order = [x for x in order if x.name not in seed[2]] + [x for x in order if x.name in seed[2]]
        for layer in order:
            kept = [x for x in best[0] if x.name != layer.name]
            if not kept:
                break
            if prune_time_left is not None and prune_time_left() <= 0 and tuple(x.name for x in kept) not in results:
                outcome.pruning_cut_short = True
                break
            outcome.prune_tried.append(layer.name)
            if tried(kept) is None:
                break
    if best is not None:
        outcome.model = best[1]
        outcome.kept = best[0]
    return outcome
