"""Build each planned candidate, run it on the check inputs and put it through the accuracy gate.

A candidate that fails is dropped with its reason and the compile goes on with the others; only when
none passes does the compile stop, naming the closest. An onnxruntime candidate whose optimized graph
does not load or changes the answer is built again one optimization level lower (all -> extended ->
basic -> none) before it is given up: real models meet optimizer rewrites that are not exact for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AccuracyCheckError, BackendError, EdgemillError, first_line
from ..runtime.backends import open_session
from ..targets import runnable_here
from . import gate, lowering
from .context import CompileContext, QuantizedJudge
from .lowering import Artifact, Candidate
from .reference import Reference, compile_error

STEP_NAMES = {"optimized": "ort_optimize", "transformer-fused": "transformer_fusion", "static-qdq": "quantize_int8",
              "static-qdq-bf16": "quantize_int8_bf16", "dynamic": "quantize_dynamic", "fp16-cast": "convert_fp16",
              "ir": "openvino_convert", "native": "litert_native", "": "reference"}


@dataclass
class Built:
    artifact: Artifact
    evaluation: gate.Evaluation
    record: dict[str, Any]


@dataclass
class Failed:
    candidate: Candidate
    reason: str


def step_name(candidate: Candidate) -> str:
    name = STEP_NAMES.get(candidate.method, candidate.method)
    if candidate.backend == "openvino" and candidate.method != "ir":
        name = f"openvino_{name}"
    return name


def open_artifact(artifact: Artifact, output_names: list[str], threads: int | None) -> Any:
    return open_session(artifact.candidate.backend, artifact.entrypoint, artifact.files, output_names, threads,
                        artifact.backend_options)


def run_artifact(artifact: Artifact, output_names: list[str], threads: int | None,
                 feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    session = open_artifact(artifact, output_names, threads)
    return [list(session.run(feed)) for feed in feeds]


GATE_RUNS_KEPT = 8  # outputs of the last artifacts run, per compile


def gate_run(ctx: CompileContext, artifact: Artifact, output_names: list[str],
             feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The candidate's outputs for the gate, from where the gate runs (the host, or an emulated device of
    the target's architecture: ``ctx.gate_runner``). An artifact already run on these feeds (the same
    backend, files and load options) is not run again: a static INT8 candidate's model was judged on its
    kernels when its verdict was reached, and the candidate built from it is that same artifact."""
    from .tuning import artifact_digest

    key = (artifact.candidate.backend, artifact_digest(artifact), tuple(output_names), id(feeds))
    got = ctx.gate_outputs.pop(key, None)
    if got is None:
        if ctx.gate_runner is None:
            got = run_artifact(artifact, output_names, ctx.options.check_threads, feeds)
        else:
            got = ctx.gate_runner.run(artifact, output_names, ctx.options.check_threads, feeds)
    ctx.gate_outputs[key] = got  # the newest last; the oldest go
    while len(ctx.gate_outputs) > GATE_RUNS_KEPT:
        del ctx.gate_outputs[next(iter(ctx.gate_outputs))]
    return got


def build_all(ctx: CompileContext, prepared: Any, planned: list[Candidate], feeds: list[dict[str, np.ndarray]],
              labels: np.ndarray | None, reference: Reference, output_names: list[str],
              first_passing_only: bool) -> tuple[list[Built], list[Failed]]:
    """Build and gate the candidates in plan order. Without measuring there is nothing to choose by
    but that order, so ``first_passing_only`` stops at the first that passes."""
    built: list[Built] = []
    failed: list[Failed] = []
    static_int8 = [c for c in planned if c.method.startswith("static-qdq")]
    ctx.int8_judge = _int8_judges(ctx, static_int8, feeds, labels, reference, output_names)
    ctx.int8_kernels = tuple(c.label for c in static_int8)
    try:
        _build_planned(ctx, prepared, planned, feeds, labels, reference, output_names, first_passing_only,
                       built, failed)
    finally:
        if ctx.static_int8 is not None:  # its calibrated folder: a later build_all calibrates again
            ctx.static_int8.close()
            ctx.static_int8 = None
    return built, failed


