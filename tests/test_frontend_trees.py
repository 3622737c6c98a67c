"""Tree ensembles and scikit-learn: trained here on datasets that ship with scikit-learn, compiled,
and checked on held-out data against the framework's own predictions."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.compiler.frontends import Frontend, require
from edgemill.errors import MissingDependencyError

from .conftest import run_cli

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return tuple(train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    return tuple(train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0))  # type: ignore[return-value]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def check_classifier(package: Path, estimator, x_test: np.ndarray, y_test: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    model = rt.load(package)
    out = model.run({model.inputs[0].name: x_test})
    labels, probabilities = out["label"], out["probabilities"]
    np.testing.assert_array_equal(labels, estimator.predict(x_test))
    assert relative_error(probabilities, estimator.predict_proba(x_test)) <= 1e-4
    assert (labels == y_test).mean() == (estimator.predict(x_test) == y_test).mean()


def test_xgboost_classifier_json_and_ubj(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    xgboost = pytest.importorskip("xgboost")
    x_train, x_test, y_train, y_test = digits
    clf = xgboost.XGBClassifier(n_estimators=30, max_depth=4, random_state=0).fit(x_train, y_train)
    for suffix in ("json", "ubj"):
        path = tmp_path / f"digits.{suffix}"
        clf.get_booster().save_model(str(path))
        result = edgemill.compile(path, output=tmp_path / f"{suffix}.emp", measure=False)
        assert result.manifest.source["framework"] == "xgboost"
        assert result.manifest.inputs[0].shape == (-1, 64) or result.manifest.inputs[0].shape[1] == 64
        check_classifier(result.path, clf, x_test, y_test)


def test_xgboost_regressor(diabetes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    xgboost = pytest.importorskip("xgboost")
    x_train, x_test, y_train, _ = diabetes
    reg = xgboost.XGBRegressor(n_estimators=40, max_depth=3, random_state=0).fit(x_train, y_train)
    reg.save_model(str(tmp_path / "reg.json"))
    model = rt.load(edgemill.compile(tmp_path / "reg.json", output=tmp_path / "reg.emp", measure=False).path)
    got = model.run({"input": x_test})[model.outputs[0].name].reshape(-1)
    assert relative_error(got, reg.predict(x_test)) <= 1e-4


def test_lightgbm_classifier_and_regressor(digits, diabetes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lightgbm = pytest.importorskip("lightgbm")
    x_train, x_test, y_train, y_test = digits
    clf = lightgbm.LGBMClassifier(n_estimators=30, random_state=0, verbose=-1).fit(x_train, y_train)
    clf.booster_.save_model(str(tmp_path / "clf.txt"))
    result = edgemill.compile(tmp_path / "clf.txt", output=tmp_path / "clf.emp", measure=False)
    assert result.manifest.source["framework"] == "lightgbm"
    check_classifier(result.path, clf, x_test, y_test)

    rx_train, rx_test, ry_train, _ = diabetes
    reg = lightgbm.LGBMRegressor(n_estimators=40, random_state=0, verbose=-1).fit(rx_train, ry_train)
    reg.booster_.save_model(str(tmp_path / "reg.txt"))
    model = rt.load(edgemill.compile(tmp_path / "reg.txt", output=tmp_path / "reg.emp", measure=False).path)
    got = model.run({"input": rx_test})[model.outputs[0].name].reshape(-1)
    assert relative_error(got, reg.predict(rx_test)) <= 1e-4


@pytest.mark.parametrize("kind", ["pipeline", "forest"])
def test_sklearn_estimators(kind: str, digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("skl2onnx")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = digits
    estimator = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)) if kind == "pipeline"
                 else RandomForestClassifier(n_estimators=20, random_state=0)).fit(x_train, y_train)
    path = tmp_path / f"{kind}.pkl"
    path.write_bytes(pickle.dumps(estimator))
    result = run_cli("compile", path, "-o", tmp_path / f"{kind}.emp", "--trust-pickle", "--no-measure")
    assert result.code == 0, result.err
    check_classifier(tmp_path / f"{kind}.emp", estimator, x_test, y_test)


def test_fixed_batch_with_input_override(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lightgbm = pytest.importorskip("lightgbm")
    x_train, x_test, y_train, _ = digits
    clf = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(x_train, y_train)
    clf.booster_.save_model(str(tmp_path / "clf.txt"))
    result = edgemill.compile(tmp_path / "clf.txt", output=tmp_path / "b.emp", inputs=["pixels:8x64"], measure=False)
    assert result.manifest.inputs[0].name == "pixels" and result.manifest.inputs[0].shape == (8, 64)
    bad = run_cli("compile", tmp_path / "clf.txt", "--input", "pixels:8x65")
    assert bad.code == 1 and "64 features" in bad.err


def test_pickles_need_explicit_trust(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LinearRegression

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])))
    result = run_cli("compile", path)
    assert result.code == 1 and "runs code" in result.err and "--trust-pickle" in result.err
    assert "Traceback" not in result.err


def test_a_model_of_the_wrong_framework(model_dir: Path) -> None:
    pytest.importorskip("xgboost")
    result = run_cli("compile", model_dir / "mlp.onnx", "--framework", "xgboost")
    assert result.code == 1 and "not an XGBoost model" in result.err and "Traceback" not in result.err


def test_missing_framework_names_the_extra() -> None:
    fake = Frontend("fancy", "Fancy models", lambda p: False, lambda p, r: None,  # type: ignore[arg-type,return-value]
                    requires=("no_such_module_edgemill",), extra="fancy")
    with pytest.raises(MissingDependencyError) as err:
        require(fake)
    assert "pip install 'edgemill[fancy]'" in str(err.value) and "no_such_module_edgemill" in str(err.value)


def test_list_frameworks_says_what_is_installed() -> None:
    result = run_cli("compile", "--list-frameworks", "--json")
    import json

    rows = {r["framework"]: r for r in json.loads(result.out)}
    assert {"onnx", "xgboost", "lightgbm", "sklearn"} <= set(rows)
    assert rows["onnx"]["installed"] is True
