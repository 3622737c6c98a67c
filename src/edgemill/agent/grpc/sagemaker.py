"""AWS.SageMaker.Edge.Agent: the discontinued SageMaker Edge Manager agent's API, translated onto the data plane.

Applications written for Edge Manager keep working unchanged: same RPCs, messages, enums and, where
Edge Manager documented one, the same gRPC status code for the same failure. Two things are better
than the original through the same API: Predict calls run concurrently (Edge Manager serialized them),
and CaptureData goes to a bounded on-disk queue that survives restarts (Edge Manager kept an in-memory
ring). Tensor types the API cannot name travel as the smallest wider type that holds every value.
Text (str) tensors have no such stand-in (DataType has no text type, and one byte_data per tensor leaves
no room for element boundaries): Predict on such a model is refused naming the tensor.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import grpc
import numpy as np

from ...errors import (BackendError, EdgemillError, FileNotFound, InputMismatchError, ModelCheckError,
                       ModelFormatError, UnknownTargetError, UserError, VerificationError)
from ...tensors import TensorSpec
from .. import protos, sysv_shm
from ...captures.record import CaptureExistsError, check_capture_id
from ..dataplane import DataPlane, ModelView
from ..wire import check_shape, tensor_bytes, tensor_from_bytes
from .status import bounded, translate_errors

pb = protos.load("aws.sagemaker.edge.agent_pb2")
pb_grpc = protos.load("aws.sagemaker.edge.agent_pb2_grpc")
F = TypeVar("F", bound=Callable[..., Any])

DTYPE_BY_ENUM: dict[int, np.dtype] = {
    pb.UINT8: np.dtype(np.uint8), pb.INT16: np.dtype(np.int16), pb.INT32: np.dtype(np.int32),
    pb.INT64: np.dtype(np.int64), pb.FLOAT16: np.dtype(np.float16), pb.FLOAT32: np.dtype(np.float32),
    pb.FLOAT64: np.dtype(np.float64),
}
ENUM_BY_DTYPE: dict[str, int] = {d.name: e for e, d in DTYPE_BY_ENUM.items()}
WIDER = {"bool": "uint8", "int8": "int16", "uint16": "int32", "uint32": "int64"}  # lossless stand-ins
CAPTURE_STATUS = {"queued": pb.IN_PROGRESS, "uploading": pb.IN_PROGRESS, "uploaded": pb.SUCCESS,
                  "failed": pb.FAILURE}
FUTURE_TOLERANCE_S = 5.0  # CaptureData: a timestamp this far ahead of the agent's clock is OUT_OF_RANGE
METADATA_BLOB = "edge_manager.json"  # the capture's auxiliary entry holding timestamp and encodings


def _codes(response: Callable[[], Any], table: dict[type[EdgemillError], grpc.StatusCode]) -> Callable[[F], F]:
    """Edge Manager's documented code for these errors in this RPC; other errors go to translate_errors.

    The status is set on the context rather than raised with ``context.abort`` so that it passes
    through ``translate_errors`` untouched.
    """

    def decorate(method: F) -> F:
        @wraps(method)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(self, request, context)
            except EdgemillError as exc:
                code = next((table[c] for c in type(exc).__mro__ if c in table), None)
                if code is None:
                    raise
                return _refuse(context, code, exc, response())

        return wrapper  # type: ignore[return-value]

    return decorate


def _refuse(context: grpc.ServicerContext, code: grpc.StatusCode, error: EdgemillError, response: Any) -> Any:
    context.set_code(code)
    context.set_details(bounded(error.one_line()))
    return response


# --- tensors -------------------------------------------------------------------------------------


def _wire_dtype(dtype: str) -> str:
    return WIDER.get(dtype, dtype)


def _refuse_text(model: str, spec: TensorSpec) -> UserError:
    return UserError(f"model {model!r} has a text (str) tensor {spec.name!r}, which the Edge Manager API cannot "
                     "carry (its DataType has no text type)", value=f"{spec.name}: str{spec.shape_text()}",
                     fix="call this model through the edgemill.v1 API or KServe V2 (datatype BYTES), which carry "
                         "text, on the same agent")


def _tensor_metadata(spec: TensorSpec) -> Any:
    enum = ENUM_BY_DTYPE.get(_wire_dtype(spec.dtype))
    if enum is None:
        return None
    return pb.TensorMetadata(name=spec.name.encode(), data_type=enum,
                             shape=[d if isinstance(d, int) else -1 for d in spec.shape])


def model_message(view: ModelView) -> Any:
    inputs = [_tensor_metadata(s) for s in view.inputs]
    outputs = [_tensor_metadata(s) for s in view.outputs]
    if any(m is None for m in inputs + outputs):  # a type the API cannot name: "may be empty", as documented
        inputs, outputs = [], []
    return pb.Model(url=view.package_path, name=view.name, input_tensor_metadatas=inputs,
                    output_tensor_metadatas=outputs)


def _region(handle: Any, needed: int | None, what: str) -> bytes:
    """The bytes a SharedMemoryHandle names; size 0 means ``needed`` (or the rest of the segment)."""
    size = handle.size
    if needed is None:
        size = size or max(sysv_shm.segment_size(handle.segment_id) - handle.offset, 0)
    elif size == 0 or size >= needed:  # a region larger than the tensor (a whole page, say) is fine
        size = needed
    else:
        raise InputMismatchError(f"{what} has a shared-memory region of {size} bytes but its dtype and shape need "
                                 f"{needed}", value=size, fix="set size to prod(shape) * itemsize, or 0")
    return sysv_shm.read_segment(handle.segment_id, handle.offset, size)


def decode_tensor(tensor: Any, spec: TensorSpec | None) -> tuple[str, np.ndarray]:
    """(name, array) of a request Tensor; ``spec`` is the model's own tensor at that position, if any."""
    if tensor.HasField("tensor_metadata"):
        meta = tensor.tensor_metadata
        try:
            name = meta.name.decode("utf-8") or (spec.name if spec is not None else "")
        except UnicodeDecodeError:
            raise InputMismatchError("tensor name is not UTF-8", value=meta.name[:64],
                                     fix="name tensors as ListModels reports them") from None
        dtype = DTYPE_BY_ENUM.get(meta.data_type)
        if dtype is None:
            raise InputMismatchError(f"tensor {name!r} has an unknown data_type", value=meta.data_type,
                                     fix=f"use one of {sorted(pb.DataType.keys())}")
        shape: Sequence[int] = list(meta.shape)
        if not shape and spec is not None and spec.is_static():  # shape left out: the model's own
            shape = [int(d) for d in spec.shape]
    elif spec is not None and spec.dtype == "str":  # no DataType to read its bytes as
        raise InputMismatchError(f"tensor {spec.name!r} is text (str) in the model and has no tensor_metadata",
                                 value=f"{spec.name}: str{spec.shape_text()}",
                                 fix="send tensor_metadata naming how to read its bytes (e.g. UINT8 for UTF-8 "
                                     "text), or use the edgemill.v1 or KServe V2 API, which carry text")
    elif spec is not None and spec.is_static():
        name, dtype, shape = spec.name, np.dtype(_wire_dtype(spec.dtype)), [int(d) for d in spec.shape]
    else:
        raise InputMismatchError("tensor has no tensor_metadata and the model's own does not fix it",
                                 value=spec.name if spec is not None else None,
                                 fix="send tensor_metadata (name, data_type, shape), as ListModels reports it")
    shape = check_shape(name, shape)
    if tensor.WhichOneof("data") == "shared_memory_handle":
        data: bytes = _region(tensor.shared_memory_handle, math.prod(shape) * dtype.itemsize, f"tensor {name!r}")
    else:
        data = tensor.byte_data
    array = tensor_from_bytes(name, data, dtype, shape)
    if spec is not None and spec.name == name and spec.dtype != dtype.name and _wire_dtype(spec.dtype) == dtype.name:
        array = _narrow(name, array, np.dtype(spec.dtype))
    return name, array


