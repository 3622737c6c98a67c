"""Lowering: turn the prepared ONNX graph into a backend's artifact at one precision.

A :class:`Candidate` names a backend, a precision and how it is reached (``method``); its builder (one
module per backend here) returns an :class:`Artifact`: the package's model files and the options the
runtime loads them with. The compile driver builds every candidate the options and the target allow,
puts each through the accuracy gate, measures the survivors where the target runs here, and packages
the fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ...errors import OptionError
from ...runtime.backends import missing_library
from ...targets import Target

if TYPE_CHECKING:
    import onnx

    from ..context import CompileContext

MODEL_DIR = "model"


# How far onnxruntime's offline optimizer goes, from most to least. A candidate whose optimized graph
# changes the answer (or does not load) is built again one level down before it is given up.
ORT_LEVELS = ("all", "extended", "basic", "none")
NATIVE = "native"  # the method of a candidate that runs the source file as it is (a .tflite on LiteRT)
TRANSFORMER_FUSED = "transformer-fused"  # onnxruntime's transformer optimizer (planned for transformer graphs)


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str  # fp32 | fp16 | bf16 | int8 (for a native candidate: the source model's own)
    method: str  # how: "optimized", "transformer-fused", "static-qdq", "static-qdq-bf16", "dynamic", "fp16-cast",
    # "ir", "native"
    level: str | None = None  # onnxruntime optimization level, once stepped below the target's default

    @property
    def label(self) -> str:
        how = ", ".join(x for x in (self.method, f"level {self.level}" if self.level else "") if x)
        return f"{self.backend}/{self.precision}" + (f" ({how})" if how else "")

    @property
    def lossless(self) -> bool:
        """True when the candidate keeps the source's precision: it must match within --tolerance."""
        return self.precision == "fp32" or self.method == NATIVE

    @property
    def reads(self) -> str:
        """The model format the builder starts from: the ONNX graph, or the source file itself."""
        return "native" if self.method == NATIVE else "onnx"


@dataclass
class Artifact:
    candidate: Candidate
    entrypoint: str
    files: dict[str, bytes]  # package path -> bytes, the entrypoint among them
    backend_options: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


Builder = Callable[["onnx.ModelProto", Candidate, "CompileContext"], Artifact]


@dataclass(frozen=True)
class Skipped:
    candidate: Candidate
    reason: str


def builder(backend: str) -> Builder:
    if backend == "onnxruntime":
        from . import onnxruntime

        return onnxruntime.build
    if backend == "openvino":
        from . import openvino

        return openvino.build
    if backend == "tvm":
        from . import tvm

        return tvm.build
    if backend == "reference":
        from . import onnxruntime

        return onnxruntime.build_reference
    if backend == "litert":
        from . import litert

        return litert.build
    raise OptionError("no compiler for this backend in this edgemill version", value=backend,
                      expected="onnxruntime, openvino, tvm, litert or reference", fix="pass --backend auto")


# What each backend can produce, in the order tried when nothing is measured (cross targets).
_BACKEND_METHODS: dict[str, list[tuple[str, str]]] = {
    "onnxruntime": [("fp32", "optimized"), ("fp32", TRANSFORMER_FUSED), ("int8", "static-qdq"), ("int8", "dynamic"),
                    ("fp16", "fp16-cast")],
    # static-qdq-bf16: the INT8 model with the operators left in float computed in bf16 (CPUs with bf16).
    "openvino": [("fp32", "ir"), ("bf16", "ir"), ("int8", "static-qdq"), ("int8", "static-qdq-bf16")],
    "tvm": [("fp32", "aot")],
    "litert": [("", NATIVE)],  # precision: the native model's own
    "reference": [("fp32", "")],
}


def step_down(candidate: Candidate, target: Target) -> Candidate | None:
    """The same candidate one onnxruntime optimization level lower, or None at the bottom (and for
    backends without levels)."""
    if candidate.backend != "onnxruntime":
        return None
    from .ort_optimize import default_level

    current = candidate.level or default_level(target)
    index = ORT_LEVELS.index(current)
    return None if index + 1 >= len(ORT_LEVELS) else replace(candidate, level=ORT_LEVELS[index + 1])


_NATIVE_FORMATS = {"litert": "tflite"}  # backend -> the source format it runs as it is


