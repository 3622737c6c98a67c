"""Latency, throughput and memory of a package on this device (what `edgemill bench` prints)."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import EdgemillError, OptionError
from ..package.layout import MANIFEST
from ..package.reader import open_package
from .backends import import_library
from ..tensors import TensorSpec, random_feed
from .session import Model, load


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * 1024 if os.uname().sysname == "Linux" else peak


def random_inputs(specs: Sequence[TensorSpec], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    return random_feed(specs, batch, seed,
                       fix="pass real inputs with -i NAME=FILE.npy, or recompile with --input NAME:SHAPE")


@dataclass(frozen=True)
class BenchResult:
    package_id: str
    name: str
    backend: str
    threads: int | None
    batch: int
    iterations: int
    import_ms: float  # importing the backend library, before the load
    load_ms: float  # verify + load, library already imported
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_per_s: float  # samples per second, one request at a time
    model_memory_mb: float  # resident memory added by loading and running the model
    peak_rss_mb: float  # peak resident memory of the whole process

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def bench(
    path: str,
    trusted_keys: Sequence[str] | None = None,
    threads: int | None = None,
    warmup: int = 10,
    iterations: int | None = None,
    duration_s: float = 5.0,
    batch: int = 1,
    inputs: dict[str, np.ndarray] | None = None,
) -> BenchResult:
    """Load the package (timed), warm up, then time single requests for ``iterations`` or ``duration_s``."""
    if warmup < 0 or (iterations is not None and iterations < 1) or duration_s <= 0 or batch < 1:
        raise OptionError("bad benchmark settings", value=f"warmup={warmup} iterations={iterations} "
                          f"duration={duration_s} batch={batch}", fix="use positive numbers")
    start = time.perf_counter()
    with open_package(path) as reader:  # the backend's import is not the model's load: do it first
        backend = str(json.loads(reader.read(MANIFEST)).get("backend", "")) if MANIFEST in reader.names() else ""
    try:
        import_library(backend)
    except EdgemillError:
        pass  # load() below reports an unknown backend or a broken package properly
    import_ms = (time.perf_counter() - start) * 1000
    rss_before = _rss_bytes()
    start = time.perf_counter()
    model: Model = load(path, trusted_keys=trusted_keys, threads=threads)
    load_ms = (time.perf_counter() - start) * 1000
    feed = inputs if inputs is not None else random_inputs(model.inputs, batch)
    for _ in range(warmup):
        model.run(feed)
    times: list[float] = []
    deadline = time.perf_counter() + duration_s
    while (len(times) < iterations) if iterations is not None else (time.perf_counter() < deadline or len(times) < 10):
        t0 = time.perf_counter()
        model.run(feed)
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1000
    rss_after = _rss_bytes()
    samples = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
    return BenchResult(
        package_id=model.package_id, name=model.name, backend=model.backend, threads=threads, batch=samples,
        iterations=len(times), import_ms=round(import_ms, 3), load_ms=round(load_ms, 3),
        p50_ms=round(float(np.percentile(arr, 50)), 4), p90_ms=round(float(np.percentile(arr, 90)), 4),
        p99_ms=round(float(np.percentile(arr, 99)), 4), mean_ms=round(float(arr.mean()), 4),
        min_ms=round(float(arr.min()), 4),
        throughput_per_s=round(samples * len(times) / (arr.sum() / 1000), 2),
        model_memory_mb=round(max(0, rss_after - rss_before) / 2**20, 2),
        peak_rss_mb=round(_peak_rss_bytes() / 2**20, 2),
    )
