"""Static INT8 judged on the kernels that run it: one calibration, one verdict per kind of kernels.

onnxruntime's and OpenVINO's INT8 kernels round differently, so a QDQ model can pass the gate on one
and miss it on the other: each candidate's model must be judged (and searched) as that candidate runs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

import edgemill
from edgemill.compiler.context import CompileContext, QuantizedJudge, SourceInfo
from edgemill.compiler.lowering.static_int8 import StaticInt8
from edgemill.targets import get_target

from .test_mixed_precision import SENSITIVE, WIDTH, one_sensitive_layer


@dataclass
class Verdict:
    passed: bool
    drop: float


def in_int8(model: onnx.ModelProto) -> set[str]:
    """The MatMuls whose weights are INT8 (read through a DequantizeLinear)."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in dequantized}


def judge_keeping(*fp32: str, calls: list[str], name: str):  # noqa: ANN201 - a test double
    """Kernels on which a model passes once every ``fp32`` operator is out of INT8."""
    def evaluate(model: onnx.ModelProto) -> Verdict:
        calls.append(name)
        passed = not (set(fp32) & in_int8(model))
        return Verdict(passed, 0.0 if passed else 0.5)
    return evaluate


@pytest.fixture()
def quantizer(tmp_path: Path):  # noqa: ANN201
    model = onnx.load(one_sensitive_layer(tmp_path / "sensitive.onnx"))
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, 1, WIDTH)).astype(np.float32)} for _ in range(16)]
    calls: list[str] = []
    judges = {
        "lenient": judge_keeping(calls=calls, name="lenient"),
        "ort": judge_keeping(SENSITIVE, calls=calls, name="ort"),
        "like-ort": judge_keeping(SENSITIVE, calls=calls, name="like-ort"),
        "strict": judge_keeping(SENSITIVE, "second_matmul", calls=calls, name="strict"),
        "like-strict": judge_keeping(SENSITIVE, "second_matmul", calls=calls, name="like-strict"),
    }
    options = SimpleNamespace(calibration_method="minmax", mixed_precision=True, tune_budget=30.0)
    ctx = CompileContext(options=options, target=get_target("host"),  # type: ignore[arg-type]
                         source=SourceInfo("onnx", "", "sensitive.onnx", ""), original=model)
    ctx.calibration = feeds
    ctx.int8_judge = lambda label: QuantizedJudge(judges[label], feeds) if label in judges else None
    static = StaticInt8(model, ctx)
    yield static, ctx, calls
    static.close()


def searches(ctx: CompileContext) -> list[dict]:
    return [s for s in ctx.steps if s["step"] == "mixed_precision"]


def test_a_model_that_passes_on_these_kernels_is_the_fully_quantized_one(quantizer) -> None:  # noqa: ANN001
    static, ctx, calls = quantizer
    notes: dict = {}
    model = static.for_kernels("lenient", notes)
    assert model is static.full and "mixed_precision" not in notes and notes["calibration_method"] == "minmax"
    assert calls == ["lenient"] and searches(ctx) == []
    assert static.for_kernels("unplanned", {}) is static.full  # no judge: the all-or-nothing gate decides


def test_each_kernels_get_their_own_search_and_reuse_one_that_passes_on_them(quantizer) -> None:  # noqa: ANN001
    static, ctx, calls = quantizer
    ort_notes: dict = {}
    ort_model = static.for_kernels("ort", ort_notes)
    assert SENSITIVE not in in_int8(ort_model) and "second_matmul" in in_int8(ort_model)
    assert ort_notes["mixed_precision"]["judged_on"] == "ort"
    assert [layer["name"] for layer in ort_notes["mixed_precision"]["fp32_layers"]] == [SENSITIVE]

    # Kernels on which onnxruntime's mixed model passes too: no second search, the same model.
    calls.clear()
    like_notes: dict = {}
    assert static.for_kernels("like-ort", like_notes) is ort_model
    assert calls == ["like-ort", "like-ort"] and len(searches(ctx)) == 1  # the full model, then the mixed one
    assert like_notes["mixed_precision"]["also_passes_on"] == "like-ort"

    # Kernels on which it misses: a search judged on them, which keeps one operator more in FP32.
    strict_notes: dict = {}
    strict_model = static.for_kernels("strict", strict_notes)
    assert not {SENSITIVE, "second_matmul"} & in_int8(strict_model)
    assert {"first_matmul", "last_matmul"} <= in_int8(strict_model)  # the rest stays INT8
    assert strict_notes["mixed_precision"]["judged_on"] == "strict" and len(searches(ctx)) == 2
    assert "on strict" in searches(ctx)[-1]["summary"] or searches(ctx)[-1]["judged_on"] == "strict"

    # Asked again (the bf16 and f32 OpenVINO candidates share nothing else): the verdict is remembered.
    calls.clear()
    assert static.for_kernels("strict", {}) is strict_model and calls == []


def test_a_later_search_starts_where_the_first_found_a_pass(quantizer) -> None:  # noqa: ANN001
    static, ctx, _ = quantizer
    ctx.int8_kernels = ("ort", "strict")
    static.for_kernels("ort", {})
    first = searches(ctx)[0]
    assert first["started_at"] == 1 and first["passing_prefix"] == 1
    strict_notes: dict = {}
    static.for_kernels("strict", strict_notes)
    second = strict_notes["mixed_precision"]
    assert second["started_at"] == first["passing_prefix"] and second["passed"]


