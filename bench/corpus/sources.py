"""Each corpus model run by the framework that made it, written independently of edgemill's frontends
(the package must match these outputs, not edgemill's own idea of the source).

``open_source(entry, threads)`` returns a :class:`Source`: ``run(feed)`` takes the package's inputs by name
and returns outputs by the package's names (or, for frameworks without output names, in package order),
and ``call(feed)`` is the fastest idiomatic call a user of that framework would time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .entries import Entry

Feed = dict[str, np.ndarray]


@dataclass
class Source:
    name: str
    run: Callable[[Feed], dict[str, np.ndarray] | list[np.ndarray]]
    call: Callable[[Feed], Any]
    # Where ``run`` is stricter than what the framework's users run by default (onnxruntime with its
    # optimizations off), the default configuration, outputs as ``run`` gives them: how far the two differ
    # is the source's own spread, which the comparison allows (as the compiler's gate does).
    default_run: Callable[[Feed], dict[str, np.ndarray] | list[np.ndarray]] | None = None


def open_source(entry: Entry, threads: int | None = None) -> Source:
    return _OPENERS[entry.format](entry, threads)


# --- feeds -----------------------------------------------------------------------------------------

def make_feed(entry: Entry, inputs: list[dict[str, Any]], seed: int = 0) -> Feed:
    """Seeded inputs for the package's input specs (name, dtype, shape[, value]), drawn as the entry says."""
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for spec in inputs:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"])
        if "value" in spec:
            feed[spec["name"]] = np.full(shape, spec["value"], dtype=dtype)
            continue
        recipe = entry.feeds.get(spec["name"]) or entry.feeds.get("*") or ("normal" if dtype.kind == "f" else "ints(0,2)")
        feed[spec["name"]] = _draw(recipe, shape, dtype, rng)
    return feed


