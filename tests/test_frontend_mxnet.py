"""The MXNet frontend reads an exported -symbol.json + .params without MXNet.

Two kinds of tests: files written here byte by byte (the format, bad input, a small net checked
against NumPy) that run everywhere, and models built and trained with MXNet itself in its own
environment (mxnet 1.9.1 needs numpy<1.24), whose outputs the compiled packages must match. The
second kind is skipped unless that environment exists: ``.ci/run`` makes it at ``.venv-mxnet``, or
point ``EDGEMILL_MXNET_PYTHON`` at a Python that imports mxnet.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.compiler.frontends import choose
from edgemill.compiler.frontends.mxnet_params import read_params
from edgemill.errors import ModelFormatError, OptionError

from .conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = Path(__file__).resolve().parent / "mxnet_side" / "build_models.py"
TYPE_FLAG = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2, np.dtype("int32"): 4}


# --- writing MXNet files by hand --------------------------------------------------------------


def params_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes mx.nd.save writes for named arrays (V2 NDArray records)."""
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]
    for array in arrays.values():
        out.append(struct.pack("<Iii", 0xF993FAC9, 0, array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape))
        out.append(struct.pack("<iii", 1, 0, TYPE_FLAG[array.dtype]) + np.ascontiguousarray(array).tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        out.append(struct.pack("<Q", len(name)) + name.encode())
    return b"".join(out)


def variable(name: str) -> dict[str, Any]:
    return {"op": "null", "name": name, "inputs": []}


def write_mlp(folder: Path, rng: np.random.Generator, act: str = "relu", prefix: str = "mlp") -> dict[str, np.ndarray]:
    """data -> FullyConnected(8) -> Activation -> FullyConnected(3) -> softmax, as export() writes it."""
    nodes = [variable("data"), variable("fc1_weight"), variable("fc1_bias"),
             {"op": "FullyConnected", "name": "fc1", "attrs": {"num_hidden": "8"}, "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]},
             {"op": "Activation", "name": "act", "attrs": {"act_type": act}, "inputs": [[3, 0, 0]]},
             variable("fc2_weight"), variable("fc2_bias"),
             {"op": "FullyConnected", "name": "fc2", "attrs": {"num_hidden": "3"}, "inputs": [[4, 0, 0], [5, 0, 0], [6, 0, 0]]},
             {"op": "softmax", "name": "prob", "attrs": {"axis": "-1"}, "inputs": [[7, 0, 0]]}]
    symbol = {"nodes": nodes, "arg_nodes": [0, 1, 2, 5, 6], "heads": [[8, 0, 0]],
              "attrs": {"mxnet_version": ["int", 10901]}}
    weights = {"fc1_weight": rng.normal(size=(8, 4)).astype(np.float32), "fc1_bias": rng.normal(size=8).astype(np.float32),
               "fc2_weight": rng.normal(size=(3, 8)).astype(np.float32), "fc2_bias": rng.normal(size=3).astype(np.float32)}
    (folder / f"{prefix}-symbol.json").write_text(json.dumps(symbol))
    (folder / f"{prefix}-0000.params").write_bytes(params_bytes({f"arg:{k}": v for k, v in weights.items()}))
    return weights


def numpy_mlp(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ w["fc1_weight"].T + w["fc1_bias"], 0)
    z = h @ w["fc2_weight"].T + w["fc2_bias"]
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / np.abs(b.astype(np.float64)).max())


def run_package(path: Path, x: np.ndarray) -> tuple[np.ndarray, Any]:
    package = rt.load(path)
    (y,) = package.run({package.inputs[0].name: x}).values()
    return y, package


# --- the format, read without MXNet -----------------------------------------------------------


def test_params_reader_round_trips_names_shapes_and_dtypes(tmp_path: Path) -> None:
    arrays = {"arg:w": np.arange(6, dtype=np.float32).reshape(2, 3), "aux:running_var": np.ones(3, np.float16),
              "arg:idx": np.array([1, 2], np.int32)}
    (tmp_path / "p.params").write_bytes(params_bytes(arrays))
    params = read_params(tmp_path / "p.params")
    assert set(params.arrays) == {"w", "running_var", "idx"}
    np.testing.assert_array_equal(params.arrays["w"], arrays["arg:w"])
    assert params.arrays["running_var"].dtype == np.float32 and params.converted == {"running_var": "float16"}
    assert params.arrays["idx"].dtype == np.int32


def test_hand_written_mlp_matches_numpy_with_a_dynamic_batch(tmp_path: Path) -> None:
    weights = write_mlp(tmp_path, np.random.default_rng(0))
    result = edgemill.compile(tmp_path / "mlp-symbol.json", output=tmp_path / "m.emp", measure=False)
    x = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    y, package = run_package(result.path, x)
    # No --input: the input goes straight into FullyConnected, so its width comes from the weight.
    assert package.inputs[0].name == "data" and package.inputs[0].shape[1] == 4
    assert [o.name for o in package.outputs] == ["prob_output"]
    assert rel_error(y, numpy_mlp(weights, x)) <= 1e-5
    source = package.manifest.source
    assert source["framework"] == "mxnet" and source["framework_version"] == "1.9.1"
    assert source["params"] == "mlp-0000.params" and len(source["params_sha256"]) == 64


def test_either_file_or_the_folder_names_the_model(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0))
    for path in (tmp_path / "mlp-symbol.json", tmp_path / "mlp-0000.params", tmp_path):
        assert choose(path, None).name == "mxnet"


