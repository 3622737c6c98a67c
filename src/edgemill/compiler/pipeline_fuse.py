"""Merge a package's pre/post-processing graphs into its model, so one session runs frame -> detections.

Run as separate sessions, the stages cost a detector about twice what they cost merged (yolov4-tiny,
onnxruntime on two cores: +13.8 % over the model alone as three sessions, +6.4 % as one): one thread
pool stays warm through the whole call and no tensor crosses sessions. The merged graph is the stage
graphs' nodes and the model's, unchanged: :func:`fuse` converts the stage graphs to the model's opset,
gives their tensors a prefix no model tensor has, wires the pre-processing outputs to the model's
inputs and the model's outputs to the post-processing, and names the merged graph's inputs and outputs
as the package's. :func:`merged_artifact` makes the chosen candidate of it (onnxruntime: its own
optimized model merged; OpenVINO fp32/bf16: the merged ONNX converted again). The compiler keeps the
merged model only when it gives what the separate stages give on the check frames (:func:`difference`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import EdgemillError, first_line
from ..pipeline.stages import PipelineLayout
from .lowering import Artifact

FUSED_BACKENDS = ("onnxruntime", "openvino")
PREFIX = "edgemill_stage{}_"


def merged_artifact(artifact: Artifact, prepared: Any, layout: PipelineLayout, files: Mapping[str, bytes],
                    ctx: Any) -> tuple[Artifact | None, str]:
    """The chosen candidate rebuilt with the stages inside its model, or None and why not: onnxruntime
    takes the merged graph of its own (optimized) model; OpenVINO converts the merged graph of the prepared
    ONNX model again (fp32 and bf16: an int8 model's calibration data are model inputs, not frames)."""
    candidate = artifact.candidate
    if candidate.backend == "onnxruntime":
        data, note = fuse(artifact.files[artifact.entrypoint], layout, files)
        return (None if data is None else replace(artifact, files={**artifact.files, artifact.entrypoint: data})), note
    if candidate.backend == "openvino" and candidate.precision != "int8" and prepared is not None:
        import onnx

        from . import lowering
        from .graph import to_bytes

        data, note = fuse(to_bytes(prepared), layout, files)
        if data is None:
            return None, note
        try:
            return lowering.builder("openvino")(onnx.load_from_string(data), candidate, ctx), note + ", converted again"
        except EdgemillError as exc:
            return None, f"OpenVINO cannot convert the merged graph: {first_line(exc)[:200]}"
    return None, f"{candidate.label} keeps its model as built"


def fuse(model_bytes: bytes, layout: PipelineLayout, files: Mapping[str, bytes]) -> tuple[bytes | None, str]:
    """The merged model (serialized) and a note; or None and why the stages stay separate."""
    import onnx
    from onnx import compose, version_converter

    model = onnx.load_from_string(model_bytes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return None, "the model has no default-domain opset"
    taken = _names(model.graph)
    stages: list[tuple[str, Any]] = []
    for i, name in enumerate(layout.stage_files):
        stage = onnx.load_from_string(files[name])
        if stage.opset_import[0].version != opset:
            try:
                stage = version_converter.convert_version(stage, opset)
            except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
                return None, f"{name} cannot be written at the model's opset {opset}: {str(exc).splitlines()[0][:160]}"
        prefix = PREFIX.format(i)
        if any(n.startswith(prefix) for n in taken):
            return None, f"the model has tensors named {prefix}*"
        stage = compose.add_prefix(stage, prefix)
        stage.ir_version = model.ir_version = max(model.ir_version, stage.ir_version)
        stages.append((prefix, stage))
    merged = model
    renames: dict[str, str] = {}
    try:
        for (prefix, stage), pre in zip(stages, layout.preprocess):
            merged = compose.merge_models(stage, merged, io_map=[(prefix + "model_input", pre.model_input)])
            renames[prefix + pre.input] = pre.input
        post = layout.postprocess
        if post is not None:
            prefix, stage = stages[-1]
            merged = compose.merge_models(merged, stage, io_map=[(n, prefix + n) for n in post.inputs])
            renames.update({prefix + n: n for n in post.outputs})
    except ValueError as exc:  # overlapping names, mismatched opsets: the stages stay separate
        return None, str(exc).splitlines()[0][:200]
    clash = sorted(set(renames.values()) & (_names(merged.graph) - set(renames)))
    if clash:
        return None, f"the model has its own tensor named {clash[0]!r}"
    _rename(merged.graph, renames)
    return merged.SerializeToString(), f"{len(stages)} stage graph(s) merged into the model at opset {opset}"


def difference(fused: Mapping[str, np.ndarray], separate: Mapping[str, np.ndarray], tolerance: float) -> str | None:
    """None when the merged model's outputs are the separate stages' (integers and names exactly, floats
    within ``tolerance`` relative); else which output differs, and how."""
    from .accuracy import compare

    for name, want in separate.items():
        got = fused.get(name)
        if got is None or got.shape != want.shape or got.dtype != want.dtype:
            shown = "missing" if got is None else f"{got.dtype}{list(got.shape)}"
            return f"{name!r} is {shown}, not {want.dtype}{list(want.shape)}"
        if want.dtype.kind in "fc":
            error = compare(name, got, want).max_relative_error
            if error > tolerance:
                return f"{name!r} is {error:.2e} (relative) from the separate stages'"
        elif not np.array_equal(got, want):
            return f"{name!r} differs from the separate stages' at {int(np.sum(got != want))} of {got.size} values"
    return None


def _names(graph: Any) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {v.name for v in graph.value_info}
    for node in graph.node:
        names.update(node.output)
    return names


def _rename(graph: Any, renames: Mapping[str, str]) -> None:
    """Rename tensors of the top-level graph (stage tensors: no subgraph refers to them)."""
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
