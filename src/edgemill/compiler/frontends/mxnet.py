"""MXNet frontend: an exported ``PREFIX-symbol.json`` + ``PREFIX-NNNN.params`` pair to ONNX, read
without MXNet.

Why without MXNet: its last release (1.9.1) imports only beside ``numpy<1.24``, which cannot share an
environment with the rest of the compiler (onnx, onnxruntime, numpy 2). Both files are plain: the
symbol is a JSON list of nodes (``op``, ``name``, ``attrs``, ``inputs`` as ``[node, output, version]``)
and the parameters are MXNet's NDArray list format, read by :mod:`.mxnet_params`. Tests check this
reader against MXNet's own outputs, built in a side environment.

The user passes either file (or a folder holding one ``-symbol.json``). A ``-symbol.json`` whose
folder holds several epochs' ``.params`` needs the one to compile named instead.

Inputs are the symbol's variables that the ``.params`` file does not hold (``data`` for a Gluon
export). MXNet files carry no input shapes, so give them with ``--input data:1x3x224x224`` (a
symbol such as ``N`` keeps the batch dynamic); a model whose input goes straight into
``FullyConnected`` gets ``[N, in_features]`` without it. Label variables of the training-only
``*Output`` operators are dropped: at inference ``SoftmaxOutput`` is a softmax,
``LinearRegressionOutput`` the identity and ``LogisticRegressionOutput`` a sigmoid, as MXNet's
``forward(is_train=False)`` computes them.

Outputs are the symbol's heads, named ``<node>_output`` as MXNet's ``list_outputs`` names them.
Supported operators: see :data:`OPERATORS`; anything else is refused with the node's name.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import ModelFormatError, OptionError
from ...tensors import DTYPE_TO_ONNX_ELEM, normalize_dtype
from ..checks import check_model
from ..context import SourceInfo
from . import Frontend, FrontendRequest, pair_source_info, register
from .mxnet_params import read_params

OPSET = 17
SYMBOL_SUFFIX = "-symbol.json"
_PARAMS_NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)\.params$")

# Operators whose second input is a training label, and what they compute at inference.
_TRAINING_OUTPUTS = {"SoftmaxOutput": "softmax", "Softmax": "softmax", "LinearRegressionOutput": "identity",
                     "MAERegressionOutput": "identity", "LogisticRegressionOutput": "sigmoid"}


# --- finding and reading the files ------------------------------------------------------------


def _partners(path: Path) -> tuple[Path, Path]:
    """(symbol, params) for a path naming either file or a folder; a clear error otherwise."""
    if path.is_dir():
        symbols = sorted(path.glob("*" + SYMBOL_SUFFIX))
        if len(symbols) != 1:
            raise ModelFormatError(
                "expected exactly one MXNet -symbol.json in the folder", value=f"{path} ({len(symbols)} found)",
                fix="pass the PREFIX-symbol.json (or the PREFIX-NNNN.params) to compile",
            )
        path = symbols[0]
    match = _PARAMS_NAME.match(path.name)
    if match:
        symbol = path.with_name(match["prefix"] + SYMBOL_SUFFIX)
        if not symbol.is_file():
            raise ModelFormatError("the MXNet -symbol.json is missing", value=str(symbol),
                                   expected=f"{symbol.name} next to {path.name}",
                                   fix="export the model with HybridBlock.export() (it writes both files) and "
                                       "keep them in one folder")
        return symbol, path
    if not path.name.endswith(SYMBOL_SUFFIX):
        raise ModelFormatError("not an MXNet export", value=path.name, expected="PREFIX-symbol.json or "
                               "PREFIX-NNNN.params", fix="pass the files HybridBlock.export() wrote")
    prefix = path.name[: -len(SYMBOL_SUFFIX)]
    candidates = sorted(p for p in path.parent.glob("*.params") if _epoch_prefix(p) == prefix)
    if not candidates:
        raise ModelFormatError("the MXNet .params file is missing", value=str(path.parent / f"{prefix}-0000.params"),
                               expected=f"{prefix}-NNNN.params next to {path.name}",
                               fix="export the model with HybridBlock.export() (it writes both files) and keep them "
                                   "in one folder")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ModelFormatError("several epochs' .params lie beside the symbol", value=names,
                               fix=f"pass the one to compile, e.g. edgemill compile {candidates[-1]}")
    return path, candidates[0]


def _epoch_prefix(path: Path) -> str | None:
    match = _PARAMS_NAME.match(path.name)
    return match["prefix"] if match else None


def _read_symbol(path: Path) -> dict[str, Any]:
    try:
        symbol = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError("cannot read the MXNet symbol file as JSON", value=path.name,
                               fix=f"pass the -symbol.json that export() wrote ({exc})") from None
    if not isinstance(symbol, dict) or not isinstance(symbol.get("nodes"), list) or "heads" not in symbol:
        raise ModelFormatError("not an MXNet symbol file", value=path.name, expected='a JSON object with "nodes" '
                               'and "heads"', fix="pass the -symbol.json that export() wrote")
    return symbol


def _mxnet_version(symbol: dict[str, Any]) -> str:
    raw = symbol.get("attrs", {}).get("mxnet_version")
    if isinstance(raw, list) and len(raw) == 2 and isinstance(raw[1], int):
        major, rest = divmod(raw[1], 10000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return "unknown"


# --- attribute parsing ------------------------------------------------------------------------


def _literal(text: str) -> Any:
    """MXNet writes attributes as Python literals in strings: "(3, 3)", "True", "1e-05", "None"."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass
