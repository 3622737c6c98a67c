"""The object store behind the server: packages and captures. A local folder by default, any
S3-compatible service at scale (the same classes the agent uploads captures with)."""

from __future__ import annotations

from pathlib import Path

from ..agent.capture.store import LocalFolderStore, ObjectStore, S3Store, open_store


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
        if isinstance(self.backend, LocalFolderStore):
            self.backend._path(key).unlink(missing_ok=True)
        elif isinstance(self.backend, S3Store):
            self.backend._client.delete_object(Bucket=self.backend.bucket, Key=self.backend._full(key))

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` when the store is a local folder (served directly), else None."""
        if isinstance(self.backend, LocalFolderStore):
            return self.backend._path(key)
        return None

    def presigned_get(self, key: str, expires_s: int) -> str | None:
        """A time-limited URL the device can fetch without our API, when the store offers one."""
        if isinstance(self.backend, S3Store):
            self.backend._ensure_bucket()
            return str(self.backend._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.backend.bucket, "Key": self.backend._full(key)},
                ExpiresIn=expires_s))
        return None

    def check(self) -> None:
        """Raise when the store cannot be reached (for /healthz)."""
        self.backend.list("healthz/")
