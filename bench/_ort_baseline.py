"""The bare onnxruntime baseline: a default InferenceSession on an .onnx file, timed like `edgemill bench`.

Run it in its own process (thread pools of different sessions fight on a small machine):

    python bench/_ort_baseline.py MODEL.onnx --threads 2 --duration 5 [--batch 1]

It prints one JSON object on stdout: load_ms, p50_ms, p90_ms, p99_ms, mean_ms, min_ms, iterations,
throughput_per_s, model_memory_mb, peak_rss_mb - the same keys and the same method as `edgemill bench
--json` (warm up 10 runs, then single runs for ``duration`` seconds and at least 10, perf_counter per call).
Like `edgemill bench`'s, load_ms and model_memory_mb exclude ``import onnxruntime``, which is timed
first and reported as import_ms.
The session gets ``intra_op_num_threads`` and nothing else: every other option is onnxruntime's default.
Only the standard library is imported at module level, so helpers here can be imported cheaply.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * 1024 if sys.platform.startswith("linux") else peak


def session_feed(session, batch: int = 1, seed: int = 0):  # type: ignore[no-untyped-def]
    """Random inputs for an onnxruntime session; a symbolic or unknown first dim gets ``batch``, others 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(arg.shape)]
        dtype = np.dtype(_DTYPES.get(arg.type, "float32"))
        if dtype.kind == "f":
            feed[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feed[arg.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feed[arg.name] = rng.integers(0, 10, shape).astype(dtype)
    return feed


def time_calls(call, duration_s: float | None = None, iterations: int | None = None, warmup: int = 10) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds per call: ``warmup`` untimed calls, then ``iterations`` calls or as many as fit in
    ``duration_s`` (at least 10) - the loop `edgemill bench` runs."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    clock = time.perf_counter
    if iterations is not None:
        for _ in range(iterations):
            t0 = clock()
            call()
            times.append(clock() - t0)
        return times
    assert duration_s is not None
    deadline = clock() + duration_s
    while clock() < deadline or len(times) < 10:
        t0 = clock()
        call()
        times.append(clock() - t0)
    return times


def summarize(times_s: list[float], samples: int = 1) -> dict[str, float]:
    import numpy as np

    arr = np.array(times_s) * 1000
    return {
        "iterations": len(times_s),
        "p50_ms": round(float(np.percentile(arr, 50)), 4),
        "p90_ms": round(float(np.percentile(arr, 90)), 4),
        "p99_ms": round(float(np.percentile(arr, 99)), 4),
        "mean_ms": round(float(arr.mean()), 4),
        "min_ms": round(float(arr.min()), 4),
        "throughput_per_s": round(samples * len(times_s) / (arr.sum() / 1000), 2),
    }


def default_session(path: str, threads: int | None):  # type: ignore[no-untyped-def]
    """onnxruntime's defaults, except the intra-op thread count."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def measure(path: str, threads: int | None, duration_s: float, batch: int = 1, warmup: int = 10) -> dict[str, object]:
    import numpy  # noqa: F401 - `edgemill bench` has numpy imported before it starts its load timer

    # As `edgemill bench` does: import the library first (import_ms), then time the load alone.
    start = time.perf_counter()
    import onnxruntime  # noqa: F401

    imported = time.perf_counter()
    rss_before = rss_bytes()
    session = default_session(path, threads)
    end = time.perf_counter()
    feed = session_feed(session, batch)
    result: dict[str, object] = {"runtime": "onnxruntime-default", "model": os.path.basename(path),
                                 "threads": threads, "batch": batch, "load_ms": round((end - imported) * 1000, 3),
                                 "import_ms": round((imported - start) * 1000, 3)}
    result.update(summarize(time_calls(lambda: session.run(None, feed), duration_s, warmup=warmup), batch))
    result["model_memory_mb"] = round(max(0, rss_bytes() - rss_before) / 2**20, 2)
    result["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of timed runs (default: 5)")
    p.add_argument("--batch", type=int, default=1, help="size for a dynamic batch dimension (default: 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    args = p.parse_args(argv)
    json.dump(measure(args.model, args.threads, args.duration, args.batch, args.warmup), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
