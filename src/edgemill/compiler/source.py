"""What a frontend hands over besides the ONNX graph: the source framework's own runtime, which the
accuracy gate compares every candidate with, and the model as the source framework wrote it, for a
backend that runs that format natively (a ``.tflite`` on LiteRT).

A frontend that can run its source model sets :attr:`SourceInfo.runtime`; one whose conversion to ONNX
failed but whose format a native backend runs sets :attr:`SourceInfo.native` and keeps the conversion
error in :attr:`SourceInfo.conversion_error`, so the compile goes on with the native backend alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tensors import TensorSpec

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class SourceRuntime:
    """Runs the source model in its own framework, in this process.

    ``run`` takes a feed keyed by the package's input names and returns outputs keyed by the package's
    output names (a frontend maps its framework's names to ours; an output it cannot reproduce is left
    out and so not compared)."""

    name: str  # what the report calls it, e.g. "TFLite interpreter (ai-edge-litert 2.3.0)"
    run: Callable[[Feed], dict[str, np.ndarray]]
    timed: Callable[[Feed], Any] | None = None  # the fastest idiomatic call, for latency comparisons


@dataclass(frozen=True)
class NativeModel:
    """A model file a backend runs as it is (``format`` names it: ``tflite``)."""

    format: str
    data: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str  # what its weights and arithmetic are: fp32, int8, fp16
    details: dict[str, Any] = field(default_factory=dict)  # backend-specific, e.g. tensor indices by name
