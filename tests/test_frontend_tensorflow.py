"""The TensorFlow frontends (SavedModel, Keras .keras/.h5, TFLite) turn real trained models into packages whose
outputs match TensorFlow's own on held-out data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.compiler.frontends import choose
from edgemill.errors import ModelFormatError, OptionError

from .conftest import run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")
datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.slow


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / np.abs(b.astype(np.float64)).max())


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # (n, 8, 8, 1), NHWC as Keras wants it
    return x[:1500], d.target[:1500], x[1500:]


@pytest.fixture(scope="module")
def saved(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small conv classifier trained briefly on digits, saved in every format the frontends read."""
    x, y, x_test = digits
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    net.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(x, y, epochs=3, batch_size=64, verbose=0)
    d = tmp_path_factory.mktemp("tf")
    net.save(d / "digits.keras")
    net.save(d / "digits.h5")
    net.export(str(d / "saved_model"), verbose=False)
    (d / "digits.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
    q = tf.lite.TFLiteConverter.from_keras_model(net)
    q.optimizations = [tf.lite.Optimize.DEFAULT]
    q.representative_dataset = lambda: ([x[i:i + 1]] for i in range(200))
    q.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    q.inference_input_type = q.inference_output_type = tf.int8
    (d / "digits_int8.tflite").write_bytes(q.convert())
    return {"dir": d, "reference": net.predict(x_test, verbose=0), "x_test": x_test}


def tflite_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """What the TFLite interpreter itself computes, one sample at a time (its input is fixed at batch 1)."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], x[i:i + 1])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"]))
    return np.concatenate(rows)


def compiled_outputs(model: Path, out: Path, x: np.ndarray, **options: Any) -> tuple[np.ndarray, Any]:
    result = edgemill.compile(model, output=out, measure=False, **options)
    package = rt.load(result.path)
    (name,) = [i.name for i in package.inputs]
    (y,) = package.run({name: x}).values()
    return y, package


@pytest.mark.parametrize(("file", "framework"), [
    ("digits.keras", "keras"),
    ("digits.h5", "keras"),
    ("saved_model", "tensorflow"),
    ("digits.tflite", "tflite"),
])
def test_trained_model_matches_tensorflow(saved: dict[str, Any], tmp_path: Path, file: str, framework: str) -> None:
    path = saved["dir"] / file
    assert choose(path, None).name == framework
    x = saved["x_test"]
    reference = tflite_outputs(path, x) if framework == "tflite" else saved["reference"]
    y, package = compiled_outputs(path, tmp_path / "m.emp", x)
    assert package.inputs[0].name == "image"
    assert package.manifest.source["framework"] == "tensorflow"
    assert rel_error(y, reference) <= 1e-4
    assert (y.argmax(1) == reference.argmax(1)).all()


def test_int8_tflite_matches_the_interpreter(saved: dict[str, Any], tmp_path: Path) -> None:
    path = saved["dir"] / "digits_int8.tflite"
    x = saved["x_test"]
    interpreter = tf.lite.Interpreter(model_path=str(path))
    scale, zero = interpreter.get_input_details()[0]["quantization"]
    xq = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    reference = tflite_outputs(path, xq)
    y, package = compiled_outputs(path, tmp_path / "q.emp", xq)
    assert package.inputs[0].dtype == "int8" and y.dtype == np.int8
    assert package.manifest.source["quantized"] is True
    # The gate compares with the TFLite interpreter itself: onnxruntime rounding a requantization one step
    # away is rejected, and LiteRT running the .tflite as it is is exact.
    np.testing.assert_array_equal(y, reference)
    assert "TFLite interpreter" in package.manifest.accuracy["reference"]


def test_input_shape_from_the_command_line_is_the_signature(saved: dict[str, Any], tmp_path: Path) -> None:
    x = saved["x_test"][:1]
    y, package = compiled_outputs(saved["dir"] / "saved_model", tmp_path / "m.emp", x, inputs=["image:1x8x8x1"])
    assert package.inputs[0].shape == (1, 8, 8, 1)
    assert rel_error(y, saved["reference"][:1]) <= 1e-4


def test_input_override_with_an_unknown_name_is_refused(saved: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="'image'"):
        edgemill.compile(saved["dir"] / "digits.keras", output=tmp_path / "m.emp", measure=False,
                         inputs=["pixels:1x8x8x1"])


def test_op_tf2onnx_cannot_map_is_named(tmp_path: Path) -> None:
    class Gamma(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x: Any) -> Any:
            return {"y": tf.math.lgamma(x) + 1.0}

    module = Gamma()
    tf.saved_model.save(module, str(tmp_path / "gamma"), signatures=module.__call__)
    with pytest.raises(ModelFormatError, match="Lgamma") as err:
        edgemill.compile(tmp_path / "gamma", output=tmp_path / "g.emp", measure=False)
    assert err.value.fix


def test_detection_tells_the_formats_apart(saved: dict[str, Any], tmp_path: Path) -> None:
    d = saved["dir"]
    assert choose(d / "digits_int8.tflite", None).name == "tflite"
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelFormatError):
        choose(tmp_path / "empty_dir", None)


def test_wrong_framework_is_one_clear_line(tmp_path: Path, saved: dict[str, Any]) -> None:
    result = run_cli("compile", saved["dir"] / "digits.tflite", "--framework", "keras", "-o", tmp_path / "x.emp")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    lines = [ln for ln in result.err.splitlines() if ln.startswith("edgemill:")]
    assert len(lines) == 1 and "not a Keras model" in lines[0], result.err
    assert not (tmp_path / "x.emp").exists()
