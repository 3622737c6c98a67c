"""Fuzzing the agent's gRPC surface: every method of every service it serves (edgemill.v1, KServe V2,
SageMaker Edge Manager), enumerated from the generated descriptors, gets random bytes, truncated and
mutated valid messages, hand-written hostile values and hypothesis-generated messages.

Every answer must be OK or a client-error status with a message (never INTERNAL, UNKNOWN, or a
hang), and afterwards the same agent process still serves correct predictions on all three APIs.
"""

from __future__ import annotations

import random
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor as D
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgemill.runtime as rt
from edgemill.agent import protos
from edgemill.package.store import sign_package

from ._agent import AgentProcess
from .test_agent import agent_config

V1 = protos.load("edgemill.v1.agent_pb2")
KS = protos.load("inference.grpc_predict_v2_pb2")
SM = protos.load("aws.sagemaker.edge.agent_pb2")
MODULES = (V1, KS, SM)

CALL_TIMEOUT_S = 30.0  # a hang shows as DEADLINE_EXCEEDED, which fails like INTERNAL does
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.PERMISSION_DENIED}
FEATURES = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)  # the test MLP's one input


def _methods() -> list[tuple[str, str, type]]:
    """(service, method, request class) for every RPC in the generated modules."""
    found = []
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((service.full_name, method.name, message_factory.GetMessageClass(method.input_type)))
    return found


METHODS = _methods()
SERVICES = sorted({s for s, _, _ in METHODS})


def _path(service: str, method: str) -> str:
    return f"/{service}/{method}"


# --- the agent -----------------------------------------------------------------------------------------


