"""What the fleet watches of a model: features of its inputs and outputs, each with bins fixed at compile
time, so that a histogram counted on any device merges exactly with every other and with the baseline.

A feature is one number per sample (item of the batch), chosen to fit the tensor:

* an image-like input (4-D with at most 4 channels, NCHW or NHWC): per channel, the sample's mean
  (brightness, colour balance) and standard deviation (contrast), over a regular grid of at most
  ``GRID_PIXELS`` pixels (:func:`image_grid`);
* a tabular input (2-D, ``[N, features]``): each column (at most ``max_features``: the most spread out);
* any other numeric input: the sample's mean and standard deviation;
* a classifier output (``[N, classes]`` float): the predicted class (one bin per class) and the top
  score (softmax of the row when it is not already a distribution);
* any other float output: the sample's mean (a regressor's value); an integer output: its value as a
  category (the values seen in the baseline, plus one bin for anything else).

Continuous features are binned at the baseline's deciles, with open outer bins; so the baseline is close
to uniform over its bins and a shift shows up as mass moving to the edges.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

DECILES = np.linspace(0.1, 0.9, 9)
MAX_FEATURES = 32  # per tabular input
MAX_CATEGORIES = 64  # distinct values of an integer output kept as their own bin
MAX_CLASSES = 1000  # a classifier output wider than this is watched by its top score only
GRID_PIXELS = 1024  # per channel, at most: what an image's channel statistics are computed on


@dataclass(frozen=True)
class Feature:
    """One watched number per sample, its bins and the baseline's counts over them."""

    key: str  # unique in the package, e.g. "input:image:channel_mean:0"
    side: str  # "input" or "output"
    tensor: str
    statistic: str  # channel_mean | channel_std | column | sample_mean | sample_std | predicted_class | top_score | category
    index: int = -1  # the channel or column (-1: none)
    layout: str = ""  # image inputs: "nchw" or "nhwc"
    edges: tuple[float, ...] = ()  # continuous: inner bin edges, ascending (bins = len + 1)
    categories: tuple[int, ...] = ()  # categorical: the values with a bin of their own (+1 "other" bin)
    baseline: tuple[int, ...] = ()  # counts per bin over the baseline data

    @property
    def categorical(self) -> bool:
        return self.statistic in ("predicted_class", "category")

    @property
    def bins(self) -> int:
        return len(self.categories) + 1 if self.categorical else len(self.edges) + 1

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """The bin index of each value (int64, in ``range(self.bins)``)."""
        values = np.asarray(values)
        if not self.categorical:
            return np.searchsorted(np.asarray(self.edges), values.astype(np.float64), side="right")
        cats = np.asarray(self.categories, dtype=np.int64)
        v = values.astype(np.int64)
        pos = np.searchsorted(cats, v)
        hit = (pos < len(cats)) & (cats[np.minimum(pos, len(cats) - 1)] == v)
        return np.where(hit, pos, len(cats))

    def count(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.bin_of(values).ravel(), minlength=self.bins).astype(np.int64)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"key": self.key, "side": self.side, "tensor": self.tensor, "statistic": self.statistic}
        if self.index >= 0:
            out["index"] = self.index
        if self.layout:
            out["layout"] = self.layout
        if self.categorical:
            out["categories"] = list(self.categories)
        else:
            out["edges"] = [float(e) for e in self.edges]
        out["baseline"] = list(self.baseline)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Feature:
        return cls(key=str(d["key"]), side=str(d["side"]), tensor=str(d["tensor"]), statistic=str(d["statistic"]),
                   index=int(d.get("index", -1)), layout=str(d.get("layout", "")),  # type: ignore[arg-type]
                   edges=tuple(float(e) for e in d.get("edges", ())),  # type: ignore[union-attr]
                   categories=tuple(int(c) for c in d.get("categories", ())),  # type: ignore[union-attr]
                   baseline=tuple(int(c) for c in d.get("baseline", ())))  # type: ignore[union-attr]


def bins_digest(features: Sequence[Feature]) -> str:
    """A short digest of the features' keys and bins, in order: histograms merge only where theirs agree
    (a device sends it with its counts; the server compares it with the package baseline's)."""
    lines = [f"{f.key}|{','.join(repr(float(e)) for e in f.edges)}|{','.join(str(int(c)) for c in f.categories)}"
             for f in features]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def bin_labels(feature: Feature) -> list[str]:
    """A short label per bin, for a histogram's axis: "< 0.12", "0.12 to 0.25", ">= 0.9"; "3", "other"."""
    if feature.categorical:
        return [str(c) for c in feature.categories] + ["other"]
    e = [f"{x:.4g}" for x in feature.edges]
    if not e:
        return ["all"]
    return [f"< {e[0]}"] + [f"{a} to {b}" for a, b in zip(e, e[1:])] + [f">= {e[-1]}"]


# --- what a tensor's features are -------------------------------------------------------------------

