"""Reference backend: ``onnx.reference`` in pure Python. Slow; for checking results, not for serving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import BackendError
from . import LoadSettings, register


class ReferenceSession:
    def __init__(self, model: bytes, output_names: Sequence[str]) -> None:
        try:
            from onnx.reference import ReferenceEvaluator
        except ImportError:
            raise BackendError("the reference backend needs the onnx package", value="onnx",
                               fix="pip install 'edgemill[compile]'") from None
        try:
            self._evaluator = ReferenceEvaluator(model)
        except Exception as exc:
            raise BackendError("onnx.reference cannot load the model", value=str(exc).splitlines()[0],
                               fix="compile with --backend onnxruntime") from None
        self._outputs = list(output_names)

    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        try:
            return [np.asarray(x) for x in self._evaluator.run(self._outputs, dict(feed))]
        except Exception as exc:
            raise BackendError("onnx.reference failed to run the model", value=str(exc).splitlines()[0]) from None


@register("reference", library="onnx.reference")
def load(model: bytes, output_names: Sequence[str], settings: LoadSettings) -> ReferenceSession:
    return ReferenceSession(model, output_names)
