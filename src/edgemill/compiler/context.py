"""What flows through the pipeline: the model being compiled and what each step learned."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx

from ..errors import EdgemillError
from ..targets import Target
from ..tensors import TensorSpec
from .options import CompileOptions
from .source import NativeModel, SourceRuntime

if TYPE_CHECKING:
    from ..emulation.gate import CandidateRunner
    from .lowering.static_int8 import StaticInt8

Progress = Callable[[str, str, float | None], None]  # (step, message, seconds or None when starting)


def silent(step: str, message: str, seconds: float | None) -> None:
    pass


@dataclass
class SourceInfo:
    framework: str
    framework_version: str
    file: str
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)
    # Not recorded in the manifest: what the compile uses from the frontend besides the graph (source.py).
    runtime: SourceRuntime | None = None
    native: NativeModel | None = None
    conversion_error: EdgemillError | None = None  # why there is no ONNX graph, when there is none

    def to_dict(self) -> dict[str, Any]:
        return {"framework": self.framework, "framework_version": self.framework_version, "file": self.file,
                "sha256": self.sha256, **self.details}


@dataclass(frozen=True)
class QuantizedJudge:
    """The accuracy gate for a quantized ONNX model, run as one INT8 candidate runs it (its backend and
    settings: its kernels), and the inputs it judges on."""

    evaluate: Callable[[onnx.ModelProto], Any]  # -> gate.Evaluation
    feeds: list[dict[str, Any]]

    def __call__(self, model: onnx.ModelProto) -> Any:
        return self.evaluate(model)


@dataclass
class CompileContext:
    options: CompileOptions
    target: Target
    source: SourceInfo
    original: onnx.ModelProto | None  # as the frontend produced it, after checks (None: a native model only)
    progress: Progress = silent
    steps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: list[dict[str, Any]] | None = None  # feeds for static INT8, checked against the inputs
    validation_sha256: str | None = None  # of the --validation file, read once
    static_int8: StaticInt8 | None = None  # the calibrated quantizer, made once (lowering/static_int8.py)
    # Set by candidates.build_all: the gate for a QDQ model run as the candidate of that label runs it,
    # which the mixed-precision search judges each point by. None: no search.
    int8_judge: Callable[[str], QuantizedJudge | None] | None = None
    int8_kernels: tuple[str, ...] = ()  # the labels int8_judge judges, in plan order
    # Where the gate runs candidates: this host, or an emulated device of the target's architecture
    # (emulation/gate.py). None: this host.
    gate_runner: CandidateRunner | None = None
    # The gate's outputs of the last few artifacts it ran (candidates.gate_run): none is run twice.
    gate_outputs: dict[tuple[Any, ...], list[list[Any]]] = field(default_factory=dict)
    inputs: list[TensorSpec] = field(default_factory=list)  # the package's inputs and outputs, once known
    outputs: list[TensorSpec] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, message: str) -> Iterator[dict[str, Any]]:
        """Time a step, report progress, and collect what it records in the report."""
        record: dict[str, Any] = {"step": name}
        self.progress(name, message, None)
        start = time.perf_counter()
        yield record
        record["seconds"] = round(time.perf_counter() - start, 4)
        self.steps.append(record)
        self.progress(name, record.get("summary", message), record["seconds"])
