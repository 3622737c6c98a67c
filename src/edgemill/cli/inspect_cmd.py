"""`edgemill inspect PKG`"""

from __future__ import annotations

import argparse

from ..package import describe_package
from ..pipeline.describe import lines as pipeline_lines
from .output import emit_json


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", parents=[common], help="show a package's manifest, signature state and report")
    p.add_argument("package")
    p.add_argument("--trusted-key", action="append", metavar="PUB", help="also check the signature with this key")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    info = describe_package(args.package, args.trusted_key)
    if args.json:
        emit_json(info)
        return 0
    m, sig = info["manifest"], info["signature"]
    print(f"package   {m['name']} {m['version']}  ({info['path']})")
    print(f"id        {info['package_id']}")
    print(f"target    {m['target']['name']} ({m['target']['arch']})   backend {m['backend']}   precision {m['precision']}")
    print(f"source    {m['source']['framework']} {m['source']['file']} sha256:{m['source']['sha256'][:16]}")
    print(f"created   {m['created']}   edgemill {m['edgemill_version']}")
    source_names = m["source"].get("names") or {}
    for kind in ("inputs", "outputs"):
        for spec in m[kind]:
            bound = f" = {spec['value']} (bound at compile: the only value accepted)" if "value" in spec else ""
            known = source_names.get(spec["name"])
            alias = f"   (in the source: {known!r})" if known and known != spec["name"] else ""
            print(f"{kind[:-1]:<9} {spec['name']}: {spec['dtype']}{spec['shape']}{bound}{alias}")
    for line in pipeline_lines(m):
        print(line)
    for note in m["source"].get("io_notes") or []:
        print(f"io note   {note}")
    acc = m["accuracy"]
    if acc["metric"] == "max_relative_error":
        allowed = (f"allowed {acc['allowed']:.2e}: {acc['allowed_because']}" if acc.get("allowed_because")
                   else f"allowed {acc['allowed']:.0e}")
        print(f"accuracy  {acc['metric']} {acc['value']:.2e} ({allowed}) vs {acc['reference']}")
    else:
        print(f"accuracy  {acc['metric']} {acc['value']:.4f} vs original {acc['original']:.4f} (drop {acc['drop']:.4f}, "
              f"allowed {acc['allowed']:g}); max relative error {acc['max_relative_error']:.2e}")
    if acc.get("judged_on"):  # a cross target: whose kernels the gate ran the package on
        print(f"judged on {acc['judged_on']}")
    print(f"runs on   {m['backend']}/{m['precision']}" + (f", {m['backend_options']['threads']} thread(s) by default"
                                                         if m["backend_options"].get("threads") else ""))
    for path, entry in sorted(m["files"].items()):
        print(f"file      {path}  {entry['size']} bytes  sha256:{entry['sha256'][:16]}")
    state = "unsigned"
    if sig["signed"]:
        state = f"signed by key {sig.get('key')}"
        if "verified" in sig:
            state += ", verified" if sig["verified"] else f", REFUSED ({sig['refusal']})"
    print(f"signature {state}")
    report = info.get("report") or {}
    for step in report.get("steps", []):
        print(f"step      {step['step']}: {step.get('summary', '')}".rstrip())
    for line in partition_lines(info.get("partition")):
        print(line)
    return 0


def partition_lines(partition: dict | None) -> list[str]:  # type: ignore[type-arg]
    """How `inspect` and `compile --explain` show a partition: the summary, each subgraph, each CPU node."""
    if not partition:
        return []
    lines = [f"partition {partition['summary']} (decided by {partition['decided_by']})"]
    for sub in partition["subgraphs"]:
        ops = ", ".join(f"{op} x{n}" for op, n in sub["ops"].items())
        lines.append(f"  subgraph {sub['id']} on {sub['device']} ({sub['provider']}): {sub['node_count']} nodes: {ops}")
    for node in partition["cpu_nodes"]:
        lines.append(f"  cpu      {node['node']} ({node['op']}): {node['reason']}")
    return lines
