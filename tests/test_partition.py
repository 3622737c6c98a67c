"""Accelerator partitioning: partition.json in packages for accelerator targets, reasons for CPU nodes,
and subgraphs that never need a round trip through the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgemill
from edgemill.compiler.partition import _group, partition
from edgemill.package import open_package
from edgemill.targets import get_target

from .conftest import run_cli


def read_partition(path: Path) -> dict:
    with open_package(path) as reader:
        return json.loads(reader.read("partition.json"))


def test_jetson_package_carries_a_listed_partition(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "cnn.onnx", target="jetson", output=tmp_path / "j.emp")
    part = read_partition(result.path)
    assert "partition.json" in result.manifest.files  # hashed, so signed like the model
    assert part["accelerator"] == "tensorrt" and part["provider"] == "TensorrtExecutionProvider"
    assert part["on_accelerator"] == part["nodes"] and len(part["subgraphs"]) == 1 and part["cpu_nodes"] == []
    assert "operator table" in part["decided_by"]


def test_cpu_targets_have_no_partition(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "mlp.onnx", target="aarch64", output=tmp_path / "a.emp")
    assert "partition.json" not in result.manifest.files


def _model_with_an_unsupported_op_in_the_middle() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Hardmax", ["b"], ["c"], name="odd"),  # in no accelerator table
             helper.make_node("MatMul", ["c", "w"], ["d"], name="mm2"),
             helper.make_node("Relu", ["d"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_node_stays_on_the_cpu_with_its_reason() -> None:
    part = partition(_model_with_an_unsupported_op_in_the_middle(), get_target("jetson"))
    assert part is not None
    assert [n["node"] for n in part["cpu_nodes"]] == ["odd"]
    assert "Hardmax is not in the tensorrt operator table" in part["cpu_nodes"][0]["reason"]
    assert [s["nodes"] for s in part["subgraphs"]] == [["mm1", "relu1"], ["mm2", "relu2"]]


def test_static_shape_accelerators_name_the_dynamic_tensor_and_the_fix(model_dir: Path, tmp_path: Path) -> None:
    dynamic = edgemill.compile(model_dir / "dynamic_batch.onnx", target="intel-npu", output=tmp_path / "d.emp",
                               backend="onnxruntime")
    part = read_partition(dynamic.path)
    assert part["on_accelerator"] == 0 and "--input" in part["cpu_nodes"][0]["reason"]
    spec = dynamic.manifest.inputs[0]
    fixed = edgemill.compile(model_dir / "dynamic_batch.onnx", target="intel-npu", output=tmp_path / "s.emp",
                             backend="onnxruntime", inputs=[f"{spec.name}:2x{spec.shape[1]}"])
    assert read_partition(fixed.path)["on_cpu"] == 0


def test_groups_never_leave_the_device_and_come_back() -> None:
    # a -> b -> c and a -> c: a and c are joined by an edge, but b (CPU) sits between them on the other
    # path; one subgraph {a, c} would have to hand data to the CPU and wait for it.
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"),
             helper.make_node("Hardmax", ["a"], ["b"], name="b"),
             helper.make_node("Add", ["a", "b"], ["c"], name="c")]
    groups = _group(nodes, [True, False, True])
    assert groups == [[0], [2]]
    assert _group(nodes, [True, True, True]) == [[0, 1, 2]]


def test_explain_prints_the_partition(model_dir: Path, tmp_path: Path) -> None:
    result = run_cli("compile", model_dir / "cnn.onnx", "-t", "jetson", "-o", tmp_path / "j.emp", "--explain")
    assert result.code == 0, result.err
    assert "subgraph 0 on tensorrt" in result.err and "candidate onnxruntime/fp32" in result.err
    shown = run_cli("inspect", tmp_path / "j.emp")
    assert "subgraph 0 on tensorrt" in shown.out
