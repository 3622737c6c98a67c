"""A stock KServe V2 client (tritonclient) sending camera frames to a package with pre- and post-processing:
raw uint8 pixels, then the same frames as PNG files (datatype BYTES); it prints the class names it reads.
Run as its own process (tritonclient's V2 protobuf definitions clash with the agent's in one process).

usage: triton_frames.py ADDRESS MODEL INPUT FRAMES.npy ENCODED.npy  -> JSON on stdout
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton


def ask(client: triton.InferenceServerClient, model: str, tensor: triton.InferInput) -> dict:
    result = client.infer(model, [tensor])
    datatypes = {o["name"]: o["datatype"] for o in result.get_response(as_json=True)["outputs"]}
    labels = [[v.decode("utf-8") for v in row] for row in result.as_numpy("labels").tolist()]
    return {"labels": labels, "datatypes": datatypes}


def main() -> None:
    address, model, input_name, frames_path, encoded_path = sys.argv[1:6]
    frames = np.load(frames_path)
    encoded = np.load(encoded_path, allow_pickle=True)
    client = triton.InferenceServerClient(address)
    raw = triton.InferInput(input_name, list(frames.shape), "UINT8")
    raw.set_data_from_numpy(frames)
    files = triton.InferInput(input_name, list(encoded.shape), "BYTES")
    files.set_data_from_numpy(encoded)
    print(json.dumps({"raw": ask(client, model, raw), "encoded": ask(client, model, files)}))


if __name__ == "__main__":
    main()
