"""Frontends turn what a user brings into an ONNX model. One module per framework, registered here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ModelFormatError
from ..context import SourceInfo

if TYPE_CHECKING:  # the name 'onnx' must stay free here: it is our ONNX frontend's module
    import onnx


@dataclass(frozen=True)
class Frontend:
    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], tuple["onnx.ModelProto", SourceInfo]]


_REGISTRY: dict[str, Frontend] = {}
_BUILTIN = ("onnx",)


def register(frontend: Frontend) -> Frontend:
    _REGISTRY[frontend.name] = frontend
    return frontend


def all_frontends() -> list[Frontend]:
    import importlib

    for module in _BUILTIN:
        importlib.import_module(f"{__name__}.{module}")  # importing registers the frontend

    return list(_REGISTRY.values())


def choose(path: Path, framework: str | None) -> Frontend:
    frontends = {f.name: f for f in all_frontends()}
    if framework is not None:
        if framework not in frontends:
            raise ModelFormatError("unknown framework", value=framework, expected="one of " + ", ".join(frontends),
                                   fix="omit --framework to detect it from the file")
        return frontends[framework]
    for f in frontends.values():
        if f.detect(path):
            return f
    raise ModelFormatError(
        "cannot tell which framework made this file", value=str(path),
        expected="a model from: " + ", ".join(frontends),
        fix="pass --framework NAME, or check that the file is a trained model",
    )
