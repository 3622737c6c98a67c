"""Backends: one small module each, registered by name. A backend turns verified model bytes into a
session that runs a feed dict and returns outputs in manifest order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ...errors import OptionError


class BackendSession(Protocol):
    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]: ...


@dataclass(frozen=True)
class LoadSettings:
    threads: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the manifest's backend_options
    files: Mapping[str, bytes] = field(default_factory=dict)  # the package's other verified model files


Loader = Callable[[bytes, Sequence[str], LoadSettings], BackendSession]
_REGISTRY: dict[str, Loader] = {}
_LIBRARIES: dict[str, str] = {}


def register(name: str, library: str) -> Callable[[Loader], Loader]:
    """Register a loader; ``library`` is the module it imports lazily (see :func:`import_library`)."""

    def wrap(loader: Loader) -> Loader:
        _REGISTRY[name] = loader
        _LIBRARIES[name] = library
        return loader

    return wrap


def import_library(name: str) -> None:
    """Import a backend's library now, e.g. so a benchmark does not count the import as model load."""
    import importlib

    get_loader(name)
    importlib.import_module(_LIBRARIES[name])


def open_session(backend: str, entrypoint: str, files: Mapping[str, bytes], output_names: Sequence[str],
                 threads: int | None, options: Mapping[str, Any]) -> BackendSession:
    """A session over a package's model files (path -> bytes): the entrypoint is what the backend
    loads, the other files travel in :attr:`LoadSettings.files` (e.g. OpenVINO's weights)."""
    others = {name: data for name, data in files.items() if name != entrypoint}
    return get_loader(backend)(files[entrypoint], output_names, LoadSettings(threads, options, others))


def missing_library(name: str) -> str | None:
    """The module a registered backend needs and this machine lacks, or None."""
    import importlib.util

    get_loader(name)
    module = _LIBRARIES[name]
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a dotted name whose parent is missing (onnx.reference on a device)
        found = None
    return module if found is None else None


def names() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def get_loader(name: str) -> Loader:
    _import_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OptionError(
            "unknown backend", value=name, expected="one of " + ", ".join(sorted(_REGISTRY)),
            fix="install the edgemill version that built this package, or recompile with a known backend",
        ) from None


def _import_builtin() -> None:
    # Importing the modules registers them; each imports its library only when a model is loaded.
    from . import litert, onnxruntime, openvino, reference, tvm  # noqa: F401
