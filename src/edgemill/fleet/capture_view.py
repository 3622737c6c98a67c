"""A capture in the form a person understands, for the dashboard: each tensor with its shape, dtype and
statistics, and, where its form allows, as an image (a small RGB or grey raster), a table of values or
a waveform; the model's answer (top classes with their scores, or the value); auxiliary blobs as text
when they are short UTF-8. A tensor that fits none of these is shown by its shape and statistics; no
tensor can make the view fail.

Only the first sample of a batch is drawn (the statistics cover all of it).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..captures.answers import answer_of
from ..captures.record import CaptureRecord
from ..monitoring.features import image_layout, is_distribution

MAX_IMAGE_SIDE = 256  # pixels: a thumbnail and a detail view, not the full frame
MAX_TABLE_VALUES = 256
MAX_WAVEFORM_POINTS = 1000
MIN_WAVEFORM_SAMPLES = 256  # a 1-D sample at least this long reads as a signal, shorter as a table
MAX_AUX_TEXT = 4096
TOP_CLASSES = 5


def capture_view(record: CaptureRecord, bgr_inputs: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``bgr_inputs``: inputs whose package takes BGR frames (its pre-processing says so): drawn as RGB."""
    return {
        "inputs": [tensor_view(name, array, name in bgr_inputs) for name, array in record.inputs.items()],
        "outputs": [tensor_view(name, array) for name, array in record.outputs.items()],
        "auxiliary": [_aux(name, bytes(blob)) for name, blob in record.auxiliary.items()],
        "answer": answer_view(record.outputs),
        "sampled": record.sampled,
    }


def tensor_view(name: str, array: np.ndarray, bgr: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "dtype": str(array.dtype), "shape": list(array.shape), "kind": "other"}
    try:
        out["stats"] = _stats(array)
        if array.ndim == 0 or array.size == 0 or array.dtype.kind not in "biuf":
            return out
        sample = array[0] if array.ndim >= 2 else array
        image = _as_image(array, bgr)
        if image is not None:
            out.update(kind="image", image=image)
        elif (sample.ndim == 1 or sample.ndim == 2 and 1 in sample.shape) and sample.size >= MIN_WAVEFORM_SAMPLES \
                and array.dtype.kind == "f":
            out.update(kind="waveform", waveform=_waveform(sample.reshape(-1)))
        elif sample.size <= MAX_TABLE_VALUES * 16:
            flat = sample.reshape(-1)
            out.update(kind="table", values=[_number(v) for v in flat[:MAX_TABLE_VALUES]],
                       truncated=bool(flat.size > MAX_TABLE_VALUES))
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:  # shown as it is; never a broken page
        out["kind"], out["problem"] = "other", f"{type(exc).__name__}: {exc}"
    return out


def answer_view(outputs: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    answer = answer_of(outputs)
    if answer is None:
        return None
    view: dict[str, Any] = answer.to_dict()
    scores = np.asarray(next(iter(outputs.values())))
    if answer.task == "classification" and scores.dtype.kind == "f" and scores.ndim == 2:
        row = scores[0].astype(np.float64)
        if not is_distribution(row[None]):  # logits: softmax them
            row = np.exp(row - row.max())
            row /= row.sum()
        top = np.argsort(-row)[:TOP_CLASSES]
        view["top"] = [{"class": int(k), "score": _number(row[k])} for k in top]
    return view


def _stats(array: np.ndarray) -> dict[str, float | None] | None:
    if array.size == 0 or array.dtype.kind not in "biuf":
        return None
    values = array.astype(np.float64, copy=False)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None}
    return {"min": _number(finite.min()), "max": _number(finite.max()), "mean": _number(finite.mean()),
            "std": _number(finite.std())}


def _as_image(array: np.ndarray, bgr: bool = False) -> dict[str, Any] | None:
    """The first sample as an H x W x {1, 3} uint8 raster (alpha dropped; BGR turned RGB), at most
    MAX_IMAGE_SIDE a side."""
    layout = image_layout(list(array.shape))
    if layout:
        pixels = array[0] if layout == "nhwc" else np.moveaxis(array[0], 0, -1)
    elif array.ndim == 3 and min(array.shape[1:]) >= 8:  # N x H x W: grey
        pixels = array[0][..., None]
    else:
        return None
    if pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    if pixels.shape[-1] == 2 or min(pixels.shape[:2]) < 8:
        return None
    if bgr and pixels.shape[-1] == 3:
        pixels = pixels[..., ::-1]
    step = max(1, math.ceil(max(pixels.shape[:2]) / MAX_IMAGE_SIDE))
    pixels = pixels[::step, ::step]
    scaled_from = None
    if pixels.dtype != np.uint8:
        values = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        scaled_from = [low, high]
        values = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    height, width, channels = pixels.shape
    return {"width": int(width), "height": int(height), "channels": int(channels), "step": step,
            "scaled_from": scaled_from, "data_b64": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()}


def _waveform(signal: np.ndarray) -> dict[str, Any]:
    """Per bucket of samples, its minimum and maximum: the envelope a plot of the whole signal shows."""
    n = signal.size
    buckets = min(n, MAX_WAVEFORM_POINTS)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    values = np.nan_to_num(signal.astype(np.float64))
    lows = np.minimum.reduceat(values, edges[:-1])
    highs = np.maximum.reduceat(values, edges[:-1])
    return {"samples": int(n), "min": [_number(v) for v in lows], "max": [_number(v) for v in highs]}


def _number(value: Any) -> float | int | None:
    v = value.item() if hasattr(value, "item") else value
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v  # type: ignore[no-any-return]


def _aux(name: str, blob: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "size": len(blob)}
    if len(blob) <= MAX_AUX_TEXT:
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            return out
        if text.isprintable() or all(c.isprintable() or c in "\n\r\t" for c in text):
            out["text"] = text
    return out
