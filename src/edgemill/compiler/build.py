"""The compile driver: frontend -> checks -> graph passes -> reference outputs (the source framework's
own, where it runs here) -> candidates (backend x precision) -> accuracy gate -> measured tuning ->
package."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgemillError, ModelFormatError, OptionError, first_line
from ..package.canonical import sha256_hex
from ..pipeline.stages import PipelineRunner
from ..runtime.backends import missing_library
from ..targets import get_target, runnable_here
from ..tensors import InputOverride, Scalar, TensorSpec
from . import calibration as data_files
from . import candidates, lowering, pipeline_build, pipeline_fuse, sample_inputs, tuning
from . import baseline as drift_baseline
from . import reference as reference_outputs
from .candidates import Built, Failed
from .checks import check_model
from .context import CompileContext, Progress, SourceInfo, silent
from .frontends import FrontendRequest, choose
from .graph import drop_initializer_inputs, input_specs, output_specs, to_bytes
from .lowering import Artifact, Candidate, transformer_fusion
from .names import resolve
from .options import CompileOptions
from .packaging import CompileResult, write
from .passes import all_passes
from .passes.bind_inputs import bound_array
from .source import NativeModel

__all__ = ["CompileResult", "compile_model"]


def compile_model(options: CompileOptions, progress: Progress = silent) -> CompileResult:
    options.validate()
    target = get_target(options.target)
    frontend = choose(options.model, options.framework)

    progress("load", f"loading {options.model.name} ({frontend.name})", None)
    start = time.perf_counter()
    model, source = frontend.load(options.model, FrontendRequest.from_overrides(options.inputs, options.trust_pickle))
    warnings: list[str] = []
    if model is not None:
        if drop_initializer_inputs(model):
            warnings.append("weights listed as graph inputs (IR version 3) are initializers only in the package")
        model = check_model(model, f"model {options.model.name}", warnings)
        summary = f"{frontend.name} model, {len(model.graph.node)} nodes, checked"
        said = f"{len(model.graph.node)} nodes, checker and shape inference pass"
    else:
        _require_native(source)
        warnings.append(f"not converted to ONNX ({first_line(source.conversion_error or ValueError('unknown'))}); "
                        "only backends that run the source file as it is are candidates")
        summary = said = f"kept as {source.native.format if source.native else '?'} (no ONNX conversion)"
    progress("load", f"loaded {options.model.name}: {said}", time.perf_counter() - start)
    ctx = CompileContext(options=options, target=target, source=source, original=model, progress=progress,
                         warnings=warnings)
    ctx.steps.append({"step": "load", "frontend": frontend.name, "nodes": len(model.graph.node) if model else None,
                      "summary": summary, "seconds": round(time.perf_counter() - start, 4)})

    prepared = model
    if prepared is not None:
        for p in all_passes():
            if p.applies(ctx):
                with ctx.step(p.name, p.description) as record:
                    prepared = p.run(prepared, ctx, record)
        ctx.inputs, ctx.outputs = input_specs(prepared), output_specs(prepared)
    else:
        assert source.native is not None
        ctx.inputs, ctx.outputs = native_io(source.native, options.inputs, source.details.get("names"))
    output_names = [o.name for o in ctx.outputs]
    bound = check_bindings(options.inputs, ctx.inputs, source)
    ctx.inputs = [replace(s, value=bound[s.name]) if s.name in bound else s for s in ctx.inputs]
    pipe = _prepare_pipeline(ctx)

    # The data every candidate is judged and calibrated on, checked before any candidate is built.
    if options.validation is not None:
        feeds, labels = data_files.load_validation(options.validation, ctx.inputs, bound)
        ctx.validation_sha256 = sha256_hex(options.validation.read_bytes())
        frames = _pipeline_frames(ctx, pipe, bound) if pipe is not None else []
    elif pipe is not None:  # judged on frames pre-processed as the package will: the inputs it will get
        frames = _pipeline_frames(ctx, pipe, bound)
        feeds, labels = [pipe.to_model_feed(f) for f in frames], None
    else:
        feeds, labels = _generated_feeds(ctx, bound), None
    if options.calibration is not None:
        ctx.calibration = data_files.load_calibration(options.calibration, ctx.inputs, bound)
    baseline_feeds = drift_baseline.load(ctx, bound)

    native = (source.native.format, source.native.precision) if source.native is not None else None
    planned, skipped = lowering.plan(target, options.backend, options.precision,
                                     has_calibration=ctx.calibration is not None,
                                     has_real_data=options.validation is not None, max_drop=options.max_accuracy_drop,
                                     runs_here=runnable_here(target), tune_budget=options.tune_budget,
                                     has_graph=prepared is not None, native=native,
                                     transformer=prepared is not None and transformer_fusion.looks_like_transformer(prepared))
    measuring = options.measure and runnable_here(target)
    if measuring:  # refuse a budget that cannot time every candidate before any work, cached or not
        tuning.check_budget(options.tune_budget, len(planned) * len(tuning.thread_settings(target.cores)) + 1)
    model_bytes = to_bytes(prepared) if prepared is not None else source.native.data  # type: ignore[union-attr]
    key = tuning.cache_key(model_bytes, _cache_parts(ctx, planned)) if measuring else None
    cached = tuning.load_cached(key) if key else None
    all_planned = planned
    if cached and any(c.label == cached["chosen"]["candidate"] for c in planned):
        planned = [c for c in planned if c.label == cached["chosen"]["candidate"]]  # build only the known winner

    with ctx.step("reference", "running the source model on the check inputs") as record:
        reference = reference_outputs.compute(ctx, feeds, output_names)
        conversion = reference.conversion or {}
        record.update(reference=reference.name, compared_outputs=reference.names, conversion=reference.conversion,
                      summary=f"reference: {reference.name}" + (
                          f"; converted graph within {conversion['max_relative_error']:.1e} of it"
                          if "max_relative_error" in conversion else "") + (
                          f"; {reference.spread_from} is {max(reference.spread.values()):.1e} from it"
                          if reference.spread else ""))
        if reference.spread:
            record["source_spread"] = {"from": reference.spread_from,
                                       "outputs": {k: float(f"{v:.3g}") for k, v in reference.spread.items()}}
    ctx.warnings.extend(reference.notes)
    ctx.gate_runner = _gate_runner(ctx)
    try:
        built, failed, stale = _build_and_gate(ctx, prepared, planned, all_planned, cached, feeds, labels, reference,
                                               output_names, measuring)
    finally:
        ctx.gate_runner.close()
    if stale:
        cached = None
    if not built:
        raise candidates.nothing_built_error(ctx, failed, skipped)
    passing = [b for b in built if b.evaluation.passed]
    if not passing:
        raise candidates.no_passing_error(ctx, built, reference)

    tuned = None
    if measuring:
        tuned = _tune(ctx, passing, _tuning_feed(ctx, feeds), output_names, key, cached, failed)
    if tuned is not None:
        chosen, threads = tuned["chosen_built"], tuned["threads"]
    else:
        chosen, threads = passing[0], None  # unmeasured: the planned order (fp32 first: lossless by default)
    pipeline_record = None
    if pipe is not None:
        with ctx.step("pipeline_check", "running the pre/post-processing graphs around the chosen candidate") as record:
            session = candidates.open_artifact(chosen.artifact, output_names, options.check_threads)
            run_model = _named(session, output_names)
            pipeline_record = pipeline_build.check(pipe, run_model, frames, options.tolerance)
            record.update(pipeline_record, summary=f"pipeline matches NumPy pre/post-processing on "
                          f"{pipeline_record['frames']} frame(s)")
            ctx.inputs, ctx.outputs = pipe.inputs, pipe.outputs  # the package's, from here on
            runner = pipe.runner(run_model)
            names = [o.name for o in pipe.outputs]
            package_session = _Listed(runner.run, names)
        chosen, pipe = _fuse_pipeline(ctx, pipe, chosen, prepared, frames, runner)
        pipeline_record["fused"] = pipe.layout.fused
    with ctx.step("baseline", "counting the drift baseline") as record:
        if pipe is None:
            baseline_files, summary = drift_baseline.build_or_explain(ctx, chosen.artifact, feeds, output_names,
                                                                      baseline_feeds, bound)
        else:  # counted on generated package inputs (frames) through the stages: what the device will see
            synthetic = replace(ctx, options=replace(options, validation=None, calibration=None, baseline=None))
            baseline_files, summary = drift_baseline.build_or_explain(synthetic, chosen.artifact, [], names, None,
                                                                      bound, package_session)
        record.update(summary)
    extra = {**baseline_files, **(pipe.files if pipe is not None else {})}
    return write(ctx, chosen, threads, prepared, built, skipped, failed, tuned, feeds, reference, extra,
                 pipeline=pipe.layout.to_dict() if pipe is not None else None, pipeline_record=pipeline_record)


def _gate_runner(ctx: CompileContext) -> Any:
    """Where the gate runs candidates (emulation/gate.py); a step of its own when that is not simply here."""
    from ..emulation.gate import runner_for

    if runnable_here(ctx.target):
        return runner_for(ctx.target, candidates.run_artifact)
    with ctx.step("gate_device", "choosing where the accuracy gate runs the candidates") as record:
        runner = runner_for(ctx.target, candidates.run_artifact)
        described = runner.describe()
        record.update(described, summary=f"the accuracy gate runs candidates on {described['ran_on']}"
                      + (f" ({described['machine']})" if described["ran_on"] == "host" else ""))
        if "note" in described and described["ran_on"] == "host":
            ctx.warnings.append(described["note"])
    return runner


def _build_and_gate(ctx: CompileContext, prepared: Any, planned: list[Any], all_planned: list[Any],
                    cached: dict[str, Any] | None, feeds: list[dict[str, np.ndarray]], labels: np.ndarray | None,
                    reference: Any, output_names: list[str], measuring: bool
                    ) -> tuple[list[candidates.Built], list[candidates.Failed], bool]:
    """Build and gate the planned candidates: only the cached winner when there is one, and the rest too
    when it went stale (the third value: True then)."""
    built, failed = candidates.build_all(ctx, prepared, planned, feeds, labels, reference, output_names,
                                         first_passing_only=not measuring)
    stale = _stale_cache(cached, built) if planned is not all_planned else None
    if stale:
        # The cached winner no longer passes, or is no longer the same model (a time-bounded search, a
        # library changed under it): forget it, build the others and measure again.
        ctx.warnings.append(f"the cached choice {planned[0].label} {stale}: tuned again")
        more, more_failed = candidates.build_all(ctx, prepared, [c for c in all_planned if c not in planned], feeds,
                                                 labels, reference, output_names, first_passing_only=not measuring)
        built, failed = built + more, failed + more_failed
    return built, failed, bool(stale)


class _Listed:
    """A named-outputs call seen as a session (outputs as a list, in ``names`` order)."""

    def __init__(self, run: Any, names: list[str]) -> None:
        self._run, self._names = run, names

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self._run(feed)
        return [out[n] for n in self._names]


def _named(session: Any, names: list[str]) -> Any:
    def run(feed: Any) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(feed)))
    return run


def _fuse_pipeline(ctx: CompileContext, pipe: pipeline_build.Pipeline, chosen: Built, prepared: Any,
                   frames: list[dict[str, np.ndarray]], separate: PipelineRunner
                   ) -> tuple[Built, pipeline_build.Pipeline]:
    """The chosen candidate with the stage graphs merged into its model (onnxruntime, OpenVINO fp32/bf16),
    when the merged model gives what the separate stages give on the check frames; otherwise both as they
    were (the step's record says why)."""
    artifact = chosen.artifact
    if not ctx.options.fuse_pipeline or artifact.candidate.backend not in pipeline_fuse.FUSED_BACKENDS:
        return chosen, pipe
    with ctx.step("pipeline_fuse", "merging the pre/post-processing graphs into the model") as record:
        layout = replace(pipe.layout, fused=True)
        made = layout.fused_outputs()
        try:  # merging is an optimization: whatever goes wrong, the separate stages are already checked
            merged, note = pipeline_fuse.merged_artifact(artifact, prepared, pipe.layout, pipe.files, ctx)
            if merged is not None:
                session = candidates.open_artifact(merged, made, ctx.options.check_threads)
                fused = PipelineRunner(layout, {}, _named(session, made), 1, [o.name for o in pipe.outputs])
                for frame in frames:
                    differs = pipeline_fuse.difference(fused.run(frame), separate.run(frame), ctx.options.tolerance)
                    if differs is not None:
                        merged, note = None, f"the merged model's {differs}"
                        break
        except Exception as exc:  # noqa: BLE001 - onnx/OpenVINO raise their own types
            merged, note = None, f"the merged model does not run: {first_line(exc)[:200]}"
        record.update(fused=merged is not None, summary=note if merged is not None else f"stages kept apart: {note}")
    if merged is None:
        return chosen, pipe
    return replace(chosen, artifact=merged), replace(pipe, layout=layout, files={})


def _prepare_pipeline(ctx: CompileContext) -> pipeline_build.Pipeline | None:
    spec = ctx.options.pipeline
    if spec is None or spec.empty:
        return None
    if ctx.options.baseline is not None:
        raise OptionError("--baseline is not supported with --preprocess/--postprocess yet", value=str(ctx.options.baseline),
                          fix="leave out --baseline: the package's drift baseline is then counted on generated frames")
    with ctx.step("pipeline", "building the pre/post-processing graphs") as record:
        pipe = pipeline_build.prepare(spec, ctx.inputs, ctx.outputs, ctx.source.details)
        steps = [f"{p.input}: {p.spec['frame'][0]}x{p.spec['frame'][1]} {p.spec['dtype']} {p.spec['layout']} -> "
                 f"{p.model_input}" for p in pipe.layout.preprocess]
        if pipe.layout.postprocess is not None:
            steps.append("post: " + ", ".join(o.name for o in pipe.outputs))
        record["summary"] = "; ".join(steps)
    return pipe


def _pipeline_frames(ctx: CompileContext, pipe: pipeline_build.Pipeline, bound: dict[str, Scalar]
                     ) -> list[dict[str, np.ndarray]]:
    """Seeded package inputs (frames for pre-processed inputs, generated values for the others)."""
    model_inputs = list(pipe.layout.model_inputs)
    batches = sample_inputs.DYNAMIC_BATCH_SIZES if sample_inputs.has_dynamic_batch(model_inputs) else (1,)
    out = []
    for i, b in enumerate(batches):
        others = sample_inputs.generate([s for s in model_inputs if s.name not in {p.image.name for p in pipe.pre}],
                                        b, ctx.options.seed + i, bound)
        out.append(pipe.frames(b, ctx.options.seed + i, others))
    return out


def _require_native(source: SourceInfo) -> None:
    """A model only a native backend can run: go on if one is installed, else say what failed and how."""
    error = source.conversion_error or ModelFormatError("the model could not be converted to ONNX",
                                                        value=source.file, fix="report the model to us")
    if source.native is None:
        raise error
    if source.native.format == "tflite" and missing_library("litert"):
        raise type(error)(error.problem, value=error.value, expected=error.expected,
                          fix=f"pip install 'edgemill[litert]' so LiteRT runs the .tflite as it is; or {error.fix}")


def native_io(native: NativeModel, overrides: tuple[InputOverride, ...], aliases: dict[str, str] | None = None
              ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A native model's inputs, with the shapes ``--input`` fixes, and its outputs."""
    specs = {s.name: s for s in native.inputs}
    for o in overrides:
        if o.shape is None:
            continue
        resolved = resolve(o.name, specs, aliases)
        spec = specs.get(resolved) if resolved else None
        if spec is None:
            raise OptionError("--input names an input the model does not have", value=o.name,
                              expected="one of " + ", ".join(repr(n) for n in specs),
                              fix="use one of the model's input names")
        if len(o.shape) != len(spec.shape):
            raise OptionError(f"--input gives input {spec.name!r} a different rank", value=list(o.shape),
                              expected=f"{len(spec.shape)} dimensions {spec.shape_text()}",
                              fix="give one size per dimension")
        for axis, (new, old) in enumerate(zip(o.shape, spec.shape)):
            if isinstance(old, int) and old >= 0 and isinstance(new, int) and new >= 0 and new != old:
                raise OptionError(f"--input changes a fixed dimension of {spec.name!r}", value=new,
                                  expected=f"{old} at axis {axis} (the model fixes it)", fix=f"keep axis {axis} at {old}")
        shape = tuple(new if new != -1 else old for new, old in zip(o.shape, spec.shape))
        specs[spec.name] = TensorSpec(spec.name, spec.dtype, shape)
    return list(specs.values()), list(native.outputs)


def check_bindings(overrides: tuple[InputOverride, ...], inputs: list[TensorSpec], source: SourceInfo
                   ) -> dict[str, Scalar]:
    """The values bound with ``--input NAME=VALUE``, by package input name. A binding must name an input,
    or an argument the frontend froze into the graph (a PyTorch ``int`` argument, say)."""
    names = {s.name for s in inputs}
    frozen = set(source.details.get("bound_arguments", {}))
    bound: dict[str, Scalar] = {}
    for o in overrides:
        if o.value is None:
            continue
        name = resolve(o.name, names, source.details.get("names"))
        if name is not None:
            bound_array(name, next(s for s in inputs if s.name == name), o.value)  # one element, a fitting type
            bound[name] = o.value
        elif o.name not in frozen:
            raise OptionError("--input binds a value to an input the model does not have", value=o.name,
                              expected="one of " + ", ".join(repr(n) for n in sorted(names)),
                              fix="use the input's name as `edgemill inspect` or Netron shows it")
    return bound


def _generated_feeds(ctx: CompileContext, bound: dict[str, Scalar]) -> list[dict[str, np.ndarray]]:
    inputs = ctx.inputs
    batches = sample_inputs.DYNAMIC_BATCH_SIZES if sample_inputs.has_dynamic_batch(inputs) else (1,)
    return [sample_inputs.generate(inputs, b, ctx.options.seed + i, bound) for i, b in enumerate(batches)]


def _tuning_feed(ctx: CompileContext, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """What tuning times: a feed the accuracy check ran, never a reshaped one. Generated feeds start with a
    batch of one. A validation file's many samples are cut to the first only where every input takes the
    batch on axis 0 and the reference accepts the cut feed (a recurrent state or a 0-d rate stays whole)."""
    feed = feeds[0]
    if ctx.options.validation is None or not sample_inputs.has_dynamic_batch(ctx.inputs):
        return feed
    counts = {a.shape[0] if a.ndim else None for a in feed.values()}
    leading_dynamic = all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] >= 0) for s in ctx.inputs)
    if len(counts) != 1 or None in counts or counts == {1} or not leading_dynamic:
        return feed
    cut = {name: array[:1] for name, array in feed.items()}
    try:
        reference_outputs.compute(ctx, [cut], [o.name for o in ctx.outputs])
    except EdgemillError:
        return feed
    return cut