class Fuzzer:
    """A channel to the agent that sends bytes, checks each answer, and counts what it sent."""

    def __init__(self, agent: AgentProcess, signed: Path, unsigned: Path) -> None:
        self.agent = agent
        self.signed = signed
        self.unsigned = unsigned
        self.channel = grpc.insecure_channel(agent.address)
        self.sent: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()

    def call(self, service: str, method: str, payload: bytes | Any) -> tuple[grpc.StatusCode, str]:
        data = payload if isinstance(payload, bytes) else payload.SerializeToString()
        self.sent[service] += 1
        try:
            self.channel.unary_unary(_path(service, method))(data, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        else:
            code, details = grpc.StatusCode.OK, ""
        self.codes[code.name] += 1
        return code, details

    def check(self, service: str, method: str, payload: bytes | Any, what: str = "") -> tuple[grpc.StatusCode, str]:
        """Send; fail unless the answer is OK or a client error that says what was wrong."""
        code, details = self.call(service, method, payload)
        shown = payload if isinstance(payload, bytes) else type(payload).__name__
        assert code == grpc.StatusCode.OK or code in CLIENT_ERRORS, (
            f"{service}/{method} {what} answered {code.name}: {details!r}\nrequest: {shown!r:.300}\n"
            f"agent log tail:\n{self.agent.stderr()[-3000:]}")
        assert code == grpc.StatusCode.OK or details.strip(), f"{service}/{method} {what}: {code.name} without a message"
        assert self.agent.proc is not None and self.agent.proc.poll() is None, f"agent died after {service}/{method} {what}"
        if code == grpc.StatusCode.OK and "nload" in method:  # a fuzzed unload may hit the served model
            self.ensure_served()
        return code, details

    def ensure_served(self) -> None:
        code, _ = self.call("edgemill.v1.Agent", "DescribeModel", V1.DescribeModelRequest(name="mlp"))
        if code == grpc.StatusCode.NOT_FOUND:
            code, details = self.call("edgemill.v1.Agent", "LoadModel",
                                      V1.LoadModelRequest(package_path=str(self.signed), name="mlp"))
            assert code == grpc.StatusCode.OK, details

    def assert_still_serving(self) -> None:
        """The process is alive and each API gives the model's own answer for a real input. Models that
        fuzzed loads added are unloaded, so the next test starts from the one served model."""
        assert self.agent.proc is not None and self.agent.proc.poll() is None, self.agent.stderr()[-3000:]
        self.ensure_served()
        listed = V1.ListModelsResponse.FromString(self.channel.unary_unary(_path("edgemill.v1.Agent", "ListModels"))(
            b"", timeout=CALL_TIMEOUT_S))
        for model in listed.models:
            if model.name != "mlp":
                self.channel.unary_unary(_path("edgemill.v1.Agent", "UnloadModel"))(
                    V1.UnloadModelRequest(name=model.name).SerializeToString(), timeout=CALL_TIMEOUT_S)
        expected = rt.load(self.signed).run({"features": FEATURES})["logits"]
        raw = FEATURES.tobytes()
        v1 = V1.PredictResponse.FromString(self.channel.unary_unary(_path("edgemill.v1.Agent", "Predict"))(
            V1.PredictRequest(model="mlp", inputs=[V1.Tensor(name="features", dtype=V1.FLOAT32, shape=[1, 64], raw=raw)])
            .SerializeToString(), timeout=CALL_TIMEOUT_S))
        request = KS.ModelInferRequest(model_name="mlp", raw_input_contents=[raw])
        request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
        ks = KS.ModelInferResponse.FromString(self.channel.unary_unary(
            _path("inference.GRPCInferenceService", "ModelInfer"))(request.SerializeToString(), timeout=CALL_TIMEOUT_S))
        sm = SM.PredictResponse.FromString(self.channel.unary_unary(_path("AWS.SageMaker.Edge.Agent", "Predict"))(
            SM.PredictRequest(name="mlp", tensors=[SM.Tensor(byte_data=raw)]).SerializeToString(), timeout=CALL_TIMEOUT_S))
        for got in (v1.outputs[0].raw, ks.raw_output_contents[0], sm.tensors[0].byte_data):
            np.testing.assert_allclose(np.frombuffer(got, np.float32).reshape(expected.shape), expected,
                                       rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def fuzzer(packages: dict[str, Path], keypair: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    tmp = tmp_path_factory.mktemp("fuzz-agent")
    models = tmp / "models"
    models.mkdir()
    signed = models / "mlp.emp"
    shutil.copy(packages["mlp"], signed)
    sign_package(signed, keypair[0])
    unsigned = tmp / "unsigned.emp"
    shutil.copy(packages["mlp"], unsigned)
    # A small message limit so the oversized-message case is cheap to send.
    config = agent_config(tmp, keypair[1], models, listen={"max_message_mb": 4}, models={"memory_budget_mb": 4096})
    with AgentProcess(config) as agent:
        fuzz = Fuzzer(agent, signed, unsigned)
        fuzz.assert_still_serving()
        yield fuzz
        fuzz.channel.close()
        print(f"\ngRPC fuzz: requests per service {dict(fuzz.sent)}; status codes {dict(fuzz.codes)}")
        assert "internal error" not in agent.stderr(), agent.stderr()[-5000:]


# --- valid messages: the seeds that truncation and mutation start from ----------------------------------


def _valid(signed: Path) -> list[tuple[str, str, Any]]:
    """One request per method that the agent answers OK, in an order where each one makes sense."""
    raw = FEATURES.tobytes()
    v1_in = V1.Tensor(name="features", dtype=V1.FLOAT32, shape=[1, 64], raw=raw)
    v1_out = V1.Tensor(name="logits", dtype=V1.FLOAT32, shape=[1, 10], raw=bytes(40))
    infer = KS.ModelInferRequest(model_name="mlp", id="r1", raw_input_contents=[raw])
    infer.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    infer.outputs.add(name="logits")
    load = KS.RepositoryModelLoadRequest(model_name="mlp-ks")
    load.parameters["package_path"].string_param = str(signed)
    sm_in = SM.Tensor(tensor_metadata=SM.TensorMetadata(name=b"features", data_type=SM.FLOAT32, shape=[1, 64]),
                      byte_data=raw)
    sm_out = SM.Tensor(tensor_metadata=SM.TensorMetadata(name=b"logits", data_type=SM.FLOAT32, shape=[1, 10]),
                       byte_data=bytes(40))
    capture_v1, capture_sm = uuid.uuid4().hex, uuid.uuid4().hex
    v1, ks, sm = "edgemill.v1.Agent", "inference.GRPCInferenceService", "AWS.SageMaker.Edge.Agent"
    return [
        (v1, "LoadModel", V1.LoadModelRequest(package_path=str(signed), name="mlp-v1")),
        (v1, "ListModels", V1.ListModelsRequest()),
        (v1, "DescribeModel", V1.DescribeModelRequest(name="mlp")),
        (v1, "Predict", V1.PredictRequest(model="mlp", inputs=[v1_in], outputs=["logits"])),
        (v1, "CaptureData", V1.CaptureDataRequest(model="mlp", capture_id=capture_v1, inputs=[v1_in], outputs=[v1_out],
                                                  auxiliary={"meta.json": b"{}"})),
        (v1, "GetCaptureDataStatus", V1.GetCaptureDataStatusRequest(capture_id=capture_v1)),
        (v1, "UnloadModel", V1.UnloadModelRequest(name="mlp-v1")),
        (ks, "ServerLive", KS.ServerLiveRequest()),
        (ks, "ServerReady", KS.ServerReadyRequest()),
        (ks, "ModelReady", KS.ModelReadyRequest(name="mlp")),
        (ks, "ServerMetadata", KS.ServerMetadataRequest()),
        (ks, "ModelMetadata", KS.ModelMetadataRequest(name="mlp")),
        (ks, "ModelInfer", infer),
        (ks, "RepositoryIndex", KS.RepositoryIndexRequest()),
        (ks, "RepositoryModelLoad", load),
        (ks, "RepositoryModelUnload", KS.RepositoryModelUnloadRequest(model_name="mlp-ks")),
        (sm, "LoadModel", SM.LoadModelRequest(url=str(signed), name="mlp-sm")),
        (sm, "ListModels", SM.ListModelsRequest()),
        (sm, "DescribeModel", SM.DescribeModelRequest(name="mlp")),
        (sm, "Predict", SM.PredictRequest(name="mlp", tensors=[sm_in])),
        (sm, "CaptureData", SM.CaptureDataRequest(model_name="mlp", capture_id=capture_sm, input_tensors=[sm_in],
                                                  output_tensors=[sm_out],
                                                  inputs=[SM.AuxilaryData(name="frame", encoding=SM.NONE,
                                                                          byte_data=b"\x00\x01")])),
        (sm, "GetCaptureDataStatus", SM.GetCaptureDataStatusRequest(capture_id=capture_sm)),
        (sm, "UnLoadModel", SM.UnLoadModelRequest(name="mlp-sm")),
    ]


def test_every_served_method_is_enumerated_and_answers_its_valid_request(fuzzer: Fuzzer) -> None:
    """The fuzz covers the whole surface: 23 methods on 3 services, each one served (a valid request is
    answered OK), while a method or service the agent does not have is UNIMPLEMENTED."""
    assert SERVICES == ["AWS.SageMaker.Edge.Agent", "edgemill.v1.Agent", "inference.GRPCInferenceService"]
    assert len(METHODS) == 23
    valid = _valid(fuzzer.signed)
    assert sorted((s, m) for s, m, _ in valid) == sorted((s, m) for s, m, _ in METHODS)
    for service, method, message in valid:
        code, details = fuzzer.call(service, method, message)
        assert code == grpc.StatusCode.OK, f"{service}/{method}: {code.name} {details}"
    for path in ("edgemill.v1.Agent/NoSuchMethod", "inference.GRPCInferenceService/ModelStreamInfer",
                 "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "nope.Service/X"):
        service, _, method = path.partition("/")
        code, details = fuzzer.call(service, method, b"")
        assert code == grpc.StatusCode.UNIMPLEMENTED and details
    fuzzer.assert_still_serving()


# --- random bytes, truncations, mutations ------------------------------------------------------------------

RANDOM_PER_METHOD = 40


def _random_payloads(rng: random.Random) -> Iterator[bytes]:
    specials = [
        b"\xff" * 64,                                  # a varint that never ends
        b"\x0a\xff\xff\xff\xff\x0f",                   # a length-delimited field claiming 4 GiB
        b"\x12\x05abc",                                # a field shorter than its length
        bytes([0x83, 0x3e]) * 20000,                   # unknown group starts nested 20,000 deep
        b"\x0a\x03\xff\xfe\xfd",                       # field 1 as bytes that are not UTF-8
        b"\x00",                                       # field number 0
        b"\x0f",                                       # an end-group tag without a start
    ]
    yield from specials
    for i in range(RANDOM_PER_METHOD - len(specials)):
        size = rng.choice((rng.randrange(0, 8), rng.randrange(8, 128), rng.randrange(128, 4096)))
        yield rng.randbytes(size)


@pytest.mark.parametrize("service", SERVICES)
def test_random_bytes_get_a_client_error_not_internal(fuzzer: Fuzzer, service: str) -> None:
    rng = random.Random(f"random-{service}")
    methods = [(m, cls) for s, m, cls in METHODS if s == service]
    for method, cls in methods:
        for payload in _random_payloads(rng):
            code, details = fuzzer.check(service, method, payload, "random bytes")
            if _unparsable(cls, payload):  # says which message it expected
                assert code == grpc.StatusCode.INVALID_ARGUMENT and cls.DESCRIPTOR.full_name in details, details
    fuzzer.assert_still_serving()


def _unparsable(cls: type, payload: bytes) -> bool:
    try:
        cls.FromString(payload)
    except Exception:  # noqa: BLE001 - whatever protobuf raises, the agent must answer INVALID_ARGUMENT
        return True
    return False


def test_unparsable_bytes_are_invalid_argument_naming_the_message(fuzzer: Fuzzer) -> None:
    for service, method, cls in METHODS:
        code, details = fuzzer.call(service, method, b"\xff" * 64)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (service, method, code, details)
        assert cls.DESCRIPTOR.full_name in details and "Fix:" in details


def _mutations(seed: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    for _ in range(count):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(4)
            at = rng.randrange(len(data) + 1)
            if kind == 0 and data:                     # flip a byte
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif kind == 1:                            # insert bytes
                data[at:at] = rng.randbytes(rng.randint(1, 8))
            elif kind == 2:                            # delete a run
                del data[at:at + rng.randint(1, 8)]
            else:                                      # duplicate a run (repeats a field)
                data[at:at] = data[max(0, at - 16):at]
        yield bytes(data)


def test_truncated_and_mutated_valid_messages(fuzzer: Fuzzer) -> None:
    rng = random.Random("mutate")
    for service, method, message in _valid(fuzzer.signed):
        seed = message.SerializeToString()
        cuts = sorted(set(range(0, len(seed))) if len(seed) <= 48 else set(rng.sample(range(len(seed)), 48)))
        for cut in cuts:
            fuzzer.check(service, method, seed[:cut], f"truncated at {cut}/{len(seed)}")
        for payload in _mutations(seed, rng, 30):
            fuzzer.check(service, method, payload, "mutated")
    fuzzer.assert_still_serving()


# --- hostile values in well-formed messages -----------------------------------------------------------------

V1_SVC, KS_SVC, SM_SVC = "edgemill.v1.Agent", "inference.GRPCInferenceService", "AWS.SageMaker.Edge.Agent"
BAD, MISSING, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED
ANY_CLIENT = None  # the exact client-error code is the protocol's business; any of CLIENT_ERRORS will do


def _v1_tensor(**fields: Any) -> Any:
    base = {"name": "features", "dtype": V1.FLOAT32, "shape": [1, 64], "raw": FEATURES.tobytes()}
    return V1.Tensor(**{**base, **fields})


def _v1_predict(*tensors: Any, **fields: Any) -> Any:
    return V1.PredictRequest(model=fields.pop("model", "mlp"), inputs=list(tensors) or [_v1_tensor()], **fields)


def _ks_infer(inputs: list[dict[str, Any]], raw: list[bytes] | None = None, **fields: Any) -> Any:
    request = KS.ModelInferRequest(model_name=fields.pop("model_name", "mlp"), raw_input_contents=raw or [], **fields)
    for spec in inputs:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for field, values in spec.get("contents", {}).items():
            getattr(tensor.contents, field).extend(values)
    return request


def _ks_load(model_name: str, **params: Any) -> Any:
    request = KS.RepositoryModelLoadRequest(model_name=model_name)
    for key, (kind, value) in params.items():
        setattr(request.parameters[key], kind, value)
    return request


def _sm_tensor(name: bytes = b"features", data_type: int = SM.FLOAT32, shape: list[int] | None = None,
               data: bytes | None = None, shm: Any = None) -> Any:
    meta = SM.TensorMetadata(name=name, data_type=data_type, shape=[1, 64] if shape is None else shape)
    if shm is not None:
        return SM.Tensor(tensor_metadata=meta, shared_memory_handle=shm)
    return SM.Tensor(tensor_metadata=meta, byte_data=FEATURES.tobytes() if data is None else data)


def _ks_param(kind: str, value: Any) -> Any:
    parameter = KS.InferParameter()
    setattr(parameter, kind, value)
    return parameter


@lru_cache(maxsize=2)
def _hostile(signed: Path, unsigned: Path) -> list[tuple[str, str, str, Any, grpc.StatusCode | None]]:
    """(id, service, method, message, expected code or ANY_CLIENT)."""
    f32 = FEATURES.tobytes()
    long = "x" * 100_000
    nan = np.full((1, 64), np.nan, np.float32).tobytes()
    many_v1 = [_v1_tensor(name=f"in{i}", shape=[1], raw=bytes(4)) for i in range(10_000)]
    return [
        # edgemill.v1 Predict
        ("v1-huge-shape", V1_SVC, "Predict", _v1_predict(_v1_tensor(shape=[2**62, 2**62])), BAD),
        ("v1-negative-dims", V1_SVC, "Predict", _v1_predict(_v1_tensor(shape=[-1, 64])), BAD),
        ("v1-int64-min-dim", V1_SVC, "Predict", _v1_predict(_v1_tensor(shape=[-2**63, -1])), BAD),
        ("v1-10k-dims", V1_SVC, "Predict", _v1_predict(_v1_tensor(shape=[1] * 10_000, raw=bytes(4))), BAD),
        ("v1-33-dims", V1_SVC, "Predict", _v1_predict(_v1_tensor(shape=[1] * 33, raw=bytes(4))), BAD),
        ("v1-zero-size", V1_SVC, "Predict", _v1_predict(_v1_tensor(shape=[0, 64], raw=b"")), ANY_CLIENT),
        ("v1-dtype-mismatch", V1_SVC, "Predict", _v1_predict(_v1_tensor(dtype=V1.INT32)), BAD),
        ("v1-dtype-mismatch-f64", V1_SVC, "Predict", _v1_predict(_v1_tensor(dtype=V1.FLOAT64, raw=f32 * 2)), BAD),
        ("v1-bytes-short", V1_SVC, "Predict", _v1_predict(_v1_tensor(raw=f32[:-1])), BAD),
        ("v1-bytes-long", V1_SVC, "Predict", _v1_predict(_v1_tensor(raw=f32 + b"\0")), BAD),
        ("v1-unknown-dtype", V1_SVC, "Predict", _v1_predict(_v1_tensor(dtype=99)), BAD),
        ("v1-bfloat16", V1_SVC, "Predict", _v1_predict(_v1_tensor(dtype=V1.BFLOAT16, raw=bytes(128))), BAD),
        ("v1-unspecified-dtype", V1_SVC, "Predict", _v1_predict(_v1_tensor(dtype=V1.DATA_TYPE_UNSPECIFIED)), BAD),
        ("v1-nan", V1_SVC, "Predict", _v1_predict(_v1_tensor(raw=nan)), grpc.StatusCode.OK),
        ("v1-empty-name", V1_SVC, "Predict", _v1_predict(_v1_tensor(name="")), BAD),
        ("v1-long-name", V1_SVC, "Predict", _v1_predict(_v1_tensor(name=long)), BAD),
        ("v1-duplicate-input", V1_SVC, "Predict", _v1_predict(_v1_tensor(), _v1_tensor()), BAD),
        ("v1-10k-inputs", V1_SVC, "Predict", _v1_predict(*many_v1), BAD),
        ("v1-unknown-model", V1_SVC, "Predict", _v1_predict(model="no-such-model"), MISSING),
        ("v1-empty-model", V1_SVC, "Predict", _v1_predict(model=""), MISSING),
        ("v1-long-model", V1_SVC, "Predict", _v1_predict(model=long), MISSING),
        ("v1-unknown-output", V1_SVC, "Predict", _v1_predict(outputs=["nope", ""]), BAD),
        ("v1-bad-capture-id", V1_SVC, "Predict", _v1_predict(capture=True, capture_id="../../etc/passwd"), BAD),
        ("v1-long-capture-id", V1_SVC, "Predict", _v1_predict(capture=True, capture_id=long), BAD),
        ("v1-shm-dotdot", V1_SVC, "Predict",
         _v1_predict(V1.Tensor(name="features", dtype=V1.FLOAT32, shape=[1, 64],
                               shared_memory=V1.SharedMemoryHandle(name="..", size=256))), BAD),
        ("v1-shm-dot", V1_SVC, "Predict",
         _v1_predict(V1.Tensor(name="features", dtype=V1.FLOAT32, shape=[1, 64],
                               shared_memory=V1.SharedMemoryHandle(name="/.", size=256))), BAD),
        ("v1-shm-traversal", V1_SVC, "Predict",
         _v1_predict(V1.Tensor(name="features", dtype=V1.FLOAT32, shape=[1, 64],
                               shared_memory=V1.SharedMemoryHandle(name="../../etc/passwd", size=256))), BAD),
        ("v1-shm-missing-huge-offset", V1_SVC, "Predict",
         _v1_predict(V1.Tensor(name="features", dtype=V1.FLOAT32, shape=[1, 64],
                               shared_memory=V1.SharedMemoryHandle(name="fuzz-none", offset=2**64 - 1,
                                                                   size=2**64 - 1))), BAD),
        ("v1-output-shm-dotdot", V1_SVC, "Predict",
         _v1_predict(output_shared_memory={"logits": V1.SharedMemoryHandle(name="..", size=40)}), BAD),
        ("v1-output-shm-missing", V1_SVC, "Predict",
         _v1_predict(output_shared_memory={"logits": V1.SharedMemoryHandle(name="fuzz-none", size=40)}), BAD),
        # edgemill.v1 model management and capture
        ("v1-load-dev-zero", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path="/dev/zero"), BAD),
        ("v1-load-dev-null", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path="/dev/null"), BAD),
        ("v1-load-empty", V1_SVC, "LoadModel", V1.LoadModelRequest(), BAD),
        ("v1-load-long-path", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path=long), BAD),
        ("v1-load-nul", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path="a\0b"), BAD),
        ("v1-load-not-dir", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path=f"{signed}/x"), BAD),
        ("v1-load-root", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path="/"), ANY_CLIENT),
        ("v1-load-text-file", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path="/etc/hostname"), ANY_CLIENT),
        ("v1-load-unsigned", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path=str(unsigned), name="u"), DENIED),
        ("v1-load-bad-name", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path=str(signed), name="../x"), BAD),
        ("v1-load-long-name", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path=str(signed), name=long), BAD),
        ("v1-load-loaded-name", V1_SVC, "LoadModel", V1.LoadModelRequest(package_path=str(signed), name="mlp"),
         grpc.StatusCode.ALREADY_EXISTS),
        ("v1-unload-unknown", V1_SVC, "UnloadModel", V1.UnloadModelRequest(name=long), MISSING),
        ("v1-describe-unknown", V1_SVC, "DescribeModel", V1.DescribeModelRequest(name="\u202e\0"), MISSING),
        ("v1-capture-bad-model", V1_SVC, "CaptureData", V1.CaptureDataRequest(model="../../x"), BAD),
        ("v1-capture-bad-id", V1_SVC, "CaptureData", V1.CaptureDataRequest(model="mlp", capture_id="a/b"), BAD),
        ("v1-capture-10k-inputs", V1_SVC, "CaptureData",
         V1.CaptureDataRequest(model="mlp", inputs=many_v1[:10_000]), grpc.StatusCode.OK),
        ("v1-capture-odd-aux", V1_SVC, "CaptureData",
         V1.CaptureDataRequest(model="mlp", auxiliary={"../../etc": b"x", "": b"", "k" * 5000: b"y"}), grpc.StatusCode.OK),
        ("v1-capture-bad-tensor", V1_SVC, "CaptureData",
         V1.CaptureDataRequest(model="mlp", inputs=[_v1_tensor(shape=[-5])]), BAD),
        ("v1-status-bad-id", V1_SVC, "GetCaptureDataStatus", V1.GetCaptureDataStatusRequest(capture_id="../.."), BAD),
        ("v1-status-long-id", V1_SVC, "GetCaptureDataStatus", V1.GetCaptureDataStatusRequest(capture_id=long), BAD),
        # KServe V2
        ("ks-negative-dims", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [-1, -1], "contents": {"fp32_contents": [1.0]}}]), BAD),
        ("ks-zero-negative", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [0, -1]}]), BAD),
        ("ks-shape-overflow", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [2**32, 2**32]}]), BAD),
        ("ks-huge-shape-raw", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [2**62, 2**62]}], raw=[f32]), BAD),
        ("ks-10k-dims", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1] * 10_000, "contents": {"fp32_contents": [1]}}]), BAD),
        ("ks-int8-overflow", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "INT8", "shape": [1], "contents": {"int_contents": [300]}}]), BAD),
        ("ks-uint8-overflow", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "UINT8", "shape": [1], "contents": {"uint_contents": [2**32 - 1]}}]), BAD),
        ("ks-int16-overflow", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "INT16", "shape": [2], "contents": {"int_contents": [1, -2**31]}}]), BAD),
        ("ks-dtype-mismatch", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "INT32", "shape": [1, 64]}], raw=[f32]), BAD),
        ("ks-contents-count", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64], "contents": {"fp32_contents": [1.0] * 63}}]), BAD),
        ("ks-raw-count", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64]}], raw=[f32, f32]), BAD),
        ("ks-raw-size", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64]}], raw=[f32[:100]]), BAD),
        ("ks-nan", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64],
                     "contents": {"fp32_contents": [float("nan")] * 64}}]), grpc.StatusCode.OK),
        ("ks-bytes-datatype", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "BYTES", "shape": [1], "contents": {"bytes_contents": [b"x"]}}]), BAD),
        ("ks-fp16-typed", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP16", "shape": [1], "contents": {"fp32_contents": [1.0]}}]), BAD),
        ("ks-empty-datatype", KS_SVC, "ModelInfer", _ks_infer([{"name": "", "datatype": "", "shape": []}]), BAD),
        ("ks-long-datatype", KS_SVC, "ModelInfer", _ks_infer([{"name": "features", "datatype": long, "shape": [1]}]), BAD),
        ("ks-10k-inputs", KS_SVC, "ModelInfer",
         _ks_infer([{"name": f"in{i}", "datatype": "FP32", "shape": [1], "contents": {"fp32_contents": [0.0]}}
                    for i in range(10_000)]), BAD),
        ("ks-unknown-model", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64]}], raw=[f32], model_name=long), MISSING),
        ("ks-wrong-version", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64]}], raw=[f32], model_version="9" * 500), MISSING),
        ("ks-unknown-output", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64]}], raw=[f32],
                   outputs=[KS.ModelInferRequest.InferRequestedOutputTensor(name="nope")]), BAD),
        ("ks-odd-parameters", KS_SVC, "ModelInfer",
         _ks_infer([{"name": "features", "datatype": "FP32", "shape": [1, 64]}], raw=[f32], id=long,
                   parameters={"": _ks_param("double_param", float("nan")), long: _ks_param("string_param", long),
                               "priority": _ks_param("int64_param", -2**63)}), grpc.StatusCode.OK),
        ("ks-ready-unknown", KS_SVC, "ModelReady", KS.ModelReadyRequest(name=long, version="\0"), grpc.StatusCode.OK),
        ("ks-metadata-unknown", KS_SVC, "ModelMetadata", KS.ModelMetadataRequest(name=long), MISSING),
        ("ks-metadata-version", KS_SVC, "ModelMetadata", KS.ModelMetadataRequest(name="mlp", version="nope"), MISSING),
        ("ks-index-odd", KS_SVC, "RepositoryIndex", KS.RepositoryIndexRequest(repository_name=long, ready=True),
         grpc.StatusCode.OK),
        ("ks-load-unknown", KS_SVC, "RepositoryModelLoad", _ks_load(long), MISSING),
        ("ks-load-dev-zero", KS_SVC, "RepositoryModelLoad",
         _ks_load("z", package_path=("string_param", "/dev/zero")), BAD),
        ("ks-load-long-path", KS_SVC, "RepositoryModelLoad", _ks_load("z", package_path=("string_param", long)), BAD),
        ("ks-load-param-type", KS_SVC, "RepositoryModelLoad", _ks_load("nope", package_path=("bool_param", True)), MISSING),
        ("ks-load-unsigned", KS_SVC, "RepositoryModelLoad",
         _ks_load("u", package_path=("string_param", str(unsigned))), DENIED),
        ("ks-load-bad-name", KS_SVC, "RepositoryModelLoad",
         _ks_load("../../x", package_path=("string_param", str(signed))), BAD),
        ("ks-unload-unknown", KS_SVC, "RepositoryModelUnload", KS.RepositoryModelUnloadRequest(model_name=""), MISSING),
        # SageMaker Edge Manager
        ("sm-unknown-model", SM_SVC, "Predict", SM.PredictRequest(name=long, tensors=[_sm_tensor()]), MISSING),
        ("sm-no-metadata-extra", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[SM.Tensor()] * 3), BAD),
        ("sm-not-utf8-name", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(name=b"\xff\xfe")]), BAD),
        ("sm-unknown-dtype", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(data_type=99)]), BAD),
        ("sm-dtype-mismatch", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(data_type=SM.INT32)]), BAD),
        ("sm-negative-dims", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(shape=[-1, 64])]), BAD),
        ("sm-huge-shape", SM_SVC, "Predict",
         SM.PredictRequest(name="mlp", tensors=[_sm_tensor(shape=[2**31 - 1] * 4)]), BAD),
        ("sm-10k-dims", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(shape=[1] * 10_000,
                                                                                             data=bytes(4))]), BAD),
        ("sm-size-mismatch", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(data=b"\0" * 3)]), BAD),
        ("sm-nan", SM_SVC, "Predict", SM.PredictRequest(name="mlp", tensors=[_sm_tensor(data=nan)]), grpc.StatusCode.OK),
        ("sm-shm-missing", SM_SVC, "Predict",
         SM.PredictRequest(name="mlp", tensors=[_sm_tensor(shm=SM.SharedMemoryHandle(segment_id=2**63, offset=2**63))]),
         BAD),
        ("sm-shm-max-int", SM_SVC, "Predict",
         SM.PredictRequest(name="mlp", tensors=[_sm_tensor(shm=SM.SharedMemoryHandle(segment_id=2**31 - 1, size=1))]),
         BAD),
        ("sm-10k-tensors", SM_SVC, "Predict",
         SM.PredictRequest(name="mlp", tensors=[_sm_tensor(name=f"t{i}".encode(), shape=[1], data=bytes(4))
                                                for i in range(10_000)]), BAD),
        ("sm-load-dev-zero", SM_SVC, "LoadModel", SM.LoadModelRequest(url="/dev/zero", name="z"), BAD),
        ("sm-load-missing", SM_SVC, "LoadModel", SM.LoadModelRequest(url=long, name="z"), MISSING),
        ("sm-load-unsigned", SM_SVC, "LoadModel", SM.LoadModelRequest(url=str(unsigned), name="u"),
         grpc.StatusCode.FAILED_PRECONDITION),
        ("sm-load-bad-name", SM_SVC, "LoadModel", SM.LoadModelRequest(url=str(signed), name="a b"), BAD),
        ("sm-unload-unknown", SM_SVC, "UnLoadModel", SM.UnLoadModelRequest(name=long), MISSING),
        ("sm-describe-unknown", SM_SVC, "DescribeModel", SM.DescribeModelRequest(name=""), MISSING),
        ("sm-capture-no-id", SM_SVC, "CaptureData", SM.CaptureDataRequest(model_name="mlp"), BAD),
        ("sm-capture-bad-id", SM_SVC, "CaptureData", SM.CaptureDataRequest(model_name="mlp", capture_id=long), BAD),
        ("sm-capture-future", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="mlp", capture_id=uuid.uuid4().hex,
                               inference_timestamp=SM.Timestamp(seconds=2**63 - 1, nanos=2**31 - 1)),
         grpc.StatusCode.OUT_OF_RANGE),
        ("sm-capture-ancient", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="mlp", capture_id=uuid.uuid4().hex,
                               inference_timestamp=SM.Timestamp(seconds=-2**63, nanos=-2**31)), grpc.StatusCode.OK),
        ("sm-capture-bad-model", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="../x", capture_id=uuid.uuid4().hex), BAD),
        ("sm-capture-unknown-model-tensors", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="nope", capture_id=uuid.uuid4().hex, input_tensors=[SM.Tensor()]), MISSING),
        ("sm-capture-dup-aux", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="mlp", capture_id=uuid.uuid4().hex,
                               inputs=[SM.AuxilaryData(name="a", byte_data=b"1")] * 2), BAD),
        ("sm-capture-aux-shm", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="mlp", capture_id=uuid.uuid4().hex,
                               inputs=[SM.AuxilaryData(name="a", encoding=77,
                                                       shared_memory_handle=SM.SharedMemoryHandle(segment_id=2**40))]),
         BAD),
        ("sm-capture-10k-aux", SM_SVC, "CaptureData",
         SM.CaptureDataRequest(model_name="mlp", capture_id=uuid.uuid4().hex,
                               outputs=[SM.AuxilaryData(name=f"a{i}", byte_data=b"") for i in range(10_000)]),
         grpc.StatusCode.OK),
        ("sm-status-bad-id", SM_SVC, "GetCaptureDataStatus", SM.GetCaptureDataStatusRequest(capture_id="../.."), BAD),
        ("sm-status-unknown", SM_SVC, "GetCaptureDataStatus", SM.GetCaptureDataStatusRequest(capture_id="nope"),
         grpc.StatusCode.OK),  # answered with the enum's NOT_FOUND value, not an error
    ]


