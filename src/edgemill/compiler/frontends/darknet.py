"""DarkNet frontend: a ``.cfg`` + ``.weights`` pair (YOLOv2/v3/v4-tiny, classic classifiers) to ONNX.

The user passes either file; the partner is the file with the same stem in the same folder. The
parser is ours (no DarkNet or OpenCV needed). Each ``[section]`` after ``[net]`` is one layer,
numbered from 0 as DarkNet numbers them (``[route] layers=-4`` and ``[shortcut] from=-3`` count in
those numbers). Supported layers: see :data:`LAYERS`. Batch normalization is folded into the
convolution (or connected) weights the way DarkNet's CPU inference computes it:
``scale * (x - mean) / (sqrt(var) + 1e-6) + bias``.

The graph has one input, ``input``, ``N x channels x height x width`` float32 from ``[net]``
(``--input input:1x3x416x416`` rebuilds it for another size or batch; the channels are fixed).

**Detection heads are not decoded in the graph.** Each ``[yolo]`` or ``[region]`` layer becomes a
graph output named ``yolo_<i>`` / ``region_<i>`` (``i`` = the layer's index) holding the *raw*
tensor the head receives, ``N x A*(5+C) x H x W``. The head's ``anchors``, ``mask``, ``classes``,
``num`` (and ``scale_x_y``, ``coords``) are recorded in the package's source details under
``heads``, so a caller decodes them; reshape the output to ``N x A x (5+C) x H x W``; for anchor
``a`` at cell ``(y, x)`` with channels ``tx, ty, tw, th, to, c_1..c_C``:

* ``[yolo]`` (v3/v4): ``bx = (x + s*sigmoid(tx) - (s-1)/2) / W``, ``by`` likewise with ``y, H``
  (``s`` = ``scale_x_y``, default 1); ``bw = exp(tw) * anchors[mask[a]].w / net_width``,
  ``bh = exp(th) * anchors[mask[a]].h / net_height``; objectness ``sigmoid(to)``; class scores
  ``sigmoid(c_k)`` (independent), detection score = objectness * class score; then NMS.
* ``[region]`` (v2): ``bx = (x + sigmoid(tx)) / W``, ``by = (y + sigmoid(ty)) / H``,
  ``bw = exp(tw) * anchors[a].w / W``, ``bh = exp(th) * anchors[a].h / H`` (anchors in grid cells);
  objectness ``sigmoid(to)``; class scores ``softmax(c_1..c_C)`` when the head has ``softmax=1`` (as
  YOLOv2 cfgs do), else the raw ``c_k``; score = objectness * class score.

A cfg without heads (a classifier) has one output, ``output``: the last layer's tensor, 4-D
``N x C x H x W`` (``1 x 1`` after ``[avgpool]``/``[connected]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import ModelCheckError, ModelFormatError, OptionError
from ..checks import check_model
from ..context import SourceInfo
from ..source import SourceRuntime
from . import Frontend, FrontendRequest, pair_source_info, register

OPSET = 17
INPUT_NAME = "input"
BN_EPS = 1e-6  # DarkNet's normalize_cpu divides by sqrt(var) + .000001f


# --- reading the files ------------------------------------------------------------------------


@dataclass
class Section:
    kind: str
    line: int
    options: dict[str, str] = field(default_factory=dict)


def _parse_cfg(path: Path) -> list[Section]:
    """Sections in file order. DarkNet strips all whitespace from a line and skips '#'/';' comments."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelFormatError("cannot read the DarkNet .cfg", value=str(path), fix=str(exc)) from None
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"\s+", "", raw)
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ModelFormatError(f"malformed section header at line {number} of {path.name}", value=raw.strip(),
                                       expected="[name]", fix="fix the line in the .cfg")
            sections.append(Section(line[1:-1].lower(), number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.lower()] = value
        else:
            raise ModelFormatError(f"unreadable line {number} of {path.name}", value=raw.strip(),
                                   expected="[section] or key=value",
                                   fix="check that this is a DarkNet .cfg (the file must start with [net])")
    if not sections or sections[0].kind not in ("net", "network"):
        raise ModelFormatError("a DarkNet .cfg must start with a [net] section", value=path.name,
                               expected="[net] with width, height and channels",
                               fix="pass the model's .cfg (the one DarkNet trained with)")
    return sections


def _partners(path: Path) -> tuple[Path, Path]:
    """(cfg, weights) for a path naming either, or a clear error naming the missing one."""
    if path.is_dir():
        raise ModelFormatError("expected a DarkNet .cfg or .weights file, got a directory", value=str(path),
                               fix="pass the .cfg (its .weights must lie beside it with the same stem)")
    if path.suffix.lower() == ".weights":
        cfg, weights = path.with_suffix(".cfg"), path
    else:
        cfg, weights = path, path.with_suffix(".weights")
    for wanted, other in ((cfg, weights), (weights, cfg)):
        if not wanted.is_file():
            raise ModelFormatError(
                f"the DarkNet {wanted.suffix} file is missing", value=str(wanted),
                expected=f"{cfg.name} and {weights.name} side by side",
                fix=f"put {wanted.name} next to {other.name} (same folder, same stem), or rename it to match",
            )
    return cfg, weights


@dataclass
class _Weights:
    """The float32 arrays of a .weights file, consumed in layer order; shortfall is counted, not raised,
    so the error can say how many floats the whole cfg needs."""

    data: np.ndarray
    version: str
    seen: int
    transpose: bool
    pos: int = 0
    needed: int = 0
    first_short: str | None = None

    def take(self, count: int, where: str) -> np.ndarray:
        self.needed += count
        if self.pos + count > self.data.size:
            if self.first_short is None:
                self.first_short = where
            self.pos = self.data.size
            return np.zeros(count, dtype=np.float32)
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk


def _read_weights(path: Path) -> _Weights:
    raw = path.read_bytes()
    if len(raw) < 12:
        raise ModelFormatError("the DarkNet .weights file is too short for its header", value=f"{len(raw)} bytes",
                               expected="at least 16 bytes (major, minor, revision, seen) then float32 weights",
                               fix="download the .weights file again")
    major, minor, revision = (int(v) for v in np.frombuffer(raw, "<i4", 3))
    wide_seen = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    header = 20 if wide_seen else 16
    if len(raw) < header:
        raise ModelFormatError("the DarkNet .weights file is too short for its header", value=f"{len(raw)} bytes",
                               expected=f"at least {header} bytes", fix="download the .weights file again")
    seen = int(np.frombuffer(raw, "<i8" if wide_seen else "<i4", 1, 12)[0])
    floats = (len(raw) - header) // 4
    data = np.frombuffer(raw, "<f4", floats, header).astype(np.float32)
    return _Weights(data, f"{major}.{minor}.{revision}", seen, transpose=major > 1000 or minor > 1000)


# --- building the graph -----------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    c: int
    h: int
    w: int


@dataclass
class _Builder:
    cfg: Path
    weights: _Weights
    batch: int | str
    net: dict[str, int]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    outputs: list[_Tensor] = field(default_factory=list)
    heads: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs: Any) -> str:
        out = self.fresh(stem)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def error(self, sec: Section, index: int, problem: str, value: Any, expected: str, fix: str) -> ModelFormatError:
        return ModelFormatError(f"{problem} in layer {index} [{sec.kind}] at line {sec.line} of {self.cfg.name}",
                                value=value, expected=expected, fix=fix)


