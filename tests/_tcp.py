"""Byte pumping for the small TCP proxies the tests put between processes."""

from __future__ import annotations

import socket
import time


def pump(source: socket.socket, sink: socket.socket, delay_s: float = 0.0) -> None:
    """Copy ``source`` to ``sink`` until either end closes (waiting ``delay_s`` before each chunk),
    then shut both down, so the other direction's pump ends too."""
    try:
        while chunk := source.recv(65536):
            if delay_s > 0:
                time.sleep(delay_s)
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
