"""The local fast path's frames (docs/fastpath.md): a 16-byte header and a payload of length-prefixed
fields, little-endian, shared by the agent's server and the Python client. Dtype numbers are the
edgemill.v1 API's, status codes gRPC's and text KServe V2's raw BYTES, each taken from where it is defined.

Every reader checks each length against what is left of the payload before it reads, so a frame that
lies about a length is a :class:`FrameError` naming the field, never a read past the buffer.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from ..errors import InputMismatchError
from .v1_types import DTYPE_BY_ENUM, enum_of, pb
from .wire import MAX_DIMS, tensor_bytes
from .wire_text import pack_lengths, text_array, text_elements, unpack_lengths

MAGIC = b"EMF1"
HEADER = struct.Struct("<4sBBHII")  # magic, type, flags (0), reserved (0), request id, payload length
HEADER_SIZE = HEADER.size  # 16

PREDICT, PREDICT_OK, ERROR, PING, PONG = 1, 2, 3, 4, 5

INLINE, SHARED_MEMORY = 0, 1
STRING = pb.STRING
# The edgemill.v1 DataType numbers (proto/edgemill/v1/agent.proto), little-endian as on the wire.
DTYPE_BY_CODE: dict[int, np.dtype] = {code: d.newbyteorder("<") for code, d in DTYPE_BY_ENUM.items()}
CODE_BY_DTYPE: dict[str, int] = {d.name: c for c, d in DTYPE_BY_CODE.items()}
FLAG_CAPTURE = 1

# gRPC status codes by name and number: the fast path answers with the same codes as the gRPC path.
GRPC_CODES: dict[str, int] = {code.name: code.value[0] for code in grpc.StatusCode}
CODE_NAMES = {number: name for name, number in GRPC_CODES.items()}

_U8, _U16, _U32, _U64 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_INLINE_BYTES = struct.Struct("<BQ")
_U64S: dict[int, struct.Struct] = {}  # "<nQ" by n: a tensor's shape in one unpack
_TIMING = struct.Struct("<QQQ")


class FrameError(InputMismatchError):
    """A payload that does not parse: answered INVALID_ARGUMENT, the connection stays open."""


def kernel_timeouts(conn: socket.socket, seconds: float, send: bool = True) -> None:
    """Kernel receive (and send) timeouts on a blocking socket (SO_RCVTIMEO, SO_SNDTIMEO): a call that
    waits too long raises BlockingIOError, and no call pays the poll Python's own socket timeouts add."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    if send:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def header(kind: int, request_id: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, kind, 0, 0, request_id & 0xFFFFFFFF, length)


# --- writing -----------------------------------------------------------------------------------


class Writer:
    """A payload being written: small fields gather in one buffer, tensor data joins as its own part
    (no copy); ``frame()`` is the list ``sendmsg`` takes."""

    def __init__(self) -> None:
        self.parts: list[bytes | bytearray | memoryview] = []
        self.buf = bytearray()
        self.flushed = 0  # bytes in parts
        self.total_at = -1  # PREDICT_OK: where total_us lies (predict_response)

    @property
    def size(self) -> int:
        return self.flushed + len(self.buf)

    def raw(self, data: bytes) -> None:
        self.buf += data

    def blob(self, data: bytes | memoryview) -> None:
        if self.buf:
            self.parts.append(self.buf)
            self.flushed += len(self.buf)
            self.buf = bytearray()
        self.parts.append(data)
        self.flushed += len(data)

    def u8(self, v: int) -> None:
        self.buf += _U8.pack(v)

    def u16(self, v: int) -> None:
        self.buf += _U16.pack(v)

    def u32(self, v: int) -> None:
        self.buf += _U32.pack(v)

    def u64(self, v: int) -> None:
        self.buf += _U64.pack(v)

    def text(self, value: str) -> None:
        data = value.encode("utf-8")
        if len(data) > 0xFFFF:
            raise FrameError("a name is longer than 65,535 bytes", value=value[:64], fix="use a shorter name")
        self.buf += _U16.pack(len(data))
        self.buf += data

    def patch_u64(self, at: int, value: int) -> None:
        """Overwrite the u64 at byte ``at`` of the payload (which must lie before any tensor data)."""
        _U64.pack_into(self.parts[0] if self.parts else self.buf, at, value)

    def frame(self, kind: int, request_id: int) -> list[bytes | bytearray | memoryview]:
        tail = [self.buf] if self.buf else []
        return [header(kind, request_id, self.size), *self.parts, *tail]


