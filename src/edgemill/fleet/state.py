"""What every request handler shares: config, database, object store, trusted keys, clock.

Nothing here holds state that matters between requests: replicas on one database behave as one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..package import PublicKey
from .config import ServerConfig
from .db import Database
from .downloads import DownloadGate
from .longpoll import DesiredWatch
from .package_cache import PackageCache
from .store import ServerStore

if TYPE_CHECKING:  # the writer needs auth, which needs this module
    from .heartbeat_writer import HeartbeatWriter


@dataclass
class ServerState:
    config: ServerConfig
    db: Database
    store: ServerStore
    trusted_keys: list[PublicKey]
    clock: Callable[[], float] = time.time
    downloads: DownloadGate = field(init=False)  # this replica's download limiter
    packages: PackageCache = field(init=False)  # package files served from memory
    watch: DesiredWatch = field(init=False)  # wakes held heartbeats (one query per check, not per heartbeat)
    heartbeats: HeartbeatWriter = field(init=False)  # writes the heartbeats that arrive together in one transaction
    metrics: Any = None
    retention_due_at: float = 0.0  # when this replica next runs the retention jobs (the first tick does)

    def __post_init__(self) -> None:
        self.downloads = DownloadGate(self.config.max_concurrent_downloads)
        self.packages = PackageCache(int(self.config.package_cache_mb * 2**20), int(self.config.package_cache_item_mb * 2**20))
        self.watch = DesiredWatch(self.db, self.clock, self.config.long_poll_check_s,
                                  interval_s=self.config.heartbeat_interval_s)
        from .heartbeat_writer import HeartbeatWriter

        self.heartbeats = HeartbeatWriter(self.db, self.config, self.clock)


def server_state(request: Request) -> ServerState:
    return request.app.state.edgemill  # type: ignore[no-any-return]
