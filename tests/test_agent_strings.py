"""Text (str) tensors end to end: a scikit-learn text classifier with string classes, compiled, served by a
real agent, and called over KServe V2 (tritonclient), edgemill.v1 (our client), the Edge Manager API and
the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import grpc
import numpy as np
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.agent import protos
from edgemill.agent.capture.text import recordable
from edgemill.agent.models import health_check
from edgemill.agent.v1_types import pb as v1
from edgemill.agent.wire_text import pack_lengths, unpack_lengths
from edgemill.captures.record import CaptureRecord
from edgemill.client import AgentClient, AgentError, SharedTensor
from edgemill.errors import InputMismatchError, ResourceExhaustedError
from edgemill.package.store import sign_package

from ._agent import AgentProcess, wait_for
from .conftest import run_cli
from .test_agent import agent_config

TRITON_SCRIPT = Path(__file__).parent / "kserve_client" / "triton_text.py"
MODEL = "texts"
TEXT, LABEL, PROBABILITIES = "text", "label", "probabilities"  # skl2onnx's names for a classifier's outputs
TRAIN = [("free money win a prize now", "spam"), ("win a free prize today", "spam"),
         ("cheap pills free offer", "spam"), ("meeting at noon with the team", "ham"),
         ("see you at lunch tomorrow", "ham"), ("project notes for the team", "ham"),
         ("un bon café au lait", "café ☕"), ("un café crème bien chaud", "café ☕"),
         ("le café est bon", "café ☕")]
# Non-ASCII in and (the third class) out; the last query is text the model never saw.
QUERIES = ["win free money now", "team lunch at noon", "un bon café", "ÄÖÜ ß 日本語 🙂"]


@pytest.fixture(scope="module")
def package(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TfidfVectorizer + LogisticRegression on str classes, converted with skl2onnx (input "text" [N, 1] str,
    label str [N]), compiled and signed."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression(C=10.0))])
    pipeline.fit([t for t, _ in TRAIN], [c for _, c in TRAIN])
    # locale "C": onnxruntime's StringNormalizer otherwise wants en_US.UTF-8, which many machines lack
    model = convert_sklearn(pipeline, initial_types=[(TEXT, StringTensorType([None, 1]))],
                            options={LogisticRegression: {"zipmap": False}, TfidfVectorizer: {"locale": "C"}},
                            target_opset={"": 17, "ai.onnx.ml": 3})
    out = tmp_path_factory.mktemp("text-model")
    onnx.save(model, str(out / "texts.onnx"))
    path = Path(edgemill.compile(out / "texts.onnx", output=out / "texts.emp", measure=False).path)
    sign_package(path, keypair[0])
    return path


@pytest.fixture(scope="module")
def local(package: Path, keypair: tuple[Path, Path]) -> dict[str, np.ndarray]:
    """What the runtime itself answers for QUERIES: the reference every API must reproduce exactly."""
    model = rt.load(package, trusted_keys=[keypair[1]])
    assert {s.name: s.dtype for s in model.inputs} == {TEXT: "str"}
    result = model.run({TEXT: _column(QUERIES)})
    assert result[LABEL].dtype == object and "café ☕" in result[LABEL].tolist()  # a non-ASCII label comes back
    return result


@pytest.fixture(scope="module")
def agent(package: Path, keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("text-agent")
    # Every call of the text model is also sampled: sampling must store text, never fail a call.
    config = agent_config(tmp, keypair[1], models={"standalone": False}, capture={"sample_rates": {MODEL: 1.0}})
    with AgentProcess(config) as running:
        with AgentClient(running.address, timeout=30) as client:
            client.load_model(str(package), name=MODEL)
        yield running


def _column(texts: list[Any]) -> np.ndarray:
    """[N, 1] object array, the converted pipeline's input shape."""
    array = np.empty((len(texts), 1), dtype=object)
    array[:, 0] = texts
    return array


@pytest.fixture
def channel(agent: AgentProcess) -> Any:
    """A plain channel, for requests our client would never build."""
    with grpc.insecure_channel(agent.address) as opened:
        yield opened


