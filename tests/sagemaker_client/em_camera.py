"""An Edge Manager camera application, as its example client was written: load the model, read the
input tensor's metadata from ListModels, send the raw bytes of each camera frame with that metadata.

    python em_camera.py STUBS_DIR SOCKET PACKAGE MODEL_NAME FRAMES.npy OUT.npz  -> JSON report on stdout
"""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np

stubs, socket_path, package, model_name, frames_path, out_path = sys.argv[1:7]
sys.path.insert(0, stubs)
import agent_pb2 as agent  # noqa: E402  (generated at test time, as an application would)
import agent_pb2_grpc as agent_grpc  # noqa: E402

NUMPY_BY_TYPE = {agent.UINT8: np.uint8, agent.INT16: np.int16, agent.INT32: np.int32, agent.INT64: np.int64,
                 agent.FLOAT16: np.float16, agent.FLOAT32: np.float32, agent.FLOAT64: np.float64}


def main() -> None:
    frames = np.load(frames_path)  # camera frames, HxWx3 uint8, as a capture library hands them over
    client = agent_grpc.AgentStub(grpc.insecure_channel(f"unix://{socket_path}", options=(("grpc.enable_http_proxy", 0),)))
    client.LoadModel(agent.LoadModelRequest(url=package, name=model_name))
    listed = next(m for m in client.ListModels(agent.ListModelsRequest()).models if m.name == model_name)
    meta = listed.input_tensor_metadatas[0]
    report = {"input": {"name": meta.name.decode(), "data_type": agent.DataType.Name(meta.data_type),
                        "shape": list(meta.shape)}, "outputs": []}
    results: dict[str, list[np.ndarray]] = {}
    for frame in frames:
        request = agent.PredictRequest(name=model_name)
        tensor = request.tensors.add()
        tensor.tensor_metadata.CopyFrom(meta)
        tensor.byte_data = frame.tobytes()  # the raw camera bytes: no resize, no normalization, no transpose
        response = client.Predict(request)
        for t in response.tensors:
            name = t.tensor_metadata.name.decode()
            results.setdefault(name, []).append(np.frombuffer(t.byte_data, NUMPY_BY_TYPE[t.tensor_metadata.data_type])
                                                .reshape(list(t.tensor_metadata.shape)))
    report["outputs"] = sorted(results)
    np.savez(out_path, **{k: np.concatenate(v) for k, v in results.items()})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
