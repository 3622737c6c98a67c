"""OpenVINO backend: loads the IR the compiler converted once (``model.xml`` + ``model.bin``) with the
CPU plugin, from the verified bytes in memory.

The inference precision is the package's, never OpenVINO's default: on CPUs with AVX-512 BF16 or AMX
that default is bf16, which is lossy, so a package compiled as fp32 sets ``f32`` explicitly and only a
package whose bf16 candidate passed the accuracy gate runs in bf16.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import BackendError, MissingDependencyError
from . import LoadSettings, register

WEIGHTS_SUFFIX = ".bin"


def compile_config(options: Mapping[str, Any], threads: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": str(options.get("inference_precision", "f32")),
        "PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY")),
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _import_openvino():  # type: ignore[no-untyped-def]
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("this package runs on OpenVINO, which is not installed", value="openvino",
                                     fix="pip install 'edgemill[openvino]'") from None
    return openvino


class OpenVinoSession:
    def __init__(self, model: bytes, output_names: Sequence[str], settings: LoadSettings) -> None:
        ov = _import_openvino()
        weights = next((data for name, data in settings.files.items() if name.endswith(WEIGHTS_SUFFIX)), b"")
        try:
            core = ov.Core()
            network = core.read_model(model.decode("utf-8"), ov.Tensor(np.frombuffer(weights, np.uint8)))
            self._compiled = core.compile_model(network, "CPU", compile_config(settings.options, settings.threads))
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line message
            raise BackendError("OpenVINO cannot load the model", value=str(exc).strip().splitlines()[0][:300],
                               fix="recompile the package with this edgemill and OpenVINO version") from None
        index_by_name = {name: index for index, port in enumerate(self._compiled.outputs) for name in port.get_names()}
        missing = [n for n in output_names if n not in index_by_name]
        if missing:
            raise BackendError("the OpenVINO model lacks an output the manifest lists", value=", ".join(missing),
                               fix="rebuild the package")
        self._output_indices = [index_by_name[n] for n in output_names]
        self._request = self._compiled.create_infer_request()
        self._tensor = ov.Tensor
        self._lock = threading.Lock()

    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        """Inputs are wrapped, not copied (``shared_memory``); each output is copied once out of the
        request's buffer, which the next call reuses. ``infer(dict)`` copied every input and built a
        dictionary of every output, then we copied again: about 8 % of a 1 ms model."""
        # One infer request is not reentrant: serialize calls (the agent runs one model per worker).
        request, tensor = self._request, self._tensor
        with self._lock:
            try:
                # The wrapped arrays must outlive infer(): a shared-memory tensor does not keep a temporary
                # (a non-contiguous input's contiguous copy) alive, and OpenVINO then read freed memory.
                held = {name: np.ascontiguousarray(value) for name, value in feed.items()}
                for name, value in held.items():
                    request.set_tensor(name, tensor(value, shared_memory=True))
                request.infer()
                return [request.get_output_tensor(index).data.copy() for index in self._output_indices]
            except Exception as exc:
                raise BackendError("OpenVINO failed to run the model", value=str(exc).strip().splitlines()[0][:300],
                                   fix="check the input values against what the model expects") from None


@register("openvino", library="openvino")
def load(model: bytes, output_names: Sequence[str], settings: LoadSettings) -> OpenVinoSession:
    return OpenVinoSession(model, output_names, settings)
