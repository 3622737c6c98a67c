"""Lowering: turn the prepared ONNX graph into a backend's artifact at one precision.

A :class:`Candidate` names a backend, a precision and how it is reached (``method``); its builder (one
module per backend here) returns an :class:`Artifact`: the package's model files and the options the
runtime loads them with. The compile driver builds every candidate the options and the target allow,
puts each through the accuracy gate, measures the survivors where the target runs here, and packages
the fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import OptionError
from ...runtime.backends import missing_library
from ...targets import Target

if TYPE_CHECKING:
    import onnx

    from ..context import CompileContext

MODEL_DIR = "model"


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str  # fp32 | fp16 | bf16 | int8
    method: str  # how: "optimized", "static-qdq", "dynamic", "fp16-cast", "ir"

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}" + (f" ({self.method})" if self.method else "")


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
    raise OptionError("no compiler for this backend in this edgemill version", value=backend,
                      expected="onnxruntime, openvino, tvm or reference", fix="pass --backend auto")


# What each backend can produce, in the order tried when nothing is measured (cross targets).
_BACKEND_METHODS: dict[str, list[tuple[str, str]]] = {
    "onnxruntime": [("fp32", "optimized"), ("int8", "static-qdq"), ("int8", "dynamic"), ("fp16", "fp16-cast")],
    "openvino": [("fp32", "ir"), ("bf16", "ir"), ("int8", "static-qdq")],
    "tvm": [("fp32", "aot")],
    "reference": [("fp32", "")],
}


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
         max_drop: float, runs_here: bool = True, tune_budget: float | None = None) -> tuple[list[Candidate], list[Skipped]]:
    """The candidates to build for these options, and those left out with the reason."""
    backends = [b for b in target.backends if b != "reference"] if backend == "auto" else [backend]
    if backend != "auto" and backend not in target.backends:
        raise OptionError(f"backend not allowed for target {target.name!r}", value=backend,
                          expected="one of " + ", ".join(target.backends), fix="pick one of those, or --backend auto")
    native = native_precisions(target)
    if precision in ("fp16", "bf16") and precision not in native:
        raise OptionError(f"target {target.name!r} does not compute {precision} natively", value=precision,
                          expected="one of " + ", ".join(sorted(native)),
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
            cand = Candidate(name, prec, method)
            if precision != "auto" and prec != precision:
                continue
            missing = missing_library(name)
            reason = f"{missing} is not installed (pip install 'edgemill[{name}]')" if missing else None
            if reason is None and name == "tvm":
                reason = _tvm_skip_reason(backend, runs_here, tune_budget)
            if reason is None and prec not in native:
                reason = f"target {target.name} does not compute {prec} natively"
            elif reason is None and method == "static-qdq" and not has_calibration:
                reason = "static INT8 needs --calibration DATA.npz (representative inputs)"
            elif reason is None and precision == "auto" and prec != "fp32" and not has_real_data and max_drop == 0:
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
