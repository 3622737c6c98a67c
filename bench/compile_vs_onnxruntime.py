"""edgemill-compiled packages vs a bare onnxruntime session on the original model.

    python bench/compile_vs_onnxruntime.py --duration 5            # from the repo root, in the project venv

Builds four models with ``edgemill.demo.zoo`` (no downloads), compiles each with the ``edgemill`` CLI for
``-t host`` (timing the whole command), then measures, every measurement in its own fresh process:

* ``edgemill bench PKG --json --threads T --duration D``;
* a bare ``onnxruntime.InferenceSession`` on the ORIGINAL .onnx with onnxruntime's defaults except
  ``intra_op_num_threads = T`` (``bench/_ort_baseline.py``), timed the same way: 10 warm-up runs, then
  single runs for D seconds, p50/p90/p99 of the per-call ``perf_counter`` times.

The two are measured ``--repeats`` times in alternating order (edgemill first, then onnxruntime first, ...)
to spread drift on a shared machine; the table shows the median over the repeats, and the fastest repeat
of each side ("best"), which is what each side does when the machine leaves it alone. Lower ratio is better
for edgemill. Load times of both sides exclude ``import onnxruntime`` (both import it before the timer);
edgemill's load includes verifying the package (hashing every file). Both sides time one call
with batch 1; edgemill's time includes its per-call input check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import markdown_table  # bench/ is on sys.path when a script here runs

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "_ort_baseline.py"


def _models() -> list[tuple[str, str, Callable[[], Any]]]:
    from edgemill.demo import zoo

    return [
        ("cnn-224", "ResNet-style CNN, 1x3x224x224, channels 32/64/128/256",
         lambda: zoo.cnn(batch=1, image=224, channels=(32, 64, 128, 256), classes=1000)),
        ("encoder-4x256", "transformer encoder, 4 layers, d=256, seq 128, 4 heads, d_ff 1024",
         lambda: zoo.encoder(batch=1, seq=128, d_model=256, heads=4, d_ff=1024, layers=4)),
        ("mlp-3x512", "MLP 512-512-512-10, batch 1",
         lambda: zoo.mlp(batch=1, features=512, hidden=(512, 512), classes=10)),
        ("mlp-3x512-dyn", "MLP 512-512-512-10, dynamic batch dimension, run at batch 1",
         lambda: zoo.mlp(batch="batch", features=512, hidden=(512, 512), classes=10)),
    ]


def _run_json(cmd: list[str], what: str) -> dict[str, Any]:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"{what} printed no JSON: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def edgemill_cmd() -> list[str]:
    """The `edgemill` console script of this interpreter's environment, else `python -m edgemill`."""
    script = Path(sys.executable).parent / "edgemill"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgemill"]


