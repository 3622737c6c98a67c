"""edgemill's chosen package against the runtimes a user would pick instead, on five models built here.

    python bench/run.py                      # from the repo root, in a venv with '.[dev]' (torch, openvino, xgboost)
    python bench/run.py --models mlp,gbt --repeats 5 --duration 5 --json results.json

Models (``bench/_models.py``): a ResNet-18-style CNN and a MobileNetV2-style CNN at 224x224, both trained
briefly on scikit-learn's digits (scaled up to 224x224) so that reduced precision can be judged by top-1
on a real held-out split; a BERT-style encoder (4 layers, d 256, seq 128) and an MLP 512-512-512-10 with
random weights; a gradient-boosted tree ensemble (XGBoost) on digits.

For each model the script

1. exports the PyTorch model to ONNX (the file a user would hand to onnxruntime or OpenVINO), and makes
   onnxruntime's own static INT8 model from it (``quant_pre_process`` + ``quantize_static``, QDQ,
   per-channel, the calibration set below): the reduced-precision alternative a user would build;
2. compiles two edgemill packages with the CLI, for ``-t host``:
   * lossless: ``--precision fp32`` (nothing may change the outputs beyond float rounding);
   * reduced: ``--precision auto --max-accuracy-drop 0.01`` with ``--calibration`` (from the training
     split) and ``--validation`` (a validation split, labelled for the CNNs); the compiler measures and
     keeps the fastest candidate that passes the gate;
3. measures every runtime in its own fresh process (``bench/_worker.py``), ``--repeats`` times in rotating
   order, single calls at batch 1 for ``--duration`` seconds with ``--threads`` intra-op threads (edgemill
   uses the thread count its tuning chose), and reports the median p50;
4. runs a held-out test split (CNNs: 200 digits the compiler never saw; others: random inputs) through
   every runtime once, and reports top-1 (CNNs), argmax agreement with the FP32 original, and the max
   relative error against it.

Ratios compare edgemill with the fastest alternative of the same kind: lossless edgemill against PyTorch
eager, onnxruntime's default session and OpenVINO FP32; reduced edgemill against onnxruntime static INT8
and OpenVINO's default (bf16 on a CPU with AVX-512 BF16). For the tree ensemble the alternatives are
XGBoost's own ``inplace_predict`` and onnxruntime on the onnxmltools conversion. Lower is better for edgemill.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _models  # noqa: E402
from _report import markdown_table  # noqa: E402
from compile_vs_onnxruntime import edgemill_cmd  # noqa: E402

WORKER = HERE / "_worker.py"
ALL_MODELS = ("resnet", "mobilenet", "encoder", "mlp", "gbt")
TITLES = {
    "resnet": "ResNet-18-style CNN, 1x3x224x224 (trained on digits)",
    "mobilenet": "MobileNetV2-style CNN, 1x3x224x224 (trained on digits)",
    "encoder": "BERT-style encoder, 4 layers, d 256, 4 heads, seq 128 (random weights)",
    "mlp": "MLP 512-512-512-10, batch 1 (random weights)",
    "gbt": "XGBoost, 100 rounds x 10 classes, depth 4, on digits (64 features)",
}
TARGET_RATIO = 0.9
MLP_TARGET = 1.1


@dataclass(frozen=True)
class Runtime:
    label: str  # as printed
    kind: str  # bench/_worker.py RUNTIME
    model: Path
    family: str  # "lossless" | "reduced"
    ours: bool = False
    arch: str | None = None


@dataclass
class Case:
    name: str
    folder: Path
    feed: Path  # one timing input
    eval_inputs: Path  # held-out inputs, run one at a time
    labels: np.ndarray | None
    runtimes: list[Runtime] = field(default_factory=list)
    compiled: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> chosen/compile time
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --- building -------------------------------------------------------------------------------------


def export_torch(name: str, folder: Path, steps: int, data: _models.Digits) -> tuple[Path, Path, str]:
    """Build (and for CNNs train) the PyTorch model; save its state_dict and the ONNX export."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    net = _models.build_torch(name)
    if name in ("resnet", "mobilenet"):
        log(f"  training {name} on digits at 224x224 for {steps} steps ...")
        accuracy = _models.train_cnn(net, data, steps, log=log)
        log(f"  PyTorch held-out top-1 {accuracy:.4f}")
    net.eval()
    state = folder / f"{name}.pt"
    torch.save(net.state_dict(), state)
    onnx_path = folder / f"{name}.onnx"
    input_name = "tokens" if name == "encoder" else "input"
    torch.onnx.export(net, (torch.from_numpy(_models.example_input(name)),), str(onnx_path), input_names=[input_name],
                      output_names=["output"], opset_version=17, dynamo=False)
    return state, onnx_path, input_name


