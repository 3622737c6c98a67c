"""One capture (a model's inputs, outputs and the application's blobs) and its self-checking file format.

A record encodes to one ``.emc`` blob::

    b"EMC1" | u32 header length (little endian) | header JSON | raw tensor and blob bytes | sha256

The SHA-256 covers every byte before it, so a torn or flipped file is recognised on read. The header
names each tensor's dtype, shape, offset and size; anyone can read the format with ``json`` and
``numpy.frombuffer`` alone. The same bytes sit in the on-disk queue and in the object store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError

MAGIC = b"EMC1"
SUFFIX = ".emc"
_LEN = struct.Struct("<I")
_DIGEST = 32
_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the agent's model and device names


class CaptureFormatError(UserError):
    """Bytes that are not a complete, intact capture record (torn write, flipped bit, other file)."""


class CaptureExistsError(UserError):
    """A capture id that the queue already holds or has uploaded."""


def check_capture_id(capture_id: object) -> str:
    """``capture_id`` if it is a valid id, else a :class:`UserError` saying what an id may contain."""
    if not isinstance(capture_id, str) or not _ID.fullmatch(capture_id):
        raise UserError("bad capture id", value=capture_id, expected="1-128 letters, digits, '.', '_' or '-'",
                        fix="use an id such as a UUID, or leave it empty to get a generated one")
    return capture_id


@dataclass(frozen=True, eq=False)
class CaptureRecord:
    """One capture. Construction validates the names that become part of the object key."""

    capture_id: str  # unique; the object key ends with it, so a re-upload overwrites, never duplicates
    model: str
    model_version: str
    device: str
    created_unix: float  # wall-clock seconds; its UTC date places the object in the store
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    auxiliary: dict[str, bytes]  # opaque named blobs from the application
    sampled: bool  # True: automatic sampling; False: a CaptureData request

    def __post_init__(self) -> None:
        check_capture_id(self.capture_id)
        for what, name in (("model", self.model), ("device", self.device)):
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise UserError(f"bad {what} name in capture {self.capture_id!r}", value=name,
                                expected="1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                                fix=f"name the {what} as the agent does")
        for kind in ("inputs", "outputs"):
            for name, array in getattr(self, kind).items():
                if not isinstance(array, np.ndarray) or array.dtype.hasobject:
                    raise UserError(f"capture {kind[:-1]} {name!r} is not a numeric, bool or fixed-width "
                                    "string array", value=type(array).__name__,
                                    fix="pass numpy arrays with a plain dtype (float32, int64, uint8, bool...)")
        for name, blob in self.auxiliary.items():
            if not isinstance(blob, (bytes, bytearray, memoryview)):
                raise UserError(f"capture auxiliary {name!r} is not bytes", value=type(blob).__name__,
                                fix="encode auxiliary data (JSON, images...) to bytes first")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CaptureRecord):
            return NotImplemented
        same_meta = all(getattr(self, f) == getattr(other, f) for f in
                        ("capture_id", "model", "model_version", "device", "created_unix", "sampled"))
        return (same_meta and _same_arrays(self.inputs, other.inputs) and _same_arrays(self.outputs, other.outputs)
                and _blobs(self.auxiliary) == _blobs(other.auxiliary))

    __hash__ = None  # type: ignore[assignment]  # holds arrays: compared by value, never hashed

    def object_key(self) -> str:
        """Where this capture lives under the store's prefix; the same record always gives the same key."""
        return object_key(self.device, self.model, self.created_unix, self.capture_id)

    def encode(self) -> bytes:
        """The record as one ``.emc`` blob (header JSON, raw bytes, checksum)."""
        parts: list[bytes] = []
        offset = 0

        def add(data: bytes) -> dict[str, int]:
            nonlocal offset
            parts.append(data)
            entry = {"offset": offset, "size": len(data)}
            offset += len(data)
            return entry

        tensors: dict[str, list[dict[str, Any]]] = {}
        for kind in ("inputs", "outputs"):
            tensors[kind] = []
            for name, array in getattr(self, kind).items():
                array = np.ascontiguousarray(array)
                tensors[kind].append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                                      **add(array.tobytes())})
        header = {**self._meta(), **tensors,
                  "auxiliary": [{"name": n, **add(bytes(b))} for n, b in self.auxiliary.items()]}
        head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        body = b"".join([MAGIC, _LEN.pack(len(head)), head, *parts])
        return body + hashlib.sha256(body).digest()

    def summary(self, embed_limit_bytes: int = 0) -> dict[str, Any]:
        """JSON-ready metadata; tensors of at most ``embed_limit_bytes`` bytes also inline as base64."""
        out: dict[str, Any] = self._meta()
        for kind in ("inputs", "outputs"):
            out[kind] = []
            for name, array in getattr(self, kind).items():
                entry: dict[str, Any] = {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
                if array.nbytes <= embed_limit_bytes:
                    entry["data_b64"] = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
                out[kind].append(entry)
        out["auxiliary"] = [{"name": n, "size": len(b)} for n, b in self.auxiliary.items()]
        return out

    def _meta(self) -> dict[str, Any]:
        return {"format": 1, "capture_id": self.capture_id, "model": self.model,
                "model_version": self.model_version, "device": self.device,
                "created_unix": self.created_unix, "sampled": self.sampled}

    @classmethod
    def decode(cls, blob: bytes) -> CaptureRecord:
        """The record in ``blob``; :class:`CaptureFormatError` if it is torn, altered or not a capture."""
        header, payload = _split(blob)
        try:
            def arrays(kind: str) -> dict[str, np.ndarray]:
                return {t["name"]: np.frombuffer(_slice(payload, t), dtype=np.dtype(t["dtype"]))
                        .reshape(t["shape"]).copy() for t in header[kind]}

            return cls(capture_id=header["capture_id"], model=header["model"],
                       model_version=header["model_version"], device=header["device"],
                       created_unix=float(header["created_unix"]), inputs=arrays("inputs"),
                       outputs=arrays("outputs"),
                       auxiliary={a["name"]: _slice(payload, a) for a in header["auxiliary"]},
                       sampled=bool(header["sampled"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureFormatError("capture header does not describe its contents", value=str(exc),
                                     fix="the file was not written by edgemill; remove it") from None


def read_outputs(blob: bytes) -> dict[str, np.ndarray]:
    """The verified record's outputs only: its inputs, often most of its bytes, are not decoded."""
    header, payload = _split(blob)
    try:
        return {t["name"]: np.frombuffer(_slice(payload, t), dtype=np.dtype(t["dtype"])).reshape(t["shape"])
                for t in header["outputs"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise CaptureFormatError("capture header does not describe its outputs", value=str(exc),
                                 fix="the file was not written by edgemill; remove it") from None


def read_header(blob: bytes) -> dict[str, Any]:
    """The verified header of an encoded record (cheap: tensors are not decoded)."""
    return _split(blob)[0]


def object_key(device: str, model: str, created_unix: float, capture_id: str) -> str:
    """``{device}/{model}/{YYYY}/{MM}/{DD}/{capture_id}.emc``, dated in UTC."""
    day = time.strftime("%Y/%m/%d", time.gmtime(created_unix))
    return f"{device}/{model}/{day}/{capture_id}{SUFFIX}"


def _split(blob: bytes) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(blob)
    if len(view) < len(MAGIC) + _LEN.size + _DIGEST or bytes(view[:4]) != MAGIC:
        raise CaptureFormatError("not an edgemill capture record (bad magic or too short)", value=len(view),
                                 fix="the file is torn or foreign; remove it")
    body, digest = view[:-_DIGEST], bytes(view[-_DIGEST:])
    if hashlib.sha256(body).digest() != digest:
        raise CaptureFormatError("capture record checksum mismatch (torn or altered file)", value=len(view),
                                 fix="the file was damaged on disk; remove it")
    (head_len,) = _LEN.unpack_from(body, 4)
    start = 4 + _LEN.size
    try:
        header = json.loads(bytes(body[start:start + head_len]))
    except ValueError as exc:
        raise CaptureFormatError("capture header is not JSON", value=str(exc),
                                 fix="the file was not written by edgemill; remove it") from None
    if not isinstance(header, dict) or header.get("format") != 1:
        raise CaptureFormatError("unknown capture format version", value=header.get("format") if
                                 isinstance(header, dict) else None, fix="read it with a newer edgemill")
    return header, body[start + head_len:]


def _slice(payload: memoryview, entry: Mapping[str, Any]) -> bytes:
    offset, size = int(entry["offset"]), int(entry["size"])
    if offset < 0 or size < 0 or offset + size > len(payload):
        raise ValueError(f"{entry.get('name')!r} lies outside the record")
    return bytes(payload[offset:offset + size])


def _same_arrays(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc") for k in a)


def _blobs(blobs: Mapping[str, bytes]) -> dict[str, bytes]:
    return {name: bytes(blob) for name, blob in blobs.items()}
