"""The capture service the agent talks to: accept captures durably, upload them, report their state.

Thread-safe: gRPC handlers call :meth:`CaptureService.submit` from many threads at once. A capture is
on disk (fsync'd) before ``submit`` returns, and stays there until the store holds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ...errors import ResourceExhaustedError, UserError
from ..config import CaptureConfig
from .queue import CaptureStatus, DiskFullError, DiskQueue
from ...captures.record import CaptureRecord, check_capture_id
from ...captures.store import ObjectStore, open_store
from .uploader import Uploader

log = logging.getLogger(__name__)


class CaptureService:
    """Captures for one device. ``start()`` before ``submit``; ``stop()`` at shutdown.

    ``store`` defaults to the one ``config.store`` names; ``clock`` (monotonic seconds) drives
    backoff and ages, so tests can inject one.
    """

    def __init__(self, config: CaptureConfig, device: str, store: ObjectStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.device = device
        self.store = store if store is not None else open_store(config.store, config.s3_endpoint_url,
                                                                config.s3_region)
        self._queue = DiskQueue(config.directory, config.max_queue_records, int(config.max_queue_mb * 2**20), clock)
        self._uploader = Uploader(self._queue, self.store, batch_size=config.upload_batch_size,
                                  interval_s=config.upload_interval_s, backoff_max_s=config.retry_backoff_max_s,
                                  embed_limit_bytes=config.embed_limit_bytes)
        self._lock = threading.Lock()
        self._skipped_full = 0  # samples not taken: the queue or its disk was full
        self._refused_full = 0  # explicit captures refused for the same reasons
        self._skipped_disk_full = 0  # of those, for lack of disk space
        self._refused_disk_full = 0

    def start(self) -> None:
        """Recover the queue left on disk (torn files removed, the rest queued) and start uploading."""
        self._queue.open()
        counts = self._queue.counts
        if counts["discarded_torn"] or counts["quarantined_corrupt"]:
            log.warning("capture queue %s: removed %d unfinished writes, quarantined %d damaged captures",
                        self._queue.directory, counts["discarded_torn"], counts["quarantined_corrupt"])
        self._uploader.start()

    def submit(self, record: CaptureRecord) -> None:
        """Queue ``record``; on disk when this returns.

        Raises :class:`ResourceExhaustedError` when the queue is full (nothing accepted is ever dropped
        to make room) and :class:`UserError` for a capture id already accepted or a record for another
        device.
        """
        try:
            self._submit(record)
        except ResourceExhaustedError as exc:
            with self._lock:
                self._refused_full += 1
                self._refused_disk_full += isinstance(exc, DiskFullError)
            raise

    def _submit(self, record: CaptureRecord) -> None:
        if not isinstance(record, CaptureRecord):
            raise UserError("not a capture record", value=type(record).__name__, fix="submit a CaptureRecord")
        if record.device != self.device:
            raise UserError(f"capture {record.capture_id!r} names another device", value=record.device,
                            expected=repr(self.device), fix="build capture records with this agent's device name")
        blob = record.encode()  # outside any lock: encoding large tensors must not stall other requests
        self._queue.add(record.capture_id, record.object_key(), blob)
        if len(self._queue) >= self.config.upload_batch_size:
            self._uploader.wake()

    def offer_sample(self, make_record: Callable[[], CaptureRecord]) -> bool:
        """Queue an automatic sample unless the queue or its disk is full; a skip is counted, and when
        that is known beforehand the record is never built."""
        blocked = self._queue.blocked()
        if blocked:
            self._skipped(blocked == "disk_full")
            return False
        try:
            self._submit(make_record())
        except ResourceExhaustedError as exc:  # filled up meanwhile, or this sample alone does not fit
            self._skipped(isinstance(exc, DiskFullError))
            return False
        return True

    def _skipped(self, disk: bool) -> None:
        with self._lock:
            self._skipped_full += 1
            self._skipped_disk_full += disk

    def status(self, capture_id: str) -> CaptureStatus:
        """State of one capture: queued, uploading, uploaded, failed (will retry) or unknown."""
        return self._queue.status(check_capture_id(capture_id))

    def stats(self) -> dict[str, int | float]:
        """queued, queued_bytes, uploading, uploaded (this run), failed, upload_errors, skipped_full and
        refused_full (samples skipped and captures refused because the queue or its disk was full),
        skipped_disk_full and refused_disk_full (of those, for lack of disk space), disk_full (1 while
        capturing is paused for lack of disk space), oldest_queued_age_s, and what recovery removed
        (discarded_torn, quarantined_corrupt)."""
        with self._lock:
            own = {"skipped_full": self._skipped_full, "refused_full": self._refused_full,
                   "skipped_disk_full": self._skipped_disk_full, "refused_disk_full": self._refused_disk_full}
        return {**self._queue.stats(), **own}

    def flush(self, timeout: float) -> bool:
        """Try to upload everything now, ignoring backoff; True when the queue drained within ``timeout``."""
        self._queue.make_due()
        if not self._uploader.running:
            self._uploader.drain()  # not started or already stopped: one pass in the caller's thread
            return self._queue.wait_empty(0)
        self._uploader.wake(flush=True)
        return self._queue.wait_empty(timeout)

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Make a last upload attempt (up to ``flush_timeout``), stop the thread, release the folder.

        What is not uploaded stays on disk and goes out after the next start.
        """
        if self._uploader.running:
            self.flush(flush_timeout)
        self._uploader.stop(timeout=max(1.0, flush_timeout))
        self._queue.close()
