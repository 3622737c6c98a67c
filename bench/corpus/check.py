"""Compile a corpus model with the edgemill CLI and compare the package with the source framework.

    python bench/corpus/check.py                    # every fetched model, default options (tuning on)
    python bench/corpus/check.py --only silero-vad --no-measure
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.corpus.entries import Entry, load_entries  # noqa: E402
from bench.corpus.sources import make_feed, open_source  # noqa: E402

SEEDS = (11, 12, 13, 14, 15)
SPREAD_CAP = 1e-3  # as edgemill.compiler.reference.SPREAD_CAP (kept apart: the harness checks the compiler)  # comparison inputs, drawn as the entry says (not the compiler's own check inputs)


@dataclass
class Outcome:
    id: str
    status: str  # matches | matches with bindings | refused | FAILED
    detail: str = ""
    backend: str | None = None
    precision: str | None = None
    max_rel_error: float | None = None
    exact: bool | None = None
    compile_s: float | None = None
    reference: str | None = None
    outputs: dict[str, float] = field(default_factory=dict)
    source_spread: float | None = None  # the framework's default configuration vs the strict reference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_validation(entry: Entry, folder: Path) -> Path | None:
    """The --validation file an entry documents (valid ids for a model that indexes with its input)."""
    if not entry.validation:
        return None
    from bench.corpus.sources import make_feed

    specs = [{"name": v["name"], "dtype": v["dtype"], "shape": list(v["shape"])} for v in entry.validation]
    recipes = Entry(**{**entry.__dict__, "feeds": {v["name"]: v["feed"] for v in entry.validation}})
    path = folder / f"{entry.id}-validation.npz"
    np.savez(path, **make_feed(recipes, specs, seed=7))
    return path


def compile_args(entry: Entry, out: Path, measure: bool = True) -> list[str]:
    args = ["compile", entry.compile_target(), "-o", str(out), *entry.options]
    validation = write_validation(entry, out.parent)
    if validation is not None:
        args += ["--validation", str(validation)]
    if not measure:
        args.append("--no-measure")
    return args


def run_cli(args: list[str]) -> tuple[int, str, str]:
    from edgemill.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("edgemill:")]


def compare(entry: Entry, package: Path) -> Outcome:
    """The package against the source framework on seeded inputs drawn as the entry says."""
    import edgemill.runtime as rt

    model = rt.load(package)
    manifest = model.manifest.to_dict()
    source = open_source(entry)
    names = [o.name for o in model.outputs]
    exact = True
    diffs: dict[str, float] = {}
    scales: dict[str, float] = {}
    mismatched: set[str] = set()
    spread_diffs: dict[str, float] = {}
    for seed in SEEDS:
        feed = make_feed(entry, manifest["inputs"], seed)
        got = model.run(feed)
        want = source.run({k: v for k, v in feed.items()})
        if source.default_run is not None:
            default = source.default_run(dict(feed))
            for name, value in (default.items() if isinstance(default, dict) else zip(names, default)):
                expected = np.asarray(want[name] if isinstance(want, dict) else want[names.index(name)])
                if expected.dtype.kind == "f" and expected.size:
                    spread_diffs[name] = max(spread_diffs.get(name, 0.0), float(np.abs(
                        np.asarray(value).astype(np.float64) - expected.astype(np.float64)).max()))
        pairs = want.items() if isinstance(want, dict) else zip(names, want)
        compared = 0
        for name, expected in pairs:
            if name not in got:
                continue
            compared += 1
            have, expected = np.asarray(got[name]), np.asarray(expected)
            if have.shape != expected.shape:
                return Outcome(entry.id, "FAILED", f"output {name!r} has shape {list(have.shape)}, the source "
                               f"{list(expected.shape)}", model.backend, model.manifest.precision)
            if expected.dtype.kind in "iub" or have.dtype.kind in "iub":
                same = bool(np.array_equal(have.astype(np.int64), expected.astype(np.int64)))
                exact &= same
                if not same:
                    mismatched.add(name)
                diffs.setdefault(name, 0.0)
                scales.setdefault(name, 1.0)
            elif expected.size:
                diff = float(np.abs(have.astype(np.float64) - expected.astype(np.float64)).max())
                exact &= diff == 0
                diffs[name] = max(diffs.get(name, 0.0), diff)
                scales[name] = max(scales.get(name, 0.0), float(np.abs(expected).max()))
        if compared == 0:
            return Outcome(entry.id, "FAILED", "no output of the source matched the package's names",
                           model.backend, model.manifest.precision)
    # Relative to each output's largest magnitude over all the comparison inputs (as the compiler's gate).
    per_output = {n: (float("inf") if n in mismatched else diffs[n] / scales[n] if scales[n] else diffs[n]) for n in diffs}
    worst = max(per_output.values(), default=0.0)
    # The source framework's own spread (onnxruntime's default session against its unoptimized run),
    # capped as the compiler caps it: an output within it is as close as the framework itself is by default.
    spread = {n: min(d / scales[n] if scales.get(n) else d, SPREAD_CAP) for n, d in spread_diffs.items() if n in per_output}
    allowed = {n: max(entry.tolerance, spread.get(n, 0.0)) for n in per_output}
    quantized = model.manifest.precision == "int8" or any(np.dtype(o.dtype).kind in "iu" for o in model.outputs)
    ok = all(per_output[n] <= allowed[n] for n in per_output)
    bound = any(o.startswith("--input") and "=" in nxt for o, nxt in zip(entry.options, entry.options[1:])) or bool(entry.member)
    status = ("matches with bindings" if bound else "matches") if ok else "FAILED"
    detail = "" if ok else f"max relative error {worst:.3g} > {max(allowed.values(), default=entry.tolerance):g}"
    if ok and worst > entry.tolerance:
        detail = (f"{worst:.2g} is within onnxruntime's own default-session distance from its unoptimized run "
                  f"({max(spread.values()):.2g})")
    if ok and quantized and model.backend == "litert" and not exact:
        status, detail = "FAILED", "a quantized model on LiteRT must be exact"
    return Outcome(entry.id, status, detail, model.backend, model.manifest.precision, worst, exact,
                   reference=manifest["accuracy"].get("reference"), outputs=per_output,
                   source_spread=max(spread.values(), default=None))


def check(entry: Entry, folder: Path, measure: bool = True) -> Outcome:
    out = folder / f"{entry.id}.emp"
    start = time.perf_counter()
    code, _, err = run_cli(compile_args(entry, out, measure))
    seconds = time.perf_counter() - start
    lines = error_lines(err)
    if entry.expect == "refuse":
        if code != 0 and len(lines) == 1 and entry.refusal in lines[0] and "internal error" not in lines[0]:
            return Outcome(entry.id, "refused", lines[0].removeprefix("edgemill: error: "), compile_s=seconds)
        return Outcome(entry.id, "FAILED", f"expected a refusal naming {entry.refusal!r}: exit {code}, {lines}",
                       compile_s=seconds)
    if code != 0:
        return Outcome(entry.id, "FAILED", (lines[0] if lines else err.strip()[-400:]), compile_s=seconds)
    outcome = compare(entry, out)
    outcome.compile_s = seconds
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated ids")
    parser.add_argument("--no-measure", action="store_true", help="compile with --no-measure (faster)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgemill-corpus"))
    parser.add_argument("--json", type=Path, help="write the outcomes here")
    args = parser.parse_args(argv)
    entries = [e for e in load_entries() if e.fetched() and (not args.only or e.id in args.only.split(","))]
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for entry in entries:
        try:
            outcome = check(entry, args.out, measure=not args.no_measure)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a failed row, not the end of the run
            outcome = Outcome(entry.id, "FAILED", f"harness: {type(exc).__name__}: {str(exc)[:300]}")
        outcomes.append(outcome)
        err = f"{outcome.max_rel_error:.1e}" if outcome.max_rel_error is not None else "-"
        print(f"{outcome.status:<22} {entry.id:<28} {outcome.backend or '-':<12} {err:<8} "
              f"{(outcome.compile_s or 0):6.1f}s  {outcome.detail[:250]}", flush=True)
    good = sum(o.status != "FAILED" for o in outcomes)
    print(f"{good}/{len(outcomes)} compile and match (or are refused as expected)")
    if args.json:
        args.json.write_text(json.dumps([o.to_dict() for o in outcomes], indent=2))
    return 0 if good == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
