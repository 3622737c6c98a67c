"""Object stores that captures are uploaded to: a local folder, any S3-compatible service, memory (the
agent adds the control plane itself: ``agent/capture/server_store.py``).

Every store's ``put`` overwrites: uploading the same key twice leaves one object, which is what makes
a re-upload after a crash harmless. Stores are called from several uploader threads at once.
"""

from __future__ import annotations

import contextvars
import datetime
import email.utils
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, MissingDependencyError, UserError

log = logging.getLogger("edgemill.agent.capture")

_INCOMING = ".incoming"  # LocalFolderStore writes here first, then renames into place


class ObjectStore(Protocol):
    """Where uploaded captures go. Keys are relative, '/'-separated paths."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` completely or not at all; an existing object is replaced."""

    def get(self, key: str) -> bytes:
        """The object's bytes; ``KeyError`` when there is none."""

    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix``, sorted."""

    def url(self, key: str) -> str:
        """Where ``key`` lives, as a URL a person or another tool can use (s3://..., file://...)."""


class MemoryStore:
    """A store in a dict: real behaviour for tests, and ``puts`` counts every upload of each key."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[key] = bytes(data)
            self.puts[key] = self.puts.get(key, 0) + 1

    def get(self, key: str) -> bytes:
        with self._lock:
            return self.objects[key]

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self.objects if k.startswith(prefix))

    def url(self, key: str) -> str:
        return f"memory://{key}"

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)


class LocalFolderStore:
    """Objects as files under ``root``; each put is atomic (temp file, fsync, rename, fsync folder)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def url(self, key: str) -> str:
        return self._path(key).absolute().as_uri()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == _INCOMING:
            raise UserError("object key is not a plain relative path", value=key,
                            fix="use keys such as 'device/model/2024/01/31/id.emc'")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        incoming = self.root / _INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = incoming / f"{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        """The file that holds ``key`` (a server can stream it without reading it into memory)."""
        return self._path(key)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys: list[str] = []
        for folder, dirs, files in os.walk(self.root):
            if Path(folder) == self.root and _INCOMING in dirs:
                dirs.remove(_INCOMING)
            rel = Path(folder).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{f}" if rel != "." else f for f in files)
        return sorted(k for k in keys if k.startswith(prefix))


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A store refuses requests signed too far from its own time (AWS S3 and MinIO: 15 minutes). A refusal
# whose Date header is this far from the device's clock is taken for that, and the clock corrected.
_SKEW_NOTICED_S = 300.0
_SIGNING_OFFSET: contextvars.ContextVar[float] = contextvars.ContextVar("edgemill_s3_signing_offset_s", default=0.0)
_SIGNING_LOCK = threading.Lock()


def _signing_clock() -> bool:
    """Let S3 requests be signed with a corrected time (``_SIGNING_OFFSET``, 0 unless an S3Store sets
    it for its own calls). botocore reads the signing time from ``botocore.auth.get_current_datetime``
    and corrects no skew itself; this wraps that function once. False on a botocore without it."""
    import botocore.auth

    with _SIGNING_LOCK:
        current = getattr(botocore.auth, "get_current_datetime", None)
        if current is None:
            return False
        if getattr(current, "_edgemill_offset", False):
            return True

        def get_current_datetime(*args: Any, **kwargs: Any) -> datetime.datetime:
            now: datetime.datetime = current(*args, **kwargs)
            offset = _SIGNING_OFFSET.get()
            return now + datetime.timedelta(seconds=offset) if offset else now

        get_current_datetime._edgemill_offset = True  # type: ignore[attr-defined]
        botocore.auth.get_current_datetime = get_current_datetime
        return True


class S3Store:
    """Objects in ``bucket`` under ``prefix`` of any S3-compatible service, through boto3.

    Credentials come from boto3's usual chain (environment, ~/.aws, instance role). The bucket is
    created on first use when missing, not here, so an agent that starts offline still starts.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError("bad S3 bucket name", value=bucket,
                              expected="3-63 lower-case letters, digits, '.' or '-'",
                              fix="write capture.store as s3://BUCKET/PREFIX with a valid bucket name")
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise MissingDependencyError("uploading captures to S3 needs boto3", value="boto3",
                                         fix="pip install 'edgemill[s3]'") from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        # Our uploader retries with its own backoff; a few quick retries inside boto3 cover blips only.
        config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self._client: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self._bucket_ready = False
        self._lock = threading.Lock()
        self._corrects_clock = _signing_clock()
        self.clock_offset_s = 0.0  # the store's time minus this device's, once a refusal showed they differ

    @contextmanager
    def _signed_with_store_time(self) -> Iterator[None]:
        token = _SIGNING_OFFSET.set(self.clock_offset_s)
        try:
            yield
        finally:
            _SIGNING_OFFSET.reset(token)

    def _call(self, operation: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 call. Refused because this device's clock is off from the store's (RequestTimeTooSkewed,
        or a 403 dated far from our clock): the offset is learnt, and the call signed again with it."""
        from botocore.exceptions import ClientError

        with self._signed_with_store_time():
            try:
                return operation(**kwargs)
            except ClientError as exc:
                if not self._learn_skew(exc):
                    raise
            with self._signed_with_store_time():
                return operation(**kwargs)

    def _learn_skew(self, exc: Any) -> bool:
        """True when ``exc`` shows a clock skew not yet corrected (then ``clock_offset_s`` is updated)."""
        response = getattr(exc, "response", {}) or {}
        error, meta = response.get("Error", {}), response.get("ResponseMetadata", {})
        if not self._corrects_clock or meta.get("HTTPStatusCode") != 403:
            return False
        try:
            store_time = datetime.datetime.fromisoformat(str(error["ServerTime"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            try:
                store_time = email.utils.parsedate_to_datetime(meta.get("HTTPHeaders", {})["date"])
            except (KeyError, TypeError, ValueError):
                return False
        if store_time.tzinfo is None:
            store_time = store_time.replace(tzinfo=datetime.timezone.utc)
        offset = (store_time - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        skewed = error.get("Code") == "RequestTimeTooSkewed" or abs(offset - self.clock_offset_s) > _SKEW_NOTICED_S
        if not skewed or abs(offset - self.clock_offset_s) < 1.0:
            return False  # not a clock refusal, or already corrected: a real refusal
        log.warning("this device's clock is %.0f s %s the object store's (bucket %s refused a request as signed at "
                    "the wrong time): signing S3 requests with the store's time from now on; set the device's clock "
                    "right (NTP)", abs(offset), "behind" if offset > 0 else "ahead of", self.bucket)
        self.clock_offset_s = offset
        return True

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from botocore.exceptions import ClientError

        with self._lock:
            if self._bucket_ready:
                return
            try:
                self._call(self._client.head_bucket, Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                kwargs: dict[str, Any] = {"Bucket": self.bucket}
                if self.region and self.region != "us-east-1":
                    kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
                try:
                    self._call(self._client.create_bucket, **kwargs)
                except ClientError as create_exc:
                    code = create_exc.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def put(self, key: str, data: bytes) -> None:
        self._ensure_bucket()
        self._call(self._client.put_object, Bucket=self.bucket, Key=self._full(key), Body=data)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self._call(self._client.get_object, Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise

    def delete(self, key: str) -> None:
        self._call(self._client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def presigned_get(self, key: str, expires_s: int) -> str:
        """A time-limited URL that fetches ``key`` without our credentials."""
        self._ensure_bucket()
        with self._signed_with_store_time():
            return str(self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires_s))

    def list(self, prefix: str = "") -> list[str]:
        self._ensure_bucket()
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._signed_with_store_time():
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                Prefix=self._full(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)


def open_store(url: str, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    """The store named by ``file://DIR`` or ``s3://BUCKET/PREFIX`` (capture.store in the agent config).

    ``server`` needs the control-plane sync: the agent builds a :class:`ServerStore` itself.
    """
    if url.startswith("file://") and len(url) > len("file://"):
        return LocalFolderStore(Path(url[len("file://"):]))
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region)
    if url == "server":
        raise ConfigError("capture.store = 'server' uploads through the control plane, which is not configured",
                          value=url, fix="set [server] url, or use a file:// or s3:// capture store")
    raise ConfigError("unknown capture store", value=url, expected="file://DIRECTORY or s3://BUCKET/PREFIX",
                      fix="set capture.store to a local folder or an S3 bucket")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` survive power loss (the folder's entry table is flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
