"""Folding a heartbeat's drift counters into the device's open bucket, and closing buckets into rows.

A device sends, per loaded model, its histogram counts since the model loaded (cumulative under an
``epoch``, like Prometheus counters), so a lost heartbeat loses nothing: the next one's difference
carries it. The server keeps per device and model the counters last seen and the counts of the bucket
still open (``Device.drift_state``, written with the heartbeat's own row update). A bucket closes into
a ``drift_samples`` row once it spans ``drift_bucket_s`` and holds ``drift_min_samples`` samples (a quiet
device's bucket keeps filling, up to ``DRIFT_MAX_BUCKET_S``), when the device moves to another package,
or when it stops running the model. The row keeps the counts, which merge exactly with any other
device's, and the bucket's PSI against the reference, which charts and alerts read without the counts.

Counts whose bins do not match the package's baseline (another build of the model, a corrupted
agent) are refused: not stored, counted per device and model, and named in the device's problems.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import schemas
from .config import ServerConfig
from .drift_refs import Reference, samples_of, split_by_sizes, worst

DRIFT_MAX_BUCKET_S = 86400.0  # a bucket of a quiet device closes after this however few samples it holds


@dataclass
class Folded:
    state: dict[str, Any]  # the device's new drift_state
    rows: list[dict[str, Any]] = field(default_factory=list)  # drift_samples rows to insert (device_id added by the caller)
    problems: list[str] = field(default_factory=list)


def fold(state: dict[str, Any] | None, hb: schemas.HeartbeatIn, references: dict[str, Reference | None],
         now: float, config: ServerConfig) -> Folded:
    """The device's drift state after this heartbeat, the buckets it closed, and problems to show."""
    old = dict(state or {})
    out = Folded(state={})
    running = {m.name for m in hb.models}
    for report in hb.drift:
        entry = old.pop(report.model, None)
        reference = references.get(report.package_id)
        if entry is not None and entry.get("package_id") not in (None, report.package_id):
            _close(report.model, entry, references.get(entry["package_id"]), now, out)  # the old version's last bucket
            entry = {"refused": entry.get("refused", 0)}
        if reference is not None and (report.bins != reference.bins or not reference.fits(report.counts)):
            entry = dict(entry or {})
            entry["refused"] = int(entry.get("refused", 0)) + 1
            reason = (f"bins {report.bins} do not match the package baseline's {reference.bins}"
                      if report.bins != reference.bins else "the counts do not have the baseline's shape")
            out.problems.append(f"model {report.model}: drift histograms refused ({entry['refused']} so far): {reason}")
            out.state[report.model] = entry
            continue
        out.state[report.model] = _fold_one(entry, report, reference, now, config, out)
    for model, entry in old.items():  # models that sent no counts this time
        if model in running:
            out.state[model] = entry  # still running (drift off, or nothing counted): keep the open bucket
        elif entry.get("package_id"):
            _close(model, entry, references.get(entry["package_id"]), now, out)
    return out


def _fold_one(entry: dict[str, Any] | None, report: schemas.DriftCountsIn, reference: Reference | None, now: float,
              config: ServerConfig, out: Folded) -> dict[str, Any]:
    # Flat int64 arrays: a heartbeat's few hundred bins are subtracted, checked and added in a few numpy
    # calls (it was three Python passes), and the state stores flat lists (the row update encodes them).
    entry = dict(entry or {})
    sizes = [len(c) for c in report.counts]
    totals = np.fromiter(itertools.chain.from_iterable(report.counts), dtype=np.int64, count=sum(sizes))
    delta = totals
    if entry.get("epoch") == report.epoch and entry.get("sizes") == sizes and entry.get("totals") is not None:
        since_last = totals - np.asarray(entry["totals"], dtype=np.int64)
        if (since_last >= 0).all():  # else the counters went back: a restart under the same epoch
            delta = since_last
    # (A new epoch means the agent reloaded the model or restarted: its counters start at zero.)
    pending = entry.get("pending")
    since = float(entry.get("since", now))  # the open bucket began when the last one closed (or now)
    if pending is not None and entry.get("sizes") != sizes:
        pending, since = None, now  # a package without a reference changed shape: start a fresh bucket
    open_bucket = delta if pending is None else np.asarray(pending, dtype=np.int64) + delta
    starts = np.cumsum([0] + sizes[:-1])
    samples = int(np.add.reduceat(open_bucket, starts).max()) if sizes else 0
    entry.update(package_id=report.package_id, epoch=report.epoch, sizes=sizes, totals=totals.tolist(),
                 pending=open_bucket.tolist(), since=since)
    span = now - since
    if samples and ((span >= config.drift_bucket_s and samples >= config.drift_min_samples)
                    or span >= DRIFT_MAX_BUCKET_S):
        _close(report.model, entry, reference, now, out)
        entry.update(pending=None, since=now)
    elif not samples and span >= DRIFT_MAX_BUCKET_S:
        entry["since"] = now
    return entry


def open_counts(entry: dict[str, Any]) -> list[list[int]] | None:
    """An entry's open bucket as counts per feature (None: nothing open)."""
    pending, sizes = entry.get("pending"), entry.get("sizes")
    return split_by_sizes(pending, sizes) if pending and sizes else None


def _close(model: str, entry: dict[str, Any], reference: Reference | None, now: float, out: Folded) -> None:
    """Turn the entry's open bucket into a row (nothing when it holds no samples)."""
    counts = open_counts(entry)
    samples = samples_of(counts) if counts else 0
    if not samples:
        return
    psis: dict[str, float | None] = {}
    if reference is not None and reference.fits(counts):
        psis = reference.psis(counts)
    w = worst(reference.features, psis) if reference is not None and psis else None
    out.rows.append({"model_name": model, "package_id": entry["package_id"], "t": now,
                     "span_s": max(0.0, now - float(entry.get("since", now))), "samples": samples,
                     "counts": counts, "input_psi": w.input_psi if w else None,
                     "prediction_psi": w.prediction_psi if w else None,
                     "scores": {k: round(v, 5) for k, v in psis.items() if v is not None} or None})
