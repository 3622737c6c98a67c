"""ONNX frontend: the model is already in our IR; load it and record where it came from."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ...errors import ModelFormatError
from ..context import SourceInfo
from . import Frontend, FrontendRequest, read_head, register, source_info


def detect(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.suffix.lower() == ".onnx":
        return True
    return read_head(path, 1) == b"\x08"  # field 1 (ir_version), varint: how every ModelProto starts


def load(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    if path.is_dir():
        raise ModelFormatError("expected an .onnx file, got a directory", value=str(path), fix="pass the .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelFormatError(
            "not an ONNX model (cannot parse it)", value=str(path),
            fix="pass a .onnx file exported by your framework" + (f" ({exc})" if str(exc) else ""),
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelFormatError("the ONNX file holds no graph", value=str(path), fix="pass a complete exported model")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    notes = unzip_maps(model)
    info = source_info(path, "onnx", onnx.__version__, opsets=opsets,
                       producer=f"{model.producer_name} {model.producer_version}".strip(),
                       **({"io_notes": notes} if notes else {}))
    return model, info


def unzip_maps(model: onnx.ModelProto) -> list[str]:
    """A ZipMap output (scikit-learn converters' default: a sequence of {class: probability} maps) is not a
    tensor, so no runtime API or wire protocol of ours can carry it. Return the tensor it zips instead,
    one column per class, and say so (the manifest's ``source.io_notes``, shown by ``edgemill inspect``)."""
    from onnx import helper

    from ..graph import ensure_default_opset

    producers = {o: n for n in model.graph.node for o in n.output}
    notes = []
    for out in model.graph.output:
        node = producers.get(out.name)
        if node is None or node.op_type != "ZipMap":
            continue
        attrs = {a.name: a for a in node.attribute}
        labels = (list(attrs["classlabels_int64s"].ints) if "classlabels_int64s" in attrs
                  else [s.decode() for s in attrs["classlabels_strings"].strings] if "classlabels_strings" in attrs else [])
        ensure_default_opset(model)
        model.graph.node.remove(node)
        model.graph.node.append(helper.make_node("Identity", [node.input[0]], [out.name], name=f"{node.name}_unzipped"))
        out.type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [None, len(labels) or None]))
        notes.append(f"output {out.name!r} was a ZipMap (a sequence of maps); the package returns the probabilities as a "
                     f"float tensor, one column per class: {labels}")
    return notes


register(Frontend("onnx", "ONNX model (.onnx)", detect, load, requires=("onnx",), extra="compile", priority=90,
                  suffixes=(".onnx",)))
