"""A detector's post-processing: raw YOLO outputs -> boxes, scores and classes, as an ONNX graph and in NumPy.

Two layouts of raw outputs (:data:`LAYOUTS`):

* ``darknet``: the heads the DarkNet frontend leaves undecoded (``yolo_<i>`` / ``region_<i>``, each
  ``N x A*(5+C) x H x W``), decoded as that frontend's docstring documents; ``heads`` are the frontend's
  ``heads`` source details (anchors, mask, classes...). A candidate's class scores are objectness * class
  probability.
* ``yolo-nc``: one tensor ``N x (4+C) x B`` as ultralytics YOLOv8 exports it, or its transpose
  ``N x B x (4+C)``: cx, cy, w, h in model-input pixels, then C class scores. The class axis is the one
  with a fixed size, or the shorter one when both are fixed (a detector has far more boxes than classes).

Each candidate box takes one class, the argmax of its scores (as OpenCV's YOLO sample does), and stays a
candidate when that score is above ``confidence``. Non-maximum suppression runs within each class
(``per_class``, like ``cv2.dnn.NMSBoxesBatched``) or over all candidates (like ``cv2.dnn.NMSBoxes``), on
the boxes mapped back to the original frame (:class:`FrameGeometry`) before they are clipped to it. The
survivors come out sorted by score, at most ``max_detections`` per image, as fixed-shape tensors
(:func:`output_specs`): ``boxes`` [N, M, 4] x1, y1, x2, y2; ``scores`` [N, M]; ``classes`` [N, M] int64;
``count`` [N] int64. Rows past ``count`` are padding: boxes 0, score 0, class -1.

:func:`build_graph` writes this as an ONNX model (opset 17, default domain) whose inputs are the raw
outputs it reads; :func:`decode_numpy` computes the same in NumPy. Both take any batch size. Nothing here
imports onnx until :func:`build_graph` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OptionError
from ..tensors import TensorSpec, dtype_name
from ._onnx import stage_model

OPSET = 17
LAYOUTS = ("darknet", "yolo-nc")
COORDINATES = ("pixel", "normalized")
MAX_DETECTIONS = 10000
OUTPUTS = ("boxes", "scores", "classes", "count")
HEADS_FIX = "pass the heads the DarkNet frontend records (the package's source details, key 'heads')"

Heads = Sequence[Mapping[str, Any]]


# --- what the user asks for, and where the frame went ------------------------------------------


@dataclass(frozen=True)
class DetectSpec:
    """How to turn raw detector outputs into detections; validated when built."""

    layout: str = "darknet"
    confidence: float = 0.25
    iou: float = 0.45
    max_detections: int = 100
    per_class: bool = True
    coordinates: str = "pixel"

    def __post_init__(self) -> None:
        _one_of("layout", self.layout, LAYOUTS,
                "use darknet for a DarkNet .cfg model, yolo-nc for a YOLOv8-style ONNX export")
        _one_of("coordinates", self.coordinates, COORDINATES, "use pixel (original frame) or normalized (0..1)")
        if not _is_number(self.confidence) or not 0 <= self.confidence < 1:
            raise OptionError("detection confidence out of range", value=self.confidence, expected="0 <= confidence < 1",
                              fix="e.g. confidence=0.25", field="confidence")
        if not _is_number(self.iou) or not 0 < self.iou <= 1:
            raise OptionError("NMS IoU threshold out of range", value=self.iou, expected="0 < iou <= 1",
                              fix="e.g. iou=0.45", field="iou")
        if not isinstance(self.max_detections, int) or isinstance(self.max_detections, bool) \
                or not 1 <= self.max_detections <= MAX_DETECTIONS:
            raise OptionError("max_detections out of range", value=self.max_detections,
                              expected=f"an integer 1..{MAX_DETECTIONS}", fix="e.g. max_detections=100",
                              field="max_detections")
        if not isinstance(self.per_class, bool):
            raise OptionError("per_class must be true or false", value=self.per_class,
                              fix="per_class=True suppresses within each class, False across classes", field="per_class")


@dataclass(frozen=True)
class FrameGeometry:
    """How the original frame was placed in the model input: ``model_px = frame_px * scale + pad`` per axis,
    so a box maps back as ``frame = (model_px - pad) / scale`` and is then clipped to the frame."""

    frame_height: int
    frame_width: int
    model_height: int
    model_width: int
    scale_y: float
    scale_x: float
    pad_top: float = 0.0
    pad_left: float = 0.0

    def __post_init__(self) -> None:
        for name in ("frame_height", "frame_width", "model_height", "model_width"):
            size = getattr(self, name)
            if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
                raise OptionError(f"frame geometry {name} must be a positive integer", value=size, field=name,
                                  fix="give sizes in pixels, e.g. FrameGeometry.stretch(480, 640, 416, 416)")
        for name in ("scale_y", "scale_x", "pad_top", "pad_left"):
            value = getattr(self, name)
            if not _is_number(value) or not np.isfinite(value) or (name.startswith("scale") and value <= 0):
                raise OptionError(f"frame geometry {name} must be a finite number (scales above 0)", value=value,
                                  field=name, fix="scale = model size / frame size; pad = border before the image")

    @classmethod
    def identity(cls, height: int, width: int) -> FrameGeometry:
        """The frame was fed to the model as it is (``height x width`` is the model input)."""
        return cls(height, width, height, width, 1.0, 1.0)

    @classmethod
    def stretch(cls, frame_height: int, frame_width: int, model_height: int, model_width: int) -> FrameGeometry:
        """The frame was resized to the model input, each axis on its own (``cv2.resize``, ``blobFromImage``)."""
        return cls(frame_height, frame_width, model_height, model_width,
                   model_height / frame_height, model_width / frame_width)

    @classmethod
    def letterbox(cls, frame_height: int, frame_width: int, model_height: int, model_width: int) -> FrameGeometry:
        """One scale keeps the aspect ratio; the image is centred, pads ``(model - frame*scale) / 2`` unrounded
        (a preprocessing that rounds its sizes builds its own :class:`FrameGeometry`)."""
        scale = min(model_height / frame_height, model_width / frame_width)
        return cls(frame_height, frame_width, model_height, model_width, scale, scale,
                   (model_height - frame_height * scale) / 2, (model_width - frame_width * scale) / 2)

    def box_constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pad, scale, frame size) per x1, y1, x2, y2 column, float32."""
        pad = np.array([self.pad_left, self.pad_top] * 2, np.float32)
        scale = np.array([self.scale_x, self.scale_y] * 2, np.float32)
        size = np.array([self.frame_width, self.frame_height] * 2, np.float32)
        return pad, scale, size


