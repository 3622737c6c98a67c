"""TensorFlow frontends: SavedModel directories, Keras files (.keras, .h5) and TFLite flatbuffers, via tf2onnx.

Every format is converted in-process: Keras and SavedModel models become a ``tf.function`` with an explicit
input signature (from the model, or from ``--input``) that ``tf2onnx.convert.from_function`` freezes;
``.tflite`` files go through ``tf2onnx.convert.from_tflite``. tf2onnx leaves an op it cannot map in the graph
as the TensorFlow op; we refuse such a graph and name the op and its node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelFormatError, OptionError
from ...tensors import InputOverride
from ..context import SourceInfo
from . import Frontend, FrontendRequest, read_head, register, source_info

if TYPE_CHECKING:
    import onnx

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
REQUIRES = ("tensorflow", "tf2onnx", "onnx")
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_RUNTIME_DOMAINS = ("com.microsoft",)  # contrib ops onnxruntime runs itself


# --- detection: cheap, no TensorFlow import ----------------------------------------------------


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())


def is_keras(path: Path) -> bool:
    if not path.is_file():
        return False
    if read_head(path, 8) == HDF5_MAGIC:
        return True
    if path.suffix.lower() != ".keras" and read_head(path, 4) != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def is_tflite(path: Path) -> bool:
    return read_head(path, 8)[4:8] == b"TFL3"


# --- shared plumbing ---------------------------------------------------------------------------


def _import_tf() -> tuple[Any, Any]:
    # TensorFlow prints C++ info lines at import; a compile should show only our own progress.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    return tf, tf2onnx


@contextlib.contextmanager
def _tf2onnx_log() -> Iterator[list[str]]:
    """Keep tf2onnx's log (tracebacks for ops it cannot map) off the console; hand back why ops failed."""
    logger = logging.getLogger("tf2onnx")
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR and record.exc_info and record.exc_info[1] is not None:
                errors.append(str(record.exc_info[1]).strip())

    handler = Collect()
    old = logger.level, logger.propagate, logger.handlers[:]
    logger.handlers[:] = [handler]
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield errors
    finally:
        logger.setLevel(old[0])
        logger.propagate = old[1]
        logger.handlers[:] = old[2]


def _plain(name: str) -> str:
    """TensorFlow tensor names carry ':0'; users (and ONNX) want the bare name."""
    return re.sub(r":0$", "", name)


def _override_for(name: str, request: FrontendRequest) -> InputOverride | None:
    return next((o for o in request.inputs if _plain(o.name) == _plain(name)), None)


def _check_override_names(names: list[str], request: FrontendRequest) -> None:
    known = {_plain(n) for n in names}
    for o in request.inputs:
        if _plain(o.name) not in known:
            raise OptionError("--input names an input the model does not have", value=o.name,
                              expected="one of " + ", ".join(repr(_plain(n)) for n in names),
                              fix="use one of the model's input names")


def _spec(tf: Any, name: str, shape: Any, dtype: Any, request: FrontendRequest) -> Any:
    """The TensorSpec for one input: the model's, with the shape ``--input`` gives (symbols stay dynamic)."""
    override = _override_for(name, request)
    if override is not None:
        shape = [d if isinstance(d, int) and d >= 0 else None for d in override.shape]
    return tf.TensorSpec(shape, dtype, name=_plain(name))


def _convert_function(tf2onnx: Any, fn: Any, signature: list[Any], path: Path) -> onnx.ModelProto:
    with _tf2onnx_log() as errors:
        try:
            model, _ = tf2onnx.convert.from_function(fn, input_signature=signature)
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            raise ModelFormatError("tf2onnx cannot convert this model", value=str(path),
                                   fix=f"check the model runs in TensorFlow with these inputs ({exc})") from None
    _refuse_unmapped(model, errors, path)
    return model


def _refuse_unmapped(model: onnx.ModelProto, errors: list[str], path: Path) -> None:
    """tf2onnx keeps an op it cannot map as the raw TensorFlow op: name the first such node."""
    import onnx

    def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
        for node in graph.node:
            yield node
            for attr in node.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    yield from walk(g)

    def known(node: onnx.NodeProto) -> bool:
        if node.domain in _RUNTIME_DOMAINS:
            return True
        domain = "" if node.domain == "ai.onnx" else node.domain
        return node.domain in _STANDARD_DOMAINS and onnx.defs.has(node.op_type, domain)

    bad = [n for n in walk(model.graph) if not known(n)]
    if not bad:
        return
    ops = sorted({n.op_type for n in bad})
    why = next((e.splitlines()[0] for e in errors if e), None)
    raise ModelFormatError(
        f"tf2onnx cannot map TensorFlow op {bad[0].op_type!r} (node {bad[0].name!r}) to ONNX",
        value=", ".join(ops),
        expected="ops tf2onnx supports (https://github.com/onnx/tensorflow-onnx/blob/main/support_status.md)",
        fix="replace that op in the model with supported ones, or export the model to ONNX yourself"
            + (f" (tf2onnx: {why})" if why else ""),
    )


