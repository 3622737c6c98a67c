"""Dynamic batching: concurrent requests to a model with a dynamic batch dimension run stacked in one
backend call, each answer equal to its unbatched one and carrying its own timing; no request waits for
others longer than the delay bound; a policy for a model without a batch dimension is refused at load."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgemill.agent.config import AgentConfig, ModelsConfig
from edgemill.agent.dataplane import DataPlane, Prediction
from edgemill.agent.metrics import AgentMetrics
from edgemill.agent.models import ModelManager
from edgemill.client import AgentClient
from edgemill.errors import ConfigError, InputMismatchError, ModelCheckError
from edgemill.package.store import sign_package

from ._agent import AgentProcess
from .test_agent import agent_config


def plane(batching: dict, **models: object) -> tuple[DataPlane, AgentMetrics]:
    config = AgentConfig.model_validate({"models": {"allow_unsigned": True, "batching": batching, **models}})
    metrics = AgentMetrics()
    manager = ModelManager(config.models, drift_window_s=None, on_batch=metrics.batch)
    return DataPlane(config, manager, metrics, capture=None), metrics


def rows(seed: int, n: int = 1) -> dict[str, np.ndarray]:
    return {"features": np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32)}


def concurrently(dataplane: DataPlane, feeds: list[dict[str, np.ndarray]]) -> list[Prediction]:
    barrier = threading.Barrier(len(feeds))
    answers: list[Prediction | None] = [None] * len(feeds)

    def call(i: int) -> None:
        barrier.wait()
        answers[i] = dataplane.predict("dyn", feeds[i], received=time.perf_counter(), protocol="test")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def test_concurrent_requests_run_in_one_backend_call_with_their_own_answers(packages: dict[str, Path]) -> None:
    dataplane, metrics = plane({"dyn": {"max_batch_size": 8, "max_queue_delay_us": 200_000}})
    try:
        dataplane.load_model(str(packages["dynamic_batch"]), name="dyn")
        loaded = dataplane.models.get("dyn")
        feeds = [rows(i, n=1 + i % 2) for i in range(6)]  # 9 rows: more than one batch
        alone = [loaded.model.run(f)["logits"] for f in feeds]
        answers = concurrently(dataplane, feeds)
        batcher = loaded.batcher
        assert batcher is not None and batcher.requests == 6
        assert batcher.batches < 6  # batching engaged: fewer backend calls than requests
        for answer, want, feed in zip(answers, alone, feeds):
            assert answer.outputs["logits"].shape == (feed["features"].shape[0], 10)
            np.testing.assert_allclose(answer.outputs["logits"], want, rtol=1e-5, atol=1e-6)
            assert answer.timing.compute_us >= 0 and answer.timing.total_us >= answer.timing.queue_us
        text = metrics.prometheus_text().decode()
        calls = float(re.search(r'edgemill_agent_batch_rows_count\{model="dyn"\} (\S+)', text).group(1))  # type: ignore[union-attr]
        summed = float(re.search(r'edgemill_agent_batch_rows_sum\{model="dyn"\} (\S+)', text).group(1))  # type: ignore[union-attr]
        assert calls == batcher.batches and summed == 9
    finally:
        dataplane.close()


def test_a_lone_request_waits_no_longer_than_the_delay_bound(packages: dict[str, Path]) -> None:
    delay_us = 30_000
    dataplane, _ = plane({"dyn": {"max_batch_size": 8, "max_queue_delay_us": delay_us}})
    try:
        dataplane.load_model(str(packages["dynamic_batch"]), name="dyn")
        for seed in range(5):
            answer = dataplane.predict("dyn", rows(seed), received=time.perf_counter(), protocol="test")
            assert delay_us * 0.9 <= answer.timing.queue_us <= delay_us + 50_000, answer.timing
    finally:
        dataplane.close()


def test_a_preferred_size_goes_at_once(packages: dict[str, Path]) -> None:
    """Two queued rows are a preferred batch: sent without waiting out a ten-second delay."""
    dataplane, _ = plane({"dyn": {"max_batch_size": 8, "max_queue_delay_us": 1_000_000,
                                  "preferred_batch_sizes": [2]}})
    try:
        dataplane.load_model(str(packages["dynamic_batch"]), name="dyn")
        started = time.perf_counter()
        answers = concurrently(dataplane, [rows(1), rows(2)])
        assert time.perf_counter() - started < 0.9
        assert {a.timing.queue_us < 900_000 for a in answers} == {True}
    finally:
        dataplane.close()


def test_a_malformed_request_fails_alone(packages: dict[str, Path]) -> None:
    dataplane, _ = plane({"dyn": {"max_batch_size": 8, "max_queue_delay_us": 100_000}})
    try:
        dataplane.load_model(str(packages["dynamic_batch"]), name="dyn")
        errors: list[Exception] = []
        good: list[Prediction] = []

        def bad() -> None:
            try:
                dataplane.predict("dyn", {"features": np.zeros((1, 63), np.float32)}, received=time.perf_counter(),
                                  protocol="test")
            except InputMismatchError as exc:
                errors.append(exc)

        thread = threading.Thread(target=bad)
        thread.start()
        good += concurrently(dataplane, [rows(3), rows(4)])
        thread.join(30)
        assert len(errors) == 1 and "features" in str(errors[0]) and len(good) == 2
    finally:
        dataplane.close()


def test_batching_a_model_without_a_batch_dimension_is_refused_at_load(packages: dict[str, Path]) -> None:
    dataplane, _ = plane({"mlp": {"max_batch_size": 4}})
    try:
        with pytest.raises(ModelCheckError) as caught:
            dataplane.load_model(str(packages["mlp"]), name="mlp")
        message = str(caught.value)
        assert "no dynamic batch dimension" in message and "[models.batching.mlp]" in message
        assert dataplane.list_models() == []
    finally:
        dataplane.close()


def test_a_preferred_size_over_the_maximum_is_a_config_error(tmp_path: Path) -> None:
    from edgemill.agent.config import load_config

    path = tmp_path / "agent.toml"
    path.write_text("[models]\nallow_unsigned = true\n[models.batching.cnn]\nmax_batch_size = 4\n"
                    "preferred_batch_sizes = [8]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "preferred_batch_sizes" in str(caught.value) and "8" in str(caught.value)
    assert ModelsConfig(allow_unsigned=True).batching == {}  # off unless asked for


def test_the_agent_batches_grpc_requests(packages: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    """The real agent process, the config file and the gRPC client: eight concurrent Predicts."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(packages["dynamic_batch"], models / "dyn.emp")
    sign_package(models / "dyn.emp", keypair[0])
    config = agent_config(tmp_path, keypair[1], models, models={
        "batching": {"dynamic_batch": {"max_batch_size": 8, "max_queue_delay_us": 100_000}}})
    with AgentProcess(config) as agent:
        feeds = [rows(i) for i in range(8)]
        answers: list[np.ndarray | None] = [None] * 8
        barrier = threading.Barrier(8)

        def call(i: int) -> None:
            with AgentClient(agent.address) as client:
                barrier.wait()
                answers[i] = client.predict("dynamic_batch", feeds[i]).outputs["logits"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        import edgemill.runtime as rt

        reference = rt.load(packages["dynamic_batch"])
        for got, feed in zip(answers, feeds):
            np.testing.assert_allclose(got, reference.run(feed)["logits"], rtol=1e-5, atol=1e-6)  # type: ignore[arg-type]
        metrics_address = re.search(r'metrics_address = "([^"]+)"', config.read_text()).group(1)  # type: ignore[union-attr]
        text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
        calls = float(re.search(r'edgemill_agent_batch_rows_count\{model="dynamic_batch"\} (\S+)', text).group(1))  # type: ignore[union-attr]
        assert 1 <= calls < 8, text
