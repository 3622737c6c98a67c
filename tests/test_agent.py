"""The agent as a real process on 127.0.0.1, driven by our client: models, inference, errors, metrics."""

from __future__ import annotations

import shutil
import tarfile
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.client import AgentClient, AgentError, SharedTensor
from edgemill.package.store import sign_package

from ._agent import AgentProcess, free_port, write_config
from .conftest import run_cli


@pytest.fixture(scope="module")
def signed(packages: dict[str, Path], keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test packages, signed with the trusted key."""
    out = tmp_path_factory.mktemp("signed")
    result = {}
    for name in ("mlp", "cnn", "dynamic_batch"):
        target = out / f"{name}.emp"
        shutil.copy(packages[name], target)
        sign_package(target, keypair[0])
        result[name] = target
    return result


def agent_config(tmp: Path, public_key: Path, models_dir: Path | None = None, **sections: dict) -> Path:
    base = {
        "device": {"name": "test-device"},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": f"127.0.0.1:{free_port()}",
                   "unix_socket": str(tmp / "agent.sock")},
        "models": {"directory": str(models_dir or tmp / "models"), "trusted_keys": [str(public_key)]},
        "capture": {"directory": str(tmp / "queue"), "store": f"file://{tmp / 'store'}", "upload_interval_s": 0.2},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_config(tmp / "agent.toml", base)


@pytest.fixture(scope="module")
def running_agent(signed: dict[str, Path], keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("agent")
    models = tmp / "models"
    models.mkdir()
    shutil.copy(signed["mlp"], models / "mlp.emp")  # standalone mode loads it at start
    with AgentProcess(agent_config(tmp, keypair[1], models)) as agent:
        yield agent


def feed_for(model: rt.Model, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else batch for d in s.shape])
            .astype(s.dtype) for s in model.inputs}


def test_agent_serves_models_with_the_runtimes_results(running_agent: AgentProcess, signed: dict[str, Path],
                                                       keypair: tuple[Path, Path]) -> None:
    with AgentClient(running_agent.address) as client:
        assert [m["name"] for m in client.list_models()] == ["mlp"]  # standalone: loaded from the directory
        loaded = client.load_model(str(signed["cnn"]), name="vision")
        assert loaded["model"]["name"] == "vision" and loaded["model"]["signed_by"]
        for name, package in (("mlp", signed["mlp"]), ("vision", signed["cnn"])):
            local = rt.load(package, trusted_keys=[keypair[1]])
            feed = feed_for(local, seed=1)
            result = client.predict(name, feed)
            expected = local.run(feed)
            assert result.outputs.keys() == expected.keys()
            for key in expected:
                np.testing.assert_allclose(result.outputs[key], expected[key], rtol=1e-6, atol=1e-6)
            assert result.model_version == local.version
            assert 0 < result.timing.compute_us <= result.timing.total_us
        described = client.describe_model("vision")
        assert described["package_id"] == rt.load(signed["cnn"]).package_id
        assert described["requests"] == 1 and described["memory_bytes"] > 0
        client.unload_model("vision")
        assert [m["name"] for m in client.list_models()] == ["mlp"]


def test_the_unix_socket_serves_the_same_api(running_agent: AgentProcess, signed: dict[str, Path]) -> None:
    local = rt.load(signed["mlp"])
    feed = feed_for(local, seed=2)
    with AgentClient(running_agent.unix) as client:
        np.testing.assert_allclose(client.predict("mlp", feed).outputs[local.outputs[0].name],
                                   local.run(feed)[local.outputs[0].name], rtol=1e-6, atol=1e-6)


def test_byte_swapped_inputs_travel_as_their_values(running_agent: AgentProcess, signed: dict[str, Path]) -> None:
    """A big-endian array (read from a file written elsewhere) is the same tensor to the agent, on gRPC and
    on the fast path: the wire is little-endian, whatever the caller's byte order."""
    model = rt.load(signed["mlp"])
    feed = feed_for(model)
    swapped = {name: value.astype(value.dtype.newbyteorder(">")) for name, value in feed.items()}
    for fast in (False, True):
        with AgentClient(running_agent.unix, fast_path=fast) as client:
            assert client.transport == ("fast" if fast else "grpc")
            got = client.predict("mlp", swapped).outputs
        for name, value in model.run(feed).items():
            np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


def test_inputs_by_shared_memory_handle(running_agent: AgentProcess, signed: dict[str, Path]) -> None:
    local = rt.load(signed["mlp"])
    spec = local.inputs[0]
    feed = feed_for(local, seed=3)
    with AgentClient(running_agent.address) as client, SharedTensor(feed[spec.name].shape, feed[spec.name].dtype) as shm:
        shm.array[...] = feed[spec.name]
        result = client.predict("mlp", {spec.name: shm})
    np.testing.assert_allclose(result.outputs[local.outputs[0].name], local.run(feed)[local.outputs[0].name],
                               rtol=1e-6, atol=1e-6)


def test_concurrent_predicts_on_two_models_all_correct(running_agent: AgentProcess, signed: dict[str, Path]) -> None:
    with AgentClient(running_agent.address) as client:
        client.load_model(str(signed["dynamic_batch"]), name="mlp-b")
        locals_ = {"mlp": rt.load(signed["mlp"]), "mlp-b": rt.load(signed["dynamic_batch"])}
        failures: list[str] = []

        def worker(index: int) -> None:
            name = "mlp" if index % 2 else "mlp-b"
            local = locals_[name]
            for i in range(25):
                feed = feed_for(local, batch=1 + i % 3 if name == "mlp-b" else 1, seed=index * 100 + i)
                got = client.predict(name, feed).outputs
                want = local.run(feed)
                if not all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want):
                    failures.append(f"{name} {index} {i}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        client.unload_model("mlp-b")
    assert not failures
    text = urllib.request.urlopen(running_agent.metrics_url, timeout=10).read().decode()
    assert 'edgemill_agent_requests_total{model="mlp-b",protocol="edgemill"} 100.0' in text
    assert 'edgemill_agent_request_seconds_bucket{le="+Inf",model="mlp-b"} 100.0' in text
    assert 'edgemill_agent_input_feature{feature="0",input=' in text and 'stat="mean"' in text


@pytest.mark.parametrize("case", ["unknown_model", "wrong_dtype", "wrong_shape", "short_bytes", "missing_shm",
                                  "unknown_output"])
def test_bad_requests_get_a_status_code_and_a_fix(running_agent: AgentProcess, signed: dict[str, Path],
                                                  case: str) -> None:
    local = rt.load(signed["mlp"])
    name = local.inputs[0].name
    x = feed_for(local)[name]
    client = AgentClient(running_agent.address)
    with pytest.raises(AgentError) as caught:
        if case == "unknown_model":
            client.predict("nope", {name: x})
        elif case == "wrong_dtype":
            client.predict("mlp", {name: x.astype(np.float64)})
        elif case == "wrong_shape":
            client.predict("mlp", {name: np.zeros((1, x.shape[1] + 1), np.float32)})
        elif case == "short_bytes":
            from edgemill.client import pb

            request = pb.PredictRequest(model="mlp", inputs=[pb.Tensor(name=name, dtype=pb.FLOAT32, shape=x.shape,
                                                                       raw=x.tobytes()[:-4])])
            try:
                client._stub.Predict(request, timeout=10)
            except grpc.RpcError as exc:
                raise AgentError(exc.code(), exc.details()) from None
        elif case == "missing_shm":
            from edgemill.client import pb

            request = pb.PredictRequest(model="mlp", inputs=[pb.Tensor(
                name=name, dtype=pb.FLOAT32, shape=x.shape,
                shared_memory=pb.SharedMemoryHandle(name="/edgemill-test-absent", offset=0, size=x.nbytes))])
            try:
                client._stub.Predict(request, timeout=10)
            except grpc.RpcError as exc:
                raise AgentError(exc.code(), exc.details()) from None
        elif case == "unknown_output":
            client.predict("mlp", {name: x}, outputs=["nope"])
    expected = {"unknown_model": (grpc.StatusCode.NOT_FOUND, "nope", "mlp"),
                "wrong_dtype": (grpc.StatusCode.INVALID_ARGUMENT, "float64", "float32"),
                "wrong_shape": (grpc.StatusCode.INVALID_ARGUMENT, name, "Fix"),
                "short_bytes": (grpc.StatusCode.INVALID_ARGUMENT, "bytes", "Fix"),
                "missing_shm": (grpc.StatusCode.INVALID_ARGUMENT, "/edgemill-test-absent", "Fix"),
                "unknown_output": (grpc.StatusCode.INVALID_ARGUMENT, "nope", "Fix")}[case]
    assert caught.value.code == expected[0], caught.value
    assert expected[1] in caught.value.message and expected[2] in caught.value.message
    assert client.predict("mlp", {name: x}).outputs  # and the agent keeps serving
    client.close()


def test_untrusted_and_tampered_packages_are_refused(running_agent: AgentProcess, packages: dict[str, Path],
                                                     signed: dict[str, Path], other_keypair: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    unsigned = tmp_path / "unsigned.emp"
    shutil.copy(packages["mlp"], unsigned)
    foreign = tmp_path / "foreign.emp"
    shutil.copy(packages["mlp"], foreign)
    sign_package(foreign, other_keypair[0])
    tampered = tmp_path / "tampered.emp"
    data = bytearray(signed["mlp"].read_bytes())
    with tarfile.open(signed["mlp"]) as tar:  # flip a byte inside the model file, under the signature
        member = next(m for m in tar.getmembers() if m.name.endswith(".onnx"))
    data[member.offset_data + member.size // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with AgentClient(running_agent.address) as client:
        for path, reason in ((unsigned, "not_signed"), (foreign, "untrusted_key"), (tampered, "file_modified")):
            with pytest.raises(AgentError) as caught:
                client.load_model(str(path), name="bad")
            assert caught.value.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
            assert "refused" in caught.value.message and reason in caught.value.message
        with pytest.raises(AgentError) as missing:
            client.load_model(str(tmp_path / "absent.emp"))
        assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT and "absent.emp" in missing.value.message
        with pytest.raises(AgentError) as twice:
            client.load_model(str(signed["mlp"]), name="mlp")
        assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert [m["name"] for m in client.list_models()] == ["mlp"]


def test_a_model_over_the_memory_budget_is_refused(signed: dict[str, Path], keypair: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    config = agent_config(tmp_path, keypair[1], models={"memory_budget_mb": 0.001})
    with AgentProcess(config) as agent, AgentClient(agent.address) as client:
        with pytest.raises(AgentError) as caught:
            client.load_model(str(signed["mlp"]))
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "memory_budget_mb" in caught.value.message and "evict-lru" in caught.value.message


def test_sigterm_stops_gracefully(signed: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    agent = AgentProcess(agent_config(tmp_path, keypair[1])).start()
    try:
        with AgentClient(agent.address) as client:
            client.load_model(str(signed["mlp"]))
        assert agent.terminate(30) == 0
        assert "agent stopped" in agent.stderr()
    finally:
        agent.kill()


@pytest.mark.parametrize("text, key, line", [
    ('[device]\nname = "a"\n\n[models]\nallow_unsigned = true\nbudget = 3\n', "models.budget", 6),
    ('[listen]\naddress = "nowhere"\n', "listen.address", 2),
    ('[capture]\nsample_rate = 2.0\n', "capture.sample_rate", 2),
    ('[models]\nallow_unsigned = false\n', "models", 1),
    ('[device\nname = "x"\n', "line 1", None),
])
def test_a_malformed_config_names_the_key_and_line(tmp_path: Path, text: str, key: str, line: int | None) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = run_cli("agent", "--config", path)
    assert result.code == 1, result.err
    assert key in result.err and "Traceback" not in result.err
    if line is not None:
        assert f"agent.toml:{line}" in result.err
    assert "Fix:" in result.err or "correct" in result.err


def test_an_empty_unix_socket_means_none_as_an_empty_address_does(tmp_path: Path) -> None:
    from edgemill.agent.config import load_config

    path = tmp_path / "agent.toml"
    path.write_text('[listen]\naddress = "127.0.0.1:8601"\nunix_socket = ""\n[models]\nallow_unsigned = true\n')
    assert load_config(path).listen.unix_socket is None  # not the config's own folder
    path.write_text('[listen]\naddress = ""\nunix_socket = ""\n[models]\nallow_unsigned = true\n')
    result = run_cli("agent", "--config", path)
    assert result.code == 1 and "listens nowhere" in result.err


def test_the_example_config_loads_as_printed_and_with_its_options_turned_on(tmp_path: Path) -> None:
    from edgemill.agent.config import load_config

    printed = run_cli("agent", "--example-config")
    assert printed.code == 0
    path = tmp_path / "agent.toml"
    path.write_text(printed.out)
    assert load_config(path).listen.fast_socket_path() is None  # no unix_socket by default
    enabled = printed.out.replace("# unix_socket", "unix_socket").replace("# fast_path", "fast_path")
    enabled = enabled.replace("# [models.batching.detector]", "[models.batching.detector]")
    enabled = enabled.replace("# max_batch_size", "max_batch_size").replace("# max_queue_delay_us", "max_queue_delay_us")
    path.write_text(enabled)
    config = load_config(path)
    assert config.listen.fast_socket_path() == Path("/run/edgemill/agent.sock.fast")
    assert config.models.batching["detector"].max_batch_size == 8