def image_layout(shape: Sequence[int | None]) -> str:
    """"nchw" or "nhwc" for a 4-D tensor with at most 4 channels on one side and more on the other, else ""."""
    if len(shape) != 4:
        return ""
    c1, c3 = shape[1], shape[3]
    small = (lambda d: isinstance(d, int) and 0 < d <= 4)
    if small(c1) and not small(c3):
        return "nchw"
    if small(c3) and not small(c1):
        return "nhwc"
    return ""


def per_sample(feature_statistic: str, array: np.ndarray, layout: str = "") -> np.ndarray:
    """The statistic's values for every sample: shape ``[N]`` or ``[N, K]`` (per channel / column)."""
    a = np.asarray(array)
    if a.size == 0:
        return np.empty(0)  # an empty batch (or a tensor with a zero dimension) has no samples to count
    if feature_statistic in ("channel_mean", "channel_std"):
        return channel_stats(image_grid(a, layout), layout)[feature_statistic == "channel_std"]
    flat = a.reshape(a.shape[0], -1) if a.ndim >= 1 else a.reshape(1, 1)  # axis 0 is the batch
    if feature_statistic == "column":
        return flat
    if feature_statistic == "predicted_class":
        return flat.argmax(axis=1)
    if feature_statistic == "top_score":
        return _top_score(flat)
    flat = flat.astype(np.float64, copy=False)
    if feature_statistic == "sample_mean":
        return flat.mean(axis=1)
    if feature_statistic == "sample_std":
        return flat.std(axis=1)
    if feature_statistic == "category":
        return flat[:, 0] if flat.shape[1] == 1 else flat.ravel()
    raise ValueError(f"unknown statistic {feature_statistic!r}")


def image_grid(a: np.ndarray, layout: str) -> np.ndarray:
    """The pixels an image's channel statistics are computed on (``grid_view``), as a contiguous float32
    array."""
    return np.ascontiguousarray(grid_view(a, layout), dtype=np.float32)


def grid_view(a: np.ndarray, layout: str) -> np.ndarray:
    """A regular grid of at most ~GRID_PIXELS pixels per channel of an image batch, as a strided view (no
    copy): brightness and contrast of a frame need no more; a 224x224 frame is read at every 7th row and
    column."""
    return a[_grid_index(a.shape, layout)]


@functools.lru_cache(maxsize=256)
def _grid_index(shape: tuple[int, ...], layout: str) -> tuple[slice, ...]:
    """The slices of ``grid_view`` for one shape (worked out once: the Predict path sees few shapes)."""
    h_axis, w_axis = (2, 3) if layout == "nchw" else (1, 2)
    step = max(1, math.ceil(math.sqrt(shape[h_axis] * shape[w_axis] / GRID_PIXELS)))
    every, grid = slice(None), slice(None, None, step)
    return (every, every, grid, grid) if layout == "nchw" else (every, grid, grid, every)


def channel_stats(grid: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Per sample and channel, the mean and the standard deviation of a gridded image (``image_grid``),
    both ``[N, C]``: one pass for the sums and one for the sums of squares, both accumulated in float64
    (no loss on 8-bit or float pixels) without a float64 copy of the pixels."""
    n = grid.shape[0]
    x = grid.reshape(n, grid.shape[1], -1) if layout == "nchw" else grid.reshape(n, -1, grid.shape[-1]).transpose(0, 2, 1)
    mean = x.mean(axis=2, dtype=np.float64)
    squares = np.einsum("ncp,ncp->nc", x, x, dtype=np.float64) / max(x.shape[2], 1)
    return mean, np.sqrt(np.maximum(squares - mean * mean, 0.0))


def is_distribution(rows: np.ndarray) -> bool:
    """Whether a classifier's ``[N, C]`` scores already are probabilities (non-negative, each row summing
    to 1), rather than logits that a softmax turns into them."""
    return bool(rows.size and (rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def _top_score(rows: np.ndarray) -> np.ndarray:
    """The highest class probability per row: the row itself when it already is a distribution, else
    the largest softmax value, which is 1 / sum(exp(row - max(row)))."""
    x = rows.astype(np.float32, copy=False)
    if is_distribution(x):
        return x.max(axis=1)
    return 1.0 / np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, dtype=np.float64)


def _plan_input(name: str, dtype: str, shape: Sequence[int | None]) -> list[tuple[str, int, str]]:
    """(statistic, index, layout) for each feature an input gets, before any column is dropped."""
    if not dtype.startswith(("float", "int", "uint", "bool")) or not shape:
        return []
    layout = image_layout(shape)
    if layout:
        channels = int(shape[1] if layout == "nchw" else shape[3])  # type: ignore[arg-type]
        return ([("channel_mean", c, layout) for c in range(channels)]
                + [("channel_std", c, layout) for c in range(channels)])
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return [("column", i, "") for i in range(shape[1])]
    return [("sample_mean", -1, ""), ("sample_std", -1, "")]


def _plan_output(dtype: str, shape: Sequence[int | None]) -> list[tuple[str, int, str]]:
    if not shape or not dtype.startswith(("float", "int", "uint", "bool")):
        return []
    if dtype.startswith("float"):
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2:
            return ([("predicted_class", -1, "")] if shape[1] <= MAX_CLASSES else []) + [("top_score", -1, "")]
        return [("sample_mean", -1, "")]
    return [("category", -1, "")]


# --- bins from the baseline -------------------------------------------------------------------------

def continuous_edges(values: np.ndarray) -> tuple[float, ...]:
    """Inner edges at the deciles (deduplicated); a constant gets a narrow bin of its own."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0,)
    edges = np.unique(np.quantile(v, DECILES))
    if len(edges) == 1:
        c = float(edges[0])
        return (c, c + max(abs(c), 1.0) * 1e-6)
    return tuple(float(e) for e in edges)