def ort_static_int8(onnx_path: Path, calibration: dict[str, np.ndarray], out: Path) -> Path:
    """onnxruntime's documented static INT8 recipe: pre-process, then QDQ with per-channel weights.
    Activations are uint8 (U8S8), not quantize_static's default int8 (S8S8): on this CPU the S8S8 model
    ran ResNet and MobileNet about 3x slower than U8S8, and the benchmark should face the faster peer."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calibration.values())))
            self.feeds = iter([{k: v[i:i + 1] for k, v in calibration.items()} for i in range(n)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def compile_package(source: Path, out: Path, extra: list[str], tune_budget: float) -> dict[str, Any]:
    args = ["compile", str(source), "-t", "host", "-o", str(out), "--tune-budget", str(tune_budget), *extra]
    cmd = [*edgemill_cmd(), *args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"edgemill compile failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    from edgemill.package import open_package

    with open_package(out) as reader:
        report = json.loads(reader.read("report.json"))
    return {"seconds": round(seconds, 1), "chosen": report["chosen"]["candidate"], "threads": report["chosen"]["threads"],
            "command": " ".join(args),
            "candidates": [{"label": c["candidate"], "status": c.get("status"), "passed": c.get("passed"),
                            "metric": c.get("metric"), "drop": c.get("drop"), "p50_ms": c.get("p50_ms"),
                            "reason": c.get("reason")} for c in report["candidates"]]}


def build_network_case(name: str, root: Path, steps: int, data: _models.Digits, tune_budget: float) -> Case:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    log(f"[{name}] building")
    state, onnx_path, input_name = export_torch(name, folder, steps, data)
    rng = np.random.default_rng(1)
    labels = None
    if name in ("resnet", "mobilenet"):
        # 1400 training digits; of the 397 held out, 197 validate the gate and 200 test.
        calibration = _models.to_image(data.train_x[:100])
        validation, val_labels = _models.to_image(data.test_x[:197]), data.test_y[:197]
        test, labels = _models.to_image(data.test_x[197:]), data.test_y[197:]
        val = save_npz(folder / "val.npz", **{input_name: validation, "labels": val_labels})
        feed = test[:1]
    else:
        shape = _models.example_input(name).shape[1:]
        calibration = rng.standard_normal((100, *shape)).astype(np.float32)
        test = rng.standard_normal((50, *shape)).astype(np.float32)
        val = save_npz(folder / "val.npz", **{input_name: rng.standard_normal((100, *shape)).astype(np.float32)})
        feed = _models.example_input(name)
    calib = save_npz(folder / "calib.npz", **{input_name: calibration})
    case = Case(name, folder, save_npz(folder / "feed.npz", **{input_name: feed}),
                save_npz(folder / "test.npz", **{input_name: test}), labels)

    log(f"[{name}] onnxruntime static INT8 (the peer's own quantization)")
    int8 = ort_static_int8(onnx_path, {input_name: calibration}, folder / f"{name}-ort-int8.onnx")
    log(f"[{name}] edgemill compile, lossless (--precision fp32)")
    case.compiled["lossless"] = compile_package(onnx_path, folder / "lossless.emp", ["--precision", "fp32"], tune_budget)
    log(f"[{name}]   chose {case.compiled['lossless']['chosen']} in {case.compiled['lossless']['seconds']} s")
    log(f"[{name}] edgemill compile, reduced (--precision auto --max-accuracy-drop 0.01)")
    case.compiled["reduced"] = compile_package(
        onnx_path, folder / "reduced.emp",
        ["--precision", "auto", "--max-accuracy-drop", "0.01", "--calibration", str(calib), "--validation", str(val)],
        tune_budget)
    log(f"[{name}]   chose {case.compiled['reduced']['chosen']} in {case.compiled['reduced']['seconds']} s")

    case.runtimes = [
        Runtime("PyTorch eager", "torch", state, "lossless", arch=name),
        Runtime("onnxruntime default", "ort", onnx_path, "lossless"),
        Runtime("OpenVINO FP32", "openvino-fp32", onnx_path, "lossless"),
        Runtime("edgemill lossless", "edgemill", folder / "lossless.emp", "lossless", ours=True),
        Runtime("onnxruntime static INT8", "ort", int8, "reduced"),
        Runtime("OpenVINO default (bf16)", "openvino-default", onnx_path, "reduced"),
        Runtime("edgemill auto, 1% allowed", "edgemill", folder / "reduced.emp", "reduced", ours=True),
    ]
    return case


def build_gbt_case(root: Path, data: _models.Digits, tune_budget: float) -> Case:
    import onnxmltools
    import xgboost as xgb
    from onnxmltools.convert.common.data_types import FloatTensorType

    folder = root / "gbt"
    folder.mkdir(parents=True, exist_ok=True)
    log("[gbt] training XGBoost on digits")
    x_train = data.train_x.reshape(len(data.train_x), -1)
    x_test = data.test_x.reshape(len(data.test_x), -1)
    clf = xgb.XGBClassifier(n_estimators=100, max_depth=4, random_state=0).fit(x_train, data.train_y)
    model_path = folder / "gbt.json"
    clf.get_booster().save_model(str(model_path))
    onnx_model = onnxmltools.convert_xgboost(clf, initial_types=[("input", FloatTensorType([None, 64]))])
    onnx_path = folder / "gbt.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())
    case = Case("gbt", folder, save_npz(folder / "feed.npz", input=x_test[:1]),
                save_npz(folder / "test.npz", input=x_test[:200]), data.test_y[:200])
    log("[gbt] edgemill compile, lossless")
    case.compiled["lossless"] = compile_package(model_path, folder / "lossless.emp", ["--precision", "fp32"], tune_budget)
    case.runtimes = [
        Runtime("XGBoost inplace_predict", "xgboost", model_path, "lossless"),
        Runtime("onnxruntime default (onnxmltools)", "ort", onnx_path, "lossless"),
        Runtime("edgemill lossless", "edgemill", folder / "lossless.emp", "lossless", ours=True),
    ]
    return case


# --- measuring ------------------------------------------------------------------------------------


def run_worker(case: Case, rt: Runtime, threads: int, duration: float, save: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, str(WORKER), rt.kind, str(rt.model), "--feed", str(case.feed), "--threads", str(threads),
           "--duration", str(duration)]
    if rt.arch:
        cmd += ["--arch", rt.arch]
    if save is not None:
        cmd += ["--eval", str(case.eval_inputs), "--save", str(save)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{rt.label} on {case.name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(case: Case, threads: int, duration: float, repeats: int) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {rt.label: [] for rt in case.runtimes}
    outputs: dict[str, Path] = {}
    n = len(case.runtimes)
    for r in range(repeats):
        for i in range(n):  # rotate the order each repeat so drift on a shared machine spreads over all
            rt = case.runtimes[(i + r) % n]
            save = case.folder / f"out-{len(outputs)}.npy" if rt.label not in outputs else None
            result = run_worker(case, rt, threads, duration, save)
            if save is not None:
                outputs[rt.label] = save
            runs[rt.label].append(result)
            log(f"[{case.name}] repeat {r + 1}/{repeats}  {rt.label:<34} p50 {result['p50_ms']:.4f} ms")
    reference = np.load(outputs[case.runtimes[1].label])  # onnxruntime default on the original: the FP32 truth
    rows = []
    for rt in case.runtimes:
        got = np.load(outputs[rt.label])
        p50s = [x["p50_ms"] for x in runs[rt.label]]
        row: dict[str, Any] = {"runtime": rt.label, "family": rt.family, "ours": rt.ours, "version": runs[rt.label][0]["version"],
                               "p50_ms": statistics.median(p50s), "best_p50_ms": min(p50s), "p50s_ms": p50s,
                               "p99_ms": statistics.median(x["p99_ms"] for x in runs[rt.label]),
                               "load_ms": statistics.median(x["load_ms"] for x in runs[rt.label])}
        if got.shape == reference.shape:
            row["max_rel_error"] = float(np.abs(got - reference).max() / max(float(np.abs(reference).max()), 1e-12))
            if reference.shape[1] >= 2 and case.name != "encoder":
                row["agreement"] = float((got.argmax(1) == reference.argmax(1)).mean())
                if case.labels is not None:
                    row["top1"] = float((got.argmax(1) == case.labels[: len(got)]).mean())
        rows.append(row)
    for family in ("lossless", "reduced"):
        ours = [r for r in rows if r["family"] == family and r["ours"]]
        others = [r for r in rows if r["family"] == family and not r["ours"]]
        if ours and others:
            best = min(others, key=lambda r: r["p50_ms"])
            ours[0]["ratio"] = ours[0]["p50_ms"] / best["p50_ms"]
            ours[0]["vs"] = best["runtime"]
    return rows


# --- reporting ------------------------------------------------------------------------------------


def fmt_ms(v: float) -> str:
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}" if v < 10 else f"{v:.2f}"


def case_table(case: Case, rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        table.append([
            r["runtime"], r["family"], fmt_ms(r["p50_ms"]), fmt_ms(r["best_p50_ms"]),
            f"{r['ratio']:.2f} vs {r['vs']}" if "ratio" in r else "",
            f"{r['top1']:.4f}" if "top1" in r else "", f"{r['agreement']:.4f}" if "agreement" in r else "",
            f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else "",
        ])
    header = ["runtime", "kind", "p50 ms", "best p50 ms", "edgemill / best alternative", "top-1", "agreement",
              "max rel err"]
    lines = [f"### {case.name}: {TITLES[case.name]}", "", markdown_table(table, header), ""]
    for family, info in case.compiled.items():
        lines.append(f"- edgemill {family}: `edgemill {info['command']}` chose **{info['chosen']}** "
                     f"(compile {info['seconds']} s)")
        for c in info["candidates"]:
            p50 = f"{c['p50_ms']:.3f} ms" if c.get("p50_ms") else "not measured"
            verdict = "passed" if c.get("passed") else "rejected" if c.get("passed") is False else "skipped"
            lines.append(f"  - {c['label']}: {p50}, {verdict}" + (f": {c['reason']}" if c.get("reason") else ""))
    versions = sorted({r["version"] for r in rows})
    lines += ["", "Versions: " + "; ".join(versions), ""]
    return "\n".join(lines)


def summary(results: dict[str, list[dict[str, Any]]], cases: dict[str, Case]) -> str:
    table = []
    for name, rows in results.items():
        ours = {r["family"]: r for r in rows if r["ours"]}
        if "lossless" in ours and "ratio" in ours["lossless"]:
            r = ours["lossless"]
            target = MLP_TARGET if name == "mlp" else TARGET_RATIO if name != "gbt" else None
            if name == "mlp":
                ort = next(x for x in rows if x["runtime"] == "onnxruntime default")
                ratio, vs = r["p50_ms"] / ort["p50_ms"], "onnxruntime default"
            else:
                ratio, vs = r["ratio"], r["vs"]
            met = "" if target is None else ("met" if ratio <= target else "MISSED")
            table.append([name, "lossless", f"{ratio:.2f}", vs, f"<= {target}" if target else "(none)", met, ""])
        if "reduced" in ours and "ratio" in ours["reduced"]:
            r = ours["reduced"]
            target = TARGET_RATIO if name in ("resnet", "mobilenet", "encoder") else None
            ref_top1 = next((x.get("top1") for x in rows if x["runtime"] == "onnxruntime default"), None)
            drop = f"top-1 drop {ref_top1 - r['top1']:+.4f}" if ref_top1 is not None and "top1" in r else (
                f"max rel err {r['max_rel_error']:.1e}" if "max_rel_error" in r else "")
            met = "" if target is None else ("met" if r["ratio"] <= target else "MISSED")
            table.append([name, "reduced", f"{r['ratio']:.2f}", r["vs"], f"<= {target}" if target else "(none)", met, drop])
    return markdown_table(table, ["model", "kind", "edgemill / best alternative p50", "best alternative", "target",
                                  "", "accuracy"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edgemill against PyTorch, onnxruntime and OpenVINO on five models built here")
    p.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every runtime (default: 2)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of timed calls per measurement (default: 3)")
    p.add_argument("--repeats", type=int, default=3, help="fresh-process measurements per runtime (default: 3)")
    p.add_argument("--train-steps", type=int, default=150, help="mini-batches of 16 to train each CNN (default: 150)")
    p.add_argument("--tune-budget", type=float, default=20.0, help="edgemill compile --tune-budget (default: 20)")
    p.add_argument("--out", help="keep the models, packages and outputs here (default: a temporary folder)")
    p.add_argument("--json", dest="json_path", help="also write every measurement to this JSON file")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(ALL_MODELS)}")
    if args.threads < 1 or args.duration <= 0 or args.repeats < 1 or args.train_steps < 1:
        p.error("--threads, --duration, --repeats and --train-steps must be positive")
    missing = [m for m in ("torch", "openvino", "xgboost", "onnxmltools", "sklearn") if _absent(m)]
    if missing:
        p.error(f"missing {', '.join(missing)}: run inside a venv with pip install -e '.[dev]'")

    with tempfile.TemporaryDirectory(prefix="edgemill-bench-") as tmp:
        root = Path(args.out or tmp)
        root.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("EDGEMILL_CACHE_DIR", str(root / "tune-cache"))  # measure tuning, not a stale cache
        data = _models.digits()
        cases: dict[str, Case] = {}
        results: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            case = build_gbt_case(root, data, args.tune_budget) if name == "gbt" else \
                build_network_case(name, root, args.train_steps, data, args.tune_budget)
            cases[name] = case
            results[name] = measure(case, args.threads, args.duration, args.repeats)
        print(f"threads={args.threads}  duration={args.duration} s  repeats={args.repeats} (median p50 shown)  batch 1\n")
        for name in names:
            print(case_table(cases[name], results[name]))
            print("p50 of each repeat, ms: " + "; ".join(
                f"{r['runtime']}: {' '.join(fmt_ms(v) for v in r['p50s_ms'])}" for r in results[name]) + "\n")
        print("## Summary\n")
        print(summary(results, cases))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(
                {"args": vars(args), "results": results, "compiled": {n: c.compiled for n, c in cases.items()}}, indent=1))
    return 0


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


if __name__ == "__main__":
    sys.exit(main())
