"""What every candidate is judged against.

"No loss in accuracy" is a statement about the outputs of the framework that made the model. So where
the frontend provides the source framework's own runtime (:class:`~.source.SourceRuntime`: the TFLite
interpreter, Keras, PyTorch, XGBoost, ...) and it runs here, the check inputs go through it and the
gate compares candidates with those outputs. The converted ONNX graph is run too (onnxruntime, graph
optimizations off), so the report can say how far the conversion itself moved the answer and how far
the compile did. Without a source runtime (an ONNX source, or a framework this machine lacks) the
converted graph is the reference.

For an ONNX source that reference (onnxruntime, graph optimizations off) is stricter than what its users
run: onnxruntime's default session fuses and re-lays-out the graph, which moves a deep network's output
by float reordering alone (2.4e-4 on PP-OCRv4's detector). That distance, measured per output on the
check inputs, is the source runtime's own *spread*: a lossless candidate within it is as close to the
model as onnxruntime itself is by default, and the gate accepts it (``--tolerance 0`` asks for bit-identical
outputs and turns this off). The report shows the spread next to every candidate it let through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendError, EdgemillError, first_line
from ..tensors import TensorSpec
from . import accuracy
from .context import CompileContext
from .graph import to_bytes

ONNX_REFERENCE = "onnxruntime on the original model, graph optimizations off"
ONNX_DEFAULT_SESSION = "onnxruntime's default session (all graph optimizations)"
SPREAD_CAP = 1e-3  # the most the source runtime's own spread may widen --tolerance to


@dataclass
class Reference:
    name: str  # what the outputs came from, as the report says it
    kind: str  # "source" (the source framework) or "onnx" (the converted graph)
    names: list[str]  # the outputs compared, in package order (a source runtime may not give them all)
    outputs: list[list[np.ndarray]]  # per check feed, aligned with ``names``
    onnx_outputs: list[list[np.ndarray]] | None = None  # per feed, every package output (None: no graph)
    conversion: dict[str, Any] | None = None  # the converted graph against the source runtime
    notes: list[str] = field(default_factory=list)
    # Per output: how far the source runtime's own default configuration is from these outputs (module doc).
    spread: dict[str, float] = field(default_factory=dict)
    spread_from: str = ""  # what the spread was measured with, as the report says it

    def select(self, outputs: list[np.ndarray], all_names: list[str]) -> list[np.ndarray]:
        """A candidate's outputs (all, in package order) reduced to the compared ones."""
        index = {n: i for i, n in enumerate(all_names)}
        return [outputs[index[n]] for n in self.names]


def compute(ctx: CompileContext, feeds: list[dict[str, np.ndarray]], output_names: list[str]) -> Reference:
    runtime = ctx.source.runtime
    if runtime is None:
        if ctx.original is None:
            raise BackendError("nothing can run the source model here to check the compiled one",
                               value=ctx.source.framework,
                               fix=f"install the {ctx.source.framework} runtime on this machine (see `edgemill compile "
                                   "--list-frameworks`)")
        onnx_outputs = _onnx_outputs(ctx, feeds, output_names)
        reference = Reference(ONNX_REFERENCE, "onnx", list(output_names), onnx_outputs, onnx_outputs)
        if ctx.source.framework == "onnx" and ctx.options.tolerance > 0:
            reference.spread = _default_session_spread(ctx, feeds, output_names, onnx_outputs)
            reference.spread_from = ONNX_DEFAULT_SESSION if reference.spread else ""
        return reference
    source = [_run_source(ctx, runtime.run, feed, output_names) for feed in feeds]
    onnx_outputs, onnx_failure = None, None
    if ctx.original is not None:
        try:
            onnx_outputs = _onnx_outputs(ctx, feeds, output_names)
        except BackendError as exc:  # the source runs: a native candidate may still pass
            onnx_failure = exc.one_line()
    names = [n for n in output_names if all(n in got for got in source)]
    if not names:
        if onnx_outputs is None:
            raise BackendError("the source runtime's outputs do not match the model's", value=sorted(source[0]),
                               expected=", ".join(output_names), fix="report the model to us")
        note = f"{runtime.name} gave outputs that could not be matched to the package's; the converted graph is the reference"
        return Reference(ONNX_REFERENCE, "onnx", list(output_names), onnx_outputs, onnx_outputs, notes=[note])
    for got in source:
        for name in names:
            got[name] = np.asarray(got[name])
    reference = Reference(runtime.name, "source", names, [[got[n] for n in names] for got in source], onnx_outputs)
    left = [n for n in output_names if n not in names]
    if left:
        reference.notes.append(f"outputs checked against the converted graph only: {', '.join(left)}")
    if onnx_outputs is not None:
        reference.conversion = conversion_record(reference, onnx_outputs, output_names, ctx.options.tolerance)
    elif onnx_failure is not None:
        reference.conversion = {"error": onnx_failure}
        reference.notes.append(f"the converted graph does not run: {onnx_failure}")
    return reference


