"""Accuracy-aware mixed precision: the search that returns the most sensitive operators to FP32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgemill
from edgemill.compiler import mixed_precision as mp

from .conftest import run_cli

# --- the search, with a judge that knows the answer ----------------------------------------------


@dataclass
class Verdict:
    passed: bool
    drop: float


def layers(n: int) -> list[mp.Layer]:
    return [mp.Layer(f"op{i}", "MatMul", 1.0 / (i + 1)) for i in range(n)]


def judge_needing(*required: str):  # noqa: ANN201 - a test double
    """Passes once every ``required`` layer is in FP32 (the quantize double returns the kept names)."""
    calls: list[int] = []

    def judge(kept: list[str]) -> Verdict:
        calls.append(len(kept))
        passed = set(required) <= set(kept)
        return Verdict(passed, 0.0 if passed else 0.5)
    return judge, calls


def names(*indices: int) -> list[str]:
    return [f"op{i}" for i in indices]


@pytest.mark.parametrize("needed", [1, 2, 3, 5, 13, 31])
def test_search_finds_the_fewest_layers_that_pass(needed: int) -> None:
    judge, calls = judge_needing(*names(*range(needed)))
    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0)
    assert [layer.name for layer in outcome.kept] == names(*range(needed))
    assert outcome.model == names(*range(needed))
    assert not outcome.stopped_by_budget
    # grow by doubling, bisect, then one try per kept layer: not one try per layer of the model
    assert len(calls) <= 2 * 6 + needed
    assert f"{needed} of 40 quantized operators kept in FP32" in outcome.summary


def test_search_prunes_layers_the_ranking_put_too_high() -> None:
    judge, _ = judge_needing("op0", "op3")  # op1 and op2 ranked above op3 but not needed
    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0)
    assert [layer.name for layer in outcome.kept] == ["op0", "op3"]


def test_search_never_returns_every_layer_to_fp32() -> None:
    judge, calls = judge_needing(*names(*range(10)))  # only all 10 in FP32 pass: that is the FP32 model
    outcome = mp.search(layers(10), quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0)
    assert outcome.model is None and outcome.kept == [] and max(calls) == 9
    assert "no point passed" in outcome.summary


def test_a_budget_too_small_stops_at_the_best_point_found_and_says_so() -> None:
    judge, calls = judge_needing(*names(*range(5)))
    remaining = iter([1.0, 1.0, 1.0, 1.0])  # four points: 1, 2, 4 fail, 8 passes; then the time is up

    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge,
                        time_left=lambda: next(remaining, 0.0))
    assert calls == [1, 2, 4, 8]
    assert outcome.stopped_by_budget and len(outcome.kept) == 8  # passing, not the fewest (5)
    assert "time budget ran out" in outcome.summary and "--tune-budget" in outcome.summary
    assert outcome.to_dict()["stopped_by_budget"] is True


@pytest.mark.parametrize("needed, start", [(5, 8), (5, 4), (5, 5), (13, 3), (1, 16)])
def test_a_warm_start_finds_the_same_fewest_layers_with_fewer_points(needed: int, start: int) -> None:
    judge, calls = judge_needing(*names(*range(needed)))
    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0, start=start)
    assert calls[0] == start and outcome.started_at == start
    assert [layer.name for layer in outcome.kept] == names(*range(needed)) and outcome.passing_prefix == needed
    cold, cold_calls = judge_needing(*names(*range(needed)))
    mp.search(layers(40), quantize=lambda kept: kept, judge=cold, time_left=lambda: 1.0)
    if start == needed:  # the first search's answer: one point to grow, one to confirm the one below fails
        assert len(calls) <= len(cold_calls)


def test_pruning_stops_at_its_share_of_the_budget_and_says_so() -> None:
    judge, calls = judge_needing("op0", "op3")
    share = iter([1.0, 1.0])  # two pruning points, then this search's share is spent
    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0,
                        prune_time_left=lambda: next(share, 0.0))
    # grown to 4 (op0..op3), then op3 is tried back in INT8 (fails), op2 (passes): the share is spent
    assert [layer.name for layer in outcome.kept] == ["op0", "op1", "op3"]
    assert outcome.pruning_cut_short and not outcome.stopped_by_budget
    assert "share of the budget" in outcome.summary and outcome.to_dict()["pruning_cut_short"] is True


def test_pruning_tries_the_matrix_products_first_where_int8_pays() -> None:
    ranked = [mp.Layer(f"op{i}", "MatMul" if i % 2 else "Add", 1.0 / (i + 1)) for i in range(10)]
    judge, _ = judge_needing("op0", "op3")  # grows to op0..op3, then prunes them
    outcome = mp.search(ranked, quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0)
    assert outcome.prune_tried == ["op3", "op1", "op2", "op0"]  # MatMuls first, each kind least sensitive first
    assert [layer.name for layer in outcome.kept] == ["op0", "op3"]


def test_a_seeded_search_only_prunes_trying_what_the_earlier_pruning_did_not_first() -> None:
    judge, calls = judge_needing("op0", "op3")
    seed = (layers(8), names(*range(8)), ["op7", "op6"])  # an earlier pruning tried op7 and op6, then stopped
    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge, time_left=lambda: 1.0, seed=seed)
    assert [layer.name for layer in outcome.kept] == ["op0", "op3"] and outcome.model == ["op0", "op3"]
    assert calls[0] == 7 and outcome.points[0].fp32 == 7  # op5 back in INT8 first, not op7
    assert outcome.prune_tried[:5] == ["op5", "op4", "op3", "op2", "op1"] and outcome.prune_tried[-2:] == ["op7", "op6"]
    assert outcome.seeded and outcome.started_at == 8 and outcome.passing_prefix is None
    assert max(calls) < 8  # the seed is not judged again


def test_a_budget_spent_before_any_pass_keeps_nothing_and_says_so() -> None:
    judge, calls = judge_needing(*names(*range(30)))
    remaining = iter([1.0, 1.0])
    outcome = mp.search(layers(40), quantize=lambda kept: kept, judge=judge, time_left=lambda: next(remaining, 0.0))
    assert calls == [1, 2] and outcome.model is None and outcome.stopped_by_budget
    assert "before any point passed" in outcome.summary


# --- a model with one sensitive layer ------------------------------------------------------------

WIDTH = 32
SENSITIVE = "sensitive_matmul"
ROW_SCALE = 1000.0


def one_sensitive_layer(path: Path) -> Path:
    """Four MatMuls (outputs judged by relative error). The third has one row of weights 1000x the
    others, read by an input channel that is always 0: it changes nothing in FP32, but INT8 (one scale
    per output channel) spends its range on that row and rounds every other weight of the layer to 0.
    The third is the one layer INT8 ruins; activations and the other weights quantize well."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32)
    w2[:, 0] = 0.0  # channel 0 of the third layer's input is always 0
    w3 = rng.normal(0, 0.3, (WIDTH, WIDTH)).astype(np.float32)
    w3[0, :] *= ROW_SCALE
    w4 = rng.normal(0, 0.3, (WIDTH, 8)).astype(np.float32)
    weights = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate((w1, w2, w3, w4), 1)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="first_matmul"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="second_matmul"),
        helper.make_node("MatMul", ["h2", "w3"], ["h3"], name=SENSITIVE),
        helper.make_node("MatMul", ["h3", "w4"], ["y"], name="last_matmul"),
    ]
    graph = helper.make_graph(nodes, "one_sensitive",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture()
def sensitive(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    model = one_sensitive_layer(tmp_path / "sensitive.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.normal(size=(64, 1, WIDTH)).astype(np.float32))
    # Judged on the calibration inputs themselves: no range clipping, so only the sensitive layer loses much.
    return {"model": model, "calib": calib, "val": calib}


def int8_step(report: dict) -> dict:
    return next(s for s in report["steps"] if s["step"] == "quantize_int8")


def test_the_search_finds_the_one_sensitive_layer_and_the_report_names_it(sensitive: dict, tmp_path: Path) -> None:
    result = edgemill.compile(sensitive["model"], output=tmp_path / "m.emp", precision="int8", backend="onnxruntime",
                              calibration=sensitive["calib"], validation=sensitive["val"], max_accuracy_drop=0.05,
                              measure=False)
    step = int8_step(result.report)
    mixed = step["notes"]["mixed_precision"]
    assert mixed["full_int8_drop"] > 0.5  # all-INT8 misses the allowance ...
    assert [layer["name"] for layer in mixed["fp32_layers"]] == [SENSITIVE]  # ... and one layer in FP32 fixes it
    assert mixed["passed"] and not mixed["stopped_by_budget"]
    assert step["gate"]["passed"] and step["gate"]["drop"] <= 0.05
    assert result.manifest.precision == "int8"
    assert "1 of" in step["summary"] and "kept in FP32" in step["summary"]
    # The other three MatMuls are still INT8 in the package: their weights are dequantized int8 tensors.
    search = next(s for s in result.report["steps"] if s["step"] == "mixed_precision")
    assert search["fp32_layers"][0]["name"] == SENSITIVE and search["points"][0]["passed"]


def test_no_mixed_precision_keeps_the_all_or_nothing_gate(sensitive: dict, tmp_path: Path) -> None:
    out = tmp_path / "refused.emp"
    result = run_cli("compile", sensitive["model"], "-o", out, "--precision", "int8", "--backend", "onnxruntime",
                     "--calibration", sensitive["calib"], "--validation", sensitive["val"],
                     "--max-accuracy-drop", "0.05", "--no-measure", "--no-mixed-precision")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "closest: onnxruntime/int8" in result.err and not out.exists()


def test_cached_measurements_are_reused_only_for_the_same_artifact(
        sensitive: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A time-bounded search may build a different model next time: measurements of another artifact
    must not be reported (or chosen by) for this one."""
    from edgemill.compiler import tuning

    monkeypatch.setenv("EDGEMILL_CACHE_DIR", str(tmp_path / "cache"))
    options = {"precision": "int8", "backend": "onnxruntime", "calibration": sensitive["calib"],
               "validation": sensitive["val"], "max_accuracy_drop": 0.05, "tune_budget": 6}

    def tune_step(result: edgemill.compiler.CompileResult) -> dict:
        return next(s for s in result.report["steps"] if s["step"] == "tune")

    first = edgemill.compile(sensitive["model"], output=tmp_path / "a.emp", **options)
    assert not tune_step(first).get("cached")
    again = edgemill.compile(sensitive["model"], output=tmp_path / "b.emp", **options)
    assert tune_step(again).get("cached") is True  # the same model built again: its measurements hold

    real_load = tuning.load_cached
    monkeypatch.setattr(tuning, "load_cached", lambda key: {**real_load(key), "artifact": "another model"})
    third = edgemill.compile(sensitive["model"], output=tmp_path / "c.emp", **options)
    assert not tune_step(third).get("cached")
    assert any("built to a different model than the one measured" in w for w in third.report["warnings"])
