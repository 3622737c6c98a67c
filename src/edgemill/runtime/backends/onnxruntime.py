"""onnxruntime backend: the default everywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import BackendError
from . import LoadSettings, register

# The compiler saves models already optimized. "none": load as is (optimized for this exact CPU);
# "all": apply onnxruntime's hardware-specific layout passes at load (portable packages).
_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def session_options(threads: int | None, load_optimization: str = "all"):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS.get(load_optimization, "ORT_ENABLE_ALL"))
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


class OnnxRuntimeSession:
    def __init__(self, model: bytes, output_names: Sequence[str], settings: LoadSettings) -> None:
        import onnxruntime as ort

        wanted = list(settings.options.get("execution_providers", ["CPUExecutionProvider"]))
        available = set(ort.get_available_providers())
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        so = session_options(settings.threads, str(settings.options.get("load_optimization", "all")))
        try:
            self._session = ort.InferenceSession(model, so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError("onnxruntime cannot load the model", value=str(exc).splitlines()[0],
                               fix="recompile the package with this edgemill and onnxruntime version") from None
        self._outputs = list(output_names)
        self.providers = self._session.get_providers()
        # The session's C++ run, without the Python wrapper re-checking the input names our InputChecker
        # has checked: a microsecond a call, which is most of a small model's overhead.
        self._run = getattr(self._session, "_sess", self._session).run

    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        try:
            return self._run(self._outputs, feed, None)  # type: ignore[arg-type]
        except Exception as exc:
            raise BackendError("onnxruntime failed to run the model", value=str(exc).splitlines()[0],
                               fix="check the input values (e.g. index ranges) against what the model expects") from None


@register("onnxruntime", library="onnxruntime")
def load(model: bytes, output_names: Sequence[str], settings: LoadSettings) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(model, output_names, settings)