def _rename_io(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs (and every reference to them) in place."""
    g = model.graph
    for v in list(g.input) + list(g.output):
        if v.name in names:
            v.name = names[v.name]
    for node in g.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name in names:
                    seq[i] = names[name]


def _load_error(kind: str, path: Path, exc: Exception) -> ModelFormatError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "safe_mode" in str(exc):
        return ModelFormatError(f"the {kind} holds Python code (a Lambda layer) that loading would run",
                                value=str(path), fix="pass --trust-pickle if you trust where the file came from")
    return ModelFormatError(f"cannot load the {kind}", value=str(path),
                            fix=f"pass a model saved by TensorFlow/Keras; custom layers must be importable ({text})")


# --- Keras ------------------------------------------------------------------------------------


def load_keras(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    if not is_keras(path):
        raise ModelFormatError("not a Keras model file", value=str(path),
                               expected="a .keras zip with config.json, or a Keras .h5 (HDF5) file",
                               fix="pass the file written by model.save(...), or pick the right --framework")
    tf, tf2onnx = _import_tf()
    import keras

    try:
        net = keras.models.load_model(str(path), compile=False, safe_mode=not request.trust_pickle)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a bad file
        raise _load_error("Keras model", path, exc) from None

    model_inputs = list(getattr(net, "inputs", None) or [])
    if model_inputs:
        names = [_plain(t.name) for t in model_inputs]
        _check_override_names(names, request)
        signature = [_spec(tf, n, t.shape, t.dtype, request) for n, t in zip(names, model_inputs)]
    elif len(request.inputs) == 1:  # a subclassed model records no inputs: the user names the one it takes
        o = request.inputs[0]
        signature = [_spec(tf, o.name, None, o.dtype or "float32", request)]
    else:
        raise ModelFormatError("the Keras model does not record its inputs (a subclassed model)", value=str(path),
                               fix="pass its input with --input NAME:SHAPE[:DTYPE], e.g. --input x:Nx28x28x1")

    out_names = list(getattr(net, "output_names", None) or [])

    def call(*args: Any) -> dict[str, Any]:
        result = net(list(args) if len(args) > 1 else args[0], training=False)
        flat = tf.nest.flatten(result)
        keys = out_names if len(out_names) == len(flat) else [f"output_{i}" for i in range(len(flat))]
        return dict(zip(keys, flat))

    fn = tf.function(call, autograph=False)
    model = _convert_function(tf2onnx, fn, signature, path)
    info = source_info(path, "tensorflow", tf.__version__, format="keras" if zipfile.is_zipfile(path) else "h5",
                       keras=keras.__version__, tf2onnx=tf2onnx.__version__)
    return model, info


# --- SavedModel -------------------------------------------------------------------------------


def load_saved_model(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    if not is_saved_model(path):
        raise ModelFormatError("not a TensorFlow SavedModel", value=str(path),
                               expected="a directory holding saved_model.pb",
                               fix="pass the directory written by tf.saved_model.save or model.export(...)")
    tf, tf2onnx = _import_tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TF raises OSError, ValueError, OpError...
        raise _load_error("SavedModel", path, exc) from None
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ModelFormatError("the SavedModel has no serving signature", value=str(path),
                               fix="save it with tf.saved_model.save(obj, dir, signatures=...) or model.export(dir)")
    key = "serving_default" if "serving_default" in signatures else min(signatures)
    sig = signatures[key]
    kwargs = sig.structured_input_signature[1]
    names = list(kwargs)
    _check_override_names(names, request)
    signature = [_spec(tf, n, kwargs[n].shape, kwargs[n].dtype, request) for n in names]

    def call(*args: Any) -> Any:
        return sig(**dict(zip(names, args)))

    fn = tf.function(call, autograph=False)
    model = _convert_function(tf2onnx, fn, signature, path)
    info = source_info(path, "tensorflow", tf.__version__, format="saved_model", signature=key,
                       signatures=sorted(signatures), tf2onnx=tf2onnx.__version__)
    return model, info


# --- TFLite -----------------------------------------------------------------------------------


def _tflite_name(name: str) -> str:
    # The TFLite converter names tensors after the SavedModel signature ("serving_default_image:0").
    return re.sub(r"^serving_default_", "", _plain(name))


def load_tflite(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    if not is_tflite(path):
        raise ModelFormatError("not a TFLite model", value=str(path), expected="a flatbuffer with identifier TFL3",
                               fix="pass the file written by tf.lite.TFLiteConverter")
    tf, tf2onnx = _import_tf()
    with _tf2onnx_log() as errors:
        try:
            model, _ = tf2onnx.convert.from_tflite(str(path))
        except Exception as exc:  # noqa: BLE001 - tf2onnx raises bare Exceptions from its flatbuffer reader
            raise ModelFormatError("tf2onnx cannot convert this TFLite model", value=str(path),
                                   fix=f"check the file loads in tf.lite.Interpreter ({exc})") from None
    _refuse_unmapped(model, errors, path)
    io = [v.name for v in list(model.graph.input) + list(model.graph.output)]
    clean = {n: _tflite_name(n) for n in io}
    if len(set(clean.values())) == len(clean):
        _rename_io(model, {old: new for old, new in clean.items() if old != new})
    _check_override_names([v.name for v in model.graph.input], request)
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    info = source_info(path, "tensorflow", tf.__version__, format="tflite", quantized=quantized,
                       tf2onnx=tf2onnx.__version__)
    return model, info


register(Frontend("tensorflow", "TensorFlow SavedModel (a directory with saved_model.pb)", is_saved_model,
                  load_saved_model, requires=REQUIRES, extra="tensorflow", priority=30, suffixes=("/",)))
register(Frontend("keras", "Keras model (.keras, .h5)", is_keras, load_keras, requires=REQUIRES, extra="tensorflow",
                  priority=30, suffixes=(".keras", ".h5")))
register(Frontend("tflite", "TensorFlow Lite flatbuffer (.tflite)", is_tflite, load_tflite, requires=REQUIRES,
                  extra="tensorflow", priority=30, suffixes=(".tflite",)))
