"""Load on demand: a Predict for a model evicted under the memory budget loads it again (a cold start)
instead of failing; concurrent first requests share one load; a model unloaded on purpose stays gone.
In process, with the resident-memory probe held at zero so each model costs exactly its files."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgemill.agent import models as models_module
from edgemill.agent.config import AgentConfig, ModelsConfig
from edgemill.agent.dataplane import DataPlane
from edgemill.agent.metrics import AgentMetrics
from edgemill.agent.models import ModelManager
from edgemill.errors import ModelNotFoundError, ResourceExhaustedError

from .conftest import random_feed


@pytest.fixture(autouse=True)
def files_are_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_module, "_rss_bytes", lambda: 0)


def manager(packages: dict[str, Path], policy: str = "evict-lru", **kwargs: object) -> ModelManager:
    """A budget that holds the larger of cnn and mlp, never both."""
    sizes = [packages[n].stat().st_size for n in ("cnn", "mlp")]
    budget_mb = max(sizes) * 1.05 / 2**20
    config = ModelsConfig(allow_unsigned=True, memory_budget_mb=budget_mb, when_over_budget=policy)  # type: ignore[arg-type]
    return ModelManager(config, drift_window_s=None, **kwargs)  # type: ignore[arg-type]


def feed(model: ModelManager, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    import onnx

    from edgemill.package import open_package

    with open_package(model.get(name).package_path) as reader:
        return random_feed(onnx.load_from_string(reader.read("model/model.onnx")), batch=1, seed=seed)


def test_a_request_for_an_evicted_model_loads_it_again(packages: dict[str, Path]) -> None:
    cold: list[tuple[str, float]] = []
    models = manager(packages, on_cold_start=lambda name, s: cold.append((name, s)))
    models.load(packages["mlp"], name="mlp")
    x = feed(models, "mlp")
    before = models.get("mlp").model.run(x)
    _, evicted = models.load(packages["cnn"], name="cnn")
    assert evicted == ["mlp"] and set(models.evicted()) == {"mlp"}
    with models.use("mlp") as (loaded, _):  # loads it again, evicting cnn
        after = loaded.model.run(x)
    assert [name for name, _ in cold] == ["mlp"] and cold[0][1] > 0 and models.cold_starts == 1
    np.testing.assert_array_equal(after["logits"], before["logits"])
    assert [m.name for m in models.list()] == ["mlp"] and set(models.evicted()) == {"cnn"}
    with models.use("mlp"):  # loaded now: no second cold start
        pass
    assert models.cold_starts == 1


def test_concurrent_first_requests_trigger_one_load(packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    models = manager(packages)
    models.load(packages["mlp"], name="mlp")
    models.load(packages["cnn"], name="cnn")  # evicts mlp
    loads = []
    real_prepare = models.prepare

    def slow_prepare(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        loads.append(args[1] if len(args) > 1 else kwargs.get("name"))
        time.sleep(0.2)  # every thread is waiting by now
        return real_prepare(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "prepare", slow_prepare)
    start = threading.Barrier(8)
    got: list[str] = []

    def request() -> None:
        start.wait()
        with models.use("mlp") as (loaded, _):
            got.append(loaded.name)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == ["mlp"] * 8 and loads == ["mlp"] and models.cold_starts == 1


def test_a_model_unloaded_on_purpose_is_not_loaded_again(packages: dict[str, Path]) -> None:
    models = manager(packages)
    models.load(packages["mlp"], name="mlp")
    models.load(packages["cnn"], name="cnn")  # evicts mlp
    assert models.unload("mlp") is None  # evicted already: forgotten too
    with pytest.raises(ModelNotFoundError), models.use("mlp"):
        pass
    models.unload("cnn")
    with pytest.raises(ModelNotFoundError), models.use("cnn"):
        pass
    assert models.cold_starts == 0


def test_a_package_that_did_not_fit_at_start_loads_once_there_is_room(packages: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("cnn", "mlp"):
        shutil.copy(packages[name], directory / f"{name}.emp")
    models = manager(packages, policy="refuse")
    assert models.load_directory(directory) == ["cnn"]  # mlp does not fit beside it
    assert set(models.evicted()) == {"mlp"}
    with pytest.raises(ResourceExhaustedError), models.use("mlp"):  # still no room: the budget's error
        pass
    models.unload("cnn")
    with models.use("mlp") as (loaded, _):
        assert loaded.name == "mlp"
    assert models.cold_starts == 1


def test_the_agent_counts_cold_starts_and_answers_the_predict(packages: dict[str, Path], tmp_path: Path) -> None:
    metrics = AgentMetrics()
    models = manager(packages, on_cold_start=metrics.cold_start)
    config = AgentConfig.model_validate({"models": {"allow_unsigned": True}})
    plane = DataPlane(config, models, metrics, capture=None)
    try:
        models.load(packages["mlp"], name="mlp")
        x = feed(models, "mlp")
        warm = plane.predict("mlp", x, received=time.perf_counter(), protocol="test")
        models.load(packages["cnn"], name="cnn")  # evicts mlp
        cold = plane.predict("mlp", x, received=time.perf_counter(), protocol="test")
        np.testing.assert_array_equal(cold.outputs["logits"], warm.outputs["logits"])
        assert cold.timing.queue_us >= 0
        text = metrics.prometheus_text().decode()
        assert 'edgemill_agent_cold_starts_total{model="mlp"} 1.0' in text
        assert 'edgemill_agent_cold_start_seconds_count{model="mlp"} 1.0' in text
    finally:
        plane.close()
