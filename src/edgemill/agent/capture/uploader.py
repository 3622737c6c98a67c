"""The uploader: a daemon thread that moves queued captures to the object store in batches.

It wakes every ``interval_s``, when a full batch is waiting, or on a flush; it then uploads batches
(oldest first, a few objects at a time) until nothing is due. A failed capture is retried after an
exponential backoff with jitter; when a whole batch fails (store unreachable) the thread itself backs
off too, so an offline device does not spin through its queue.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ...errors import first_line
from .queue import DiskQueue, Pending
from ...captures.record import SUFFIX, CaptureRecord
from ...captures.store import ObjectStore

log = logging.getLogger(__name__)

_BASE_DELAY_S = 0.5


def backoff_delay(attempt: int, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling from 0.5 s, capped at ``cap_s``.

    Half the delay is fixed and half random ("equal jitter"), so many devices that lost the same
    server do not retry in lockstep, yet none retries sooner than half its step.
    """
    delay = min(cap_s, _BASE_DELAY_S * 2.0 ** min(attempt - 1, 60))
    return delay / 2 + rand() * delay / 2


class Uploader:
    """Uploads what ``queue`` holds to ``store``; ``embed_limit_bytes`` > 0 also writes a JSON sidecar."""

    def __init__(self, queue: DiskQueue, store: ObjectStore, *, batch_size: int, interval_s: float,
                 backoff_max_s: float, embed_limit_bytes: int = 0, workers: int = 4) -> None:
        self.queue = queue
        self.store = store
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.backoff_max_s = backoff_max_s
        self.embed_limit_bytes = embed_limit_bytes
        self._pool = ThreadPoolExecutor(max(1, min(workers, batch_size)), thread_name_prefix="edgemill-upload")
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flush = False
        self._batch_ready = False
        self._failed_batches = 0  # consecutive batches in which nothing succeeded

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgemill-capture-uploader", daemon=True)
            self._thread.start()

    def wake(self, *, flush: bool = False) -> None:
        """Run soon: ``flush`` now even during backoff; otherwise (a full batch waits) unless backing off."""
        with self._cv:
            if flush:
                self._flush = True
            else:
                self._batch_ready = True
            self._cv.notify_all()

    def stop(self, timeout: float) -> None:
        """Finish the batch in hand (up to ``timeout``) and end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        # A put stuck past the timeout keeps its worker; its capture stays queued on disk.
        self._pool.shutdown(wait=not self.running, cancel_futures=True)

    def _run(self) -> None:
        delay = self.interval_s
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._flush
                                  or (self._batch_ready and self._failed_batches == 0), timeout=delay)
                if self._stopping:
                    return
                self._flush = self._batch_ready = False
            try:
                self.drain()
            except Exception:  # the thread must outlive any one bad pass (e.g. disk error)
                log.exception("capture upload pass failed; retrying later")
                self._failed_batches += 1
            delay = (self.interval_s if self._failed_batches == 0
                     else backoff_delay(self._failed_batches, self.backoff_max_s))

    def drain(self) -> None:
        """Upload batches until nothing is due, a whole batch fails, or the uploader stops."""
        while not self._stopping:
            batch = self.queue.take(self.batch_size)
            if not batch:
                return
            results = list(self._pool.map(self._upload_one, batch))
            try:
                self.queue.uploaded(p for p, error in zip(batch, results) if error is None)
            except Exception as exc:  # stored but not recorded: retry them (same keys, so no duplicates)
                note = f"stored, but not recorded in the queue folder: {type(exc).__name__}: {first_line(exc)}"
                results = [note if error is None else error for error in results]
            for pending, error in zip(batch, results):
                if error:
                    self.queue.failed(pending, error, lambda n: backoff_delay(n, self.backoff_max_s))
            if any(error is None for error in results) or not any(results):
                self._failed_batches = 0
            else:
                self._failed_batches += 1
                log.warning("capture upload failed (%d in a row): %s", self._failed_batches,
                            next(e for e in results if e))
                return

    def _upload_one(self, pending: Pending) -> str | None:
        """None when stored, "" when there was nothing to store (damaged or gone), else the error."""
        try:
            data = self.queue.read(pending)
            if data is None:
                return ""
            self.store.put(pending.key, data)
            if self.embed_limit_bytes > 0:
                summary = CaptureRecord.decode(data).summary(self.embed_limit_bytes)
                self.store.put(pending.key[: -len(SUFFIX)] + ".json",
                               json.dumps(summary, separators=(",", ":")).encode())
            return None
        except Exception as exc:  # noqa: BLE001 - any store failure is retried; the message is kept
            return f"{type(exc).__name__}: {first_line(exc)}"