def test_changing_the_params_changes_the_model_id(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0))
    first = edgemill.compile(tmp_path / "mlp-symbol.json", output=tmp_path / "a.emp", measure=False)
    write_mlp(tmp_path, np.random.default_rng(1))
    second = edgemill.compile(tmp_path / "mlp-symbol.json", output=tmp_path / "b.emp", measure=False)
    assert first.manifest.source["sha256"] != second.manifest.source["sha256"]


# --- bad input --------------------------------------------------------------------------------


def test_truncated_params_names_the_array_and_sizes(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0))
    params = tmp_path / "mlp-0000.params"
    params.write_bytes(params.read_bytes()[:200])
    result = run_cli("compile", tmp_path / "mlp-symbol.json", "-o", tmp_path / "x.emp")
    assert result.code == 1 and "Traceback" not in result.err
    assert "ends early while reading array" in result.err and "bytes" in result.err, result.err
    assert not (tmp_path / "x.emp").exists()


def test_wrong_magic_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.params").write_bytes(b"\0" * 64)
    with pytest.raises(ModelFormatError, match="wrong magic"):
        read_params(tmp_path / "bad.params")


def test_unknown_operator_names_the_node_and_the_supported_list(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0))
    symbol_path = tmp_path / "mlp-symbol.json"
    symbol = json.loads(symbol_path.read_text())
    symbol["nodes"][4] = {"op": "SpatialTransformer", "name": "warp", "inputs": [[3, 0, 0]]}
    symbol_path.write_text(json.dumps(symbol))
    with pytest.raises(ModelFormatError, match="SpatialTransformer.*'warp'") as err:
        edgemill.compile(symbol_path, output=tmp_path / "x.emp", measure=False)
    assert "Convolution" in str(err.value.expected) and err.value.fix


def test_unsupported_attribute_value_is_named(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0), act="log_sigmoid")
    with pytest.raises(ModelFormatError, match="act_type") as err:
        edgemill.compile(tmp_path / "mlp-symbol.json", output=tmp_path / "x.emp", measure=False)
    assert err.value.value == "log_sigmoid"


def test_a_conv_input_without_a_shape_asks_for_input(tmp_path: Path) -> None:
    nodes = [variable("data"), variable("c_weight"),
             {"op": "Convolution", "name": "c", "attrs": {"kernel": "(3, 3)", "num_filter": "2", "no_bias": "True"},
              "inputs": [[0, 0, 0], [1, 0, 0]]}]
    (tmp_path / "conv-symbol.json").write_text(json.dumps({"nodes": nodes, "arg_nodes": [0, 1], "heads": [[2, 0, 0]]}))
    (tmp_path / "conv-0000.params").write_bytes(params_bytes({"arg:c_weight": np.ones((2, 1, 3, 3), np.float32)}))
    result = run_cli("compile", tmp_path / "conv-symbol.json", "-o", tmp_path / "x.emp")
    assert result.code == 1 and "Traceback" not in result.err
    assert "'data' needs a shape" in result.err and "--input data:" in result.err, result.err
    ok = edgemill.compile(tmp_path / "conv-symbol.json", output=tmp_path / "c.emp", measure=False,
                          inputs=["data:Nx1x6x6"])
    y, _ = run_package(ok.path, np.ones((2, 1, 6, 6), np.float32))
    assert y.shape == (2, 2, 4, 4) and np.allclose(y, 9.0)


def test_input_override_for_a_name_the_model_lacks(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0))
    with pytest.raises(OptionError, match="does not have"):
        edgemill.compile(tmp_path / "mlp-symbol.json", output=tmp_path / "x.emp", measure=False,
                         inputs=["image:1x4"])


