"""`edgemill targets`"""

from __future__ import annotations

import argparse

from ..targets import all_targets
from .output import emit_json, table


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("targets", parents=[common], help="list the hardware targets")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    targets = all_targets()
    if args.json:
        emit_json([t.to_dict() for t in targets])
        return 0
    rows = [[t.name, t.arch, ",".join(t.accelerators) or "-", ",".join(t.backends), t.description] for t in targets]
    print(table(rows, ["TARGET", "ARCH", "ACCEL", "BACKENDS", "DESCRIPTION"]))
    return 0