def _tvm_skip_reason(backend: str, runs_here: bool, tune_budget: float | None) -> str | None:
    from .tvm import AUTO_MIN_BUDGET_S

    if not runs_here:
        return ("a TVM library for another machine could not be checked against the accuracy gate here (and "
                "needs that architecture's cross toolchain): compile with --backend tvm on the device itself")
    if backend == "auto" and tune_budget is not None and tune_budget < AUTO_MIN_BUDGET_S:
        return (f"TVM needs a long schedule search to compete (untuned it is ~100x slower than onnxruntime); "
                f"--backend auto tries it from --tune-budget {AUTO_MIN_BUDGET_S:g}, or pass --backend tvm")
    return None


def native_precisions(target: Target) -> set[str]:
    """Precisions the target computes natively (besides fp32 and int8, which every CPU runs)."""
    features, accel = set(target.cpu_features), set(target.accelerators)
    native = {"fp32", "int8"}
    if accel or features & {"avx512_fp16", "asimdhp", "fphp"}:
        native.add("fp16")
    if features & {"avx512_bf16", "amx_bf16", "bf16"}:
        native.add("bf16")
    return native


def plan(target: Target, backend: str, precision: str, *, has_calibration: bool, has_real_data: bool,
         max_drop: float, runs_here: bool = True, tune_budget: float | None = None, has_graph: bool = True,
         native: tuple[str, str] | None = None, transformer: bool = False) -> tuple[list[Candidate], list[Skipped]]:
    """The candidates to build for these options, and those left out with the reason.

    ``has_graph``: an ONNX graph exists (False when only a native model could be read). ``native``:
    (format, precision) of the source file when a native backend can run it as it is. ``transformer``:
    the graph has a transformer's layer normalization (the transformer-fusion candidate is planned)."""
    backends = [b for b in target.backends if b != "reference"] if backend == "auto" else [backend]
    if backend != "auto" and backend not in target.backends:
        raise OptionError(f"backend not allowed for target {target.name!r}", value=backend,
                          expected="one of " + ", ".join(target.backends), fix="pick one of those, or --backend auto")
    native_precs = native_precisions(target)
    if precision in ("fp16", "bf16") and precision not in native_precs:
        raise OptionError(f"target {target.name!r} does not compute {precision} natively", value=precision,
                          expected="one of " + ", ".join(sorted(native_precs)),
                          fix="use --precision int8 or fp32, or compile for a target with that hardware")
    planned: list[Candidate] = []
    skipped: list[Skipped] = []
    for name in backends:
        methods = _BACKEND_METHODS.get(name)
        if methods is None:
            skipped.append(Skipped(Candidate(name, precision, ""), f"the {name} backend is not available in this "
                                   "edgemill version"))
            continue
        for prec, method in methods:
            if method == NATIVE:
                if native is None or native[0] != _NATIVE_FORMATS.get(name):
                    continue  # this source is not in the format the backend runs
                prec = native[1]
            if method == TRANSFORMER_FUSED and not transformer:
                continue  # nothing for the transformer optimizer to fuse
            cand = Candidate(name, prec, method)
            if precision != "auto" and prec != precision:
                if method == NATIVE:
                    skipped.append(Skipped(cand, f"the source model is {prec}; LiteRT runs it as it is, not at "
                                                 f"--precision {precision}"))
                continue
            missing = missing_library(name)
            reason = f"{missing} is not installed (pip install 'edgemill[{name}]')" if missing else None
            if reason is None and method != NATIVE and not has_graph:
                reason = "the model could not be converted to ONNX, which this backend reads"
            if reason is None and name == "tvm":
                reason = _tvm_skip_reason(backend, runs_here, tune_budget)
            if reason is None and method != NATIVE and prec not in native_precs:
                reason = f"target {target.name} does not compute {prec} natively"
            elif reason is None and method.endswith("-bf16") and "bf16" not in native_precs:
                reason = f"target {target.name} does not compute bf16 natively"
            elif reason is None and method.startswith("static-qdq") and not has_calibration:
                reason = "static INT8 needs --calibration DATA.npz (representative inputs)"
            elif reason is None and precision == "auto" and not cand.lossless and not has_real_data and max_drop == 0:
                reason = ("reduced precision is chosen only against real data: pass --validation DATA.npz "
                          "(with labels for top-1) or allow a drop with --max-accuracy-drop")
            if reason:
                skipped.append(Skipped(cand, reason))
            else:
                planned.append(cand)
    if not planned:
        reasons = "; ".join(f"{s.candidate.label}: {s.reason}" for s in skipped) or "none"
        raise OptionError(f"no way to build a {precision} package for target {target.name!r} with backend {backend}",
                          value=f"--precision {precision} --backend {backend}", expected=f"a buildable candidate ({reasons})",
                          fix="follow one of those reasons, or use --precision auto --backend auto")
    return planned, skipped
