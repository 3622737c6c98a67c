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
SLICE_S = 0.1  # how long one setting runs before the next takes its turn


def time_settings(backend: str, files: dict[str, bytes], entrypoint: str, spec: dict, threads: list[int],
                  feed: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Every thread setting timed in turns, SLICE_S at a time, for ``seconds`` each in all: a busy moment of
    the machine then falls on every setting alike. Timed one after the other, a compile on a loaded
    machine once measured 2 threads while something else ran and packaged 1 thread, at half the speed."""
    sessions = [(t, open_session(backend, entrypoint, files, spec["outputs"], t, spec["options"])) for t in threads]
    for _, session in sessions:
        for _ in range(WARMUP_RUNS):
            session.run(feed)
    times: dict[int, list[float]] = {t: [] for t in threads}
    deadline = time.perf_counter() + float(spec["seconds"]) * len(sessions)
    while True:
        for t, session in sessions:
            runs = times[t]
            slice_end = time.perf_counter() + SLICE_S
            while (len(runs) < MIN_RUNS or time.perf_counter() < slice_end) and len(runs) < MAX_RUNS:
                start = time.perf_counter()
                session.run(feed)
                runs.append(time.perf_counter() - start)
        enough = all(len(r) >= MIN_RUNS for r in times.values())
        if (enough and time.perf_counter() >= deadline) or all(len(r) >= MAX_RUNS for r in times.values()):
            break
    return [{"threads": t, "p50_ms": float(np.median(times[t])) * 1000, "runs": len(times[t])} for t in threads]


def main(folder: str) -> int:
    root = Path(folder)
    spec = json.loads((root / "spec.json").read_text())
    files = {name: (root / name).read_bytes() for name in spec["files"]}
    with np.load(root / "feed.npz") as data:
        feed = {k: data[k] for k in data.files}
    results = time_settings(spec["backend"], files, spec["entrypoint"], spec, list(spec["threads"]), feed)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
