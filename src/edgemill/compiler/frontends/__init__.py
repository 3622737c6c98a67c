"""Frontends turn what a user brings into an ONNX model. One module per framework in this folder;
each registers itself when imported, so adding a framework is adding a file (and its test).

A frontend's ``detect`` must be cheap and import nothing heavy: it runs for every compile. Its
``load`` imports the framework, and only after :func:`choose` has checked that it is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import MissingDependencyError, ModelFormatError, OptionError, first_line
from ...tensors import InputOverride
from ..context import SourceInfo
from ..options import split_entry

__all__ = ["Frontend", "FrontendRequest", "choose", "first_line", "pair_source_info", "read_head", "register",
           "source_info",
           "split_entry", "tabular_input"]

if TYPE_CHECKING:  # the name 'onnx' must stay free here: it is our ONNX frontend's module
    import onnx


@dataclass(frozen=True)
class FrontendRequest:
    """What a frontend may need besides the path: input shapes (``inputs``: the ``--input`` options that
    fix a shape), values bound with ``--input NAME=VALUE`` (``bindings``), and consent to unpickle."""

    inputs: tuple[InputOverride, ...] = ()
    trust_pickle: bool = False
    bindings: tuple[InputOverride, ...] = ()

    @classmethod
    def from_overrides(cls, overrides: tuple[InputOverride, ...], trust_pickle: bool = False) -> FrontendRequest:
        return cls(inputs=tuple(o for o in overrides if o.fixes_shape), trust_pickle=trust_pickle,
                   bindings=tuple(o for o in overrides if o.binds_value))

    def value_of(self, name: str) -> InputOverride | None:
        return next((b for b in self.bindings if b.name == name), None)


@dataclass(frozen=True)
class Frontend:
    name: str
    description: str
    detect: Callable[[Path], bool]
    # The ONNX graph (None when only a native backend can run the file: SourceInfo.native says how) and
    # where it came from, with the source framework's runtime when it can run here (SourceInfo.runtime).
    load: Callable[[Path, FrontendRequest], tuple["onnx.ModelProto | None", SourceInfo]]
    requires: tuple[str, ...] = ()  # modules the frontend imports
    extra: str = "compile"  # the pip extra that installs them
    priority: int = 50  # detection order: lower is tried first
    suffixes: tuple[str, ...] = field(default_factory=tuple)  # for --list-frameworks

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m.split(".")[0]) is None]


_REGISTRY: dict[str, Frontend] = {}
_LOADED = False


def register(frontend: Frontend) -> Frontend:
    _REGISTRY[frontend.name] = frontend
    return frontend


def all_frontends() -> list[Frontend]:
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            if module.name.startswith("_"):
                continue  # a frontend's helper (``_tf2onnx_ops`` imports TensorFlow: seconds, for every compile)
            importlib.import_module(f"{__name__}.{module.name}")  # importing registers the frontend
        _LOADED = True
    return sorted(_REGISTRY.values(), key=lambda f: (f.priority, f.name))


def require(frontend: Frontend) -> None:
    missing = frontend.missing()
    if missing:
        raise MissingDependencyError(
            f"the {frontend.name} frontend needs a package that is not installed", value=", ".join(missing),
            fix=f"pip install 'edgemill[{frontend.extra}]'",
        )


def choose(path: Path, framework: str | None) -> Frontend:
    frontends = {f.name: f for f in all_frontends()}
    if framework is not None:
        if framework not in frontends:
            raise ModelFormatError("unknown framework", value=framework, expected="one of " + ", ".join(frontends),
                                   fix="omit --framework to detect it from the file, or see "
                                       "`edgemill compile --list-frameworks`")
        chosen = frontends[framework]
    else:
        chosen = next((f for f in frontends.values() if f.detect(path)), None)  # type: ignore[assignment]
        if chosen is None:
            raise ModelFormatError(
                "cannot tell which framework made this file", value=str(path),
                expected="a model from: " + ", ".join(frontends),
                fix="pass --framework NAME (see `edgemill compile --list-frameworks`), or check that the file "
                    "is a trained model",
            )
    require(chosen)
    return chosen


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def source_info(path: Path, framework: str, version: str, **details: Any) -> SourceInfo:
    return SourceInfo(framework=framework, framework_version=version, file=path.name, sha256=sha256_of(path),
                      details=details)


def pair_source_info(main: Path, partner: Path, framework: str, version: str, roles: tuple[str, str],
                     **details: Any) -> SourceInfo:
    """SourceInfo for a model made of two files (DarkNet cfg + weights, MXNet symbol + params). Its
    sha256 covers both, so the model id changes when either file does; each file's own hash is kept
    in the details as ``<role>_sha256``."""
    main_sha, partner_sha = sha256_of(main), sha256_of(partner)
    both = hashlib.sha256(f"{main_sha}\n{partner_sha}".encode()).hexdigest()
    return SourceInfo(framework=framework, framework_version=version, file=main.name, sha256=both,
                      details={**details, f"{roles[0]}_sha256": main_sha, f"{roles[1]}_sha256": partner_sha})


def read_head(path: Path, size: int = 16) -> bytes:
    if not path.is_file():
        return b""
    with open(path, "rb") as f:
        return f.read(size)


def tabular_input(request: FrontendRequest, n_features: int, framework: str) -> tuple[str, list[int | str | None]]:
    """Name and shape of a tabular model's one input: ``[batch, n_features]`` float32, the batch
    dynamic unless ``--input`` fixes it. Converters take ``None`` for a dynamic dimension."""
    if not request.inputs:
        return "input", [None, n_features]
    if len(request.inputs) != 1:
        raise OptionError(f"a {framework} model has one input", value=len(request.inputs),
                          fix="give --input once, e.g. --input input:Nx%d" % n_features)
    override = request.inputs[0]
    if len(override.shape) != 2 or override.shape[1] != n_features:
        raise OptionError(f"--input shape does not fit a {framework} model with {n_features} features",
                          value=list(override.shape), expected=f"[batch, {n_features}]",
                          fix=f"write --input {override.name}:Nx{n_features}")
    if override.dtype not in (None, "float32"):
        raise OptionError(f"{framework} models take float32 features", value=override.dtype,
                          fix=f"write --input {override.name}:Nx{n_features}:float32")
    batch = override.shape[0]
    return override.name, [batch if isinstance(batch, int) and batch > 0 else None, n_features]

