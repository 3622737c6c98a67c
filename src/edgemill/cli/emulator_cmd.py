"""`edgemill emulator prepare|status|run`: emulated devices of another architecture on this machine
(edgemill.emulation): what `edgemill compile -t aarch64` judges accuracy on, and a place to try a bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..emulation.platforms import PLATFORMS
from .output import emit_json


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    emulator = sub.add_parser("emulator", help="emulated Arm devices on this machine (qemu-user), for the accuracy "
                                               "gate and for trying bundles")
    actions = emulator.add_subparsers(dest="emulator_command", metavar="COMMAND", required=True)
    choices = sorted(PLATFORMS)

    prepare = actions.add_parser(
        "prepare", parents=[common], help="make (or reuse) the cached emulated device with this edgemill's agent",
        description="Make a Debian root file system of the platform with mmdebstrap (once per machine, about "
                    "2.5 minutes), then install this installation's agent bundle inside it with no network. "
                    "Cached under $EDGEMILL_DEVICE_CACHE (default ~/.cache/edgemill/devices). Needs root, "
                    "binfmt_misc and Debian's qemu-user-static and mmdebstrap: see docs/devices.md.")
    prepare.add_argument("--platform", choices=choices, default="linux-aarch64")
    prepare.add_argument("--bundle", type=Path, help="install this agent bundle instead of building one")
    prepare.add_argument("--refresh", action="store_true", help="install the agent again even if it is current")
    prepare.set_defaults(handler=run_prepare)

    status = actions.add_parser("status", parents=[common], help="whether this machine can emulate, and what is cached")
    status.set_defaults(handler=run_status)

    run = actions.add_parser("run", parents=[common], help="run a command inside the prepared emulated device",
                             description="e.g. edgemill emulator run -- /opt/edgemill/venv/bin/edgemill --version")
    run.add_argument("--platform", choices=choices, default="linux-aarch64")
    run.add_argument("--offline", action="store_true", help="with no network inside")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")
    run.set_defaults(handler=run_run)


def run_prepare(args: argparse.Namespace) -> int:
    from ..emulation.prepare import device_info, prepare_device

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    device = prepare_device(PLATFORMS[args.platform], bundle=args.bundle, refresh=args.refresh, log=log)
    info = device_info(device)
    if args.json:
        emit_json({"platform": args.platform, "root": str(device.root), **info})
    else:
        print(f"emulated {args.platform} device: {device.root}")
        print(f"  edgemill {info.get('edgemill_version')}, onnxruntime {info.get('onnxruntime')}, "
              f"numpy {info.get('numpy')}: `edgemill compile -t aarch64` now judges candidates on it")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from ..emulation.prepare import device_info, device_status, platform_dir, why_unavailable

    rows = []
    for name, platform in sorted(PLATFORMS.items()):
        device, not_ready = device_status(platform)
        rows.append({"platform": name, "can_emulate": why_unavailable(platform) is None,
                     "can_build": why_unavailable(platform, to_build=True) is None,
                     "why_not": why_unavailable(platform, to_build=True), "cache": str(platform_dir(platform)),
                     "device": device_info(device) if device else None, "not_ready": not_ready})
    if args.json:
        emit_json(rows)
        return 0
    for row in rows:
        state = "ready" if row["device"] else ("not ready" if row["can_emulate"] else "cannot emulate here")
        print(f"{row['platform']}: {state}")
        if row["why_not"]:
            print(f"  {row['why_not']}")
        if row["device"]:
            d = row["device"]
            print(f"  edgemill {d.get('edgemill_version')}, onnxruntime {d.get('onnxruntime')} in {row['cache']}")
        elif row["can_emulate"]:
            print(f"  {row['not_ready']}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    from ..emulation.prepare import device_status, require
    from ..errors import UsageError

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("no command to run", fix="edgemill emulator run -- COMMAND [ARGS...]")
    platform = PLATFORMS[args.platform]
    require(platform)
    device, not_ready = device_status(platform)
    if device is None:
        raise UsageError(f"no usable {args.platform} device", value=not_ready,
                         fix=f"edgemill emulator prepare --platform {args.platform}")
    return device.popen(argv, network=not args.offline).wait()
