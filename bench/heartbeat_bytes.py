"""How many bytes drift histograms add to a heartbeat: per model, after a day of traffic.

    python bench/heartbeat_bytes.py [--rate 10] [--hours 24] [--classes 1000]

Compiles the test MLP (64 input columns, dynamic batch) with a baseline of 4,096 standard-normal rows,
so the package watches 34 features (32 of its columns, the predicted class and the top score), then
counts ``--rate`` requests a second for ``--hours`` hours of inputs through the model and the agent's
own counter (:class:`edgemill.monitoring.window.FeatureWindow`, the one the agent's heartbeat reads),
and sizes the heartbeat's ``drift`` entry for the model exactly as the agent sends it (compact JSON:
model, package id, epoch, bins digest and the cumulative counts). With ``--classes`` (0: skip) it does
the same for a classifier of that many classes (its predicted-class feature has one bin per class and
one for "other"). The inputs are drawn from the baseline's own distribution, so the counts spread over
every bin, as a day of in-distribution traffic would.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

TARGET_BYTES = 4096  # issue 15: at most 4 KiB per model with 32 monitored features


def drift_entry_bytes(folder: Path, name: str, features: int, classes: int, samples: int,  # type: ignore[type-arg]
                      chunk: int = 8192) -> dict:
    import onnx

    import edgemill
    from edgemill.demo import zoo
    from edgemill.monitoring.window import FeatureWindow
    from edgemill.runtime import load

    rng = np.random.default_rng(0)
    onnx.save(zoo.mlp(batch="N", features=features, hidden=(128,), classes=classes), str(folder / f"{name}.onnx"))
    np.savez(folder / f"{name}-baseline.npz", features=rng.standard_normal((4096, features)).astype(np.float32))
    package = edgemill.compile(folder / f"{name}.onnx", output=folder / f"{name}.emp", measure=False, name=name,
                               version="1.0.0", baseline=folder / f"{name}-baseline.npz").path
    model = load(package)
    baseline = model.baseline
    assert baseline is not None, "the package carries no baseline"
    window = FeatureWindow(baseline.features)
    t0 = time.perf_counter()
    left = samples
    while left:
        n = min(chunk, left)
        feeds = {"features": rng.standard_normal((n, features)).astype(np.float32)}
        window.observe(feeds, model.run(feeds))
        left -= n
    counted_s = time.perf_counter() - t0
    entry = {"model": name, "package_id": model.package_id, "epoch": window.epoch, "bins": window.bins_digest,
             "counts": window.totals_in_order()}
    size = len(json.dumps(entry, separators=(",", ":")).encode())
    counts_only = len(json.dumps(entry["counts"], separators=(",", ":")).encode())
    widest = max(range(len(baseline.features)), key=lambda i: baseline.features[i].bins)
    return {"model": name, "features_watched": len(baseline.features), "bins": sum(f.bins for f in baseline.features),
            "samples": int(window.samples), "drift_entry_bytes": size, "counts_bytes": counts_only,
            "widest_feature": baseline.features[widest].key, "widest_feature_bins": baseline.features[widest].bins,
            "widest_feature_bytes": len(json.dumps(entry["counts"][widest], separators=(",", ":")).encode()),
            "count_s": round(counted_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second on the device")
    parser.add_argument("--hours", type=float, default=24.0, help="how long the counters have run")
    parser.add_argument("--features", type=int, default=64, help="input columns of the MLP (32 are watched)")
    parser.add_argument("--classes", type=int, default=1000, help="also a classifier of this many classes (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    samples = int(args.rate * args.hours * 3600)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgemill-hb-") as tmp:
        results.append(drift_entry_bytes(Path(tmp), "tabular-mlp", args.features, 10, samples))
        if args.classes:
            results.append(drift_entry_bytes(Path(tmp), f"classifier-{args.classes}", args.features, args.classes,
                                             samples))
    for i, r in enumerate(results):
        # The target is for the tabular model (32 watched columns, ~10 bins each); a 1000-class output
        # adds a feature of 1,001 bins on top, reported for what it costs.
        verdict = (f"; target <= {TARGET_BYTES} B: {'met' if r['drift_entry_bytes'] <= TARGET_BYTES else 'MISSED'}"
                   if i == 0 else "")
        print(f"{r['model']}: {r['features_watched']} features, {r['bins']} bins, {r['samples']:,} samples counted: "
              f"drift entry {r['drift_entry_bytes']:,} B ({r['drift_entry_bytes'] / 1024:.2f} KiB) as compact "
              f"JSON, of which counts {r['counts_bytes']:,} B and its widest feature ({r['widest_feature']}, "
              f"{r['widest_feature_bins']} bins) {r['widest_feature_bytes']:,} B{verdict}")
    out = {"rate_per_s": args.rate, "hours": args.hours, "models": results}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