def write_tensor(w: Writer, name: str, array: np.ndarray, shm: tuple[str, int, int] | None = None) -> None:
    """One tensor: inline bytes, UTF-8 elements for text, or a shared-memory region (name, offset, size)
    the caller already filled."""
    w.text(name)
    if array.dtype.kind in "OUS":
        w.u8(STRING)
    else:
        code = enum_of(array.dtype)  # the edgemill.v1 numbers; tensor_bytes writes a byte-swapped one little-endian
        if code is None:
            raise FrameError(f"tensor {name!r} has a dtype the fast path cannot carry", value=array.dtype.name,
                             fix=f"use one of {sorted(CODE_BY_DTYPE)} or text")
        w.u8(code)
    if array.ndim > MAX_DIMS:
        raise FrameError(f"tensor {name!r} has {array.ndim} dimensions", value=array.ndim, expected=f"at most {MAX_DIMS}")
    w.raw(struct.pack(f"<B{array.ndim}Q", array.ndim, *array.shape))
    if shm is not None:
        w.u8(SHARED_MEMORY)
        w.text(shm[0])
        w.u64(shm[1])
        w.u64(shm[2])
        return
    if array.dtype.kind in "OUS":
        data = pack_lengths(text_elements(name, array))
        w.raw(_INLINE_BYTES.pack(INLINE, len(data)))
        w.raw(data)
        return
    data = tensor_bytes(array)
    w.raw(_INLINE_BYTES.pack(INLINE, len(data)))
    w.blob(data)


def predict_request(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = (), capture: bool = False,
                    capture_id: str = "", shared: Mapping[str, tuple[str, int, int]] | None = None) -> Writer:
    w = Writer()
    w.text(model)
    w.u8(FLAG_CAPTURE if capture else 0)
    w.text(capture_id)
    w.u16(len(outputs))
    for name in outputs:
        w.text(name)
    w.u16(len(inputs))
    for name, array in inputs.items():
        write_tensor(w, name, array, (shared or {}).get(name))
    return w


def predict_response(version: str, capture_id: str, queue_us: int, compute_us: int, total_us: int,
                     outputs: Mapping[str, np.ndarray]) -> Writer:
    """A PREDICT_OK payload; ``writer.total_at`` is where total_us lies, for :meth:`Writer.patch_u64`
    once the encoding is done (the agent's time includes it)."""
    w = Writer()
    w.text(version)
    w.text(capture_id)
    w.total_at = len(w.buf) + 16
    w.raw(_TIMING.pack(max(0, queue_us), max(0, compute_us), max(0, total_us)))
    w.u16(len(outputs))
    for name, array in outputs.items():
        write_tensor(w, name, np.asarray(array))
    return w


def error_payload(code: str, message: str) -> Writer:
    w = Writer()
    w.u16(GRPC_CODES.get(code, GRPC_CODES["UNKNOWN"]))
    data = message.encode("utf-8")[:8192]
    w.u32(len(data))
    w.raw(data)
    return w


# --- reading -----------------------------------------------------------------------------------


class Reader:
    """Fields read in order from a payload; integers are unpacked in place (no slice per field)."""

    def __init__(self, payload: bytes | bytearray | memoryview) -> None:
        self.buf = memoryview(payload)
        self.end = len(self.buf)
        self.at = 0
        self.tensor: str | None = None  # the tensor being read, named in errors ("tensor 'x''s shape")

    @property
    def subject(self) -> str:
        return "" if self.tensor is None else f"tensor {self.tensor!r}'s "

    def _short(self, n: int, what: str) -> FrameError:
        return FrameError(f"the frame ends inside {self.subject}{what}", value=f"{n} bytes wanted, {self.end - self.at} left",
                          fix="send the whole payload the header's length announces (docs/fastpath.md)")

    def take(self, n: int, what: str) -> memoryview:
        at = self.at
        if n < 0 or n > self.end - at:
            raise self._short(n, what)
        self.at = at + n
        return self.buf[at:at + n]

    def _int(self, fmt: struct.Struct, what: str) -> int:
        return int(self.ints(fmt, what)[0])

    def ints(self, fmt: struct.Struct, what: str) -> tuple[int, ...]:
        """Several fixed-size fields in one unpack."""
        at = self.at
        if fmt.size > self.end - at:
            raise self._short(fmt.size, what)
        self.at = at + fmt.size
        return fmt.unpack_from(self.buf, at)

    def u8(self, what: str) -> int:
        return self._int(_U8, what)

    def u16(self, what: str) -> int:
        return self._int(_U16, what)

    def u32(self, what: str) -> int:
        return self._int(_U32, what)

    def u64(self, what: str) -> int:
        return self._int(_U64, what)

    def u64s(self, count: int, what: str) -> tuple[int, ...]:
        fmt = _U64S.get(count) or _U64S.setdefault(count, struct.Struct(f"<{count}Q"))
        return self.ints(fmt, what)

    def text(self, what: str) -> str:
        data = self.take(self.u16(what), what)
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            raise FrameError(f"{self.subject}{what} is not UTF-8", value=bytes(data[:32]),
                             fix="encode names as UTF-8") from None

    def done(self, what: str) -> None:
        if self.at != self.end:
            raise FrameError(f"{self.end - self.at} bytes follow the {what}", value=self.end - self.at,
                             fix="the header's length must be the payload's exact size")


