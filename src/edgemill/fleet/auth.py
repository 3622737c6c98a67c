"""Operator API keys and device credentials: random secrets, stored as sha256, compared by hash.

Secrets are 256-bit random, so an unsalted fast hash is enough: nothing to brute-force, and a lookup
by hash needs no scan. A device credential only ever resolves to its own device row.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from ..errors import AuthenticationError, PermissionDeniedError
from .db.tables import ApiKey, Device
from .schemas import Role
from .state import ServerState, server_state

bearer = HTTPBearer(auto_error=False, description="An operator API key, or a device's credential on /api/v1/agent")


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _secret(creds: HTTPAuthorizationCredentials | None, who: str) -> str:
    if creds is None or not creds.credentials:
        raise AuthenticationError(f"no {who} given", field="Authorization",
                                  fix=f"send the header 'Authorization: Bearer <{who}>'")
    return creds.credentials


# Each role can do what the roles before it can: a viewer reads everything and changes nothing, a deployer
# also pushes, stages, deploys, pauses, resumes, rolls back and labels, an admin also manages keys, fleets,
# devices, registration tokens and alert rules.
ROLES: tuple[str, ...] = get_args(Role)  # the API's Role, in this order


@dataclass(frozen=True)
class Operator:
    """The operator key that made a request (set on ``request.state.operator`` for the audit trail)."""

    name: str
    role: str
    expires_at: float | None
    fleets: tuple[str, ...] | None = None  # the fleets it is limited to (fleet/scope.py); None: every fleet


def _operator(request: Request, creds: HTTPAuthorizationCredentials | None) -> Operator:
    """The key behind the request, read from the database on every request (a revoked or expired key is
    refused on its next request: nothing is cached)."""
    state: ServerState = server_state(request)
    secret = _secret(creds, "operator API key")
    with state.db.session() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest(secret), ApiKey.revoked_at.is_(None)))
        if key is None:
            raise AuthenticationError("unknown or revoked operator API key", value=secret[:8] + "…", field="Authorization",
                                      fix="use the key the server wrote to its --api-key-file "
                                          "(edgemill-data/operator.key by default), or ask an admin for one "
                                          "(edgemill keys operator create)")
        if key.expires_at is not None and key.expires_at <= state.clock():
            raise AuthenticationError(f"operator key {key.name!r} expired", value=secret[:8] + "…", field="Authorization",
                                      fix="ask an admin for a new key (edgemill keys operator create)")
        operator = Operator(key.name, key.role, key.expires_at, None if key.fleets is None else tuple(key.fleets))
    request.state.operator = operator
    return operator


def require_role(role: str) -> Callable[..., str]:
    """A dependency that admits keys of ``role`` or above and returns the key's name; 403 names the role
    needed."""
    needed = ROLES.index(role)

    def dependency(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        operator = _operator(request, creds)
        if ROLES.index(operator.role) < needed:
            raise PermissionDeniedError(f"operator key {operator.name!r} is a {operator.role}; this needs {role}",
                                        value=f"{request.method} {request.url.path}", field="Authorization",
                                        fix=f"use a key with the {role} role, or ask an admin to create one "
                                            f"(edgemill keys operator create NAME --role {role})")
        return operator.name

    dependency.__name__ = f"require_{role}"
    dependency.required_role = role  # type: ignore[attr-defined]  # read by the tests' walk over the API
    return dependency


require_viewer = require_role("viewer")
require_deployer = require_role("deployer")
require_admin = require_role("admin")


async def device_secret(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The device credential as sent (checked against the database by its user). Async
    because it does no I/O: a plain function would cost every heartbeat a trip to a worker thread."""
    return _secret(creds, "device credential")


def unknown_device_credential(secret: str) -> AuthenticationError:
    """The 401 for a device credential that names no device (never registered, or deleted)."""
    return AuthenticationError("unknown device credential", value=secret[:8] + "…", field="Authorization",
                               fix="register the device again with a fresh registration token")


def require_device(request: Request, secret: str = Depends(device_secret)) -> int:
    """The id of the device whose credential made the request."""
    state: ServerState = server_state(request)
    with state.db.session() as session:
        device_id = session.scalar(select(Device.id).where(Device.credential_hash == digest(secret)))
    if device_id is None:
        raise unknown_device_credential(secret)
    return int(device_id)


def ensure_operator_key(state: ServerState, path: Path | None, name: str = "admin") -> str | None:
    """On first start, create an operator key and write it (0600) to ``path``; returns the new key.

    A key file that already exists is registered if its key is unknown (so a key can be provisioned
    from a secret store), and left alone otherwise.
    """
    if path is None:
        return None
    if path.exists():
        secret = path.read_text().strip()
        created = None
    else:
        secret = new_secret("emk")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secret + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        created = secret
    with state.db.session() as session:
        if session.scalar(select(ApiKey).where(ApiKey.key_hash == digest(secret))) is None:
            taken = session.scalar(select(ApiKey).where(ApiKey.name == name))
            session.add(ApiKey(name=name if taken is None else f"{name}-{digest(secret)[:8]}",
                               key_hash=digest(secret), created_at=state.clock(), role="admin"))
    return created
