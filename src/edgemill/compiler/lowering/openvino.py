"""OpenVINO artifacts: the model converted once to OpenVINO IR (``model.xml`` + ``model.bin``) at
compile time, so the device only reads and compiles it for its CPU.

fp32 keeps fp32 weights and sets ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO would otherwise pick bf16
on CPUs that have it); bf16 stores the same IR and sets the hint to bf16; int8 converts the statically
quantized QDQ graph (OpenVINO turns QDQ pairs into its FakeQuantize and runs INT8 kernels); int8 by
``static-qdq-bf16`` is the same IR with the bf16 hint, so what stays in float (the operators the
mixed-precision search kept out of INT8, softmax, normalizations) runs in bf16 on CPUs that have it.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import TYPE_CHECKING

import onnx

from ...errors import BackendError, first_line
from . import MODEL_DIR, Artifact, Candidate

if TYPE_CHECKING:
    from ..context import CompileContext

ENTRYPOINT = f"{MODEL_DIR}/model.xml"
WEIGHTS = f"{MODEL_DIR}/model.bin"
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def build(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    notes: dict[str, object] = {}
    if candidate.precision == "int8":
        from .static_int8 import quantized_model

        model = quantized_model(model, ctx, candidate.label, notes)
    return ir_artifact(model, candidate, notes)


def ir_artifact(model: onnx.ModelProto, candidate: Candidate, notes: dict[str, object] | None = None) -> Artifact:
    """The package files of ``model`` converted to OpenVINO IR, with the candidate's precision hint."""
    import openvino as ov

    notes = {} if notes is None else notes
    notes["openvino"] = ov.__version__
    with tempfile.TemporaryDirectory(prefix="edgemill-ov-") as folder:
        source = os.path.join(folder, "model.onnx")
        onnx.save(model, source)
        try:
            converted = ov.convert_model(source)
            _name_generated_ops(converted, model)
            ov.save_model(converted, os.path.join(folder, "model.xml"), compress_to_fp16=False)
        except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with long messages
            raise BackendError("OpenVINO cannot convert the model", value=first_line(exc)[:300],
                               fix="compile with --backend onnxruntime") from None
        with open(os.path.join(folder, "model.xml"), "rb") as f:
            xml = f.read()
        with open(os.path.join(folder, "model.bin"), "rb") as f:
            weights = f.read()
    hint = "bf16" if candidate.method == "static-qdq-bf16" else HINTS[candidate.precision]
    options = {"inference_precision": hint, "performance_hint": "LATENCY"}
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: xml, WEIGHTS: weights}, options, notes)


_GENERATED_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_\d+$")


def _name_generated_ops(converted: object, source: onnx.ModelProto) -> None:
    """Give the operators OpenVINO named itself (``Multiply_2902``: its type and a process-wide counter)
    names numbered by their place in the graph, so the same model always converts to the same IR bytes
    and so to the same package id and tuning-cache entry. Names that come from the source graph, and the
    inputs and outputs the runtime finds by tensor name, are left as they are."""
    graph = source.graph
    own = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
    own |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
    for index, op in enumerate(converted.get_ordered_ops()):  # type: ignore[attr-defined]
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        match = _GENERATED_NAME.match(op.get_friendly_name())
        if match and op.get_friendly_name() not in own:
            op.set_friendly_name(f"{match.group(1)}_{index}")
