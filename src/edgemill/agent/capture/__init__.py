"""Data capture: sample or accept captures, queue them durably on disk, upload them to an object store.

``edgemill.captures.record`` (the capture and its ``.emc`` format, shared with the control plane) →
``queue`` (bounded, fsync'd, crash-safe folder) → ``uploader`` (batches, retries with backoff) →
``edgemill.captures.store`` (local folder, S3-compatible, memory) or ``server_store`` (the control
plane); ``service`` wires them for the agent.
"""

from ...captures.record import CaptureExistsError, CaptureFormatError, CaptureRecord, object_key
from ...captures.store import LocalFolderStore, MemoryStore, ObjectStore, S3Store, open_store
from .queue import CaptureStatus
from .service import CaptureService

__all__ = ["CaptureExistsError", "CaptureFormatError", "CaptureRecord", "CaptureService", "CaptureStatus", "LocalFolderStore",
           "MemoryStore", "ObjectStore", "S3Store", "object_key", "open_store"]
