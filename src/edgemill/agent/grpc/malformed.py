"""Requests that are not the method's message: INVALID_ARGUMENT naming the message, not grpcio's INTERNAL.

grpcio answers a request its deserializer cannot parse with INTERNAL ("Exception deserializing
request!"), which reads as a bug of ours. This interceptor gives every unary method a deserializer
that never raises: bytes that do not parse become a :class:`Malformed` value, and the method answers
it with INVALID_ARGUMENT before the servicer sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class Malformed:
    """A request body that did not parse as the method's message."""

    size: int
    reason: str


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, or RuntimeError for deep nesting
            return Malformed(len(data), f"{type(exc).__name__}: {exc}"[:200])

    return parse


def _refusing(behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str,
              message: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"request to {method} is not a valid {message} ({request.size} bytes: {request.reason}). "
                          f"Fix: serialize the request as {message} with stubs generated from the agent's .proto")
        return behaviour(request, context)

    return handle


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Wraps unary-request handlers; streaming ones (none today) pass through unchanged.

    Handlers are fixed once the server starts, so each method's wrapped handler is built once and
    reused: the Predict path pays one dictionary lookup.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler  # unknown methods stay UNIMPLEMENTED, answered by grpcio
        self._wrapped[method] = wrapped_handler = self._wrap(handler, method)
        return wrapped_handler

    @staticmethod
    def _wrap(handler: Any, method: str) -> Any:
        deserialize = handler.request_deserializer
        message = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
        message_name = message.full_name if message is not None else "request message"
        wrapped: dict[str, Any] = {"request_deserializer": _tolerant(deserialize)}
        for kind in ("unary_unary", "unary_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                wrapped[kind] = _refusing(behaviour, method, message_name)
        return handler._replace(**wrapped)
