"""Builds the MXNet test models with MXNet itself. Runs in MXNet's own environment (mxnet 1.9.1 needs
numpy<1.24, so it cannot share the test environment); imports nothing of edgemill's.

    python build_models.py DATA.npz OUT_DIR

DATA.npz holds the datasets (iris_x/iris_y/iris_test, digits_x/digits_y/digits_test, float32 and int).
For each model it writes OUT_DIR/<name>-symbol.json and OUT_DIR/<name>-0000.params, and into
OUT_DIR/reference.npz MXNet's own outputs on the held-out inputs (<name>), which the tests compare the
compiled package against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# MXNet 1.9.1's bundled oneDNN dies with SIGFPE in training kernels on recent CPUs (its cache-size
# probe divides by zero); its plain kernels are the reference here anyway.
os.environ.setdefault("MXNET_MKLDNN_ENABLED", "0")
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402


def train(net: gluon.HybridBlock, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> None:
    """A few epochs of Adam on softmax cross-entropy. The nets end in a softmax, so the loss takes
    probabilities (from_logits would expect log-probabilities)."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=True, from_logits=True)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": lr})
    data = gluon.data.DataLoader(gluon.data.ArrayDataset(nd.array(x), nd.array(y)), batch_size=32, shuffle=True)
    for _ in range(epochs):
        for xb, yb in data:
            with autograd.record():
                loss = loss_fn(nd.log(net(xb) + 1e-9), yb)
            loss.backward()
            trainer.step(xb.shape[0])


class Softmax(gluon.HybridBlock):
    def hybrid_forward(self, F, x):  # noqa: N803 - Gluon's signature
        return F.softmax(x, axis=-1)


class ResidualDigits(gluon.HybridBlock):
    """A small classifier that uses most of what vision nets export: conv + BatchNorm, a residual add,
    a concat of max- and average-pool branches (one with the 'full' rounding), PReLU, ELU, Dropout,
    global pooling, flatten and dense."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.stem = gluon.nn.HybridSequential()
            self.stem.add(gluon.nn.Conv2D(8, 3, padding=1), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"))
            self.res = gluon.nn.HybridSequential()
            self.res.add(gluon.nn.Conv2D(8, 3, padding=1, use_bias=False), gluon.nn.BatchNorm())
            self.prelu = gluon.nn.PReLU()
            self.maxpool = gluon.nn.MaxPool2D(3, 2, ceil_mode=True)
            self.avgpool = gluon.nn.AvgPool2D(3, 2, padding=1, ceil_mode=False)
            self.elu = gluon.nn.ELU(0.5)
            self.head = gluon.nn.HybridSequential()
            self.head.add(gluon.nn.Conv2D(16, 1), gluon.nn.Dropout(0.2), gluon.nn.GlobalAvgPool2D(),
                          gluon.nn.Flatten(), gluon.nn.Dense(10), Softmax())

    def hybrid_forward(self, F, x):  # noqa: N803
        y = self.stem(x)
        y = self.prelu(y + self.res(y))
        y = F.concat(self.maxpool(y), self.avgpool(y), dim=1)
        return self.head(self.elu(y))


def train_and_export(net: gluon.HybridBlock, name: str, dataset: str, epochs: int, lr: float,
                     data: np.lib.npyio.NpzFile, out: Path, refs: dict[str, np.ndarray]) -> None:
    """Train on DATASET_x/_y, record MXNet's outputs on DATASET_test, export NAME-symbol.json/.params."""
    net.initialize(mx.init.Xavier())
    train(net, data[f"{dataset}_x"], data[f"{dataset}_y"], epochs=epochs, lr=lr)
    net.hybridize()
    refs[name] = net(nd.array(data[f"{dataset}_test"])).asnumpy()
    net.export(str(out / name))


def build_mlp(data: np.lib.npyio.NpzFile, out: Path, refs: dict[str, np.ndarray]) -> None:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(16, activation="tanh"), gluon.nn.Dense(3), Softmax())
    train_and_export(net, "iris_mlp", "iris", 60, 0.02, data, out, refs)