def test_missing_partner_and_several_epochs(tmp_path: Path) -> None:
    write_mlp(tmp_path, np.random.default_rng(0))
    (tmp_path / "mlp-0001.params").write_bytes((tmp_path / "mlp-0000.params").read_bytes())
    with pytest.raises(ModelFormatError, match="several epochs") as err:
        edgemill.compile(tmp_path / "mlp-symbol.json", output=tmp_path / "x.emp", measure=False)
    assert "mlp-0001.params" in err.value.fix
    (tmp_path / "mlp-symbol.json").unlink()
    with pytest.raises(ModelFormatError, match="symbol.json is missing"):
        edgemill.compile(tmp_path / "mlp-0001.params", output=tmp_path / "x.emp", framework="mxnet", measure=False)


def test_json_that_is_not_a_symbol_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cfg-symbol.json").write_text('{"nodes": "op"}')
    (tmp_path / "cfg-0000.params").write_bytes(params_bytes({}))
    with pytest.raises(ModelFormatError, match="not an MXNet symbol"):
        edgemill.compile(tmp_path / "cfg-symbol.json", output=tmp_path / "x.emp", measure=False)


# --- models built and trained with MXNet ------------------------------------------------------


def mxnet_python() -> str | None:
    candidates = [os.environ.get("EDGEMILL_MXNET_PYTHON", ""), str(REPO / ".venv-mxnet" / "bin" / "python")]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def mxnet_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = mxnet_python()
    if python is None:
        pytest.skip("no MXNet environment: python3 -m venv .venv-mxnet && .venv-mxnet/bin/pip install "
                    "mxnet==1.9.1 'numpy<1.24' (or set EDGEMILL_MXNET_PYTHON)")
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    iris = datasets.load_iris()
    xi, xi_test, yi, yi_test = model_selection.train_test_split(
        iris.data.astype(np.float32), iris.target, test_size=0.3, random_state=0, stratify=iris.target)
    digits = datasets.load_digits()
    xd = (digits.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8, NCHW as MXNet wants it
    data = {"iris_x": xi, "iris_y": yi, "iris_test": xi_test, "digits_x": xd[:1500], "digits_y": digits.target[:1500],
            "digits_test": xd[1500:]}
    folder = tmp_path_factory.mktemp("mxnet")
    np.savez(folder / "data.npz", **data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([python, str(BUILD_SCRIPT), str(folder / "data.npz"), str(folder)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"building the MXNet models failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    reference = dict(np.load(folder / "reference.npz"))
    return {"dir": folder, "ref": reference, "iris": (xi_test, yi_test), "digits": (xd[1500:], digits.target[1500:]),
            "version": proc.stdout.split()[1]}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dataset", "inputs"), [
    ("iris_mlp", "iris", []),
    ("digits_cnn", "digits", ["data:Nx1x8x8"]),
    ("ops_symbol", "digits", ["data:Nx1x8x8"]),
])
def test_model_trained_in_mxnet_matches_mxnet(mxnet_models: dict[str, Any], tmp_path: Path, name: str, dataset: str,
                                              inputs: list[str]) -> None:
    x, labels = mxnet_models[dataset]
    reference = mxnet_models["ref"][name]
    result = edgemill.compile(mxnet_models["dir"] / f"{name}-symbol.json", output=tmp_path / "m.emp", measure=False,
                              inputs=inputs)
    y, package = run_package(result.path, x)
    assert package.manifest.source["framework_version"] == mxnet_models["version"]
    assert rel_error(y, reference) <= 1e-4
    assert (y.argmax(1) == reference.argmax(1)).all()
    if name != "ops_symbol":  # trained: same held-out accuracy, and it learned something
        accuracy = float((y.argmax(1) == labels).mean())
        assert accuracy == float((reference.argmax(1) == labels).mean())
        assert accuracy > 0.8, accuracy


@pytest.mark.slow
def test_mxnet_compile_from_the_cli(mxnet_models: dict[str, Any], tmp_path: Path) -> None:
    result = run_cli("compile", mxnet_models["dir"] / "digits_cnn-0000.params", "--input", "data:1x1x8x8",
                     "-o", tmp_path / "cnn.emp")
    assert result.code == 0, result.err
    y, _ = run_package(tmp_path / "cnn.emp", mxnet_models["digits"][0][:1])
    assert rel_error(y, mxnet_models["ref"]["digits_cnn"][:1]) <= 1e-4


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