def conversion_record(reference: Reference, onnx_outputs: list[list[np.ndarray]], output_names: list[str],
                      tolerance: float) -> dict[str, Any]:
    """How far the converted ONNX graph is from the source runtime (before any compile step)."""
    comparisons = accuracy.pool([c for want, have in zip(reference.outputs, onnx_outputs)
                                 for c in accuracy.compare_all(reference.names, reference.select(have, output_names), want)])
    worst = accuracy.worst(comparisons)
    return {"max_relative_error": float(f"{worst:.3g}"), "within_tolerance": not accuracy.failures(comparisons, tolerance),
            "outputs": _per_output(comparisons)}


def _per_output(comparisons: list[accuracy.OutputComparison]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in comparisons:
        out[c.name] = max(out.get(c.name, 0.0), float(f"{c.max_relative_error:.3g}"))
    return out


def compile_error(reference: Reference, got: list[list[np.ndarray]], output_names: list[str],
                  tolerance: float) -> dict[str, Any] | None:
    """How far a candidate is from the converted graph (the compile's own share of the error)."""
    if reference.onnx_outputs is None or reference.kind == "onnx":
        return None
    comparisons = accuracy.pool([c for want, have in zip(reference.onnx_outputs, got)
                                 for c in accuracy.compare_all(output_names, have, want)])
    return {"max_relative_error": float(f"{accuracy.worst(comparisons):.3g}"),
            "within_tolerance": not accuracy.failures(comparisons, tolerance)}


def _run_source(ctx: CompileContext, run: Any, feed: dict[str, np.ndarray], output_names: list[str]
                ) -> dict[str, np.ndarray]:
    try:
        return dict(run(feed))
    except EdgemillError:
        raise
    except Exception as exc:  # the source framework raises its own kinds
        raise BackendError(f"{ctx.source.runtime.name if ctx.source.runtime else 'the source framework'} "
                           "cannot run the model on the check inputs", value=first_line(exc)[:300],
                           fix=input_fix(ctx.inputs)) from None


def input_fix(inputs: list[TensorSpec]) -> str:
    """What to tell a user whose model refuses the generated check inputs."""
    selecting = [s for s in inputs if s.dtype.startswith(("int", "uint", "bool")) or not s.shape]
    hint = ""
    if selecting:
        examples = ", ".join(f"--input {s.name}=VALUE" for s in selecting[:3])
        hint = (f"inputs that select behaviour ({', '.join(s.name for s in selecting)}) get random values; bind each "
                f"to the value your application passes ({examples}, e.g. a sample rate), or ")
    return hint + "pass --validation DATA.npz with real inputs for this model"


def _default_session_spread(ctx: CompileContext, feeds: list[dict[str, np.ndarray]], output_names: list[str],
                            reference: list[list[np.ndarray]]) -> dict[str, float]:
    """Per output, the pooled relative error of onnxruntime's default session against ``reference``
    (the same model with optimizations off). Empty when the two agree exactly or the default session
    cannot run the model (then candidates are held to ``--tolerance`` alone)."""
    try:
        default = _onnx_outputs(ctx, feeds, output_names, level="all")
    except BackendError:
        return {}
    comparisons = accuracy.pool([c for want, have in zip(reference, default)
                                 for c in accuracy.compare_all(output_names, have, want)])
    # Integer outputs must match exactly whatever the runtime does; an infinite difference is a bug, not
    # spread; and past SPREAD_CAP the default session is itself suspect, so it licenses nothing beyond.
    return {c.name: min(c.max_relative_error, SPREAD_CAP) for c in comparisons
            if not c.exact and np.isfinite(c.max_relative_error) and c.max_relative_error > 0}


def _onnx_outputs(ctx: CompileContext, feeds: list[dict[str, np.ndarray]], output_names: list[str],
                  level: str = "none") -> list[list[np.ndarray]]:
    """The converted graph's outputs: onnxruntime with every optimization off (or at ``level``)."""
    import onnxruntime as ort

    from ..runtime.backends.onnxruntime import session_options

    assert ctx.original is not None
    so = session_options(ctx.options.check_threads, level)
    so.log_severity_level = 4  # its errors come back as exceptions, which we report in one line
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
                               value=first_line(exc)[:300], fix=input_fix(ctx.inputs)) from None
    return results
