"""Child process for the kill -9 test: submits captures and prints each id once ``submit`` returned.

Usage: ``python tests/capture_crash_child.py QUEUE_DIR STORE_DIR COUNT``. It prints ``STARTED``, then
``ACCEPTED <id>`` per accepted capture, and keeps uploading (slowly) until it is killed. Contents are
a pure function of the index (:func:`make_record`) so the test can check every byte that arrived.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from edgemill.agent.capture import CaptureRecord, CaptureService, LocalFolderStore
from edgemill.agent.config import CaptureConfig

DEVICE = "crash-device"


def capture_id(index: int) -> str:
    return f"cap-{index:05d}"


def make_record(index: int) -> CaptureRecord:
    """The capture number ``index``: sizes and values vary with it, all reproducible."""
    rng = np.random.default_rng(index)
    return CaptureRecord(
        capture_id=capture_id(index), model=f"model-{index % 3}", model_version="1", device=DEVICE,
        created_unix=1_700_000_000.0 + index * 3600.0,  # spans several days: several key folders
        inputs={"x": rng.standard_normal((index % 7 + 1, 32)).astype(np.float32),
                "mask": rng.integers(0, 2, size=(5,)).astype(bool)},
        outputs={"y": np.array([index, -index], dtype=np.int64)},
        auxiliary={"note": f"capture {index}".encode() * (index % 5 + 1)},
        sampled=index % 2 == 0,
    )


class SlowFolderStore(LocalFolderStore):
    """A local folder that takes a few milliseconds per put, so uploads overlap the kill."""

    def put(self, key: str, data: bytes) -> None:
        time.sleep(0.004)
        super().put(key, data)


def config(queue_dir: Path, store_dir: Path) -> CaptureConfig:
    return CaptureConfig(directory=queue_dir, store=f"file://{store_dir}", upload_batch_size=8,
                         upload_interval_s=0.02, retry_backoff_max_s=0.1, max_queue_records=100_000)


def main(argv: list[str]) -> None:
    queue_dir, store_dir, count = Path(argv[0]), Path(argv[1]), int(argv[2])
    service = CaptureService(config(queue_dir, store_dir), DEVICE, store=SlowFolderStore(store_dir))
    service.start()
    print("STARTED", flush=True)
    for index in range(count):
        service.submit(make_record(index))
        print(f"ACCEPTED {capture_id(index)}", flush=True)
    print("DONE", flush=True)
    while True:  # keep uploading until killed
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
