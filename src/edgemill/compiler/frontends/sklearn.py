"""scikit-learn estimators and pipelines (pickle or joblib files), converted with skl2onnx.

Unpickling runs code from the file, so this frontend refuses unless the user passes --trust-pickle.
Classifiers output ``label`` and ``probabilities`` (no ZipMap, so both are plain tensors).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ...errors import ModelFormatError, OptionError
from . import Frontend, FrontendRequest, first_line, read_head, register, source_info, tabular_input

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav")


def detect(path: Path) -> bool:
    if path.suffix.lower() in SUFFIXES:
        return True
    return read_head(path, 1) == b"\x80"  # pickle protocol 2+ opcode PROTO


def load(path: Path, request: FrontendRequest):  # type: ignore[no-untyped-def]
    if not request.trust_pickle:
        raise OptionError(
            "loading a pickled scikit-learn model runs code from the file", value=str(path),
            fix="pass --trust-pickle if you made this file or trust who did",
        )
    import sklearn
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    estimator = _unpickle(path)
    module = type(estimator).__module__
    if module.startswith("xgboost") and type(estimator).__name__ == "Booster":
        from .trees import convert_xgboost_booster  # a pickled Booster: the XGBoost path, unpickled

        return convert_xgboost_booster(estimator, path, request, pickled=True)
    if not hasattr(estimator, "predict"):
        raise ModelFormatError("the file does not hold a scikit-learn estimator", value=type(estimator).__name__,
                               fix="pickle a fitted estimator or Pipeline")
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ModelFormatError("the estimator does not record its number of features", value=type(estimator).__name__,
                               fix="fit it on a 2-D array before saving")
    name, shape = tabular_input(request, int(n_features), "scikit-learn")
    try:
        model = convert_sklearn(estimator, initial_types=[(name, FloatTensorType(shape))],
                                options={"zipmap": False}, target_opset=TARGET_OPSET)
    except Exception as exc:  # skl2onnx raises many types
        raise ModelFormatError("skl2onnx cannot convert this estimator", value=first_line(exc),
                               fix="use estimators skl2onnx supports (see its documentation), or export to ONNX "
                                   "yourself and compile the .onnx") from None
    classifier = hasattr(estimator, "predict_proba") and any(o.name == "probabilities" for o in model.graph.output)
    if not classifier:
        from .trees import squeeze_single_output

        squeeze_single_output(model, "variable")
    info = source_info(path, "sklearn", sklearn.__version__, estimator=type(estimator).__name__,
                       features=int(n_features), converter="skl2onnx")
    info.runtime = _runtime(estimator, name, classifier, f"scikit-learn {sklearn.__version__} {type(estimator).__name__}")
    return model, info


def _runtime(estimator: object, input_name: str, classifier: bool, what: str):  # type: ignore[no-untyped-def]
    """The estimator's own predict/predict_proba as the reference."""
    import warnings

    import numpy as np

    from ..source import SourceRuntime

    def run(feed):  # type: ignore[no-untyped-def]
        x = feed[input_name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "X does not have valid feature names": rows by position, as packaged
            if classifier:
                return {"label": np.asarray(estimator.predict(x)),  # type: ignore[attr-defined]
                        "probabilities": np.asarray(estimator.predict_proba(x), dtype=np.float32)}  # type: ignore[attr-defined]
            y = np.asarray(estimator.predict(x), dtype=np.float32)  # type: ignore[attr-defined]
            return {"variable": y}

    call = estimator.predict_proba if classifier else estimator.predict  # type: ignore[attr-defined]
    return SourceRuntime(what, run, lambda feed: call(feed[input_name]))


def _unpickle(path: Path) -> object:
    """joblib reads plain pickles and its own format (numpy arrays stored beside the pickle stream), which
    many packages write under a .pkl or .sav name: try it first, whatever the suffix."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InconsistentVersionWarning: the gate checks the converted model
            try:
                import joblib

                return joblib.load(path)
            except ImportError:
                with open(path, "rb") as f:
                    return pickle.load(f)  # noqa: S301 - the user consented with --trust-pickle
    except Exception as exc:  # a broken pickle can raise almost anything
        raise ModelFormatError("cannot unpickle the file", value=str(path),
                               fix=f"save the estimator with pickle.dump or joblib.dump ({first_line(exc)})") from None


register(Frontend("sklearn", "scikit-learn estimator or Pipeline (pickle/joblib, needs --trust-pickle)", detect, load,
                  requires=("sklearn", "skl2onnx"), extra="sklearn", priority=40, suffixes=SUFFIXES))
