"""The transformer-fusion candidate: onnxruntime's transformer optimizer, gated like every candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgemill
from edgemill.compiler.lowering import transformer_fusion

D, T = 32, 8
LABEL = "onnxruntime/fp32 (transformer-fused)"


def feed_forward_block(path: Path) -> Path:
    """A transformer's feed-forward block: x -> MatMul+bias -> exact GELU (Erf) -> MatMul+bias -> + x ->
    LayerNormalization. The optimizer fuses bias+GELU and the residual add + layer norm."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    consts = [numpy_helper.from_array(np.array(v, dtype=np.float32), n)
              for n, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
    weights = [init("w1", D, 4 * D), init("b1", 4 * D), init("w2", 4 * D, D), init("b2", D), init("gamma", D),
               init("beta", D)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="ff1"),
        helper.make_node("Add", ["m1", "b1"], ["h"], name="ff1_bias"),
        helper.make_node("Div", ["h", "sqrt2"], ["hd"], name="gelu_div"),
        helper.make_node("Erf", ["hd"], ["he"], name="gelu_erf"),
        helper.make_node("Add", ["he", "one"], ["hp"], name="gelu_add"),
        helper.make_node("Mul", ["h", "hp"], ["hm"], name="gelu_mul"),
        helper.make_node("Mul", ["hm", "half"], ["g"], name="gelu_half"),
        helper.make_node("MatMul", ["g", "w2"], ["m2"], name="ff2"),
        helper.make_node("Add", ["m2", "b2"], ["o"], name="ff2_bias"),
        helper.make_node("Add", ["o", "x"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], name="norm", axis=-1, epsilon=1e-5),
    ]
    graph = helper.make_graph(nodes, "ff_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])], weights + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def candidate(report: dict, label: str) -> dict:
    return next(c for c in report["candidates"] if c["candidate"] == label)


def fusion_step(report: dict) -> dict:
    return next(s for s in report["steps"] if s["step"] == "transformer_fusion")


def test_only_transformer_graphs_get_the_candidate(tmp_path: Path, model_dir: Path) -> None:
    assert transformer_fusion.looks_like_transformer(onnx.load(feed_forward_block(tmp_path / "ff.onnx")))
    assert not transformer_fusion.looks_like_transformer(onnx.load(model_dir / "cnn.onnx"))


def test_the_fused_candidate_passes_the_lossless_gate_and_is_measured(tmp_path: Path) -> None:
    model = feed_forward_block(tmp_path / "ff.onnx")
    result = edgemill.compile(model, output=tmp_path / "ff.emp", precision="fp32", backend="onnxruntime",
                              tune_budget=8)
    fused = candidate(result.report, LABEL)
    assert fused["passed"] and fused["p50_ms"] > 0
    step = fusion_step(result.report)
    assert step["notes"]["transformer_fusions"] == {"BiasGelu": 1, "SkipLayerNormalization": 1}
    assert step["gate"]["max_relative_error"] <= 1e-4


def test_a_fusion_that_changes_the_answer_is_rejected_and_the_compile_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fuse = transformer_fusion.fuse

    def wrong_fuse(model: onnx.ModelProto, notes: dict) -> onnx.ModelProto:
        fused = real_fuse(model, notes)
        for tensor in fused.graph.initializer:
            if tensor.name == "w2":  # a fusion bug: a weight off by 1 %
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 1.01, "w2"))
        return fused

    monkeypatch.setattr(transformer_fusion, "fuse", wrong_fuse)
    model = feed_forward_block(tmp_path / "ff.onnx")
    result = edgemill.compile(model, output=tmp_path / "ff.emp", precision="fp32", backend="onnxruntime",
                              tune_budget=8)
    fused = candidate(result.report, LABEL)
    assert fused["passed"] is False and result.report["chosen"]["candidate"] != LABEL
    assert "rejected" in fusion_step(result.report)["summary"]


def test_a_graph_with_nothing_to_fuse_fails_the_candidate_with_the_reason(model_dir: Path) -> None:
    with pytest.raises(edgemill.errors.BackendError, match="no attention, skip-layer-norm or GELU"):
        transformer_fusion.fuse(onnx.load(model_dir / "cnn.onnx"), {})


def test_a_cached_winner_that_no_longer_passes_is_tuned_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemill.compiler import tuning

    real_fuse = transformer_fusion.fuse

    def wrong_fuse(model: onnx.ModelProto, notes: dict) -> onnx.ModelProto:
        fused = real_fuse(model, notes)
        for tensor in fused.graph.initializer:
            if tensor.name == "gamma":  # a regression: the norm's scale doubled
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2, "gamma"))
        return fused

    monkeypatch.setattr(transformer_fusion, "fuse", wrong_fuse)
    monkeypatch.setattr(tuning, "load_cached", lambda key: {"chosen": {"candidate": LABEL}})
    result = edgemill.compile(feed_forward_block(tmp_path / "ff.onnx"), output=tmp_path / "ff.emp", precision="fp32",
                              backend="onnxruntime", tune_budget=8)
    assert result.report["chosen"]["candidate"] == "onnxruntime/fp32 (optimized)"
    assert any("no longer passes the gate" in w for w in result.report["warnings"]), result.report["warnings"]
