"""edgemill.v1.Agent: our own API, translated onto the data plane."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from ...errors import InputMismatchError
from ...tensors import TensorSpec
from .. import protos
from ..v1_types import CAPTURE_STATE, DTYPE_BY_ENUM, ENUM_BY_DTYPE, enum_of, pb
from ..dataplane import DataPlane, ModelView
from ..wire import tensor_bytes, tensor_from_bytes, tensor_from_shared_memory, write_to_shared_memory
from ..wire_text import is_text, text_array, text_elements
from .status import translate_errors

pb_grpc = protos.load("edgemill.v1.agent_pb2_grpc")


def decode_tensor(tensor: Any) -> np.ndarray:
    kind = tensor.WhichOneof("data")
    if tensor.dtype == pb.STRING or kind == "strings":
        return _decode_text(tensor, kind)
    dtype = DTYPE_BY_ENUM.get(tensor.dtype)
    if dtype is None:
        raise InputMismatchError(f"tensor {tensor.name!r} has an unsupported dtype",
                                 value=_dtype_word(tensor.dtype),
                                 fix=f"use one of {sorted(ENUM_BY_DTYPE)}")
    if kind == "shared_memory":
        handle = tensor.shared_memory
        return tensor_from_shared_memory(tensor.name, handle.name, handle.offset, handle.size, dtype, tensor.shape)
    return tensor_from_bytes(tensor.name, tensor.raw, dtype, tensor.shape)


def _decode_text(tensor: Any, kind: str | None) -> np.ndarray:
    """A STRING tensor: its values are in ``strings``, and only there."""
    if tensor.dtype != pb.STRING:
        raise InputMismatchError(f"tensor {tensor.name!r} carries strings but its dtype is not STRING",
                                 value=_dtype_word(tensor.dtype), fix="set dtype STRING for text, or send numbers in raw")
    if kind == "shared_memory":
        raise InputMismatchError(f"tensor {tensor.name!r} is STRING, which shared memory cannot carry (it holds "
                                 "fixed-size elements only)", value=tensor.shared_memory.name,
                                 fix="send this tensor inline, one UTF-8 value per element in Tensor.strings")
    if kind == "raw":
        raise InputMismatchError(f"tensor {tensor.name!r} is STRING but its data is in raw", value=len(tensor.raw),
                                 fix="send one UTF-8 value per element in Tensor.strings")
    return text_array(tensor.name, tensor.strings.values, tensor.shape)


def _dtype_word(value: int) -> str | int:
    return pb.DataType.Name(value) if value in pb.DataType.values() else value


def decode_tensors(tensors: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name in out:
            raise InputMismatchError("the same tensor name is sent twice", value=tensor.name,
                                     fix="send each input once")
        out[tensor.name] = decode_tensor(tensor)
    return out


def encode_tensor(name: str, array: np.ndarray, shm: Any = None) -> Any:
    if is_text(array.dtype):
        if shm is not None:
            raise InputMismatchError(f"output {name!r} is text (STRING), which shared memory cannot carry (it holds "
                                     "fixed-size elements only)", value=shm.name,
                                     fix=f"leave {name!r} out of output_shared_memory: it comes back inline")
        return pb.Tensor(name=name, dtype=pb.STRING, shape=array.shape,
                         strings=pb.Strings(values=text_elements(name, array)))
    enum = enum_of(array.dtype)
    if enum is None:
        raise InputMismatchError(f"output {name!r} has a dtype the API cannot carry", value=array.dtype.name,
                                 fix="recompile the model with numeric outputs")
    if shm is not None:
        written = write_to_shared_memory(array, shm.name, shm.offset, shm.size)
        return pb.Tensor(name=name, dtype=enum, shape=array.shape,
                         shared_memory=pb.SharedMemoryHandle(name=shm.name, offset=shm.offset, size=written))
    return pb.Tensor(name=name, dtype=enum, shape=array.shape, raw=tensor_bytes(array))


def spec_message(spec: TensorSpec) -> Any:
    return pb.TensorSpec(name=spec.name, dtype=ENUM_BY_DTYPE.get(spec.dtype, pb.DATA_TYPE_UNSPECIFIED),
                         shape=[d if isinstance(d, int) else -1 for d in spec.shape],
                         dim_names=[d if isinstance(d, str) else "" for d in spec.shape])


def model_message(view: ModelView) -> Any:
    return pb.Model(name=view.name, version=view.version, package_id=view.package_id, backend=view.backend,
                    precision=view.precision, target=view.target,
                    inputs=[spec_message(s) for s in view.inputs], outputs=[spec_message(s) for s in view.outputs],
                    signed_by=view.signed_by, loaded_unix=view.loaded_unix, memory_bytes=view.memory_bytes,
                    requests=view.requests, errors=view.errors, in_flight=view.in_flight,
                    package_path=view.package_path)


class AgentServicer(pb_grpc.AgentServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @translate_errors
    def LoadModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        view, evicted = self.dataplane.load_model(request.package_path, name=request.name)
        return pb.LoadModelResponse(model=model_message(view), evicted=evicted)

    @translate_errors
    def UnloadModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.dataplane.unload_model(request.name)
        return pb.UnloadModelResponse()

    @translate_errors
    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        models = self.dataplane.models
        return pb.ListModelsResponse(models=[model_message(v) for v in self.dataplane.list_models()],
                                     memory_budget_bytes=models.budget_bytes, memory_used_bytes=models.used_bytes())

    @translate_errors
    def DescribeModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.DescribeModelResponse(model=model_message(self.dataplane.describe_model(request.name)))

    @translate_errors
    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        received = time.perf_counter()
        inputs = decode_tensors(request.inputs)
        result = self.dataplane.predict(request.model, inputs, received=received, protocol="edgemill",
                                        outputs=tuple(request.outputs), capture=request.capture,
                                        capture_id=request.capture_id)
        shm = request.output_shared_memory
        outputs = [encode_tensor(name, array, shm.get(name) if shm else None) for name, array in result.outputs.items()]
        total = int((time.perf_counter() - received) * 1e6)
        return pb.PredictResponse(outputs=outputs, model_version=result.model_version, capture_id=result.capture_id,
                                  timing=pb.Timing(queue_us=result.timing.queue_us, compute_us=result.timing.compute_us,
                                                   total_us=total))

    @translate_errors
    def CaptureData(self, request: Any, context: grpc.ServicerContext) -> Any:
        capture_id = self.dataplane.capture_data(request.model, request.capture_id, decode_tensors(request.inputs),
                                                 decode_tensors(request.outputs), dict(request.auxiliary))
        return pb.CaptureDataResponse(capture_id=capture_id)

    @translate_errors
    def GetCaptureDataStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self.dataplane.capture_status(request.capture_id)
        assert self.dataplane.capture is not None  # capture_status raised otherwise
        stats = self.dataplane.capture.stats()
        return pb.GetCaptureDataStatusResponse(
            capture_id=request.capture_id, state=CAPTURE_STATE.get(status.state, pb.UNKNOWN),
            attempts=status.attempts, last_error=status.last_error or "",
            object_key=self.dataplane.capture.store.url(status.uploaded_key) if status.uploaded_key else "",
            queued=int(stats.get("queued", 0)), uploaded=int(stats.get("uploaded", 0)),
            failed=int(stats.get("failed", 0)), skipped_full=int(stats.get("skipped_full", 0)))


def add_to_server(server: grpc.Server, dataplane: DataPlane) -> None:
    pb_grpc.add_AgentServicer_to_server(AgentServicer(dataplane), server)
