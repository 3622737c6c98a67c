"""Write the package: the chosen candidate's files, the manifest, the partition report for accelerator
targets, and report.json (every candidate with its verdict, the reference, the measurements)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..captures.dataset import lineage_entries
from ..package.canonical import canonical_json, sha256_hex
from ..package.layout import MANIFEST, PARTITION, REPORT
from ..package.manifest import FileEntry, Manifest
from ..package.writer import write_package
from . import gate, lowering
from .candidates import Built, Failed
from .context import CompileContext
from .lowering import Artifact, Candidate
from .partition import partition as make_partition
from .reference import Reference


@dataclass(frozen=True)
class CompileResult:
    path: Path
    package_id: str
    manifest: Manifest
    report: dict[str, Any]


def write(ctx: CompileContext, chosen: Built, threads: int | None, prepared: Any, built: list[Built],
          skipped: list[lowering.Skipped], failed: list[Failed], tuned: dict[str, Any] | None,
          feeds: list[dict[str, np.ndarray]], reference: Reference,
          extra_files: dict[str, bytes] | None = None, pipeline: dict[str, Any] | None = None,
          pipeline_record: dict[str, Any] | None = None) -> CompileResult:
    """Write the package of the chosen candidate, with its manifest and the compile report."""
    inputs, outputs = ctx.inputs, ctx.outputs
    options, target = ctx.options, ctx.target
    artifact, evaluation = chosen.artifact, chosen.evaluation
    candidate = artifact.candidate
    backend_options = dict(artifact.backend_options)
    if threads is not None and target.name == "host":
        backend_options["threads"] = threads  # measured on this very machine: the runtime's default
    accuracy_record = _accuracy_record(ctx, candidate, evaluation, len(feeds), reference, chosen.record)
    if "judged_on" in chosen.record:
        accuracy_record["judged_on"] = chosen.record["judged_on"]
    latency = None
    if tuned is not None:
        original_ms = tuned["original"]["p50_ms"] if tuned.get("original") else None
        chosen_ms = tuned["chosen"]["p50_ms"]
        latency = {"method": tuned["method"], "original_p50_ms": original_ms, "compiled_p50_ms": chosen_ms,
                   "threads": tuned["chosen"]["threads"],
                   "speedup": round(original_ms / chosen_ms, 3) if original_ms and chosen_ms > 0 else None}
    package_files = {**artifact.files, **(extra_files or {})}
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
        lineage=(f"source:sha256:{ctx.source.sha256}", *data_lineage(options)),
        pipeline=pipeline,
    )
    candidates = [{"candidate": b.artifact.candidate.label, "backend": b.artifact.candidate.backend,
                   "precision": b.artifact.candidate.precision, "status": b.record.get("status"), **b.evaluation.to_dict(),
                   **({"compile_error": b.record["compile_error"]} if "compile_error" in b.record else {}),
                   **({"judged_on": b.record["judged_on"]} if "judged_on" in b.record else {}),
                   **({"reason": f"measuring failed: {b.record['measure_error']}"} if "measure_error" in b.record else {}),
                   "p50_ms": _best_p50(tuned, b.artifact.candidate.label)} for b in built]
    candidates += [{"candidate": f.candidate.label, "status": "failed", "reason": f.reason} for f in failed
                   if not f.reason.startswith("measuring failed")]
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
        "gate": ctx.gate_runner.describe() if ctx.gate_runner is not None else None,
        "candidates": candidates,
        "source": ctx.source.to_dict(),
        "steps": ctx.steps,
        "accuracy": accuracy_record,
        "reference": {"name": reference.name, "kind": reference.kind, "compared_outputs": reference.names,
                      "conversion": reference.conversion,
                      "source_spread": ({"from": reference.spread_from, "outputs": reference.spread}
                                        if reference.spread else None)},
        "bindings": {o.name: o.value for o in options.inputs if o.value is not None},
        "latency": latency,
        "tuning": {k: v for k, v in (tuned or {}).items() if k != "chosen_built"} or None,
        "partition": partition["summary"] if partition else None,
        "pipeline": pipeline_record,
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
    if not ctx.target.accelerators or artifact.candidate.backend == "litert":
        return None  # no ONNX graph to partition (a .tflite run as it is): the runtime's own delegates decide
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


def _accuracy_record(ctx: CompileContext, candidate: Candidate, ev: gate.Evaluation, samples: int,
                     reference: Reference, record: dict[str, Any]) -> dict[str, Any]:
    o = ctx.options
    bound = [i.text() for i in o.inputs if i.value is not None]
    common: dict[str, Any] = {
        "reference": reference.name,
        "inputs": (f"validation file sha256:{ctx.validation_sha256}" if ctx.validation_sha256
                   else f"generated, seed {o.seed}") + (f"; bound: {', '.join(bound)}" if bound else ""),
        "samples": samples}
    if reference.conversion and "max_relative_error" in reference.conversion and candidate.reads == "onnx":
        common["conversion_error"] = reference.conversion["max_relative_error"]
    if "compile_error" in record:
        common["compile_error"] = record["compile_error"]["max_relative_error"]
    if candidate.lossless:
        if ev.allowed > o.tolerance:  # let through by the source runtime's own spread (reference.py)
            common["tolerance"] = o.tolerance
            common["allowed_because"] = f"{reference.spread_from} differs from the reference by {ev.allowed:.3g}"
        return {"metric": "max_relative_error", "value": float(f"{ev.max_relative_error:.3g}"), "allowed": ev.allowed,
                **common}
    return {"metric": ev.metric, "original": round(ev.original, 6), "value": round(ev.value, 6),
            "drop": float(f"{ev.drop:.4g}"), "allowed": ev.allowed,
            "max_relative_error": float(f"{ev.max_relative_error:.3g}"), **common}


def data_lineage(options: Any) -> list[str]:
    """Where the data the compile checked, calibrated and baselined on came from, when it is an export
    of captures (``edgemill captures export``): ``validation:captures:MODEL@VERSION:SAMPLES``..."""
    return [entry for role in ("validation", "calibration", "baseline")
            for entry in lineage_entries(role, getattr(options, role, None))]
