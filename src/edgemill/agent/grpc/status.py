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


def grpc_code(exc: EdgemillError) -> grpc.StatusCode:
    return grpc.StatusCode[status_for(exc).grpc_code]


def translate_errors(method: F) -> F:
    """Wrap a servicer method: a user's mistake becomes its status code with the one-line message;
    a bug of ours becomes INTERNAL with a short message (and a logged traceback), never a hang."""

    @wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except EdgemillError as exc:
            context.abort(grpc_code(exc), exc.one_line())
        except Exception as exc:  # noqa: BLE001
            already = context.code() if context is not None and hasattr(context, "code") else None
            if isinstance(exc, grpc.RpcError) or already not in (None, grpc.StatusCode.OK):
                raise  # context.abort() inside the method: its status stands
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL,
                          f"internal error: {type(exc).__name__}: {exc}. This is a bug in edgemill; see the agent log.")

    return wrapper  # type: ignore[return-value]
