"""The object store behind the server: packages and captures. A local folder by default, any
S3-compatible service at scale (the same classes the agent uploads captures with)."""

from __future__ import annotations

from pathlib import Path

from ..captures.store import ObjectStore, open_store


class ServerStore:
    def __init__(self, url: str, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.url = url
        self.backend: ObjectStore = open_store(url, endpoint_url=endpoint_url, region=region)

    def put(self, key: str, data: bytes) -> None:
        self.backend.put(key, data)

    def get(self, key: str) -> bytes:
        return self.backend.get(key)

    def delete(self, key: str) -> None:
        """Remove an object; used to undo a put whose database commit failed."""
        self.backend.delete(key)  # type: ignore[attr-defined]

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` when the store is a local folder (served directly), else None."""
        local_path = getattr(self.backend, "local_path", None)
        return local_path(key) if local_path is not None else None

    def presigned_get(self, key: str, expires_s: int) -> str | None:
        """A time-limited URL the device can fetch without our API, when the store offers one."""
        presign = getattr(self.backend, "presigned_get", None)
        return presign(key, expires_s) if presign is not None else None

    def check(self) -> None:
        """Raise when the store cannot be reached (for /healthz)."""
        self.backend.list("healthz/")
