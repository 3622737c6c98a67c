"""`edgemill agent --config agent.toml`: the device daemon, until SIGTERM.

`edgemill agent bundle --platform linux-aarch64 -o bundle.tar`: an offline install bundle for devices
(the work is in edgemill.bundle.build; this module only reads the command line).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import UsageError
from .output import emit_json, info

EXAMPLE = '''# edgemill agent configuration (every key is optional; these are the defaults unless noted)
[device]
name = "edge-device"
fleet = "default"

[listen]
address = "127.0.0.1:8601"          # gRPC (edgemill.v1, KServe V2, Edge Manager); "" disables TCP
# unix_socket = "/run/edgemill/agent.sock"
# fast_path = true                  # with unix_socket: Predict in plain frames on "<unix_socket>.fast" (docs/fastpath.md)
metrics_address = "127.0.0.1:9601"  # Prometheus text at /metrics; "" disables
max_workers = 16
# grpc_io = "iomgr"                 # grpcio's I/O core: "iomgr" (less CPU per call) or "event-engine" (grpcio's default)
# [listen.tls]                      # TLS; add client_ca_file for mutual TLS
# cert_file = "agent.crt"
# key_file = "agent.key"

[models]
directory = "models"                # standalone: every package here is loaded at start
standalone = true
trusted_keys = ["keys/edgemill.pub"]  # required (or allow_unsigned = true on a test machine)
memory_budget_mb = 1024
when_over_budget = "refuse"         # or "evict-lru": unload the least recently used idle model
max_concurrency = 4                 # requests computing at once per model
# [models.batching.detector]        # dynamic batching for the model named "detector" (dynamic batch dimension)
# max_batch_size = 8
# max_queue_delay_us = 2000         # the longest a request waits for others

[capture]
directory = "captures"              # the durable on-disk queue
max_queue_mb = 256
sample_rate = 0.0                   # share of Predict calls captured automatically
store = "file://capture-store"      # or "s3://bucket/prefix" (+ s3_endpoint_url for non-AWS stores)
upload_batch_size = 32
upload_interval_s = 5.0

# [server]                          # join a fleet: deployments come from the control plane
# url = "http://control-plane:8700"
# token_file = "token"              # one-time registration token (edgemill fleet token FLEET)
# credential_file = "state/credential"
# tags = { site = "north" }         # deployments can target devices by tag
# heartbeat_interval_s = 30
# long_poll_s = 25                  # the server answers at once when the desired state changes
'''


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("agent", parents=[common], help="run the device agent (gRPC) until SIGTERM",
                       description="Serve verified models over gRPC (edgemill.v1, KServe V2 and the SageMaker Edge "
                                   "Manager agent API), record metrics, capture data to object storage.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="AGENT.toml", help="the agent's TOML configuration")
    source.add_argument("--edge-manager-config", metavar="CONFIG.json",
                        help="a SageMaker Edge Manager agent JSON config; prints which keys map and which cannot")
    source.add_argument("--example-config", action="store_true", help="print a commented example TOML and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=run)
    # An optional action after `agent`: without one, `edgemill agent --config ...` runs the daemon.
    actions = p.add_subparsers(dest="agent_action", metavar="ACTION", parser_class=type(p))
    _add_bundle_parser(actions, common)


def _add_bundle_parser(actions: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..bundle.target import LIBC_DEFAULT, PLATFORMS

    b = actions.add_parser(
        "bundle", parents=[common], help="build an offline install bundle for devices (wheels, config, unit, install.sh)",
        description="Build one tar that installs the agent on a device without network: the device's wheels "
                    "(pip download for its platform and Python), agent.toml, the systemd unit and install.sh. "
                    "See docs/offline-install.md.")
    b.add_argument("--platform", required=True, choices=sorted(PLATFORMS), help="the device's platform")
    b.add_argument("--python", metavar="X.Y", help="the device's Python version (default: this Python's X.Y)")
    b.add_argument("-o", "--output", metavar="BUNDLE.tar",
                   help="the bundle to write (.tar, or .tar.gz to compress); default "
                        "edgemill-agent-VERSION-PLATFORM-pyX.Y.tar")
    b.add_argument("--force", action="store_true", help="replace an existing output")
    b.add_argument("--extra", action="append", default=[], metavar="NAME",
                   help="an optional agent feature to include: s3, openvino, tvm, litert (repeatable)")
    b.add_argument("--libc", choices=sorted(LIBC_DEFAULT), default="glibc",
                   help="the device's C library (default glibc; musl for Alpine)")
    b.add_argument("--libc-version", metavar="X.Y",
                   help="the oldest C library version to build for (default: glibc 2.28, musl 1.2)")
    b.add_argument("--wheelhouse", metavar="DIR",
                   help="take every wheel from this folder and nothing else (no index, pip's configuration ignored)")
    b.add_argument("--index-url", metavar="URL", help="a package index or mirror instead of pip's configured one")
    b.add_argument("--extra-index-url", action="append", default=[], metavar="URL", help="another index (repeatable)")
    b.add_argument("--find-links", action="append", default=[], metavar="DIR",
                   help="a folder (or URL) of extra wheels, e.g. ones built on the device (repeatable)")
    b.add_argument("--edgemill-wheel", metavar="WHEEL",
                   help="use this built edgemill wheel instead of writing one from this installation")
    b.set_defaults(handler=run_bundle)


def run_bundle(args: argparse.Namespace) -> int:
    from ..bundle.pip import PackageSources
    from ..bundle.target import parse_target
    from ..bundle.build import BundleRequest, build_bundle, bundle_dir_name, default_output

    if args.wheelhouse and (args.index_url or args.extra_index_url):
        raise UsageError("--wheelhouse takes every wheel from its folder; an index cannot be added to it",
                         fix="drop --index-url/--extra-index-url, or use --find-links DIR with the index")
    target = parse_target(args.platform, args.python, args.libc, args.libc_version)
    sources = PackageSources(Path(args.wheelhouse) if args.wheelhouse else None, args.index_url,
                             tuple(args.extra_index_url), tuple(args.find_links))
    request = BundleRequest(target, Path(args.output) if args.output else default_output(target), sources,
                            tuple(dict.fromkeys(args.extra)), args.force,
                            Path(args.edgemill_wheel) if args.edgemill_wheel else None)
    result = build_bundle(request, info)
    if args.json:
        emit_json({"bundle": str(result.path), "size_bytes": result.size_bytes, "seconds": round(result.seconds, 1),
                   **{k: result.manifest[k] for k in ("id", "edgemill_version", "platform", "python", "wheels")}})
    else:
        print(f"edgemill agent bundle: wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, "
              f"{len(result.manifest['wheels'])} wheels, {result.seconds:.0f} s) for {target.describe()}")
        print(f"On the device: tar -xf {result.path.name} && sudo sh {bundle_dir_name(result.manifest)}/install.sh")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.example_config:
        sys.stdout.write(EXAMPLE)
        return 0
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..agent.config import load_config

    if args.edge_manager_config:
        from ..agent.edge_manager_config import load_edge_manager_config

        config, notes = load_edge_manager_config(args.edge_manager_config)
        for note in notes:
            print(f"edgemill agent: edge manager config: {note}", file=sys.stderr)
    elif args.config:
        config = load_config(args.config)
    else:
        raise UsageError("no configuration given", fix="pass --config agent.toml (see --example-config) "
                                                       "or --edge-manager-config config.json")
    from ..agent import grpc_io

    decision = grpc_io.apply(config.listen.grpc_io, os.environ)  # before anything imports grpc
    logging.getLogger("edgemill.agent").info("gRPC I/O: %s", decision.reason)
    from ..agent.daemon import Agent  # after the config is known good: a config error needs no gRPC

    agent = Agent(config)
    try:
        addresses = agent.start()
    except BaseException:
        agent.stop(grace_s=0)
        raise
    if args.json:
        emit_json({"serving": addresses, "device": config.device.name})
    else:
        print("edgemill agent: serving on " + ", ".join(addresses), flush=True)
    sys.stdout.flush()
    agent.run_until_signal()
    return 0