def _draw(recipe: str, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    match = re.fullmatch(r"(\w+)(?:\(([^)]*)\))?", recipe.strip())
    if not match:
        raise ValueError(f"bad feed recipe {recipe!r}")
    kind, args = match.group(1), [float(a) for a in (match.group(2) or "").split(",") if a.strip()]
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "uniform":
        x = rng.uniform(args[0], args[1], shape)
    elif kind == "ints":
        x = rng.integers(int(args[0]), int(args[1]), shape)
    elif kind == "bytes":
        x = rng.integers(0, 256, shape)
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "onehot":
        x = np.zeros(shape)
        if shape:
            hot = rng.integers(0, shape[-1], shape[:-1])
            np.put_along_axis(x, hot[..., None], 1.0, axis=-1)
    else:
        raise ValueError(f"unknown feed recipe {recipe!r}")
    return x.astype(dtype)


# --- ONNX: onnxruntime on the file as published ----------------------------------------------------

def _onnx(entry: Entry, threads: int | None) -> Source:
    import onnxruntime as ort

    def session(level: Any) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 4
        if threads:
            so.intra_op_num_threads = threads
        return ort.InferenceSession(str(entry.path()), so, providers=["CPUExecutionProvider"])

    exact, fast = session(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), session(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    names = [o.name for o in exact.get_outputs()]

    def runner(session: Any) -> Callable[[Feed], dict[str, np.ndarray]]:
        def run(feed: Feed) -> dict[str, np.ndarray]:
            out = {}
            for name, value in zip(names, session.run(names, feed)):
                if isinstance(value, list) and value and isinstance(value[0], dict):  # ZipMap: rows of {class: p}
                    keys = sorted(value[0])
                    value = np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
                out[name] = np.asarray(value)
            return out
        return run

    return Source(f"onnxruntime {ort.__version__}", runner(exact), lambda feed: fast.run(None, feed),
                  default_run=runner(fast))


# --- TFLite: the LiteRT interpreter ----------------------------------------------------------------

def _tflite(entry: Entry, threads: int | None) -> Source:
    from ai_edge_litert.interpreter import Interpreter

    def interpreter(n: int) -> tuple[Any, dict[str, int], dict[str, int]]:
        it = Interpreter(model_path=str(entry.path()), num_threads=n)
        sigs = it.get_signature_list()
        if len(sigs) == 1:
            runner = it.get_signature_runner(next(iter(sigs)))
            ins = {k: v["index"] for k, v in runner.get_input_details().items()}
            outs = {k: v["index"] for k, v in runner.get_output_details().items()}
        else:
            ins = {d["name"].removesuffix(":0"): d["index"] for d in it.get_input_details()}
            outs = {d["name"].removesuffix(":0"): d["index"] for d in it.get_output_details()}
        return it, ins, outs

    def runner(n: int) -> Callable[[Feed], dict[str, np.ndarray]]:
        it, ins, outs = interpreter(n)
        shapes: dict[int, tuple[int, ...]] = {}

        def run(feed: Feed) -> dict[str, np.ndarray]:
            changed = False
            for name, index in ins.items():
                if shapes.get(index) != feed[name].shape:
                    it.resize_tensor_input(index, list(feed[name].shape), strict=False)
                    shapes[index] = feed[name].shape
                    changed = True
            if changed:
                it.allocate_tensors()
            for name, index in ins.items():
                it.set_tensor(index, feed[name])
            it.invoke()
            return {name: it.get_tensor(index) for name, index in outs.items()}

        return run

    exact = runner(1)
    return Source("LiteRT interpreter", exact, runner(threads or os.cpu_count() or 1))


# --- Keras and SavedModel: TensorFlow ----------------------------------------------------------------

def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _keras(entry: Entry, threads: int | None) -> Source:
    tf = _tf()
    try:
        import keras

        model = keras.models.load_model(str(entry.path()), compile=False)
    except Exception:  # noqa: BLE001 - a Keras 2 file Keras 3 cannot read: Keras 2 (tf_keras) reads it
        import tf_keras as keras

        model = keras.models.load_model(str(entry.path()), compile=False)
    names = [t.name.split(":")[0] for t in model.inputs]
    out_names = list(getattr(model, "output_names", None) or [])

    @tf.function(autograph=False)
    def fn(*args: Any) -> Any:
        return model(list(args) if len(args) > 1 else args[0], training=False)

    def run(feed: Feed) -> dict[str, np.ndarray] | list[np.ndarray]:
        result = fn(*[tf.constant(feed[n]) for n in names])
        if isinstance(result, dict):
            return {k: np.asarray(v) for k, v in result.items()}
        flat = [np.asarray(x) for x in tf.nest.flatten(result)]
        return dict(zip(out_names, flat)) if len(out_names) == len(flat) else flat

    return Source(f"Keras on TensorFlow {tf.__version__}", run, lambda feed: fn(*[feed[n] for n in names]))


def _saved_model(entry: Entry, threads: int | None) -> Source:
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(entry.path()))
        sig = loaded.signatures["serving_default"]
        names = list(sig.structured_input_signature[1])

        def run(feed: Feed) -> dict[str, np.ndarray]:
            return {k: np.asarray(v) for k, v in sig(**{n: tf.constant(feed[n]) for n in names}).items()}

        return Source(f"TensorFlow {tf.__version__}", run, lambda feed: sig(**{n: feed[n] for n in names}))
    except Exception:  # noqa: BLE001 - objects this TensorFlow cannot restore: the TF1 loader runs the signature
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(entry.path()))
        sig_def = meta.signature_def["serving_default"]
        ins = {k: v.name for k, v in sig_def.inputs.items()}
        outs = {k: v.name for k, v in sig_def.outputs.items()}

        def run_v1(feed: Feed) -> dict[str, np.ndarray]:
            return session.run(outs, {ins[n]: feed[n] for n in ins})

        return Source(f"TensorFlow {tf.__version__} (TF1 session)", run_v1, run_v1)


# --- PyTorch -----------------------------------------------------------------------------------------

def _torchscript(entry: Entry, threads: int | None) -> Source:
    import torch

    module = torch.jit.load(str(entry.path()), map_location="cpu").eval()
    if entry.member:
        for part in entry.member.split("."):
            module = getattr(module, part)
    names = [a.name for a in module.forward.schema.arguments[1:]]

    def call(feed: Feed) -> Any:
        with torch.no_grad():
            return module(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names if n in feed])

    def run(feed: Feed) -> list[np.ndarray]:
        return [x.numpy() for x in torch.utils._pytree.tree_leaves(call(feed))]

    return Source(f"PyTorch {torch.__version__}", run, call)


