"""TFLite frontend: a ``.tflite`` flatbuffer, converted to ONNX with tf2onnx where it can be, and always
kept as it is for the LiteRT backend (see ``runtime/backends/litert.py``).

* **Names** are the model's signature names (``interpreter.get_signature_list()``), which is what an
  application written against the TFLite model passes; tensor names (``serving_default_x:0``) are
  recorded in the manifest's ``source.names`` and accepted by ``--input``.
* **Reference**: the TFLite interpreter itself (LiteRT, else TensorFlow's own), so the accuracy gate
  compares with what the model computes where it came from: a quantized model's ONNX conversion may
  round differently, and then only LiteRT's candidate passes, exactly.
* **When tf2onnx cannot convert** (custom operators, sparse weights, signal-processing front ends,
  some detection post-processing), the compile goes on with LiteRT alone.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import EdgemillError, MissingDependencyError, ModelFormatError, first_line
from ...tensors import TensorSpec, dtype_name
from ..context import SourceInfo
from ..source import NativeModel, SourceRuntime
from . import Frontend, FrontendRequest, read_head, register, source_info
from ._tflite_densify import densified

if TYPE_CHECKING:
    import onnx

QUANTIZED_DTYPES = ("int8", "uint8", "int16")


def is_tflite(path: Path) -> bool:
    return read_head(path, 8)[4:8] == b"TFL3"


def _interpreter_class() -> Any:
    """LiteRT's interpreter where installed, else TensorFlow's (the same kernels)."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        return tf.lite.Interpreter
    raise MissingDependencyError("reading a TFLite model needs LiteRT or TensorFlow", value="ai-edge-litert",
                                 fix="pip install 'edgemill[litert]' (or 'edgemill[tensorflow]' to convert to ONNX too)")


