"""Text (str) tensors in a capture: stored as fixed-width unicode, which the record format reads back
with ``numpy.frombuffer`` like any other dtype.

A model's str tensors arrive as object arrays of Python ``str``; a record holds plain dtypes only, so
they are stored as ``<U{longest}`` (4 bytes per character of the longest element, for every element).
One long string in a large batch would make that huge: a tensor whose fixed-width form exceeds the
limit (the capture queue's size, which could never hold it) is refused, and a sampled capture skipped.
"""

from __future__ import annotations

import numpy as np

from ...errors import ResourceExhaustedError, UserError


def recordable(kind: str, name: str, array: np.ndarray, limit_bytes: int) -> np.ndarray:
    """``array`` as a capture record can hold it: an object array of str becomes fixed-width unicode;
    any other array is returned as it is. ``kind`` is "input" or "output", for messages."""
    if not array.dtype.hasobject:
        return array
    values = array.reshape(-1).tolist()
    stray = next((v for v in values if not isinstance(v, str)), None)
    if stray is not None:
        raise UserError(f"capture {kind} {name!r} holds objects that are not str", value=type(stray).__name__,
                        fix="capture numeric arrays or arrays of str")
    width = max(1, max((len(v) for v in values), default=0))
    needed = len(values) * width * 4
    if needed > limit_bytes:
        raise ResourceExhaustedError(f"capture {kind} {name!r} as fixed-width text needs {needed} bytes",
                                     value=f"{len(values)} strings, the longest {width} characters",
                                     expected=f"at most {limit_bytes} bytes (capture.max_queue_mb)",
                                     fix="capture shorter text, or raise capture.max_queue_mb")
    return np.array(values, dtype=f"<U{width}").reshape(array.shape)
