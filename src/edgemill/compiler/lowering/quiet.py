"""Keep a library's advice out of the user's terminal while it runs: our progress lines say what happens."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str | None = None) -> Iterator[None]:
    """Raise logger ``name`` (the root logger when None) to ERROR for the duration."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
