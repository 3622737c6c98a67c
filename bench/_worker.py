"""One runtime on one model, in its own process: time single calls, then (optionally) run a held-out
set and save the first output of every sample. ``bench/run.py`` starts one of these per measurement.

    python bench/_worker.py RUNTIME MODEL --feed FEED.npz --threads 2 --duration 3 [--eval EVAL.npz --save OUT.npy]

RUNTIME is one of:

* ``torch``: PyTorch eager; MODEL is a state_dict (``.pt``) of the ``bench/_models.py`` model named by
  ``--arch``, run under ``torch.inference_mode()``.
* ``ort``: an onnxruntime session with its defaults except the intra-op thread count; MODEL is ``.onnx``
  (the exported original, or onnxruntime's own static INT8 model).
* ``openvino-fp32`` / ``openvino-default``: OpenVINO's CPU plugin compiling the ``.onnx``, with
  ``INFERENCE_PRECISION_HINT=f32`` or with its default (bf16 on a CPU with AVX-512 BF16), and the thread count.
  Given a QDQ model (onnxruntime's static INT8), OpenVINO runs the quantized operations as INT8 under
  either; ``openvino-fp32`` keeps the rest in f32, as onnxruntime runs it.
* ``edgemill``: ``edgemill.runtime.load(PKG)`` and ``model.run(feed)``: the package's own backend and its
  tuned thread count.
* ``xgboost``: the XGBoost booster's ``inplace_predict`` (the native library a tree user would call).

Prints one JSON line: latency percentiles in ms, load time, and the runtime's versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ort_baseline import time_calls  # noqa: E402 - the loop `edgemill bench` and the other scripts time with


Outputs = list[np.ndarray]


def load_runtime(kind: str, model: str, threads: int, arch: str | None) -> tuple[Callable[[dict[str, np.ndarray]], Outputs], str]:
    """Returns (call: feed -> outputs, version string)."""
    if kind == "torch":
        import torch

        import _models

        torch.set_num_threads(threads)
        net = _models.build_torch(arch or "")
        net.load_state_dict(torch.load(model, weights_only=True))
        net.eval()

        def run_torch(feed: dict[str, np.ndarray]) -> Outputs:
            (x,) = feed.values()
            with torch.inference_mode():
                return [net(torch.from_numpy(x)).numpy()]

        return run_torch, f"torch {torch.__version__}"
    if kind == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        return (lambda feed: session.run(None, feed)), f"onnxruntime {ort.__version__}"
    if kind in ("openvino-fp32", "openvino-default"):
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
        if kind == "openvino-fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")

        def run_ov(feed: dict[str, np.ndarray]) -> Outputs:
            return list(request.infer(feed).values())

        return run_ov, f"openvino {ov.get_version().split('-')[0]} ({getattr(precision, 'to_string', lambda: precision)()})"
    if kind == "edgemill":
        import edgemill
        import edgemill.runtime as rt

        pkg = rt.load(model)
        def run_edgemill(feed: dict[str, np.ndarray]) -> Outputs:
            return list(pkg.run(feed).values())

        manifest = pkg.manifest
        chosen = f"{manifest.backend} {manifest.precision}, threads={pkg.threads}"
        return run_edgemill, f"edgemill {edgemill.__version__} ({chosen})"
    if kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(model)
        booster.set_param({"nthread": threads})

        def run_xgb(feed: dict[str, np.ndarray]) -> Outputs:
            (x,) = feed.values()
            return [np.asarray(booster.inplace_predict(x))]

        return run_xgb, f"xgboost {xgb.__version__}"
    raise SystemExit(f"unknown runtime {kind!r}")


def scores(outputs: Outputs) -> np.ndarray:
    """The output to compare: the first float output with a class axis (a tree model's probabilities, not
    its label), else the first output."""
    for out in outputs:
        out = np.asarray(out)
        if out.dtype.kind == "f" and out.ndim == 2 and out.shape[1] >= 2:
            return out.astype(np.float32)
    return np.asarray(outputs[0], dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runtime")
    p.add_argument("model")
    p.add_argument("--feed", required=True, help=".npz with one timing input per model input")
    p.add_argument("--arch", help="bench/_models.py name, for --runtime torch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--eval", help=".npz of held-out inputs [N, ...] per input name, run one sample at a time")
    p.add_argument("--save", help="where to write the first output of every held-out sample (.npy)")
    args = p.parse_args(argv)

    with np.load(args.feed) as f:
        feed = {k: f[k] for k in f.files}
    started = time.perf_counter()
    call, version = load_runtime(args.runtime, args.model, args.threads, args.arch)
    load_ms = (time.perf_counter() - started) * 1000
    times = np.array(time_calls(lambda: call(feed), args.duration)) * 1000  # ms
    result = {"runtime": args.runtime, "version": version, "load_ms": round(load_ms, 1), "iterations": len(times),
              "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
              "p99_ms": float(np.percentile(times, 99))}
    if args.eval and args.save:
        with np.load(args.eval) as f:
            held_out = {k: f[k] for k in f.files}
        n = len(next(iter(held_out.values())))
        outputs = [scores(call({k: v[i:i + 1] for k, v in held_out.items()})) for i in range(n)]
        np.save(args.save, np.concatenate([o.reshape(1, -1) for o in outputs]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
