"""Fleet scopes: an operator key limited to some fleets sees and changes only what belongs to them.

What belongs to a fleet: the fleet itself and its registration tokens, its devices, their captures and
metrics, deployments to it, and alert rules about it (the rule's fleet, or its device's fleet). The
registry is shared: a scoped key reads every model and pushes versions, but what changes a version for
every fleet (its stage, its drift reference) needs a key for every fleet, and so do new fleets and
operator keys (a scoped admin must not mint itself an unscoped key).

Routes ask the scope in two ways: ``check(fleet)`` before touching one thing (403 naming the key's
fleets), and ``devices()``/``fleet_ids()`` as SQL to narrow a list or an aggregate. ``check`` also
notes the fleet on the request, so the audit trail records which fleet a change touched and a scoped
key's audit view can show the changes to its fleets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import ColumnElement, Select, select, true

from ..errors import PermissionDeniedError
from .db.tables import AlertRule, Device, Fleet


@dataclass(frozen=True)
class FleetScope:
    key: str
    fleets: frozenset[str] | None  # None: every fleet

    @property
    def limited(self) -> bool:
        return self.fleets is not None

    def described(self) -> str:
        return ", ".join(sorted(self.fleets or ())) or "none"

    def allows(self, fleet: str) -> bool:
        return self.fleets is None or fleet in self.fleets

    def check(self, request: Request, fleet: str, what: str | None = None) -> None:
        """Admit a request that touches ``what`` (e.g. "device 'cam-7'") of ``fleet``, or the fleet itself
        (``what`` None); else a 403."""
        request.state.audit_fleet = fleet
        if not self.allows(fleet):
            where = f"fleet {fleet!r} is not one of them" if what is None else f"{what} is in fleet {fleet!r}"
            raise PermissionDeniedError(
                f"operator key {self.key!r} is limited to fleet(s) {self.described()}; {where}",
                value=f"{request.method} {request.url.path}", field="Authorization",
                fix="use a key for that fleet, or ask an admin to widen this key's fleets "
                    "(edgemill keys operator create NAME --fleet FLEET)")

    def require_every_fleet(self, request: Request, what: str) -> None:
        """Admit only a key for every fleet (``what``: e.g. "creating a fleet")."""
        if self.limited:
            raise PermissionDeniedError(
                f"operator key {self.key!r} is limited to fleet(s) {self.described()}; {what} needs a key for "
                "every fleet", value=f"{request.method} {request.url.path}", field="Authorization",
                fix="use a key created without --fleet")

    def fleet_ids(self) -> Select[Any]:
        return select(Fleet.id).where(Fleet.name.in_(sorted(self.fleets or ())))

    def devices(self) -> Select[Any]:
        """The ids of the devices the key may see, as a subquery."""
        return select(Device.id).where(Device.fleet_id.in_(self.fleet_ids()))

    def device_filter(self, column: Any) -> ColumnElement[bool]:
        """``column`` (a device id) is one of the key's devices; always true for a key for every fleet."""
        return true() if self.fleets is None else column.in_(self.devices())

    def fleet_filter(self, column: Any) -> ColumnElement[bool]:
        """``column`` (a fleet id) is one of the key's fleets; always true for a key for every fleet."""
        return true() if self.fleets is None else column.in_(self.fleet_ids())

    def rule_filter(self) -> ColumnElement[bool]:
        """Alert rules the key sees: about one of its fleets, or one of its fleets' devices."""
        if self.fleets is None:
            return true()
        return AlertRule.fleet.in_(sorted(self.fleets)) | AlertRule.device.in_(
            select(Device.name).where(Device.fleet_id.in_(self.fleet_ids())))


def scope_of(request: Request) -> FleetScope:
    """The scope of the key behind the request (set by auth.require_role, which every route depends on)."""
    operator = request.state.operator
    return FleetScope(operator.name, None if operator.fleets is None else frozenset(operator.fleets))
