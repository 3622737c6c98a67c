"""`edgemill inspect PKG`"""

from __future__ import annotations

import argparse

from ..package import describe_package
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
    for kind in ("inputs", "outputs"):
        for spec in m[kind]:
            print(f"{kind[:-1]:<9} {spec['name']}: {spec['dtype']}{spec['shape']}")
    acc = m["accuracy"]
    print(f"accuracy  {acc['metric']} {acc['value']:.2e} (allowed {acc['allowed']:.0e}) vs {acc['reference']}")
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
    if info.get("partition"):
        print(f"partition {info['partition']}")
    return 0