def _runoff(ctx: CompileContext, by_label: dict[str, Built], measurements: list[tuning.Measurement],
            feed: dict[str, np.ndarray], output_names: list[str], settings: int, per_setting: float
            ) -> tuple[list[tuning.Measurement], dict[str, Any] | None]:
    """The measurements to choose on: the first pass as it is unless other settings are within a few
    percent of the fastest; those are measured again, alternating, with the rest of the budget, and
    their figures become the median of their runs."""
    close = tuning.contenders(measurements)
    if not close:
        return measurements, None
    left = ctx.options.tune_budget - settings * (per_setting + tuning.WORKER_START_S / 2)
    seconds = left / (len(close) * tuning.RUNOFF_ROUNDS) - tuning.WORKER_START_S / 2
    if seconds < tuning.MIN_SECONDS_PER_SETTING:
        return measurements, None
    ctx.progress("tune", f"runoff between {len(close)} settings within {tuning.RUNOFF_MARGIN:.0%} of the fastest", None)
    again: dict[tuple[str, int], list[float]] = {}
    for _ in range(tuning.RUNOFF_ROUNDS):
        for m in close:
            try:
                got = tuning.measure(by_label[m.label].artifact, output_names, feed, [m.threads], seconds, m.label)
            except EdgemillError:
                continue  # it measured once already: keep its first figure
            again.setdefault((m.label, m.threads), []).append(got[0].p50_ms)
    runoff = {"settings": [f"{m.label} @ {m.threads}" for m in close], "rounds": tuning.RUNOFF_ROUNDS,
              "first_pass_ms": {f"{m.label} @ {m.threads}": round(m.p50_ms, 4) for m in close},
              "runoff_ms": {f"{label} @ {threads}": [round(v, 4) for v in values]
                            for (label, threads), values in again.items()}}
    return tuning.after_runoff(measurements, again), runoff