HOSTILE_IDS = [case[0] for case in _hostile(Path("p"), Path("u"))]


@pytest.mark.parametrize("case", HOSTILE_IDS)
def test_hostile_values_get_the_right_client_error(fuzzer: Fuzzer, case: str) -> None:
    _, service, method, message, expected = next(c for c in _hostile(fuzzer.signed, fuzzer.unsigned) if c[0] == case)
    code, details = fuzzer.check(service, method, message, case)
    assert expected is None or code == expected, f"{case}: {code.name}, expected {expected.name}: {details}"
    assert code == grpc.StatusCode.OK or "Fix:" in details, details  # says how to correct it, even for huge values
    assert len(details.encode()) <= 2048


def test_an_oversized_message_is_resource_exhausted(fuzzer: Fuzzer) -> None:
    big = _v1_predict(_v1_tensor(raw=bytes(5 * 1024 * 1024)))  # the agent's limit here is 4 MB
    code, details = fuzzer.call(V1_SVC, "Predict", big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details
    fuzzer.assert_still_serving()


# --- hypothesis: messages generated from the descriptors ------------------------------------------------------

_NAMES = ["mlp", "features", "logits", "", "FP32", "INT8", "UINT64", "BYTES", "package_path", "../../etc/passwd",
          "/dev/zero", "..", "\x00", "x" * 300]
_INT_RANGES = {
    D.FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), D.FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    D.FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), D.FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    D.FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), D.FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    D.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), D.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    D.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), D.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: D.FieldDescriptor, signed: Path) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == D.FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(_NAMES + [str(signed)]), st.text(max_size=40))
    if kind == D.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from([FEATURES.tobytes(), b"features", bytes(40), b"\xff" * 7]),
                         st.binary(max_size=300))
    if kind == D.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (D.FieldDescriptor.TYPE_DOUBLE, D.FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == D.FieldDescriptor.TYPE_FLOAT else 64)
    if kind == D.FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 200))
    low, high = _INT_RANGES[kind]
    return st.one_of(st.sampled_from([0, 1, 10, 64, max(low, -1)]), st.integers(low, high))


