"""The bounded on-disk queue: captures wait here, one file each, until the uploader has stored them.

Crash safety comes from the order of operations, not from a journal:

* accept: write ``SEQ.ID.tmp``, fsync it, rename to ``SEQ.ID.emc``, fsync the folder, *then* return.
  A crash before the rename leaves a ``.tmp`` that recovery deletes (it was never acknowledged).
* upload: put the object, append ``ID KEY`` to ``uploaded.log`` (fsync), delete the file, fsync the
  folder. A crash anywhere in between leaves the file queued, and the next start uploads it again to
  the same key: one object at the receiver.

Every ``.emc`` carries its own checksum; one that fails it at start is moved to ``quarantine/``, never
uploaded and never silently deleted. A lock file keeps a second process off the same folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ...errors import ResourceExhaustedError, UserError
from .record import SUFFIX, CaptureExistsError, CaptureFormatError, object_key, read_header
from .store import fsync_dir

UPLOADED_LOG = "uploaded.log"
UPLOADED_REMEMBERED = 100_000  # ids whose upload status() still knows, and that are refused as duplicates
_TMP = ".tmp"


@dataclass(frozen=True)
class CaptureStatus:
    """Where one capture is. ``failed`` means the last attempt failed and it will be retried."""

    capture_id: str
    state: str  # "queued", "uploading", "uploaded", "failed" or "unknown"
    attempts: int = 0  # upload attempts that failed so far (this run)
    last_error: str = ""
    uploaded_key: str = ""  # the object's key under the store's prefix, once uploaded


@dataclass(frozen=True)
class Pending:
    """A queued capture handed to the uploader."""

    capture_id: str
    path: Path
    key: str
    size: int


@dataclass
class _Entry:
    capture_id: str
    path: Path
    key: str
    size: int
    accepted_at: float  # on the injected clock
    state: str = "writing"  # not yet acknowledged; then queued / uploading / failed
    attempts: int = 0
    last_error: str = ""
    next_attempt: float = 0.0


class DiskQueue:
    """Thread-safe; ``open()`` before use, ``close()`` to release the folder."""

    def __init__(self, directory: Path, max_records: int, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # acceptance order: oldest first
        self._bytes = 0
        self._seq = 0
        self._lock_fd: int | None = None
        self._log: _UploadedLog | None = None
        self.counts = {"uploaded": 0, "upload_errors": 0, "discarded_torn": 0, "quarantined_corrupt": 0,
                       "lost_missing": 0}

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the folder and recover what a previous run left (torn files removed, the rest queued)."""
        with self._lock:
            if self._lock_fd is not None:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UserError("the capture queue folder is in use by another process", value=str(self.directory),
                                fix="give each agent its own capture.directory, or stop the other agent") from None
            self._lock_fd = fd
            self._log = _UploadedLog(self.directory / UPLOADED_LOG, UPLOADED_REMEMBERED)
            self._recover()

    def close(self) -> None:
        """Release the folder; queued files stay for the next start."""
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._changed.notify_all()

    def _recover(self) -> None:
        found: list[tuple[int, str, Path]] = []
        changed = False
        for path in self.directory.iterdir():
            if path.name.endswith(_TMP):
                path.unlink(missing_ok=True)  # a write that never returned: not accepted, nothing lost
                self.counts["discarded_torn"] += 1
                changed = True
            elif path.name.endswith(SUFFIX):
                digits, _, capture_id = path.name[: -len(SUFFIX)].partition(".")
                if digits.isdigit() and capture_id:
                    found.append((int(digits), capture_id, path))
        # New files number on from every name seen, quarantined ones included, so no name is reused.
        self._seq = max((number for number, _, _ in found), default=0)
        now_wall, now = time.time(), self._clock()
        for _number, capture_id, path in sorted(found):
            try:
                data = path.read_bytes()
                header = read_header(data)
                if header["capture_id"] != capture_id or capture_id in self._entries:
                    raise CaptureFormatError("capture file name and content disagree", value=path.name)
                key = object_key(header["device"], header["model"], float(header["created_unix"]), capture_id)
            except (CaptureFormatError, KeyError, TypeError, ValueError):
                self._quarantine(path)
                changed = True
                continue
            age = max(0.0, now_wall - path.stat().st_mtime)
            self._entries[capture_id] = _Entry(capture_id, path, key, len(data), now - age, state="queued")
            self._bytes += len(data)
        if changed:
            fsync_dir(self.directory)

    def _quarantine(self, path: Path) -> None:
        # Accepted once, damaged since (disk fault): keep the bytes for a person, out of the queue.
        quarantine = self.directory / "quarantine"
        quarantine.mkdir(exist_ok=True)
        os.replace(path, quarantine / path.name)
        fsync_dir(quarantine)
        fsync_dir(self.directory)
        self.counts["quarantined_corrupt"] += 1

    # --- accepting ------------------------------------------------------------------------------

    def is_full(self) -> bool:
        """True when not even the smallest capture would be accepted now."""
        with self._lock:
            return len(self._entries) >= self.max_records or self._bytes >= self.max_bytes

    def add(self, capture_id: str, key: str, blob: bytes) -> None:
        """Store ``blob`` durably; when this returns the capture survives kill -9 and power loss."""
        with self._lock:
            if self._log is None:
                raise UserError("the capture queue is closed", value=str(self.directory),
                                fix="start the capture service before submitting captures")
            if capture_id in self._entries or capture_id in self._log:
                where = "queued" if capture_id in self._entries else "uploaded"
                raise CaptureExistsError(f"capture id already accepted (it is {where}); a retry of the same request "
                                "can treat this as success", value=capture_id,
                                fix="use a new id for each capture, or leave it empty to get a generated one")
            self._check_room(len(blob))
            self._seq += 1
            path = self.directory / f"{self._seq:016d}.{capture_id}{SUFFIX}"
            entry = _Entry(capture_id, path, key, len(blob), self._clock())
            self._entries[capture_id] = entry  # reserves the id and the room while we write outside the lock
            self._bytes += len(blob)
        tmp = path.with_name(path.name + _TMP)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._entries.pop(capture_id, None)
                self._bytes -= len(blob)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhaustedError("the disk holding the capture queue is full", value=str(self.directory),
                                             fix="free disk space or lower capture.max_queue_mb") from None
            raise UserError(f"cannot write to the capture queue ({exc.strerror})", value=str(self.directory),
                            fix="check that capture.directory is writable by the agent") from None
        with self._lock:
            entry.state = "queued"
            entry.accepted_at = self._clock()

    def __len__(self) -> int:
        """Captures accepted and not yet uploaded."""
        return len(self._entries)

    def _check_room(self, size: int) -> None:
        if size > self.max_bytes:
            raise ResourceExhaustedError("the capture is larger than the whole capture queue",
                                         value=f"{size / 2**20:.2f} MB",
                                         expected=f"at most capture.max_queue_mb = {self.max_bytes / 2**20:g}",
                                         fix="raise capture.max_queue_mb or capture smaller tensors")
        if len(self._entries) >= self.max_records:
            raise ResourceExhaustedError("the capture queue is full", value=f"{len(self._entries)} records",
                                         expected=f"at most capture.max_queue_records = {self.max_records}",
                                         fix="restore the connection to the capture store so the queue drains, "
                                             "or raise capture.max_queue_records")
        if self._bytes + size > self.max_bytes:
            limit_mb = self.max_bytes / 2**20
            raise ResourceExhaustedError("the capture queue is full", value=f"{(self._bytes + size) / 2**20:.2f} MB "
                                         "with this capture", expected=f"at most capture.max_queue_mb = {limit_mb:g}",
                                         fix="restore the connection to the capture store so the queue drains, "
                                             "or raise capture.max_queue_mb")

    # --- uploading ------------------------------------------------------------------------------

    def take(self, limit: int) -> list[Pending]:
        """Up to ``limit`` captures due for upload, oldest first, now marked ``uploading``."""
        now = self._clock()
        out: list[Pending] = []
        with self._lock:
            for entry in self._entries.values():
                if len(out) >= limit:
                    break
                if entry.state in ("queued", "failed") and entry.next_attempt <= now:
                    entry.state = "uploading"
                    out.append(Pending(entry.capture_id, entry.path, entry.key, entry.size))
        return out

    def read(self, pending: Pending) -> bytes | None:
        """The verified bytes of a pending capture; ``None`` (and quarantined) if damaged since accepted."""
        try:
            data = pending.path.read_bytes()
            read_header(data)
            return data
        except FileNotFoundError:  # removed by someone else: nothing left to upload
            with self._lock:
                if self._entries.pop(pending.capture_id, None) is not None:
                    self._bytes -= pending.size
                    self.counts["lost_missing"] += 1
                self._changed.notify_all()
            return None
        except CaptureFormatError:
            with self._lock:
                if self._entries.pop(pending.capture_id, None) is not None:
                    self._bytes -= pending.size
                self._quarantine(pending.path)
                self._changed.notify_all()
            return None

    def uploaded(self, done: Iterable[Pending]) -> None:
        """Record stored objects durably, then drop their queue files."""
        done = list(done)
        if not done:
            return
        log = self._log
        if log is None:
            return  # closed meanwhile: the files stay and the next start uploads them again (same keys)
        log.append((p.capture_id, p.key) for p in done)
        for pending in done:
            pending.path.unlink(missing_ok=True)
        fsync_dir(self.directory)
        with self._lock:
            for pending in done:
                if self._entries.pop(pending.capture_id, None) is not None:
                    self._bytes -= pending.size
                    self.counts["uploaded"] += 1
            self._changed.notify_all()

    def failed(self, pending: Pending, error: str, delay_for_attempt: Callable[[int], float]) -> None:
        """An upload attempt failed; the capture stays queued and is retried after the backoff delay."""
        with self._lock:
            entry = self._entries.get(pending.capture_id)
            if entry is not None and entry.state == "uploading":
                self.counts["upload_errors"] += 1
                entry.attempts += 1
                entry.state, entry.last_error = "failed", error
                entry.next_attempt = self._clock() + delay_for_attempt(entry.attempts)
            self._changed.notify_all()

    def make_due(self) -> None:
        """Forget backoff: every capture may be attempted now (a flush)."""
        with self._lock:
            for entry in self._entries.values():
                entry.next_attempt = 0.0

    def wait_empty(self, timeout: float) -> bool:
        """Wait until no accepted capture is left to upload; False on timeout."""
        with self._lock:
            return self._changed.wait_for(
                lambda: self._log is None or not any(e.state != "writing" for e in self._entries.values()),
                timeout=max(0.0, timeout)) and self._log is not None

    # --- reporting ------------------------------------------------------------------------------

    def status(self, capture_id: str) -> CaptureStatus:
        with self._lock:
            entry = self._entries.get(capture_id)
            if entry is not None:
                state = "queued" if entry.state == "writing" else entry.state
                return CaptureStatus(capture_id, state, entry.attempts, entry.last_error)
            key = self._log.key(capture_id) if self._log is not None else None
            if key is not None:
                return CaptureStatus(capture_id, "uploaded", uploaded_key=key)
            return CaptureStatus(capture_id, "unknown")

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            entries = [e for e in self._entries.values() if e.state != "writing"]
            oldest = min((e.accepted_at for e in entries), default=None)
            return {"queued": len(entries), "queued_bytes": sum(e.size for e in entries),
                    "uploading": sum(e.state == "uploading" for e in entries),
                    "failed": sum(e.state == "failed" for e in entries),
                    "oldest_queued_age_s": 0.0 if oldest is None else max(0.0, self._clock() - oldest),
                    **self.counts}


