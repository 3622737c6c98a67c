"""Drift monitoring's core (issue 15): features and their bins from a baseline, device-side windows that
merge exactly, and the drift scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgemill

from edgemill.monitoring.drift import js_distance, psi
from edgemill.monitoring.features import Feature, build_features, continuous_edges, image_layout, per_sample
from edgemill.monitoring.window import FeatureWindow

from .conftest import run_cli


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- drift scores -------------------------------------------------------------------------------------

def test_identical_histograms_have_no_drift_and_disjoint_ones_the_most() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert js_distance([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-7)
    assert js_distance([10, 0], [0, 10]) == pytest.approx(1.0)
    assert psi([10, 0], [0, 10]) > 5  # smoothed, so finite


def test_a_moderate_shift_reads_as_moderate() -> None:
    base = [100] * 10
    shifted = [60] * 5 + [140] * 5  # PSI 0.17
    assert 0.1 < psi(base, shifted) < 0.25  # type: ignore[operator]
    assert 0.0 < js_distance(base, shifted) < 0.3  # type: ignore[operator]


def test_no_data_is_no_score_and_bins_must_match() -> None:
    assert psi([1, 2], [0, 0]) is None and js_distance([0, 0], [1, 2]) is None
    with pytest.raises(ValueError, match="different bins"):
        psi([1, 2, 3], [1, 2])


# --- features and bins --------------------------------------------------------------------------------

def test_deciles_make_edges_and_a_constant_gets_its_own_bin() -> None:
    edges = continuous_edges(np.arange(1000, dtype=np.float64))
    assert len(edges) == 9 and edges[0] == pytest.approx(99.9)
    assert continuous_edges(np.full(50, 3.0)) == (3.0, 3.0 + 3e-6)
    f = Feature("k", "input", "x", "column", 0, edges=continuous_edges(np.full(50, 3.0)))
    assert f.count(np.array([2.0, 3.0, 3.0, 7.0])).tolist() == [1, 2, 1]


def test_image_inputs_get_channel_statistics_in_either_layout() -> None:
    assert image_layout([1, 3, 224, 224]) == "nchw" and image_layout([None, 224, 224, 3]) == "nhwc"
    assert image_layout([1, 64, 56, 56]) == "" and image_layout([1, 3, 3]) == ""
    rng = np.random.default_rng(0)
    feeds = [{"img": rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)} for _ in range(5)]
    features = build_features([("img", "float32", [None, 8, 8, 3])], [], feeds, [])
    assert [f.key for f in features] == [f"input:img:channel_{s}:{c}" for s in ("mean", "std") for c in range(3)]
    assert all(sum(f.baseline) == 20 for f in features)


def test_tabular_inputs_keep_the_most_spread_out_columns() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 40)).astype(np.float32)
    x[:, 5] = 1.0  # constant: tells nothing
    features = build_features([("x", "float32", [None, 40])], [], [{"x": x}], [], max_features=32)
    columns = [f.index for f in features if f.statistic == "column"]
    assert len(columns) == 32 and 5 not in columns


def test_classifier_outputs_get_predicted_class_and_top_score() -> None:
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]], np.float32)
    features = build_features([], [("y", "float32", [None, 3])], [], [{"y": logits}])
    by_stat = {f.statistic: f for f in features}
    assert by_stat["predicted_class"].categories == (0, 1, 2)
    assert by_stat["predicted_class"].baseline == (2, 1, 1, 0)  # the last bin: anything else
    assert sum(by_stat["top_score"].baseline) == 4
    labels = build_features([], [("label", "int64", [None])], [], [{"label": np.array([1, 1, 7])}])
    assert labels[0].categories == (1, 7) and labels[0].count(np.array([7, 9])).tolist() == [0, 1, 1]


def test_a_feature_survives_its_dict_form() -> None:
    f = build_features([("x", "float32", [None, 2])], [], [{"x": np.arange(20, dtype=np.float32).reshape(10, 2)}], [])[0]
    assert Feature.from_dict(f.to_dict()) == f


# --- the device window --------------------------------------------------------------------------------

def _tabular_window(clock: FakeClock, flush_rows: int = 512) -> tuple[FeatureWindow, np.ndarray]:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((1000, 4)).astype(np.float32)
    features = build_features([("x", "float32", [None, 4])], [], [{"x": base}], [])
    return FeatureWindow(features, window_s=60, slots=6, flush_rows=flush_rows, clock=clock), base


def test_in_distribution_calls_do_not_drift_and_a_mean_shift_does() -> None:
    clock = FakeClock()
    window, _ = _tabular_window(clock)
    rng = np.random.default_rng(2)
    for _ in range(400):
        window.observe({"x": rng.standard_normal((1, 4)).astype(np.float32)}, {})
    quiet = window.drift()
    assert max(d["psi"] for d in quiet.values()) < 0.1  # type: ignore[type-var]
    clock.now += 61  # the window moves past those calls
    for _ in range(400):
        x = rng.standard_normal((1, 4)).astype(np.float32)
        x[:, 2] += 1.5
        window.observe({"x": x}, {})
    drift = window.drift()
    assert drift["input:x:column:2"]["psi"] > 0.25  # type: ignore[operator]
    assert drift["input:x:column:0"]["psi"] < 0.1  # type: ignore[operator]


def test_totals_count_every_observed_sample_whatever_the_batching() -> None:
    clock = FakeClock()
    window, _ = _tabular_window(clock, flush_rows=7)
    rng = np.random.default_rng(3)
    data = rng.standard_normal((300, 4)).astype(np.float32)
    sizes = [1, 5, 13, 1, 80, 200]
    seen = []
    for i, size in enumerate(sizes):
        start = sum(sizes[:i])
        window.observe({"x": data[start:start + size]}, {})
        seen.append(window.totals())  # read between calls: flushes what is pending
    f = window.features[1]
    assert seen[-1][f.key] == f.count(data[:, 1]).tolist()
    assert all(sum(a[f.key]) <= sum(b[f.key]) for a, b in zip(seen, seen[1:]))  # cumulative: never goes back
    clock.now += 3600  # the sliding window forgets; the totals do not
    assert window.window_counts()[f.key].sum() == 0 and sum(window.totals()[f.key]) == 300


def test_a_large_input_is_copied_at_once_and_never_held() -> None:
    clock = FakeClock()
    rng = np.random.default_rng(4)
    feeds = [{"img": rng.uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)} for _ in range(10)]
    features = build_features([("img", "float32", [None, 3, 64, 64])], [], feeds, [])
    window = FeatureWindow(features, clock=clock)
    frame = rng.uniform(0.9, 1.0, (1, 3, 64, 64)).astype(np.float32)  # brighter than any baseline frame
    window.observe({"img": frame}, {})
    frame[:] = 0.0  # the caller reuses its buffer: what was counted must not change
    counts = window.window_counts()
    mean0 = [f for f in features if f.key == "input:img:channel_mean:0"][0]
    assert counts[mean0.key].sum() == 1 and counts[mean0.key][-1] == 1  # the bright frame, not the zeros


@pytest.mark.parametrize("dtype,layout", [("float32", "nchw"), ("uint8", "nhwc")])
def test_frames_counted_on_the_device_bin_as_the_baseline_would_whatever_their_batching(dtype: str, layout: str) -> None:
    """The device keeps each frame's pixel grid in a reused block and takes the statistics in batches; the
    counts equal binning every frame's statistics at once (the compile-time path), across block refills,
    a frame size change (another block) and batches of several frames."""
    rng = np.random.default_rng(5)
    shape = (3, 96, 80) if layout == "nchw" else (96, 80, 3)
    frames = [(rng.random((int(rng.integers(1, 4)), *shape)) * 255).astype(dtype) for _ in range(40)]
    other = (rng.random((2, *(s * 2 if s > 3 else s for s in shape))) * 255).astype(dtype)
    feeds = [{"img": f} for f in frames[:10]]
    features = build_features([("img", dtype, [None, *shape])], [], feeds, [])
    assert {f.statistic for f in features} == {"channel_mean", "channel_std"}
    window = FeatureWindow(features, flush_rows=10_000, flush_bytes=40_000)  # a block holds a few frames
    for frame in frames[:20] + [other] + frames[20:]:
        window.observe({"img": frame}, {})
    totals = window.totals()
    everything = frames + [other]
    for f in features:
        expected = sum(f.count(per_sample(f.statistic, frame, f.layout)[:, f.index]) for frame in everything)
        assert totals[f.key] == expected.tolist(), f.key
    assert sum(totals[features[0].key]) == sum(len(frame) for frame in everything)


def test_pending_frames_are_bounded_by_flush_bytes_not_only_by_rows() -> None:
    rng = np.random.default_rng(6)
    frames = [rng.random((1, 3, 224, 224)).astype(np.float32) for _ in range(5)]
    features = build_features([("img", "float32", [None, 3, 224, 224])], [], [{"img": f} for f in frames], [])
    window = FeatureWindow(features, flush_rows=10_000, flush_bytes=3 * 3 * 32 * 32 * 4)  # three grids
    for frame in frames[:3]:
        window.observe({"img": frame}, {})
    assert window.samples == 3  # the third filled the budget: counted without anyone reading
    window.observe({"img": frames[3]}, {})
    assert window.samples == 3 and sum(window.totals()[features[0].key]) == 4


# --- the baseline in the package ----------------------------------------------------------------------

def _baseline(path: Path) -> dict:  # type: ignore[type-arg]
    from edgemill.package import open_package
    from edgemill.package.layout import BASELINE

    with open_package(path) as reader:
        return json.loads(reader.read(BASELINE))


def test_every_package_carries_a_signed_baseline_marked_synthetic_without_data(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "cnn.onnx", output=tmp_path / "cnn.emp", measure=False)
    assert "monitoring/baseline.json" in result.manifest.files  # hashed, so the signature covers it
    doc = _baseline(result.path)
    assert doc["synthetic"] and doc["samples"] >= 32
    keys = [f["key"] for f in doc["features"]]
    assert "input:image:channel_mean:2" in keys and "output:logits:predicted_class" in keys
    step = [s for s in result.report["steps"] if s["step"] == "baseline"][0]
    assert "synthetic" in step["summary"] and "--baseline" in step["summary"]


def test_a_baseline_file_is_used_and_a_wrong_one_refused_in_one_line(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "typical.npz", features=rng.standard_normal((200, 64)).astype(np.float32))
    result = edgemill.compile(model_dir / "dynamic_batch.onnx", output=tmp_path / "m.emp", measure=False,
                              baseline=tmp_path / "typical.npz")
    doc = _baseline(result.path)
    assert not doc["synthetic"] and doc["samples"] == 200 and doc["data"] == "baseline file typical.npz"
    columns = [f for f in doc["features"] if f["statistic"] == "column"]
    assert len(columns) == 32 and all(sum(f["baseline"]) == 200 for f in columns)

    def compile_with(**arrays: np.ndarray):  # type: ignore[no-untyped-def]
        np.savez(tmp_path / "bad-baseline.npz", **arrays)
        return run_cli("compile", model_dir / "dynamic_batch.onnx", "-o", tmp_path / "bad.emp", "--no-measure",
                       "--baseline", tmp_path / "bad-baseline.npz")

    bad = compile_with(features=rng.standard_normal((20, 63)).astype(np.float32))
    lines = [ln for ln in bad.err.splitlines() if ln.startswith("edgemill:")]
    assert bad.code != 0 and len(lines) == 1 and "'features'" in lines[0] and "64" in lines[0], bad.err
    assert not (tmp_path / "bad.emp").exists()
    bad = compile_with(x=rng.standard_normal((20, 64)).astype(np.float32))
    assert bad.code != 0 and "baseline file lacks an input" in bad.err and "features" in bad.err


def test_validation_data_is_the_baseline_when_no_other_is_given(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "val.npz", features=rng.standard_normal((50, 64)).astype(np.float32))
    result = edgemill.compile(model_dir / "dynamic_batch.onnx", output=tmp_path / "v.emp", measure=False,
                              validation=tmp_path / "val.npz")
    doc = _baseline(result.path)
    assert doc["data"] == "validation file val.npz" and doc["samples"] == 50 and not doc["synthetic"]


def test_a_model_whose_baseline_cannot_be_counted_still_gets_its_package(model_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemill.compiler import baseline

    def broken(*args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        raise ValueError("an output of a shape nobody planned for")

    monkeypatch.setattr(baseline, "build_features", broken)
    result = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "m.emp", measure=False)
    assert "monitoring/baseline.json" not in result.manifest.files
    assert any("no drift baseline" in w and "nobody planned for" in w for w in result.report["warnings"])


# --- on the device --------------------------------------------------------------------------------------

def _agent(tmp_path: Path, **metrics: object):  # type: ignore[no-untyped-def]
    from edgemill.agent.config import config_from_dict
    from edgemill.agent.daemon import Agent

    config = config_from_dict({
        "models": {"directory": str(tmp_path / "models"), "allow_unsigned": True},
        "capture": {"directory": str(tmp_path / "queue")},
        "listen": {"metrics_address": ""},
        "metrics": metrics,
    }, tmp_path / "agent.toml")
    return Agent(config)


def test_the_agent_counts_predictions_against_the_baseline_and_exports_drift(model_dir: Path, tmp_path: Path) -> None:
    import time

    rng = np.random.default_rng(5)
    np.savez(tmp_path / "typical.npz", features=rng.standard_normal((400, 64)).astype(np.float32))
    package = edgemill.compile(model_dir / "dynamic_batch.onnx", output=tmp_path / "m.emp", measure=False,
                               baseline=tmp_path / "typical.npz").path
    agent = _agent(tmp_path)
    agent.dataplane.load_model(str(package), name="m")
    for _ in range(300):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        x[:, :8] += 2.0  # eight features moved by two standard deviations
        agent.dataplane.predict("m", {"features": x}, received=time.perf_counter(), protocol="test")
    loaded = agent.models.get("m")
    assert loaded.drift is not None and sum(loaded.drift.totals()["output:logits:top_score"]) == 300
    text = agent.metrics.prometheus_text().decode()
    psi = {line.split("feature=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1])
           for line in text.splitlines() if line.startswith("edgemill_agent_drift_psi{")}
    moved = [v for k, v in psi.items() if k.startswith("input:features:column:") and int(k.rsplit(":", 1)[1]) < 8]
    still = [v for k, v in psi.items() if k.startswith("input:features:column:") and int(k.rsplit(":", 1)[1]) >= 8]
    assert moved and min(moved) > 0.25, psi
    assert still and max(still) < 0.25, psi
    assert 'edgemill_agent_drift_samples{model="m",version="0.1.0"} 300.0' in text


def test_drift_counting_can_be_turned_off(model_dir: Path, tmp_path: Path) -> None:
    package = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "m.emp", measure=False).path
    agent = _agent(tmp_path, drift=False)
    agent.dataplane.load_model(str(package), name="m")
    assert agent.models.get("m").drift is None
    assert "edgemill_agent_drift_psi{" not in agent.metrics.prometheus_text().decode()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_channel_statistics_in_one_pass_equal_numpy_mean_and_std(layout: str) -> None:
    from edgemill.monitoring.features import channel_stats

    rng = np.random.default_rng(3)
    grid = (rng.random((4, 3, 32, 32)) * 255).astype(np.float32)
    if layout == "nhwc":
        grid = np.ascontiguousarray(grid.transpose(0, 2, 3, 1))
    axes = (2, 3) if layout == "nchw" else (1, 2)
    mean, std = channel_stats(grid, layout)
    np.testing.assert_allclose(mean, grid.astype(np.float64).mean(axis=axes), rtol=1e-9)
    np.testing.assert_allclose(std, grid.astype(np.float64).std(axis=axes), rtol=1e-6)


def test_top_score_is_the_largest_softmax_value_or_the_distribution_itself() -> None:
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 10)).astype(np.float32) * 4
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(per_sample("top_score", logits), softmax.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(per_sample("top_score", softmax), softmax.max(axis=1), rtol=1e-6)
