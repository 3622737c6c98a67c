"""Compiling ONNX models: outputs match onnxruntime on the original, ids are stable, targets work."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.package import open_package

from .conftest import MODELS, random_feed, run_cli


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_package_matches_onnxruntime_on_the_original(name: str, model_dir: Path, packages: dict) -> None:
    original = onnx.load(str(model_dir / f"{name}.onnx"))
    reference = ort.InferenceSession(str(model_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    model = rt.load(packages[name])
    for seed in range(3):
        feed = random_feed(original, batch=4, seed=seed)
        want = reference.run(None, feed)
        got = model.run(feed)
        for spec, expected in zip(model.outputs, want):
            assert max_relative_error(got[spec.name], expected) <= 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_edgemill_run_cli_matches_onnxruntime(name: str, model_dir: Path, packages: dict, tmp_path: Path) -> None:
    original = onnx.load(str(model_dir / f"{name}.onnx"))
    feed = random_feed(original, batch=2, seed=7)
    np.savez(tmp_path / "in.npz", **feed)
    result = run_cli("run", packages[name], "-i", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert result.code == 0, result.err
    want = ort.InferenceSession(str(model_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
    with np.load(tmp_path / "out.npz") as got:
        assert max_relative_error(got[original.graph.output[0].name], want[0]) <= 1e-5


def test_dynamic_batch_stays_dynamic(packages: dict) -> None:
    model = rt.load(packages["dynamic_batch"])
    assert model.inputs[0].shape == ("batch", 64)
    for batch in (1, 5, 32):
        out = model.run({"features": np.ones((batch, 64), np.float32)})
        assert out["logits"].shape == (batch, 10)


def test_input_shape_can_be_fixed_at_compile(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "dynamic_batch.onnx", output=tmp_path / "fixed.emp",
                              inputs=["features:8x64:float32"], measure=False)
    model = rt.load(result.path)
    assert model.inputs[0].shape == (8, 64)
    assert model.outputs[0].shape == (8, 10)
    assert model.run({"features": np.ones((8, 64), np.float32)})["logits"].shape == (8, 10)


def test_same_model_compiled_twice_has_the_same_id(model_dir: Path, tmp_path: Path) -> None:
    a = edgemill.compile(model_dir / "cnn.onnx", output=tmp_path / "a.emp")
    b = edgemill.compile(model_dir / "cnn.onnx", output=tmp_path / "b")  # directory form, latency measured again
    assert a.package_id == b.package_id
    assert a.manifest.to_dict()["files"] == b.manifest.to_dict()["files"]


@pytest.mark.parametrize("backend,precision", [
    ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
    pytest.param("openvino", "fp32", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                              reason="OpenVINO is not installed")),
    pytest.param("openvino", "int8", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                              reason="OpenVINO is not installed")),
])
def test_every_backend_writes_the_same_bytes_for_the_same_model(backend: str, precision: str, model_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Whichever candidate tuning picks, the package id depends only on the model and the options: in one
    process too, where OpenVINO numbers the operators it names with a counter that keeps counting."""
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, image=np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32))
    extra = {"calibration": calibration, "max_accuracy_drop": 0.5} if precision == "int8" else {}
    ids = [edgemill.compile(model_dir / "cnn.onnx", output=tmp_path / f"{n}.emp", backend=backend,
                            precision=precision, measure=False, **extra).package_id for n in range(2)]
    assert ids[0] == ids[1]


def test_different_options_give_a_different_id(model_dir: Path, tmp_path: Path) -> None:
    a = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "a.emp", measure=False)
    b = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "b.emp", measure=False, version="0.2.0")
    assert a.package_id != b.package_id


def test_optimizations_are_saved_into_the_package(model_dir: Path, packages: dict) -> None:
    original_nodes = len(onnx.load(str(model_dir / "cnn.onnx")).graph.node)
    with open_package(packages["cnn"]) as reader:
        compiled = onnx.load_from_string(reader.read("model/model.onnx"))
        report = json.loads(reader.read("report.json"))
    assert len(compiled.graph.node) < original_nodes  # BatchNormalization folded into Conv, etc.
    assert not any(n.op_type == "BatchNormalization" for n in compiled.graph.node)
    step = next(s for s in report["steps"] if s["step"] == "ort_optimize")
    assert step["nodes_before"] == original_nodes and step["nodes_after"] == len(compiled.graph.node)


def test_report_records_accuracy_and_latency(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "m.emp")
    assert result.report["accuracy"]["value"] <= 1e-5
    assert result.report["latency"]["compiled_p50_ms"] > 0
    assert result.manifest.accuracy["metric"] == "max_relative_error"