class _Node:
    index: int
    op: str
    name: str
    attrs: dict[str, str]
    inputs: list[str]

    def get(self, key: str, default: Any = None) -> Any:
        return _literal(self.attrs[key]) if key in self.attrs else default

    def ints(self, key: str, default: tuple[int, ...] = ()) -> list[int]:
        value = self.get(key, default)
        if value is None:
            return list(default)
        return [int(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1")

    def fail(self, problem: str, value: Any, fix: str) -> ModelFormatError:
        return ModelFormatError(f"{self.op} node '{self.name}': {problem}", value=value, fix=fix)


# --- the graph builder ------------------------------------------------------------------------


@dataclass
class _Builder:
    params: dict[str, np.ndarray]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    used_params: set[str] = field(default_factory=set)
    _consts: int = 0

    def add(self, op: str, inputs: list[str], node: _Node, suffix: str = "", **attrs: Any) -> str:
        out = f"{node.name}{suffix}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, array: np.ndarray, hint: str) -> str:
        self._consts += 1
        name = f"{hint}__const{self._consts}"
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def param(self, name: str) -> np.ndarray:
        self.used_params.add(name)
        return self.params[name]


Handler = Callable[[_Builder, _Node], str]


def _spatial(node: _Node, key: str, n: int, default: int) -> list[int]:
    values = node.ints(key)
    return values if values else [default] * n


def _convolution(b: _Builder, node: _Node) -> str:
    if node.get("layout") not in (None, "NCW", "NCHW", "NCDHW"):
        raise node.fail("only channels-first layouts are supported", node.get("layout"),
                        "export the model with layout='NCHW' (MXNet's default)")
    kernel = node.ints("kernel")
    n = len(kernel)
    pad = _spatial(node, "pad", n, 0)
    attrs = dict(kernel_shape=kernel, strides=_spatial(node, "stride", n, 1), dilations=_spatial(node, "dilate", n, 1),
                 pads=pad + pad, group=int(node.get("num_group", 1)))
    inputs = node.inputs[:2] if node.flag("no_bias", node.op == "Deconvolution") else node.inputs[:3]  # MXNet defaults
    if node.op == "Deconvolution":
        if node.ints("target_shape"):
            raise node.fail("target_shape is not supported", node.get("target_shape"),
                            "export with pad/adj instead of target_shape")
        attrs["output_padding"] = _spatial(node, "adj", n, 0)
        return b.add("ConvTranspose", inputs, node, **attrs)
    return b.add("Conv", inputs, node, **attrs)


def _fully_connected(b: _Builder, node: _Node) -> str:
    x, w = node.inputs[0], node.inputs[1]
    no_bias = node.flag("no_bias", False)
    if node.flag("flatten", True):
        flat = b.add("Flatten", [x], node, "__flat", axis=1)
        inputs = [flat, w] if no_bias else [flat, w, node.inputs[2]]
        return b.add("Gemm", inputs, node, transB=1)
    # flatten=False applies the layer to the last axis and keeps the others.
    wt = b.add("Transpose", [w], node, "__wt", perm=[1, 0])
    y = b.add("MatMul", [x, wt], node, "__mm" if not no_bias else "")
    return y if no_bias else b.add("Add", [y, node.inputs[2]], node)


def _batch_norm(b: _Builder, node: _Node) -> str:
    if int(node.get("axis", 1)) != 1:
        raise node.fail("only channel axis 1 is supported", node.get("axis"), "export with axis=1 (NCHW)")
    x, gamma, beta, mean, var = node.inputs[:5]
    if node.flag("fix_gamma", True):  # MXNet's default: gamma is held at 1 whatever the file holds
        ones = np.ones_like(b.param(gamma) if gamma in b.params else b.param(beta), dtype=np.float32)
        gamma = b.const(ones, f"{node.name}_gamma_fixed")
    return b.add("BatchNormalization", [x, gamma, beta, mean, var], node, epsilon=float(node.get("eps", 1e-3)))


_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus", "softsign": "Softsign"}


def _activation(b: _Builder, node: _Node) -> str:
    kind = node.get("act_type", "relu")
    if kind not in _ACTIVATIONS:
        raise node.fail("unsupported act_type", kind, f"use one of {', '.join(_ACTIVATIONS)}")
    return b.add(_ACTIVATIONS[kind], node.inputs[:1], node)


def _leaky_relu(b: _Builder, node: _Node) -> str:
    kind, slope, x = node.get("act_type", "leaky"), float(node.get("slope", 0.25)), node.inputs[0]
    if kind == "leaky":
        return b.add("LeakyRelu", [x], node, alpha=slope)
    if kind == "rrelu":  # at inference, the mean of the random slope's range
        lower, upper = float(node.get("lower_bound", 0.125)), float(node.get("upper_bound", 0.334))
        return b.add("LeakyRelu", [x], node, alpha=(lower + upper) / 2)
    if kind == "elu":
        return b.add("Elu", [x], node, alpha=slope)
    if kind == "selu":
        return b.add("Selu", [x], node, alpha=1.6732632423543772, gamma=1.0507009873554805)
    if kind == "prelu":
        gamma = b.param(node.inputs[1]).astype(np.float32)
        # MXNet broadcasts gamma over axis 1 (channels); ONNX broadcasts from the right.
        shaped = b.const(gamma.reshape((-1,) + (1,) * 2) if gamma.size > 1 else gamma.reshape(()), f"{node.name}_gamma")
        return b.add("PRelu", [x, shaped], node)
    if kind == "gelu":
        return _gelu(b, node, x)
    raise node.fail("unsupported act_type", kind, "use one of leaky, rrelu, elu, selu, prelu, gelu")


def _gelu(b: _Builder, node: _Node, x: str) -> str:
    scaled = b.add("Mul", [x, b.const(np.array(1 / np.sqrt(2), np.float32), node.name)], node, "__s")
    erf = b.add("Erf", [scaled], node, "__erf")
    one = b.add("Add", [erf, b.const(np.array(1, np.float32), node.name)], node, "__1p")
    half = b.add("Mul", [x, b.const(np.array(0.5, np.float32), node.name)], node, "__h")
    return b.add("Mul", [half, one], node)


def _pooling(b: _Builder, node: _Node) -> str:
    kind = node.get("pool_type", "max")
    if kind not in ("max", "avg"):
        raise node.fail("unsupported pool_type", kind, "use max or avg pooling")
    if node.get("layout") not in (None, "NCW", "NCHW", "NCDHW"):
        raise node.fail("only channels-first layouts are supported", node.get("layout"), "export with layout='NCHW'")
    if node.flag("global_pool", False):
        return b.add("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", node.inputs[:1], node)
    convention = node.get("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise node.fail("unsupported pooling_convention", convention, "use 'valid' or 'full'")
    kernel = node.ints("kernel")
    n = len(kernel)
    pad = _spatial(node, "pad", n, 0)
    attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=_spatial(node, "stride", n, 1), pads=pad + pad,
                                 ceil_mode=int(convention == "full"))
    if kind == "avg":
        attrs["count_include_pad"] = int(node.flag("count_include_pad", True))
        return b.add("AveragePool", node.inputs[:1], node, **attrs)
    return b.add("MaxPool", node.inputs[:1], node, **attrs)


def _softmax_on(b: _Builder, node: _Node, x: str, axis: int, log: bool = False) -> str:
    temperature = node.get("temperature")
    if temperature not in (None, 1, 1.0):
        x = b.add("Div", [x, b.const(np.array(float(temperature), np.float32), node.name)], node, "__t")
    return b.add("LogSoftmax" if log else "Softmax", [x], node, axis=axis)


def _softmax(b: _Builder, node: _Node) -> str:
    return _softmax_on(b, node, node.inputs[0], int(node.get("axis", -1)), log=node.op == "log_softmax")


def _softmax_activation(b: _Builder, node: _Node) -> str:
    mode = node.get("mode", "instance")
    if mode == "channel":
        return b.add("Softmax", node.inputs[:1], node, axis=1)
    flat = b.add("Flatten", node.inputs[:1], node, "__flat", axis=1)  # "instance": over all but the batch axis
    soft = b.add("Softmax", [flat], node, "__soft", axis=1)
    shape = b.add("Shape", node.inputs[:1], node, "__shape")
    return b.add("Reshape", [soft, shape], node)


def _training_output(b: _Builder, node: _Node) -> str:
    kind = _TRAINING_OUTPUTS[node.op]
    if kind == "identity":
        return b.add("Identity", node.inputs[:1], node)
    if kind == "sigmoid":
        return b.add("Sigmoid", node.inputs[:1], node)
    if node.flag("multi_output", False):
        return b.add("Softmax", node.inputs[:1], node, axis=1)
    # SoftmaxOutput without multi_output flattens all but the batch axis, like SoftmaxActivation.
    return _softmax_activation(b, node)


def _elementwise(onnx_op: str) -> Handler:
    def handler(b: _Builder, node: _Node) -> str:
        return b.add(onnx_op, node.inputs[:2], node)
    return handler


def _scalar(onnx_op: str, reverse: bool = False) -> Handler:
    def handler(b: _Builder, node: _Node) -> str:
        scalar = b.const(np.array(float(node.get("scalar", 0.0)), np.float32), node.name)
        inputs = [scalar, node.inputs[0]] if reverse else [node.inputs[0], scalar]
        return b.add(onnx_op, inputs, node)
    return handler


def _unary(onnx_op: str) -> Handler:
    def handler(b: _Builder, node: _Node) -> str:
        return b.add(onnx_op, node.inputs[:1], node)
    return handler


def _add_n(b: _Builder, node: _Node) -> str:
    return b.add("Sum", node.inputs, node)


def _concat(b: _Builder, node: _Node) -> str:
    return b.add("Concat", node.inputs, node, axis=int(node.get("dim", 1)))


def _flatten(b: _Builder, node: _Node) -> str:
    return b.add("Flatten", node.inputs[:1], node, axis=1)


def _reshape(b: _Builder, node: _Node) -> str:
    shape = node.ints("shape")
    if not shape or any(d < -1 for d in shape) or node.flag("reverse", False):
        raise node.fail("only shapes of sizes, 0 (copy) and -1 (infer) are supported", node.get("shape"),
                        "rewrite the Reshape with explicit sizes, or use Flatten")
    return b.add("Reshape", [node.inputs[0], b.const(np.array(shape, np.int64), node.name)], node)


def _transpose(b: _Builder, node: _Node) -> str:
    axes = node.ints("axes")
    return b.add("Transpose", node.inputs[:1], node, **({"perm": axes} if axes else {}))


def _clip(b: _Builder, node: _Node) -> str:
    lo = b.const(np.array(float(node.get("a_min")), np.float32), node.name)
    hi = b.const(np.array(float(node.get("a_max")), np.float32), node.name)
    return b.add("Clip", [node.inputs[0], lo, hi], node)


def _upsampling(b: _Builder, node: _Node) -> str:
    if node.get("sample_type", "nearest") != "nearest" or len(node.inputs) != 1:
        raise node.fail("only single-input nearest upsampling is supported", node.get("sample_type"),
                        "use sample_type='nearest', or Deconvolution for bilinear upsampling")
    scale = float(node.get("scale", 1))
    scales = b.const(np.array([1, 1, scale, scale], np.float32), node.name)
    return b.add("Resize", [node.inputs[0], "", scales], node, mode="nearest", nearest_mode="floor",
                 coordinate_transformation_mode="asymmetric")


def _reduce(onnx_op: str) -> Handler:
    def handler(b: _Builder, node: _Node) -> str:
        if node.flag("exclude", False):
            raise node.fail("exclude=True is not supported", True, "name the axes to reduce instead")
        axes = node.ints("axis")
        keep = int(node.flag("keepdims", False))
        if onnx_op == "ReduceSum":  # ReduceSum takes its axes as an input since opset 13
            inputs = [node.inputs[0]] + ([b.const(np.array(axes, np.int64), node.name)] if axes else [])
            return b.add(onnx_op, inputs, node, keepdims=keep)
        return b.add(onnx_op, node.inputs[:1], node, keepdims=keep, **({"axes": axes} if axes else {}))
    return handler


def _lrn(b: _Builder, node: _Node) -> str:
    return b.add("LRN", node.inputs[:1], node, size=int(node.get("nsize")), alpha=float(node.get("alpha", 1e-4)),
                 beta=float(node.get("beta", 0.75)), bias=float(node.get("knorm", 2.0)))


def _identity(b: _Builder, node: _Node) -> str:
    return b.add("Identity", node.inputs[:1], node)


OPERATORS: dict[str, Handler] = {
    "Convolution": _convolution, "Deconvolution": _convolution,
    "FullyConnected": _fully_connected,
    "BatchNorm": _batch_norm,
    "Activation": _activation, "LeakyReLU": _leaky_relu,
    "relu": _unary("Relu"), "sigmoid": _unary("Sigmoid"), "tanh": _unary("Tanh"),
    "Pooling": _pooling,
    "softmax": _softmax, "log_softmax": _softmax, "SoftmaxActivation": _softmax_activation,
    **{op: _training_output for op in _TRAINING_OUTPUTS},
    "Flatten": _flatten, "flatten": _flatten,
    "Concat": _concat, "concat": _concat,
    "elemwise_add": _elementwise("Add"), "_Plus": _elementwise("Add"), "_plus": _elementwise("Add"),
    "broadcast_add": _elementwise("Add"), "broadcast_plus": _elementwise("Add"), "add_n": _add_n,
    "ElementWiseSum": _add_n,
    "elemwise_sub": _elementwise("Sub"), "_Minus": _elementwise("Sub"), "_minus": _elementwise("Sub"),
    "broadcast_sub": _elementwise("Sub"), "broadcast_minus": _elementwise("Sub"),
    "elemwise_mul": _elementwise("Mul"), "_Mul": _elementwise("Mul"), "_mul": _elementwise("Mul"),
    "broadcast_mul": _elementwise("Mul"),
    "elemwise_div": _elementwise("Div"), "_Div": _elementwise("Div"), "_div": _elementwise("Div"),
    "broadcast_div": _elementwise("Div"),
    "_plus_scalar": _scalar("Add"), "_PlusScalar": _scalar("Add"),
    "_minus_scalar": _scalar("Sub"), "_MinusScalar": _scalar("Sub"), "_rminus_scalar": _scalar("Sub", reverse=True),
    "_mul_scalar": _scalar("Mul"), "_MulScalar": _scalar("Mul"),
    "_div_scalar": _scalar("Div"), "_DivScalar": _scalar("Div"), "_rdiv_scalar": _scalar("Div", reverse=True),
    "exp": _unary("Exp"), "log": _unary("Log"), "sqrt": _unary("Sqrt"), "abs": _unary("Abs"),
    "negative": _unary("Neg"), "square": lambda b, n: b.add("Mul", [n.inputs[0], n.inputs[0]], n),
    "Reshape": _reshape, "reshape": _reshape,
    "transpose": _transpose,
    "clip": _clip,
    "UpSampling": _upsampling,
    "mean": _reduce("ReduceMean"), "sum": _reduce("ReduceSum"), "max": _reduce("ReduceMax"),
    "LRN": _lrn,
    "Dropout": _identity, "_copy": _identity, "identity": _identity, "BlockGrad": _identity,
    "stop_gradient": _identity,
}


# --- symbol → graph ---------------------------------------------------------------------------


def _label_variables(nodes: list[dict[str, Any]]) -> set[int]:
    """Variables feeding only the label slot of a training-output operator: not inputs at inference."""
    labels: set[int] = set()
    for raw in nodes:
        if raw.get("op") in _TRAINING_OUTPUTS and len(raw.get("inputs", [])) > 1:
            labels.add(raw["inputs"][1][0])
    for raw in nodes:  # a variable also used elsewhere is a real input
        for slot, entry in enumerate(raw.get("inputs", [])):
            if entry[0] in labels and not (raw.get("op") in _TRAINING_OUTPUTS and slot == 1):
                labels.discard(entry[0])
    return labels


def _input_shapes(inputs: list[str], first_use: dict[str, tuple[str, _Node]], b: _Builder, symbol_path: Path,
                  request: FrontendRequest) -> dict[str, tuple[list[int | str], str]]:
    overrides = {o.name: o for o in request.inputs}
    unknown = sorted(set(overrides) - set(inputs))
    if unknown:
        raise OptionError("--input names an input this MXNet model does not have", value=", ".join(unknown),
                          expected="one of " + ", ".join(inputs), fix="use the model's input names")
    shapes: dict[str, tuple[list[int | str], str]] = {}
    for name in inputs:
        override = overrides.get(name)
        if override is not None:
            dims = [d if not (isinstance(d, int) and d == -1) else "N" for d in override.shape]
            shapes[name] = (dims, normalize_dtype(override.dtype) if override.dtype else "float32")
            continue
        op, consumer = first_use.get(name, ("", None))  # type: ignore[arg-type]
        if op == "FullyConnected" and consumer is not None and consumer.inputs[0] == name:
            weight = b.params.get(consumer.inputs[1])
            if weight is not None and weight.ndim == 2:
                shapes[name] = (["N", int(weight.shape[1])], "float32")
                continue
        example = f"{name}:1x3x224x224"
        raise OptionError(
            f"the MXNet model's input '{name}' needs a shape (MXNet files do not record it)", value=name,
            expected="--input NAME:SHAPE for each input: " + ", ".join(inputs),
            fix=f"e.g. edgemill compile {symbol_path.name} --input {example} (use N for a dynamic batch)",
        )
    return shapes


def _convert(symbol: dict[str, Any], params: dict[str, np.ndarray], symbol_path: Path,
             request: FrontendRequest) -> tuple[onnx.ModelProto, list[str], dict[str, Any]]:
    raw_nodes: list[dict[str, Any]] = symbol["nodes"]
    labels = _label_variables(raw_nodes)
    b = _Builder(params)
    names: list[str] = []  # tensor name of each node's first output
    inputs: list[str] = []
    first_use: dict[str, tuple[str, _Node]] = {}
    pending: list[_Node] = []
    for index, raw in enumerate(raw_nodes):
        op, name = str(raw.get("op")), str(raw.get("name"))
        if op == "null":
            names.append(name)
            if name not in params and index not in labels:
                inputs.append(name)
            continue
        try:
            entries = [names[e[0]] if e[1] == 0 else f"{names[e[0]]}__out{e[1]}" for e in raw.get("inputs", [])]
        except (IndexError, TypeError):
            raise ModelFormatError("the MXNet symbol has a node whose input is not an earlier node", value=name,
                                   fix="pass the -symbol.json that export() wrote, unedited") from None
        attrs = {str(k): str(v) for k, v in (raw.get("attrs") or raw.get("attr") or raw.get("param") or {}).items()}
        node = _Node(index, op, name, attrs, entries)
        for entry in entries:
            first_use.setdefault(entry, (op, node))
        names.append(name)
        pending.append(node)
    for node in pending:
        handler = OPERATORS.get(node.op)
        if handler is None:
            raise ModelFormatError(
                f"unsupported MXNet operator {node.op} (node '{node.name}')", value=node.op,
                expected="one of " + ", ".join(sorted(OPERATORS)),
                fix="replace the operator in the model, or export it to ONNX with mxnet.onnx and compile that",
            )
        if node.op in _TRAINING_OUTPUTS:
            node.inputs = node.inputs[:1]
        out = handler(b, node)
        if out != node.name:
            b.nodes.append(helper.make_node("Identity", [out], [node.name], name=f"{node.name}__id"))
    shapes = _input_shapes(inputs, first_use, b, symbol_path, request)

    outputs: list[str] = []
    for head in symbol["heads"]:
        tensor = names[head[0]] if head[1] == 0 else f"{names[head[0]]}__out{head[1]}"
        out = f"{names[head[0]]}_output" + (str(head[1]) if head[1] else "")
        b.nodes.append(helper.make_node("Identity", [tensor], [out], name=out))
        outputs.append(out)

    used = {i for n in b.nodes for i in n.input} | {init.name for init in b.inits}
    inits = list(b.inits)
    for name, array in params.items():
        if name in used:
            inits.append(numpy_helper.from_array(array, name))
    graph = helper.make_graph(
        b.nodes, symbol_path.name[: -len(SYMBOL_SUFFIX)],
        [helper.make_tensor_value_info(n, DTYPE_TO_ONNX_ELEM[dt], dims) for n, (dims, dt) in shapes.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgemill-mxnet")
    model.ir_version = min(model.ir_version, 8)
    unused = sorted(set(params) - used)
    details = {"inputs": {n: dims for n, (dims, _) in shapes.items()}, "operators": sorted({n.op for n in pending}),
               "unused_params": unused}
    return model, outputs, details


def _with_output_types(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Give each graph output the type and shape ONNX inference finds (MXNet records none)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if out.name in known and known[out.name].type.tensor_type.elem_type:
            out.CopyFrom(known[out.name])
        else:
            out.type.tensor_type.elem_type = TensorProto.FLOAT
    return check_model(model, where)


# --- the frontend -----------------------------------------------------------------------------


def detect(path: Path) -> bool:
    if path.is_dir():
        return len(list(path.glob("*" + SYMBOL_SUFFIX))) == 1
    if not path.is_file():
        return False
    match = _PARAMS_NAME.match(path.name)
    if match:
        return path.with_name(match["prefix"] + SYMBOL_SUFFIX).is_file()
    if not path.name.endswith(SYMBOL_SUFFIX):
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return b'"nodes"' in head and b'"op"' in head


def load(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    symbol_path, params_path = _partners(path)
    symbol = _read_symbol(symbol_path)
    params = read_params(params_path)
    model, outputs, details = _convert(symbol, params.arrays, symbol_path, request)
    model = _with_output_types(model, f"the ONNX graph built from {symbol_path.name}")
    info = pair_source_info(symbol_path, params_path, "mxnet", _mxnet_version(symbol), ("symbol", "params"),
                            params=params_path.name, outputs=outputs, reader="edgemill (no mxnet import)", **details,
                            **params.notes())
    return model, info


register(Frontend("mxnet", "MXNet export (PREFIX-symbol.json + PREFIX-NNNN.params), read without mxnet", detect,
                  load, requires=("onnx", "numpy"), extra="compile", priority=40,
                  suffixes=("-symbol.json", ".params")))
