"""Keeping drift buckets bounded under the metrics retention policy (ServerConfig).

Buckets older than ``metrics_retention_s`` are folded, per device, model and package, into one bucket
per ``metrics_rollup_s`` span (counts summed, which is exact for histograms, and rescored against the
reference); folded buckets older than ``metrics_rollup_retention_s`` are deleted. Folding moves a
watermark with a conditional UPDATE in the same transaction, so two replicas fold each span once
(see :mod:`.retention`, which does the same for metric samples).

A span is right-closed, ``(k * span, (k + 1) * span]``, and its folded bucket ends at ``(k + 1) * span``:
inside the span it summarises, so a later pass never takes it for new work.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from .config import ServerConfig
from .db import Database
from .db.tables import DriftSample
from .drift_refs import References, add_counts, samples_of, worst
from .retention import fold_cutoff, fold_spans

DRIFT_MARK = "drift_rollups"
log = logging.getLogger("edgemill.server")


def fold_drift(db: Database, now: float, config: ServerConfig) -> tuple[int, int]:
    """Fold old buckets; returns (buckets folded, folded buckets written)."""
    span = config.metrics_rollup_s
    references = References(config.drift_reference_ttl_s)

    def first_start(session: Session) -> float | None:  # the start of the oldest bucket's (right-closed) span
        oldest = session.scalar(select(func.min(DriftSample.t)))
        return None if oldest is None else (math.ceil(oldest / span) - 1) * span

    def fold(session: Session, mark: float, upto: float) -> tuple[int, int]:
        rows = session.execute(select(DriftSample.device_id, DriftSample.model_name, DriftSample.package_id,
                                      DriftSample.t, DriftSample.span_s, DriftSample.counts)
                               .where(DriftSample.t > mark, DriftSample.t <= upto)).all()
        merged = _merge(rows, span)
        session.execute(delete(DriftSample).where(DriftSample.t > mark, DriftSample.t <= upto))
        if merged:
            refs = references.get_many(session, {key[2] for key in merged})
            session.execute(insert(DriftSample), [_row(key, value, refs.get(key[2])) for key, value in merged.items()])
        return len(rows), len(merged)

    folded, written = fold_spans(db, DRIFT_MARK, fold_cutoff(now, config), span, first_start, fold)
    with db.session() as session:
        expired = session.execute(delete(DriftSample).where(
            DriftSample.t < now - config.metrics_rollup_retention_s)).rowcount or 0
    if folded or expired:
        log.info("retention: folded %d drift bucket(s) into %d, expired %d", folded, written, expired)
    return folded, written


def _merge(rows: Any, span: float) -> dict[tuple[int, str, str, float], dict[str, Any]]:
    merged: dict[tuple[int, str, str, float], dict[str, Any]] = defaultdict(lambda: {"counts": None, "span_s": 0.0})
    for device_id, model, package_id, t, span_s, counts in rows:
        end = math.ceil(t / span) * span
        m = merged[(int(device_id), model, package_id, end)]
        if m["counts"] is None or (len(m["counts"]) == len(counts)
                                   and all(len(a) == len(b) for a, b in zip(m["counts"], counts))):
            m["counts"] = add_counts(m["counts"], counts)
            m["span_s"] += float(span_s)
    return dict(merged)


def _row(key: tuple[int, str, str, float], value: dict[str, Any], reference: Any) -> dict[str, Any]:
    device_id, model, package_id, end = key
    counts = value["counts"]
    psis: dict[str, float | None] = {}
    if reference is not None and reference.fits(counts):
        psis = reference.psis(counts)
    w = worst(reference.features, psis) if psis else None
    return {"device_id": device_id, "model_name": model, "package_id": package_id, "t": end,
            "span_s": value["span_s"], "samples": samples_of(counts), "counts": counts,
            "input_psi": w.input_psi if w else None, "prediction_psi": w.prediction_psi if w else None,
            "scores": {k: round(v, 5) for k, v in psis.items() if v is not None} or None}
