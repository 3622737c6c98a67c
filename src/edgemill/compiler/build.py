"""The compile driver: frontend -> checks -> passes -> accuracy check -> measurement -> package."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from .. import __version__
from ..errors import AccuracyCheckError, BackendError, OptionError
from ..package.layout import MANIFEST, MODEL_DIR, REPORT
from ..package.manifest import FileEntry, Manifest
from ..package.canonical import sha256_hex
from ..package.writer import write_package
from ..runtime.backends import LoadSettings, get_loader, names as backend_names
from ..runtime.backends.onnxruntime import session_options
from ..targets import Target, get_target, runnable_here
from . import accuracy, sample_inputs
from .checks import check_model
from .context import CompileContext, Progress, silent
from .frontends import FrontendRequest, choose
from .graph import input_specs, output_specs, to_bytes
from .options import CompileOptions
from .passes import all_passes

ENTRYPOINT = f"{MODEL_DIR}/model.onnx"


@dataclass(frozen=True)
class CompileResult:
    path: Path
    package_id: str
    manifest: Manifest
    report: dict[str, Any]


def choose_backend(requested: str, target: Target) -> str:
    available = [b for b in target.backends if b in backend_names()]
    if requested == "auto":
        return available[0]
    if requested not in target.backends:
        raise OptionError(f"backend not allowed for target {target.name!r}", value=requested,
                          expected="one of " + ", ".join(target.backends), fix="pick one of those, or --backend auto")
    if requested not in available:
        raise OptionError("backend not available in this edgemill version", value=requested,
                          expected="one of " + ", ".join(available), fix="use --backend auto")
    return requested


def compile_model(options: CompileOptions, progress: Progress = silent) -> CompileResult:
    options.validate()
    target = get_target(options.target)
    backend = choose_backend(options.backend, target)
    frontend = choose(options.model, options.framework)

    progress("load", f"loading {options.model.name} ({frontend.name})", None)
    start = time.perf_counter()
    model, source = frontend.load(options.model, FrontendRequest(options.inputs, options.trust_pickle))
    load_warnings: list[str] = []
    model = check_model(model, f"model {options.model.name}", load_warnings)
    progress("load", f"loaded {options.model.name}: {len(model.graph.node)} nodes, checker and shape inference pass",
             time.perf_counter() - start)
    ctx = CompileContext(options=options, target=target, backend=backend, source=source, original=model,
                         progress=progress, warnings=load_warnings)
    ctx.steps.append({"step": "load", "frontend": frontend.name, "nodes": len(model.graph.node),
                      "summary": f"{frontend.name} model, {len(model.graph.node)} nodes, checked",
                      "seconds": round(time.perf_counter() - start, 4)})

    for p in all_passes():
        if p.applies(ctx):
            with ctx.step(p.name, p.description) as record:
                model = p.run(model, ctx, record)

    compiled = to_bytes(model)
    inputs, outputs = input_specs(model), output_specs(model)
    with ctx.step("accuracy", "checking the compiled model against the original") as record:
        accuracy_record = _check_accuracy(ctx, compiled, inputs, [o.name for o in outputs])
        record["summary"] = (f"max relative error {accuracy_record['value']:.2e} "
                             f"(tolerance {options.tolerance:.0e}) on {accuracy_record['samples']} sample(s)")
    latency: dict[str, Any] | None = None
    if options.measure and runnable_here(target):
        with ctx.step("measure", "measuring latency: original vs compiled") as record:
            latency = _measure(ctx, compiled, inputs, [o.name for o in outputs])
            record["summary"] = (f"p50 {latency['compiled_p50_ms']:.3f} ms compiled vs "
                                 f"{latency['original_p50_ms']:.3f} ms original (x{latency['speedup']:.2f})")

    manifest = Manifest(
        name=options.package_name,
        version=options.version,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        target=target.summary(),
        backend=backend,
        backend_options=dict(sorted(ctx.backend_options.items())),
        precision="fp32",
        entrypoint=ENTRYPOINT,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        source=source.to_dict(),
        files={ENTRYPOINT: FileEntry(sha256_hex(compiled), len(compiled))},
        accuracy={k: v for k, v in accuracy_record.items() if k not in ("outputs", "samples")},
        edgemill_version=__version__,
        lineage=(f"source:sha256:{source.sha256}",),
    )
    report = {
        "package_id": manifest.package_id,
        "edgemill_version": __version__,
        "target": target.to_dict(),
        "backend": backend,
        "precision": "fp32",
        "source": source.to_dict(),
        "steps": ctx.steps,
        "accuracy": accuracy_record,
        "latency": latency,
        "warnings": ctx.warnings,
    }
    out = options.output_path
    with ctx.step("package", f"writing {out}") as record:
        write_package({
            MANIFEST: manifest.to_bytes(),
            ENTRYPOINT: compiled,
            REPORT: json.dumps(report, indent=2, sort_keys=True, default=str).encode(),
        }, out)
        record["summary"] = f"wrote {out} (id {manifest.package_id[:12]})"
    return CompileResult(path=out, package_id=manifest.package_id, manifest=manifest, report=report)


def _reference_session(ctx: CompileContext, threads: int | None, optimized: bool):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = session_options(threads, "all" if optimized else "none")
    try:
        return ort.InferenceSession(to_bytes(ctx.original), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BackendError("onnxruntime cannot run the original model", value=str(exc).strip().splitlines()[0][:300],
                           fix="check that onnxruntime supports every operator and opset in the model") from None


def _feeds(ctx: CompileContext, inputs: list) -> list[dict[str, np.ndarray]]:  # type: ignore[type-arg]
    if ctx.options.validation is not None:
        return [sample_inputs.from_file(ctx.options.validation, inputs)]
    batches = sample_inputs.DYNAMIC_BATCH_SIZES if sample_inputs.has_dynamic_batch(inputs) else (1,)
    return [sample_inputs.generate(inputs, b, ctx.options.seed + i) for i, b in enumerate(batches)]


def _check_accuracy(ctx: CompileContext, compiled: bytes, inputs: list, output_names: list[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    threads = ctx.options.check_threads
    reference = _reference_session(ctx, threads, optimized=False)
    session = get_loader(ctx.backend)(compiled, output_names, LoadSettings(threads, ctx.backend_options))
    comparisons: list[accuracy.OutputComparison] = []
    feeds = _feeds(ctx, inputs)
    for feed in feeds:
        try:
            want = reference.run(output_names, feed)
        except Exception as exc:
            raise BackendError("onnxruntime cannot run the original model on the check inputs",
                               value=str(exc).strip().splitlines()[0][:300],
                               fix="pass --validation DATA.npz with valid inputs for this model") from None
        comparisons += accuracy.compare_all(output_names, session.run(feed), want)
    value = accuracy.worst(comparisons)
    failed = accuracy.failures(comparisons, ctx.options.tolerance)
    if failed:
        bad = max(failed, key=lambda c: c.max_relative_error)
        raise AccuracyCheckError(
            f"the compiled model's output {bad.name!r} differs from the original's",
            value=float(f"{bad.max_relative_error:.3e}"),
            expected=f"max relative error <= {bad.allowed(ctx.options.tolerance):.0e}",
            fix="raise --tolerance if this difference is acceptable, or compile with --backend reference "
                "and report the model to us; no package was written",
        )
    return {
        "metric": "max_relative_error",
        "reference": "onnxruntime on the original model, graph optimizations off",
        "value": float(f"{value:.3g}"),
        "allowed": ctx.options.tolerance,
        "inputs": (f"validation file sha256:{sha256_hex(ctx.options.validation.read_bytes())}"
                   if ctx.options.validation else f"generated, seed {ctx.options.seed}"),
        "samples": len(feeds),
        "outputs": [c.to_dict() for c in comparisons],
    }


def _median_ms(run, budget_s: float, max_runs: int = 500) -> float:  # type: ignore[no-untyped-def]
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < max_runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def _measure(ctx: CompileContext, compiled: bytes, inputs: list, output_names: list[str],  # type: ignore[type-arg]
             rounds: int = 3, budget_s: float = 0.15) -> dict[str, Any]:
    """Indicative latency of the original (onnxruntime defaults) and the compiled model, in this
    process, interleaved over a few rounds so that drift and thread-pool warm-up hit both alike.
    `edgemill bench` (one process per runtime) is the measurement to quote."""
    feed = _feeds(ctx, inputs)[0]
    original = _reference_session(ctx, None, optimized=True)
    session = get_loader(ctx.backend)(compiled, output_names, LoadSettings(None, ctx.backend_options))
    runs = {"original": lambda: original.run(output_names, feed), "compiled": lambda: session.run(feed)}
    for run in runs.values():
        for _ in range(10):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(_median_ms(run, budget_s))
    original_ms, compiled_ms = (float(np.median(samples[n])) for n in ("original", "compiled"))
    return {
        "method": f"in-process, interleaved, median of {rounds} rounds; indicative only: quote `edgemill bench`",
        "original_p50_ms": round(original_ms, 4),
        "compiled_p50_ms": round(compiled_ms, 4),
        "speedup": round(original_ms / compiled_ms, 3) if compiled_ms > 0 else None,
    }
