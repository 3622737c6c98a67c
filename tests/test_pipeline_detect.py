"""Detector post-processing (edgemill.pipeline.detect): the ONNX graph against OpenCV's DNN YOLO sample on a
real model (yolov4-tiny from the corpus) and real photos (scikit-learn's sample images), the graph against
its NumPy reference, and the decoding's rules on small synthetic outputs whose answers are known.

The yolov4-tiny tests need the corpus (python bench/corpus/fetch.py); without it they skip, unless
EDGEMILL_CORPUS_REQUIRED=1 (CI), where they fail.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgemill.errors import OptionError
from edgemill.pipeline.detect import (
    DetectSpec,
    FrameGeometry,
    build_graph,
    check_fits,
    decode_numpy,
    output_specs,
)
from edgemill.tensors import TensorSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus.entries import load_entries

from .conftest import require_corpus

YOLOV4_TINY = next(e for e in load_entries() if e.id == "yolov4-tiny")
PHOTOS = ("china.jpg", "flower.jpg")
NET_SIZE = 416
# These photos hold few COCO objects: at a user's threshold (0.25) yolov4-tiny finds one box in china.jpg and
# none in flower.jpg. COCO's mAP evaluation keeps boxes down to 0.001-0.005; at 0.005 they give 3 and 20+
# detections, enough to exercise the class choice and the suppression.
CONFIDENCE = 0.005


def run_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row IoU of two N x 4 arrays of x1, y1, x2, y2."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])
    return w * h / (area(a) + area(b) - w * h)


def assert_same_detections(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-5, atol=1e-3)


# --- yolov4-tiny against OpenCV ---------------------------------------------------------------------


@dataclass
class Photo:
    frame: np.ndarray  # BGR, as cv2.imread gives it
    blob: np.ndarray  # 1 x 3 x 416 x 416, as OpenCV's YOLO sample makes it
    heads: dict[str, np.ndarray]  # our DarkNet ONNX graph's raw heads for the blob
    opencv_rows: np.ndarray  # OpenCV's decoded rows for the same blob: cx, cy, w, h, objectness, class scores


@dataclass
class Yolo:
    outputs: list[TensorSpec]
    heads: list[dict[str, Any]]
    photos: dict[str, Photo]


def require_yolo_and_opencv():  # type: ignore[no-untyped-def]
    """yolov4-tiny fetched and an OpenCV with its DarkNet importer (the reference), else skip saying why."""
    require_corpus(YOLOV4_TINY)
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip("this OpenCV has no DarkNet importer (OpenCV 5 dropped it); install opencv-python-headless<5")
    return cv2


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> Yolo:
    cv2 = require_yolo_and_opencv()
    import sklearn.datasets

    from edgemill.compiler.frontends import FrontendRequest, darknet
    from edgemill.compiler.graph import output_specs as model_output_specs

    cfg, weights = YOLOV4_TINY.path(), YOLOV4_TINY.partner_path()
    model, info = darknet.load(cfg, FrontendRequest())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    # OpenCV's Region layer zeroes class scores at or below its cfg's [yolo] thresh (default 0.2), which would
    # hide every candidate between CONFIDENCE and 0.2 from its sample; a copy of the cfg lowers it.
    opencv_cfg = tmp_path_factory.mktemp("opencv") / cfg.name
    opencv_cfg.write_text(cfg.read_text().replace("[yolo]\n", "[yolo]\nthresh=0.0001\n"))
    net = cv2.dnn.readNetFromDarknet(str(opencv_cfg), str(weights))
    images = Path(sklearn.datasets.__file__).parent / "images"
    photos = {}
    for photo in PHOTOS:
        frame = cv2.imread(str(images / photo))
        blob = cv2.dnn.blobFromImage(frame, 1 / 255, (NET_SIZE, NET_SIZE), swapRB=True, crop=False)
        heads = dict(zip(names, session.run(None, {"input": blob})))
        net.setInput(blob)
        rows = np.concatenate([np.asarray(o).reshape(-1, o.shape[-1]) for o in
                               net.forward(net.getUnconnectedOutLayersNames())])
        photos[photo] = Photo(frame, blob, heads, rows)
    return Yolo(model_output_specs(model), info.details["heads"], photos)


def opencv_detections(rows: np.ndarray, frame_h: int, frame_w: int, spec: DetectSpec
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes x1, y1, x2, y2 clipped to the frame, scores, classes), best first, as OpenCV's YOLO sample finds
    them (in float): class = argmax of row[5:], kept when its score > confidence, then NMSBoxesBatched (per
    class) or NMSBoxes (across classes)."""
    import cv2

    boxes, scores, classes = [], [], []
    for row in rows:
        class_scores = row[5:]
        class_id = int(np.argmax(class_scores))
        confidence = float(class_scores[class_id])
        if confidence > spec.confidence:
            cx, cy, w, h = row[0] * frame_w, row[1] * frame_h, row[2] * frame_w, row[3] * frame_h
            boxes.append((float(cx - w / 2), float(cy - h / 2), float(w), float(h)))
            scores.append(confidence)
            classes.append(class_id)
    if spec.per_class:
        kept = cv2.dnn.NMSBoxesBatched(boxes, scores, classes, spec.confidence, spec.iou)
    else:
        kept = cv2.dnn.NMSBoxes(boxes, scores, spec.confidence, spec.iou)
    kept = np.asarray(kept, np.int64).reshape(-1)
    kept = kept[np.argsort(-np.asarray(scores)[kept], kind="stable")]
    xywh = np.asarray(boxes, np.float64).reshape(-1, 4)[kept]
    corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    corners = np.clip(corners, 0, [frame_w, frame_h, frame_w, frame_h])
    return corners, np.asarray(scores)[kept], np.asarray(classes, np.int64)[kept]