def _stale_cache(cached: dict[str, Any] | None, built: list[Built]) -> str | None:
    """Why the cached measurements do not describe the winner just built again, or None when they do."""
    winner = next((b for b in built if b.evaluation.passed), None)
    if winner is None:
        return "no longer passes the gate"
    if cached is None or cached.get("artifact") != tuning.artifact_digest(winner.artifact):
        return "built to a different model than the one measured"
    return None


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
            "mixed_precision": o.mixed_precision,
            "validation": ctx.validation_sha256, "seed": o.seed, "inputs": [i.text() for i in o.inputs],
            "reference": ctx.source.runtime.name if ctx.source.runtime else None}


def _tune(ctx: CompileContext, passing: list[Built], feed: dict[str, np.ndarray], output_names: list[str],
          key: str | None, cached: dict[str, Any] | None, failed: list[Failed]) -> dict[str, Any] | None:
    """Measure the passing candidates (and the original, for the speedup) and pick the fastest. A candidate
    whose measuring fails is dropped with its reason; when none can be measured the compile keeps the
    first that passed the gate, unmeasured, and says so."""
    threads = tuning.thread_settings(ctx.target.cores)
    by_label = {b.artifact.candidate.label: b for b in passing}
    if cached and cached["chosen"]["candidate"] in by_label:
        with ctx.step("tune", "reusing cached measurements") as record:
            record.update(cached=True, measurements=cached["measurements"],
                          summary=f"cached: {cached['chosen']['candidate']} at {cached['chosen']['threads']} "
                                  f"thread(s), p50 {cached['chosen']['p50_ms']:.3f} ms")
        return {**cached, "chosen_built": by_label[cached["chosen"]["candidate"]], "threads": cached["chosen"]["threads"]}
    settings = len(passing) * len(threads) + 1
    # check_budget refuses a budget too small for even one pass; the first pass gets its share of it
    per_setting = max(tuning.MIN_SECONDS_PER_SETTING,
                      tuning.check_budget(ctx.options.tune_budget, settings) * tuning.FIRST_PASS_SHARE)
    with ctx.step("tune", f"measuring {len(passing)} candidate(s) x {len(threads)} thread setting(s)") as record:
        base: tuning.Measurement | None = None
        if ctx.original is not None:
            original = Artifact(Candidate("onnxruntime", "fp32", "original"), "model/model.onnx",
                                {"model/model.onnx": to_bytes(ctx.original)}, {"load_optimization": "all"})
            try:
                base = tuning.measure(original, output_names, feed, threads[:1], per_setting, "original")[0]
            except EdgemillError as exc:
                record["original_error"] = first_line(exc)
        measurements: list[tuning.Measurement] = []
        dropped: list[str] = []
        for b in passing:
            label = b.artifact.candidate.label
            ctx.progress("tune", f"measuring {label}", None)
            try:
                measurements += tuning.measure(b.artifact, output_names, feed, threads, per_setting, label)
            except EdgemillError as exc:
                b.record.update(status="failed", measure_error=first_line(exc))
                failed.append(Failed(b.artifact.candidate, f"measuring failed: {first_line(exc)}"))
                dropped.append(f"{label}: {first_line(exc)}")
        if dropped:
            ctx.warnings.append("dropped when measuring: " + "; ".join(dropped))
        if not measurements:
            record["summary"] = "no candidate could be measured; keeping the first that passed the gate"
            return None
        measurements, runoff = _runoff(ctx, by_label, measurements, feed, output_names, settings, per_setting)
        best = min(measurements, key=lambda m: m.p50_ms)
        result = {
            "method": "each candidate in its own process, on a feed of the accuracy check, p50 over "
                      f"~{per_setting:.1f} s per setting; settings within {tuning.RUNOFF_MARGIN:.0%} of the "
                      "fastest measured again, alternating, and judged on their median",
            "original": base.to_dict() if base else None,
            "measurements": [m.to_dict() for m in measurements],
            "chosen": best.to_dict(),
            "artifact": tuning.artifact_digest(by_label[best.label].artifact),  # what was measured
        }
        if runoff:
            result["runoff"] = runoff
        versus = f" vs original {base.p50_ms:.3f} ms (x{base.p50_ms / best.p50_ms:.2f})" if base else ""
        record.update(measurements=result["measurements"], original_p50_ms=round(base.p50_ms, 4) if base else None,
                      summary=f"{best.label} at {best.threads} thread(s): p50 {best.p50_ms:.3f} ms{versus}")
    if key:
        tuning.save_cached(key, result)
    return {**result, "chosen_built": by_label[best.label], "threads": best.threads}
