"""Audit events past ``audit_retention_s`` (None by default: kept for good) are folded, never silently
dropped: one ``audit_folds`` row per UTC day, key, operation and outcome with how many events it stood
for, written in the same transaction that deletes them, and moved by a watermark (retention.fold_spans),
so two replicas fold each day exactly once. ``GET /api/v1/audit/folded`` reads the counts."""

from __future__ import annotations

from sqlalchemy import Float, and_, cast, delete, func, insert, literal, select
from sqlalchemy.orm import Session

from .config import ServerConfig
from .db import Database, floor_div
from .db.tables import AuditEvent, AuditFold
from .retention import fold_spans

AUDIT_MARK = "audit_folds"
DAY_S = 86400.0


def audit_cutoff(now: float, config: ServerConfig) -> float | None:
    """Events before this time are folded: the start of the UTC day holding ``now - audit_retention_s``
    (whole days only, so no day is folded in two parts); None when the trail is kept for good."""
    if config.audit_retention_s is None:
        return None
    return (now - config.audit_retention_s) // DAY_S * DAY_S


def fold_audit(db: Database, now: float, config: ServerConfig) -> int:
    """Fold and delete the events past the retention period; returns how many were folded."""
    cutoff = audit_cutoff(now, config)
    if cutoff is None:
        return 0

    def first_start(session: Session) -> float | None:
        oldest = session.scalar(select(func.min(AuditEvent.at)))
        return None if oldest is None else oldest // DAY_S * DAY_S

    def fold(session: Session, start: float, end: float) -> tuple[int, int]:
        day = cast(floor_div(session.get_bind().dialect.name, AuditEvent.at, DAY_S) * DAY_S, Float)
        key = func.coalesce(AuditEvent.key_name, literal(""))
        grouped = (select(day.label("day"), key, AuditEvent.operation, AuditEvent.outcome, func.count())
                   .where(and_(AuditEvent.at >= start, AuditEvent.at < end))
                   .group_by(day, key, AuditEvent.operation, AuditEvent.outcome))
        session.execute(insert(AuditFold).from_select(["day", "key_name", "operation", "outcome", "events"], grouped))
        folded = session.execute(delete(AuditEvent).where(AuditEvent.at < end)).rowcount or 0
        return folded, 0

    folded, _ = fold_spans(db, AUDIT_MARK, cutoff, DAY_S, first_start, fold)
    return folded