# --- DarkNet heads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    """One [yolo]/[region] head as the decoding needs it: the anchors it uses (``yolo``: model pixels,
    ``region``: grid cells), and how its class scores are activated."""

    output: str
    kind: str
    classes: int
    anchors: tuple[tuple[float, float], ...]
    scale_x_y: float
    softmax: bool

    def constants(self, grid_h: int, grid_w: int, net_h: int, net_w: int) -> tuple[np.ndarray, ...]:
        """(mul, add, anchors), float32, with ``xy = sigmoid(t_xy) * mul + add`` and ``wh = exp(t_wh) * anchors``
        in model pixels; shaped to broadcast over ``N x A x H x W x 2`` (last axis x, y)."""
        stride = np.array([net_w / grid_w, net_h / grid_h])
        s = self.scale_x_y
        gy, gx = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
        cells = np.stack([gx, gy], axis=-1)[None, None]
        anchors = np.array(self.anchors, np.float64) * (stride if self.kind == "region" else 1.0)
        return ((s * stride).astype(np.float32), ((cells - (s - 1) / 2) * stride).astype(np.float32),
                anchors.reshape(1, -1, 1, 1, 2).astype(np.float32))


def _parse_head(raw: Mapping[str, Any]) -> _Head:
    name = raw.get("output", "?") if isinstance(raw, Mapping) else "?"
    try:
        kind, output, classes = str(raw["type"]), str(raw["output"]), int(raw["classes"])
        pairs = [(float(w), float(h)) for w, h in raw["anchors"]]
        if kind == "yolo":
            if int(raw.get("new_coords", 0)) != 0:
                raise OptionError(f"DarkNet head {name!r} uses new_coords=1, which is not decoded here",
                                  value=raw.get("new_coords"), expected="new_coords=0 (YOLOv3/v4 heads)",
                                  fix="decode this model's outputs in the application")
            anchors = tuple(pairs[m] for m in raw["mask"])
            return _Head(output, kind, classes, anchors, float(raw.get("scale_x_y", 1.0)), False)
        if kind == "region":
            if int(raw.get("coords", 4)) != 4:
                raise OptionError(f"DarkNet head {name!r} has coords={raw.get('coords')}", value=raw.get("coords"),
                                  expected="coords=4", fix="decode this model's outputs in the application")
            num = int(raw["num"])
            if len(pairs) < num:
                raise IndexError(num)
            return _Head(output, kind, classes, tuple(pairs[:num]), 1.0, bool(int(raw.get("softmax", 0))))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise OptionError(f"DarkNet head {name!r} is incomplete or inconsistent ({type(exc).__name__}: {exc})",
                          value=dict(raw) if isinstance(raw, Mapping) else raw,
                          expected="output, type, classes, anchors and mask (yolo) or num (region)",
                          fix=HEADS_FIX) from None
    raise OptionError(f"DarkNet head {name!r} has an unknown type", value=raw.get("type"), expected="yolo | region",
                      fix=HEADS_FIX)


# --- which outputs the decoding reads (one plan per layout) ---------------------------------------


@dataclass(frozen=True)
class _HeadInput:
    head: _Head
    tensor: TensorSpec
    height: int
    width: int


@dataclass(frozen=True)
class _DarknetPlan:
    heads: tuple[_HeadInput, ...]
    classes: int

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(h.tensor for h in self.heads)

    def box_table(self, geometry: FrameGeometry) -> np.ndarray:
        """Per box (heads in order, then anchor, row, column): the decoding's constants, float32
        ``[B, 6]``: xy multiplier (x, y), xy offset (x, y), anchor size (w, h), all in model pixels."""
        rows = []
        for h in self.heads:
            mul, add, anchors = h.head.constants(h.height, h.width, geometry.model_height, geometry.model_width)
            a = len(h.head.anchors)
            shape = (a, h.height, h.width, 2)
            parts = [np.broadcast_to(mul, shape), np.broadcast_to(add[0], shape), np.broadcast_to(anchors[0], shape)]
            rows.append(np.concatenate(parts, axis=-1).reshape(-1, 6))
        return np.ascontiguousarray(np.concatenate(rows), np.float32)

    def candidates_numpy(self, outputs: Mapping[str, np.ndarray], geometry: FrameGeometry
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, best = [], []
        for h in self.heads:
            raw = np.asarray(outputs[h.tensor.name], np.float32)
            n, a, per = raw.shape[0], len(h.head.anchors), 5 + h.head.classes
            t = raw.reshape(n, a, per, h.height * h.width).transpose(0, 1, 3, 2).reshape(n, -1, per)
            rows.append(t)
            best.append(_best_numpy(h.head, t))
        t = np.concatenate(rows, axis=1)
        table = self.box_table(geometry)
        with np.errstate(over="ignore"):
            xy = _sigmoid(t[..., 0:2]) * table[:, 0:2] + table[:, 2:4]
            wh = np.exp(t[..., 2:4]) * table[:, 4:6]
        return np.concatenate([xy, wh], axis=-1), np.concatenate(best, axis=1), t[..., 5:].argmax(axis=-1)

    def rows_graph(self, g: _Nodes) -> tuple[str, str]:
        rows, best = [], []
        for h in self.heads:
            a, per = len(h.head.anchors), 5 + h.head.classes
            x = g.op("Reshape", g.as_float(h.tensor), g.const(np.array([0, a, per, h.height * h.width], np.int64)))
            t = g.op("Reshape", g.op("Transpose", x, perm=[0, 1, 3, 2]), g.const(np.array([0, -1, per], np.int64)))
            rows.append(t)
            best.append(_best_graph(g, h.head, t))
        if len(self.heads) == 1:
            return rows[0], best[0]
        return g.op("Concat", *rows, axis=1), g.op("Concat", *best, axis=1)

    def decode_graph(self, g: _Nodes, picked: str, box: str, geometry: FrameGeometry) -> tuple[str, str]:
        consts = g.op("Gather", g.const(self.box_table(geometry)), box, axis=0)
        xy = g.op("Add", g.op("Mul", g.op("Sigmoid", g.last_axis(picked, 0, 2)), g.last_axis(consts, 0, 2)),
                  g.last_axis(consts, 2, 4))
        wh = g.op("Mul", g.op("Exp", g.last_axis(picked, 2, 4)), g.last_axis(consts, 4, 6))
        cls = g.op("ArgMax", g.last_axis(picked, 5, 5 + self.classes), axis=1, keepdims=0)
        return g.op("Concat", xy, wh, axis=-1), cls


def _best_numpy(head: _Head, t: np.ndarray) -> np.ndarray:
    """A box's best class score, objectness times the class probability, from its raw row: the activations
    are increasing, so the best score is that of the largest raw class value (computed on it alone)."""
    objectness = _sigmoid(t[..., 4])
    top = t[..., 5:].max(axis=-1)
    if head.softmax:  # softmax's largest value is 1 / sum(exp(x - max))
        top = np.float32(1) / np.exp(t[..., 5:] - top[..., None]).sum(axis=-1)
    elif head.kind == "yolo":
        top = _sigmoid(top)
    return objectness * top


def _best_graph(g: _Nodes, head: _Head, t: str) -> str:
    objectness = g.op("Sigmoid", g.op("Gather", t, g.const(np.array(4, np.int64)), axis=2))
    cls = g.last_axis(t, 5, 5 + head.classes)
    top = g.op("ReduceMax", cls, axes=[2], keepdims=0)
    if head.softmax:
        total = g.op("ReduceSum", g.op("Exp", g.op("Sub", cls, g.op("Unsqueeze", top, g.const(np.array([2], np.int64))))),
                     g.const(np.array([2], np.int64)), keepdims=0)
        top = g.op("Reciprocal", total)
    elif head.kind == "yolo":
        top = g.op("Sigmoid", top)
    return g.op("Mul", objectness, top)


@dataclass(frozen=True)
class _YoloNcPlan:
    tensor: TensorSpec
    channels_first: bool
    classes: int

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (self.tensor,)

    def candidates_numpy(self, outputs: Mapping[str, np.ndarray], geometry: FrameGeometry
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(outputs[self.tensor.name], np.float32)
        if self.channels_first:
            x = x.transpose(0, 2, 1)
        scores = x[..., 4:4 + self.classes]
        return x[..., 0:4], scores.max(axis=-1), scores.argmax(axis=-1)

    def rows_graph(self, g: _Nodes) -> tuple[str, str]:
        x = g.as_float(self.tensor)
        if self.channels_first:
            x = g.op("Transpose", x, perm=[0, 2, 1])
        return x, g.op("ReduceMax", g.last_axis(x, 4, 4 + self.classes), axes=[2], keepdims=0)

    def decode_graph(self, g: _Nodes, picked: str, box: str, geometry: FrameGeometry) -> tuple[str, str]:
        cls = g.op("ArgMax", g.last_axis(picked, 4, 4 + self.classes), axis=1, keepdims=0)
        return g.last_axis(picked, 0, 4), cls


_Plan = _DarknetPlan | _YoloNcPlan
FLOAT_DTYPES = ("float32", "float16")


def _darknet_plan(outputs: Sequence[TensorSpec], heads: Heads | None) -> _Plan:
    if not heads:
        raise OptionError("layout darknet needs the DarkNet heads (anchors, mask, classes) and got none",
                          value=list(heads or []), expected="one entry per [yolo]/[region] layer",
                          fix=HEADS_FIX + "; a model that outputs decoded boxes takes layout yolo-nc")
    by_name = {o.name: o for o in outputs}
    planned = []
    for head in (_parse_head(raw) for raw in heads):
        tensor = by_name.get(head.output)
        if tensor is None:
            raise OptionError(f"DarkNet head {head.output!r} names no model output", value=head.output,
                              expected="one of " + ", ".join(repr(n) for n in by_name),
                              fix="pass the heads recorded for this model (the package's source details)")
        channels = len(head.anchors) * (5 + head.classes)
        shape = tensor.shape
        if len(shape) != 4 or shape[1] != channels or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            raise OptionError(f"output {tensor.name!r} does not fit its DarkNet head", value=tensor.shape_text(),
                              expected=f"[N, {channels}, H, W] ({len(head.anchors)} anchors x (5 + {head.classes} "
                                       "classes)), H and W fixed", fix=HEADS_FIX + " for this very model")
        if tensor.dtype not in FLOAT_DTYPES:
            raise OptionError(f"output {tensor.name!r} is not floating point", value=tensor.dtype,
                              expected=" or ".join(FLOAT_DTYPES), fix="decode the float outputs of the detector")
        planned.append(_HeadInput(head, tensor, int(shape[2]), int(shape[3])))
    classes = {h.head.classes for h in planned}
    if len(classes) != 1:
        raise OptionError("the DarkNet heads disagree on the number of classes", value=sorted(classes),
                          expected="one number of classes for all heads", fix=HEADS_FIX)
    if 0 in classes:
        raise OptionError("the DarkNet heads have no classes", value="classes=0", expected="classes >= 1",
                          fix="a detector without classes is not decoded here; decode it in the application")
    return _DarknetPlan(tuple(planned), classes.pop())


def _yolo_nc_plan(outputs: Sequence[TensorSpec], heads: Heads | None) -> _Plan:
    if len(outputs) != 1:
        raise OptionError(f"layout yolo-nc reads exactly one output tensor and the model has {len(outputs)}",
                          value=[o.name for o in outputs], expected="one N x (4+C) x B output",
                          fix="export the detector with its detection tensor as the only output")
    (tensor,) = outputs
    shape = tensor.shape
    if len(shape) != 3:
        raise OptionError(f"layout yolo-nc needs a 3-D output, and {tensor.name!r} is {tensor.shape_text()}",
                          value=tensor.shape_text(), expected="N x (4+C) x B or N x B x (4+C)",
                          fix="use layout darknet for DarkNet heads, or decode this output in the application")
    fixed = [isinstance(d, int) and d > 0 for d in shape[1:]]
    if not any(fixed):
        raise OptionError(f"output {tensor.name!r} fixes neither its class nor its box axis", value=tensor.shape_text(),
                          expected="N x (4+C) x B with 4+C fixed", fix="compile with --input shapes that fix them")
    channels_first = fixed[0] and (not fixed[1] or int(shape[1]) <= int(shape[2]))
    channels = int(shape[1] if channels_first else shape[2])
    if channels < 5:
        raise OptionError(f"output {tensor.name!r} has {channels} rows per box", value=tensor.shape_text(),
                          expected="at least 5: cx, cy, w, h and one class score per box",
                          fix="check the layout: yolo-nc is N x (4+C) x B as YOLOv8 exports it")
    if tensor.dtype not in FLOAT_DTYPES:
        raise OptionError(f"output {tensor.name!r} is not floating point", value=tensor.dtype,
                          expected=" or ".join(FLOAT_DTYPES), fix="decode the float outputs of the detector")
    return _YoloNcPlan(tensor, channels_first, channels - 4)


PLANS: dict[str, Callable[[Sequence[TensorSpec], Heads | None], _Plan]] = {
    "darknet": _darknet_plan,
    "yolo-nc": _yolo_nc_plan,
}


def check_fits(spec: DetectSpec, model_outputs: Sequence[TensorSpec], heads: Heads | None = None) -> None:
    """Raise a one-line :class:`OptionError` (value and fix) when ``spec`` cannot decode these outputs."""
    _plan(spec, model_outputs, heads)


def _plan(spec: DetectSpec, model_outputs: Sequence[TensorSpec], heads: Heads | None) -> _Plan:
    plan = PLANS[spec.layout](model_outputs, heads)
    clash = [t.name for t in plan.inputs if t.name in OUTPUTS]
    if clash:
        raise OptionError("a detector output has the name of a decoded output", value=clash[0],
                          expected="names other than " + ", ".join(OUTPUTS),
                          fix="rename the detector's output (e.g. onnx.utils or the exporter's output_names)")
    return plan


def class_count(spec: DetectSpec, model_outputs: Sequence[TensorSpec], heads: Heads | None = None) -> int:
    """How many classes the detector tells apart (what a labels file must name)."""
    return _plan(spec, model_outputs, heads).classes


def output_specs(spec: DetectSpec, model_outputs: Sequence[TensorSpec], heads: Heads | None = None
                 ) -> list[TensorSpec]:
    """The decoded outputs: boxes, scores, classes and count, batch as the model's."""
    batch = _plan(spec, model_outputs, heads).inputs[0].shape[0]
    m = spec.max_detections
    return [TensorSpec("boxes", "float32", (batch, m, 4)), TensorSpec("scores", "float32", (batch, m)),
            TensorSpec("classes", "int64", (batch, m)), TensorSpec("count", "int64", (batch,))]


