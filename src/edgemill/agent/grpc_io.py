"""Which of grpcio's two I/O cores the agent's gRPC server runs on (``[listen] grpc_io``).

grpcio 1.80 made its EventEngine the default for Python. Measured on the agent (bench/agent.py, section
a), the older I/O manager ("iomgr") serves the same unary Predict with less CPU per call, and that CPU
is what the model's own work competes with on a two-core device. grpcio keeps the older core behind
``GRPC_EXPERIMENTS`` switches, read once when grpcio is first imported, so the choice is made in the
agent's process before that import and only there: applications (clients) keep grpcio's default.

``iomgr`` (the default) turns the EventEngine endpoint experiments off where they exist and were
measured (grpcio 1.80 to 1.89); ``event-engine`` leaves grpcio as it is. A ``GRPC_EXPERIMENTS`` set by
the operator always wins.
"""

from __future__ import annotations

import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

GrpcIo = Literal["iomgr", "event-engine"]
VARIABLE = "GRPC_EXPERIMENTS"
# The experiments that move client connections, listeners and every other endpoint onto the EventEngine.
IOMGR_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
# grpcio versions where those experiments exist and default to on for Python (measured on 1.85).
FIRST_EVENT_ENGINE_DEFAULT = (1, 80)
FIRST_UNTESTED = (1, 90)


@dataclass(frozen=True)
class Decision:
    applied: bool
    reason: str


def _version(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_grpcio() -> str:
    try:
        return metadata.version("grpcio")
    except metadata.PackageNotFoundError:
        return ""


def choose(setting: GrpcIo, environ: MutableMapping[str, str], grpcio_version: str,
           grpc_imported: bool) -> Decision:
    """Set ``GRPC_EXPERIMENTS`` in ``environ`` for ``setting`` when it applies; say what was done and why."""
    if setting == "event-engine":
        return Decision(False, "grpc_io = 'event-engine': grpcio's default I/O core")
    if VARIABLE in environ:
        return Decision(False, f"{VARIABLE}={environ[VARIABLE]!r} is set in the environment and is kept")
    version = _version(grpcio_version)
    if version is None or version < FIRST_EVENT_ENGINE_DEFAULT:
        return Decision(False, f"grpcio {grpcio_version or '?'} serves Python on iomgr already")
    if version >= FIRST_UNTESTED:
        return Decision(False, f"grpcio {grpcio_version} is newer than the versions grpc_io = 'iomgr' was measured "
                               f"on (1.80-1.89): grpcio's default is kept")
    if grpc_imported:
        return Decision(False, "grpcio was imported before the agent started (an embedding process): its I/O core "
                               "is already chosen")
    environ[VARIABLE] = IOMGR_EXPERIMENTS
    return Decision(True, f"grpcio {grpcio_version}: gRPC served on iomgr ({VARIABLE}={IOMGR_EXPERIMENTS})")


def apply(setting: GrpcIo, environ: MutableMapping[str, str]) -> Decision:
    """:func:`choose` for this process, before its first ``import grpc``."""
    return choose(setting, environ, installed_grpcio(), "grpc" in sys.modules)
