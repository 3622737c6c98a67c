"""inference.GRPCInferenceService: the KServe / Open Inference Protocol V2, so stock clients
(tritonclient, KServe's own) work unchanged. Model-repository calls load packages by name from the
agent's models directory. Text tensors are datatype BYTES, each element UTF-8 (see ``wire_text``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ... import __version__
from ...errors import InputMismatchError, ModelNotFoundError, UserError
from ...package.reader import open_package
from .. import protos
from ..dataplane import DataPlane
from ..models import is_package
from ..wire import check_shape, dtype_lookup, tensor_bytes, tensor_from_bytes
from ..wire_text import is_text, pack_lengths, text_array, text_elements, unpack_lengths
from .status import translate_errors

pb = protos.load("inference.grpc_predict_v2_pb2")
pb_grpc = protos.load("inference.grpc_predict_v2_pb2_grpc")

V2_BY_DTYPE = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
               "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
               "float32": "FP32", "float64": "FP64"}
DTYPE_BY_V2 = {v: np.dtype(k) for k, v in V2_BY_DTYPE.items()}
v2_datatype_of = dtype_lookup(V2_BY_DTYPE)
TEXT = "BYTES"  # V2's datatype for str tensors: in bytes_contents, or length-prefixed in the raw entry
# Typed `contents` fields by V2 datatype (requests may carry data there instead of raw bytes).
_CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents"}
# What each contents field holds on the wire: values are read as that, then narrowed with a range check.
_FIELD_DTYPE = {"bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
                "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
                "uint64_contents": np.dtype(np.uint64), "fp32_contents": np.dtype(np.float32),
                "fp64_contents": np.dtype(np.float64)}


def _dtype(name: str, datatype: str) -> np.dtype:
    dtype = DTYPE_BY_V2.get(datatype)
    if dtype is None:
        raise InputMismatchError(f"input {name!r} has an unsupported datatype", value=datatype,
                                 fix=f"use one of {sorted([*DTYPE_BY_V2, TEXT])}")
    return dtype


def decode_inputs(request: Any) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputMismatchError("raw_input_contents must hold one entry per input", value=len(raw),
                                 expected=str(len(request.inputs)), fix="send raw data for every input or for none")
    out: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype == TEXT:
            elements = unpack_lengths(tensor.name, raw[index]) if raw else tensor.contents.bytes_contents
            out[tensor.name] = text_array(tensor.name, elements, tensor.shape)
            continue
        dtype = _dtype(tensor.name, tensor.datatype)
        if raw:
            out[tensor.name] = tensor_from_bytes(tensor.name, raw[index], dtype, tensor.shape)
            continue
        out[tensor.name] = _typed_contents(tensor, dtype)
    return out


def _typed_contents(tensor: Any, dtype: np.dtype) -> np.ndarray:
    """The input's values from its typed ``contents`` field, checked against its shape and datatype."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InputMismatchError(f"input {tensor.name!r} of {tensor.datatype} has no typed contents field",
                                 value=tensor.datatype, fix="send its data in raw_input_contents")
    shape = check_shape(tensor.name, tensor.shape)
    values = np.asarray(getattr(tensor.contents, field), dtype=_FIELD_DTYPE[field])
    expected = math.prod(shape)
    if values.size != expected:
        raise InputMismatchError(f"input {tensor.name!r} has {values.size} values but shape {list(shape)} "
                                 f"needs {expected}", value=values.size, fix="send prod(shape) values")
    array = values.astype(dtype)
    if array.dtype != values.dtype and not np.array_equal(array.astype(values.dtype), values):
        bad = values[array.astype(values.dtype) != values][0]
        raise InputMismatchError(f"input {tensor.name!r} has a value that does not fit {tensor.datatype}",
                                 value=bad.item(), fix=f"send values in the range of {tensor.datatype}")
    return array.reshape(shape)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @translate_errors
    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    @translate_errors
    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    @translate_errors
    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            view = self.dataplane.describe_model(request.name)
        except ModelNotFoundError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not request.version or request.version == view.version)

    @translate_errors
    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="edgemill", version=__version__, extensions=["model_repository"])

    @translate_errors
    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.dataplane.describe_model(request.name)
        self._check_version(request.name, request.version, view.version)

        def meta(spec: Any) -> Any:
            return pb.ModelMetadataResponse.TensorMetadata(
                name=spec.name, datatype=V2_BY_DTYPE.get(spec.dtype, TEXT),  # "str": the one other
                shape=[d if isinstance(d, int) else -1 for d in spec.shape])

        return pb.ModelMetadataResponse(name=view.name, versions=[view.version], platform=f"edgemill_{view.backend}",
                                        inputs=[meta(s) for s in view.inputs], outputs=[meta(s) for s in view.outputs])

    @staticmethod
    def _check_version(name: str, asked: str, loaded: str) -> None:
        if asked and asked != loaded:
            raise ModelNotFoundError(f"model {name!r} is loaded at version {loaded}, not the one asked for",
                                     value=asked, fix=f"ask for version '{loaded}' or leave the version empty")

    @translate_errors
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        received = time.perf_counter()
        inputs = decode_inputs(request)
        if request.model_version:
            self._check_version(request.model_name, request.model_version,
                                self.dataplane.describe_model(request.model_name).version)
        wanted = tuple(o.name for o in request.outputs)
        result = self.dataplane.predict(request.model_name, inputs, received=received, protocol="kserve",
                                        outputs=wanted)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version=result.model_version,
                                         id=request.id)
        for name, array in result.outputs.items():
            if is_text(array.dtype):  # raw like every other output: V2 forbids mixing raw and typed contents
                response.outputs.add(name=name, datatype=TEXT, shape=array.shape)
                response.raw_output_contents.append(pack_lengths(text_elements(name, array)))
                continue
            datatype = v2_datatype_of(array.dtype)
            if datatype is None:
                raise UserError(f"output {name!r} has a dtype V2 cannot carry", value=array.dtype.name,
                                fix="recompile the model with numeric outputs")
            response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(tensor_bytes(array))
        # The agent's own time, so a client can tell network from model latency.
        response.parameters["edgemill_queue_us"].int64_param = result.timing.queue_us
        response.parameters["edgemill_compute_us"].int64_param = result.timing.compute_us
        response.parameters["edgemill_total_us"].int64_param = int((time.perf_counter() - received) * 1e6)
        return response

    # --- model repository ----------------------------------------------------------------------

    def _packages(self) -> dict[str, Path]:
        """Packages in the models directory by model name (manifest name, else file/folder stem)."""
        directory = self.dataplane.config.models.directory
        found: dict[str, Path] = {}
        if not directory.is_dir():
            return found
        for entry in sorted(directory.iterdir()):
            if is_package(entry):
                found[entry.stem if entry.suffix == ".emp" else entry.name] = entry
                try:
                    with open_package(entry) as reader:
                        found.setdefault(json.loads(reader.read("manifest.json"))["name"], entry)
                except Exception:  # noqa: BLE001 - listing only; loading verifies and explains
                    pass
        return found

    @translate_errors
    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        loaded = {v.name: v for v in self.dataplane.list_models()}
        response = pb.RepositoryIndexResponse()
        for name, view in loaded.items():
            response.models.add(name=name, version=view.version, state="READY")
        if not request.ready:
            for name in sorted(set(self._packages()) - set(loaded)):
                response.models.add(name=name, state="UNAVAILABLE", reason="not loaded")
        return response

    @translate_errors
    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        params = request.parameters
        path = params["package_path"].string_param if "package_path" in params else ""
        if not path:
            package = self._packages().get(request.model_name)
            if package is None:
                raise ModelNotFoundError("no package for that model in the agent's models directory",
                                         value=request.model_name,
                                         fix=f"copy NAME.emp into {self.dataplane.config.models.directory} or pass "
                                             "the string parameter package_path")
            path = str(package)
        names = {v.name for v in self.dataplane.list_models()}
        self.dataplane.load_model(path, name=request.model_name, replace=request.model_name in names)
        return pb.RepositoryModelLoadResponse()

    @translate_errors
    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def add_to_server(server: grpc.Server, dataplane: DataPlane) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
