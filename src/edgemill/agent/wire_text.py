"""Text (``str``) tensors on the wire: one UTF-8 value per element, C-order.

Every protocol carries a str tensor as its elements' UTF-8 bytes. KServe V2 (datatype ``BYTES``) puts
them in ``contents.bytes_contents`` or packs them into one raw entry, each element a 4-byte
little-endian length followed by its bytes; edgemill.v1 (dtype ``STRING``) in ``Tensor.strings``.
At the runtime a str tensor is a NumPy object array of Python ``str``. Decoding checks the element
count against the shape and that every element is UTF-8, naming the tensor and the element when not;
elements that are all encoded images (JPEG, PNG: never UTF-8) stay ``bytes``, for a package input that
takes camera frames (the runtime decodes them, docs/pipeline.md).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from ..errors import InputMismatchError, UserError
from ..pipeline.images import looks_encoded
from .wire import check_shape

_LENGTH = struct.Struct("<I")
_RAW_FIX = "pack each element as a 4-byte little-endian length followed by that many bytes of UTF-8"


def is_text(dtype: np.dtype) -> bool:
    """True for a dtype the wire carries as text: object (of str), unicode or bytes."""
    return dtype.kind in "OUS"


def text_array(name: str, elements: Sequence[bytes], shape: Sequence[int]) -> np.ndarray:
    """An object array of ``str`` from UTF-8 ``elements`` in C order, after checking their count against
    ``shape`` and that each one is UTF-8."""
    dims = check_shape(name, shape)
    expected = math.prod(dims)
    if len(elements) != expected:
        raise InputMismatchError(f"tensor {name!r} has {len(elements)} string elements but shape {list(dims)} "
                                 f"needs {expected}", value=len(elements),
                                 fix="send one value per element of the shape, C-order")
    try:
        values: list[str] | list[bytes] = [bytes(e).decode("utf-8") for e in elements]
    except UnicodeDecodeError:
        if not all(looks_encoded(e) for e in elements):
            raise _not_utf8(name, elements, dims) from None
        values = [bytes(e) for e in elements]  # JPEG/PNG files for a frame input: the runtime decodes them
    out = np.empty(expected, dtype=object)
    out[:] = values  # assigned, not np.array(values): that would make a unicode array, or nest sequences
    return out.reshape(dims)


def _not_utf8(name: str, elements: Sequence[bytes], dims: tuple[int, ...]) -> InputMismatchError:
    for index, element in enumerate(elements):
        data = bytes(element)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f" (index {[int(i) for i in np.unravel_index(index, dims)]})" if len(dims) > 1 else ""
            return InputMismatchError(f"tensor {name!r} element {index}{where} is not valid UTF-8 "
                                      f"at byte {exc.start}", value=data[max(0, exc.start - 8):exc.start + 8],
                                      fix="send text as UTF-8 (encode each string with .encode('utf-8'))")
    raise AssertionError("a decode failed, yet every element is UTF-8")  # unreachable


def text_elements(name: str, array: np.ndarray) -> list[bytes]:
    """The UTF-8 bytes of each element of a str tensor, C-order (``bytes`` elements pass as they are)."""
    out: list[bytes] = []
    for index, value in enumerate(np.asarray(array).reshape(-1).tolist()):
        if isinstance(value, str):
            try:
                out.append(value.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it
                raise UserError(f"tensor {name!r} element {index} cannot be encoded as UTF-8", value=repr(value[:40]),
                                fix="pass text without unpaired surrogates") from None
        elif isinstance(value, (bytes, bytearray)):
            out.append(bytes(value))
        else:
            raise UserError(f"tensor {name!r} element {index} is not text", value=type(value).__name__,
                            expected="str (or bytes of UTF-8)", fix="pass an array of str")
    return out


def pack_lengths(elements: Sequence[bytes]) -> bytes:
    """The KServe V2 raw encoding of BYTES: each element's 4-byte little-endian length, then the element."""
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def unpack_lengths(name: str, data: bytes) -> list[bytes]:
    """The elements of a KServe V2 raw BYTES entry (see :func:`pack_lengths`)."""
    out: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _LENGTH.size:
            raise InputMismatchError(f"tensor {name!r} raw BYTES data ends inside the length of element {len(out)}",
                                     value=f"{end - offset} bytes left", fix=_RAW_FIX)
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if size > end - offset:
            raise InputMismatchError(f"tensor {name!r} raw BYTES element {len(out)} says {size} bytes but "
                                     f"{end - offset} remain", value=size, fix=_RAW_FIX)
        out.append(data[offset:offset + size])
        offset += size
    return out
