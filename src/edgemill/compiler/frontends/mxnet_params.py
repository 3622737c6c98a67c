"""Reader for MXNet's ``.params`` file (``mx.nd.save`` / ``HybridBlock.export``), without MXNet.

Layout, little-endian, as MXNet 1.x writes it (``src/ndarray/ndarray.cc``: ``NDArray::Save`` and
``mx.nd.save``'s list format):

* ``uint64`` magic ``0x112``, ``uint64`` reserved;
* ``uint64`` array count, then each array:

  * ``uint32`` magic: ``0xF993FAC9`` (V2), ``0xF993FACA`` (V3, NumPy shape semantics: ``ndim -1`` is
    "unknown", ``0`` a scalar) or ``0xF993FAC8`` (V1, no storage type); anything else is the
    pre-1.0 layout, where this word is already ``ndim`` and the dimensions are ``uint32``;
  * ``int32`` storage type (V2/V3 only; 0 = dense — sparse arrays are refused);
  * shape: ``int32 ndim`` then ``ndim`` x ``int64``; an empty shape ends the array (V1/V2);
  * context: ``int32 dev_type``, ``int32 dev_id``; ``int32`` type flag; then the data;

* ``uint64`` name count, then each name as ``uint64`` length + bytes: ``arg:NAME`` for parameters and
  ``aux:NAME`` for auxiliary states (BatchNorm's running mean and variance).

Floating-point parameters are handed on as float32 (the compiler's precision passes decide what the
target computes in); the conversion is recorded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFormatError

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# MXNet's mshadow type flags.
TYPE_FLAGS: dict[int, str] = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8",
                              6: "int64", 7: "bool", 8: "int16", 9: "uint16", 10: "uint32", 11: "uint64",
                              12: "bfloat16"}
_FIX_FILE = "pass the .params file export() wrote with this symbol; the file may be cut short or corrupt"


@dataclass
class Params:
    arrays: dict[str, np.ndarray]
    converted: dict[str, str] = field(default_factory=dict)  # name -> original dtype when cast to float32

    def notes(self) -> dict[str, Any]:
        return {"params_cast_to_float32": self.converted} if self.converted else {}


class _Cursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path
        self.where = "the header"

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ModelFormatError(
                f"the MXNet .params file ends early while reading {self.where}", value=f"{self.path.name} "
                f"({len(self.data)} bytes, {self.pos + size} needed)", fix=_FIX_FILE)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values[0] if len(values) == 1 else values


def _read_array(cur: _Cursor) -> tuple[np.ndarray, str] | None:
    """The array (bfloat16 widened to float32) and the dtype it was saved in; None for "no array"."""
    magic = cur.unpack("I")
    if magic in (V2_MAGIC, V3_MAGIC):
        stype = cur.unpack("i")
        if stype != 0:
            raise ModelFormatError(f"{cur.where} is a sparse array", value=f"storage type {stype}",
                                   fix="convert sparse parameters to dense (.tostype('default')) before export")
        ndim = cur.unpack("i")
        if ndim < 0 or (ndim == 0 and magic == V2_MAGIC):
            return None  # an unknown or empty shape: MXNet saves it as "no array"
        shape = cur.unpack(f"{ndim}q") if ndim else ()
    elif magic == V1_MAGIC:
        ndim = cur.unpack("i")
        if ndim == 0:
            return None
        shape = cur.unpack(f"{ndim}q")
    else:  # pre-1.0 files: the first word is ndim and dimensions are uint32
        ndim = magic
        if ndim > 32:
            raise ModelFormatError(f"{cur.where} does not start like an MXNet array", value=hex(magic),
                                   expected=f"{V2_MAGIC:#x}", fix=_FIX_FILE)
        if ndim == 0:
            return None
        shape = cur.unpack(f"{ndim}I")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(d < 0 for d in shape):
        raise ModelFormatError(f"{cur.where} has a negative dimension", value=list(shape), fix=_FIX_FILE)
    cur.unpack("ii")  # context: where the array lived when saved; irrelevant here
    flag = cur.unpack("i")
    dtype = TYPE_FLAGS.get(flag)
    if dtype is None:
        raise ModelFormatError(f"{cur.where} has an unknown MXNet type flag", value=flag,
                               expected="one of " + ", ".join(f"{k} ({v})" for k, v in TYPE_FLAGS.items()),
                               fix=_FIX_FILE)
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == "bfloat16":
        raw = np.frombuffer(cur.take(count * 2), dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape), dtype
    np_dtype = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(cur.take(count * np_dtype.itemsize), dtype=np_dtype).reshape(shape).astype(dtype), dtype


def read_params(path: Path) -> Params:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError("cannot read the MXNet .params file", value=str(path), fix=str(exc)) from None
    cur = _Cursor(data, path)
    magic, _reserved = cur.unpack("QQ")
    if magic != LIST_MAGIC:
        raise ModelFormatError("not an MXNet .params file (wrong magic number)", value=f"{path.name}: {magic:#x}",
                               expected=f"{LIST_MAGIC:#x}", fix="pass the .params file that export() wrote")
    count = cur.unpack("Q")
    if count > len(data):
        raise ModelFormatError("the MXNet .params header is corrupt", value=f"{count} arrays", fix=_FIX_FILE)
    arrays: list[tuple[np.ndarray, str] | None] = []
    for i in range(count):
        cur.where = f"array {i + 1} of {count}"
        arrays.append(_read_array(cur))
    cur.where = "the parameter names"
    n_names = cur.unpack("Q")
    if n_names != count:
        raise ModelFormatError(
            "the MXNet .params file does not name its arrays" if n_names == 0 else
            "the MXNet .params file has a different number of names and arrays",
            value=f"{count} arrays, {n_names} names",
            fix="save the parameters with names (HybridBlock.export() or mx.nd.save(file, {name: array}))")
    params = Params({})
    for i in range(n_names):
        length = cur.unpack("Q")
        name = cur.take(length).decode("utf-8", errors="replace")
        name = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
        if name in params.arrays:
            raise ModelFormatError("the MXNet .params file names a parameter twice", value=name, fix=_FIX_FILE)
        entry = arrays[i]
        if entry is None:
            continue
        array, saved_as = entry
        if saved_as in ("float16", "float64", "bfloat16"):
            params.converted[name] = saved_as
            array = array.astype(np.float32)
        params.arrays[name] = array
    if cur.pos != len(data):
        raise ModelFormatError("the MXNet .params file has bytes after its last name",
                               value=f"{len(data) - cur.pos} bytes", fix=_FIX_FILE)
    return params
