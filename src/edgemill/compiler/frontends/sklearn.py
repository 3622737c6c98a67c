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
SUFFIXES = (".pkl", ".pickle", ".joblib")


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
    return model, source_info(path, "sklearn", sklearn.__version__, estimator=type(estimator).__name__,
                              features=int(n_features), converter="skl2onnx")


def _unpickle(path: Path) -> object:
    try:
        if path.suffix.lower() == ".joblib":
            import joblib

            return joblib.load(path)
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - the user consented with --trust-pickle
    except Exception as exc:  # a broken pickle can raise almost anything
        raise ModelFormatError("cannot unpickle the file", value=str(path),
                               fix=f"save the estimator with pickle.dump or joblib.dump ({first_line(exc)})") from None


register(Frontend("sklearn", "scikit-learn estimator or Pipeline (pickle/joblib, needs --trust-pickle)", detect, load,
                  requires=("sklearn", "skl2onnx"), extra="sklearn", priority=40, suffixes=SUFFIXES))