def _feature(side: str, tensor: str, statistic: str, index: int, layout: str, values: np.ndarray,
             classes: int = 0) -> Feature:
    key = f"{side}:{tensor}:{statistic}" + (f":{index}" if index >= 0 else "")
    if statistic == "predicted_class":
        bins = {"categories": tuple(range(classes))}
    elif statistic == "category":
        seen = np.unique(np.asarray(values).astype(np.int64))[:MAX_CATEGORIES]
        bins = {"categories": tuple(int(s) for s in seen)}
    else:
        bins = {"edges": continuous_edges(values)}
    unbinned = Feature(key, side, tensor, statistic, index, layout, **bins)  # type: ignore[arg-type]
    return replace(unbinned, baseline=tuple(int(c) for c in unbinned.count(values)))


def _entropy(counts: Sequence[int]) -> float:
    c = np.asarray(counts, dtype=np.float64)
    p = c[c > 0] / c.sum() if c.sum() else c[:0]
    return float(-(p * np.log(p)).sum())


def build_features(inputs: Sequence[tuple[str, str, Sequence[int | None]]],
                   outputs: Sequence[tuple[str, str, Sequence[int | None]]],
                   feeds: Sequence[Mapping[str, np.ndarray]], results: Sequence[Mapping[str, np.ndarray]],
                   max_features: int = MAX_FEATURES) -> list[Feature]:
    """Every feature of the model, binned and counted over the baseline ``feeds`` and the model's
    ``results`` on them. ``inputs``/``outputs`` are (name, dtype, shape) as the package declares them."""
    features: list[Feature] = []
    for side, specs, data in (("input", inputs, feeds), ("output", outputs, results)):
        for name, dtype, shape in specs:
            arrays = [np.asarray(d[name]) for d in data if name in d and np.asarray(d[name]).size]
            if not arrays:
                continue
            plan = _plan_input(name, dtype, shape) if side == "input" else _plan_output(dtype, shape)
            tensor_features: list[Feature] = []
            for statistic, index, layout in plan:
                values = np.concatenate([np.atleast_1d(per_sample(statistic, a, layout)) for a in arrays])
                if index >= 0:
                    values = values.reshape(values.shape[0], -1)[:, index] if values.ndim > 1 else values
                classes = int(shape[1]) if statistic == "predicted_class" else 0  # type: ignore[arg-type]
                tensor_features.append(_feature(side, name, statistic, index, layout, values, classes))
            columns = [f for f in tensor_features if f.statistic == "column"]
            if len(columns) > max_features:  # keep the most spread-out columns
                keep = {f.key for f in sorted(columns, key=lambda f: (-_entropy(f.baseline), f.index))[:max_features]}
                tensor_features = [f for f in tensor_features if f.statistic != "column" or f.key in keep]
            features.extend(tensor_features)
    return features


# --- the package file -------------------------------------------------------------------------------

BASELINE_FORMAT = "edgemill.baseline/1"


@dataclass(frozen=True)
class Baseline:
    """A package's ``monitoring/baseline.json``, parsed (compiler/baseline.py writes it)."""

    data: str  # what it was counted from
    synthetic: bool  # generated inputs: weak evidence
    samples: int
    features: tuple[Feature, ...]


def parse_baseline(raw: bytes) -> Baseline:
    """Parse and check a baseline file; ``ValueError`` names what is wrong."""
    import json

    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the baseline is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise ValueError(f"the baseline's format is {doc.get('format') if isinstance(doc, dict) else None!r}, "
                         f"expected {BASELINE_FORMAT!r}")
    try:
        features = tuple(Feature.from_dict(f) for f in doc["features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a baseline feature is malformed: {exc}") from None
    for f in features:
        if len(f.baseline) != f.bins or list(f.edges) != sorted(f.edges) or list(f.categories) != sorted(set(f.categories)):
            raise ValueError(f"baseline feature {f.key!r} has bins that do not fit its counts")
    return Baseline(str(doc.get("data", "")), bool(doc.get("synthetic")), int(doc.get("samples", 0)), features)
