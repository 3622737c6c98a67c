"""LiteRT artifacts: the source ``.tflite`` itself, unchanged, with the map from the package's input and
output names to the model's tensor indices (see ``runtime/backends/litert.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import BackendError
from . import MODEL_DIR, Artifact, Candidate

if TYPE_CHECKING:
    import onnx

    from ..context import CompileContext

ENTRYPOINT = f"{MODEL_DIR}/model.tflite"


def build(model: onnx.ModelProto | None, candidate: Candidate, ctx: CompileContext) -> Artifact:
    native = ctx.source.native
    if native is None or native.format != "tflite":
        raise BackendError("LiteRT runs TFLite models only", value=ctx.source.framework,
                           fix="use --backend auto")
    by_name = {s.name: s for s in (*native.inputs, *native.outputs)}
    indices: dict[str, dict[str, int]] = {"inputs": {}, "outputs": {}}
    for kind, specs, table in (("input", ctx.inputs, native.details["input_indices"]),
                               ("output", ctx.outputs, native.details["output_indices"])):
        for spec in specs:
            own = by_name.get(spec.name)
            if own is None or spec.name not in table:
                raise BackendError(f"the package's {kind} is not in the TFLite model", value=spec.name,
                                   fix="report the model to us; compile with --backend onnxruntime meanwhile")
            if own.dtype != spec.dtype:
                raise BackendError(f"the TFLite model's {kind} {spec.name!r} has another dtype than the converted "
                                   "graph's", value=own.dtype, expected=spec.dtype,
                                   fix="compile with --backend litert to keep the TFLite model's own types")
            indices[f"{kind}s"][spec.name] = int(table[spec.name])
    notes: dict[str, Any] = {"runtime": "LiteRT with XNNPACK", "precision": native.precision}
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: native.data}, indices, notes)
