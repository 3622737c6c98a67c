"""The bounded on-disk queue: captures wait here, one file each, until the uploader has stored them.

Crash safety comes from the order of operations, not from a journal:

* accept: write ``SEQ.ID.tmp``, fsync it, rename to ``SEQ.ID.emc``, fsync the folder, *then* return.
  A crash before the rename leaves a ``.tmp`` that recovery deletes (it was never acknowledged).
* upload: put the object, append ``ID KEY`` to ``uploaded.log`` (fsync), delete the file, fsync the
  folder. A crash anywhere in between leaves the file queued, and the next start uploads it again to
  the same key: one object at the receiver.

Every ``.emc`` carries its own checksum; one that fails it at start is moved to ``quarantine/``, never
uploaded and never silently deleted. A lock file keeps a second process off the same folder.

A full disk stops capturing, not serving: a capture is refused (:class:`DiskFullError`) when writing it
would leave less than a small reserve free on the folder's file system (room for the agent's own state
and for the rest of the device), and for a moment after any write fails with ENOSPC/EDQUOT. The state
is logged when it starts and ends and reported in :meth:`DiskQueue.stats` (``disk_full``); capturing
resumes by itself when space returns. Uploads go on meanwhile, and an upload whose record cannot be
appended to ``uploaded.log`` for lack of space still deletes its file (the object is stored; that
frees room), then records it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ...errors import ResourceExhaustedError, UserError
from ...captures.record import SUFFIX, CaptureExistsError, CaptureFormatError, object_key, read_header
from ...captures.store import fsync_dir

UPLOADED_LOG = "uploaded.log"
UPLOADED_REMEMBERED = 100_000  # ids whose upload status() still knows, and that are refused as duplicates
_TMP = ".tmp"
# Free space a capture may not take: 1% of the file system, at most 32 MiB (state files, logs, the OS).
DISK_RESERVE_FRACTION = 0.01
DISK_RESERVE_MAX_BYTES = 32 * 2**20
DISK_FULL_RETRY_S = 1.0  # after a write failed with ENOSPC, captures are refused this long before trying again
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger("edgemill.agent.capture")


class DiskFullError(ResourceExhaustedError):
    """The file system under the capture queue has no room for another capture (a ResourceExhaustedError)."""


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
        self._disk_full = ""  # why captures are refused for lack of disk space; "" while there is room
        self._disk_retry_at = 0.0  # after an ENOSPC write: no new write is tried before this (injected clock)
        self._disk_refused = 0  # captures refused during the current disk-full spell (for the recovery log line)
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
        """True when not even the smallest capture would be accepted now (queue bound or disk)."""
        return self.blocked() != ""

    def blocked(self) -> str:
        """Why no capture would be accepted now, known without writing: "queue_full", "disk_full", or ""."""
        with self._lock:
            if len(self._entries) >= self.max_records or self._bytes >= self.max_bytes:
                return "queue_full"
            if self._disk_full and self._no_room(0):  # during a spell: a cheap check before anyone builds a record
                return "disk_full"
            return ""

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
            no_room = self._no_room(len(blob))
            if no_room:
                raise self._refuse_disk(no_room)
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
                if exc.errno in _NO_SPACE:
                    self._disk_retry_at = self._clock() + DISK_FULL_RETRY_S
                    raise self._refuse_disk(f"writing the capture failed: {exc.strerror}") from None
            raise UserError(f"cannot write to the capture queue ({exc.strerror})", value=str(self.directory),
                            fix="check that capture.directory is writable by the agent") from None
        with self._lock:
            entry.state = "queued"
            entry.accepted_at = self._clock()
            self._disk_ok()

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

    def _no_room(self, size: int) -> str:
        """Why ``size`` more bytes may not be written now (lock held), or "": a recent write found the
        disk full, or they would eat the reserve. Only a look: refusals are counted by the caller."""
        if self._disk_full and self._clock() < self._disk_retry_at:
            return self._disk_full
        try:
            fs = os.statvfs(self.directory)
        except OSError:
            return ""  # cannot tell: the write itself will say
        free = fs.f_bavail * fs.f_frsize
        reserve = min(DISK_RESERVE_MAX_BYTES, int(fs.f_blocks * fs.f_frsize * DISK_RESERVE_FRACTION))
        if free - size < reserve:
            return f"{free / 2**20:.2f} MB free, {reserve / 2**20:.2f} MB kept in reserve"
        return ""

    def _refuse_disk(self, why: str) -> DiskFullError:
        """Note a refusal for lack of space (lock held), log the start of a spell once; the error to raise."""
        if not self._disk_full:
            log.warning("capture paused: the disk holding the capture queue %s is full (%s); the agent keeps "
                        "serving, captures are skipped until space returns", self.directory, why)
        self._disk_full = why
        self._disk_refused += 1
        return DiskFullError("the disk holding the capture queue is full", value=f"{self.directory}: {why}",
                             fix="free disk space there (capturing resumes by itself), or move capture.directory "
                                 "to a bigger disk")

    def _disk_ok(self) -> None:
        """A write succeeded (lock held): end a disk-full spell."""
        if self._disk_full:
            log.info("capture resumed: the disk holding %s has room again (%d capture(s) refused meanwhile)",
                     self.directory, self._disk_refused)
            self._disk_full, self._disk_refused, self._disk_retry_at = "", 0, 0.0

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
        uploaded_log = self._log
        if uploaded_log is None:
            return  # closed meanwhile: the files stay and the next start uploads them again (same keys)
        lines = [(p.capture_id, p.key) for p in done]
        try:
            uploaded_log.append(lines)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            # No room for the record, and the queue's own files may be what fills the disk: the objects
            # are stored, so delete the files first (a crash now re-uploads nothing: at worst status()
            # forgets them), then record them; remembered in memory when even that fails.
            self._unlink(done)
            try:
                uploaded_log.append(lines)
            except OSError as again:
                if again.errno not in _NO_SPACE:
                    raise
                uploaded_log.remember(lines)
                log.warning("uploaded %d capture(s) but the disk is too full to record it in %s: their status is "
                            "kept in memory until the agent restarts", len(lines), uploaded_log.path)
        else:
            self._unlink(done)
        with self._lock:
            for pending in done:
                if self._entries.pop(pending.capture_id, None) is not None:
                    self._bytes -= pending.size
                    self.counts["uploaded"] += 1
            if self._disk_full:
                self._disk_retry_at = 0.0  # files deleted: room may be back; the next capture checks
            self._changed.notify_all()

    def _unlink(self, done: list[Pending]) -> None:
        for pending in done:
            pending.path.unlink(missing_ok=True)
        fsync_dir(self.directory)

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
                    "disk_full": 1 if self._disk_full else 0, **self.counts}


class _UploadedLog:
    """Append-only ``ID KEY`` lines (fsync'd), remembering the newest ``limit`` ids; compacted when long.

    An append that fails (a full disk) is cut back off the file, so the file never holds half a line
    in its middle; the caller decides what to do about the failure.
    """

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
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._size = len(complete)
        if len(complete) != len(data):
            os.ftruncate(self._fd, self._size)
        if self._lines > 2 * limit:
            self._compact()

    def __contains__(self, capture_id: str) -> bool:
        return capture_id in self._keys

    def key(self, capture_id: str) -> str | None:
        return self._keys.get(capture_id)

    def append(self, done: Iterable[tuple[str, str]]) -> None:
        done = list(done)
        data = memoryview("".join(f"{i} {k}\n" for i, k in done).encode())
        with self._lock:
            try:
                written = 0
                while written < len(data):
                    written += os.pwrite(self._fd, data[written:], self._size + written)
                os.fsync(self._fd)
            except OSError:
                try:
                    os.ftruncate(self._fd, self._size)  # no partial line left behind
                except OSError:
                    pass  # a torn tail is dropped when the log is read at the next start
                raise
            self._size += len(data)
            self.remember(done)
            self._lines += len(done)
            if self._lines > 2 * self.limit:
                try:
                    self._compact()
                except OSError as exc:  # no room for the compacted copy: the long log still works
                    log.warning("cannot compact %s (%s); trying again later", self.path, exc.strerror)

    def remember(self, done: Iterable[tuple[str, str]]) -> None:
        """Know these as uploaded in memory (status, duplicate refusal), without writing them."""
        for capture_id, key in done:
            self._remember(capture_id, key)

    def _remember(self, capture_id: str, key: str) -> None:
        self._keys[capture_id] = key
        self._keys.move_to_end(capture_id)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".compact")
        try:
            with open(tmp, "wb") as handle:
                handle.write("".join(f"{i} {k}\n" for i, k in self._keys.items()).encode())
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._lines = len(self._keys)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
