"""Camera frame -> model input, as an ONNX graph the package carries, and the same steps in NumPy.

The graph is what runs on the device (onnxruntime, before whichever backend runs the model); the NumPy
version is the reference the compiler's check compares it with, and what an application would write by
hand. Both follow :class:`~edgemill.pipeline.spec.Preprocess`'s order exactly:

1. cast to float32; frames in NHWC are transposed to NCHW;
2. channel swap when the frame's colour order differs from the model's;
3. resize to the model's height and width: ``bilinear`` is OpenCV's ``INTER_LINEAR`` (half-pixel
   centres, no antialiasing), ``nearest`` is ``INTER_NEAREST`` (floor of the scaled coordinate);
   ``letterbox`` keeps the aspect ratio (``round(size * min ratio)``) and centres the image in a border
   of value ``pad``;
4. ``x * scale / std - mean / std`` per channel (one multiply-add);
5. the model's layout; for an integer model input, round half to even and clip to its range.

Interpolation runs on float values (no rounding to uint8 in between, unlike ``cv2.resize`` on a uint8 image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OptionError
from ..tensors import TensorSpec
from ._onnx import dim, stage_model
from .spec import Preprocess

OPSET = 18
TIE_WINDOW = 0.02  # how far from .5 an integer input's exact value may be and still round either way


@dataclass(frozen=True)
class ModelImage:
    """The image a model input takes: layout, channels, size, dtype and batch dimension."""

    name: str
    layout: str
    channels: int
    height: int
    width: int
    dtype: str
    batch: Any  # an int, or a symbol/-1 for a dynamic batch

    @classmethod
    def of(cls, spec: TensorSpec, layout: str | None) -> ModelImage:
        shape = spec.shape
        if len(shape) != 4:
            raise OptionError(f"--preprocess needs a 4-D image input, and {spec.name!r} is {spec.shape_text()}",
                              value=spec.name, fix="name the image input with --preprocess 'INPUT: frame=...'")
        if layout is None:
            layout = _guess_layout(spec)
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        if not all(isinstance(d, int) and d > 0 for d in (c, h, w)):
            raise OptionError(f"--preprocess needs the model's image size, and input {spec.name!r} is {spec.shape_text()}",
                              value=spec.shape_text(), fix=f"fix it with --input {spec.name}:1x3x224x224 (your size)")
        if spec.dtype not in ("float32", "float16", "uint8", "int8"):
            raise OptionError(f"--preprocess cannot feed input {spec.name!r} of dtype {spec.dtype}", value=spec.dtype,
                              expected="float32, float16, uint8 or int8", fix="pre-process this input in the application")
        return cls(spec.name, layout, int(c), int(h), int(w), spec.dtype, shape[0])


def _guess_layout(spec: TensorSpec) -> str:
    shape = spec.shape
    first, last = shape[1] in (1, 3, 4), shape[3] in (1, 3, 4)
    if first != last:
        return "NCHW" if first else "NHWC"
    raise OptionError(f"cannot tell the layout of input {spec.name!r} {spec.shape_text()}", value=spec.shape_text(),
                      fix="add model_layout=NCHW or model_layout=NHWC to --preprocess")


@dataclass(frozen=True)
class Placement:
    """Where the resized frame lies in the model input: its size and the border before it."""

    height: int
    width: int
    top: int
    left: int

    def geometry(self, pre: Preprocess, image: ModelImage) -> dict[str, float]:
        """The mapping a detector's decoding undoes: ``frame = (model - pad) / scale``."""
        h, w = pre.frame
        return {"frame_height": h, "frame_width": w, "model_height": image.height, "model_width": image.width,
                "scale_y": self.height / h, "scale_x": self.width / w, "pad_top": self.top, "pad_left": self.left}