def _build_planned(ctx: CompileContext, prepared: Any, planned: list[Candidate], feeds: list[dict[str, np.ndarray]],
                   labels: np.ndarray | None, reference: Reference, output_names: list[str], first_passing_only: bool,
                   built: list[Built], failed: list[Failed]) -> None:
    for planned_candidate in planned:
        candidate: Candidate | None = planned_candidate
        while candidate is not None:
            outcome = _build_one(ctx, prepared, candidate, feeds, labels, reference, output_names)
            if isinstance(outcome, Failed):
                failed.append(outcome)
            else:
                built.append(outcome)
                if outcome.evaluation.passed or not candidate.lossless:
                    break  # a reduced-precision miss is quantization error: a lower level will not help
            candidate = lowering.step_down(candidate, ctx.target)
            if candidate is not None:
                ctx.progress(step_name(candidate), f"stepping down: building {candidate.label}", None)
        if first_passing_only and built and built[-1].evaluation.passed:
            break


def _int8_judges(ctx: CompileContext, static_int8: list[Candidate], feeds: list[dict[str, np.ndarray]],
                 labels: np.ndarray | None, reference: Reference,
                 output_names: list[str]) -> Callable[[str], QuantizedJudge | None]:
    """For the label of a planned static INT8 candidate, the accuracy gate for a quantized ONNX model run
    as that candidate runs it (onnxruntime optimized for the target, or OpenVINO's IR with its precision
    hint): what the mixed-precision search judges each point by. None for any other label."""
    by_label = {c.label: c for c in static_int8}

    def judge(label: str) -> QuantizedJudge | None:
        candidate = by_label.get(label)
        if candidate is None:
            return None

        def evaluate(model: Any) -> gate.Evaluation:
            if candidate.backend == "openvino":
                from .lowering.openvino import ir_artifact

                artifact = ir_artifact(model, candidate)
            else:
                from .lowering.onnxruntime import optimized_artifact

                artifact = optimized_artifact(model, candidate, ctx.target)
            got = gate_run(ctx, artifact, output_names, feeds)
            return _evaluate(ctx, False, got, reference, labels, output_names)
        return QuantizedJudge(evaluate, feeds)
    return judge


def _evaluate(ctx: CompileContext, lossless: bool, got: list[list[np.ndarray]], reference: Reference,
              labels: np.ndarray | None, output_names: list[str]) -> gate.Evaluation:
    """The accuracy gate on a candidate's outputs ``got`` for the check feeds."""
    o = ctx.options
    compared = [reference.select(outs, output_names) for outs in got]
    return gate.evaluate(lossless, reference.outputs, compared, reference.names, labels, o.max_accuracy_drop,
                         o.tolerance, task_metric=o.validation is not None, spread=reference.spread,
                         spread_from=reference.spread_from)