def _interpreter(data: bytes, threads: int = 1) -> tuple[Any, str]:
    """A TFLite interpreter over ``data``, and which library it is."""
    import warnings
    from importlib.metadata import version

    cls = _interpreter_class()
    library = (f"ai-edge-litert {version('ai-edge-litert')}" if cls.__module__.startswith("ai_edge_litert")
               else f"tensorflow {version('tensorflow-cpu') if _has_dist('tensorflow-cpu') else version('tensorflow')}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated": we prefer LiteRT when present
        return cls(model_content=data, num_threads=threads), library


def _has_dist(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def _plain(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def read_native(data: bytes, path: Path, request: FrontendRequest | None = None) -> tuple[NativeModel, str]:
    """The model as LiteRT runs it: inputs and outputs under their signature names, tensor indices, precision."""
    try:
        interpreter, library = _interpreter(data)
    except EdgemillError:
        raise
    except Exception as exc:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError
        raise _load_error(path, exc) from None
    _allocate(interpreter, path, request)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    by_index: dict[int, str] = {}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:  # several signatures: a multi-function model; tensor names are unambiguous
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        for name, detail in {**runner.get_input_details(), **runner.get_output_details()}.items():
            by_index[int(detail["index"])] = name
    names = [by_index.get(int(d["index"]), _plain(d["name"])) for d in [*inputs, *outputs]]
    if len(set(names)) != len(names):
        by_index = {}
    tensors = {int(d["index"]): d["name"] for d in [*inputs, *outputs]}

    def spec(d: dict[str, Any]) -> TensorSpec:
        signature = d.get("shape_signature")
        shape = tuple(int(x) for x in (signature if signature is not None and len(signature) else d["shape"]))
        return TensorSpec(by_index.get(int(d["index"]), _plain(d["name"])), dtype_name(d["dtype"]),
                          tuple(x if x >= 0 else -1 for x in shape))

    in_specs, out_specs = tuple(spec(d) for d in inputs), tuple(spec(d) for d in outputs)
    quantized = any(dtype_name(t["dtype"]) in QUANTIZED_DTYPES and len(t["quantization_parameters"]["scales"])
                    for t in interpreter.get_tensor_details())
    native = NativeModel(
        format="tflite", data=data, inputs=in_specs, outputs=out_specs, precision="int8" if quantized else "fp32",
        details={"input_indices": {s.name: int(d["index"]) for s, d in zip(in_specs, inputs)},
                 "output_indices": {s.name: int(d["index"]) for s, d in zip(out_specs, outputs)},
                 "tensor_names": {s.name: tensors[int(d["index"])] for s, d in zip((*in_specs, *out_specs),
                                                                                     (*inputs, *outputs))}})
    return native, library


def _load_error(path: Path, exc: BaseException) -> ModelFormatError:
    text = str(exc)
    custom = sorted(set(re.findall(r"unresolved custom op: (\w+)", text)))
    if custom:
        return ModelFormatError(
            "the TFLite model needs custom operators that LiteRT does not have", value=", ".join(custom),
            expected="builtin TFLite operators (or custom ones LiteRT registers)",
            fix="run it with the framework that ships those operators (e.g. MediaPipe), or re-convert the model "
                "without them")
    return ModelFormatError("the TFLite interpreter cannot load this model", value=str(path),
                            fix=f"check the file is a complete .tflite model ({first_line(exc)})")


def _allocate(interpreter: Any, path: Path, request: FrontendRequest | None) -> None:
    """Allocate the interpreter's tensors, at the ``--input`` shapes where the model's are dynamic (some
    front ends cannot even be allocated at their placeholder size of 1)."""
    overrides = {o.name: o for o in (request.inputs if request else ())}
    for detail in interpreter.get_input_details():
        override = overrides.get(detail["name"]) or overrides.get(_plain(detail["name"]))
        if override is None:
            names = {n for n, t in _signature_inputs(interpreter).items() if t == detail["index"]}
            override = next((overrides[n] for n in names if n in overrides), None)
        if override is not None and override.shape and all(isinstance(d, int) and d > 0 for d in override.shape):
            interpreter.resize_tensor_input(detail["index"], list(override.shape), strict=False)
    try:
        interpreter.allocate_tensors()
    except Exception as exc:  # noqa: BLE001
        error = _load_error(path, exc)
        dynamic = [d for d in interpreter.get_input_details() if -1 in list(d.get("shape_signature", []))]
        if dynamic and "custom operators" not in error.problem:
            names = ", ".join(f"--input {_plain(d['name'])}:SHAPE" for d in dynamic)
            raise ModelFormatError("the TFLite interpreter cannot allocate the model at its placeholder input sizes",
                                   value=first_line(exc)[:200], fix=f"give its dynamic inputs a size: {names}") from None
        raise error from None


def _signature_inputs(interpreter: Any) -> dict[str, int]:
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    return {name: int(d["index"]) for name, d in runner.get_input_details().items()}


def _runtime(native: NativeModel, library: str) -> SourceRuntime:
    """The interpreter as the reference: one call per feed, inputs resized when their shape changes."""
    from ...runtime.backends.litert import invoke

    interpreter, _ = _interpreter(native.data, threads=1)
    shapes: dict[int, tuple[int, ...]] = {}
    ins, outs = native.details["input_indices"], native.details["output_indices"]

    def run(feed: Any) -> dict[str, np.ndarray]:
        return dict(zip(outs, invoke(interpreter, ins, list(outs.values()), shapes, feed)))

    return SourceRuntime(f"the TFLite interpreter ({library})", run, run)


def _convert(path: Path, native: NativeModel) -> tuple[onnx.ModelProto | None, EdgemillError | None, str | None]:
    """tf2onnx's conversion with the signature names, or the reason there is none."""
    if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("tensorflow") is None:
        return None, MissingDependencyError("converting a TFLite model to ONNX needs TensorFlow and tf2onnx",
                                            value="tf2onnx", fix="pip install 'edgemill[tensorflow]'"), None
    from ..graph import rename_io
    from .tensorflow import _import_tf, _refuse_unmapped, _tf2onnx_log

    _, tf2onnx = _import_tf()
    dense = densified(native.data)
    with _tf2onnx_log() as errors, tempfile.TemporaryDirectory(prefix="edgemill-tflite-") as folder:
        source = path
        if dense is not None:  # sparse weights made dense (_tflite_densify.py)
            source = Path(folder) / path.name
            source.write_bytes(dense)
        try:
            model, _ = tf2onnx.convert.from_tflite(str(source))
        except Exception as exc:  # noqa: BLE001 - tf2onnx raises bare Exceptions from its flatbuffer reader
            return None, ModelFormatError("tf2onnx cannot convert this TFLite model", value=str(path),
                                          fix=f"check the file loads in the TFLite interpreter ({first_line(exc)})"), None
    try:
        _refuse_unmapped(model, errors, path)
    except ModelFormatError as exc:
        return None, exc, tf2onnx.__version__
    tensor_to_name = {tensor: name for name, tensor in native.details["tensor_names"].items()}
    io = [v.name for v in list(model.graph.input) + list(model.graph.output)]
    if sorted(io) != sorted(tensor_to_name):
        return None, ModelFormatError("tf2onnx changed the model's inputs or outputs", value=", ".join(io)[:200],
                                      fix="report the model to us"), tf2onnx.__version__
    rename_io(model, {old: tensor_to_name[old] for old in io if tensor_to_name[old] != old})
    order = {s.name: i for i, s in enumerate(native.outputs)}  # keep the interpreter's output order
    outputs = sorted(model.graph.output, key=lambda v: order[v.name])
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return model, None, tf2onnx.__version__


def _tf_version() -> str | None:
    import sys

    tf = sys.modules.get("tensorflow")
    return getattr(tf, "__version__", None)


def load(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto | None, SourceInfo]:
    if not is_tflite(path):
        raise ModelFormatError("not a TFLite model", value=str(path), expected="a flatbuffer with identifier TFL3",
                               fix="pass the file written by tf.lite.TFLiteConverter")
    data = path.read_bytes()
    native, library = read_native(data, path, request)
    model, error, converter = _convert(path, native)
    renamed = {n: t for n, t in native.details["tensor_names"].items() if t != n}
    details: dict[str, Any] = {"format": "tflite", "quantized": native.precision != "fp32", "interpreter": library,
                               "names": renamed}
    if converter:
        details["tf2onnx"] = converter
    framework_version = details.get("tf2onnx") and _tf_version() or library.split()[-1]
    info = source_info(path, "tensorflow", framework_version, **details)
    info.native = native
    info.runtime = _runtime(native, library)
    info.conversion_error = error
    return model, info


register(Frontend("tflite", "TensorFlow Lite flatbuffer (.tflite), run by LiteRT or converted", is_tflite, load,
                  requires=("onnx",), extra="litert", priority=30, suffixes=(".tflite",)))