@pytest.mark.slow
@pytest.mark.parametrize("per_class", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize("photo", PHOTOS)
def test_yolov4_tiny_detections_match_opencv(yolo: Yolo, photo: str, per_class: bool) -> None:
    """The same 416x416 blob (cv2.dnn.blobFromImage(img, 1/255, swapRB=True)) goes into our DarkNet ONNX graph
    and into OpenCV's readNetFromDarknet, so this compares the decoding and NMS only: OpenCV's sample
    decoding + NMSBoxes(Batched) against our graph on our raw heads, boxes in the original photo's pixels
    (stretch geometry, as blobFromImage resizes)."""
    p = yolo.photos[photo]
    spec = DetectSpec("darknet", confidence=CONFIDENCE, iou=0.45, max_detections=100, per_class=per_class)
    frame_h, frame_w = p.frame.shape[:2]
    geometry = FrameGeometry.stretch(frame_h, frame_w, NET_SIZE, NET_SIZE)
    got = run_graph(build_graph(spec, yolo.outputs, yolo.heads, geometry), p.heads)
    boxes, scores, classes = opencv_detections(p.opencv_rows, frame_h, frame_w, spec)
    count = int(got["count"][0])
    assert 2 <= len(scores) < spec.max_detections  # enough to prove something, none cut off
    assert count == len(scores)
    np.testing.assert_array_equal(got["classes"][0, :count], classes)
    assert iou(got["boxes"][0, :count].astype(np.float64), boxes).min() >= 0.99
    np.testing.assert_allclose(got["scores"][0, :count], scores, atol=1e-4)


def test_agnostic_nms_drops_what_per_class_keeps_on_a_real_photo(yolo: Yolo) -> None:
    """On flower.jpg, suppressing across classes removes boxes that overlap a better one of another class."""
    counts = {}
    for per_class in (True, False):
        spec = DetectSpec("darknet", confidence=CONFIDENCE, per_class=per_class)
        p = yolo.photos["flower.jpg"]
        counts[per_class] = int(decode_numpy(spec, p.heads, yolo.heads, FrameGeometry.identity(416, 416))["count"][0])
    assert counts[True] > counts[False]


@pytest.mark.slow
def test_yolov4_tiny_graph_equals_numpy_on_a_batch_of_two(yolo: Yolo) -> None:
    raw = {name: np.concatenate([yolo.photos[p].heads[name] for p in PHOTOS]) for name in yolo.photos[PHOTOS[0]].heads}
    batched = [TensorSpec(o.name, o.dtype, ("N", *o.shape[1:])) for o in yolo.outputs]
    geometry = FrameGeometry.letterbox(480, 640, NET_SIZE, NET_SIZE)
    for spec in (DetectSpec("darknet", confidence=CONFIDENCE),
                 DetectSpec("darknet", confidence=CONFIDENCE, per_class=False, coordinates="normalized", max_detections=10)):
        got = run_graph(build_graph(spec, batched, yolo.heads, geometry), raw)
        assert_same_detections(got, decode_numpy(spec, raw, yolo.heads, geometry))
        assert got["count"].shape == (2,) and (got["count"] >= 2).all()
    assert got["count"][1] == 10  # flower.jpg's 20 detections, cut to max_detections


# --- synthetic DarkNet heads: graph against NumPy, and against OpenVINO -----------------------------

SYNTHETIC_HEADS = [
    {"output": "yolo_3", "type": "yolo", "layer": 3, "classes": 3, "anchors": [[10, 14], [23, 27], [37, 58], [81, 82]],
     "mask": [1, 2, 3], "num": 4, "scale_x_y": 1.05, "new_coords": 0, "grid": [4, 4]},
    {"output": "region_7", "type": "region", "layer": 7, "classes": 3, "anchors": [[1.08, 1.19], [3.42, 4.41]],
     "num": 2, "coords": 4, "softmax": 1, "grid": [8, 8]},
]


def synthetic_heads(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"yolo_3": rng.normal(0, 2, (batch, 3 * 8, 4, 4)).astype(np.float32),
            "region_7": rng.normal(0, 2, (batch, 2 * 8, 8, 8)).astype(np.float32)}


SYNTHETIC_OUTPUTS = [TensorSpec("yolo_3", "float32", ("N", 24, 4, 4)), TensorSpec("region_7", "float32", ("N", 16, 8, 8))]


@pytest.mark.parametrize("spec", [
    DetectSpec("darknet", confidence=0.3),
    DetectSpec("darknet", confidence=0.3, per_class=False, coordinates="normalized", max_detections=7),
], ids=["per-class", "agnostic-normalized-max7"])
def test_darknet_graph_equals_numpy_on_a_batch(spec: DetectSpec) -> None:
    raw = synthetic_heads(batch=3)
    geometry = FrameGeometry.stretch(48, 96, 64, 64)
    got = run_graph(build_graph(spec, SYNTHETIC_OUTPUTS, SYNTHETIC_HEADS, geometry), raw)
    assert_same_detections(got, decode_numpy(spec, raw, SYNTHETIC_HEADS, geometry))
    assert (got["count"] >= 2).all()


def test_darknet_decoding_follows_the_frontend_formula() -> None:
    """One anchor, one cell, one class; the box from the documented formula, by hand."""
    heads = [{"output": "yolo_0", "type": "yolo", "classes": 1, "anchors": [[5, 5], [40, 20]], "mask": [1],
              "num": 2, "scale_x_y": 1.2, "new_coords": 0}]
    raw = np.zeros((1, 6, 2, 2), np.float32)
    raw[0, 4] = -20  # objectness ~0 everywhere ...
    raw[0, :, 1, 0] = [0.0, 1.0, np.log(2.0), 0.0, 20.0, 20.0]  # ... but at cell y=1, x=0
    spec = DetectSpec("darknet", confidence=0.5)
    out = decode_numpy(spec, {"yolo_0": raw}, heads, FrameGeometry.identity(64, 64))
    s, sig = 1.2, 1 / (1 + np.exp(-1.0))
    cx, cy = (0 + s * 0.5 - (s - 1) / 2) * 32, (1 + s * sig - (s - 1) / 2) * 32  # stride 64 / 2
    w, h = 2 * 40, 20
    assert out["count"][0] == 1
    want = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 64)  # x1 < 0 and y2 > 64: clipped
    assert want[0] == 0 and want[3] == 64
    np.testing.assert_allclose(out["boxes"][0, 0], want, rtol=1e-6)
    np.testing.assert_allclose(out["scores"][0, 0], 1 / (1 + np.exp(-20.0)) ** 2, rtol=1e-6)