def _int(b: _Builder, sec: Section, i: int, key: str, default: int | None = None, low: int | None = None) -> int:
    if key not in sec.options:
        if default is None:
            raise b.error(sec, i, f"missing option {key}", key, f"{key}=<integer>", f"add {key}= to the section")
        return default
    try:
        value = int(sec.options[key])
    except ValueError:
        raise b.error(sec, i, f"option {key} is not an integer", sec.options[key], "an integer",
                      "fix the value in the .cfg") from None
    if low is not None and value < low:
        raise b.error(sec, i, f"option {key} is out of range", value, f"at least {low}", "fix the value in the .cfg")
    return value


def _float(b: _Builder, sec: Section, i: int, key: str, default: float) -> float:
    try:
        return float(sec.options.get(key, default))
    except ValueError:
        raise b.error(sec, i, f"option {key} is not a number", sec.options[key], "a number",
                      "fix the value in the .cfg") from None


def _ints(b: _Builder, sec: Section, i: int, key: str, default: str = "") -> list[int]:
    text = sec.options.get(key, default)
    try:
        return [int(float(v)) for v in text.split(",") if v != ""]
    except ValueError:
        raise b.error(sec, i, f"option {key} is not a list of integers", text, "comma-separated integers",
                      "fix the value in the .cfg") from None


