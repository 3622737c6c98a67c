"""TensorFlow frontends: SavedModel directories and Keras files (.keras, .h5), via tf2onnx (TFLite files
have their own frontend, ``tflite.py``).

Every format is converted in-process: Keras and SavedModel models become a ``tf.function`` with an explicit
input signature (from the model, or from ``--input``) that ``tf2onnx.convert.from_function`` freezes.
tf2onnx leaves an op it cannot map in the graph as the TensorFlow op; we refuse such a graph and name the op
and its node.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelFormatError, OptionError, first_line
from ...tensors import InputOverride
from ..context import SourceInfo
from ..graph import rename_io
from ..source import SourceRuntime
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


# --- shared plumbing ---------------------------------------------------------------------------


def _import_tf() -> tuple[Any, Any]:
    # TensorFlow prints C++ info lines at import; a compile should show only our own progress.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    from . import _tf2onnx_ops  # noqa: F401 - registers the ops tf2onnx lacks

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


def _load_error(kind: str, path: Path, exc: Exception) -> ModelFormatError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "safe_mode" in str(exc):
        return ModelFormatError(f"the {kind} holds Python code (a Lambda layer) that loading would run",
                                value=str(path), fix="pass --trust-pickle if you trust where the file came from")
    return ModelFormatError(f"cannot load the {kind}", value=str(path),
                            fix=f"pass a model saved by TensorFlow/Keras; custom layers must be importable ({text})")


# --- Keras ------------------------------------------------------------------------------------


def _load_keras2(path: Path, keras3_error: Exception) -> Any:
    """An HDF5 file written by Keras 2 that Keras 3 refuses (an LSTM's ``time_major``, older layer arguments,
    old Sequential layouts): Keras 2 itself (``tf_keras``) reads it. Keras 3's error is the one reported
    when Keras 2 cannot read it either, or is not installed."""
    if "safe_mode" in str(keras3_error) or importlib.util.find_spec("tf_keras") is None or read_head(path, 8) != HDF5_MAGIC:
        raise _load_error("Keras model", path, keras3_error) from None
    import tf_keras

    try:
        return tf_keras.models.load_model(str(path), compile=False)
    except Exception:  # noqa: BLE001
        raise _load_error("Keras model", path, keras3_error) from None


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
        net = _load_keras2(path, exc)
        keras = sys.modules["tf_keras"]

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
        if isinstance(result, dict):  # a dict of outputs: its keys are what the caller knows them by
            return {str(k): result[k] for k in sorted(result)}
        flat = tf.nest.flatten(result)
        keys = out_names if len(out_names) == len(flat) else [f"output_{i}" for i in range(len(flat))]
        return dict(zip(keys, flat))

    fn = tf.function(call, autograph=False)
    model = _convert_function(tf2onnx, fn, signature, path)
    info = source_info(path, "tensorflow", tf.__version__, format="keras" if zipfile.is_zipfile(path) else "h5",
                       keras=keras.__version__, tf2onnx=tf2onnx.__version__)
    info.runtime = _function_runtime(tf, fn, [s.name for s in signature], f"Keras {keras.__version__}")
    return model, info


def _function_runtime(tf: Any, fn: Any, names: list[str], what: str) -> SourceRuntime:
    """The traced TensorFlow function as the reference (the model's own kernels, no Python per layer)."""
    import numpy as np

    def run(feed: Any) -> dict[str, np.ndarray]:
        result = fn(*[tf.constant(feed[n]) for n in names])
        return {k: np.asarray(v) for k, v in result.items()}

    return SourceRuntime(f"{what} (TensorFlow {tf.__version__})", run, run)


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
        # An older SavedModel whose Python objects this TensorFlow cannot restore (optimizer state saved
        # by an older release, say) still holds its serving signature as a graph: read that instead.
        return _load_signature_graph(path, request, tf, tf2onnx, _load_error("SavedModel", path, exc))
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
    info.runtime = _function_runtime(tf, fn, [s.name for s in signature], f"SavedModel signature {key!r}")
    return model, info


def _load_signature_graph(path: Path, request: FrontendRequest, tf: Any, tf2onnx: Any,
                          restore_error: ModelFormatError) -> tuple[onnx.ModelProto, SourceInfo]:
    """The serving signature of a SavedModel read as a TF1 graph (no Python objects restored), frozen and
    converted; a session over the same graph is the reference."""
    import numpy as np

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
            signatures = dict(meta.signature_def)
            if not signatures:
                raise restore_error
            key = "serving_default" if "serving_default" in signatures else min(signatures)
            sig = signatures[key]
            inputs = {k: v.name for k, v in sig.inputs.items()}
            outputs = {k: v.name for k, v in sig.outputs.items()}
            from tf2onnx import tf_loader

            frozen = tf_loader.freeze_session(session, input_names=sorted(inputs.values()),
                                              output_names=sorted(outputs.values()))
            # Functions a TF2 signature calls (StatefulPartitionedCall) are inlined by grappler.
            frozen = tf_loader.tf_optimize(sorted(inputs.values()), sorted(outputs.values()), frozen)
    except ModelFormatError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelFormatError(restore_error.problem, value=restore_error.value,
                               fix=f"{restore_error.fix}; reading its signature as a graph failed too ({first_line(exc)})"
                               ) from None
    _check_override_names(list(inputs), request)
    shapes = {}
    for name in inputs:
        override = _override_for(name, request)
        if override is not None and override.shape is not None:
            shapes[inputs[name]] = [d if isinstance(d, int) and d > 0 else -1 for d in override.shape]
    with _tf2onnx_log() as errors:
        try:
            model, _ = tf2onnx.convert.from_graph_def(frozen, input_names=sorted(inputs.values()),
                                                      output_names=sorted(outputs.values()), shape_override=shapes or None)
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            raise ModelFormatError("tf2onnx cannot convert this SavedModel's signature graph", value=str(path),
                                   fix=f"check the model runs in TensorFlow ({first_line(exc)})") from None
    _refuse_unmapped(model, errors, path)
    rename_io(model, {tensor: name for name, tensor in {**inputs, **outputs}.items()})

    def run(feed: Any) -> dict[str, np.ndarray]:
        fetched = session.run(outputs, {inputs[n]: feed[n] for n in inputs})
        return {k: np.asarray(v) for k, v in fetched.items()}

    info = source_info(path, "tensorflow", tf.__version__, format="saved_model", signature=key,
                       signatures=sorted(signatures), tf2onnx=tf2onnx.__version__, loaded_as="tf1 signature graph",
                       names={name: tensor for name, tensor in {**inputs, **outputs}.items() if name != tensor})
    info.runtime = SourceRuntime(f"SavedModel signature {key!r} in a TF1 session (TensorFlow {tf.__version__})", run, run)
    return model, info


register(Frontend("tensorflow", "TensorFlow SavedModel (a directory with saved_model.pb)", is_saved_model,
                  load_saved_model, requires=REQUIRES, extra="tensorflow", priority=30, suffixes=("/",)))
register(Frontend("keras", "Keras model (.keras, .h5)", is_keras, load_keras, requires=REQUIRES, extra="tensorflow",
                  priority=30, suffixes=(".keras", ".h5")))