def _narrow(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The model's own type back from its wider stand-in, refusing values that do not fit."""
    narrowed = array.astype(dtype)
    if not np.array_equal(narrowed.astype(array.dtype), array):
        raise InputMismatchError(f"tensor {name!r} has values that do not fit the model's {dtype.name}",
                                 value=array.dtype.name, fix=f"send values representable as {dtype.name}")
    return narrowed


def decode_tensors(tensors: Sequence[Any], specs: Callable[[], Sequence[TensorSpec]]) -> dict[str, np.ndarray]:
    """Tensors by name. ``specs()`` gives the model's own; a tensor without a name is the model's
    tensor at the same position."""
    known = specs() if len(tensors) else ()
    out: dict[str, np.ndarray] = {}
    for position, tensor in enumerate(tensors):
        spec = _spec_for(tensor, position, known)
        name, array = decode_tensor(tensor, spec)
        if name in out:
            raise InputMismatchError("the same tensor name is sent twice", value=name, fix="send each tensor once")
        out[name] = array
    return out


def _spec_for(tensor: Any, position: int, specs: Sequence[TensorSpec]) -> TensorSpec | None:
    named = tensor.tensor_metadata.name if tensor.HasField("tensor_metadata") else b""
    if named:
        return next((s for s in specs if s.name.encode() == named), None)
    return specs[position] if position < len(specs) else None


def encode_tensor(name: str, array: np.ndarray) -> Any:
    wire = _wire_dtype(array.dtype.name)
    enum = ENUM_BY_DTYPE.get(wire)
    if enum is None:
        raise UserError(f"output {name!r} has a type the Edge Manager API cannot carry", value=array.dtype.name,
                        fix="use the edgemill.v1 or KServe API for this model, or recompile it with "
                            "float, int or uint8 outputs")
    if wire != array.dtype.name:
        array = array.astype(wire)
    return pb.Tensor(tensor_metadata=pb.TensorMetadata(name=name.encode(), data_type=enum, shape=array.shape),
                     byte_data=tensor_bytes(array))


def _capture_id(capture_id: str) -> str:
    """The application's id is its only handle on the capture (the response carries none): required."""
    try:
        return check_capture_id(capture_id)
    except UserError:
        raise UserError("bad capture_id", value=capture_id, expected="1-128 letters, digits, '.', '_' or '-'",
                        fix="send a new UUID string for each capture") from None


# --- the service ---------------------------------------------------------------------------------

_LOAD_REFUSED = grpc.StatusCode.FAILED_PRECONDITION  # "model package could not be loaded"


class EdgeManagerServicer(pb_grpc.AgentServicer):
    def __init__(self, dataplane: DataPlane, clock: Callable[[], float] = time.time) -> None:
        self.dataplane = dataplane
        self.clock = clock

    @translate_errors
    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        received = time.perf_counter()
        view = self.dataplane.describe_model(request.name)  # NOT_FOUND before any tensor is read
        text = next((s for s in (*view.inputs, *view.outputs) if s.dtype == "str"), None)
        if text is not None:  # before the model runs: its answer could not be sent back
            raise _refuse_text(request.name, text)
        inputs = decode_tensors(request.tensors, lambda: view.inputs)
        result = self.dataplane.predict(request.name, inputs, received=received, protocol="sagemaker")
        return pb.PredictResponse(tensors=[encode_tensor(n, a) for n, a in result.outputs.items()])

    @translate_errors
    @_codes(pb.LoadModelResponse, {VerificationError: _LOAD_REFUSED, ModelFormatError: _LOAD_REFUSED,
                                   ModelCheckError: _LOAD_REFUSED, UnknownTargetError: _LOAD_REFUSED,
                                   BackendError: _LOAD_REFUSED, FileNotFound: grpc.StatusCode.NOT_FOUND})
    def LoadModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.url or not os.path.exists(request.url):
            raise FileNotFound("no model at that url", value=request.url,
                               fix="give the local path of a package directory or .emp file the agent can read")
        view, _ = self.dataplane.load_model(package_path=request.url, name=request.name)
        return pb.LoadModelResponse(model=model_message(view))

    @translate_errors
    def UnLoadModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.dataplane.unload_model(request.name)
        return pb.UnLoadModelResponse()

    @translate_errors
    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ListModelsResponse(models=[model_message(v) for v in self.dataplane.list_models()])

    @translate_errors
    def DescribeModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.DescribeModelResponse(model=model_message(self.dataplane.describe_model(request.name)))

    @translate_errors
    @_codes(pb.CaptureDataResponse, {CaptureExistsError: grpc.StatusCode.ALREADY_EXISTS})  # a concurrent duplicate
    def CaptureData(self, request: Any, context: grpc.ServicerContext) -> Any:
        capture_id = _capture_id(request.capture_id)
        now = self.clock()
        stamp = now
        if request.HasField("inference_timestamp"):
            stamp = request.inference_timestamp.seconds + request.inference_timestamp.nanos / 1e9
            if stamp > now + FUTURE_TOLERANCE_S:
                return _refuse(context, grpc.StatusCode.OUT_OF_RANGE,
                               UserError("inference_timestamp is in the future",
                                         value=f"{stamp - now:.1f} s ahead of the agent's clock",
                                         fix="stamp the capture with the time of the inference (seconds since the "
                                             "epoch, UTC)"), pb.CaptureDataResponse())
        if self.dataplane.capture_status(capture_id).state != "unknown":  # before any tensor or segment is read
            return _refuse(context, grpc.StatusCode.ALREADY_EXISTS,
                           UserError("a capture with that capture_id exists", value=capture_id,
                                     fix="use a new id (a UUID) for each capture"), pb.CaptureDataResponse())
        views: dict[str, ModelView] = {}

        def model() -> ModelView:
            if not views:
                views["m"] = self.dataplane.describe_model(request.model_name)
            return views["m"]

        inputs = decode_tensors(request.input_tensors, lambda: model().inputs)
        outputs = decode_tensors(request.output_tensors, lambda: model().outputs)
        auxiliary, encodings = self._auxiliary(request)
        auxiliary[METADATA_BLOB] = json.dumps({
            "inference_timestamp": {"seconds": int(math.floor(stamp)), "nanos": int(round((stamp % 1) * 1e9)) % 10**9},
            "encodings": encodings}, sort_keys=True).encode()
        self.dataplane.capture_data(request.model_name, capture_id, inputs, outputs, auxiliary)
        return pb.CaptureDataResponse()

    @staticmethod
    def _auxiliary(request: Any) -> tuple[dict[str, bytes], dict[str, str]]:
        blobs: dict[str, bytes] = {}
        encodings: dict[str, str] = {}
        for kind, items in (("inputs", request.inputs), ("outputs", request.outputs)):
            for item in items:
                key = f"{kind}/{item.name}"
                if key in blobs:
                    raise InputMismatchError(f"the same auxiliary {kind[:-1]} name is sent twice", value=item.name,
                                             fix="name each auxiliary entry once")
                if item.WhichOneof("data") == "shared_memory_handle":
                    blobs[key] = _region(item.shared_memory_handle, None, f"auxiliary {kind[:-1]} {item.name!r}")
                else:
                    blobs[key] = item.byte_data
                encodings[key] = pb.Encoding.Name(item.encoding) if item.encoding in pb.Encoding.values() \
                    else str(item.encoding)
        return blobs, encodings

    @translate_errors
    def GetCaptureDataStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        """A capture id the agent never saw is answered OK with ``status: NOT_FOUND``, the value Edge
        Manager's enum has for it (the guide's list of status codes for this RPC repeats CaptureData's
        own, down to "data capture successfully initiated"; applications read the enum)."""
        status = self.dataplane.capture_status(request.capture_id)
        return pb.GetCaptureDataStatusResponse(status=CAPTURE_STATUS.get(status.state, pb.NOT_FOUND))


def add_to_server(server: grpc.Server, dataplane: DataPlane) -> None:
    pb_grpc.add_AgentServicer_to_server(EdgeManagerServicer(dataplane), server)
