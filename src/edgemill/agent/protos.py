"""The generated gRPC modules, imported in one place with one clear error when they are missing.

They are generated from proto/ when the package is built (setup.py); a source checkout that was never
installed has none.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError

_FIX = "install edgemill with pip (pip install -e . in a checkout), which generates them from proto/"


def load(name: str) -> ModuleType:
    """``load("edgemill.v1.agent_pb2")`` -> the module generated from proto/edgemill/v1/agent.proto."""
    try:
        return importlib.import_module(f"edgemill.agent._proto.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("edgemill.agent._proto"):
            raise MissingDependencyError("the agent's gRPC stubs are not generated", value=name, fix=_FIX) from None
        raise
