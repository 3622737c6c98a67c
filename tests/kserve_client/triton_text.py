"""A stock KServe V2 client (tritonclient) sending and reading text (datatype BYTES): run as its own process.

It runs apart from the tests because tritonclient registers its own copy of the V2 protobuf
definitions, which would clash with the agent's in one process. Raw requests go through
``InferInput.set_data_from_numpy`` as any application would; inline requests (``bytes_contents``,
which tritonclient never sends itself) through tritonclient's own generated stub, and their answers
are read back with its ``InferResult.as_numpy``.

usage: triton_text.py ADDRESS MODEL INPUT OUTPUT TEXTS.json REPORT.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def _texts(result: Any, name: str) -> dict[str, Any]:
    array = result.as_numpy(name)
    return {"type": type(array.reshape(-1)[0]).__name__, "shape": list(array.shape),
            "values": [v.decode("utf-8") for v in array.reshape(-1).tolist()]}


def _raw(client: Any, model: str, input_name: str, output: str, elements: list[Any]) -> dict[str, Any]:
    tensor = triton.InferInput(input_name, [len(elements), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[e] for e in elements], dtype=object))
    try:
        result = client.infer(model, [tensor])
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    datatypes = {o["name"]: o["datatype"] for o in result.get_response(as_json=True)["outputs"]}
    return {"status": "OK", "labels": _texts(result, output), "datatypes": datatypes}


def _inline(stub: Any, model: str, input_name: str, output: str, elements: list[bytes]) -> dict[str, Any]:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=input_name, datatype="BYTES", shape=[len(elements), 1])
    tensor.contents.bytes_contents.extend(elements)
    try:
        response = stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        return {"status": exc.code().name, "message": exc.details()}
    return {"status": "OK", "labels": _texts(triton.InferResult(response), output),
            "raw_outputs": len(response.raw_output_contents)}


def main(address: str, model: str, input_name: str, output: str, texts_path: str, report_path: str) -> None:
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    client = triton.InferenceServerClient(url=address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    encoded = [t.encode("utf-8") for t in texts]
    bad = [encoded[0], b"caf\xe9 latin-1", encoded[-1]]  # element 1 is not UTF-8
    report = {
        "metadata": client.get_model_metadata(model, as_json=True),
        "raw": _raw(client, model, input_name, output, texts),  # str elements: tritonclient encodes them UTF-8
        "inline": _inline(stub, model, input_name, output, encoded),
        "raw_bad_utf8": _raw(client, model, input_name, output, bad),
        "inline_bad_utf8": _inline(stub, model, input_name, output, bad),
    }
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:7])
