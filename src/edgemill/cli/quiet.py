"""Keep the frameworks' own console output out of a compile.

TensorFlow, TFLite, onnxruntime and OpenVINO write from C++ straight to file descriptor 2: absl start-up
lines, "Created TensorFlow Lite XNNPACK delegate", onnxruntime's ANSI-coloured error lines for a failure
we already report in one line. A compile's output is ours: its progress and its result. So while the
frameworks work, fd 2 goes to a temporary file, and our own lines go to the terminal through a copy of
the original descriptor. What the libraries said is shown only with EDGEMILL_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

# Environment the frameworks read when they are imported: fewer start-up lines.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "2"}


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    debug = bool(os.environ.get("EDGEMILL_DEBUG"))
    try:
        real_fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else -1
    except (AttributeError, ValueError, io.UnsupportedOperation):
        real_fd = -1
    if debug or real_fd != 2:
        with _python_warnings_quiet(debug):
            yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    replaced = sys.stderr is sys.__stderr__
    with tempfile.TemporaryFile(prefix="edgemill-native-stderr-") as sink:
        os.dup2(sink.fileno(), 2)
        if replaced:  # our own lines keep going to the terminal
            sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
        try:
            with _python_warnings_quiet(debug):
                yield
        finally:
            if replaced:
                sys.stderr.flush()
                sys.stderr.close()
                sys.stderr = sys.__stderr__
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _python_warnings_quiet(debug: bool) -> Iterator[None]:
    """Library warnings (deprecations, "consider pre-processing") are for their developers, not our users."""
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
        yield
