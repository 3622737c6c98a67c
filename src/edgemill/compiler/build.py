"""The compile driver: frontend -> checks -> graph passes -> candidates (backend x precision) ->
accuracy gate -> measured tuning -> package."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import AccuracyCheckError, BackendError, EdgemillError, first_line
from ..package.canonical import canonical_json, sha256_hex
from ..package.layout import MANIFEST, PARTITION, REPORT
from ..package.manifest import FileEntry, Manifest
from ..package.writer import write_package
from ..runtime.backends import open_session
from ..runtime.backends.onnxruntime import session_options
from ..targets import get_target, runnable_here
from . import calibration as data_files
from . import gate, lowering, sample_inputs, tuning
from .checks import check_model
from .context import CompileContext, Progress, silent
from .frontends import FrontendRequest, choose
from .graph import input_specs, output_specs, to_bytes
from .lowering import Artifact, Candidate
from .options import CompileOptions
from .partition import partition as make_partition
from .passes import all_passes


@dataclass(frozen=True)
class CompileResult:
    path: Path
    package_id: str
    manifest: Manifest
    report: dict[str, Any]


@dataclass
class _Built:
    artifact: Artifact
    evaluation: gate.Evaluation
    record: dict[str, Any]


_STEP_NAMES = {"optimized": "ort_optimize", "static-qdq": "quantize_int8", "dynamic": "quantize_dynamic",
               "fp16-cast": "convert_fp16", "ir": "openvino_convert", "": "reference"}


def _step_name(candidate: Candidate) -> str:
    name = _STEP_NAMES.get(candidate.method, candidate.method)
    if candidate.backend == "openvino" and candidate.method != "ir":
        name = f"openvino_{name}"
    return name


def compile_model(options: CompileOptions, progress: Progress = silent) -> CompileResult:
    options.validate()
    target = get_target(options.target)
    frontend = choose(options.model, options.framework)

    progress("load", f"loading {options.model.name} ({frontend.name})", None)
    start = time.perf_counter()
    model, source = frontend.load(options.model, FrontendRequest(options.inputs, options.trust_pickle))
    load_warnings: list[str] = []
    model = check_model(model, f"model {options.model.name}", load_warnings)
    progress("load", f"loaded {options.model.name}: {len(model.graph.node)} nodes, checker and shape inference pass",
             time.perf_counter() - start)
    ctx = CompileContext(options=options, target=target, source=source, original=model,
                         progress=progress, warnings=load_warnings)
    ctx.steps.append({"step": "load", "frontend": frontend.name, "nodes": len(model.graph.node),
                      "summary": f"{frontend.name} model, {len(model.graph.node)} nodes, checked",
                      "seconds": round(time.perf_counter() - start, 4)})

    for p in all_passes():
        if p.applies(ctx):
            with ctx.step(p.name, p.description) as record:
                model = p.run(model, ctx, record)
    prepared = model
    inputs, outputs = input_specs(prepared), output_specs(prepared)
    output_names = [o.name for o in outputs]

    # The data every candidate is judged and calibrated on, checked before any candidate is built.
    if options.validation is not None:
        feeds, labels = data_files.load_validation(options.validation, inputs)
        ctx.validation_sha256 = sha256_hex(options.validation.read_bytes())
    else:
        feeds, labels = _generated_feeds(ctx, inputs), None
    if options.calibration is not None:
        ctx.calibration = data_files.load_calibration(options.calibration, inputs)

    planned, skipped = lowering.plan(target, options.backend, options.precision,
                                     has_calibration=ctx.calibration is not None,
                                     has_real_data=options.validation is not None, max_drop=options.max_accuracy_drop,
                                     runs_here=runnable_here(target), tune_budget=options.tune_budget)
    measuring = options.measure and runnable_here(target)
    if measuring:  # refuse a budget that cannot time every candidate before any work, cached or not
        tuning.check_budget(options.tune_budget, len(planned) * len(tuning.thread_settings(target.cores)) + 1)
    key = tuning.cache_key(to_bytes(prepared), _cache_parts(ctx, planned)) if measuring else None
    cached = tuning.load_cached(key) if key else None
    if cached and any(c.label == cached["chosen"]["candidate"] for c in planned):
        planned = [c for c in planned if c.label == cached["chosen"]["candidate"]]  # build only the known winner

    reference = _reference_outputs(ctx, feeds, output_names)
    built = _build_candidates(ctx, prepared, planned, skipped, feeds, labels, reference, output_names,
                              first_passing_only=not measuring)
    passing = [b for b in built if b.evaluation.passed]
    if not passing:
        raise _no_candidate_error(ctx, built)

    tuned = _tune(ctx, passing, _deployment_batch(feeds[0], inputs), output_names, key, cached) if measuring else None
    if tuned is not None:
        chosen, threads = tuned["chosen_built"], tuned["threads"]
    else:
        chosen, threads = passing[0], None  # unmeasured: the planned order (fp32 first: lossless by default)
    return _write(ctx, chosen, threads, prepared, inputs, outputs, built, skipped, tuned, feeds)


def _deployment_batch(feed: dict[str, np.ndarray], inputs: list) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    """What tuning times: one call at the model's batch size (one sample when the batch is dynamic)."""
    if not sample_inputs.has_dynamic_batch(inputs):
        return feed
    return {name: array[:1] for name, array in feed.items()}


