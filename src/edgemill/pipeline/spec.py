"""What a package does before and after its model: the pre-processing of each image input and the
post-processing of the outputs, as typed, validated specs.

Written on the command line (``--preprocess "frame=480x640 color=BGR scale=1/255"``, ``--postprocess
topk=5``) or in a TOML file (``--pipeline pipeline.toml``), stored in the manifest as plain dicts
(:meth:`to_dict` / :meth:`from_dict`), so the device reads back exactly what the compiler built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import tomllib

from ..errors import FileNotFound, OptionError
from .detect import DetectSpec as Detect

LAYOUTS = ("NHWC", "NCHW")
COLORS = ("RGB", "BGR")
FRAME_DTYPES = ("uint8", "float32")
RESIZES = ("bilinear", "nearest")
FITS = ("stretch", "letterbox")
CLASSIFY_STEPS = ("softmax", "topk")
PRE_EXAMPLE = '--preprocess "frame=480x640 color=BGR scale=1/255 mean=0.485,0.456,0.406 std=0.229,0.224,0.225"'
POST_EXAMPLE = "--postprocess softmax,topk=5 (a classifier) or --postprocess yolo (a DarkNet detector)"


@dataclass(frozen=True)
class Preprocess:
    """How a camera frame becomes one model input. Applied in this order: cast to float, channel swap
    (``color`` -> ``model_color``), resize to the model's size (``fit``: stretch, or letterbox padded with
    ``pad``), ``(x * scale - mean) / std`` per channel, layout change to the model's, cast to its dtype."""

    frame: tuple[int, int]  # height, width of the frames the application sends
    input: str | None = None  # the model input it feeds (default: the only 4-D input)
    name: str | None = None  # the package input's name (default: the model input's)
    dtype: str = "uint8"
    layout: str = "NHWC"
    color: str = "RGB"
    model_color: str = "RGB"
    model_layout: str | None = None  # default: read from the model input's shape
    resize: str = "bilinear"
    fit: str = "stretch"
    pad: float = 114.0  # letterbox border, in frame units (114 as YOLOv5/v8; 127.5 as DarkNet's 0.5)
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _one_of("dtype", self.dtype, FRAME_DTYPES)
        _one_of("layout", self.layout, LAYOUTS)
        _one_of("color", self.color, COLORS)
        _one_of("model_color", self.model_color, COLORS)
        if self.model_layout is not None:
            _one_of("model_layout", self.model_layout, LAYOUTS)
        _one_of("resize", self.resize, RESIZES)
        _one_of("fit", self.fit, FITS)
        if len(self.frame) != 2 or any(not isinstance(v, int) or v < 1 for v in self.frame):
            raise OptionError("--preprocess frame= must be two positive sizes", value=self.frame,
                              expected="HEIGHTxWIDTH, e.g. frame=480x640", fix="give the size of the camera's frames")
        if not self.scale > 0:
            raise OptionError("--preprocess scale= must be positive", value=self.scale, fix="e.g. scale=1/255")
        if any(s <= 0 for s in self.std):
            raise OptionError("--preprocess std= must be positive", value=list(self.std), fix="e.g. std=0.229,0.224,0.225")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError("unknown pre-processing key", value=unknown[0], expected=", ".join(sorted(known)),
                              fix=f"write it like {PRE_EXAMPLE}")
        values = dict(data)
        if "frame" in values:
            values["frame"] = _size(values["frame"])
        for key in ("mean", "std"):
            if key in values:
                values[key] = _numbers(key, values[key])
        if "scale" in values:
            values["scale"] = _number("scale", values["scale"])
        if "pad" in values:
            values["pad"] = _number("pad", values["pad"])
        for key in ("layout", "color", "model_color", "model_layout"):
            if isinstance(values.get(key), str):
                values[key] = values[key].upper()
        if "frame" not in values:
            raise OptionError("--preprocess needs the frame size", value=_text(data), expected="frame=HEIGHTxWIDTH",
                              fix=f"write it like {PRE_EXAMPLE}")
        return cls(**values)

    def channel_values(self, key: str, channels: int) -> tuple[float, ...]:
        """``mean``/``std`` for ``channels`` channels (one value applies to all; none: 0 and 1)."""
        values = getattr(self, key)
        if not values:
            return (0.0 if key == "mean" else 1.0,) * channels
        if len(values) == 1:
            return values * channels
        if len(values) != channels:
            raise OptionError(f"--preprocess {key}= has {len(values)} values for a {channels}-channel input",
                              value=list(values), expected=f"1 or {channels} values",
                              fix=f"give one {key} per channel, in the model's channel order")
        return tuple(values)


