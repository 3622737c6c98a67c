"""The agent's control-plane sync, one component in four modules: :mod:`.loop` registers, heartbeats and
applies (the thread), :mod:`.plan` turns desired against running into actions (pure), :mod:`.client`
speaks the control plane's HTTP API, :mod:`.state` keeps what was applied on disk."""

from .loop import HEARTBEAT_JITTER, Sync, next_heartbeat_in, package_file

__all__ = ["HEARTBEAT_JITTER", "Sync", "next_heartbeat_in", "package_file"]
