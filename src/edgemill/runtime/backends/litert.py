"""LiteRT backend: runs a ``.tflite`` file as its source framework wrote it, with LiteRT (the TFLite
runtime, ``ai-edge-litert``) and its default XNNPACK delegate.

It exists for TFLite models that the ONNX path cannot reproduce: operators tf2onnx cannot map (custom
ops, sparse weights, signal-processing front ends), and quantized models, whose integer arithmetic
only the TFLite kernels reproduce exactly. It is also measured as one more candidate for any TFLite
source. On a device it needs only ``pip install 'edgemill[litert]'``.

The package names inputs and outputs as the model's signature does; ``backend_options`` maps each name
to its tensor index, so a call sets and reads tensors directly (no signature-runner overhead). A
dynamic dimension is resized on the call that changes it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import BackendError, MissingDependencyError
from . import LoadSettings, register


def _interpreter_class():  # type: ignore[no-untyped-def]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise MissingDependencyError("this package runs on LiteRT, which is not installed", value="ai-edge-litert",
                                     fix="pip install 'edgemill[litert]'") from None
    return Interpreter


class LiteRtSession:
    def __init__(self, model: bytes, output_names: Sequence[str], settings: LoadSettings) -> None:
        interpreter_class = _interpreter_class()
        inputs = dict(settings.options.get("inputs", {}))
        outputs = dict(settings.options.get("outputs", {}))
        missing = [n for n in output_names if n not in outputs]
        if missing or not inputs:
            raise BackendError("the LiteRT package does not map its tensors", value=", ".join(missing) or "inputs",
                               fix="rebuild the package with this edgemill version")
        threads = int(settings.threads or os.cpu_count() or 1)
        try:
            self._interpreter = interpreter_class(model_content=bytes(model), num_threads=threads)
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with the kernel's message
            raise BackendError("LiteRT cannot load the model", value=str(exc).strip().splitlines()[0][:300],
                               fix="recompile the package with this edgemill and ai-edge-litert version") from None
        self._inputs = {name: int(index) for name, index in inputs.items()}
        self._input_list = tuple(self._inputs.items())
        self._outputs = [int(outputs[name]) for name in output_names]
        self._output_names = list(output_names)
        self._output_list = tuple(zip(self._output_names, self._outputs))
        # Tensors are allocated at the first call's shapes: some models (audio front ends with a fully
        # dynamic input) cannot be allocated at their placeholder size.
        self._shapes: dict[int, tuple[int, ...]] = {}
        self._direct = _has_direct_calls(self._interpreter)
        self._lock = threading.Lock()  # an interpreter runs one call at a time

    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        return list(self.run_named(feed).values())

    def run_named(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name: the runtime's Model.run returns this dict as it is (for a model that takes
        microseconds, building it here instead of zipping a list is a tenth of its time)."""
        lock = self._lock
        lock.acquire()
        try:
            shapes = self._shapes
            if self._direct and shapes:
                # Looked up per call, never kept: the Python wrapper refuses to run while anything else
                # holds its native object.
                native = self._interpreter._interpreter
                for name, index in self._input_list:
                    value = feed[name]
                    if value.shape != shapes[index]:
                        break  # a new shape: resize and allocate below (which sets every input again)
                    native.SetTensor(index, value)
                else:
                    native.Invoke()
                    out = {}
                    for name, index in self._output_list:
                        out[name] = native.GetTensor(index, 0)
                    return out
                del native  # the wrapper's resize and allocate refuse while we hold it
            results = invoke(self._interpreter, self._inputs, self._outputs, shapes, feed)
            return dict(zip(self._output_names, results))
        except KeyError as exc:
            raise BackendError("input missing for the LiteRT model", value=str(exc), fix="pass every input") from None
        except Exception as exc:
            raise BackendError("LiteRT failed to run the model", value=str(exc).strip().splitlines()[0][:300],
                               fix="check the input shapes and values against what the model expects") from None
        finally:
            lock.release()


def _has_direct_calls(interpreter: Any) -> bool:
    """Whether the interpreter's native SetTensor/Invoke/GetTensor can be called directly. The Python
    methods around them add a check that no numpy view of the interpreter's buffers is alive (we never
    hold one) and a few microseconds: as much as a keyword-spotting model takes to run."""
    native = getattr(interpreter, "_interpreter", None)
    return all(callable(getattr(native, name, None)) for name in ("SetTensor", "Invoke", "GetTensor"))


def invoke(interpreter: Any, inputs: Mapping[str, int], outputs: Sequence[int], shapes: dict[int, tuple[int, ...]],
           feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One call: resize (and allocate) the inputs whose shape changed since ``shapes`` was last updated, set
    them, invoke, and copy the outputs out (the interpreter reuses its buffers)."""
    resized = False
    for name, index in inputs.items():
        shape = tuple(np.shape(feed[name]))
        if shapes.get(index) != shape:
            interpreter.resize_tensor_input(index, list(shape), strict=False)
            shapes[index] = shape
            resized = True
    if resized:
        interpreter.allocate_tensors()
    for name, index in inputs.items():
        interpreter.set_tensor(index, np.ascontiguousarray(feed[name]))
    interpreter.invoke()
    return [interpreter.get_tensor(index) for index in outputs]


@register("litert", library="ai_edge_litert")
def load(model: bytes, output_names: Sequence[str], settings: LoadSettings) -> LiteRtSession:
    return LiteRtSession(model, output_names, settings)