def test_manifest_describes_the_package(packages: dict) -> None:
    manifest = rt.load(packages["cnn"]).manifest.to_dict()
    assert manifest["format"] == "edgemill.package/1"
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    assert manifest["source"]["framework"] == "onnx" and len(manifest["source"]["sha256"]) == 64
    assert manifest["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 3, 32, 32]}]
    assert set(manifest["files"]) == {"model/model.onnx", "monitoring/baseline.json"}  # the drift baseline
    assert manifest["lineage"] == [f"source:sha256:{manifest['source']['sha256']}"]


@pytest.mark.parametrize("target", ["aarch64", "jetson", "x86_64-avx2"])
def test_packages_for_other_targets_leave_layouts_to_the_device_and_run_here(target: str, model_dir: Path, tmp_path: Path) -> None:
    # onnxruntime's layout choices are what is checked. x86_64-avx2 does run here (any AVX2 host), so its
    # compile measures backends and may package OpenVINO when that wins on this machine at this moment.
    result = edgemill.compile(model_dir / "cnn.onnx", target=target, output=tmp_path / f"{target}.emp",
                              backend="onnxruntime")
    assert result.manifest.target["name"] == target
    assert result.manifest.backend_options["load_optimization"] == "all"  # layouts left to the device
    assert "requires_cpu_features" not in result.manifest.backend_options
    # The portable package still runs here (same CPU execution provider, standard or CPU-fused ops).
    feed = random_feed(onnx.load(str(model_dir / "cnn.onnx")))
    want = ort.InferenceSession(str(model_dir / "cnn.onnx")).run(None, feed)[0]
    assert max_relative_error(rt.load(result.path).run(feed)["logits"], want) <= 1e-5


def test_accelerator_targets_keep_standard_onnx_ops(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "cnn.onnx", target="jetson", output=tmp_path / "j.emp", measure=False)
    with open_package(result.path) as reader:
        compiled = onnx.load_from_string(reader.read("model/model.onnx"))
    assert all(n.domain in ("", "ai.onnx") for n in compiled.graph.node)


def test_reference_backend_runs_the_same_model(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "ref.emp", backend="reference", measure=False)
    model = rt.load(result.path)
    assert model.backend == "reference"
    feed = random_feed(onnx.load(str(model_dir / "mlp.onnx")))
    want = ort.InferenceSession(str(model_dir / "mlp.onnx")).run(None, feed)[0]
    assert max_relative_error(model.run(feed)["logits"], want) <= 1e-5


def test_package_can_be_a_directory(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "pkgdir", measure=False)
    assert (result.path / "manifest.json").is_file() and (result.path / "model" / "model.onnx").is_file()
    assert rt.load(result.path).run({"features": np.zeros((1, 64), np.float32)})["logits"].shape == (1, 10)


def test_emp_is_an_uncompressed_tar_with_the_documented_layout(packages: dict) -> None:
    with tarfile.open(packages["mlp"], "r:") as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "model/model.onnx", "monitoring/baseline.json", "report.json"]


def test_validation_file_supplies_the_check_inputs(model_dir: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "val.npz", features=np.ones((3, 64), np.float32))
    result = edgemill.compile(model_dir / "dynamic_batch.onnx", output=tmp_path / "v.emp",
                              validation=tmp_path / "val.npz", measure=False)
    assert result.manifest.accuracy["inputs"].startswith("validation file sha256:")


def test_compile_cli_prints_progress_and_result(model_dir: Path, tmp_path: Path) -> None:
    result = run_cli("compile", model_dir / "mlp.onnx", "-o", tmp_path / "m.emp", "--explain")
    assert result.code == 0, result.err
    assert "ort_optimize" in result.err and "max relative error" in result.err and "tune" in result.err
    assert str(tmp_path / "m.emp") in result.out


def test_compile_cli_json(model_dir: Path, tmp_path: Path) -> None:
    result = run_cli("compile", model_dir / "mlp.onnx", "-o", tmp_path / "m.emp", "--json", "--no-measure")
    assert result.code == 0
    data = json.loads(result.out)
    assert data["package_id"] == data["report"]["package_id"]


@pytest.mark.parametrize("target", ["host", "x86_64-avx2"])
@pytest.mark.parametrize("name", ["cnn", "encoder"])
def test_ids_repeat_within_one_process(name: str, target: str, model_dir: Path, tmp_path: Path) -> None:
    # onnxruntime names rewritten nodes from a process-wide counter; the id must not depend on it.
    ids = {edgemill.compile(model_dir / f"{name}.onnx", target=target, output=tmp_path / f"{i}.emp",
                            measure=False).package_id for i in range(3)}
    assert len(ids) == 1