def _repeated(field: D.FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6.32; `label` is deprecated there
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _message_values(descriptor: D.Descriptor, signed: Path, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Field name -> value for a subset of ``descriptor``'s fields; nested messages to ``depth``."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            value_strategy = (_message_values(value.message_type, signed, depth - 1) if value.message_type
                              else _scalar(value, signed))
            if value.message_type is not None and depth <= 0:
                continue
            fields[field.name] = st.dictionaries(_scalar(key, signed), value_strategy, max_size=3)
            continue
        if field.message_type is not None:
            if depth <= 0:
                continue
            one = _message_values(field.message_type, signed, depth - 1)
        else:
            one = _scalar(field, signed)
        fields[field.name] = st.lists(one, max_size=4) if _repeated(field) else one
    return st.fixed_dictionaries({}, optional=fields)


def _build(descriptor: D.Descriptor, values: dict[str, Any]) -> Any:
    message = message_factory.GetMessageClass(descriptor)()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name) if _repeated(field) or field.message_type else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    target[key].CopyFrom(_build(value_field.message_type, item))
                else:
                    target[key] = item
        elif _repeated(field):
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(_build(field.message_type, item))
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(_build(field.message_type, value))
        else:
            setattr(message, name, value)
    return message


HYPOTHESIS_PER_METHOD = 40


