"""An Edge Manager application, as one was written: stubs generated from agent.proto, a Unix socket,
System V shared memory. Run in its own process (its AWS.SageMaker.Edge protobuf definitions must not
meet the agent's in one process).

    python em_roundtrip.py STUBS_DIR SOCKET PACKAGE MODEL_NAME IN.npz OUT.npz  -> JSON report on stdout

Every call's outcome goes into the report; the test decides what is right.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

stubs, socket_path, package, model_name, in_path, out_path = sys.argv[1:7]
sys.path.insert(0, stubs)
import agent_pb2 as agent  # noqa: E402  (generated at test time, as an application would)
import agent_pb2_grpc as agent_grpc  # noqa: E402

NUMPY_BY_TYPE = {agent.UINT8: np.uint8, agent.INT16: np.int16, agent.INT32: np.int32, agent.INT64: np.int64,
                 agent.FLOAT16: np.float16, agent.FLOAT32: np.float32, agent.FLOAT64: np.float64}

libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0


def sysv_segment(data: bytes, offset: int = 0) -> int:
    """A new System V segment holding ``data`` at ``offset``; returns its shmid."""
    shmid = libc.shmget(IPC_PRIVATE, offset + len(data), IPC_CREAT | 0o600)
    assert shmid >= 0, ctypes.get_errno()
    address = libc.shmat(shmid, None, 0)
    ctypes.memmove(address + offset, data, len(data))
    libc.shmdt(ctypes.c_void_p(address))
    return shmid


def outcome(call: Any, *args: Any) -> tuple[Any, dict[str, str]]:
    try:
        return call(*args), {"code": "OK"}
    except grpc.RpcError as exc:
        return None, {"code": exc.code().name, "details": exc.details()}


def tensors_out(response: Any) -> dict[str, np.ndarray]:
    if response is None:  # the call failed; the report says how
        return {}
    return {t.tensor_metadata.name.decode():
            np.frombuffer(t.byte_data, dtype=NUMPY_BY_TYPE[t.tensor_metadata.data_type])
            .reshape(list(t.tensor_metadata.shape)) for t in response.tensors}


def metadata(m: Any) -> dict[str, Any]:
    return {"name": m.name.decode(), "data_type": agent.DataType.Name(m.data_type), "shape": list(m.shape)}


def model_info(model: Any) -> dict[str, Any]:
    return {"name": model.name, "url": model.url, "inputs": [metadata(m) for m in model.input_tensor_metadatas],
            "outputs": [metadata(m) for m in model.output_tensor_metadatas]}


def tensor(name: str, array: np.ndarray, data_type: int) -> Any:
    t = agent.Tensor()
    t.tensor_metadata.name = name.encode()
    t.tensor_metadata.data_type = data_type
    t.tensor_metadata.shape.extend(array.shape)
    t.byte_data = array.tobytes()
    return t


def main() -> None:
    feed = dict(np.load(in_path))
    report: dict[str, Any] = {}
    outputs: dict[str, np.ndarray] = {}
    channel = grpc.insecure_channel(f"unix://{socket_path}", options=(("grpc.enable_http_proxy", 0),))
    client = agent_grpc.AgentStub(channel)

    report["models_before"] = [m.name for m in client.ListModels(agent.ListModelsRequest()).models]
    loaded, report["load"] = outcome(client.LoadModel, agent.LoadModelRequest(url=package, name=model_name))
    report["load_model"] = model_info(loaded.model) if loaded else None
    report["load_again"] = outcome(client.LoadModel, agent.LoadModelRequest(url=package, name=model_name))[1]
    report["load_missing"] = outcome(client.LoadModel, agent.LoadModelRequest(url=package + ".missing", name="x"))[1]
    described = client.DescribeModel(agent.DescribeModelRequest(name=model_name)).model
    report["describe"] = model_info(described)
    report["describe_unknown"] = outcome(client.DescribeModel, agent.DescribeModelRequest(name="no-such-model"))[1]
    report["list"] = [model_info(m) for m in client.ListModels(agent.ListModelsRequest()).models]

    # Predict with bytes, the metadata copied from DescribeModel (as Edge Manager's samples do).
    request = agent.PredictRequest(name=model_name)
    for meta in described.input_tensor_metadatas:
        request.tensors.append(tensor(meta.name.decode(), feed[meta.name.decode()], meta.data_type))
    response, report["predict_bytes"] = outcome(client.Predict, request)
    outputs.update({f"bytes/{k}": v for k, v in tensors_out(response).items()})

    # Predict through System V shared memory: offset 0 and size left at 0, as the samples did...
    segments = []
    request = agent.PredictRequest(name=model_name)
    for meta in described.input_tensor_metadatas:
        t = agent.Tensor()
        t.tensor_metadata.CopyFrom(meta)
        segments.append(sysv_segment(feed[meta.name.decode()].tobytes()))
        t.shared_memory_handle.segment_id = segments[-1]
        t.shared_memory_handle.offset = 0
        request.tensors.append(t)
    response, report["predict_shm"] = outcome(client.Predict, request)
    outputs.update({f"shm/{k}": v for k, v in tensors_out(response).items()})
    # ... and at an offset with an explicit size.
    request = agent.PredictRequest(name=model_name)
    for meta in described.input_tensor_metadatas:
        data = feed[meta.name.decode()].tobytes()
        t = agent.Tensor()
        t.tensor_metadata.CopyFrom(meta)
        segments.append(sysv_segment(data, offset=4096 + 8))
        t.shared_memory_handle.segment_id = segments[-1]
        t.shared_memory_handle.offset = 4096 + 8
        t.shared_memory_handle.size = len(data)
        request.tensors.append(t)
    response, report["predict_shm_offset"] = outcome(client.Predict, request)
    outputs.update({f"shm_offset/{k}": v for k, v in tensors_out(response).items()})
    bad = agent.PredictRequest(name=model_name)
    bad.tensors.add().CopyFrom(request.tensors[0])
    bad.tensors[0].shared_memory_handle.segment_id = 2**31 - 7  # no such segment
    report["predict_bad_segment"] = outcome(client.Predict, bad)[1]
    short = agent.PredictRequest(name=model_name)
    short.tensors.add().CopyFrom(request.tensors[0])
    short.tensors[0].shared_memory_handle.size = 4
    report["predict_short_region"] = outcome(client.Predict, short)[1]
    for shmid in segments:
        libc.shmctl(shmid, IPC_RMID, None)

    # Tensor metadata is optional in a PredictRequest: the model's own is used.
    request = agent.PredictRequest(name=model_name)
    for meta in described.input_tensor_metadatas:
        request.tensors.add().byte_data = feed[meta.name.decode()].tobytes()
    response, report["predict_no_metadata"] = outcome(client.Predict, request)
    outputs.update({f"no_metadata/{k}": v for k, v in tensors_out(response).items()})
    wrong = agent.PredictRequest(name=model_name)
    wrong.tensors.add().CopyFrom(request.tensors[0])
    wrong.tensors[0].byte_data = b"\0" * 3
    report["predict_wrong_size"] = outcome(client.Predict, wrong)[1]
    report["predict_unknown_model"] = outcome(client.Predict, agent.PredictRequest(name="no-such-model"))[1]

    # Concurrent Predict calls (Edge Manager serialized them).
    first = next(iter(described.input_tensor_metadatas))
    one = agent.PredictRequest(name=model_name, tensors=[tensor(first.name.decode(), feed[first.name.decode()],
                                                                first.data_type)])
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: tensors_out(client.Predict(one)), range(16)))
    report["concurrent_identical"] = all(
        all(np.array_equal(r[k], results[0][k]) for k in r) for r in results)

    # CaptureData, then its status until it has reached the store.
    capture_id = str(uuid.uuid4())
    now = time.time()
    capture = agent.CaptureDataRequest(model_name=model_name, capture_id=capture_id)
    capture.inference_timestamp.seconds = int(now)
    capture.inference_timestamp.nanos = int((now % 1) * 1e9)
    for name, array in feed.items():
        capture.input_tensors.append(tensor(name, array, agent.FLOAT32))
    for name, array in tensors_out(client.Predict(one)).items():
        capture.output_tensors.append(tensor(name, np.ascontiguousarray(array), agent.FLOAT32))
    aux = capture.inputs.add(name="request", encoding=agent.JSON)
    aux.byte_data = b'{"camera": 7}'
    shm_aux = sysv_segment(b"label=cat")
    capture.outputs.add(name="label", encoding=agent.NONE).shared_memory_handle.segment_id = shm_aux
    report["capture"] = outcome(client.CaptureData, capture)[1]
    libc.shmctl(shm_aux, IPC_RMID, None)
    report["capture_again"] = outcome(client.CaptureData, capture)[1]
    future = agent.CaptureDataRequest(model_name=model_name, capture_id=str(uuid.uuid4()))
    future.inference_timestamp.seconds = int(now) + 3600
    report["capture_future"] = outcome(client.CaptureData, future)[1]
    report["capture_bad_id"] = outcome(client.CaptureData, agent.CaptureDataRequest(model_name=model_name,
                                                                                     capture_id="not an id!"))[1]
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.GetCaptureDataStatus(agent.GetCaptureDataStatusRequest(capture_id=capture_id)).status
        statuses.append(agent.CaptureDataStatus.Name(status))
        if status in (agent.SUCCESS, agent.FAILURE):
            break
        time.sleep(0.1)
    report["capture_id"] = capture_id
    report["capture_statuses"] = sorted(set(statuses), key=statuses.index)
    unknown, report["status_unknown"] = outcome(client.GetCaptureDataStatus,
                                                agent.GetCaptureDataStatusRequest(capture_id=str(uuid.uuid4())))
    if unknown is not None:
        report["status_unknown"]["status"] = agent.CaptureDataStatus.Name(unknown.status)

    report["unload"] = outcome(client.UnLoadModel, agent.UnLoadModelRequest(name=model_name))[1]
    report["unload_again"] = outcome(client.UnLoadModel, agent.UnLoadModelRequest(name=model_name))[1]
    report["models_after"] = [m.name for m in client.ListModels(agent.ListModelsRequest()).models]
    np.savez(out_path, **outputs)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
