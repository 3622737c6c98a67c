"""Operator commands against a running control plane: `edgemill push`, `edgemill deploy`,
`edgemill fleet create|token`. Server URL from --server or EDGEMILL_SERVER; API key from --api-key,
EDGEMILL_API_KEY or --api-key-file; TLS trust and client certificate from --ca-file, --client-cert and
--client-key or EDGEMILL_CA_FILE, EDGEMILL_CLIENT_CERT and EDGEMILL_CLIENT_KEY."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..remote import DEFAULT_SERVER, ControlPlane, resolve_api_key
from .output import emit_json


def _remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("EDGEMILL_SERVER", DEFAULT_SERVER), metavar="URL",
                   help=f"control plane URL (default $EDGEMILL_SERVER or {DEFAULT_SERVER})")
    p.add_argument("--api-key", default=None, help="operator API key (default $EDGEMILL_API_KEY or --api-key-file)")
    p.add_argument("--api-key-file", default=None, metavar="FILE", help="default edgemill-data/operator.key")
    p.add_argument("--ca-file", default=os.environ.get("EDGEMILL_CA_FILE") or None, metavar="PEM",
                   help="https: trust this CA for the server's certificate (default $EDGEMILL_CA_FILE, "
                        "else the system's CAs)")
    p.add_argument("--client-cert", default=os.environ.get("EDGEMILL_CLIENT_CERT") or None, metavar="PEM",
                   help="mutual TLS: present this certificate (default $EDGEMILL_CLIENT_CERT); needs --client-key")
    p.add_argument("--client-key", default=os.environ.get("EDGEMILL_CLIENT_KEY") or None, metavar="PEM",
                   help="the client certificate's private key (default $EDGEMILL_CLIENT_KEY)")


def _client(args: argparse.Namespace) -> ControlPlane:
    return ControlPlane(args.server, resolve_api_key(args.api_key, args.api_key_file), ca_file=args.ca_file,
                        client_cert=args.client_cert, client_key=args.client_key)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("push", parents=[common], help="upload a signed package to the control plane's registry")
    p.add_argument("package", metavar="PKG", help="a signed .emp file or package directory")
    p.add_argument("--stage", choices=("staging", "production", "archived"), default=None, help="set its stage after upload")
    _remote_args(p)
    p.set_defaults(handler=push)

    p = sub.add_parser("deploy", parents=[common], help="roll a model version out to a fleet (canary, batches, gates)")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--fleet", required=True)
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only devices with this tag (repeatable)")
    p.add_argument("--device", action="append", default=[], metavar="NAME", help="only these devices (repeatable)")
    p.add_argument("--canary-percent", type=float, default=10.0, help="share of devices in the first wave (default 10)")
    p.add_argument("--batch-size", type=int, default=0, help="devices per later wave; 0 = all the rest (default)")
    p.add_argument("--bake-time", type=float, default=300.0, metavar="S", help="healthy seconds after each wave (default 300)")
    p.add_argument("--max-error-rate", type=float, default=0.05)
    p.add_argument("--max-p95-ms", type=float, default=None)
    p.add_argument("--max-failed-devices", type=int, default=0)
    p.add_argument("--min-requests", type=int, default=20)
    p.add_argument("--wait", action="store_true", help="follow the rollout until it succeeds or rolls back")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="with --wait: give up after this long")
    _remote_args(p)
    p.set_defaults(handler=deploy)

    p = sub.add_parser("fleet", help="create fleets and device registration tokens")
    fleet_sub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    c = fleet_sub.add_parser("create", parents=[common], help="create a fleet")
    c.add_argument("name")
    c.add_argument("--description", default="")
    _remote_args(c)
    c.set_defaults(handler=fleet_create)
    t = fleet_sub.add_parser("token", parents=[common], help="issue a registration token for devices of a fleet")
    t.add_argument("name")
    t.add_argument("--uses", type=int, default=1, help="devices that may register with it (default 1)")
    t.add_argument("--expires-in", type=int, default=86400, metavar="S", help="default one day")
    _remote_args(t)
    t.set_defaults(handler=fleet_token)


def push(args: argparse.Namespace) -> int:
    path = Path(args.package)
    client = _client(args)
    version = client.push(path)
    if args.stage:
        version = client.request("PATCH", f"/api/v1/models/{version['model']}/versions/{version['version']}",
                                 body={"stage": args.stage})
    if args.json:
        emit_json(version)
    else:
        print(f"pushed {version['model']} {version['version']} (package {version['package_id'][:16]}…, "
              f"signed by {version['signer']}, stage {version['stage']}) to {args.server}")
    return 0


def _tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError("bad --tag", value=item, expected="KEY=VALUE", fix="e.g. --tag site=north")
        tags[key] = value
    return tags


def deploy(args: argparse.Namespace) -> int:
    client = _client(args)
    body: dict[str, Any] = {
        "model": args.model, "version": args.version, "fleet": args.fleet, "tags": _tags(args.tag), "devices": args.device,
        "strategy": {"canary_percent": args.canary_percent, "batch_size": args.batch_size, "bake_time_s": args.bake_time,
                     "gates": {"max_error_rate": args.max_error_rate, "max_p95_ms": args.max_p95_ms,
                               "max_failed_devices": args.max_failed_devices, "min_requests": args.min_requests}}}
    deployment = client.request("POST", "/api/v1/deployments", body=body)
    if not args.json:
        print(f"deployment {deployment['id']}: {args.model} {args.version} to {len(deployment['devices'])} device(s) "
              f"of {args.fleet} in {deployment['waves']} wave(s)")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        last = ""
        while deployment["state"] in ("rolling", "paused") and time.monotonic() < deadline:
            time.sleep(2.0)
            deployment = client.request("GET", f"/api/v1/deployments/{deployment['id']}")
            line = f"  {deployment['state']}: wave {deployment['wave'] + 1}/{deployment['waves']} {deployment['counts']}"
            if line != last and not args.json:
                print(line + (f" ({deployment['reason']})" if deployment.get("reason") else ""), flush=True)
                last = line
    if args.json:
        emit_json(deployment)
    elif args.wait:
        print(f"deployment {deployment['id']} {deployment['state']}" + (f": {deployment['reason']}" if deployment.get("reason") else ""))
    return 1 if deployment["state"] == "rolled_back" else 0


def fleet_create(args: argparse.Namespace) -> int:
    fleet = _client(args).request("POST", "/api/v1/fleets", body={"name": args.name, "description": args.description})
    emit_json(fleet) if args.json else print(f"created fleet {fleet['name']}")
    return 0


def fleet_token(args: argparse.Namespace) -> int:
    token = _client(args).request("POST", f"/api/v1/fleets/{args.name}/registration-tokens",
                                  body={"uses": args.uses, "expires_in_s": args.expires_in})
    if args.json:
        emit_json(token)
    else:
        print(token["token"])
        print(f"# for {args.uses} device(s) of fleet {args.name}, until {token['expires_at']}; put it in the agent's "
              "[server] token_file", flush=True)
    return 0
