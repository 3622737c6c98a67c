"""A stock KServe V2 client (tritonclient, unchanged) against the agent: run as its own process.

It runs apart from the tests because tritonclient registers its own copy of the V2 protobuf
definitions, which would clash with the agent's in one process.

usage: triton_roundtrip.py ADDRESS MODEL INPUTS.npz OUT.npz
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def main(address: str, model: str, inputs_path: str, out_path: str) -> None:
    client = triton.InferenceServerClient(url=address)
    report: dict = {"live": client.is_server_live(), "ready": client.is_server_ready()}
    report["server"] = client.get_server_metadata(as_json=True)
    report["index_before"] = client.get_model_repository_index(as_json=True)
    client.load_model(model)
    report["model_ready"] = client.is_model_ready(model)
    metadata = client.get_model_metadata(model, as_json=True)
    report["metadata"] = metadata
    feed = dict(np.load(inputs_path))
    inputs = []
    for name, array in feed.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
    report["parameters"] = {k: v for k, v in result.get_response(as_json=True).get("parameters", {}).items()}
    try:
        client.infer("no-such-model", inputs)
    except InferenceServerException as exc:
        report["unknown_model_error"] = {"status": exc.status(), "message": exc.message()}
    client.unload_model(model)
    report["model_ready_after_unload"] = client.is_model_ready(model)
    np.savez(out_path, **outputs)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:5])
