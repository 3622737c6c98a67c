"""Data capture: sample or accept captures, queue them durably on disk, upload them to an object store.

``record`` (the capture and its ``.emc`` format) → ``queue`` (bounded, fsync'd, crash-safe folder) →
``uploader`` (batches, retries with backoff) → ``store`` (local folder, S3-compatible, memory);
``service`` wires them for the agent.
"""

from .queue import CaptureStatus
from .record import CaptureExistsError, CaptureFormatError, CaptureRecord, object_key
from .service import CaptureService
from .store import LocalFolderStore, MemoryStore, ObjectStore, S3Store, open_store

__all__ = ["CaptureExistsError", "CaptureFormatError", "CaptureRecord", "CaptureService", "CaptureStatus", "LocalFolderStore",
           "MemoryStore", "ObjectStore", "S3Store", "object_key", "open_store"]
