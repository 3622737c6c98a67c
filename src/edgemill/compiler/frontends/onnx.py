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
    info = source_info(path, "onnx", onnx.__version__, opsets=opsets,
                       producer=f"{model.producer_name} {model.producer_version}".strip())
    return model, info


register(Frontend("onnx", "ONNX model (.onnx)", detect, load, requires=("onnx",), extra="compile", priority=90,
                  suffixes=(".onnx",)))
