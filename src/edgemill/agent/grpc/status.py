"""EdgemillError -> gRPC status: one place, driven by errors.STATUS_TABLE."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import grpc

from ...errors import EdgemillError, status_for

log = logging.getLogger("edgemill.agent")
F = TypeVar("F", bound=Callable[..., Any])


# The message travels percent-encoded in a trailer, and clients refuse more than 16 KiB of metadata: a
# message echoing a 100 kB value would reach the client as RESOURCE_EXHAUSTED "Stream removed" instead.
MAX_DETAILS_BYTES = 2048


def grpc_code(exc: EdgemillError) -> grpc.StatusCode:
    return grpc.StatusCode[status_for(exc).grpc_code]


def bounded(details: str) -> str:
    """``details`` cut in the middle to MAX_DETAILS_BYTES of UTF-8, keeping its start and its fix."""
    data = details.encode()
    if len(data) <= MAX_DETAILS_BYTES:
        return details
    head, tail = data[:1200].decode(errors="ignore"), data[-700:].decode(errors="ignore")
    return f"{head} [... {len(data) - 1900} bytes cut ...] {tail}"


def translate_errors(method: F) -> F:
    """Wrap a servicer method: a user's mistake becomes its status code with the one-line message;
    a bug of ours becomes INTERNAL with a short message (and a logged traceback), never a hang."""

    @wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except EdgemillError as exc:
            context.abort(grpc_code(exc), bounded(exc.one_line()))
        except Exception as exc:  # noqa: BLE001
            already = context.code() if context is not None and hasattr(context, "code") else None
            if isinstance(exc, grpc.RpcError) or already not in (None, grpc.StatusCode.OK):
                raise  # context.abort() inside the method: its status stands
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL,
                          bounded(f"internal error: {type(exc).__name__}: {exc}. This is a bug in edgemill; see the agent log."))

    return wrapper  # type: ignore[return-value]
