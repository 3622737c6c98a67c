"""`edgemill agent --config agent.toml`: the device daemon, until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UsageError
from .output import emit_json

EXAMPLE = '''# edgemill agent configuration (every key is optional; these are the defaults unless noted)
[device]
name = "edge-device"
fleet = "default"

[listen]
address = "127.0.0.1:8601"          # gRPC (edgemill.v1, KServe V2, Edge Manager); "" disables TCP
# unix_socket = "/run/edgemill/agent.sock"
metrics_address = "127.0.0.1:9601"  # Prometheus text at /metrics; "" disables
max_workers = 16
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
