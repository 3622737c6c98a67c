"""The benchmark's models and data, built here so the benchmark downloads nothing.

* ``resnet``: a ResNet-18-style CNN (basic blocks 2-2-2-2, widths 64-512), 1x3x224x224.
* ``mobilenet``: a MobileNetV2-style CNN (inverted residuals, width 1.0), 1x3x224x224.
* ``encoder``: a BERT-style encoder, 4 layers, d_model 256, 4 heads, d_ff 1024, 128 tokens of embeddings.
* ``mlp``: an MLP 512-512-512-10 at batch 1.
* ``gbt``: a gradient-boosted tree ensemble (XGBoost, 100 rounds of depth 4, 10 classes) on digits.

The two CNNs are trained briefly on scikit-learn's digits (which ship inside scikit-learn), each 8x8
image scaled up to 224x224 and copied to three channels, so that their INT8/bf16 variants can be judged
by top-1 accuracy on a real held-out split, not only by agreement on random inputs. The encoder and the
MLP keep random weights: they are judged by output error against FP32.

Imported by ``bench/run.py`` (build, in the parent) and ``bench/_worker.py`` (PyTorch eager, in a child).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IMAGE = 224
CLASSES = 10


@dataclass(frozen=True)
class Digits:
    train_x: np.ndarray  # [N, 1, 8, 8] in [0, 1]
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def digits(seed: int = 0) -> Digits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = 1400  # 1400 train, 397 held out
    return Digits(x[:cut], y[:cut], x[cut:], y[cut:])


def to_image(x8: np.ndarray, size: int = IMAGE) -> np.ndarray:
    """[N, 1, 8, 8] digits -> [N, 3, size, size] float32, nearest upscaling, normalized around 0."""
    scale = math.ceil(size / 8)
    big = np.repeat(np.repeat(x8, scale, axis=2), scale, axis=3)[:, :, :size, :size]
    return np.ascontiguousarray(np.repeat((big - 0.5) / 0.5, 3, axis=1), dtype=np.float32)


def build_torch(name: str):  # type: ignore[no-untyped-def]
    """The PyTorch module for ``name`` (random weights; ``train`` fits the CNNs)."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
            self.skip = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers: list[nn.Module] = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, 1, act=None)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    class EncoderLayer(nn.Module):
        def __init__(self, d: int, heads: int, ff: int) -> None:
            super().__init__()
            self.heads, self.d = heads, d
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.d // self.heads).permute(2, 0, 3, 1, 4)
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d // self.heads), dim=-1)
            x = self.norm1(x + self.out((attn @ v).transpose(1, 2).reshape(b, t, self.d)))
            return self.norm2(x + self.ff(x))

    torch.manual_seed(0)
    if name == "resnet":
        layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, CLASSES))
    if name == "mobilenet":
        layers = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for expand, cout, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [conv_bn(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, CLASSES)]
        return nn.Sequential(*layers)
    if name == "encoder":
        return nn.Sequential(*[EncoderLayer(256, 4, 1024) for _ in range(4)])
    if name == "mlp":
        return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    raise ValueError(f"unknown torch model {name!r}")


def example_input(name: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shapes = {"resnet": (1, 3, IMAGE, IMAGE), "mobilenet": (1, 3, IMAGE, IMAGE), "encoder": (1, 128, 256), "mlp": (1, 512)}
    return rng.standard_normal(shapes[name]).astype(np.float32)


def train_cnn(net, data: Digits, steps: int, batch: int = 16, log=print):  # type: ignore[no-untyped-def]
    """Fit a CNN on the digits at 224x224 for ``steps`` mini-batches (Adam); returns held-out top-1."""
    import time

    import torch

    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    rng = np.random.default_rng(0)
    net.train()
    started = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(data.train_y), batch, replace=False)
        xb, yb = torch.from_numpy(to_image(data.train_x[idx])), torch.from_numpy(data.train_y[idx])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            log(f"    step {step + 1}/{steps}  loss {loss.item():.3f}  ({time.perf_counter() - started:.0f} s)")
    net.eval()
    with torch.inference_mode():
        hits = 0
        for i in range(0, len(data.test_y), 50):
            logits = net(torch.from_numpy(to_image(data.test_x[i:i + 50])))
            hits += int((logits.argmax(1).numpy() == data.test_y[i:i + 50]).sum())
    return hits / len(data.test_y)