# --- NumPy --------------------------------------------------------------------------------------


def decode_numpy(spec: DetectSpec, outputs: Mapping[str, np.ndarray], heads: Heads | None,
                 geometry: FrameGeometry) -> dict[str, np.ndarray]:
    """The detections from raw outputs (name -> array), computed in NumPy as :func:`build_graph`'s model does."""
    specs = [TensorSpec(name, dtype_name(np.asarray(a).dtype), tuple(np.shape(a))) for name, a in outputs.items()]
    plan = _plan(spec, specs, heads)
    centers, best, cls = plan.candidates_numpy(outputs, geometry)
    return _select_numpy(spec, geometry, centers, best, cls)


def _select_numpy(spec: DetectSpec, geometry: FrameGeometry, centers: np.ndarray, best: np.ndarray, cls: np.ndarray
                  ) -> dict[str, np.ndarray]:
    pad, scale, size = geometry.box_constants()
    half = centers[..., 2:4] * np.float32(0.5)
    corners = (np.concatenate([centers[..., 0:2] - half, centers[..., 0:2] + half], axis=-1) - pad) / scale
    n, m = best.shape[0], spec.max_detections
    out = {"boxes": np.zeros((n, m, 4), np.float32), "scores": np.zeros((n, m), np.float32),
           "classes": np.full((n, m), -1, np.int64), "count": np.zeros(n, np.int64)}
    for i in range(n):
        candidates = np.flatnonzero(best[i] > spec.confidence)
        groups = ([candidates[cls[i, candidates] == c] for c in np.unique(cls[i, candidates])] if spec.per_class
                  else [candidates])
        kept = np.full(best.shape[1], -1.0, np.float32)  # below any score: marks the suppressed
        for group in groups:
            chosen = group[_greedy_nms(corners[i, group], best[i, group], spec.iou, m)]
            kept[chosen] = best[i, chosen]
        order = np.argsort(-kept, kind="stable")[:m]
        order = order[kept[order] >= 0]
        k = len(order)
        boxes = np.minimum(np.maximum(corners[i, order], np.float32(0)), size)
        out["boxes"][i, :k] = boxes / size if spec.coordinates == "normalized" else boxes
        out["scores"][i, :k], out["classes"][i, :k], out["count"][i] = kept[order], cls[i, order], k
    return out


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Positions of the boxes kept, best first: a box is dropped when its IoU with a kept one is above
    ``iou`` (ONNX NonMaxSuppression's rule), at most ``limit`` kept."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        inter = (np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
                 * np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0))
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[overlap <= iou]
    return np.array(keep, np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(1) / (np.float32(1) + np.exp(-x))


# --- ONNX ---------------------------------------------------------------------------------------


class _Nodes:
    """The nodes and constants of the graph being built, each under a fresh name."""

    def __init__(self) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.FLOAT, self.INT64 = TensorProto.FLOAT, TensorProto.INT64
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"detect_{stem}_{self._count}"

    def const(self, array: np.ndarray) -> str:
        name = self.fresh("const")
        self.inits.append(self._numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d 0-d
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        return self.ops(op_type, *inputs, outs=[out or self.fresh(op_type.lower())], **attrs)[0]

    def ops(self, op_type: str, *inputs: str, outs: list[str], **attrs: Any) -> list[str]:
        self.nodes.append(self._helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs

    def filled(self, shape: str, value: float) -> str:
        """A float32 tensor of the runtime shape ``shape``, every element ``value``."""
        return self.op("ConstantOfShape", shape, value=self._numpy_helper.from_array(np.array([value], np.float32)))

    def as_float(self, tensor: TensorSpec) -> str:
        return tensor.name if tensor.dtype == "float32" else self.op("Cast", tensor.name, to=self.FLOAT)

    def last_axis(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", x, self.const(np.array([start], np.int64)), self.const(np.array([end], np.int64)),
                       self.const(np.array([-1], np.int64)))


def build_graph(spec: DetectSpec, model_outputs: Sequence[TensorSpec], heads: Heads | None,
                geometry: FrameGeometry) -> Any:
    """An ``onnx.ModelProto``: inputs are the raw outputs the layout reads (names, dtypes and shapes from
    ``model_outputs``), outputs as :func:`output_specs` says.

    Only the boxes above ``confidence`` are decoded: each box's best score is computed from its largest
    raw class value (every box), then the candidates' rows are gathered and decoded (a few dozen of the
    thousands a detector outputs), and NMS sees only them."""
    import onnx
    from onnx import helper

    plan = _plan(spec, model_outputs, heads)
    g = _Nodes()
    rows, best = plan.rows_graph(g)
    where = g.op("Transpose", g.op("NonZero", g.op("Greater", best, g.const(np.array(spec.confidence, np.float32)))),
                 perm=[1, 0])  # K x (image, box)
    picked, score = g.op("GatherND", rows, where), g.op("GatherND", best, where)
    image = g.op("Gather", where, g.const(np.array(0, np.int64)), axis=1)
    centers, cls = plan.decode_graph(g, picked, g.op("Gather", where, g.const(np.array(1, np.int64)), axis=1), geometry)
    _select_graph(g, spec, geometry, centers, score, cls, image, g.op("Shape", best, start=0, end=1), plan.classes)
    elem = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "int64": onnx.TensorProto.INT64}
    inputs = [helper.make_tensor_value_info(t.name, elem[t.dtype], [_dim(d) for d in t.shape]) for t in plan.inputs]
    outputs = [helper.make_tensor_value_info(t.name, elem[t.dtype], [_dim(d) for d in t.shape])
               for t in output_specs(spec, model_outputs, heads)]
    return stage_model(helper.make_graph(g.nodes, "edgemill_detect", inputs, outputs, initializer=g.inits), OPSET)


def _select_graph(g: _Nodes, spec: DetectSpec, geometry: FrameGeometry, centers: str, score: str, cls: str,
                  image: str, batch: str, classes: int) -> None:
    """The K candidates of the whole batch (``centers`` K x 4 cx, cy, w, h in model pixels; ``score``,
    ``cls`` and ``image`` K) -> the outputs. One NMS call: its "classes" are (image, class) pairs per class,
    images alone across classes, so candidates of different images or classes never suppress each other."""
    f32 = lambda *v: g.const(np.array(v, np.float32))
    i64 = lambda *v: g.const(np.array(v, np.int64))
    zero, one = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))  # scalars, as Range takes them
    pad, scale, size = geometry.box_constants()
    xy, half = g.last_axis(centers, 0, 2), g.op("Mul", g.last_axis(centers, 2, 4), f32(0.5))
    corners = g.op("Concat", g.op("Sub", xy, half), g.op("Add", xy, half), axis=-1)
    frame = g.op("Div", g.op("Sub", corners, g.const(pad)), g.const(scale))
    if spec.per_class:
        slot = g.op("Add", g.op("Mul", image, i64(classes)), cls)
        slots = g.op("Mul", batch, i64(classes))
    else:
        slot, slots = image, batch
    slot_ids = g.op("Range", zero, g.op("Squeeze", slots, i64(0)), one)
    in_slot = g.op("Equal", g.op("Unsqueeze", slot_ids, i64(1)), g.op("Unsqueeze", slot, i64(0)))  # slots x K
    nms_scores = g.op("Unsqueeze", g.op("Where", in_slot, g.op("Unsqueeze", score, i64(0)), f32(-1)), i64(0))
    selected = g.op("NonMaxSuppression", g.op("Unsqueeze", frame, i64(0)), nms_scores, i64(spec.max_detections),
                    f32(spec.iou), f32(spec.confidence))
    # A candidate is in one slot, so it is selected at most once. Column 0 of each image's row is a dummy
    # (score -1, box 0, class -1): TopK never takes zero columns, and padding points at it.
    survivor = g.op("Gather", selected, g.const(np.array(2, np.int64)), axis=1)
    kept = g.op("ScatterElements", g.filled(g.op("Shape", score), -1.0), survivor, g.op("Gather", score, survivor))
    kept = g.op("Concat", f32(-1), kept, axis=0)
    owner = g.op("Concat", i64(-1), image, axis=0)
    image_ids = g.op("Range", zero, g.op("Squeeze", batch, i64(0)), one)
    per_image = g.op("Where", g.op("Equal", g.op("Unsqueeze", image_ids, i64(1)), g.op("Unsqueeze", owner, i64(0))),
                     g.op("Unsqueeze", kept, i64(0)), f32(-1))  # N x (K + 1)
    k = g.op("Min", g.op("Shape", kept), i64(spec.max_detections))
    top, order = g.ops("TopK", per_image, k, outs=[g.fresh("top"), g.fresh("order")], axis=1, largest=1, sorted=1)
    pads = g.op("Concat", i64(0, 0, 0), g.op("Sub", i64(spec.max_detections), k), axis=0)
    top = g.op("Pad", top, pads, g.const(np.array(-1, np.float32)))
    order = g.op("Pad", order, pads, g.const(np.array(0, np.int64)))
    valid = g.op("Greater", top, f32(-0.5))
    frame = g.op("Concat", g.const(np.zeros((1, 4), np.float32)), frame, axis=0)
    boxes = g.op("Max", g.op("Min", g.op("Gather", frame, order, axis=0), g.const(size)), f32(0))
    if spec.coordinates == "normalized":
        boxes = g.op("Div", boxes, g.const(size))
    g.op("Where", g.op("Unsqueeze", valid, i64(2)), boxes, f32(0), out="boxes")
    g.op("Where", valid, top, f32(0), out="scores")
    g.op("Where", valid, g.op("Gather", g.op("Concat", i64(-1), cls, axis=0), order, axis=0), i64(-1), out="classes")
    g.op("ReduceSum", g.op("Cast", valid, to=g.INT64), i64(1), keepdims=0, out="count")


# --- small helpers ------------------------------------------------------------------------------


def _dim(d: Any) -> Any:
    return d if isinstance(d, str) or (isinstance(d, int) and d >= 0) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _one_of(key: str, value: Any, allowed: tuple[str, ...], fix: str) -> None:
    if value not in allowed:
        raise OptionError(f"unknown detection {key}", value=value, expected=" | ".join(allowed), fix=fix, field=key)