def _build_one(ctx: CompileContext, prepared: Any, candidate: Candidate, feeds: list[dict[str, np.ndarray]],
               labels: np.ndarray | None, reference: Reference, output_names: list[str]) -> Built | Failed:
    o = ctx.options
    with ctx.step(step_name(candidate), f"building {candidate.label}") as record:
        record["candidate"] = candidate.label
        try:
            artifact = lowering.builder(candidate.backend)(prepared, candidate, ctx)
            got = gate_run(ctx, artifact, output_names, feeds)
        except EdgemillError as exc:
            record.update(status="failed", summary=f"{candidate.label}: failed: {first_line(exc)}")
            return Failed(candidate, first_line(exc))
        except Exception as exc:  # a library's bug on this model must not end the compile: drop the candidate
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            record.update(status="failed", summary=f"{candidate.label}: failed: {reason}")
            return Failed(candidate, reason)
        evaluation = _evaluate(ctx, candidate.lossless, got, reference, labels, output_names)
        record.update(artifact.notes.pop("ort_optimize", {}))
        record.update(notes=artifact.notes, gate=evaluation.to_dict(),
                      status="passed" if evaluation.passed else "rejected")
        if ctx.gate_runner is not None and not runnable_here(ctx.target):  # a cross target: say whose kernels
            record["judged_on"] = ctx.gate_runner.where(candidate.backend)
        if candidate.reads == "onnx":
            share = compile_error(reference, got, output_names, o.tolerance)
            if share is not None:
                record["compile_error"] = share
        mixed = artifact.notes.get("mixed_precision")
        kept = f"; {len(mixed['fp32_layers'])} of {mixed['quantized_operators']} operators kept in FP32" \
            if mixed and mixed["passed"] else ""
        record["summary"] = (f"{candidate.label}: {evaluation.reason}{kept}"
                             + ("" if evaluation.passed else " -> rejected"))
        return Built(artifact, evaluation, record)


def nothing_built_error(ctx: CompileContext, failed: list[Failed], skipped: list[lowering.Skipped]) -> BackendError:
    reasons = [f"{f.candidate.label}: {f.reason}" for f in failed]
    reasons += [f"{s.candidate.label}: {s.reason}" for s in skipped]
    return BackendError(f"no candidate could be built for --precision {ctx.options.precision} "
                        f"--backend {ctx.options.backend}", value="; ".join(reasons)[:900],
                        fix="follow one of those reasons (e.g. pass --calibration DATA.npz for static INT8), "
                            "or use --precision fp32")


def no_passing_error(ctx: CompileContext, built: list[Built], reference: Reference) -> AccuracyCheckError:
    o = ctx.options
    closest = min(built, key=lambda b: b.evaluation.drop - b.evaluation.allowed)
    ev = closest.evaluation
    if all(b.artifact.candidate.lossless for b in built):
        conversion = reference.conversion or {}
        if conversion.get("within_tolerance") is False:
            return AccuracyCheckError(
                f"the model converted to ONNX already differs from {reference.name}",
                value=f"max relative error {conversion['max_relative_error']:.3e} (conversion) ",
                expected=f"max relative error <= {o.tolerance:.0e}",
                fix=("raise --tolerance if this difference is acceptable (the closest candidate, "
                     f"{closest.artifact.candidate.label}, is at {ev.max_relative_error:.3e})"
                     + ("; install ai-edge-litert (pip install 'edgemill[litert]') so LiteRT runs the .tflite itself"
                        if ctx.source.native is not None and not any(b.artifact.candidate.backend == "litert" for b in built)
                        else "") + "; no package was written"),
            )
        return AccuracyCheckError(
            "the compiled model's output differs from the original's",
            value=float(f"{ev.max_relative_error:.3e}"), expected=f"max relative error <= {o.tolerance:.0e}",
            fix="raise --tolerance if this difference is acceptable, or compile with --backend reference "
                "and report the model to us; no package was written",
        )
    tried = ", ".join(f"{b.artifact.candidate.label}: {b.evaluation.metric} drop {b.evaluation.drop:.4g}" for b in built)
    data_fix = ("" if o.validation is not None else
                "pass --validation DATA.npz with labels to judge on top-1 accuracy rather than raw output error, or ")
    return AccuracyCheckError(
        f"no candidate meets the accuracy allowance; closest: {closest.artifact.candidate.label} "
        f"({ev.metric} drop {ev.drop:.4g}, over by {ev.drop - ev.allowed:.4g})",
        value=f"--max-accuracy-drop {o.max_accuracy_drop:g}", expected=f"a drop within the allowance (tried {tried})",
        fix=f"{data_fix}allow more with --max-accuracy-drop, calibrate with more representative --calibration data, "
            "or use --precision fp32; no package was written",
    )
