"""The compiler: a model from any framework in, a package for a named target out (needs ``edgemill[compile]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .build import CompileResult, compile_model
from .context import Progress, silent
from .options import CompileOptions


def compile(  # noqa: A001 - the public verb
    model: str | Path,
    target: str = "host",
    output: str | Path | None = None,
    inputs: list[str] | tuple[str, ...] = (),
    progress: Progress = silent,
    **options: Any,
) -> CompileResult:
    """Compile ``model`` for ``target`` and write a package to ``output`` (``.emp`` tar or directory).

    ``inputs``: ``NAME:SHAPE[:DTYPE]`` strings fixing input shapes. Other options: see
    :class:`CompileOptions` (``name``, ``version``, ``precision``, ``backend``, ``tolerance``,
    ``validation``, ``measure``...).
    """
    opts = CompileOptions.create(model, target=target, output=output, inputs=inputs, **options)
    return compile_model(opts, progress)


__all__ = ["CompileOptions", "CompileResult", "compile", "compile_model"]