def _generated_feeds(ctx: CompileContext, inputs: list) -> list[dict[str, np.ndarray]]:  # type: ignore[type-arg]
    batches = sample_inputs.DYNAMIC_BATCH_SIZES if sample_inputs.has_dynamic_batch(inputs) else (1,)
    return [sample_inputs.generate(inputs, b, ctx.options.seed + i) for i, b in enumerate(batches)]


def _cache_parts(ctx: CompileContext, planned: list[Candidate]) -> dict[str, Any]:
    o = ctx.options

    def file_hash(path: Path | None) -> str | None:
        if path is None:
            return None
        if path.is_dir():
            return sha256_hex(b"".join(sha256_hex(f.read_bytes()).encode() for f in sorted(path.glob("*.npy"))))
        return sha256_hex(path.read_bytes())

    return {"target": ctx.target.to_dict(), "candidates": [c.label for c in planned], "precision": o.precision,
            "backend": o.backend, "max_drop": o.max_accuracy_drop, "tolerance": o.tolerance,
            "calibration": file_hash(o.calibration), "calibration_method": o.calibration_method,
            "validation": ctx.validation_sha256, "seed": o.seed}


def _reference_outputs(ctx: CompileContext, feeds: list[dict[str, np.ndarray]], output_names: list[str]
                       ) -> list[list[np.ndarray]]:
    """The original model's outputs: onnxruntime with every optimization off."""
    import onnxruntime as ort

    so = session_options(ctx.options.check_threads, "none")
    try:
        session = ort.InferenceSession(to_bytes(ctx.original), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BackendError("onnxruntime cannot run the original model", value=first_line(exc)[:300],
                           fix="check that onnxruntime supports every operator and opset in the model") from None
    results = []
    for feed in feeds:
        try:
            results.append(session.run(output_names, feed))
        except Exception as exc:
            raise BackendError("onnxruntime cannot run the original model on the check inputs",
                               value=first_line(exc)[:300],
                               fix="pass --validation DATA.npz with valid inputs for this model") from None
    return results


def _run_artifact(artifact: Artifact, output_names: list[str], threads: int | None,
                  feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    session = open_session(artifact.candidate.backend, artifact.entrypoint, artifact.files, output_names, threads,
                           artifact.backend_options)
    return [list(session.run(feed)) for feed in feeds]


def _build_candidates(ctx: CompileContext, prepared: Any, planned: list[Candidate], skipped: list[lowering.Skipped],
                      feeds: list[dict[str, np.ndarray]], labels: np.ndarray | None, reference: list[list[np.ndarray]],
                      output_names: list[str], first_passing_only: bool) -> list[_Built]:
    """Build and gate the candidates in plan order. Without measuring there is nothing to choose by
    but that order, so ``first_passing_only`` stops at the first that passes."""
    built: list[_Built] = []
    failures: list[tuple[Candidate, EdgemillError]] = []
    real_data = ctx.options.validation is not None  # generated inputs are judged by output error only
    for candidate in planned:
        with ctx.step(_step_name(candidate), f"building {candidate.label}") as record:
            record["candidate"] = candidate.label
            try:
                artifact = lowering.builder(candidate.backend)(prepared, candidate, ctx)
                got = _run_artifact(artifact, output_names, ctx.options.check_threads, feeds)
            except EdgemillError as exc:
                record.update(status="failed", summary=f"{candidate.label}: failed: {first_line(exc)}")
                failures.append((candidate, exc))
                continue
            evaluation = gate.evaluate(candidate.precision, reference, got, output_names, labels,
                                       ctx.options.max_accuracy_drop, ctx.options.tolerance, task_metric=real_data)
            record.update(artifact.notes.pop("ort_optimize", {}))
            record.update(notes=artifact.notes, gate=evaluation.to_dict(), status="passed" if evaluation.passed
                          else "rejected")
            record["summary"] = (f"{candidate.label}: {evaluation.reason}" + ("" if evaluation.passed else " -> rejected"))
            built.append(_Built(artifact, evaluation, record))
        if first_passing_only and evaluation.passed:
            break
    if not built and failures:
        if len(failures) == 1 and not skipped:
            raise failures[0][1]  # the one way to build failed: its own message is the clearest
        reasons = [f"{c.label}: {first_line(e)}" for c, e in failures]
        reasons += [f"{s.candidate.label}: {s.reason}" for s in skipped]
        raise BackendError(f"no candidate could be built for --precision {ctx.options.precision} "
                           f"--backend {ctx.options.backend}", value="; ".join(reasons)[:700],
                           fix="follow one of those reasons (e.g. pass --calibration DATA.npz for static INT8), "
                               "or use --precision fp32")
    return built


def _no_candidate_error(ctx: CompileContext, built: list[_Built]) -> AccuracyCheckError:
    o = ctx.options
    closest = min(built, key=lambda b: b.evaluation.drop - b.evaluation.allowed)
    ev = closest.evaluation
    if all(b.artifact.candidate.precision == gate.LOSSLESS for b in built):
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


def _tune(ctx: CompileContext, passing: list[_Built], feed: dict[str, np.ndarray], output_names: list[str],
          key: str | None, cached: dict[str, Any] | None) -> dict[str, Any]:
    """Measure the passing candidates (and the original, for the speedup) and pick the fastest."""
    threads = tuning.thread_settings(ctx.target.cores)
    by_label = {b.artifact.candidate.label: b for b in passing}
    if cached and cached["chosen"]["candidate"] in by_label:
        with ctx.step("tune", "reusing cached measurements") as record:
            record.update(cached=True, measurements=cached["measurements"],
                          summary=f"cached: {cached['chosen']['candidate']} at {cached['chosen']['threads']} "
                                  f"thread(s), p50 {cached['chosen']['p50_ms']:.3f} ms")
        return {**cached, "chosen_built": by_label[cached["chosen"]["candidate"]], "threads": cached["chosen"]["threads"]}
    settings = len(passing) * len(threads) + 1
    per_setting = tuning.check_budget(ctx.options.tune_budget, settings)
    with ctx.step("tune", f"measuring {len(passing)} candidate(s) x {len(threads)} thread setting(s)") as record:
        original = Artifact(Candidate("onnxruntime", "fp32", "original"), "model/model.onnx",
                            {"model/model.onnx": to_bytes(ctx.original)}, {"load_optimization": "all"})
        base = tuning.measure(original, output_names, feed, threads[:1], per_setting, "original")[0]
        measurements: list[tuning.Measurement] = []
        for b in passing:
            label = b.artifact.candidate.label
            ctx.progress("tune", f"measuring {label}", None)
            measurements += tuning.measure(b.artifact, output_names, feed, threads, per_setting, label)
        best = min(measurements, key=lambda m: m.p50_ms)
        result = {
            "method": "each candidate in its own process, batch of the first check input, p50 over "
                      f"~{per_setting:.1f} s per setting",
            "original": base.to_dict(),
            "measurements": [m.to_dict() for m in measurements],
            "chosen": best.to_dict(),
        }
        record.update(measurements=result["measurements"], original_p50_ms=round(base.p50_ms, 4),
                      summary=f"{best.label} at {best.threads} thread(s): p50 {best.p50_ms:.3f} ms vs original "
                              f"{base.p50_ms:.3f} ms (x{base.p50_ms / best.p50_ms:.2f})")
    if key:
        tuning.save_cached(key, result)
    return {**result, "chosen_built": by_label[best.label], "threads": best.threads}


def _write(ctx: CompileContext, chosen: _Built, threads: int | None, prepared: Any, inputs: list, outputs: list,  # type: ignore[type-arg]
           built: list[_Built], skipped: list[lowering.Skipped], tuned: dict[str, Any] | None,
           feeds: list[dict[str, np.ndarray]]) -> CompileResult:
    options, target = ctx.options, ctx.target
    artifact, evaluation = chosen.artifact, chosen.evaluation
    candidate = artifact.candidate
    backend_options = dict(artifact.backend_options)
    if threads is not None and target.name == "host":
        backend_options["threads"] = threads  # measured on this very machine: the runtime's default
    accuracy_record = _accuracy_record(ctx, candidate.precision, evaluation, len(feeds))
    latency = None
    if tuned is not None:
        original_ms, chosen_ms = tuned["original"]["p50_ms"], tuned["chosen"]["p50_ms"]
        latency = {"method": tuned["method"], "original_p50_ms": original_ms, "compiled_p50_ms": chosen_ms,
                   "threads": tuned["chosen"]["threads"],
                   "speedup": round(original_ms / chosen_ms, 3) if chosen_ms > 0 else None}
    package_files = dict(artifact.files)
    partition = _partition(ctx, artifact, prepared)
    if partition is not None:
        package_files[PARTITION] = canonical_json(partition)
    files = {name: FileEntry(sha256_hex(data), len(data)) for name, data in sorted(package_files.items())}
    manifest = Manifest(
        name=options.package_name,
        version=options.version,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        target=target.summary(),
        backend=candidate.backend,
        backend_options=dict(sorted(backend_options.items())),
        precision=candidate.precision,
        entrypoint=artifact.entrypoint,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        source=ctx.source.to_dict(),
        files=files,
        accuracy={k: v for k, v in accuracy_record.items() if k not in ("outputs", "samples")},
        edgemill_version=__version__,
        lineage=(f"source:sha256:{ctx.source.sha256}",),
    )
    candidates = [{"candidate": b.artifact.candidate.label, "backend": b.artifact.candidate.backend,
                   "precision": b.artifact.candidate.precision, "status": b.record.get("status"), **b.evaluation.to_dict(),
                   "p50_ms": _best_p50(tuned, b.artifact.candidate.label)} for b in built]
    candidates += [{"candidate": s.candidate.label, "status": "skipped", "reason": s.reason} for s in skipped]
    report = {
        "package_id": manifest.package_id,
        "edgemill_version": __version__,
        "target": target.to_dict(),
        "backend": candidate.backend,
        "precision": candidate.precision,
        "chosen": {"candidate": candidate.label, "threads": threads,
                   "why": ("fastest measured candidate that passed the accuracy gate" if tuned else
                           "first candidate that passed the accuracy gate (not measured: "
                           + ("--no-measure" if not options.measure else f"target {target.name} cannot run here")
                           + ")")},
        "candidates": candidates,
        "source": ctx.source.to_dict(),
        "steps": ctx.steps,
        "accuracy": accuracy_record,
        "latency": latency,
        "tuning": {k: v for k, v in (tuned or {}).items() if k != "chosen_built"} or None,
        "partition": partition["summary"] if partition else None,
        "warnings": ctx.warnings,
    }
    out = options.output_path
    with ctx.step("package", f"writing {out}") as record:
        write_package({
            MANIFEST: manifest.to_bytes(),
            **package_files,
            REPORT: json.dumps(report, indent=2, sort_keys=True, default=str).encode(),
        }, out)
        record["summary"] = f"wrote {out} (id {manifest.package_id[:12]}, {candidate.label})"
    return CompileResult(path=out, package_id=manifest.package_id, manifest=manifest, report=report)


def _partition(ctx: CompileContext, artifact: Artifact, prepared: Any) -> dict[str, Any] | None:
    """For a target with an accelerator: which nodes of the packaged graph it runs (DESIGN.md)."""
    if not ctx.target.accelerators:
        return None
    import onnx

    graph = (onnx.load_from_string(artifact.files[artifact.entrypoint]) if artifact.entrypoint.endswith(".onnx")
             else prepared)
    with ctx.step("partition", f"partitioning for {', '.join(ctx.target.accelerators)}") as record:
        result = make_partition(graph, ctx.target)
        record["summary"] = result["summary"] if result else "no operator table for this accelerator"
    return result


def _best_p50(tuned: dict[str, Any] | None, label: str) -> float | None:
    if not tuned:
        return None
    times = [m["p50_ms"] for m in tuned["measurements"] if m["candidate"] == label]
    return min(times) if times else None


def _accuracy_record(ctx: CompileContext, precision: str, ev: gate.Evaluation, samples: int) -> dict[str, Any]:
    o = ctx.options
    common = {"reference": "onnxruntime on the original model, graph optimizations off",
              "inputs": (f"validation file sha256:{ctx.validation_sha256}" if ctx.validation_sha256
                         else f"generated, seed {o.seed}"),
              "samples": samples}
    if precision == gate.LOSSLESS:
        return {"metric": "max_relative_error", "value": float(f"{ev.max_relative_error:.3g}"), "allowed": o.tolerance,
                **common}
    return {"metric": ev.metric, "original": round(ev.original, 6), "value": round(ev.value, 6),
            "drop": float(f"{ev.drop:.4g}"), "allowed": ev.allowed,
            "max_relative_error": float(f"{ev.max_relative_error:.3g}"), **common}
