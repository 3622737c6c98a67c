"""`edgemill compile MODEL -t TARGET`"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .inspect_cmd import partition_lines
from .output import emit_json, fmt_ms, info, table
from .quiet import native_stderr_captured


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compile", parents=[common], help="compile a model into a package for a target",
                       description="Compile a model for a hardware target and write a package (.emp file or directory).")
    p.add_argument("model", nargs="?", help="the model: a file or directory from any supported framework")
    p.add_argument("--list-frameworks", action="store_true",
                   help="list the frameworks edgemill reads, which are installed, and the extra for the rest")
    p.add_argument("-t", "--target", default="host", help="target name from `edgemill targets` (default: host)")
    p.add_argument("-o", "--output", help="package to write: NAME.emp (tar) or a directory (default: MODEL-TARGET.emp)")
    p.add_argument("--framework", help="source framework, when it cannot be detected from the file")
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE[:DTYPE] | NAME=VALUE",
                   help="fix an input's shape, e.g. image:1x3x224x224:float32 (a 0-d input: sr:scalar), and/or bind "
                        "it to the value your application passes, e.g. sr=16000: generated check inputs use it, "
                        "and PyTorch int/float/bool arguments are traced with it (repeat per input)")
    p.add_argument("--precision", default="auto",
                   help="auto | fp32 | fp16 | bf16 | int8 (default: auto: every precision the target computes, "
                        "kept only if it passes the accuracy gate)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | openvino | tvm | litert | reference (default: auto: "
                                                      "measure the target's backends and keep the fastest)")
    p.add_argument("--calibration", metavar="DATA",
                   help="representative inputs for static INT8: .npz (one array per input, samples first) "
                        "or a folder of .npy samples")
    p.add_argument("--calibration-method", default="minmax", help="minmax | entropy | percentile (default: minmax)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.0, metavar="X",
                   help="what reduced precision may lose, as a fraction (0.01 = one point of top-1 accuracy with "
                        "labelled --validation data); default 0: no loss")
    p.add_argument("--tune-budget", type=float, default=20.0, metavar="SECONDS",
                   help="seconds spent measuring candidates on this machine (default: 20; cached per model); "
                        "the mixed-precision search gets as long again")
    p.add_argument("--no-mixed-precision", action="store_true",
                   help="static INT8 all or nothing: do not return the operators that cost the most accuracy to FP32 "
                        "when the fully quantized model misses --max-accuracy-drop")
    p.add_argument("--name", help="package name (default: the model file's stem)")
    p.add_argument("--version", default="0.1.0", help="package version, semantic (default: 0.1.0)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max relative error between compiled and original outputs (default: 1e-4)")
    p.add_argument("--validation", help=".npz with one array per input (samples first) and optionally 'labels', "
                                         "for the accuracy gate")
    p.add_argument("--baseline", metavar="DATA.npz",
                   help="typical inputs (one array per input, samples first) for the drift baseline the package "
                        "carries; default: --validation, else --calibration, else the generated check inputs (synthetic)")
    pipe = p.add_argument_group("pre- and post-processing in the package (docs/pipeline.md)")
    pipe.add_argument("--preprocess", action="append", default=[], metavar="'[INPUT:] frame=HxW ...'",
                      help="camera frames in: frame=480x640 [dtype=uint8] [layout=NHWC] [color=RGB|BGR] "
                           "[model_color=RGB] [resize=bilinear|nearest] [fit=stretch|letterbox] [pad=114] "
                           "[scale=1/255] [mean=a,b,c] [std=a,b,c] [name=image]; once per image input")
    pipe.add_argument("--postprocess", action="append", default=[], metavar="STEPS",
                      help="softmax, topk=K [output=NAME] for a classifier; yolo (DarkNet heads) or yolo-nc "
                           "(N x (4+C) x B exports) [conf=0.25] [iou=0.45] [max=100] [nms=class|agnostic] "
                           "[coords=pixel|normalized] for a detector")
    pipe.add_argument("--labels", metavar="FILE", help="class names, one per line: returned as strings beside the classes")
    pipe.add_argument("--pipeline", metavar="FILE.toml", help="the same in a TOML file ([[preprocess]], [postprocess])")
    pipe.add_argument("--no-fuse-pipeline", action="store_true",
                      help="keep the stage graphs apart from an onnxruntime model (by default they are merged into it: "
                           "one session, less overhead; apart, Model.run_model can still run the model alone)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading pickled models (scikit-learn): unpickling runs code, so only for files you trust")
    p.add_argument("--no-measure", action="store_true",
                   help="skip measuring: keep the first candidate that passes the gate (fp32 first)")
    p.add_argument("--explain", action="store_true", help="print what each pass did")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    p.set_defaults(handler=run)


def list_frameworks(as_json: bool) -> int:
    from ..compiler.frontends import all_frontends

    rows = [{"framework": f.name, "description": f.description, "installed": not f.missing(),
             "missing": f.missing(), "install": f"pip install 'edgemill[{f.extra}]'"} for f in all_frontends()]
    if as_json:
        emit_json(rows)
        return 0
    print(table([[r["framework"], "yes" if r["installed"] else "no: " + r["install"], r["description"]]
                 for r in rows], ["FRAMEWORK", "INSTALLED", "READS"]))
    return 0


def accuracy_summary(acc: dict) -> str:  # type: ignore[type-arg]
    if acc.get("metric") == "max_relative_error":
        return f"max rel err {acc['value']:.1e}"
    return f"{acc['metric']} {acc['value']:.4f} (original {acc['original']:.4f}, drop {acc['drop']:.4f})"


def pipeline_spec(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """--pipeline FILE, or --preprocess/--postprocess/--labels (not both ways at once); None when neither."""
    from ..pipeline.spec import PipelineSpec, load_pipeline_file, parse_postprocess, parse_preprocess, read_labels

    flags = args.preprocess or args.postprocess or args.labels
    if args.pipeline:
        if flags:
            raise UsageError("--pipeline and --preprocess/--postprocess/--labels both given",
                             fix="put everything in the pipeline file, or use the flags alone")
        return load_pipeline_file(Path(args.pipeline))
    if not flags:
        return None
    labels = read_labels(Path(args.labels)) if args.labels else ()
    return PipelineSpec(tuple(parse_preprocess(t) for t in args.preprocess), parse_postprocess(args.postprocess, labels))


def run(args: argparse.Namespace) -> int:
    from ..compiler import CompileOptions, compile_model

    if args.list_frameworks:
        return list_frameworks(args.json)
    if args.model is None:
        raise UsageError("compile needs a MODEL", fix="run `edgemill compile MODEL -t TARGET`, or --list-frameworks")
    options = CompileOptions.create(
        args.model, target=args.target, output=args.output, inputs=args.input, framework=args.framework,
        precision=args.precision, backend=args.backend, name=args.name, version=args.version,
        tolerance=args.tolerance, validation=Path(args.validation) if args.validation else None,
        calibration=Path(args.calibration) if args.calibration else None, calibration_method=args.calibration_method,
        baseline=Path(args.baseline) if args.baseline else None,
        max_accuracy_drop=args.max_accuracy_drop, tune_budget=args.tune_budget,
        measure=not args.no_measure, trust_pickle=args.trust_pickle, pipeline=pipeline_spec(args),
        fuse_pipeline=not args.no_fuse_pipeline, mixed_precision=not args.no_mixed_precision,
    )
    quiet = args.quiet or args.json

    def progress(step: str, message: str, seconds: float | None) -> None:
        if quiet:
            return
        if seconds is not None:
            info(f"  {step:<16} {message}  ({fmt_ms(seconds)})")
        elif message.startswith(("building", "measuring", "stepping", "running")):  # long steps say what they do
            info(f"  {step:<16} {message} ...")

    if not quiet:
        info(f"compiling {options.model} for target {options.target}")
    with native_stderr_captured():
        result = compile_model(options, progress)
    if args.json:
        emit_json({"path": str(result.path), "package_id": result.package_id, "manifest": result.manifest.to_dict(),
                   "report": result.report})
        return 0
    for warning in result.report["warnings"]:
        info(f"warning: {warning}")
    print(f"{result.path}  id {result.package_id[:16]}  {result.manifest.backend}/{result.manifest.precision}  "
          f"{accuracy_summary(result.manifest.accuracy)}")
    if args.explain:
        for step in result.report["steps"]:
            details = {k: v for k, v in step.items() if k not in ("step", "seconds", "summary")}
            info(f"  {step['step']}: {step.get('summary', '')} {details if details else ''}".rstrip())
        for candidate in result.report["candidates"]:
            verdict = candidate.get("reason") if candidate["status"] == "skipped" else (
                f"{candidate['metric']} drop {candidate['drop']:.4g}, allowed {candidate['allowed']:g}"
                + (f", p50 {candidate['p50_ms']:.3f} ms" if candidate.get("p50_ms") else ""))
            info(f"  candidate {candidate['candidate']}: {candidate['status']}: {verdict}")
        info(f"  chosen: {result.report['chosen']['candidate']} ({result.report['chosen']['why']})")
        partition = _read_partition(result.path)
        if partition is None:
            info("  partition: target has no accelerator; every node runs on the CPU")
        for line in partition_lines(partition):
            info(f"  {line}")
    return 0


def _read_partition(path: Path) -> dict | None:  # type: ignore[type-arg]
    import json

    from ..package import open_package
    from ..package.layout import PARTITION

    with open_package(path) as reader:
        return json.loads(reader.read(PARTITION)) if PARTITION in reader.names() else None