def _refuse(b: _Builder, sec: Section, i: int, **unsupported: str) -> None:
    """Options that change what a layer computes and that we do not implement: refuse rather than ignore."""
    for key, neutral in unsupported.items():
        value = sec.options.get(key, neutral)
        if value != neutral:
            raise b.error(sec, i, f"option {key}={value} is not supported", value, f"{key}={neutral} or absent",
                          "remove the option, or export the model to ONNX with a DarkNet-to-ONNX tool")


ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "tanh", "mish", "swish")


def _activate(b: _Builder, sec: Section, i: int, x: str, default: str) -> str:
    act = sec.options.get("activation", default).lower()
    if act == "linear":
        return x
    if act == "leaky":
        return b.node("LeakyRelu", [x], "leaky", alpha=0.1)
    if act == "relu":
        return b.node("Relu", [x], "relu")
    if act == "logistic":
        return b.node("Sigmoid", [x], "logistic")
    if act == "tanh":
        return b.node("Tanh", [x], "tanh")
    if act == "mish":  # onnx Mish is opset 18; x * tanh(softplus(x)) is the same function
        return b.node("Mul", [x, b.node("Tanh", [b.node("Softplus", [x], "softplus")], "tanh")], "mish")
    if act == "swish":
        return b.node("Mul", [x, b.node("Sigmoid", [x], "sigmoid")], "swish")
    raise b.error(sec, i, "unsupported activation", act, "one of " + ", ".join(ACTIVATIONS),
                  "use a supported activation, or export the model to ONNX with another tool")