@dataclass(frozen=True)
class Postprocess:
    """Steps on the model's outputs: ``softmax`` and/or ``topk`` on one scores output (the others pass
    through), or ``detect`` on a detector's outputs. ``labels`` names the classes."""

    softmax: bool = False
    topk: int | None = None
    output: str | None = None  # the scores output (default: the first)
    detect: Detect | None = None
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.detect is not None and (self.softmax or self.topk):
            raise OptionError("--postprocess mixes a detector's decoding with classifier steps",
                              value="yolo + softmax/topk", fix="use yolo alone for a detector, softmax/topk for a classifier")
        if self.topk is not None and self.topk < 1:
            raise OptionError("--postprocess topk= must be at least 1", value=self.topk, fix="e.g. topk=5")
        if self.labels and self.detect is None and self.topk is None:
            raise OptionError("--labels names classes, but nothing returns classes", value=f"{len(self.labels)} labels",
                              fix="add --postprocess topk=K (a classifier) or --postprocess yolo (a detector)")

    @property
    def empty(self) -> bool:
        return not (self.softmax or self.topk or self.detect)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"softmax": self.softmax, "topk": self.topk, "output": self.output}
        if self.detect is not None:
            out["detect"] = {f.name: getattr(self.detect, f.name) for f in fields(Detect)}
        return out  # labels are stored apart, once, in the manifest's pipeline

    @classmethod
    def from_dict(cls, data: dict[str, Any], labels: tuple[str, ...] = ()) -> Postprocess:
        detect = data.get("detect")
        return cls(softmax=bool(data.get("softmax")), topk=data.get("topk"), output=data.get("output"),
                   detect=Detect(**detect) if detect else None, labels=labels)


@dataclass(frozen=True)
class PipelineSpec:
    preprocess: tuple[Preprocess, ...] = ()
    postprocess: Postprocess = field(default_factory=Postprocess)

    @property
    def empty(self) -> bool:
        return not self.preprocess and self.postprocess.empty and not self.postprocess.labels


# --- parsing -------------------------------------------------------------------------------------


def parse_preprocess(text: str) -> Preprocess:
    """``[INPUT:]key=value key=value ...`` (``frame=480x640 color=BGR scale=1/255 mean=0.5``)."""
    head, sep, rest = text.partition(":")
    values: dict[str, Any] = {}
    if sep and "=" not in head and head.strip():
        values["input"], text = head.strip(), rest
    for word in text.replace(";", " ").split():
        key, eq, value = word.partition("=")
        if not eq or not value:
            raise OptionError("--preprocess expects key=value words", value=word, fix=f"write it like {PRE_EXAMPLE}")
        values[key.strip().lower().replace("-", "_")] = value.strip()
    return Preprocess.from_dict(values)