def compile_package(onnx_path: Path, pkg: Path) -> float:
    if pkg.exists():
        pkg.unlink()
    cmd = [*edgemill_cmd(), "compile", str(onnx_path), "-t", "host", "-o", str(pkg)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"compile failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    return seconds


def bench_edgemill(pkg: Path, threads: int, duration: float) -> dict[str, Any]:
    return _run_json([*edgemill_cmd(), "bench", str(pkg), "--json", "--threads", str(threads),
                      "--duration", str(duration), "--batch", "1"], "edgemill bench")


def bench_ort(onnx_path: Path, threads: int, duration: float) -> dict[str, Any]:
    return _run_json([sys.executable, str(BASELINE), str(onnx_path), "--threads", str(threads),
                      "--duration", str(duration), "--batch", "1"], "onnxruntime baseline")


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in results))


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _ms(v: float) -> str:
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edgemill-compiled packages vs bare onnxruntime on the original models")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of timed runs per measurement (default: 5)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads on both sides (default: 2)")
    p.add_argument("--repeats", type=int, default=5,
                   help="measurements per model and side, in alternating order; the median is shown (default: 5)")
    p.add_argument("--out", help="directory for the generated models and packages (default: a temporary one)")
    p.add_argument("--only", action="append", help="benchmark only this model (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.duration <= 0 or args.threads < 1:
        p.error("--repeats, --duration and --threads must be positive")

    import onnx

    tmp = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="edgemill-bench-")
        out = Path(tmp.name)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)

    models = [m for m in _models() if not args.only or m[0] in args.only]
    if not models:
        p.error("--only names no known model: " + ", ".join(m[0] for m in _models()))
    entries: list[dict[str, Any]] = []
    for name, description, build in models:
        onnx_path, pkg = out / f"{name}.onnx", out / f"{name}.emp"
        onnx.save(build(), str(onnx_path))
        log(f"compiling {name} ...")
        seconds = compile_package(onnx_path, pkg)
        entries.append({"model": name, "description": description, "onnx": str(onnx_path), "package": str(pkg),
                        "onnx_bytes": onnx_path.stat().st_size, "package_bytes": pkg.stat().st_size,
                        "compile_s": round(seconds, 3), "edgemill": [], "onnxruntime": []})

    for r in range(args.repeats):
        for i, e in enumerate(entries):
            sides = [("edgemill", lambda e=e: bench_edgemill(Path(e["package"]), args.threads, args.duration)),
                     ("onnxruntime", lambda e=e: bench_ort(Path(e["onnx"]), args.threads, args.duration))]
            if (r + i) % 2:
                sides.reverse()
            for side, measure in sides:
                log(f"[{r + 1}/{args.repeats}] {e['model']}: {side} ...")
                result = measure()
                e[side].append(result)
                log(f"    p50 {result['p50_ms']:.4f} ms  p99 {result['p99_ms']:.4f} ms  ({result['iterations']} runs)")

    for e in entries:
        for side in ("edgemill", "onnxruntime"):
            e[f"{side}_median"] = {k: _median(e[side], k) for k in
                                   ("p50_ms", "p90_ms", "p99_ms", "load_ms", "throughput_per_s", "peak_rss_mb")}
        e["ratio_p50"] = round(e["edgemill_median"]["p50_ms"] / e["onnxruntime_median"]["p50_ms"], 3)
        e["ratio_p99"] = round(e["edgemill_median"]["p99_ms"] / e["onnxruntime_median"]["p99_ms"], 3)
        # The fastest repeat: what each side does when the shared machine leaves it alone.
        e["best_p50_ms"] = {side: min(float(r["p50_ms"]) for r in e[side]) for side in ("edgemill", "onnxruntime")}
        e["ratio_best_p50"] = round(e["best_p50_ms"]["edgemill"] / e["best_p50_ms"]["onnxruntime"], 3)

    if args.json:
        json.dump({"threads": args.threads, "duration_s": args.duration, "repeats": args.repeats,
                   "cpu_count": os.cpu_count(), "models": entries}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        header = ["model", "ORT default p50 ms", "edgemill p50 ms", "edgemill/ORT p50", "ORT p99 ms",
                  "edgemill p99 ms", "best p50 ORT / edgemill ms", "best ratio", "ORT load ms", "edgemill load ms",
                  "compile s", "package", ".onnx"]
        rows = [[e["model"], _ms(e["onnxruntime_median"]["p50_ms"]), _ms(e["edgemill_median"]["p50_ms"]),
                 f"{e['ratio_p50']:.2f}", _ms(e["onnxruntime_median"]["p99_ms"]), _ms(e["edgemill_median"]["p99_ms"]),
                 f"{_ms(e['best_p50_ms']['onnxruntime'])} / {_ms(e['best_p50_ms']['edgemill'])}",
                 f"{e['ratio_best_p50']:.2f}",
                 f"{e['onnxruntime_median']['load_ms']:.1f}", f"{e['edgemill_median']['load_ms']:.1f}",
                 f"{e['compile_s']:.2f}", _size(e["package_bytes"]), _size(e["onnx_bytes"])] for e in entries]
        print(f"threads={args.threads}  duration={args.duration:g} s per measurement  repeats={args.repeats} "
              f"(median shown)  batch 1")
        print(markdown_table(rows, header))
        print("\np50 of each repeat, ms (spread = (max - min) / median):")
        for e in entries:
            parts = []
            for side, label in (("onnxruntime", "ORT"), ("edgemill", "edgemill")):
                p50s = [float(r["p50_ms"]) for r in e[side]]
                spread = (max(p50s) - min(p50s)) / statistics.median(p50s)
                parts.append(f"{label} " + " ".join(_ms(v) for v in p50s) + f" (spread {spread:.0%})")
            print(f"  {e['model']}: " + "; ".join(parts))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
