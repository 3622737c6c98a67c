"""What pre- and post-processing in the package cost, against doing the same steps in the application.

    python bench/pipeline_overhead.py [--seconds 3] [--rounds 5] [--models cnn224,mobilenet224,yolov4-tiny]

For each model the package is compiled on the backend, precision and thread count tuning picks for the
plain model, with ``--preprocess`` (a 480x640 uint8 BGR camera frame ->
the model's input) and ``--postprocess`` (softmax + top-5 with 1000 class names; for the detector, YOLO
decoding + NMS), as ``edgemill compile`` does by default (an onnxruntime package runs the stages merged
into its model). In one process, in blocks of calls rotating between the sides (never call by call:
two sessions called alternately would each leave threads spinning through the other's run, which no
device does):

* ``model``: the plain package's model (``Model.run``) on an already pre-processed input;
* ``package``: the pipeline package on the frame (what the device runs);
* ``numpy``: the application's way: the same steps in NumPy (edgemill.pipeline's NumPy reference: float
  interpolation, as the package), the model alone, the NumPy post-processing;
* ``opencv``: pre-processing with ``cv2.resize`` on the uint8 frame (what most applications write; it
  rounds to uint8 after the resize), the model alone, the NumPy post-processing.

Printed per model: the median over rounds of each side's p50, and what the package's pipeline adds to
the model (the issue's target: <= 10 %). Models: ``cnn224``, the ResNet-style CNN of BENCHMARKS §4
(1x3x224x224, 1000 classes); ``mobilenet224``, the MobileNetV2-style CNN of §8 (a quarter of its
latency: a harder ratio); ``yolov4-tiny`` from the model corpus (``python bench/corpus/fetch.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

FRAME = (480, 640)
PRE = "frame=480x640 color=BGR scale=1/255 mean=0.485,0.456,0.406 std=0.229,0.224,0.225"
PRE_DETECTOR = "frame=480x640 color=BGR scale=1/255"
MODELS = ("cnn224", "mobilenet224", "yolov4-tiny")
BLOCK_S = 0.25


def _sources(folder: Path, wanted: list[str]) -> dict[str, dict[str, Any]]:
    import onnx

    from edgemill.demo import zoo

    out: dict[str, dict[str, Any]] = {}
    labels = folder / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    if "cnn224" in wanted:
        onnx.save(zoo.cnn(batch=1, image=224, channels=(32, 64, 128, 256), classes=1000), str(folder / "cnn224.onnx"))
        out["cnn224"] = {"model": folder / "cnn224.onnx", "pre": PRE, "post": ["softmax,topk=5"], "labels": labels}
    if "mobilenet224" in wanted:
        import torch

        from bench._models import build_torch

        net = build_torch("mobilenet").eval()
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(folder / "mobilenet224.onnx"), input_names=["input"],
                          output_names=["logits"], dynamo=False)
        classes = int(net(torch.zeros(1, 3, 224, 224)).shape[-1])
        names = folder / "mobilenet-labels.txt"
        names.write_text("\n".join(f"digit {i}" for i in range(classes)) + "\n")
        out["mobilenet224"] = {"model": folder / "mobilenet224.onnx", "pre": PRE, "post": ["softmax,topk=5"],
                               "labels": names}
    if "yolov4-tiny" in wanted:
        from bench.corpus.entries import load_entries

        entry = next(e for e in load_entries() if e.id == "yolov4-tiny")
        if not entry.fetched():
            print("yolov4-tiny: not fetched (python bench/corpus/fetch.py); skipped", file=sys.stderr)
        else:
            out["yolov4-tiny"] = {"model": entry.path(), "pre": PRE_DETECTOR, "post": ["yolo"], "labels": None}
    return out


def _compile(source: dict[str, Any], folder: Path, name: str) -> tuple[Path, Path, int | None]:
    """The plain package (tuned) and the pipeline package on the backend, precision and threads it picked."""
    import edgemill
    from edgemill.pipeline.spec import PipelineSpec, parse_postprocess, parse_preprocess, read_labels

    plain = edgemill.compile(source["model"], output=folder / f"{name}.emp")
    labels = read_labels(source["labels"]) if source["labels"] else ()
    spec = PipelineSpec((parse_preprocess(source["pre"]),), parse_postprocess(source["post"], labels))
    piped = edgemill.compile(source["model"], output=folder / f"{name}-pipeline.emp", backend=plain.manifest.backend,
                             precision=plain.manifest.precision, measure=False, pipeline=spec)
    print(f"{name}: {plain.manifest.backend}/{plain.manifest.precision} at "
          f"{plain.manifest.backend_options.get('threads')} thread(s); stages "
          f"{'merged into the model' if piped.manifest.pipeline.get('fused') else 'as separate graphs'}", flush=True)
    return Path(plain.path), Path(piped.path), plain.manifest.backend_options.get("threads")


def _sides(plain_path: Path, piped_path: Path, threads: int | None) -> dict[str, Callable[[], Any]]:
    import edgemill.runtime as rt
    from edgemill.compiler.pipeline_build import numpy_twin

    plain, piped = rt.load(plain_path, threads=threads), rt.load(piped_path, threads=threads)
    built = numpy_twin(piped.manifest)
    pre, image, stage = built.pre[0].spec, built.pre[0].image, built.layout.preprocess[0]
    frame = np.clip(np.random.default_rng(0).normal(128, 60, (1, *FRAME, 3)), 0, 255).astype(np.uint8)
    feed = {stage.input: frame}
    model_feed = built.to_model_feed(feed)
    mean = np.array(pre.channel_values("mean", 3), np.float32)
    std = np.array(pre.channel_values("std", 3), np.float32)

    def by_opencv() -> Any:
        import cv2

        resized = cv2.resize(frame[0], (image.width, image.height), interpolation=cv2.INTER_LINEAR)
        planar = (resized[:, :, ::-1].astype(np.float32) * np.float32(pre.scale) - mean) / std
        return built.post_numpy(plain.run({image.name: planar.transpose(2, 0, 1)[None].copy()}))

    sides: dict[str, Callable[[], Any]] = {
        "model": lambda: plain.run(model_feed),
        "package": lambda: piped.run(feed),
        "numpy": lambda: built.post_numpy(plain.run(built.to_model_feed(feed))),
    }
    try:
        import cv2  # noqa: F401

        sides["opencv"] = by_opencv
    except ImportError:
        pass
    return sides


def _round(sides: dict[str, Callable[[], Any]], seconds: float) -> dict[str, float]:
    """Each side's median call, over blocks of ``BLOCK_S`` per side in turn for about ``seconds``."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    deadline = time.perf_counter() + seconds
    while min(len(v) for v in times.values()) < 20 or time.perf_counter() < deadline:
        for name, call in sides.items():
            call()  # the first call after a switch pays for the other side's threads going idle: not counted
            block_end = time.perf_counter() + BLOCK_S
            while time.perf_counter() < block_end:
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) * 1000 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args(argv)
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown[0]!r}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="edgemill-pipeline-") as tmp:
        folder = Path(tmp)
        for name, source in _sources(folder, wanted).items():
            plain_path, piped_path, threads = _compile(source, folder, name)
            sides = _sides(plain_path, piped_path, threads)
            _round(sides, 0.5)  # warm-up
            rounds = [_round(sides, args.seconds) for _ in range(args.rounds)]
            p50 = {k: statistics.median(r[k] for r in rounds) for k in sides}
            model = p50["model"]
            parts = "   ".join(f"{k} {v:7.3f} ms (+{(v - model) / model * 100:5.1f} %)" for k, v in p50.items() if k != "model")
            print(f"{name:<13} model {model:7.3f} ms   {parts}   | rounds: "
                  + "; ".join(f"{k} {[round(r[k], 3) for r in rounds]}" for k in sides), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
