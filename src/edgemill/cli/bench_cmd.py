"""`edgemill bench PKG`"""

from __future__ import annotations

import argparse

from .output import emit_json, info
from .run_cmd import read_inputs


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bench", parents=[common], help="measure latency, throughput and memory of a package",
                       description="Benchmark a package on this machine: load time, latency p50/p90/p99, "
                                   "throughput and memory. Inputs are random unless given with -i.")
    p.add_argument("package")
    p.add_argument("-i", "--input", action="append", default=[], metavar="NAME=FILE.npy|FILE.npz")
    p.add_argument("--trusted-key", action="append", metavar="PUB", help="verify the signature with this key")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the backend's choice)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    p.add_argument("--iterations", type=int, help="timed runs (default: as many as fit in --duration)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of timed runs (default: 5)")
    p.add_argument("--batch", type=int, default=1, help="batch size for a dynamic batch dimension (default: 1)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.benchmark import bench

    if not args.json:
        info(f"benchmarking {args.package} ...")
    result = bench(args.package, trusted_keys=args.trusted_key, threads=args.threads, warmup=args.warmup,
                   iterations=args.iterations, duration_s=args.duration, batch=args.batch,
                   inputs=read_inputs(args.input) if args.input else None)
    if args.json:
        emit_json(result.to_dict())
        return 0
    print(f"{result.name} [{result.backend}] id {result.package_id[:16]}  threads={result.threads or 'auto'} "
          f"batch={result.batch}")
    print(f"  load        {result.load_ms:.1f} ms (verify + load; importing {result.backend} took "
          f"{result.import_ms:.1f} ms more)")
    print(f"  latency     p50 {result.p50_ms:.3f} ms   p90 {result.p90_ms:.3f} ms   p99 {result.p99_ms:.3f} ms   "
          f"({result.iterations} runs)")
    print(f"  throughput  {result.throughput_per_s:.1f} samples/s (one request at a time)")
    print(f"  memory      model {result.model_memory_mb:.1f} MiB, process peak {result.peak_rss_mb:.1f} MiB")
    return 0