def build_cnn(data: np.lib.npyio.NpzFile, out: Path, refs: dict[str, np.ndarray]) -> None:
    train_and_export(ResidualDigits(), "digits_cnn", "digits", 10, 0.01, data, out, refs)


def build_ops(data: np.lib.npyio.NpzFile, out: Path, refs: dict[str, np.ndarray]) -> None:
    """A symbol-API net (the older MXNet style) covering the rest of the operators, with random
    parameters: BatchNorm with its default fix_gamma=True, Deconvolution, nearest UpSampling, LRN,
    clip, scalar arithmetic, transpose, Reshape, FullyConnected without flatten, and SoftmaxOutput
    with its label variable."""
    s = mx.sym
    x = s.Variable("data")
    y = s.Convolution(x, kernel=(3, 3), num_filter=6, pad=(1, 1), no_bias=True, name="conv")
    y = s.BatchNorm(y, name="bn")  # fix_gamma defaults to True: gamma is ignored
    y = s.Activation(y, act_type="softrelu", name="softrelu")
    y = s.Deconvolution(y, kernel=(3, 3), stride=(2, 2), pad=(1, 1), adj=(1, 1), num_filter=4, name="deconv")
    y = s.UpSampling(y, scale=2, sample_type="nearest", name="up")
    y = s.Pooling(y, kernel=(3, 3), stride=(2, 2), pool_type="max", pooling_convention="full", name="pool_full")
    y = s.Pooling(y, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg", count_include_pad=False, name="pool_avg")
    y = s.LRN(y, nsize=3, alpha=1e-3, beta=0.75, knorm=2.0, name="lrn")
    y = s.clip(y, a_min=-1.5, a_max=1.5, name="clip")
    y = s.LeakyReLU(0.5 - y * 2.0, act_type="leaky", slope=0.2, name="lk")
    y = s.transpose(y, axes=(0, 2, 3, 1), name="nhwc")
    y = s.Reshape(y, shape=(0, -1, 4), name="rows")
    y = s.FullyConnected(y, num_hidden=5, flatten=False, name="fc_rows")
    y = s.mean(y, axis=1, name="pool_rows")
    y = s.FullyConnected(s.sigmoid(y), num_hidden=10, name="fc")
    y = s.SoftmaxOutput(y, name="softmax")
    x_test = data["digits_test"]
    shapes = {"data": (len(x_test), 1, 8, 8), "softmax_label": (len(x_test),)}
    arg_shapes, _, aux_shapes = y.infer_shape(**shapes)
    rng = np.random.default_rng(0)
    args = {n: nd.array(rng.normal(0, 0.5, shp)) for n, shp in zip(y.list_arguments(), arg_shapes) if n not in shapes}
    auxs = {n: nd.array(rng.uniform(0.5, 1.5, shp)) for n, shp in zip(y.list_auxiliary_states(), aux_shapes)}
    executor = y.bind(mx.cpu(), {**args, "data": nd.array(x_test), "softmax_label": nd.zeros(shapes["softmax_label"])},
                      aux_states=auxs, grad_req="null")
    refs["ops_symbol"] = executor.forward(is_train=False)[0].asnumpy()
    y.save(str(out / "ops_symbol-symbol.json"))
    nd.save(str(out / "ops_symbol-0000.params"), {**{f"arg:{k}": v for k, v in args.items()},
                                                  **{f"aux:{k}": v for k, v in auxs.items()}})


def main() -> None:
    data_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(0)
    np.random.seed(0)
    data = np.load(data_path)
    refs: dict[str, np.ndarray] = {}
    for build in (build_mlp, build_cnn, build_ops):
        build(data, out, refs)
    np.savez(out / "reference.npz", **refs)
    print("mxnet", mx.__version__, "built", ", ".join(sorted(refs)))


if __name__ == "__main__":
    main()
