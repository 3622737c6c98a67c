"""Time one corpus model in a process of its own: the edgemill package, or the source framework in-process.

    python bench/corpus/latency.py package ID PKG.emp --seconds 3
    python bench/corpus/latency.py source ID PKG.emp --seconds 3     # PKG names the inputs the feed needs

Each side gets the same seeded feed (drawn from the package's input specs as the corpus entry says),
10 warm-up calls, then single calls for ``--seconds`` (at least 20). Prints one JSON line: p50_ms, p90_ms,
calls. The package runs with its own (tuned) thread count; the source framework with its defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    import warnings

    import numpy as np

    from bench.corpus.entries import load_entries
    from bench.corpus.sources import make_feed, open_source
    from edgemill.package import open_package
    from edgemill.package.manifest import parse_manifest

    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=("package", "source"))
    parser.add_argument("id")
    parser.add_argument("package", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    entry = next(e for e in load_entries() if e.id == args.id)
    with open_package(args.package) as reader:
        manifest = parse_manifest(reader.read("manifest.json")).to_dict()
    feed = make_feed(entry, manifest["inputs"], seed=21)
    if args.side == "package":
        import edgemill.runtime as rt

        model = rt.load(args.package)
        call = model.run
    else:
        call = open_source(entry).call
    for _ in range(10):
        call(feed)
    times: list[float] = []
    deadline = time.perf_counter() + args.seconds
    while len(times) < 20 or time.perf_counter() < deadline:
        start = time.perf_counter()
        call(feed)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    print(json.dumps({"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "calls": len(times)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