def placement(pre: Preprocess, image: ModelImage) -> Placement:
    h, w = pre.frame
    if pre.fit == "stretch":
        return Placement(image.height, image.width, 0, 0)
    ratio = min(image.height / h, image.width / w)
    nh, nw = min(image.height, round(h * ratio)), min(image.width, round(w * ratio))
    return Placement(nh, nw, (image.height - nh) // 2, (image.width - nw) // 2)


def frame_spec(pre: Preprocess, image: ModelImage) -> TensorSpec:
    """The package input that replaces the model input."""
    h, w = pre.frame
    c = image.channels
    shape = (image.batch, h, w, c) if pre.layout == "NHWC" else (image.batch, c, h, w)
    return TensorSpec(pre.name or image.name, pre.dtype, shape)


def _channel_order(pre: Preprocess, image: ModelImage) -> list[int] | None:
    if image.channels == 3 and pre.color != pre.model_color:
        return [2, 1, 0]
    return None


def _affine(pre: Preprocess, image: ModelImage) -> tuple[np.ndarray, np.ndarray]:
    mean = np.array(pre.channel_values("mean", image.channels), np.float64)
    std = np.array(pre.channel_values("std", image.channels), np.float64)
    return (pre.scale / std).astype(np.float32), (-mean / std).astype(np.float32)


_INT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


# --- the graph -----------------------------------------------------------------------------------


def build_graph(pre: Preprocess, image: ModelImage) -> Any:
    """An ONNX model: the frame input (``frame_spec``) -> one output, ``model_input``.

    Each step runs on the smallest tensor it can: nearest picks rows and columns on the uint8 frame; a
    channels-last frame goes planar and swaps channels while still uint8 (onnxruntime's planar bilinear
    resize is 1.8x its channels-last one on 3 channels); the scale, mean and std skip what is 1 or 0 and,
    when one value serves every channel, run before the letterbox border on the smaller image."""
    from onnx import TensorProto, helper, numpy_helper

    frame = frame_spec(pre, image)
    place = placement(pre, image)
    nhwc = pre.layout == "NHWC"
    rows_axis, cols_axis = (1, 2) if nhwc else (2, 3)
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def add(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    x = frame.name
    resized = (place.height, place.width) != pre.frame
    if resized and pre.resize == "nearest":  # the source rows and columns, picked exactly, on the uint8 frame
        x = add("Gather", [x, const("rows", _nearest_index(pre.frame[0], place.height))], "picked_rows", axis=rows_axis)
        x = add("Gather", [x, const("cols", _nearest_index(pre.frame[1], place.width))], "picked", axis=cols_axis)
    if nhwc:  # planar while still uint8 (a quarter of the bytes), so the resize runs on planes: 1.8x faster
        x = add("Transpose", [x], "planar", perm=[0, 3, 1, 2])
    order = _channel_order(pre, image)
    if order is not None:
        x = add("Gather", [x, const("channel_order", np.array(order, np.int64))], "swapped", axis=1)
    if pre.dtype != "float32":
        x = add("Cast", [x], "frame_f", to=TensorProto.FLOAT)
    if resized and pre.resize == "bilinear":
        # Full-rank sizes (batch and channels read from the tensor), not Resize's axes=: onnxruntime's
        # transpose optimizer rewrites an axes= Resize followed by a Transpose into an invalid node.
        size = const("size", np.array([place.height, place.width], np.int64))
        sizes = add("Concat", [add("Shape", [x], "lead_dims", start=0, end=2), size], "sizes", axis=0)
        x = add("Resize", [x, "", "", sizes], "resized", mode="linear", coordinate_transformation_mode="half_pixel")
    mul, shift = _affine(pre, image)
    boxed = (place.height, place.width) != (image.height, image.width)
    uniform = bool(np.all(mul == mul[0]) and np.all(shift == shift[0]))
    if boxed and not uniform:  # a border per channel: pad first, then every pixel takes its channel's affine
        x = _pad(add, const, x, pre.pad, place, image)
    if not np.all(mul == 1):
        x = add("Mul", [x, const("scale", mul.reshape(1, -1, 1, 1))], "scaled")
    if not np.all(shift == 0):
        x = add("Add", [x, const("shift", shift.reshape(1, -1, 1, 1))], "normalized")
    if boxed and uniform:  # on the smaller image, with the border value the affine would have made of it
        x = _pad(add, const, x, float(np.float32(pre.pad) * mul[0] + shift[0]), place, image)
    if image.layout == "NHWC":
        x = add("Transpose", [x], "model_nhwc", perm=[0, 2, 3, 1])
    if image.dtype in _INT_RANGE:
        low, high = _INT_RANGE[image.dtype]
        x = add("Round", [x], "rounded")
        x = add("Clip", [x, const("low", np.array(low, np.float32)), const("high", np.array(high, np.float32))], "clipped")
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8,
            "int8": TensorProto.INT8}[image.dtype]
    if image.dtype == "float32":
        add("Identity", [x], "model_input")
    else:
        add("Cast", [x], "model_input", to=elem)
    model_shape = [image.batch, image.channels, image.height, image.width] if image.layout == "NCHW" else \
        [image.batch, image.height, image.width, image.channels]
    graph = helper.make_graph(
        nodes, "edgemill_preprocess",
        [helper.make_tensor_value_info(frame.name, {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}[pre.dtype],
                                       [dim(d) for d in frame.shape])],
        [helper.make_tensor_value_info("model_input", elem, [dim(d) for d in model_shape])], inits)
    return stage_model(graph, OPSET)


def _pad(add: Any, const: Any, x: str, value: float, place: Placement, image: ModelImage) -> str:
    bottom = image.height - place.height - place.top
    right = image.width - place.width - place.left
    pads = np.array([0, 0, place.top, place.left, 0, 0, bottom, right], np.int64)
    return add("Pad", [x, const("pads", pads), const("pad_value", np.array(value, np.float32))], "boxed", mode="constant")


# --- NumPy ---------------------------------------------------------------------------------------


def apply_numpy(pre: Preprocess, image: ModelImage, frames: np.ndarray, rounded: bool = True) -> np.ndarray:
    """The same steps in NumPy (float64 arithmetic, then the model's dtype; ``rounded=False``: the float64
    values an integer model input is rounded from)."""
    x = frames.astype(np.float64)
    if pre.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    order = _channel_order(pre, image)
    if order is not None:
        x = x[:, order]
    place = placement(pre, image)
    if (place.height, place.width) != pre.frame:
        resize = _linear if pre.resize == "bilinear" else _nearest
        x = resize(resize(x, place.height, axis=2), place.width, axis=3)
    if (place.height, place.width) != (image.height, image.width):
        boxed = np.full(x.shape[:2] + (image.height, image.width), pre.pad, np.float64)
        boxed[:, :, place.top:place.top + place.height, place.left:place.left + place.width] = x
        x = boxed
    mul, add = _affine(pre, image)
    x = x * mul.astype(np.float64).reshape(1, -1, 1, 1) + add.astype(np.float64).reshape(1, -1, 1, 1)
    if image.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    if not rounded:
        return x
    if image.dtype in _INT_RANGE:
        x = np.clip(np.rint(x), *_INT_RANGE[image.dtype])
    return np.ascontiguousarray(x.astype(image.dtype))


def integer_input_agrees(pre: Preprocess, image: ModelImage, frames: np.ndarray, got: np.ndarray) -> bool:
    """Whether the graph's integer model input equals NumPy's, except by one step where NumPy's exact value
    lies within TIE_WINDOW of .5: float32 (the graph) and float64 round such ties apart, and resize ratios like
    480/224 make exact .5 values common (1 % of the pixels of a smooth frame)."""
    exact = apply_numpy(pre, image, frames, rounded=False)
    want = np.clip(np.rint(exact), *_INT_RANGE[image.dtype])
    if got.shape != want.shape:
        return False
    off = got.astype(np.int64) - want.astype(np.int64)
    if np.abs(off).max(initial=0) > 1:
        return False
    # "A hair": onnxruntime computes sampling coordinates in float32, ~1e-7 relative of a frame side of
    # hundreds of pixels, times pixel values up to 255: up to ~0.01 of a step (0.0033 measured on photos).
    tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < TIE_WINDOW
    return bool(np.all(tie[off != 0]))


def _linear(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    if n == size:
        return x
    coord = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
    low = np.floor(coord).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    frac = (coord - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


def _nearest_index(n: int, size: int) -> np.ndarray:
    """Source index of each output row: floor(i * n / size), in float64 as OpenCV computes it (onnxruntime's
    float32 Resize puts some rows one off, e.g. 9 / 0.6f = 14.99999)."""
    return np.minimum(np.floor(np.arange(size) * (n / size)).astype(np.int64), n - 1)


def _nearest(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    return x if x.shape[axis] == size else np.take(x, _nearest_index(x.shape[axis], size), axis=axis)
