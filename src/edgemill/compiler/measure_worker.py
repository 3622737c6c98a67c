"""Times one artifact in a process of its own (see :mod:`.tuning`). Reads ``DIR/spec.json`` and
``DIR/feed.npz``, prints one JSON line: ``[{"threads": T, "p50_ms": X, "runs": N}, ...]``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..runtime.backends import open_session

WARMUP_RUNS = 10
MIN_RUNS = 10
MAX_RUNS = 2000


def time_setting(backend: str, files: dict[str, bytes], entrypoint: str, spec: dict, threads: int,
                 feed: dict[str, np.ndarray]) -> dict[str, float]:
    session = open_session(backend, entrypoint, files, spec["outputs"], threads, spec["options"])
    for _ in range(WARMUP_RUNS):
        session.run(feed)
    times: list[float] = []
    deadline = time.perf_counter() + float(spec["seconds"])
    while len(times) < MIN_RUNS or (time.perf_counter() < deadline and len(times) < MAX_RUNS):
        start = time.perf_counter()
        session.run(feed)
        times.append(time.perf_counter() - start)
    return {"threads": threads, "p50_ms": float(np.median(times)) * 1000, "runs": len(times)}


def main(folder: str) -> int:
    root = Path(folder)
    spec = json.loads((root / "spec.json").read_text())
    files = {name: (root / name).read_bytes() for name in spec["files"]}
    with np.load(root / "feed.npz") as data:
        feed = {k: data[k] for k in data.files}
    results = [time_setting(spec["backend"], files, spec["entrypoint"], spec, t, feed) for t in spec["threads"]]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
