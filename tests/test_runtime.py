"""The light runtime: what it imports, how it checks inputs, how it treats threads and CPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.errors import BackendError, InputMismatchError
from edgemill.runtime.validate import InputChecker
from edgemill.tensors import TensorSpec


def test_runtime_imports_neither_torch_tensorflow_nor_onnx(packages: dict) -> None:
    code = (
        "import sys, json, numpy as np, edgemill.runtime as rt\n"
        f"m = rt.load({str(packages['mlp'])!r})\n"
        "m.run({'features': np.zeros((1, 64), np.float32)})\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"torch", "tensorflow", "onnx", "keras", "jax"}, loaded & {"torch", "tensorflow", "onnx"}


def test_model_exposes_specs_and_metadata(packages: dict) -> None:
    model = rt.load(packages["cnn"], threads=1)
    assert model.inputs == [TensorSpec("image", "float32", (1, 3, 32, 32))]
    assert model.outputs == [TensorSpec("logits", "float32", (1, 10))]
    assert model.name == "cnn" and model.version == "0.1.0" and len(model.package_id) == 64
    assert "cnn" in repr(model)


def test_lists_are_converted_but_wrong_dtype_arrays_are_not(packages: dict) -> None:
    model = rt.load(packages["mlp"])
    assert model.run({"features": [[0.0] * 64]})["logits"].shape == (1, 10)
    with pytest.raises(InputMismatchError, match="astype"):
        model.run({"features": np.zeros((1, 64), np.int32)})


def test_inputs_must_be_a_dict(packages: dict) -> None:
    with pytest.raises(InputMismatchError, match="dict"):
        rt.load(packages["mlp"]).run(np.zeros((1, 64), np.float32))  # type: ignore[arg-type]


def test_missing_input_is_named() -> None:
    checker = InputChecker([TensorSpec("a", "float32", (1,)), TensorSpec("b", "float32", (1,))])
    with pytest.raises(InputMismatchError, match="missing input: 'b'"):
        checker.check({"a": np.zeros(1, np.float32)})


def test_shared_symbolic_dimension_must_agree() -> None:
    checker = InputChecker([TensorSpec("a", "float32", ("n", 2)), TensorSpec("b", "float32", ("n", 3))])
    checker.check({"a": np.zeros((4, 2), np.float32), "b": np.zeros((4, 3), np.float32)})
    with pytest.raises(InputMismatchError, match="disagrees on dimension 'n'"):
        checker.check({"a": np.zeros((4, 2), np.float32), "b": np.zeros((5, 3), np.float32)})


def test_concurrent_runs_give_the_same_answers(packages: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = rt.load(packages["mlp"])
    feeds = [{"features": np.full((1, 64), i / 10, np.float32)} for i in range(16)]
    serial = [model.run(f)["logits"] for f in feeds]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda f: model.run(f)["logits"], feeds))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_host_package_is_refused_on_a_cpu_without_its_features(packages: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemill import targets

    manifest = rt.load(packages["mlp"]).manifest
    if not manifest.backend_options.get("requires_cpu_features"):
        pytest.skip("this machine reports no CPU features to require")
    poorer = targets.Target("host", "x86_64", "linux", "old CPU", cpu_features=("sse4_2",))
    monkeypatch.setattr("edgemill.runtime.session.host", lambda: poorer)
    with pytest.raises(BackendError, match="portable target"):
        rt.load(packages["mlp"])


def test_load_with_trusted_keys_given_as_bytes(packages: dict, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from edgemill.package import sign_package

    pkg = tmp_path / "m.emp"
    shutil.copy(packages["mlp"], pkg)
    sign_package(pkg, keypair[0])
    assert rt.load(pkg, trusted_keys=[keypair[1].read_bytes()]).signed_by


def test_fast_path_still_catches_a_wrong_static_axis_on_a_dynamic_batch(packages: dict) -> None:
    model = rt.load(packages["dynamic_batch"])
    with pytest.raises(InputMismatchError, match="axis 1 must be 64"):
        model.run({"features": np.zeros((5, 63), np.float32)})
    with pytest.raises(InputMismatchError, match="wrong rank"):
        model.run({"features": np.zeros((5, 64, 1), np.float32)})