# --- DarkNet: OpenCV's importer ----------------------------------------------------------------------

def _darknet(entry: Entry, threads: int | None) -> Source:
    import cv2

    if threads:
        cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(entry.path()), str(entry.partner_path()))
    layers = list(net.getLayerNames())
    heads = [layers[i - 2] for i, n in enumerate(layers) if net.getLayer(n).type == "Region"]
    wanted = heads or list(net.getUnconnectedOutLayersNames())

    def run(feed: Feed) -> list[np.ndarray]:
        net.setInput(feed["input"])
        return [np.asarray(x) for x in net.forward(wanted)]

    def call(feed: Feed) -> Any:  # what an OpenCV user runs: the decoded detections
        net.setInput(feed["input"])
        return net.forward(list(net.getUnconnectedOutLayersNames()))

    return Source(f"OpenCV {cv2.__version__} DNN", run, call)


# --- trees and scikit-learn --------------------------------------------------------------------------

def _classifier(p: np.ndarray, classes: int | None = None) -> dict[str, np.ndarray]:
    """A classifier's outputs as the package names them: the label and a probability per class."""
    if p.ndim == 1:  # binary: the probability of class 1
        p = np.stack([1 - p, p], axis=1)
    return {"label": p.argmax(1).astype(np.int64), "probabilities": p.astype(np.float32)}


def _xgboost_booster(booster: Any, what: str) -> Source:
    import xgboost as xgb

    objective = __import__("json").loads(booster.save_config())["learner"]["objective"]["name"]
    names = booster.feature_names

    def predict(x: np.ndarray) -> np.ndarray:
        return booster.predict(xgb.DMatrix(x, feature_names=names))

    def run(feed: Feed) -> dict[str, np.ndarray]:
        p = predict(feed["input"])
        if objective.startswith(("binary:", "multi:")):
            return _classifier(p)
        return {"variable": p.astype(np.float32)}

    return Source(f"{what} (XGBoost {xgb.__version__})", run, lambda feed: booster.inplace_predict(feed["input"]))


def _xgboost(entry: Entry, threads: int | None) -> Source:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(entry.path()))
    if threads:
        booster.set_param({"nthread": threads})
    return _xgboost_booster(booster, "Booster")


def _lightgbm(entry: Entry, threads: int | None) -> Source:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(entry.path()))
    objective = booster.dump_model().get("objective", "")

    def run(feed: Feed) -> dict[str, np.ndarray]:
        p = booster.predict(feed["input"])
        if objective.startswith(("binary", "multiclass")):
            return _classifier(p)
        return {"variable": p.astype(np.float32)}

    kwargs = {"num_threads": threads} if threads else {}
    return Source(f"LightGBM {lgb.__version__}", run, lambda feed: booster.predict(feed["input"], **kwargs))


def _sklearn(entry: Entry, threads: int | None) -> Source:
    import warnings

    import joblib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = joblib.load(entry.path())
    if type(model).__module__.startswith("xgboost"):
        return _xgboost_booster(model, "pickled Booster")
    import sklearn

    def run(feed: Feed) -> dict[str, np.ndarray]:
        x = feed["input"]
        if hasattr(model, "predict_proba"):
            return {"label": np.asarray(model.predict(x)).astype(np.int64),
                    "probabilities": model.predict_proba(x).astype(np.float32)}
        return {"variable": np.asarray(model.predict(x), dtype=np.float32).reshape(len(x), -1)}

    call = (lambda feed: model.predict_proba(feed["input"])) if hasattr(model, "predict_proba") else \
        (lambda feed: model.predict(feed["input"]))
    return Source(f"scikit-learn {sklearn.__version__}", run, call)


_OPENERS: dict[str, Callable[[Entry, int | None], Source]] = {
    "onnx": _onnx, "tflite": _tflite, "keras": _keras, "saved_model": _saved_model, "torchscript": _torchscript,
    "darknet": _darknet, "xgboost": _xgboost, "lightgbm": _lightgbm, "sklearn": _sklearn,
}
