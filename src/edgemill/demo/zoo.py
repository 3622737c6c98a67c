"""Small, real ONNX models built in code (no downloads): a CNN, a transformer encoder block, an MLP.

The demo, the tests and the benchmarks use them. Weights are drawn from a seeded generator, so a
builder called twice gives byte-identical models. Needs the ``onnx`` package (``edgemill[compile]``).
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Batch = Union[int, str]  # a fixed batch size, or a symbol for a dynamic batch dimension
OPSET = 17


class _Graph:
    """A tiny graph builder: adds initializers and nodes with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, base: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = self.rng.normal(0.0, (2.0 / fan_in) ** 0.5, size=shape).astype(np.float32)
        return self.const(base, w)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        return self.op(op_type, inputs, 1, **attrs)[0]

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], out: str, out_type: onnx.ValueInfoProto) -> onnx.ModelProto:
        self.nodes[-1].output[0] = out_type.name
        graph = helper.make_graph(self.nodes, name, inputs, [out_type], initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgemill.demo.zoo"
        )
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def cnn(batch: Batch = 1, image: int = 32, channels: tuple[int, ...] = (16, 32, 64), classes: int = 10,
        seed: int = 0) -> onnx.ModelProto:
    """A ResNet-style CNN: conv-BN-ReLU stem, residual blocks with stride-2 downsampling, GAP, FC."""
    g = _Graph(seed)
    x = "image"
    c_in = 3

    def conv_bn(inp: str, cin: int, cout: int, stride: int, relu: bool) -> str:
        w = g.weight("conv_w", (cout, cin, 3, 3), cin * 9)
        y = g.one("Conv", [inp, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])
        scale = g.const("bn_scale", g.rng.uniform(0.5, 1.5, cout).astype(np.float32))
        bias = g.const("bn_bias", g.rng.normal(0, 0.1, cout).astype(np.float32))
        mean = g.const("bn_mean", g.rng.normal(0, 0.1, cout).astype(np.float32))
        var = g.const("bn_var", g.rng.uniform(0.5, 1.5, cout).astype(np.float32))
        y = g.one("BatchNormalization", [y, scale, bias, mean, var], epsilon=1e-5)
        return g.one("Relu", [y]) if relu else y

    h = conv_bn(x, c_in, channels[0], 1, relu=True)
    c_prev = channels[0]
    for i, c in enumerate(channels):
        stride = 1 if i == 0 else 2
        y = conv_bn(h, c_prev, c, stride, relu=True)
        y = conv_bn(y, c, c, 1, relu=False)
        if stride != 1 or c != c_prev:
            w = g.weight("proj_w", (c, c_prev, 1, 1), c_prev)
            h = g.one("Conv", [h, w], kernel_shape=[1, 1], strides=[stride, stride])
        h = g.one("Relu", [g.one("Add", [y, h])])
        c_prev = c
    h = g.one("Flatten", [g.one("GlobalAveragePool", [h])], axis=1)
    fc_w = g.weight("fc_w", (classes, c_prev), c_prev)
    fc_b = g.const("fc_b", np.zeros(classes, np.float32))
    g.one("Gemm", [h, fc_w, fc_b], transB=1)
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, 3, image, image])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    return g.model("edgemill_cnn", [inp], "logits", out)


def mlp(batch: Batch = 1, features: int = 64, hidden: tuple[int, ...] = (128, 128), classes: int = 10,
        seed: int = 1, weights: list[tuple[np.ndarray, np.ndarray]] | None = None) -> onnx.ModelProto:
    """A multilayer perceptron (Gemm + ReLU). ``weights`` ((W, b) per layer, W as [out, in]) overrides
    the random initialization, so a model trained elsewhere can be written as ONNX."""
    g = _Graph(seed)
    sizes = [features, *hidden, classes]
    h = "features"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if weights is not None:
            w = g.const("w", weights[i][0].astype(np.float32))
            b = g.const("b", weights[i][1].astype(np.float32))
        else:
            w = g.weight("w", (n_out, n_in), n_in)
            b = g.const("b", g.rng.normal(0, 0.01, n_out).astype(np.float32))
        h = g.one("Gemm", [h, w, b], transB=1)
        if i < len(sizes) - 2:
            h = g.one("Relu", [h])
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, features])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    return g.model("edgemill_mlp", [inp], "logits", out)


def encoder(batch: Batch = 1, seq: int = 16, d_model: int = 64, heads: int = 4, d_ff: int = 128,
            layers: int = 1, seed: int = 2) -> onnx.ModelProto:
    """Transformer encoder blocks (pre-LN): multi-head self-attention and a GELU feed-forward."""
    assert d_model % heads == 0
    g = _Graph(seed)
    d_head = d_model // heads
    h = "tokens"

    def layer_norm(x: str) -> str:
        gamma = g.const("ln_g", np.ones(d_model, np.float32))
        beta = g.const("ln_b", np.zeros(d_model, np.float32))
        return g.one("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    def linear(x: str, n_in: int, n_out: int) -> str:
        w = g.weight("w", (n_in, n_out), n_in)
        b = g.const("b", g.rng.normal(0, 0.01, n_out).astype(np.float32))
        return g.one("Add", [g.one("MatMul", [x, w]), b])

    split_shape = g.const("split_shape", np.array([0, 0, heads, d_head], np.int64))
    merge_shape = g.const("merge_shape", np.array([0, 0, d_model], np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(d_head), np.float32))
    sqrt2 = g.const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    one = g.const("one", np.array(1.0, np.float32))
    half = g.const("half", np.array(0.5, np.float32))

    for _ in range(layers):
        x = layer_norm(h)
        q, k, v = (g.one("Reshape", [linear(x, d_model, d_model), split_shape]) for _ in range(3))
        q = g.one("Transpose", [q], perm=[0, 2, 1, 3])
        k = g.one("Transpose", [k], perm=[0, 2, 3, 1])
        v = g.one("Transpose", [v], perm=[0, 2, 1, 3])
        scores = g.one("Mul", [g.one("MatMul", [q, k]), scale])
        attn = g.one("MatMul", [g.one("Softmax", [scores], axis=-1), v])
        attn = g.one("Reshape", [g.one("Transpose", [attn], perm=[0, 2, 1, 3]), merge_shape])
        h = g.one("Add", [h, linear(attn, d_model, d_model)])
        x = layer_norm(h)
        f = linear(x, d_model, d_ff)
        gelu = g.one("Mul", [g.one("Mul", [f, g.one("Add", [g.one("Erf", [g.one("Div", [f, sqrt2])]), one])]), half])
        h = g.one("Add", [h, linear(gelu, d_ff, d_model)])
    g.one("Identity", [h])
    inp = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [batch, seq, d_model])
    out = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [batch, seq, d_model])
    return g.model("edgemill_encoder", [inp], "hidden", out)


BUILDERS = {"cnn": cnn, "mlp": mlp, "encoder": encoder}