@dataclass(slots=True)
class TensorField:
    """A tensor as read: its array (inline) or the shared-memory region holding it."""

    name: str
    dtype: np.dtype | None  # None: text
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    shm: tuple[str, int, int] | None = None


_CODE_RANK = struct.Struct("<BB")


def read_tensor(r: Reader) -> TensorField:
    r.tensor = None
    name = r.text("a tensor name")
    r.tensor = name
    code, ndim = r.ints(_CODE_RANK, "dtype and rank")
    if code != STRING and code not in DTYPE_BY_CODE:
        raise FrameError(f"tensor {name!r} has an unknown dtype code", value=code,
                         fix=f"use one of {sorted(DTYPE_BY_CODE)} or {STRING} (text)")
    if ndim > MAX_DIMS:
        raise FrameError(f"tensor {name!r} has {ndim} dimensions", value=ndim, expected=f"at most {MAX_DIMS}")
    shape = r.u64s(ndim, "shape")  # unsigned: never negative; MAX_DIMS checked above
    if shape and max(shape) > 2**40:
        raise FrameError(f"tensor {name!r} has an impossible dimension", value=list(shape), fix="send the real shape")
    storage = r.u8("storage")
    dtype = None if code == STRING else DTYPE_BY_CODE[code]
    if storage == SHARED_MEMORY:
        if dtype is None:
            raise FrameError(f"tensor {name!r} is text, which shared memory cannot carry", value=name,
                             fix="send text inline")
        region = (r.text("segment name"), r.u64("offset"), r.u64("size"))
        r.tensor = None
        return TensorField(name, dtype, shape, shm=region)
    if storage != INLINE:
        raise FrameError(f"tensor {name!r} has an unknown storage kind", value=storage,
                         fix=f"use {INLINE} (inline) or {SHARED_MEMORY} (shared memory)")
    nbytes = r.u64("byte count")
    data = r.take(nbytes, "data")
    r.tensor = None
    if dtype is None:
        return TensorField(name, None, shape, array=_text(name, data, shape))
    expected = math.prod(shape) * dtype.itemsize
    if nbytes != expected:
        raise FrameError(f"tensor {name!r} has {nbytes} bytes but shape {list(shape)} of {dtype.name} needs {expected}",
                         value=nbytes, fix="send exactly prod(shape) * itemsize bytes, C-order, little-endian")
    return TensorField(name, dtype, shape, array=np.frombuffer(data, dtype=dtype).reshape(shape))


def _text(name: str, data: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    return text_array(name, unpack_lengths(name, bytes(data)), shape)


@dataclass(slots=True)
class PredictFrame:
    model: str
    capture: bool
    capture_id: str
    outputs: tuple[str, ...]
    inputs: tuple[TensorField, ...]


def read_predict(payload: bytes | bytearray | memoryview) -> PredictFrame:
    r = Reader(payload)
    model = r.text("the model name")
    flags = r.u8("the flags")
    capture_id = r.text("the capture id")
    outputs = tuple(r.text("an output name") for _ in range(r.u16("the output count")))
    inputs = tuple(read_tensor(r) for _ in range(r.u16("the input count")))
    r.done("last input")
    return PredictFrame(model, bool(flags & FLAG_CAPTURE), capture_id, outputs, inputs)


@dataclass(slots=True)
class PredictReply:
    version: str
    capture_id: str
    queue_us: int
    compute_us: int
    total_us: int
    outputs: dict[str, np.ndarray]


def read_predict_ok(payload: bytes | bytearray | memoryview) -> PredictReply:
    r = Reader(payload)
    version, capture_id = r.text("the model version"), r.text("the capture id")
    queue_us, compute_us, total_us = r.ints(_TIMING, "the timing")
    outputs: dict[str, np.ndarray] = {}
    for _ in range(r.u16("the output count")):
        field = read_tensor(r)
        assert field.array is not None  # the agent sends outputs inline
        outputs[field.name] = field.array
    r.done("last output")
    return PredictReply(version, capture_id, queue_us, compute_us, total_us, outputs)


def read_error(payload: bytes | bytearray | memoryview) -> tuple[str, str]:
    r = Reader(payload)
    code = r.u16("the status code")
    message = str(r.take(r.u32("the message length"), "the message"), "utf-8", errors="replace")
    return CODE_NAMES.get(code, "UNKNOWN"), message
