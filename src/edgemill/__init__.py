"""edgemill: compile a trained model for an edge target, sign it, and run it anywhere.

The public API is small: :func:`edgemill.compile` (needs ``edgemill[compile]``),
:func:`edgemill.runtime.load`, the ``edgemill`` CLI, and the package format.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001
    """Compile a model into a package; see :func:`edgemill.compiler.compile`."""
    from .compiler import compile as _compile

    return _compile(*args, **kwargs)


__all__ = ["__version__", "compile"]