@pytest.mark.parametrize("service", SERVICES)
def test_hypothesis_generated_messages_never_get_internal(fuzzer: Fuzzer, service: str) -> None:
    for _, method, cls in [m for m in METHODS if m[0] == service]:
        descriptor = cls.DESCRIPTOR

        @given(values=_message_values(descriptor, fuzzer.signed, depth=3))
        @settings(max_examples=HYPOTHESIS_PER_METHOD, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(values: dict[str, Any]) -> None:
            fuzzer.check(service, method, _build(descriptor, values), f"generated {values!r:.200}")

        run()
    fuzzer.assert_still_serving()


# --- garbage beside real traffic ---------------------------------------------------------------------------


def test_garbage_from_many_clients_does_not_disturb_valid_predictions(fuzzer: Fuzzer) -> None:
    """Four threads send random bytes and hostile messages while four others predict: every prediction is
    right and every bad request gets a client error."""
    failures: list[str] = []
    expected = rt.load(fuzzer.signed).run({"features": FEATURES})["logits"]
    hostile = [(service, method, message) for case, service, method, message, _ in
               _hostile(fuzzer.signed, fuzzer.unsigned) if "10k" not in case and "Load" not in method]

    def noisy(index: int) -> None:
        rng = random.Random(index)
        for i in range(60):
            if i % 2:
                service, method, _ = rng.choice(METHODS)
                payload: Any = rng.randbytes(rng.randrange(0, 512))
            else:
                service, method, payload = rng.choice(hostile)
            try:
                fuzzer.check(service, method, payload, "concurrent")
            except AssertionError as exc:
                failures.append(str(exc)[:500])

    def predicting() -> None:
        call = fuzzer.channel.unary_unary(_path(V1_SVC, "Predict"))
        request = _v1_predict().SerializeToString()
        for _ in range(40):
            try:
                got = V1.PredictResponse.FromString(call(request, timeout=CALL_TIMEOUT_S)).outputs[0].raw
                np.testing.assert_allclose(np.frombuffer(got, np.float32).reshape(expected.shape), expected,
                                           rtol=1e-6, atol=1e-6)
            except (grpc.RpcError, AssertionError) as exc:
                failures.append(f"predict: {exc}"[:500])

    threads = [threading.Thread(target=noisy, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=predicting) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not failures, failures[:5]
    fuzzer.assert_still_serving()