def _fold_bn(b: _Builder, n: int, bias: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-output multiplier, new bias) for a layer with batch_normalize=1."""
    scales = b.weights.take(n, where).astype(np.float64)
    mean = b.weights.take(n, where).astype(np.float64)
    var = b.weights.take(n, where).astype(np.float64)
    mul = scales / (np.sqrt(np.maximum(var, 0.0)) + BN_EPS)
    return mul, bias.astype(np.float64) - mean * mul


LayerFn = Callable[[_Builder, Section, int, list[_Tensor]], _Tensor]


def _convolutional(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]
    _refuse(b, sec, i, binary="0", xnor="0", antialiasing="0", dilation="1", share_index="", deform="0")
    n = _int(b, sec, i, "filters", low=1)
    size = _int(b, sec, i, "size", 1, low=1)
    stride = _int(b, sec, i, "stride", 1, low=1)
    sy, sx = _int(b, sec, i, "stride_y", stride, low=1), _int(b, sec, i, "stride_x", stride, low=1)
    padding = size // 2 if _int(b, sec, i, "pad", 0) else _int(b, sec, i, "padding", 0, low=0)
    groups = _int(b, sec, i, "groups", 1, low=1)
    bn = _int(b, sec, i, "batch_normalize", 0)
    if x.c % groups or n % groups:
        raise b.error(sec, i, "groups does not divide the channels", groups,
                      f"a divisor of both the {x.c} input channels and filters={n}", "fix groups or filters")
    oh, ow = (x.h + 2 * padding - size) // sy + 1, (x.w + 2 * padding - size) // sx + 1
    if oh < 1 or ow < 1:
        raise b.error(sec, i, "the input is smaller than the kernel", f"{x.h}x{x.w}", f"at least {size}x{size}",
                      "use a larger input size in [net]")
    where = f"layer {i} [{sec.kind}] at line {sec.line}"
    bias = b.weights.take(n, where)
    mul, new_bias = _fold_bn(b, n, bias, where) if bn else (None, bias.astype(np.float64))
    w = b.weights.take(n * (x.c // groups) * size * size, where).reshape(n, x.c // groups, size, size)
    w = w.astype(np.float64) * mul[:, None, None, None] if mul is not None else w
    out = b.node("Conv", [x.name, b.const("conv_w", w.astype(np.float32)),
                          b.const("conv_b", new_bias.astype(np.float32))], "conv",
                 kernel_shape=[size, size], strides=[sy, sx], pads=[padding] * 4, group=groups)
    return _Tensor(_activate(b, sec, i, out, "logistic"), n, oh, ow)


def _pool_pads(size: int, stride: int, padding: int, length: int) -> tuple[int, int, int]:
    """DarkNet maxpool: window starts at -padding/2; out = (length + padding - size)/stride + 1."""
    out = (length + padding - size) // stride + 1
    begin = padding // 2
    end = max(0, (out - 1) * stride + size - length - begin)
    return out, begin, end


def _maxpool(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]
    _refuse(b, sec, i, maxpool_depth="0", antialiasing="0")
    stride = _int(b, sec, i, "stride", 1, low=1)
    sy, sx = _int(b, sec, i, "stride_y", stride, low=1), _int(b, sec, i, "stride_x", stride, low=1)
    size = _int(b, sec, i, "size", stride, low=1)
    padding = _int(b, sec, i, "padding", size - 1, low=0)
    oh, top, bottom = _pool_pads(size, sy, padding, x.h)
    ow, left, right = _pool_pads(size, sx, padding, x.w)
    if oh < 1 or ow < 1:
        raise b.error(sec, i, "the input is smaller than the pooling window", f"{x.h}x{x.w}",
                      f"at least {size}x{size}", "use a larger input size in [net]")
    # ONNX MaxPool ignores padded cells, as DarkNet does (it skips out-of-range indices).
    out = b.node("MaxPool", [x.name], "maxpool", kernel_shape=[size, size], strides=[sy, sx],
                 pads=[top, left, bottom, right])
    return _Tensor(out, x.c, oh, ow)


def _avgpool(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]  # DarkNet's [avgpool] is always global
    return _Tensor(b.node("GlobalAveragePool", [x.name], "avgpool"), x.c, 1, 1)


def _index(b: _Builder, sec: Section, i: int, ref: int, key: str) -> int:
    j = i + ref if ref < 0 else ref
    if not 0 <= j < i:
        raise b.error(sec, i, f"{key} refers to a layer that is not before this one", ref,
                      f"a negative offset or an index in 0..{i - 1}", f"fix {key} in the .cfg")
    return j


def _route(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    refs = _ints(b, sec, i, "layers")
    if not refs:
        raise b.error(sec, i, "a route needs layers", sec.options.get("layers", ""), "layers=-1,-4 or similar",
                      "add layers= to the section")
    groups = _int(b, sec, i, "groups", 1, low=1)
    group_id = _int(b, sec, i, "group_id", 0, low=0)
    if group_id >= groups:
        raise b.error(sec, i, "group_id is out of range", group_id, f"0..{groups - 1}", "fix group_id")
    parts = [prev[_index(b, sec, i, r, "layers")] for r in refs]
    if any((p.h, p.w) != (parts[0].h, parts[0].w) for p in parts):
        raise b.error(sec, i, "routed layers differ in height/width", [f"{p.h}x{p.w}" for p in parts],
                      "equal spatial sizes", "fix layers= in the .cfg")
    names, channels = [], 0
    for p in parts:
        if groups == 1:
            names.append(p.name)
            channels += p.c
            continue
        if p.c % groups:
            raise b.error(sec, i, "groups does not divide a routed layer's channels", p.c,
                          f"a multiple of groups={groups}", "fix groups")
        part = p.c // groups
        names.append(b.node("Slice", [p.name, b.const("starts", np.array([group_id * part], np.int64)),
                                      b.const("ends", np.array([(group_id + 1) * part], np.int64)),
                                      b.const("axes", np.array([1], np.int64))], "route_slice"))
        channels += part
    out = names[0] if len(names) == 1 else b.node("Concat", names, "route", axis=1)
    return _Tensor(out, channels, parts[0].h, parts[0].w)


def _shortcut(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]
    _refuse(b, sec, i, weights_type="none")
    out = x.name
    for ref in _ints(b, sec, i, "from") or [-1]:
        other = prev[_index(b, sec, i, ref, "from")]
        if (other.c, other.h, other.w) != (x.c, x.h, x.w):
            raise b.error(sec, i, "shortcut of layers with different shapes is not supported",
                          f"{other.c}x{other.h}x{other.w} + {x.c}x{x.h}x{x.w}", "equal shapes",
                          "fix from= in the .cfg")
        out = b.node("Add", [out, other.name], "shortcut")
    return _Tensor(_activate(b, sec, i, out, "linear"), x.c, x.h, x.w)


def _upsample(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]
    stride = _int(b, sec, i, "stride", 2)
    if stride < 1:
        raise b.error(sec, i, "downsampling upsample (stride < 1) is not supported", stride, "stride >= 1",
                      "use a positive stride")
    scales = b.const("scales", np.array([1, 1, stride, stride], np.float32))
    out = b.node("Resize", [x.name, "", scales], "upsample", mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    scale = _float(b, sec, i, "scale", 1.0)
    if scale != 1.0:
        out = b.node("Mul", [out, b.const("scale", np.array(scale, np.float32))], "upsample_scale")
    return _Tensor(out, x.c, x.h * stride, x.w * stride)


def _reorg(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    """DarkNet's (YOLOv2) reorg: it reads the input as (c/s², h·s, w·s) and writes (c, h, w) in the
    order (row-offset, col-offset, channel), then calls that buffer (c·s², h/s, w/s)."""
    x = prev[-1]
    _refuse(b, sec, i, reverse="0", extra="0", flatten="0")
    s = _int(b, sec, i, "stride", 1, low=1)
    if x.c % (s * s) or x.h % s or x.w % s:
        raise b.error(sec, i, "reorg stride does not divide the input", f"{x.c}x{x.h}x{x.w}",
                      f"channels divisible by {s * s}, height and width by {s}", "fix stride or the input size")
    oc = x.c // (s * s)
    y = b.node("Reshape", [x.name, b.const("shape", np.array([-1, oc, x.h, s, x.w, s], np.int64))], "reorg")
    y = b.node("Transpose", [y], "reorg", perm=[0, 3, 5, 1, 2, 4])
    y = b.node("Reshape", [y, b.const("shape", np.array([-1, x.c * s * s, x.h // s, x.w // s], np.int64))], "reorg")
    return _Tensor(y, x.c * s * s, x.h // s, x.w // s)


def _connected(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]
    n = _int(b, sec, i, "output", low=1)
    bn = _int(b, sec, i, "batch_normalize", 0)
    inputs = x.c * x.h * x.w
    where = f"layer {i} [{sec.kind}] at line {sec.line}"
    bias = b.weights.take(n, where)
    w = b.weights.take(n * inputs, where)
    w = (w.reshape(inputs, n).T if b.weights.transpose else w.reshape(n, inputs)).astype(np.float64)
    mul, new_bias = _fold_bn(b, n, bias, where) if bn else (None, bias.astype(np.float64))
    w = w * mul[:, None] if mul is not None else w
    flat = b.node("Flatten", [x.name], "flatten", axis=1)
    out = b.node("Gemm", [flat, b.const("fc_w", w.astype(np.float32)), b.const("fc_b", new_bias.astype(np.float32))],
                 "connected", transB=1)
    out = _activate(b, sec, i, out, "logistic")
    out = b.node("Reshape", [out, b.const("shape", np.array([-1, n, 1, 1], np.int64))], "connected")
    return _Tensor(out, n, 1, 1)


def _softmax(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]  # DarkNet's softmax runs over all c*h*w values of each group
    _refuse(b, sec, i, tree="0", spatial="0")
    groups = _int(b, sec, i, "groups", 1, low=1)
    temperature = _float(b, sec, i, "temperature", 1.0)
    total = x.c * x.h * x.w
    if total % groups:
        raise b.error(sec, i, "groups does not divide the inputs", groups, f"a divisor of {total}", "fix groups")
    y = b.node("Reshape", [x.name, b.const("shape", np.array([-1, groups, total // groups], np.int64))], "softmax")
    if temperature != 1.0:
        y = b.node("Div", [y, b.const("temperature", np.array(temperature, np.float32))], "softmax")
    y = b.node("Softmax", [y], "softmax", axis=2)
    y = b.node("Reshape", [y, b.const("shape", np.array([-1, x.c, x.h, x.w], np.int64))], "softmax")
    return _Tensor(y, x.c, x.h, x.w)


def _passthrough(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    return prev[-1]  # [dropout] and [cost] do nothing at inference


def _anchor_pairs(values: list[float]) -> list[list[float]]:
    return [values[k:k + 2] for k in range(0, len(values) - 1, 2)]


def _head(b: _Builder, sec: Section, i: int, prev: list[_Tensor]) -> _Tensor:
    x = prev[-1]
    classes = _int(b, sec, i, "classes", 20, low=0)
    try:
        anchors = [float(v) for v in sec.options.get("anchors", "").split(",") if v != ""]
    except ValueError:
        raise b.error(sec, i, "anchors is not a list of numbers", sec.options["anchors"], "w1,h1,w2,h2,...",
                      "fix anchors in the .cfg") from None
    if sec.kind == "yolo":
        num = _int(b, sec, i, "num", len(anchors) // 2, low=1)
        mask = _ints(b, sec, i, "mask") or list(range(num))
        per, used = 5 + classes, len(mask)
        info: dict[str, Any] = {"mask": mask, "num": num, "scale_x_y": _float(b, sec, i, "scale_x_y", 1.0),
                                "new_coords": _int(b, sec, i, "new_coords", 0)}
        if any(not 0 <= m < len(anchors) // 2 for m in mask):
            raise b.error(sec, i, "mask refers to a missing anchor", mask,
                          f"indices below {len(anchors) // 2} (the anchor pairs given)", "fix mask or anchors")
    else:
        coords = _int(b, sec, i, "coords", 4, low=1)
        num = _int(b, sec, i, "num", 1, low=1)
        per, used = coords + 1 + classes, num
        _refuse(b, sec, i, tree="")
        info = {"num": num, "coords": coords, "softmax": _int(b, sec, i, "softmax", 0)}
    if x.c != used * per:
        raise ModelCheckError(
            f"the input of layer {i} [{sec.kind}] at line {sec.line} of {b.cfg.name} has {x.c} channels",
            value=x.c, expected=f"{used} anchors x ({per - classes} + classes={classes}) = {used * per}",
            fix="set filters= of the convolution before the head to that number")
    name = f"{sec.kind}_{i}"
    b.nodes.append(helper.make_node("Identity", [x.name], [name], name=name))
    b.outputs.append(_Tensor(name, x.c, x.h, x.w))
    b.heads.append({"output": name, "type": sec.kind, "layer": i, "classes": classes,
                    "anchors": _anchor_pairs(anchors), "grid": [x.h, x.w], **info})
    return x


LAYERS: dict[str, LayerFn] = {
    "convolutional": _convolutional, "conv": _convolutional,
    "maxpool": _maxpool, "max": _maxpool,
    "avgpool": _avgpool, "avg": _avgpool,
    "route": _route,
    "shortcut": _shortcut,
    "upsample": _upsample,
    "reorg": _reorg,
    "connected": _connected, "conn": _connected,
    "softmax": _softmax, "soft": _softmax,
    "dropout": _passthrough, "cost": _passthrough,
    "yolo": _head, "region": _head,
}


def _input_shape(net: Section, cfg: Path, request: FrontendRequest) -> tuple[int | str, int, int, int]:
    dims = {}
    for key in ("channels", "height", "width"):
        try:
            dims[key] = int(net.options.get(key, "0"))
        except ValueError:
            dims[key] = 0
        if dims[key] < 1:
            raise ModelFormatError(f"[net] at line {net.line} of {cfg.name} has no valid {key}",
                                   value=net.options.get(key), expected=f"{key}=<positive integer>",
                                   fix=f"add {key}= to [net]")
    batch: int | str = 1
    c, h, w = dims["channels"], dims["height"], dims["width"]
    for override in request.inputs:
        if override.name != INPUT_NAME:
            continue  # the static_shapes pass names the inputs this model has
        shape = tuple(override.shape)
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]) or shape[1] != c:
            raise OptionError("--input for a DarkNet model must give N x channels x height x width", value=list(shape),
                              expected=f"4 dimensions, channels {c}, fixed positive height and width",
                              fix=f"e.g. --input {INPUT_NAME}:1x{c}x{h}x{w}")
        batch, h, w = shape[0] if not isinstance(shape[0], int) or shape[0] > 0 else "batch", shape[2], shape[3]
    return batch, c, h, w


def _build(cfg: Path, sections: list[Section], weights: _Weights, request: FrontendRequest) -> _Builder:
    batch, c, h, w = _input_shape(sections[0], cfg, request)
    b = _Builder(cfg, weights, batch, {"channels": c, "height": h, "width": w})
    layers: list[_Tensor] = []
    current = _Tensor(INPUT_NAME, c, h, w)
    for i, sec in enumerate(sections[1:]):
        fn = LAYERS.get(sec.kind)
        if fn is None:
            supported = ", ".join(f"[{k}]" for k in LAYERS)
            raise ModelFormatError(
                f"unsupported DarkNet layer [{sec.kind}] (layer {i}) at line {sec.line} of {cfg.name}",
                value=sec.kind, expected=f"one of {supported}",
                fix="remove or replace the layer, or convert the model to ONNX with another tool and compile that",
            )
        current = fn(b, sec, i, layers or [current])  # prev[-1] is the input of layer 0
        layers.append(current)
    if not layers:
        raise ModelFormatError("the DarkNet .cfg has no layers after [net]", value=cfg.name,
                               fix="pass the complete .cfg")
    if weights.needed > weights.data.size:
        raise ModelFormatError(
            "the DarkNet .weights file is shorter than the .cfg needs", value=f"{weights.data.size} floats found",
            expected=f"{weights.needed} floats for {cfg.name} (the first missing ones belong to {weights.first_short})",
            fix="pass the .weights trained with this .cfg; the file may be cut short or belong to another model",
        )
    if not b.outputs:
        b.nodes.append(helper.make_node("Identity", [current.name], ["output"], name="output"))
        b.outputs.append(_Tensor("output", current.c, current.h, current.w))
    return b


def _to_model(b: _Builder) -> onnx.ModelProto:
    n = b.net
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [b.batch, n["channels"], n["height"], n["width"]])
    outs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, [b.batch, t.c, t.h, t.w]) for t in b.outputs]
    graph = helper.make_graph(b.nodes, b.cfg.stem, [inp], outs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgemill-darknet")
    model.ir_version = min(model.ir_version, 8)  # opset 17 needs IR 8; keep older onnxruntime builds happy
    return check_model(model, f"the ONNX graph built from {b.cfg.name}")


# --- the frontend -----------------------------------------------------------------------------


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix == ".weights":
        return path.with_suffix(".cfg").is_file()
    if suffix != ".cfg":
        return False
    with open(path, "rb") as f:
        head = f.read(1 << 16).lower()
    return b"[net]" in head or b"[network]" in head


def load(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    cfg, weights_path = _partners(path)
    sections = _parse_cfg(cfg)
    weights = _read_weights(weights_path)
    b = _build(cfg, sections, weights, request)
    model = _to_model(b)
    info = pair_source_info(cfg, weights_path, "darknet", weights.version, ("cfg", "weights"),
                            weights=weights_path.name, seen=weights.seen,
                            input=[b.batch, b.net["channels"], b.net["height"], b.net["width"]],
                            layers=len(sections) - 1, heads=b.heads,
                            unused_weight_floats=int(weights.data.size - weights.pos))
    info.runtime = _opencv_runtime(cfg, weights_path, b)
    return model, info


def _opencv_runtime(cfg: Path, weights: Path, b: _Builder) -> SourceRuntime | None:
    """OpenCV's own DarkNet importer as the reference, where an OpenCV that still has it is installed
    (OpenCV 5 dropped it): the tensors its Region layers receive are our raw heads; a classifier's output
    is its last layer."""
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        return None
    try:
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    except cv2.error:
        return None  # a layer OpenCV does not know: the converted graph stays the reference
    layers = list(net.getLayerNames())
    regions = [layers[i - 2] for i, n in enumerate(layers) if net.getLayer(n).type == "Region"]
    wanted = regions or list(net.getUnconnectedOutLayersNames())
    if len(wanted) != len(b.outputs):
        return None
    outputs = [(t.name, (t.c, t.h, t.w)) for t in b.outputs]

    def run(feed: Any) -> dict[str, np.ndarray]:
        net.setInput(np.ascontiguousarray(feed[INPUT_NAME]))
        results = net.forward(wanted)
        batch = feed[INPUT_NAME].shape[0]
        return {name: np.asarray(r).reshape(batch, *chw) for (name, chw), r in zip(outputs, results)}

    return SourceRuntime(f"OpenCV {cv2.__version__} DNN (readNetFromDarknet)", run, run)


register(Frontend("darknet", "DarkNet model (.cfg + .weights: YOLOv2/v3/v4-tiny, classifiers)", detect, load,
                  requires=("onnx", "numpy"), extra="compile", priority=40, suffixes=(".cfg", ".weights")))
