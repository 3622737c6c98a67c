"""The Python side of the agent's local fast path (docs/fastpath.md): Predict frames over a Unix
socket, a small pool of connections so one client can be shared between threads.

:class:`edgemill.client.AgentClient` uses it by itself for ``unix:`` targets when the agent offers it
(a socket at the gRPC socket's path + ``.fast``) and falls back to gRPC when it does not.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .agent import fastwire as fw


class FastPathError(Exception):
    """The agent answered with an ERROR frame: ``code`` is the gRPC status name, ``message`` the reason."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class FastPathTimeout(Exception):
    """The agent did not answer within the call's timeout (the request may still run)."""


class FastPathUnavailable(Exception):
    """No fast path at that socket (absent, refused, or closed on us): use gRPC instead. ``sent``: the
    request may have reached the agent (so sending it again could run it twice)."""

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


def fast_socket_for(target: str) -> Path | None:
    """The fast-path socket an agent serving gRPC on ``target`` offers, when it exists."""
    if not target.startswith("unix:"):
        return None
    path = Path(target[len("unix://"):] if target.startswith("unix://") else target[len("unix:"):])
    candidate = path.with_name(path.name + ".fast")
    return candidate if candidate.is_socket() else None


class FastChannel:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.path))
        except OSError as exc:
            conn.close()
            raise FastPathUnavailable(f"{self.path}: {exc.strerror}") from None
        fw.kernel_timeouts(conn, self.timeout)
        return conn

    def _take(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give(self, conn: socket.socket) -> None:
        with self._lock:
            self._idle.append(conn)

    def call(self, kind: int, writer: fw.Writer, timeout: float | None = None) -> tuple[int, bytearray]:
        """Send one frame and read its answer: (type, payload)."""
        request_id = next(self._ids) & 0xFFFFFFFF
        conn = self._take()
        try:
            if timeout is not None and timeout != self.timeout:
                fw.kernel_timeouts(conn, timeout)
            conn.sendmsg(writer.frame(kind, request_id))
            head = _recv_exact(conn, fw.HEADER_SIZE)
            magic, answer, _, _, answered_id, length = fw.HEADER.unpack(head)
            if magic != fw.MAGIC or answered_id != request_id:
                raise FastPathUnavailable(f"{self.path}: not an edgemill fast-path answer", sent=True)
            payload = _recv_exact(conn, length)
        except BlockingIOError:  # the kernel's receive timeout: the agent did not answer in time
            conn.close()
            raise FastPathTimeout(f"no answer within {timeout or self.timeout:g} s") from None
        except (OSError, EOFError) as exc:
            conn.close()
            raise FastPathUnavailable(f"{self.path}: {exc}", sent=True) from None
        except BaseException:
            conn.close()
            raise
        if timeout is not None and timeout != self.timeout:
            fw.kernel_timeouts(conn, self.timeout)
        self._give(conn)
        return answer, payload

    def ping(self) -> None:
        kind, _ = self.call(fw.PING, fw.Writer())
        if kind != fw.PONG:
            raise FastPathUnavailable(f"{self.path}: answered a PING with frame type {kind}")

    def predict(self, model: str, inputs: Mapping[str, Any], outputs: Sequence[str] = (), capture: bool = False,
                capture_id: str = "", timeout: float | None = None,
                shared: Mapping[str, tuple[str, int, int]] | None = None) -> fw.PredictReply:
        arrays = {n: np.asarray(v) for n, v in inputs.items()}
        kind, payload = self.call(fw.PREDICT, fw.predict_request(model, arrays, outputs, capture, capture_id, shared),
                                  timeout)
        if kind == fw.ERROR:
            raise FastPathError(*fw.read_error(payload))
        if kind != fw.PREDICT_OK:
            raise FastPathUnavailable(f"{self.path}: answered a PREDICT with frame type {kind}")
        return fw.read_predict_ok(payload)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _recv_exact(conn: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = conn.recv_into(view[got:], n - got, socket.MSG_WAITALL)
        if count == 0:
            raise EOFError("the agent closed the connection")
        got += count
    return buf
