"""`edgemill keys operator create|list|revoke` and `edgemill audit`: operator keys with roles, and the
audit trail of what they changed, on a running control plane (an admin key manages keys; any key reads
the audit trail)."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from .fleet_cmds import _client, _remote_args
from .output import emit_json
from .times import duration_s, parse_since

ROLES = ("viewer", "deployer", "admin")
def add_operator_parsers(keys_sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    operator = keys_sub.add_parser("operator", help="operator API keys of a control plane: create, list, revoke")
    actions = operator.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    c = actions.add_parser("create", parents=[common], help="a new named key with a role (the secret is printed once)",
                           description="Roles: viewer reads everything and changes nothing; deployer also pushes, "
                                       "stages, deploys, pauses, resumes, rolls back and labels captures; admin "
                                       "also manages keys, fleets, devices, registration tokens and alert rules. "
                                       "--fleet limits the key to those fleets: it sees and changes only their "
                                       "devices, deployments, captures and alert rules (a limited admin cannot "
                                       "manage keys or create fleets).")
    c.add_argument("name")
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--fleet", action="append", default=None, metavar="FLEET", dest="fleets",
                   help="limit the key to this fleet (repeat for several; default: every fleet)")
    c.add_argument("--expires", default=None, metavar="DURATION", help="e.g. 30d, 12h (default: never)")
    _remote_args(c)
    c.set_defaults(handler=create)
    ls = actions.add_parser("list", parents=[common], help="every key: role, creator, expiry, revoked or active")
    _remote_args(ls)
    ls.set_defaults(handler=list_keys)
    r = actions.add_parser("revoke", parents=[common], help="refuse the key from its next request on")
    r.add_argument("name")
    _remote_args(r)
    r.set_defaults(handler=revoke)


def add_audit_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser("audit", parents=[common], help="who changed what on the control plane, newest first")
    a.add_argument("--key", default=None, help="only this key's events")
    a.add_argument("--fleet", default=None, help="only changes to this fleet's things")
    a.add_argument("--operation", default=None, help="only operations whose route contains this (e.g. deployments)")
    a.add_argument("--outcome", choices=("ok", "refused", "rejected", "failed"), default=None)
    a.add_argument("--since", default=None, metavar="DURATION", help="only the last DURATION (e.g. 24h)")
    a.add_argument("--limit", type=int, default=50, help="events to show (default 50, at most 1000)")
    a.add_argument("--folded", action="store_true",
                   help="the per-day counts of events older than the server's --audit-retention-s")
    _remote_args(a)
    a.set_defaults(handler=audit)


def _when(value: str | None) -> str:
    """An API datetime as 'YYYY-MM-DD HH:MM:SS' (UTC, whole seconds), '-' for none."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.expires is not None:
        body["expires_in_s"] = duration_s(args.expires)
    if args.fleets:
        body["fleets"] = args.fleets
    created = _client(args).request("POST", "/api/v1/operator-keys", body=body)
    if args.json:
        emit_json(created)
    else:
        print(f"created operator key {created['name']} ({created['role']}"
              + (f", fleets {', '.join(created['fleets'])}" if created.get("fleets") else "")
              + (f", expires {_when(created['expires_at'])}" if created["expires_at"] else "") + ")")
        print(created["key"])
        print("The secret is shown this once; the server keeps only its hash.")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    keys = _client(args).request("GET", "/api/v1/operator-keys")
    if args.json:
        emit_json(keys)
        return 0
    print(f"{'NAME':<24} {'ROLE':<9} {'STATE':<8} {'CREATED':<20} {'BY':<16} {'EXPIRES':<20} FLEETS")
    for k in keys:
        state = "active" if k["active"] else ("revoked" if k["revoked_at"] else "expired")
        fleets = ",".join(k.get("fleets") or []) or "(all)"
        print(f"{k['name']:<24} {k['role']:<9} {state:<8} {_when(k['created_at']):<20} {k['created_by'] or '-':<16} "
              f"{_when(k['expires_at']):<20} {fleets}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/api/v1/operator-keys/{args.name}")
    if args.json:
        emit_json({"revoked": args.name})
    else:
        print(f"revoked operator key {args.name}: refused from its next request on")
    return 0


def audit(args: argparse.Namespace) -> int:
    if args.folded:
        return _folded(args)
    query: dict[str, Any] = {"limit": args.limit}
    for name in ("key", "fleet", "operation", "outcome"):
        if getattr(args, name) is not None:
            query[name] = getattr(args, name)
    if args.since is not None:
        query["since"] = parse_since(args.since)
    events = _client(args).request("GET", "/api/v1/audit", query=query)
    if args.json:
        emit_json(events)
        return 0
    print(f"{'WHEN':<20} {'KEY':<16} {'FROM':<15} {'STATUS':<6} {'OUTCOME':<8} {'FLEET':<16} OPERATION")
    for e in events:
        print(f"{_when(e['at']):<20} {e['key'] or '(none)':<16} {e['remote']:<15} {e['status']:<6} {e['outcome']:<8} "
              f"{e.get('fleet') or '-':<16} {e['method']} {e['path']}")
    return 0


def _folded(args: argparse.Namespace) -> int:
    rows = _client(args).request("GET", "/api/v1/audit/folded", query={"key": args.key} if args.key else None)
    if args.json:
        emit_json(rows)
        return 0
    print(f"{'DAY':<11} {'KEY':<16} {'EVENTS':>6} {'OUTCOME':<8} OPERATION")
    for r in rows:
        print(f"{r['day'][:10]:<11} {r['key'] or '(none)':<16} {r['events']:>6} {r['outcome']:<8} {r['operation']}")
    return 0
