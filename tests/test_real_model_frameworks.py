"""What real published TFLite, Keras, SavedModel, TorchScript and tree models do that home-made ones did not,
one test per class (issue 14): a .tflite tf2onnx cannot convert runs on LiteRT, the gate compares with the
source framework's own outputs, source names and shapes are kept, TorchScript is recognised by content
and its scalar arguments bound, Keras 2 files and old SavedModels are read."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.errors import ModelFormatError, OptionError

from .conftest import run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# --- TFLite ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    pytest.importorskip("ai_edge_litert")
    d = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(0)
    # Mostly-zero weights stored sparse: TFLite adds a Densify op, which tf2onnx cannot convert.
    dense = keras.Sequential([keras.Input((64,), name="x"), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(8)])
    w = dense.layers[0].get_weights()
    dense.layers[0].set_weights([w[0] * (np.random.default_rng(0).random(w[0].shape) < 0.1), w[1]])
    sparse = tf.lite.TFLiteConverter.from_keras_model(dense)
    sparse.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    (d / "sparse.tflite").write_bytes(sparse.convert())

    # State kept between calls in resource variables (as micro-wakeword's ring buffers): tf2onnx fails on it.
    class Accumulate(tf.Module):
        def __init__(self) -> None:
            self.total = tf.Variable(tf.zeros([1, 4]))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def __call__(self, x: Any) -> Any:
            self.total.assign_add(x)
            return {"y": self.total * 2.0}

    acc = Accumulate()
    stateful = tf.lite.TFLiteConverter.from_concrete_functions([acc.__call__.get_concrete_function()], acc)
    stateful.experimental_enable_resource_variables = True
    (d / "stateful.tflite").write_bytes(stateful.convert())
    # Two named inputs, a dict of two named outputs: the signature's names are what applications use.
    feat, aux = keras.Input((8,), name="feat"), keras.Input((3,), name="aux")
    hidden = keras.layers.Dense(4, name="d")(feat)
    two = keras.Model([feat, aux], {"score": keras.layers.Concatenate()([hidden, aux]), "hidden": hidden})
    (d / "two.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(two).convert())
    return {"sparse": d / "sparse.tflite", "two": d / "two.tflite", "stateful": d / "stateful.tflite"}


def _interpreter_outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return runner(**feed)


def test_a_tflite_that_tf2onnx_cannot_convert_runs_on_litert_exactly(tflite_models: dict, tmp_path: Path) -> None:
    result = edgemill.compile(tflite_models["stateful"], output=tmp_path / "s.emp", measure=False)
    assert result.manifest.backend == "litert"
    assert any("not converted to ONNX" in w for w in result.report["warnings"])
    assert "TFLite interpreter" in result.manifest.accuracy["reference"]
    model = rt.load(result.path)
    x = np.ones((1, 4), np.float32)
    assert [model.run({"x": x})["y"][0, 0] for _ in range(3)] == [2.0, 4.0, 6.0]  # its state, kept as the source keeps it


def test_sparse_tflite_weights_are_densified_so_every_backend_competes(tflite_models: dict, tmp_path: Path) -> None:
    """TFLite stores mostly-zero weights sparse (a Densify op); tf2onnx could not read them."""
    result = edgemill.compile(tflite_models["sparse"], output=tmp_path / "s.emp", tune_budget=8)
    built = {c["candidate"]: c["status"] for c in result.report["candidates"]}
    assert built["onnxruntime/fp32 (optimized)"] == "passed" and built["litert/fp32 (native)"] == "passed"
    model = rt.load(result.path)
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    got = model.run({"x": x})
    want = _interpreter_outputs(tflite_models["sparse"], {"x": x})
    assert list(got) == list(want)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    litert = edgemill.compile(tflite_models["sparse"], output=tmp_path / "l.emp", backend="litert", measure=False)
    native = rt.load(litert.path)
    for batch in (3, 1, 3):  # a new batch size resizes the interpreter; the same one takes the direct path
        xb = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        np.testing.assert_array_equal(native.run({"x": xb})[name], _interpreter_outputs(tflite_models["sparse"], {"x": xb})[name])


def test_tflite_keeps_the_signature_names_and_takes_tensor_names_in_input(tflite_models: dict, tmp_path: Path) -> None:
    path = tflite_models["two"]
    result = edgemill.compile(path, output=tmp_path / "t.emp", measure=False,
                              inputs=["serving_default_feat:0:1x8", "aux:1x3"])  # a tensor name, a signature name
    model = rt.load(result.path)
    assert sorted(s.name for s in model.inputs) == ["aux", "feat"]
    assert sorted(s.name for s in model.outputs) == ["hidden", "score"]
    assert model.inputs[[s.name for s in model.inputs].index("feat")].shape == (1, 8)
    assert result.manifest.source["names"]["feat"] == "serving_default_feat:0"
    rng = np.random.default_rng(1)
    feed = {"feat": rng.standard_normal((1, 8)).astype(np.float32), "aux": rng.standard_normal((1, 3)).astype(np.float32)}
    want = _interpreter_outputs(path, feed)
    got = model.run(feed)
    for name in ("hidden", "score"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert "(in the source: 'serving_default_feat:0')" in run_cli("inspect", result.path).out


def test_litert_is_measured_as_one_more_candidate(tflite_models: dict, tmp_path: Path) -> None:
    result = edgemill.compile(tflite_models["two"], output=tmp_path / "t.emp", tune_budget=10)
    measured = {m["candidate"] for m in result.report["tuning"]["measurements"]}
    assert "litert/fp32 (native)" in measured and any(c.startswith("onnxruntime") for c in measured)
    chosen = run_cli("compile", tflite_models["two"], "-o", tmp_path / "l.emp", "--backend", "litert", "--no-measure")
    assert chosen.code == 0, chosen.err
    assert rt.load(tmp_path / "l.emp").backend == "litert"


# --- the gate's reference: the source framework --------------------------------------------------------

def test_the_gate_compares_with_keras_and_reports_conversion_and_compile_error(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((16,), name="features"), keras.layers.Dense(32, activation="gelu"),
                            keras.layers.LayerNormalization(), keras.layers.Dense(5, activation="softmax")])
    net.save(tmp_path / "net.keras")
    result = edgemill.compile(tmp_path / "net.keras", output=tmp_path / "n.emp", measure=False)
    accuracy = result.manifest.accuracy
    assert accuracy["reference"].startswith("Keras")
    assert accuracy["conversion_error"] <= 1e-5 and "compile_error" in accuracy
    assert result.report["reference"]["kind"] == "source"
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    (got,) = rt.load(result.path).run({"features": x}).values()
    np.testing.assert_allclose(got, net(x, training=False).numpy(), rtol=1e-4, atol=1e-6)


def test_a_keras2_hdf5_keras3_refuses_is_read_by_keras2(tmp_path: Path) -> None:
    """Keras 2 wrote `time_major` into every LSTM's config; Keras 3 refuses the argument."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(0)
    net = tf_keras.Sequential([tf_keras.layers.Embedding(50, 8, input_length=6, name="chars"),
                               tf_keras.layers.LSTM(12), tf_keras.layers.Dense(3, activation="softmax")])
    net.build((None, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.save(tmp_path / "names.h5")
    ids = np.random.default_rng(0).integers(0, 50, (8, 6)).astype(np.float32)
    np.savez(tmp_path / "val.npz", **{net.inputs[0].name.split(":")[0]: ids})
    result = edgemill.compile(tmp_path / "names.h5", output=tmp_path / "n.emp", measure=False,
                              validation=tmp_path / "val.npz")
    assert result.manifest.source["keras"].startswith("2.")
    (got,) = rt.load(result.path).run({rt.load(result.path).inputs[0].name: ids}).values()
    np.testing.assert_allclose(got, net(ids).numpy(), rtol=1e-4, atol=1e-6)


def test_an_older_savedmodel_whose_objects_cannot_be_restored_is_read_as_its_signature_graph(tmp_path: Path) -> None:
    """basic-pitch's SavedModel fails tf.saved_model.load with "'_UserObject' object has no attribute
    'add_slot'" (optimizer slots of a release this TensorFlow cannot revive); so does this one."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from tensorflow.core.protobuf import saved_model_pb2

    keras.utils.set_random_seed(2)
    net = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, name="d")])
    folder = tmp_path / "old"
    net.export(str(folder), verbose=False)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].object_graph_def
    variables = [i for i, n in enumerate(graph.nodes) if n.WhichOneof("kind") == "variable"]
    slot = graph.nodes[0].slot_variables.add()
    slot.original_variable_node_id, slot.slot_variable_node_id, slot.slot_name = variables[0], variables[1], "m"
    (folder / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(Exception, match="add_slot"):
        tf.saved_model.load(str(folder))
    result = edgemill.compile(folder, output=tmp_path / "o.emp", measure=False)
    assert result.manifest.source["loaded_as"] == "tf1 signature graph"
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    (got,) = rt.load(result.path).run({"x": x}).values()
    np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-5, atol=1e-6)


# --- TorchScript -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("torch")

    class RateSelected(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wide, self.narrow = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
            if sr == 16000:
                return self.wide(x)
            return self.narrow(x)

    class Streaming(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = torch.nn.Linear(16, 8)
            self.state = torch.zeros(1, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.state = torch.tanh(self.cell(torch.cat([x, self.state], 1)))
            return self.state

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(RateSelected()), str(d / "rate.jit"))
    torch.jit.save(torch.jit.script(Streaming()), str(d / "stream.zip"))
    return {"rate": d / "rate.jit", "stream": d / "stream.zip", "module": RateSelected}


def test_torchscript_with_any_suffix_is_recognised_by_content(torch_models: dict, tmp_path: Path) -> None:
    from edgemill.compiler.frontends import choose

    assert choose(torch_models["rate"], None).name == "pytorch"
    odd = tmp_path / "model.bin"
    shutil.copy(torch_models["rate"], odd)
    assert choose(odd, None).name == "pytorch"


def test_a_python_int_argument_needs_a_binding_and_is_traced_with_it(torch_models: dict, tmp_path: Path) -> None:
    import torch

    with pytest.raises(OptionError, match="--input sr=VALUE"):
        edgemill.compile(torch_models["rate"], output=tmp_path / "r.emp", inputs=["x:1x8"], measure=False)
    result = edgemill.compile(torch_models["rate"], output=tmp_path / "r.emp", inputs=["x:1x8", "sr=16000"],
                              measure=False)
    assert result.manifest.accuracy["reference"].startswith("PyTorch")
    model = rt.load(result.path)
    assert [(s.name, s.value) for s in model.inputs] == [("x", None), ("sr", 16000)]
    source = torch.jit.load(str(torch_models["rate"]))
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    (got,) = model.run({"x": x, "sr": np.array(16000)}).values()
    np.testing.assert_allclose(got, source(torch.from_numpy(x), 16000).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_stateful_forward_is_refused_naming_its_stateless_submodules(torch_models: dict, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"keeps state.*self\.state") as err:
        edgemill.compile(torch_models["stream"], output=tmp_path / "s.emp", inputs=["x:1x8"], measure=False)
    assert "stream.zip:cell" in (err.value.fix or "")
    result = edgemill.compile(f"{torch_models['stream']}:cell", output=tmp_path / "c.emp",
                              inputs=["input:1x16"], measure=False)
    assert result.manifest.source["submodule"] == "cell"


# --- trees: shapes and names as the library's predict() gives them ----------------------------------------

def test_xgboost_regressor_output_has_predicts_shape_and_a_pickled_booster_compiles(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    joblib = pytest.importorskip("joblib")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    y = x @ rng.standard_normal(5) + 0.1 * rng.standard_normal(200)
    names = ["speed", "spin", "height", "angle", "release"]
    booster = xgb.train({"max_depth": 3}, xgb.DMatrix(x, label=y, feature_names=names), num_boost_round=20)
    booster.save_model(str(tmp_path / "reg.ubj"))  # named features: onnxmltools once refused them
    result = edgemill.compile(tmp_path / "reg.ubj", output=tmp_path / "reg.emp", measure=False)
    model = rt.load(result.path)
    assert model.outputs[0].name == "variable" and len(model.outputs[0].shape) == 1
    got = model.run({"input": x[:7]})["variable"]
    want = booster.predict(xgb.DMatrix(x[:7], feature_names=names))
    assert got.shape == want.shape == (7,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert result.manifest.accuracy["reference"].startswith("XGBoost")
    joblib.dump(booster, tmp_path / "reg.sav")  # a pickled Booster, as packages ship them
    pickled = edgemill.compile(tmp_path / "reg.sav", output=tmp_path / "p.emp", measure=False, trust_pickle=True)
    assert pickled.manifest.source["pickled"] is True


def test_a_binary_classifier_says_how_its_outputs_map_to_predict(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2},
                        xgb.DMatrix(x, label=(x[:, 0] + x[:, 1] > 0).astype(int)), num_boost_round=10)
    booster.save_model(str(tmp_path / "clf.json"))
    result = edgemill.compile(tmp_path / "clf.json", output=tmp_path / "clf.emp", measure=False)
    assert "probabilities[:, 1]" in result.manifest.source["io_notes"][0]
    assert "io note" in run_cli("inspect", result.path).out
    probabilities = rt.load(result.path).run({"input": x[:5]})["probabilities"]
    np.testing.assert_allclose(probabilities[:, 1], booster.predict(xgb.DMatrix(x[:5])), rtol=1e-5, atol=1e-6)


def test_a_joblib_file_under_a_pickle_name_is_read(tmp_path: Path) -> None:
    sklearn = pytest.importorskip("sklearn.ensemble")
    joblib = pytest.importorskip("joblib")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 6))
    forest = sklearn.RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, x[:, 0] > 0)
    joblib.dump(forest, tmp_path / "forest.pkl")  # joblib's format: plain pickle.load cannot read it
    result = edgemill.compile(tmp_path / "forest.pkl", output=tmp_path / "f.emp", measure=False, trust_pickle=True)
    assert result.manifest.accuracy["reference"].startswith("scikit-learn")
    got = rt.load(result.path).run({"input": x[:4].astype(np.float32)})
    np.testing.assert_allclose(got["probabilities"], forest.predict_proba(x[:4].astype(np.float32)), atol=1e-6)


def test_report_json_records_which_reference_judged_each_candidate(tflite_models: dict, tmp_path: Path) -> None:
    result = run_cli("compile", tflite_models["two"], "-o", tmp_path / "t.emp", "--no-measure", "--json")
    assert result.code == 0, result.err
    report: dict[str, Any] = json.loads(result.out)["report"]
    assert report["reference"]["name"].startswith("the TFLite interpreter")
    assert set(report["reference"]["compared_outputs"]) == {"hidden", "score"}
