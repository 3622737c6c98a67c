"""Encoded images (JPEG, PNG, ...) for a package input that takes camera frames.

A package compiled with ``--preprocess`` declares its frame input (size, layout, colour order); an
application, ``edgemill run -i image=photo.jpg`` or the agent may hand it the encoded file instead of
raw pixels. It is decoded here with Pillow (``pip install 'edgemill[images]'``), turned into the colour
order and layout the package declares, and, when its size is not the declared frame size, resized to it
(bilinear on float pixels, then rounded: the same interpolation as the package's own resize). A
detector's boxes are then in the declared frame's coordinates.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputMismatchError, MissingDependencyError
from .preprocess import _linear

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"RIFF")
ENCODED = (bytes, bytearray, memoryview)


def looks_encoded(data: bytes | bytearray | memoryview) -> bool:
    head = bytes(data[:8])
    return any(head.startswith(m) for m in _MAGIC)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("decoding JPEG/PNG inputs needs Pillow, which is not installed", value="pillow",
                                     fix="pip install 'edgemill[images]', or send raw pixels") from None
    return Image


def decode(data: bytes | bytearray | memoryview, name: str, spec: Mapping[str, Any], channels: int) -> np.ndarray:
    """One encoded image -> one frame ``[1, ...]`` as the package input ``name`` declares it (``spec`` is
    the manifest's pre-processing spec)."""
    image_module = _pillow()
    try:
        with image_module.open(io.BytesIO(bytes(data))) as image:
            image.load()
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError, SyntaxError...
        raise InputMismatchError(f"input {name!r} is not a readable image", value=f"{len(data)} bytes: {exc}",
                                 expected="a JPEG/PNG file, or raw pixels as the package declares",
                                 fix="send the file's bytes unchanged, or the decoded frame as a uint8 array") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if channels == 3 and spec.get("color") == "BGR":
        pixels = pixels[:, :, ::-1]
    height, width = spec["frame"]
    if pixels.shape[:2] != (height, width):
        resized = _linear(_linear(pixels.astype(np.float64), height, axis=0), width, axis=1)
        pixels = np.clip(np.rint(resized), 0, 255)
    frame = pixels[None]
    if spec.get("layout") == "NCHW":
        frame = frame.transpose(0, 3, 1, 2)
    if spec.get("dtype") == "float32":
        return np.ascontiguousarray(frame, dtype=np.float32) / np.float32(255)
    return np.ascontiguousarray(frame, dtype=np.uint8)


def decode_inputs(feed: Mapping[str, Any], images: Mapping[str, tuple[Mapping[str, Any], int]]) -> Mapping[str, Any]:
    """``feed`` with every encoded image among ``images`` (input name -> (pre-processing spec, channels))
    decoded: ``bytes``, or an object array of them (one per frame of the batch). Untouched otherwise."""
    decoded: dict[str, Any] | None = None
    for name, (spec, channels) in images.items():
        value = feed.get(name)
        if isinstance(value, ENCODED):
            frames = [decode(value, name, spec, channels)]
        elif isinstance(value, np.ndarray) and value.dtype == object and value.size and \
                all(isinstance(v, ENCODED) for v in value.reshape(-1)):
            frames = [decode(v, name, spec, channels) for v in value.reshape(-1)]
        else:
            continue
        if decoded is None:
            decoded = dict(feed)
        decoded[name] = np.concatenate(frames) if len(frames) > 1 else frames[0]
    return feed if decoded is None else decoded