def _refusal(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value


# --- KServe V2 -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                    reason="tritonclient[grpc] is not installed (pip install -e '.[dev]')")
def test_tritonclient_sends_and_reads_bytes_inline_and_raw(agent: AgentProcess, local: dict[str, np.ndarray],
                                                          tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(QUERIES, ensure_ascii=False), encoding="utf-8")
    report_path = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(TRITON_SCRIPT), agent.address, MODEL, TEXT, LABEL, str(texts),
                           str(report_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + agent.stderr()
    report = json.loads(report_path.read_text(encoding="utf-8"))
    expected = local[LABEL].tolist()

    metadata = report["metadata"]
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [(TEXT, "BYTES")]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {LABEL: "BYTES", PROBABILITIES: "FP32"}
    for how in ("raw", "inline"):
        answer = report[how]
        assert answer["status"] == "OK", answer
        assert answer["labels"] == {"type": "bytes", "shape": [len(QUERIES)], "values": expected}, how
    assert report["raw"]["datatypes"] == {LABEL: "BYTES", PROBABILITIES: "FP32"}
    assert report["inline"]["raw_outputs"] == 2  # answers are raw, as every other output's

    for how in ("raw_bad_utf8", "inline_bad_utf8"):
        refused = report[how]
        assert "INVALID_ARGUMENT" in refused["status"], refused
        assert "'text'" in refused["message"] and "element 1" in refused["message"], refused
        assert "UTF-8" in refused["message"], refused


def test_truncated_raw_bytes_name_the_element() -> None:
    elements = ["é".encode(), b"", "日本".encode()]
    assert unpack_lengths("t", pack_lengths(elements)) == elements
    assert pack_lengths([b"ab"]) == b"\x02\x00\x00\x00ab"  # 4-byte little-endian length, then the bytes
    with pytest.raises(InputMismatchError, match="element 2 says 6 bytes but 5 remain"):
        unpack_lengths("t", pack_lengths(elements)[:-1])
    with pytest.raises(InputMismatchError, match="inside the length of element 1"):
        unpack_lengths("t", pack_lengths(elements[:1]) + b"\x01\x00")


# --- edgemill.v1 -----------------------------------------------------------------------------------------------


def test_our_client_round_trips_text(agent: AgentProcess, local: dict[str, np.ndarray]) -> None:
    with AgentClient(agent.address, timeout=30) as client:
        described = client.describe_model(MODEL)
        assert [(s["name"], s["dtype"]) for s in described["inputs"]] == [(TEXT, "str")]
        assert {s["name"]: s["dtype"] for s in described["outputs"]} == {LABEL: "str", PROBABILITIES: "float32"}
        for feed in (_column(QUERIES), np.array([[q] for q in QUERIES])):  # object arrays and unicode arrays
            result = client.predict(MODEL, {TEXT: feed})
            labels = result.outputs[LABEL]
            assert labels.dtype == object and labels.shape == (len(QUERIES),)
            assert all(type(v) is str for v in labels.tolist())
            assert labels.tolist() == local[LABEL].tolist()
            np.testing.assert_allclose(result.outputs[PROBABILITIES], local[PROBABILITIES], rtol=1e-6, atol=1e-6)


def test_text_that_is_not_utf8_is_refused_naming_the_element(agent: AgentProcess) -> None:
    with AgentClient(agent.address, timeout=30) as client, pytest.raises(AgentError) as err:
        client.predict(MODEL, {TEXT: _column(["fine", "also fine", b"caf\xe9"])})  # bytes go as they are
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'text' element 2 (index [2, 0]) is not valid UTF-8" in err.value.message


def test_text_in_shared_memory_is_refused_with_the_fix(channel: grpc.Channel) -> None:
    with pytest.raises(TypeError, match="inline"):
        SharedTensor((2, 1), dtype=object)
    stub = protos.load("edgemill.v1.agent_pb2_grpc").AgentStub(channel)
    handle = v1.SharedMemoryHandle(name="/edgemill-test-no-such-segment", offset=0, size=64)
    refused = _refusal(stub.Predict, v1.PredictRequest(model=MODEL, inputs=[
        v1.Tensor(name=TEXT, dtype=v1.STRING, shape=[1, 1], shared_memory=handle)]))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'text' is STRING, which shared memory cannot carry" in refused.details()
    assert "send this tensor inline" in refused.details()

    text_input = v1.Tensor(name=TEXT, dtype=v1.STRING, shape=[1, 1], strings=v1.Strings(values=[b"free money"]))
    refused = _refusal(stub.Predict, v1.PredictRequest(model=MODEL, inputs=[text_input],
                                                       output_shared_memory={LABEL: handle}))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"output '{LABEL}' is text" in refused.details() and "out of output_shared_memory" in refused.details()


def test_captures_store_text(agent: AgentProcess, local: dict[str, np.ndarray]) -> None:
    with AgentClient(agent.address, timeout=30) as client:
        client.predict(MODEL, {TEXT: _column(QUERIES[:1])})  # sampled (sample_rates: 1.0)
        capture_id = client.predict(MODEL, {TEXT: _column(QUERIES)}, capture=True).capture_id
        uploaded = wait_for(lambda: client.capture_status(capture_id).state == "uploaded", timeout=30)
        status = client.capture_status(capture_id)
    assert uploaded, status
    model_folder = Path(unquote(urlparse(status.object_key).path)).parents[3]  # .../MODEL/YYYY/MM/DD/ID.emc

    def records() -> list[CaptureRecord]:
        return [CaptureRecord.decode(p.read_bytes()) for p in model_folder.rglob("*.emc")]

    assert wait_for(lambda: any(r.sampled for r in records()), timeout=30), agent.stderr()
    explicit = next(r for r in records() if r.capture_id == capture_id)
    for record in records():
        assert record.inputs[TEXT].dtype.kind == "U" and record.outputs[LABEL].dtype.kind == "U"
    assert explicit.inputs[TEXT].tolist() == [[q] for q in QUERIES]
    assert explicit.outputs[LABEL].tolist() == local[LABEL].tolist()
    metrics = urllib.request.urlopen(agent.metrics_url, timeout=10).read().decode()
    assert 'edgemill_agent_capture{stat="skipped_unrecordable"} 0.0' in metrics


def test_text_too_wide_for_the_capture_queue_is_refused() -> None:
    batch = np.empty(1000, dtype=object)
    batch[:] = ["short"] * 999 + ["x" * 10_000]  # fixed width: 1000 x 10 000 characters x 4 bytes
    assert recordable("input", TEXT, batch[:2], limit_bytes=1024).dtype == np.dtype("<U5")
    with pytest.raises(ResourceExhaustedError, match="the longest 10000 characters"):
        recordable("input", TEXT, batch, limit_bytes=2**20)


def test_a_text_model_passes_the_deployment_health_check(package: Path, keypair: tuple[Path, Path]) -> None:
    health_check(rt.load(package, trusted_keys=[keypair[1]]))  # what a fleet deployment runs before the swap


# --- Edge Manager ----------------------------------------------------------------------------------------------


def test_edge_manager_predict_names_the_text_tensor(agent: AgentProcess, channel: grpc.Channel,
                                                    package: Path) -> None:
    sm = protos.load("aws.sagemaker.edge.agent_pb2")
    stub = protos.load("aws.sagemaker.edge.agent_pb2_grpc").AgentStub(channel)
    loaded = stub.LoadModel(sm.LoadModelRequest(url=str(package), name="texts-em"), timeout=60)
    assert loaded.model.name == "texts-em" and not loaded.model.input_tensor_metadatas  # "may be empty"
    refused = _refusal(stub.Predict, sm.PredictRequest(name="texts-em", tensors=[sm.Tensor(
        tensor_metadata=sm.TensorMetadata(name=TEXT.encode(), data_type=sm.UINT8, shape=[4]), byte_data=b"spam")]))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text (str) tensor 'text'" in refused.details() and "edgemill.v1" in refused.details()
    assert "Traceback" not in agent.stderr()  # refused, not crashed


# --- CLI -------------------------------------------------------------------------------------------------------


def test_run_prints_and_saves_text_outputs(package: Path, keypair: tuple[Path, Path], local: dict[str, np.ndarray],
                                           tmp_path: Path) -> None:
    np.save(tmp_path / "texts.npy", np.array([[q] for q in QUERIES]))  # a unicode array: no pickle needed
    result = run_cli("run", package, "--trusted-key", keypair[1], "-i", f"{TEXT}={tmp_path / 'texts.npy'}",
                     "--output", tmp_path / "out.npz")
    assert result.code == 0, result.err
    assert f"{LABEL}: str[{len(QUERIES)}]" in result.out
    assert "object" not in result.out and "b'" not in result.out
    assert all(label in result.out for label in local[LABEL].tolist())
    with np.load(tmp_path / "out.npz", allow_pickle=False) as saved:
        assert saved[LABEL].tolist() == local[LABEL].tolist()