def parse_postprocess(texts: list[str], labels: tuple[str, ...] = ()) -> Postprocess:
    """Each text a comma- or space-separated list of steps: ``softmax``, ``topk=5`` (or ``topk 5``),
    ``output=NAME``, or ``yolo`` / ``yolo-nc`` with ``conf= iou= max= nms=class|agnostic coords=pixel|normalized``."""
    words = [w for text in texts for w in text.replace(",", " ").split()]
    softmax, topk, output = False, None, None
    detect: dict[str, Any] | None = None
    i = 0
    while i < len(words):
        key, eq, value = words[i].partition("=")
        key = key.lower()
        if key == "topk" and not eq and i + 1 < len(words) and words[i + 1].isdigit():
            value, eq, i = words[i + 1], "=", i + 1
        i += 1
        if key == "softmax" and not eq:
            softmax = True
        elif key == "topk":
            topk = int(_number("topk", value or "5"))
        elif key == "output" and eq:
            output = value
        elif key in ("yolo", "darknet", "yolo-nc") and not eq:
            detect = {"layout": "darknet" if key in ("yolo", "darknet") else "yolo-nc"}
        elif detect is not None and key in ("conf", "confidence") and eq:
            detect["confidence"] = _number(key, value)
        elif detect is not None and key == "iou" and eq:
            detect["iou"] = _number(key, value)
        elif detect is not None and key in ("max", "max_detections") and eq:
            detect["max_detections"] = int(_number(key, value))
        elif detect is not None and key == "nms" and eq and value in ("class", "agnostic"):
            detect["per_class"] = value == "class"
        elif detect is not None and key in ("coords", "coordinates") and eq:
            detect["coordinates"] = value
        else:
            raise OptionError("unknown --postprocess step", value=words[i - 1], fix=f"use {POST_EXAMPLE}")
    return Postprocess(softmax=softmax, topk=topk, output=output, detect=Detect(**detect) if detect else None,
                       labels=labels)


def read_labels(path: Path) -> tuple[str, ...]:
    """One class name per line (blank lines at the end ignored; a blank line inside is an error)."""
    if not path.exists() or path.is_dir():  # a pipe (<(...)) is fine: only a directory or nothing is not
        raise FileNotFound("labels file not found", value=str(path), fix="pass --labels labels.txt (one class per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise OptionError("the labels file is not UTF-8 text", value=str(path), fix="save it as UTF-8") from None
    while lines and not lines[-1].strip():
        lines.pop()
    blank = next((n for n, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None or not lines:
        raise OptionError("the labels file has an empty line" if lines else "the labels file is empty",
                          value=f"{path}:{blank}" if blank else str(path), fix="write one class name per line")
    return tuple(line.strip() for line in lines)


def load_pipeline_file(path: Path) -> PipelineSpec:
    """A TOML file: ``[[preprocess]]`` tables (the ``--preprocess`` keys) and one ``[postprocess]`` table
    (``steps = ["softmax", "topk=5"]``, ``labels = "labels.txt"`` relative to the file)."""
    if not path.is_file():
        raise FileNotFound("pipeline file not found", value=str(path), fix="pass --pipeline pipeline.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError("the pipeline file is not valid TOML", value=f"{path}: {exc}", fix="fix the file") from None
    unknown = sorted(set(data) - {"preprocess", "postprocess"})
    if unknown:
        raise OptionError("unknown table in the pipeline file", value=unknown[0], expected="preprocess, postprocess",
                          fix="see docs/pipeline.md")
    pre = data.get("preprocess", [])
    pre = [pre] if isinstance(pre, dict) else pre
    post = dict(data.get("postprocess", {}))
    labels_file = post.pop("labels", None)
    steps = post.pop("steps", [])
    if post:
        raise OptionError("unknown key in [postprocess]", value=min(post), expected="steps, labels",
                          fix='e.g. steps = ["softmax", "topk=5"]')
    labels = read_labels(path.parent / labels_file) if labels_file else ()
    return PipelineSpec(tuple(Preprocess.from_dict(dict(p)) for p in pre),
                        parse_postprocess([str(s) for s in steps], labels))


# --- helpers -------------------------------------------------------------------------------------


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"unknown {key}", value=value, expected=" | ".join(allowed), fix=f"pass {key}={allowed[0]}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise OptionError(f"{key} is not a number", value=value, fix=f"e.g. {key}=1/255 or {key}=0.5") from None


def _numbers(key: str, value: Any) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(_number(key, v) for v in items if str(v).strip())


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = str(value).lower().replace(",", "x").split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 2:
        raise OptionError("--preprocess frame= is not HEIGHTxWIDTH", value=value, fix="e.g. frame=480x640")
    return sizes  # type: ignore[return-value]


def _text(data: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in data.items()) or "(nothing)"
