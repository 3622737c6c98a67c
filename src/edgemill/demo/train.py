"""A small real model for the demo: an MLP classifier trained with NumPy on a synthetic dataset.

No downloads: the data are Gaussian clusters drawn from a seeded generator, split into train and
held-out test sets, and the network is trained by full-batch gradient descent with Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_dataset(features: int = 16, classes: int = 4, per_class: int = 300, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.8, size=(classes, features))
    x = np.concatenate([c + rng.normal(0, 1.0, size=(per_class, features)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(classes), per_class)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    split = int(0.8 * len(y))
    return Dataset(x[:split], y[:split], x[split:], y[split:])


@dataclass
class TrainedMLP:
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W [out, in], b [out]) per layer

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = x.astype(np.float32)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(x).argmax(1) == y).mean())


def train_mlp(data: Dataset, hidden: int = 32, steps: int = 300, lr: float = 0.01, seed: int = 0) -> TrainedMLP:
    rng = np.random.default_rng(seed)
    n_in, n_out = data.x_train.shape[1], int(data.y_train.max()) + 1
    sizes = [n_in, hidden, n_out]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [rng.normal(0, (2 / a) ** 0.5, (b, a)), np.zeros(b)]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    x, y = data.x_train.astype(np.float64), data.y_train
    onehot = np.eye(n_out)[y]
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        z1 = x @ w1.T + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ w2.T + b2
        p = np.exp(z2 - z2.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g2 = (p - onehot) / len(y)
        gh = g2 @ w2 * (z1 > 0)
        grads = [gh.T @ x, gh.sum(0), g2.T @ h1, g2.sum(0)]
        for i, g in enumerate(grads):
            m, v = moments[i]
            m[:] = 0.9 * m + 0.1 * g
            v[:] = 0.999 * v + 0.001 * g * g
            params[i] -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    w1, b1, w2, b2 = (p.astype(np.float32) for p in params)
    return TrainedMLP([(w1, b1), (w2, b2)])
