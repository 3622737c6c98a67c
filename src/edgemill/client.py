"""A Python client for the edgemill agent's own API (edgemill.v1.Agent).

    from edgemill.client import AgentClient
    with AgentClient("127.0.0.1:8601") as agent:          # or AgentClient("unix:/run/edgemill/agent.sock")
        agent.load_model("/opt/models/resnet.emp")
        result = agent.predict("resnet", {"input": x})
        result.outputs["logits"], result.timing.compute_us

Text tensors go in and come back as NumPy object arrays of ``str`` (any array of str is accepted).

Other languages generate a client from proto/edgemill/v1/agent.proto (docs/agent.md shows Go).

For a ``unix:`` target, Predict goes over the agent's local fast path when the agent offers one
(docs/fastpath.md: plain frames, no gRPC), with the same results, errors and timing; everything else,
and every call when there is no fast path, goes over gRPC. ``AgentClient(..., fast_path=False)`` keeps
Predict on gRPC too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import grpc
import numpy as np

from .agent import protos
from .agent.v1_types import DTYPE_BY_ENUM, DTYPE_NAME_BY_ENUM, ENUM_BY_DTYPE, STATE_BY_ENUM, enum_of, pb
from .agent.wire import tensor_bytes
from .agent.wire_text import is_text, text_array, text_elements
from .fastpath_client import FastChannel, FastPathError, FastPathTimeout, FastPathUnavailable, fast_socket_for

pb_grpc = protos.load("edgemill.v1.agent_pb2_grpc")


class AgentError(Exception):
    """The agent refused a call; ``code`` is the gRPC status, ``message`` names the value and the fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.name}: {message}")


@dataclass(frozen=True)
class Timing:
    queue_us: int
    compute_us: int
    total_us: int  # the agent's whole processing time; round trip minus this is transport


@dataclass(frozen=True)
class PredictResult:
    outputs: dict[str, np.ndarray]
    model_version: str
    timing: Timing
    capture_id: str


@dataclass(frozen=True)
class CaptureStatus:
    capture_id: str
    state: str  # unknown, queued, uploading, uploaded, failed (failed uploads are retried)
    attempts: int
    last_error: str
    object_key: str


class SharedTensor:
    """A tensor placed in POSIX shared memory so Predict sends a handle instead of the bytes.

    Create once and refill ``array`` in place between calls; ``close()`` (or ``with``) unlinks it.
    Numbers and bools only: text has no fixed size per element, and travels inline.
    """

    def __init__(self, shape: Sequence[int], dtype: Any = np.float32, name: str | None = None) -> None:
        dtype = np.dtype(dtype)
        if is_text(dtype):
            raise TypeError(f"SharedTensor holds fixed-size numbers only, not text (dtype {dtype}); pass a str "
                            "tensor inline instead: predict(model, {name: array_of_str})")
        size = max(1, int(np.prod(shape)) * dtype.itemsize)
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        self.array: np.ndarray = np.ndarray(tuple(shape), dtype=dtype, buffer=self._shm.buf)
        self.name = self._shm.name

    def handle(self) -> Any:
        return pb.SharedMemoryHandle(name=self.name, offset=0, size=self.array.nbytes)

    def close(self) -> None:
        del self.array
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> SharedTensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor(name: str, value: Any) -> Any:
    if isinstance(value, SharedTensor):
        array = value.array
        return pb.Tensor(name=name, dtype=_dtype_enum(name, array), shape=array.shape, shared_memory=value.handle())
    array = np.asarray(value)
    if is_text(array.dtype):
        return pb.Tensor(name=name, dtype=pb.STRING, shape=array.shape,
                         strings=pb.Strings(values=text_elements(name, array)))
    return pb.Tensor(name=name, dtype=_dtype_enum(name, array), shape=array.shape, raw=tensor_bytes(array))


def _dtype_enum(name: str, array: np.ndarray) -> int:
    enum = enum_of(array.dtype)
    if enum is None:
        raise TypeError(f"tensor {name!r} has dtype {array.dtype.name}, which the agent API cannot carry; "
                        f"use one of {sorted(ENUM_BY_DTYPE)}")
    return enum


def _array(tensor: Any) -> np.ndarray:
    if tensor.dtype == pb.STRING:
        return text_array(tensor.name, tensor.strings.values, tensor.shape)
    dtype = DTYPE_BY_ENUM[tensor.dtype].newbyteorder("<")
    return np.frombuffer(tensor.raw, dtype=dtype).reshape(tuple(tensor.shape))


