"""The local fast path: Predict over a Unix socket in plain frames (docs/fastpath.md), for applications
on the device. One more thin translator over the data plane: the same model lookup, checks, metrics,
drift, captures and errors (their gRPC status codes, by number) as the gRPC services.

A thread per connection reads a frame, answers it, reads the next. A connection that sends garbage
(wrong magic) or a frame over the size limit is closed; a payload that does not parse, an unknown frame
type or a refused request gets an ERROR frame and the connection stays usable. Nothing one client sends
stops the others.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EdgemillError, status_for
from . import fastwire as fw
from .dataplane import DataPlane
from .wire import tensor_from_shared_memory

log = logging.getLogger("edgemill.agent")
FRAME_TIMEOUT_S = 30.0  # a frame begun must arrive whole within this (a stalled client frees its thread)


class FastPathServer:
    def __init__(self, path: Path, dataplane: DataPlane, max_message_bytes: int, max_connections: int = 256) -> None:
        self.path = path
        self.dataplane = dataplane
        self.max_message_bytes = max_message_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a previous run (the gRPC socket beside it is live)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
        except OSError as exc:
            listener.close()
            raise ConfigError("cannot listen on the fast-path socket", value=str(self.path),
                              fix=f"choose a writable path in [listen] fast_socket, or '' to turn it off ({exc.strerror})") from None
        os.chmod(self.path, 0o660)  # the agent's user and group, like the gRPC socket
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, name="edgemill-fast-accept", daemon=True).start()
        return f"fast:{self.path}"

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            if not self._slots.acquire(blocking=False):
                self._send(conn, fw.ERROR, 0, fw.error_payload(
                    "RESOURCE_EXHAUSTED", "the agent serves as many fast-path connections as it allows; "
                    "Fix: reuse one connection per application thread, or use gRPC"))
                conn.close()
                continue
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="edgemill-fast-conn", daemon=True).start()

    # --- one connection --------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            fw.kernel_timeouts(conn, FRAME_TIMEOUT_S, send=False)
            while not self._stopping.is_set():
                head = _recv_exact(conn, fw.HEADER_SIZE, first=True)
                if head is None:
                    return  # the client closed between frames
                magic, kind, _, _, request_id, length = fw.HEADER.unpack(head)
                if magic != fw.MAGIC:
                    log.warning("fast path: a client sent a frame without the %r magic; closing it", fw.MAGIC)
                    return
                if length > self.max_message_bytes:
                    self._send(conn, fw.ERROR, request_id, fw.error_payload(
                        "RESOURCE_EXHAUSTED", f"frame of {length} bytes is over the agent's limit of "
                        f"{self.max_message_bytes}: 'max_message_mb'. Fix: pass large tensors through shared "
                        "memory, or raise [listen] max_message_mb"))
                    return  # its payload is not read: the stream cannot be resynchronised
                payload = _recv_exact(conn, length)
                if payload is None:
                    return  # truncated: the client went away mid-frame
                received = time.perf_counter()
                kind_answer, answer = self._answer(kind, payload, received)
                if not self._send(conn, kind_answer, request_id, answer):
                    return
        except (OSError, TimeoutError):
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()
            self._slots.release()

    def _answer(self, kind: int, payload: bytearray, received: float) -> tuple[int, fw.Writer]:
        if kind == fw.PING:
            return fw.PONG, fw.Writer()
        if kind != fw.PREDICT:
            return fw.ERROR, fw.error_payload("UNIMPLEMENTED", f"unknown frame type {kind}: this agent answers "
                                              "PREDICT (1) and PING (4). Fix: see docs/fastpath.md")
        try:
            frame = fw.read_predict(payload)
            inputs = {t.name: _array(t) for t in frame.inputs}
            if len(inputs) != len(frame.inputs):
                raise fw.FrameError("the same tensor name is sent twice", value=len(frame.inputs),
                                    fix="send each input once")
            result = self.dataplane.predict(frame.model, inputs, received=received, protocol="fast",
                                            outputs=frame.outputs, capture=frame.capture, capture_id=frame.capture_id)
            writer = fw.predict_response(result.model_version, result.capture_id, result.timing.queue_us,
                                         result.timing.compute_us, 0, result.outputs)
            total = int((time.perf_counter() - received) * 1e6)
            writer.patch_u64(writer.total_at, total)  # the agent's whole time, encoding included
            return fw.PREDICT_OK, writer
        except EdgemillError as exc:  # the data plane counted it, as for gRPC, if it got that far
            return fw.ERROR, fw.error_payload(status_for(exc).grpc_code, exc.one_line())
        except Exception as exc:  # a bug of ours: said, logged, and the connection lives
            log.exception("internal error on the fast path")
            return fw.ERROR, fw.error_payload("INTERNAL", f"internal error: {type(exc).__name__}: {exc}. This is a "
                                              "bug in edgemill; see the agent log.")

    @staticmethod
    def _send(conn: socket.socket, kind: int, request_id: int, writer: fw.Writer) -> bool:
        try:
            conn.sendmsg(writer.frame(kind, request_id))
            return True
        except OSError:
            return False


def _array(field: fw.TensorField) -> np.ndarray:
    if field.shm is not None:
        name, offset, size = field.shm
        assert field.dtype is not None
        return tensor_from_shared_memory(field.name, name, offset, size, field.dtype, field.shape)
    assert field.array is not None
    return field.array


def _recv_exact(conn: socket.socket, n: int, first: bool = False) -> bytearray | None:
    """``n`` bytes, or None when the peer closed or stalled. The connection's receive timeout is
    FRAME_TIMEOUT_S: a frame begun must go on arriving within it; between frames (``first``, nothing of
    the frame read yet) a connection may idle as long as it likes."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            count = conn.recv_into(view[got:], n - got, socket.MSG_WAITALL)
        except BlockingIOError:  # the receive timeout, with nothing read this time
            if first and got == 0:
                continue  # an idle connection between frames
            return None  # a frame that stopped midway
        if count == 0:
            return None
        got += count
    return buf
