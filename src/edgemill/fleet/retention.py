"""Keeping the database and the store bounded, by policy (ServerConfig's retention settings).

* Metric samples (one per device, model and heartbeat) older than ``metrics_retention_s`` are folded
  into ``metric_rollups``: one row per device, model, package and ``metrics_rollup_s`` span, with the
  sums of requests and errors, the request-weighted p50 and the worst p95/p99. The fold and the
  deletion of what it folded are one transaction that also moves a watermark with a conditional
  UPDATE, so two replicas running it at once fold each span exactly once (the loser's UPDATE matches
  no row and its transaction rolls back).
* Rollups older than ``metrics_rollup_retention_s`` are deleted.
* Drift buckets follow the same policy (:mod:`.drift_retention`, run beside this by the tick: folded
  per span, then deleted).
* Captures older than ``captures_retention_s`` are deleted from the store, then from the database
  (an object whose row survives a crash is deleted again next time; deleting is idempotent).

Each pass does a bounded amount of work (``FOLD_SPANS_PER_TX`` spans per transaction, ``CAPTURES_PER_PASS``
captures), so a backlog drains over several ticks instead of holding one long transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Float, and_, case, cast, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import first_line
from .config import ServerConfig
from .db import Database, floor_div
from .db.tables import Capture, MetricRollup, MetricSample, RetentionMark
from .store import ServerStore

log = logging.getLogger("edgemill.server")

ROLLUP_MARK = "metric_rollups"
FOLD_SPANS_PER_TX = 24  # rollup spans folded per transaction (a day of hours by default)
CAPTURES_PER_PASS = 1000


@dataclass
class RetentionPass:
    samples_folded: int = 0
    rollups_written: int = 0
    rollups_expired: int = 0
    captures_expired: int = 0

    def any(self) -> bool:
        return any((self.samples_folded, self.rollups_expired, self.captures_expired))


def run_retention(db: Database, store: ServerStore, now: float, config: ServerConfig) -> RetentionPass:
    done = RetentionPass()
    fold_samples(db, now, config, done)
    with db.session() as session:
        done.rollups_expired = session.execute(
            delete(MetricRollup).where(MetricRollup.t + MetricRollup.span_s < now - config.metrics_rollup_retention_s)
        ).rowcount or 0
    if config.captures_retention_s is not None:
        done.captures_expired = expire_captures(db, store, now - config.captures_retention_s)
    if done.any():
        log.info("retention: folded %d metric sample(s) into %d rollup(s), expired %d rollup(s) and %d capture(s)",
                 done.samples_folded, done.rollups_written, done.rollups_expired, done.captures_expired)
    return done


def fold_cutoff(now: float, config: ServerConfig) -> float:
    """Samples before this time are folded: the start of the span holding ``now - metrics_retention_s``
    (whole spans only, so no span is ever folded in two parts)."""
    span = config.metrics_rollup_s
    return (now - config.metrics_retention_s) // span * span


def fold_spans(db: Database, mark_name: str, cutoff: float, span: float,
               first_start: Callable[[Session], float | None],
               fold: Callable[[Session, float, float], tuple[int, int]]) -> tuple[int, int]:
    """Move the watermark ``mark_name`` towards ``cutoff``, up to FOLD_SPANS_PER_TX spans per transaction,
    calling ``fold(session, mark, upto)`` (returns rows folded, rows written) inside each move's own
    transaction: the conditional UPDATE makes one replica the owner of each move. The first pass starts
    the mark at ``first_start(session)`` (None: nothing to fold, start at the cutoff). Returns the sums."""
    folded = written = 0
    for _ in range(MAX_FOLD_TRANSACTIONS):
        try:
            with db.session() as session:
                mark = session.scalar(select(RetentionMark.watermark).where(RetentionMark.name == mark_name))
                if mark is None:
                    start = first_start(session)
                    session.execute(insert(RetentionMark).values(
                        name=mark_name, watermark=cutoff if start is None else min(cutoff, start)))
                    continue
                if mark >= cutoff:
                    break
                upto = min(cutoff, mark + FOLD_SPANS_PER_TX * span)
                if not session.execute(update(RetentionMark).where(RetentionMark.name == mark_name,
                                                                   RetentionMark.watermark == mark)
                                       .values(watermark=upto)).rowcount:
                    raise _LostRace
                moved, wrote = fold(session, mark, upto)
            folded += moved
            written += wrote
        except (_LostRace, IntegrityError):
            continue  # another replica created the mark or folded this span first: read it again
    return folded, written


def fold_samples(db: Database, now: float, config: ServerConfig, done: RetentionPass | None = None) -> RetentionPass:
    done = done if done is not None else RetentionPass()
    span = config.metrics_rollup_s

    def first_start(session: Session) -> float | None:  # the oldest sample's span
        oldest = session.scalar(select(func.min(MetricSample.t)))
        return None if oldest is None else oldest // span * span

    def fold(session: Session, mark: float, upto: float) -> tuple[int, int]:
        written = _fold(session, mark, upto, span)
        return session.execute(delete(MetricSample).where(MetricSample.t < upto)).rowcount or 0, written

    folded, written = fold_spans(db, ROLLUP_MARK, fold_cutoff(now, config), span, first_start, fold)
    done.samples_folded += folded
    done.rollups_written += written
    return done


MAX_FOLD_TRANSACTIONS = 1000  # per pass; a bigger backlog goes on at the next pass


class _LostRace(Exception):
    """Another replica moved the watermark first; this transaction is rolled back."""


def _fold(session: Session, start: float, end: float, span: float) -> int:
    """Insert the rollups of the samples in [start, end); returns how many rows."""
    bucket = cast(floor_div(session.get_bind().dialect.name, MetricSample.t, span) * span, Float)
    weighted = func.sum(case((MetricSample.p50_ms.is_not(None), MetricSample.p50_ms * MetricSample.requests)))
    weight = func.sum(case((MetricSample.p50_ms.is_not(None), MetricSample.requests)))
    p50 = func.coalesce(weighted / func.nullif(weight, 0), func.avg(MetricSample.p50_ms))
    grouped = (select(MetricSample.device_id, MetricSample.model_name, MetricSample.package_id, bucket.label("t"),
                      literal(span, Float).label("span_s"), func.count().label("samples"),
                      func.coalesce(func.sum(MetricSample.requests), 0), func.coalesce(func.sum(MetricSample.errors), 0),
                      p50, func.max(MetricSample.p95_ms), func.max(MetricSample.p99_ms))
               .where(and_(MetricSample.t >= start, MetricSample.t < end))
               .group_by(MetricSample.device_id, MetricSample.model_name, MetricSample.package_id, bucket))
    session.execute(insert(MetricRollup).from_select(
        ["device_id", "model_name", "package_id", "t", "span_s", "samples", "requests", "errors", "p50_ms", "p95_ms",
         "p99_ms"], grouped))
    # (sqlite3 reports no row count for INSERT ... SELECT; the index on t makes this cheap.)
    return int(session.scalar(select(func.count()).select_from(MetricRollup)
                              .where(MetricRollup.t >= start, MetricRollup.t < end)) or 0)


def expire_captures(db: Database, store: ServerStore, before: float) -> int:
    """Delete up to ``CAPTURES_PER_PASS`` captures received before ``before``: objects first, then rows."""
    with db.session() as session:
        rows = session.execute(select(Capture.id, Capture.store_key).where(Capture.received_at < before)
                               .order_by(Capture.received_at).limit(CAPTURES_PER_PASS)).all()
    gone: list[int] = []
    for row_id, key in rows:
        try:
            store.delete(key)
        except Exception as exc:  # noqa: BLE001 - the store may be away: keep the row, try again next pass
            log.warning("retention: could not delete capture object %s (%s); will retry", key, first_line(exc))
            break
        gone.append(row_id)
    if gone:
        with db.session() as session:
            session.execute(delete(Capture).where(Capture.id.in_(gone)))
    return len(gone)