class AgentClient:
    """One channel to one agent; thread-safe (share it between threads)."""

    def __init__(self, target: str = "127.0.0.1:8601", *, timeout: float = 30.0,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, max_message_mb: int = 64, fast_path: bool = True) -> None:
        limit = max_message_mb * 1024 * 1024
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.AgentStub(self._channel)
        self.timeout = timeout
        fast = fast_socket_for(target) if fast_path and root_certificates is None else None
        self._fast: FastChannel | None = FastChannel(fast, timeout) if fast is not None else None

    @property
    def transport(self) -> str:
        """How Predict travels now: "fast" (the local fast path) or "grpc"."""
        return "fast" if self._fast is not None else "grpc"

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise AgentError(exc.code(), exc.details() or "") from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the agent accepts connections (raises AgentError UNAVAILABLE after ``timeout``)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise AgentError(grpc.StatusCode.UNAVAILABLE, f"agent not reachable within {timeout:g} s") from None

    def load_model(self, package_path: str, name: str = "") -> dict[str, Any]:
        response = self._call("LoadModel", pb.LoadModelRequest(name=name, package_path=str(package_path)), 300)
        return {"model": _model(response.model), "evicted": list(response.evicted)}

    def unload_model(self, name: str) -> None:
        self._call("UnloadModel", pb.UnloadModelRequest(name=name))

    def list_models(self) -> list[dict[str, Any]]:
        return [_model(m) for m in self._call("ListModels", pb.ListModelsRequest()).models]

    def describe_model(self, name: str) -> dict[str, Any]:
        return _model(self._call("DescribeModel", pb.DescribeModelRequest(name=name)).model)

    def predict(self, model: str, inputs: Mapping[str, Any], outputs: Sequence[str] = (), *,
                capture: bool = False, capture_id: str = "", timeout: float | None = None) -> PredictResult:
        fast = self._fast
        if fast is not None:
            shared = {n: (v.name, 0, v.array.nbytes) for n, v in inputs.items() if isinstance(v, SharedTensor)}
            arrays = {n: v.array if isinstance(v, SharedTensor) else v for n, v in inputs.items()}
            try:
                reply = fast.predict(model, arrays, outputs, capture, capture_id, timeout, shared)
            except FastPathError as exc:
                raise AgentError(grpc.StatusCode[exc.code], exc.message) from None
            except FastPathTimeout as exc:
                raise AgentError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None
            except FastPathUnavailable as exc:
                self._fast = None  # the agent stopped offering it: gRPC from now on
                fast.close()
                if exc.sent:  # it may have run: not sent again, the caller decides
                    raise AgentError(grpc.StatusCode.UNAVAILABLE, f"the fast path broke during the call ({exc}); "
                                     "later calls use gRPC") from None
            else:
                return PredictResult(reply.outputs, reply.version,
                                     Timing(reply.queue_us, reply.compute_us, reply.total_us), reply.capture_id)
        request = pb.PredictRequest(model=model, inputs=[_tensor(n, v) for n, v in inputs.items()],
                                    outputs=list(outputs), capture=capture, capture_id=capture_id)
        response = self._call("Predict", request, timeout)
        t = response.timing
        return PredictResult({o.name: _array(o) for o in response.outputs}, response.model_version,
                             Timing(t.queue_us, t.compute_us, t.total_us), response.capture_id)

    def capture_data(self, model: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                     auxiliary: Mapping[str, bytes] | None = None, capture_id: str = "") -> str:
        request = pb.CaptureDataRequest(model=model, capture_id=capture_id,
                                        inputs=[_tensor(n, v) for n, v in inputs.items()],
                                        outputs=[_tensor(n, v) for n, v in outputs.items()],
                                        auxiliary=dict(auxiliary or {}))
        return self._call("CaptureData", request).capture_id

    def capture_status(self, capture_id: str) -> CaptureStatus:
        r = self._call("GetCaptureDataStatus", pb.GetCaptureDataStatusRequest(capture_id=capture_id))
        return CaptureStatus(r.capture_id, STATE_BY_ENUM.get(r.state, "unknown"), r.attempts, r.last_error, r.object_key)

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _model(m: Any) -> dict[str, Any]:
    def spec(s: Any) -> dict[str, Any]:
        return {"name": s.name, "dtype": DTYPE_NAME_BY_ENUM.get(s.dtype, "unknown"),
                "shape": [n or d for d, n in zip(s.shape, list(s.dim_names) + [""] * len(s.shape))]}

    return {"name": m.name, "version": m.version, "package_id": m.package_id, "backend": m.backend,
            "precision": m.precision, "target": m.target, "inputs": [spec(s) for s in m.inputs],
            "outputs": [spec(s) for s in m.outputs], "signed_by": m.signed_by, "loaded_unix": m.loaded_unix,
            "memory_bytes": m.memory_bytes, "requests": m.requests, "errors": m.errors, "in_flight": m.in_flight,
            "package_path": m.package_path}
