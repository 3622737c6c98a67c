"""Package files kept in memory for downloads, bounded by bytes (least recently used go first).

Packages are immutable (a key names one package id), so a cached copy never goes stale. A rollout
wave sends thousands of devices for the same file within seconds: from memory each download is a
single send, needs no download slot and no read of the store, so a small package never makes a
device wait. Packages larger than ``max_item_bytes`` are not cached (they stream from the store under
the download limiter).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable


class PackageCache:
    def __init__(self, max_bytes: int, max_item_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes, max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = self.misses = 0

    def fits(self, size: int) -> bool:
        return 0 < size <= self.max_item_bytes

    def get(self, key: str, load: Callable[[], bytes]) -> bytes:
        """The bytes of ``key``, loading them once however many ask at the same time."""
        with self._lock:
            data = self._hit(key)
            if data is not None:
                return data
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # the first caller loads; the others wait for it and then hit
            with self._lock:
                data = self._hit(key)
            if data is not None:
                return data
            data = load()
            with self._lock:
                self.misses += 1
                self._loading.pop(key, None)
                if len(data) <= self.max_item_bytes:
                    self._items[key] = data
                    self._bytes += len(data)
                    while self._bytes > self.max_bytes:
                        _, evicted = self._items.popitem(last=False)
                        self._bytes -= len(evicted)
            return data

    def _hit(self, key: str) -> bytes | None:
        """The cached bytes of ``key`` (lock held), counted as a hit; None when absent."""
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return data