def test_region_decoding_follows_the_frontend_formula() -> None:
    """YOLOv2's [region]: anchors in grid cells, softmax over the classes, times objectness."""
    heads = [{"output": "region_0", "type": "region", "classes": 2, "anchors": [[9, 9], [1.5, 0.5]], "num": 2,
              "coords": 4, "softmax": 1}]
    raw = np.zeros((1, 2 * 7, 2, 2), np.float32)
    raw[0, [4, 11]] = -20  # both anchors' objectness ~0 everywhere ...
    raw[0, 7:14, 0, 1] = [1.0, 0.0, np.log(2.0), 0.0, 20.0, 2.0, 0.0]  # ... but anchor 1 at cell y=0, x=1
    out = decode_numpy(DetectSpec("darknet", confidence=0.5), {"region_0": raw}, heads, FrameGeometry.identity(64, 64))
    cx, cy = (1 + 1 / (1 + np.exp(-1.0))) * 32, 0.5 * 32  # stride 64 / 2
    w, h = 2 * 1.5 * 32, 0.5 * 32
    assert out["count"][0] == 1 and out["classes"][0, 0] == 0
    np.testing.assert_allclose(out["boxes"][0, 0], np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 64),
                               rtol=1e-6)
    np.testing.assert_allclose(out["scores"][0, 0], np.exp(2) / (np.exp(2) + 1) / (1 + np.exp(-20.0)), rtol=1e-6)