def test_pruning_leaves_a_share_of_the_budget_to_the_kernels_judged_later(quantizer, monkeypatch) -> None:  # noqa: ANN001
    from edgemill.compiler import mixed_precision

    static, ctx, _ = quantizer
    ctx.int8_kernels = ("ort", "like-ort", "strict")
    shares: list[float] = []
    real_search = mixed_precision.search

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        shares.append(kwargs["prune_time_left"]() / args[3]())
        return real_search(*args, **kwargs)

    monkeypatch.setattr(mixed_precision, "search", recording)
    static.for_kernels("ort", {})  # two kernels still to judge: pruning may use a third of the time left
    static.for_kernels("like-ort", {})  # passes on onnxruntime's mixed model: no search
    static.for_kernels("strict", {})  # the last: all of it
    assert shares == [pytest.approx(1 / 3, abs=0.02), pytest.approx(1.0)]


def test_kernels_that_pass_a_model_whose_pruning_was_cut_short_go_on_pruning_it(quantizer, monkeypatch) -> None:  # noqa: ANN001
    from edgemill.compiler import mixed_precision

    static, ctx, calls = quantizer
    ctx.int8_kernels = ("strict", "like-strict")
    real_search = mixed_precision.search
    first_call = [True]

    def share_spent_at_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if first_call.pop() if first_call else False:  # the first search gets no time to prune
            kwargs["prune_time_left"] = lambda: 0.0
        return real_search(*args, **kwargs)

    monkeypatch.setattr(mixed_precision, "search", share_spent_at_first)
    first_notes: dict = {}
    first_model = static.for_kernels("strict", first_notes)
    first = first_notes["mixed_precision"]
    assert first["pruning_cut_short"] and first["passed"] and len(first["fp32_layers"]) > 2, first

    later_notes: dict = {}
    later_model = static.for_kernels("like-strict", later_notes)
    later = later_notes["mixed_precision"]
    assert later["seeded"] and later["pruned_from"] == "strict" and later["started_at"] == len(first["fp32_layers"])
    assert {layer["name"] for layer in later["fp32_layers"]} == {SENSITIVE, "second_matmul"}
    assert later_model is not first_model and {"first_matmul", "last_matmul"} <= in_int8(later_model)
    assert "pruning stopped" not in later["summary"] and "2 of" in later["summary"]


def test_all_searches_of_a_compile_share_one_budget(quantizer) -> None:  # noqa: ANN001
    static, ctx, _ = quantizer
    ctx.options.tune_budget = 0.0  # spent before the first point: every search stops and says so
    notes: dict = {}
    assert static.for_kernels("ort", notes) is static.full
    assert notes["mixed_precision"]["stopped_by_budget"] and not notes["mixed_precision"]["passed"]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_an_openvino_int8_candidate_is_searched_on_openvino(tmp_path: Path) -> None:
    """End to end: the one sensitive layer is found by a search judged on OpenVINO's own kernels."""
    rng = np.random.default_rng(1)
    model = one_sensitive_layer(tmp_path / "sensitive.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.normal(size=(64, 1, WIDTH)).astype(np.float32))
    result = edgemill.compile(model, output=tmp_path / "m.emp", precision="int8", backend="openvino",
                              calibration=calib, validation=calib, max_accuracy_drop=0.05, measure=False)
    step = next(s for s in result.report["steps"] if s["step"] == "openvino_quantize_int8")
    mixed = step["notes"]["mixed_precision"]
    assert mixed["judged_on"] == "openvino/int8 (static-qdq)" and mixed["passed"]
    assert [layer["name"] for layer in mixed["fp32_layers"]] == [SENSITIVE]
    assert step["gate"]["passed"] and result.manifest.backend == "openvino"


def test_the_gate_runs_an_artifact_once_however_often_it_is_judged() -> None:
    """The verdict judges the INT8 model on its kernels; the candidate then built from it is the same
    artifact, and the gate reuses those outputs instead of running it again."""
    from edgemill.compiler.candidates import gate_run
    from edgemill.compiler.lowering import Artifact, Candidate

    runs: list[bytes] = []

    class Counting:
        def run(self, artifact, output_names, threads, feeds):  # noqa: ANN001, ANN201
            runs.append(artifact.files["model.onnx"])
            return [[np.zeros(1)] for _ in feeds]

    ctx = CompileContext(options=SimpleNamespace(check_threads=None), target=get_target("host"),  # type: ignore[arg-type]
                         source=SourceInfo("onnx", "1", "m.onnx", "0"), original=None)
    ctx.gate_runner = Counting()  # type: ignore[assignment]
    feeds = [{"x": np.zeros(1)}]
    candidate = Candidate("onnxruntime", "int8", "static-qdq")

    def artifact(data: bytes) -> Artifact:
        return Artifact(candidate, "model.onnx", {"model.onnx": data}, {"load_optimization": "all"})

    first = gate_run(ctx, artifact(b"int8"), ["y"], feeds)
    assert gate_run(ctx, artifact(b"int8"), ["y"], feeds) is first  # built again, same bytes: not run again
    gate_run(ctx, artifact(b"mixed"), ["y"], feeds)
    gate_run(ctx, artifact(b"int8"), ["y"], [{"x": np.ones(1)}])  # other feeds: run
    assert runs == [b"int8", b"mixed", b"int8"]
