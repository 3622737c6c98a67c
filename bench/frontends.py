"""Compile time and package size per source framework.

Builds one small model per framework installed here (skipping the rest, and saying so), compiles each
with `edgemill compile -t host` in its own process, and prints wall time and sizes:

    python bench/frontends.py [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _report import markdown_table  # bench/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parent.parent
# As in tests/conftest.py: a CUDA torch build imports triton, whose LLVM clashes with TensorFlow's.
sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


def make_onnx(out: Path) -> tuple[Path, list[str]]:
    import onnx

    from edgemill.demo import zoo

    path = out / "cnn.onnx"
    onnx.save(zoo.cnn(image=64, channels=(32, 64, 128)), str(path))
    return path, []


def make_torchscript(out: Path) -> tuple[Path, list[str]]:
    import torch

    model = _torch_cnn()
    path = out / "cnn.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 64, 64)), str(path))
    return path, ["--input", "input:1x3x64x64:float32"]


def make_exported_program(out: Path) -> tuple[Path, list[str]]:
    import torch

    path = out / "cnn.pt2"
    torch.export.save(torch.export.export(_torch_cnn(), (torch.zeros(1, 3, 64, 64),)), str(path))
    return path, []


def _torch_cnn():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for width in (32, 64, 128):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).eval()


def _keras_cnn():  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(0)
    layers: list = [keras.Input((64, 64, 3), name="input")]
    for width in (32, 64, 128):
        layers += [keras.layers.Conv2D(width, 3, padding="same"), keras.layers.BatchNormalization(),
                   keras.layers.ReLU(), keras.layers.MaxPooling2D()]
    return keras.Sequential([*layers, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])


def make_keras(out: Path) -> tuple[Path, list[str]]:
    path = out / "cnn.keras"
    _keras_cnn().save(path)
    return path, []


def make_saved_model(out: Path) -> tuple[Path, list[str]]:
    path = out / "saved_model"
    _keras_cnn().export(str(path), verbose=False)
    return path, []


def make_tflite(out: Path) -> tuple[Path, list[str]]:
    import tensorflow as tf

    path = out / "cnn.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(_keras_cnn()).convert())
    return path, []


def mxnet_python() -> str | None:
    """MXNet lives in its own environment (it needs numpy<1.24); see README "Install extras"."""
    for candidate in (os.environ.get("EDGEMILL_MXNET_PYTHON", ""), str(REPO / ".venv-mxnet" / "bin" / "python")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


_MXNET_CNN = """
import os, sys
os.environ.setdefault("MXNET_MKLDNN_ENABLED", "0")
import mxnet as mx
from mxnet import gluon
mx.random.seed(0)
net = gluon.nn.HybridSequential()
for width in (32, 64, 128):
    net.add(gluon.nn.Conv2D(width, 3, padding=1), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.MaxPool2D(2))
net.add(gluon.nn.GlobalAvgPool2D(), gluon.nn.Flatten(), gluon.nn.Dense(10))
net.initialize(mx.init.Xavier())
net.hybridize()
net(mx.nd.zeros((1, 3, 64, 64)))
net.export(sys.argv[1])
"""


def make_mxnet(out: Path) -> tuple[Path, list[str]]:
    python = mxnet_python()
    if python is None:
        raise LookupError("no MXNet environment (.venv-mxnet or EDGEMILL_MXNET_PYTHON)")
    subprocess.run([python, "-c", _MXNET_CNN, str(out / "cnn")], check=True, capture_output=True)
    return out / "cnn-symbol.json", ["--input", "data:1x3x64x64"]


def make_xgboost(out: Path) -> tuple[Path, list[str]]:
    import xgboost

    x, y = digits()
    path = out / "digits.json"
    xgboost.XGBClassifier(n_estimators=100, max_depth=4).fit(x, y).get_booster().save_model(str(path))
    return path, []


def make_lightgbm(out: Path) -> tuple[Path, list[str]]:
    import lightgbm

    x, y = digits()
    path = out / "digits.txt"
    lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(x, y).booster_.save_model(str(path))
    return path, []


def make_sklearn(out: Path) -> tuple[Path, list[str]]:
    from sklearn.ensemble import RandomForestClassifier

    x, y = digits()
    path = out / "forest.pkl"
    path.write_bytes(pickle.dumps(RandomForestClassifier(n_estimators=50, random_state=0).fit(x, y)))
    return path, ["--trust-pickle"]


def make_darknet(out: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    cfg = ["[net]\nwidth=64\nheight=64\nchannels=3\n"]
    weights = [np.array([0, 2, 5], np.int32).tobytes(), np.array([0], np.int64).tobytes()]
    c = 3
    for width in (16, 32, 64):
        cfg.append(f"[convolutional]\nbatch_normalize=1\nfilters={width}\nsize=3\nstride=1\npad=1\nactivation=leaky\n")
        cfg.append("[maxpool]\nsize=2\nstride=2\n")
        for n in (width, width, width):  # biases, scales, rolling mean
            weights.append(rng.normal(0, 0.1, n).astype(np.float32).tobytes())
        weights.append(rng.uniform(0.5, 1.5, width).astype(np.float32).tobytes())  # rolling variance
        weights.append(rng.normal(0, 0.1, width * c * 9).astype(np.float32).tobytes())
        c = width
    (out / "net.cfg").write_text("\n".join(cfg))
    (out / "net.weights").write_bytes(b"".join(weights))
    return out / "net.cfg", []


FRAMEWORKS: dict[str, tuple[str, Callable[[Path], tuple[Path, list[str]]]]] = {
    "onnx": ("onnx", make_onnx),
    "pytorch (TorchScript)": ("torch", make_torchscript),
    "pytorch (torch.export)": ("torch", make_exported_program),
    "xgboost": ("xgboost", make_xgboost),
    "lightgbm": ("lightgbm", make_lightgbm),
    "sklearn": ("sklearn", make_sklearn),
    "keras (.keras)": ("tensorflow", make_keras),
    "tensorflow (SavedModel)": ("tensorflow", make_saved_model),
    "tflite": ("tensorflow", make_tflite),
    "darknet": ("numpy", make_darknet),
    "mxnet": ("numpy", make_mxnet),
}


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="keep the models and packages here (default: a temporary directory)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="edgemill-frontends-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for label, (module, make) in FRAMEWORKS.items():
        if importlib.util.find_spec(module) is None:
            results.append({"framework": label, "skipped": f"{module} is not installed"})
            continue
        work = out / "".join(ch if ch.isalnum() else "_" for ch in label)
        work.mkdir(exist_ok=True)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # converters print summaries; keep stdout the table
                source, extra = make(work)
        except LookupError as exc:
            results.append({"framework": label, "skipped": str(exc)})
            continue
        package = work / f"{source.stem}.emp"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "edgemill", "compile", str(source), "-o", str(package),
                               "--no-measure", "-q", *extra], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            results.append({"framework": label, "error": proc.stderr.strip().splitlines()[-1]})
            continue
        size_in = sum(f.stat().st_size for f in work.rglob("*") if f != package and f.is_file())
        results.append({"framework": label, "compile_s": round(seconds, 2), "source_kib": round(size_in / 1024, 1),
                        "package_kib": round(package.stat().st_size / 1024, 1)})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [[r["framework"], f"{r['compile_s']:.2f}", f"{r['source_kib']:.1f}", f"{r['package_kib']:.1f}"]
            if "compile_s" in r else [r["framework"], r.get("skipped") or r.get("error", ""), "", ""] for r in results]
    print(markdown_table(rows, ["framework", "compile s (whole command)", "source KiB", "package KiB"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