def test_graph_converts_and_runs_with_openvino(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    spec = DetectSpec("darknet", confidence=0.3, max_detections=20)
    geometry = FrameGeometry.identity(64, 64)
    model = build_graph(spec, SYNTHETIC_OUTPUTS, SYNTHETIC_HEADS, geometry)
    path = tmp_path / "detect.onnx"
    path.write_bytes(model.SerializeToString())
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU")
    raw = synthetic_heads(batch=2, seed=1)
    result = compiled(raw)
    got = {name: result[compiled.output(name)] for name in ("boxes", "scores", "classes", "count")}
    assert_same_detections(got, run_graph(model, raw))


# --- the yolo-nc layout, geometry and NMS rules on known boxes ---------------------------------------


def yolo_nc(boxes: list[tuple[float, float, float, float]], scores: list[tuple[float, ...]], total: int = 12
            ) -> np.ndarray:
    """A 1 x (4+C) x total tensor: the given cx, cy, w, h and class scores, then boxes scoring 0."""
    out = np.zeros((1, 4 + len(scores[0]), total), np.float32)
    out[0, :4, :len(boxes)] = np.array(boxes, np.float32).T
    out[0, 4:, :len(boxes)] = np.array(scores, np.float32).T
    return out


def decode_both(spec: DetectSpec, tensor: np.ndarray, geometry: FrameGeometry) -> dict[str, np.ndarray]:
    """The graph's answer, after checking that NumPy gives the same."""
    outputs = [TensorSpec("output0", "float32", tensor.shape)]
    got = run_graph(build_graph(spec, outputs, None, geometry), {"output0": tensor})
    assert_same_detections(got, decode_numpy(spec, {"output0": tensor}, None, geometry))
    return got


def test_letterbox_geometry_maps_boxes_back_to_the_frame() -> None:
    # A 640x1280 frame in a 320x320 input: scale 0.25, resized to 160x320, 80 rows of padding above.
    geometry = FrameGeometry.letterbox(640, 1280, 320, 320)
    assert (geometry.scale_y, geometry.scale_x, geometry.pad_top, geometry.pad_left) == (0.25, 0.25, 80, 0)
    tensor = yolo_nc([(160, 160, 80, 40), (20, 90, 60, 40)], [(0.9, 0.0), (0.0, 0.8)])
    got = decode_both(DetectSpec("yolo-nc"), tensor, geometry)
    assert got["count"][0] == 2
    # (120, 140, 200, 180) in the input -> ((x - 0) / 0.25, (y - 80) / 0.25); the second box leaves the frame.
    np.testing.assert_array_equal(got["boxes"][0, :2], [[480, 240, 800, 400], [0, 0, 200, 120]])
    normalized = decode_both(DetectSpec("yolo-nc", coordinates="normalized"), tensor, geometry)
    np.testing.assert_array_equal(normalized["boxes"][0, :2], [[0.375, 0.375, 0.625, 0.625], [0, 0, 0.15625, 0.1875]])


def test_yolo_nc_reads_either_orientation() -> None:
    tensor = yolo_nc([(50, 50, 20, 20), (10, 10, 4, 4)], [(0.2, 0.7, 0.1), (0.6, 0.0, 0.3)])
    spec, geometry = DetectSpec("yolo-nc"), FrameGeometry.identity(100, 100)
    wide, tall = decode_both(spec, tensor, geometry), decode_both(spec, tensor.transpose(0, 2, 1).copy(), geometry)
    assert_same_detections(tall, wide)
    np.testing.assert_array_equal(wide["classes"][0, :2], [1, 0])
    np.testing.assert_allclose(wide["scores"][0, :2], [0.7, 0.6])
    np.testing.assert_array_equal(wide["boxes"][0, :2], [[40, 40, 60, 60], [8, 8, 12, 12]])


def test_per_class_nms_keeps_overlapping_boxes_of_two_classes_agnostic_does_not() -> None:
    tensor = yolo_nc([(50, 50, 40, 40), (52, 50, 40, 40), (54, 50, 40, 40)], [(0.9, 0.1), (0.1, 0.8), (0.7, 0.0)])
    geometry = FrameGeometry.identity(100, 100)
    per_class = decode_both(DetectSpec("yolo-nc"), tensor, geometry)
    agnostic = decode_both(DetectSpec("yolo-nc", per_class=False), tensor, geometry)
    assert per_class["count"][0] == 2 and per_class["classes"][0, :3].tolist() == [0, 1, -1]
    assert agnostic["count"][0] == 1 and agnostic["classes"][0, :2].tolist() == [0, -1]


def test_max_detections_keeps_the_best_and_pads_the_rest() -> None:
    boxes = [(10 + 20 * i, 50, 10, 10) for i in range(5)]  # apart: NMS keeps all
    tensor = yolo_nc(boxes, [(s, 0.0) for s in (0.5, 0.9, 0.6, 0.8, 0.7)])
    geometry = FrameGeometry.identity(100, 120)
    cut = decode_both(DetectSpec("yolo-nc", max_detections=3), tensor, geometry)
    assert cut["count"][0] == 3 and cut["scores"].shape == (1, 3)
    np.testing.assert_allclose(cut["scores"][0], [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(cut["boxes"][0, :, 0], [25, 65, 85])
    padded = decode_both(DetectSpec("yolo-nc", max_detections=8), tensor, geometry)
    assert padded["count"][0] == 5
    np.testing.assert_array_equal(padded["boxes"][0, 5:], 0)
    np.testing.assert_array_equal(padded["scores"][0, 5:], 0)
    np.testing.assert_array_equal(padded["classes"][0, 5:], -1)


def test_nothing_above_confidence_gives_count_zero_and_padding() -> None:
    tensor = yolo_nc([(50, 50, 10, 10)], [(0.2, 0.25)])
    got = decode_both(DetectSpec("yolo-nc", confidence=0.25, max_detections=4), tensor, FrameGeometry.identity(99, 99))
    assert got["count"].tolist() == [0]
    assert (got["boxes"] == 0).all() and (got["scores"] == 0).all() and (got["classes"] == -1).all()


def test_output_specs_and_graph_outputs_agree() -> None:
    spec = DetectSpec("yolo-nc", max_detections=5)
    outputs = [TensorSpec("output0", "float16", ("batch", 84, 8400))]
    want = [(o.name, o.shape) for o in output_specs(spec, outputs)]
    model = build_graph(spec, outputs, None, FrameGeometry.identity(640, 640))
    dims = lambda v: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
    assert [(v.name, dims(v)) for v in model.graph.output] == want
    assert want == [("boxes", ("batch", 5, 4)), ("scores", ("batch", 5)), ("classes", ("batch", 5)), ("count", ("batch",))]
    assert [(v.name, dims(v)) for v in model.graph.input] == [("output0", ("batch", 84, 8400))]
    assert {o.domain for o in model.opset_import} == {""}


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, words", [
    ({"layout": "ssd"}, ["unknown detection layout: 'ssd'", "darknet | yolo-nc", "Fix:"]),
    ({"confidence": 1.0}, ["confidence", "1.0", "0 <= confidence < 1"]),
    ({"iou": 0}, ["IoU", "0 < iou <= 1"]),
    ({"max_detections": 0}, ["max_detections", ": 0"]),
    ({"coordinates": "relative"}, ["'relative'", "pixel | normalized"]),
    ({"per_class": "yes"}, ["per_class", "'yes'"]),
], ids=["layout", "confidence", "iou", "max", "coordinates", "per_class"])
def test_spec_refuses_bad_values_naming_them(options: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(OptionError) as info:
        DetectSpec(**options)
    assert info.value.fix and "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_geometry_refuses_a_zero_scale() -> None:
    with pytest.raises(OptionError, match="scale_x.*0"):
        FrameGeometry(10, 10, 10, 10, 1.0, 0.0)


HEAD = SYNTHETIC_HEADS[0]


@pytest.mark.parametrize("layout, outputs, heads, words", [
    ("darknet", SYNTHETIC_OUTPUTS, None, ["needs the DarkNet heads", "heads", "yolo-nc"]),
    ("darknet", SYNTHETIC_OUTPUTS, [{**HEAD, "output": "yolo_9"}], ["'yolo_9' names no model output", "'yolo_3'"]),
    ("darknet", [TensorSpec("yolo_3", "float32", (1, 25, 4, 4))], [HEAD], ["[1, 25, 4, 4]", "[N, 24, H, W]"]),
    ("darknet", SYNTHETIC_OUTPUTS, [{**HEAD, "mask": [1, 7]}], ["incomplete or inconsistent", "IndexError"]),
    ("darknet", SYNTHETIC_OUTPUTS, [{**HEAD, "new_coords": 1}], ["new_coords=1"]),
    ("darknet", SYNTHETIC_OUTPUTS, [{**HEAD, "type": "gaussian_yolo"}], ["unknown type", "'gaussian_yolo'"]),
    ("darknet", SYNTHETIC_OUTPUTS, [HEAD, {**SYNTHETIC_HEADS[1], "classes": 2, "anchors": [[1, 1]] * 2}],
     ["'region_7' does not fit", "[N, 14, H, W]"]),
    ("yolo-nc", [TensorSpec("out", "float32", (1, 4, 8400))], None, ["4 rows per box", "at least 5"]),
    ("yolo-nc", [TensorSpec("out", "float32", (1, 84, 8400, 1))], None, ["3-D output", "[1, 84, 8400, 1]"]),
    ("yolo-nc", [TensorSpec("a", "float32", (1, 84, 8400)), TensorSpec("b", "float32", (1, 32, 160, 160))], None,
     ["exactly one output tensor and the model has 2", "'a'", "'b'"]),
    ("yolo-nc", [TensorSpec("out", "float32", ("N", "C", "B"))], None, ["fixes neither", "[N, C, B]"]),
    ("yolo-nc", [TensorSpec("out", "int64", (1, 84, 8400))], None, ["not floating point", "int64"]),
    ("yolo-nc", [TensorSpec("boxes", "float32", (1, 84, 8400))], None, ["name of a decoded output", "'boxes'", "rename"]),
], ids=["no-heads", "head-output-missing", "head-channels", "mask-out-of-range", "new-coords", "head-type",
        "second-head-channels", "nc-channels", "nc-rank", "nc-several", "nc-no-fixed-axis", "nc-dtype", "name-clash"])
def test_check_fits_refuses_outputs_the_spec_cannot_decode(layout: str, outputs: list[TensorSpec],
                                                           heads: list[dict[str, Any]] | None, words: list[str]) -> None:
    with pytest.raises(OptionError) as info:
        check_fits(DetectSpec(layout), outputs, heads)
    message = str(info.value)
    assert info.value.fix and "Fix:" in message and "\n" not in message
    for word in words:
        assert word in message
    with pytest.raises(OptionError):
        build_graph(DetectSpec(layout), outputs, heads, FrameGeometry.identity(64, 64))


def test_check_fits_accepts_what_build_graph_builds() -> None:
    check_fits(DetectSpec("darknet"), SYNTHETIC_OUTPUTS, SYNTHETIC_HEADS)
    check_fits(DetectSpec("yolo-nc"), [TensorSpec("output0", "float32", (1, 8400, 84))])