class _UploadedLog:
    """Append-only ``ID KEY`` lines (fsync'd), remembering the newest ``limit`` ids; compacted when long."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._lines = 0
        self._lock = threading.Lock()
        data = path.read_bytes() if path.exists() else b""
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line was never acknowledged
        for line in complete.decode("utf-8", "replace").splitlines():
            capture_id, _, key = line.partition(" ")
            if capture_id and key:
                self._remember(capture_id, key)
                self._lines += 1
        self._handle = open(path, "ab")
        if len(complete) != len(data):
            self._handle.truncate(len(complete))
        if self._lines > 2 * limit:
            self._compact()

    def __contains__(self, capture_id: str) -> bool:
        return capture_id in self._keys

    def key(self, capture_id: str) -> str | None:
        return self._keys.get(capture_id)

    def append(self, done: Iterable[tuple[str, str]]) -> None:
        done = list(done)
        with self._lock:
            self._handle.write("".join(f"{i} {k}\n" for i, k in done).encode())
            self._handle.flush()
            os.fsync(self._handle.fileno())
            for capture_id, key in done:
                self._remember(capture_id, key)
            self._lines += len(done)
            if self._lines > 2 * self.limit:
                self._compact()

    def _remember(self, capture_id: str, key: str) -> None:
        self._keys[capture_id] = key
        self._keys.move_to_end(capture_id)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".compact")
        with open(tmp, "wb") as handle:
            handle.write("".join(f"{i} {k}\n" for i, k in self._keys.items()).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self._handle.close()
        self._handle = open(self.path, "ab")
        self._lines = len(self._keys)

    def close(self) -> None:
        with self._lock:
            self._handle.close()
