"""What the edgemill runtime costs on top of a bare onnxruntime session.

    python bench/runtime_overhead.py                      # from the repo root, in the project venv

Every measurement runs in a fresh process (``--repeats`` of each, in alternating order; medians shown):

(a) import time and RSS after ``import onnxruntime`` alone;
(b) the same after ``import edgemill.runtime`` then ``import onnxruntime``;
(c) load time and RSS after ``edgemill.runtime.load(PKG)`` vs after a bare ``ort.InferenceSession`` on the
    original .onnx (both processes have imported what they need first; RSS also after one run);
(d) per-call latency of ``model.run(feed)`` vs bare ``session.run(None, feed)`` over ``--calls`` calls,
    with 1 intra-op thread (steady on a shared 2-core machine) and with ``--threads``, plus ``session.run(None, feed)`` on the very onnxruntime session edgemill created (same graph, same
    options), which isolates the Python wrapper (input check, output dict) from graph differences.

The model is the MLP 512-512-512-10 from ``edgemill.demo.zoo`` at batch 1, compiled with ``edgemill compile
-t host``. Differences are edgemill minus bare.

Only the standard library is imported at module level: the child processes measure imports from a
clean interpreter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import markdown_table  # bench/ is on sys.path when a script here runs

HERE = Path(__file__).resolve().parent


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _hwm_mib() -> float:
    return _status_mib("VmHWM")


# ---------------------------------------------------------------------------------------------------------
# Children: one measurement each, JSON on stdout.


def child(mode: str, path: str | None, threads: int, calls: int) -> dict[str, Any]:
    if mode == "import-ort":
        rss0, t0 = _rss_mib(), time.perf_counter()
        import onnxruntime

        t1 = time.perf_counter()
        return {"import_ms": (t1 - t0) * 1000, "rss_before_mib": rss0, "rss_after_mib": _rss_mib()}
    if mode == "import-edgemill":
        rss0, t0 = _rss_mib(), time.perf_counter()
        import edgemill.runtime  # noqa: F401

        t1 = time.perf_counter()
        import onnxruntime

        t2 = time.perf_counter()
        return {"import_ms": (t2 - t0) * 1000, "edgemill_runtime_import_ms": (t1 - t0) * 1000,
                "rss_before_mib": rss0, "rss_after_mib": _rss_mib()}

    assert path is not None
    sys.path.insert(0, str(HERE))
    import numpy as np
    import onnxruntime  # noqa: F401 - imported before the RSS baseline on both sides
    from _ort_baseline import default_session, summarize, time_calls

    feed = {"features": np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)}
    if mode.endswith("edgemill") or mode == "calls-edgemill-inner":
        import edgemill.runtime as rt

        rss0, t0 = _rss_mib(), time.perf_counter()
        model = rt.load(path, threads=threads)
        load_ms = (time.perf_counter() - t0) * 1000
        if mode == "calls-edgemill-inner":
            # The onnxruntime session inside the edgemill model (private attributes: bench code only).
            inner = model._session._session  # type: ignore[attr-defined]
            call = lambda: inner.run(None, feed)
        else:
            call = lambda: model.run(feed)
    else:
        rss0, t0 = _rss_mib(), time.perf_counter()
        session = default_session(path, threads)
        load_ms = (time.perf_counter() - t0) * 1000
        call = lambda: session.run(None, feed)
    if mode.startswith("load-"):
        rss_loaded = _rss_mib()
        call()
        return {"load_ms": load_ms, "rss_before_load_mib": rss0, "rss_after_load_mib": rss_loaded,
                "rss_after_run_mib": _rss_mib(), "peak_rss_mib": _hwm_mib()}
    times = time_calls(call, iterations=calls, warmup=200)
    return summarize(times)


CHILD_MODES = ("import-ort", "import-edgemill", "load-ort", "load-edgemill", "calls-ort", "calls-edgemill",
               "calls-edgemill-inner")


# ---------------------------------------------------------------------------------------------------------
# Parent.


def run_child(mode: str, path: str | None, threads: int, calls: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--threads", str(threads),
           "--calls", str(calls)]
    if path:
        cmd += ["--path", path]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def measure_pair(modes: list[tuple[str, str | None]], repeats: int, threads: int, calls: int,
                 log) -> dict[str, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """Each (mode, path) ``repeats`` times, rotating the order every round."""
    results: dict[str, list[dict[str, Any]]] = {m: [] for m, _ in modes}
    for r in range(repeats):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode, path in order:
            results[mode].append(run_child(mode, path, threads, calls))
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{m} " + (f"p50 {results[m][-1]['p50_ms'] * 1000:.2f} us" if "p50_ms" in results[m][-1]
                       else f"{results[m][-1].get('import_ms', results[m][-1].get('load_ms')):.1f} ms")
            for m, _ in modes))
    return results


def med(rs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edgemill runtime overhead vs bare onnxruntime")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads on both sides (default: 2)")
    p.add_argument("--calls", type=int, default=20000, help="timed calls per per-call measurement (default: 20000)")
    p.add_argument("--repeats", type=int, default=5,
                   help="fresh processes per measurement, in rotating order; medians shown (default: 5)")
    p.add_argument("--out", help="directory for the model and package (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        json.dump(child(args.child, args.path, args.threads, args.calls), sys.stdout)
        return 0
    if args.repeats < 1 or args.calls < 1 or args.threads < 1:
        p.error("--repeats, --calls and --threads must be positive")

    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    tmp = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="edgemill-overhead-")
        out = Path(tmp.name)
    onnx_path, pkg = out / "mlp-3x512.onnx", out / "mlp-3x512.emp"
    code = ("import sys, onnx; from edgemill.demo import zoo; "
            "onnx.save(zoo.mlp(batch=1, features=512, hidden=(512, 512), classes=10), sys.argv[1])")
    build = subprocess.run([sys.executable, "-c", code, str(onnx_path)], check=False, capture_output=True, text=True)
    if build.returncode != 0:
        raise SystemExit(build.stderr)
    if pkg.exists():
        pkg.unlink()
    script = Path(sys.executable).parent / "edgemill"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "edgemill"]
    comp = subprocess.run([*cli, "compile", str(onnx_path), "-t", "host", "-o", str(pkg), "-q"],
                          check=False, capture_output=True, text=True)
    if comp.returncode != 0:
        raise SystemExit(comp.stderr)

    run_child("import-ort", None, args.threads, args.calls)  # warm the file cache; not counted
    run_child("import-edgemill", None, args.threads, args.calls)
    log("(a, b) imports ...")
    imports = measure_pair([("import-ort", None), ("import-edgemill", None)], args.repeats, args.threads,
                           args.calls, log)
    log("(c) load ...")
    loads = measure_pair([("load-ort", str(onnx_path)), ("load-edgemill", str(pkg))], args.repeats, args.threads,
                         args.calls, log)
    call_threads = sorted({1, args.threads})
    calls_by_threads: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for t in call_threads:
        log(f"(d) {args.calls} calls, threads={t} ...")
        calls_by_threads[t] = measure_pair([("calls-ort", str(onnx_path)), ("calls-edgemill", str(pkg)),
                                            ("calls-edgemill-inner", str(pkg))], args.repeats, t, args.calls, log)

    io, ie = imports["import-ort"], imports["import-edgemill"]
    lo, le = loads["load-ort"], loads["load-edgemill"]
    summary: dict[str, Any] = {
        "import_ms": {"ort": med(io, "import_ms"), "edgemill": med(ie, "import_ms"),
                      "edgemill_runtime_alone": med(ie, "edgemill_runtime_import_ms")},
        "rss_after_import_mib": {"interpreter": med(io + ie, "rss_before_mib"), "ort": med(io, "rss_after_mib"),
                                 "edgemill": med(ie, "rss_after_mib")},
        "load_ms": {"ort": med(lo, "load_ms"), "edgemill": med(le, "load_ms")},
        "rss_added_by_load_mib": {"ort": med([{"v": r["rss_after_load_mib"] - r["rss_before_load_mib"]} for r in lo], "v"),
                                  "edgemill": med([{"v": r["rss_after_load_mib"] - r["rss_before_load_mib"]} for r in le], "v")},
        "rss_after_load_mib": {"ort": med(lo, "rss_after_load_mib"), "edgemill": med(le, "rss_after_load_mib")},
        "rss_after_first_run_mib": {"ort": med(lo, "rss_after_run_mib"), "edgemill": med(le, "rss_after_run_mib")},
        "peak_rss_mib": {"ort": med(lo, "peak_rss_mib"), "edgemill": med(le, "peak_rss_mib")},
        "per_call_us": {str(t): {k: {"ort": med(c["calls-ort"], k) * 1000, "edgemill": med(c["calls-edgemill"], k) * 1000,
                                     "edgemill_inner": med(c["calls-edgemill-inner"], k) * 1000}
                                 for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
                        for t, c in calls_by_threads.items()},
        "per_call_p50_us_each_round": {str(t): {m: [r["p50_ms"] * 1000 for r in rs] for m, rs in c.items()}
                                       for t, c in calls_by_threads.items()},
    }
    if args.json:
        json.dump({"threads": args.threads, "calls": args.calls, "repeats": args.repeats, "summary": summary,
                   "raw": {"imports": imports, "loads": loads,
                                                                          "calls": {str(t): c for t, c in calls_by_threads.items()}}}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        s = summary
        print(f"MLP 512-512-512-10, batch 1, threads={args.threads}, {args.repeats} fresh processes per row "
              f"(median), {args.calls} calls per per-call process")
        print()
        rows = [
            ["(a,b) import time, ms", f"{s['import_ms']['ort']:.1f}", f"{s['import_ms']['edgemill']:.1f}",
             f"{s['import_ms']['edgemill'] - s['import_ms']['ort']:+.1f} ms"],
            ["(a,b) RSS after imports, MiB", f"{s['rss_after_import_mib']['ort']:.1f}",
             f"{s['rss_after_import_mib']['edgemill']:.1f}",
             f"{s['rss_after_import_mib']['edgemill'] - s['rss_after_import_mib']['ort']:+.1f} MiB"],
            ["(c) load time, ms", f"{s['load_ms']['ort']:.1f}", f"{s['load_ms']['edgemill']:.1f}",
             f"{s['load_ms']['edgemill'] - s['load_ms']['ort']:+.1f} ms"],
            ["(c) RSS added by load, MiB", f"{s['rss_added_by_load_mib']['ort']:.1f}",
             f"{s['rss_added_by_load_mib']['edgemill']:.1f}",
             f"{s['rss_added_by_load_mib']['edgemill'] - s['rss_added_by_load_mib']['ort']:+.1f} MiB"],
            ["(c) RSS after load, MiB", f"{s['rss_after_load_mib']['ort']:.1f}", f"{s['rss_after_load_mib']['edgemill']:.1f}",
             f"{s['rss_after_load_mib']['edgemill'] - s['rss_after_load_mib']['ort']:+.1f} MiB"],
            ["(c) RSS after first run, MiB", f"{s['rss_after_first_run_mib']['ort']:.1f}",
             f"{s['rss_after_first_run_mib']['edgemill']:.1f}",
             f"{s['rss_after_first_run_mib']['edgemill'] - s['rss_after_first_run_mib']['ort']:+.1f} MiB"],
            ["(c) peak RSS, MiB", f"{s['peak_rss_mib']['ort']:.1f}", f"{s['peak_rss_mib']['edgemill']:.1f}",
             f"{s['peak_rss_mib']['edgemill'] - s['peak_rss_mib']['ort']:+.1f} MiB"],
        ]
        print(markdown_table(rows, ["measurement", "bare onnxruntime", "edgemill", "edgemill - bare"]))
        print(f"\n(a) interpreter alone: {s['rss_after_import_mib']['interpreter']:.1f} MiB; "
              f"`import edgemill.runtime` alone: {s['import_ms']['edgemill_runtime_alone']:.1f} ms")
        print()
        rows = [[f"threads={t} {k.replace('_ms', '')}", f"{v['ort']:.2f}", f"{v['edgemill']:.2f}",
                 f"{v['edgemill'] - v['ort']:+.2f}", f"{v['edgemill_inner']:.2f}", f"{v['edgemill'] - v['edgemill_inner']:+.2f}"]
                for t, pc in s["per_call_us"].items() for k, v in pc.items()]
        print(markdown_table(rows, ["(d) per call, us", "bare session.run", "edgemill model.run", "edgemill - bare",
                           "edgemill's own ORT session.run", "wrapper (model.run - its session.run)"]))
        print("\n(d) p50 of each process, us:")
        for t, each in s["per_call_p50_us_each_round"].items():
            print(f"  threads={t}: " + "; ".join(f"{m.replace('calls-', '')} " + " ".join(f"{v:.1f}" for v in vs)
                                               for m, vs in each.items()))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
