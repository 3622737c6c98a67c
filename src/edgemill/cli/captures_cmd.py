"""`edgemill captures export`: captures from the control plane into a dataset for the next compile."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import UsageError
from .fleet_cmds import _client, _remote_args
from .output import emit_json, info
from .times import parse_since


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("captures", help="export captured data (inputs and labels) for the next compile")
    captures_sub = p.add_subparsers(dest="captures_command", metavar="ACTION", required=True)
    e = captures_sub.add_parser(
        "export", parents=[common], help="write captures as a dataset --validation/--calibration/--baseline read",
        description="Fetch the selected captures from the control plane and write them as one .npz: one array "
                    "per model input (samples first), labels (classifiers) or targets (regressors) when every "
                    "capture is labeled, and the capture ids. Compiling with it records the captures' versions in "
                    "the new package's lineage.")
    e.add_argument("--model", required=True)
    e.add_argument("--version", default=None, help="only captures of this model version")
    e.add_argument("--fleet", default=None)
    e.add_argument("--device", default=None)
    e.add_argument("--since", default=None, metavar="WHEN",
                   help="predictions made since: a duration back from now (30m, 12h, 7d), an ISO date or time "
                        "(2026-12-01, 2026-12-01T08:00:00Z) or unix seconds")
    e.add_argument("--labeled-only", action="store_true", help="only labeled captures (their labels are written)")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="at most the N newest captures")
    e.add_argument("-o", "--output", required=True, type=Path, metavar="DATASET.npz|FOLDER",
                   help="an .npz file, or a new folder for a large export: shards of --shard-samples each, "
                        "written as they fill, and dataset.json last (the compiler reads the folder like a file)")
    e.add_argument("--shard-samples", type=int, default=10_000, metavar="N", help="samples per shard (default 10000)")
    _remote_args(e)
    e.set_defaults(handler=export)

    lab = captures_sub.add_parser(
        "label", parents=[common], help="label many captures from a CSV or JSON-lines file (all rows or none)",
        description="Send a label file to the control plane: CSV with a header naming capture_id and label (and "
                    "device where ids repeat across devices; several labels of one capture separated by spaces), or "
                    "JSON lines {\"device\": ..., \"capture_id\": ..., \"label\": ...}. Every row is checked first: "
                    "if one is wrong, nothing is applied and each wrong row is listed.")
    lab.add_argument("file", type=Path, metavar="LABELS.csv|LABELS.jsonl")
    _remote_args(lab)
    lab.set_defaults(handler=label)


def export(args: argparse.Namespace) -> int:
    from ..captures.export import Selection
    from ..captures.export import export as run_export

    if args.output.suffix and args.output.suffix != ".npz":
        raise UsageError("the dataset is an .npz file or a folder of shards", value=str(args.output),
                         fix=f"-o {args.output.with_suffix('.npz')}, or -o {args.output.with_suffix('')}/ for shards")
    if args.shard_samples < 1:
        raise UsageError("bad --shard-samples", value=args.shard_samples, expected="1 or more", fix="e.g. --shard-samples 10000")
    if args.limit is not None and args.limit < 1:
        raise UsageError("bad --limit", value=args.limit, expected="1 or more", fix="e.g. --limit 1000")
    selection = Selection(model=args.model, version=args.version, fleet=args.fleet, device=args.device,
                          since=parse_since(args.since), labeled_only=args.labeled_only, limit=args.limit)
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:  # at most once a second, and the last
        if args.json:
            return
        if done == total or time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            info(f"  fetched {done:,}/{total:,} captures")

    summary = run_export(_client(args), selection, args.output, progress, shard_samples=args.shard_samples)
    if args.json:
        emit_json(summary.to_dict())
        return 0
    versions = ", ".join(f"{v}: {n:,}" for v, n in summary.versions.items())
    labels = {"labels": "with labels", "targets": "with targets"}.get(summary.labels_written, "without labels")
    shards = f" in {summary.shards} shards" if summary.shards is not None else ""
    print(f"wrote {args.output}{shards}: {summary.samples:,} samples from {summary.captures:,} captures of {args.model} "
          f"({versions}), {labels}")
    for note in summary.notes:
        info(f"note: {note}")
    print(f"next: edgemill compile MODEL --validation {args.output}")
    return 0


def label(args: argparse.Namespace) -> int:
    from ..errors import EdgemillError, FileNotFound

    if not args.file.is_file():
        raise FileNotFound("label file not found", value=str(args.file), fix="pass a CSV or JSON-lines file")
    try:
        report = _client(args).request("POST", "/api/v1/captures/labels", data=args.file.read_bytes())
    except EdgemillError as exc:
        body = getattr(exc, "body", None)
        if not isinstance(body, dict) or "rows" not in body:
            raise
        report = body
    if args.json:
        emit_json(report)
    elif report["applied"]:
        print(f"labeled {report['labeled']:,} capture(s), {report['unchanged']:,} unchanged, from {args.file}")
    else:
        wrong = [r for r in report["rows"] if r["status"] == "error"]
        info(f"edgemill: error: {len(wrong):,} of {len(report['rows']):,} row(s) of {args.file} are wrong; "
             "nothing was applied. Fix them and send the file again:")
        for r in wrong[:20]:
            info(f"  row {r['row']}: {r['error']}")
        if len(wrong) > 20:
            info(f"  ... and {len(wrong) - 20:,} more (--json lists every row)")
    return 0 if report["applied"] else 1
