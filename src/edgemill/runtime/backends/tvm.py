"""TVM backend: loads the shared library the compiler built ahead of time (``model/model.so``) into the
TVM runtime's Relax virtual machine. Nothing is compiled on the device; only the TVM runtime is needed.

The library holds code for the CPU it was compiled for (the package's target); the manifest's
``backend_options["inputs"]`` gives the order of the library's arguments.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import BackendError, MissingDependencyError, first_line
from . import LoadSettings, register


def _import_tvm(threads: int | None) -> Any:
    # TVM sizes its thread pool from TVM_NUM_THREADS when the runtime first starts.
    if threads and "tvm" not in sys.modules:
        os.environ.setdefault("TVM_NUM_THREADS", str(int(threads)))
    try:
        import tvm
        import tvm.runtime.vm  # noqa: F401
    except ImportError:
        raise MissingDependencyError("this package runs on TVM, which is not installed", value="apache-tvm",
                                     fix="pip install 'edgemill[tvm]'") from None
    return tvm


class TvmSession:
    def __init__(self, library: bytes, output_names: Sequence[str], settings: LoadSettings) -> None:
        tvm = _import_tvm(settings.threads)
        self._tensor = tvm.runtime.tensor
        self._inputs = [str(n) for n in settings.options.get("inputs", [])]
        if not self._inputs:
            raise BackendError("the TVM package does not list its inputs", value="backend_options.inputs",
                               fix="rebuild the package with this edgemill version")
        # dlopen needs a file; the mapping survives the file's removal once loaded.
        with tempfile.TemporaryDirectory(prefix="edgemill-tvm-") as folder:
            path = os.path.join(folder, "model.so")
            with open(path, "wb") as f:
                f.write(library)
            try:
                module = tvm.runtime.load_module(path)
                self._vm = tvm.runtime.vm.VirtualMachine(module, tvm.cpu())
                self._main = self._vm["main"]
            except Exception as exc:
                raise BackendError("TVM cannot load the compiled library", value=first_line(exc)[:300],
                                   fix="recompile the package for this device's target with this edgemill and TVM "
                                       "version") from None
        self._n_outputs = len(output_names)
        self._lock = threading.Lock()

    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        args = [self._tensor(np.ascontiguousarray(feed[name])) for name in self._inputs]
        with self._lock:  # one VM instance, one call at a time
            try:
                result = self._main(*args)
            except Exception as exc:
                raise BackendError("TVM failed to run the model", value=first_line(exc)[:300],
                                   fix="check the input values against what the model expects") from None
        outputs = [result] if hasattr(result, "numpy") else list(result)
        if len(outputs) != self._n_outputs:
            raise BackendError("the TVM library returned a different number of outputs than the manifest lists",
                               value=len(outputs), expected=str(self._n_outputs), fix="rebuild the package")
        return [o.numpy() for o in outputs]


@register("tvm", library="tvm")
def load(library: bytes, output_names: Sequence[str], settings: LoadSettings) -> TvmSession:
    return TvmSession(library, output_names, settings)
