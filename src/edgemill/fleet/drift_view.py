"""Drift of one model version over a scope (a device, a fleet, or every device) and a window: the merged
histograms against the reference, per-device scores, and a time series, for the API and the dashboard.

The window's counts are the closed buckets (``drift_samples``) ending inside it plus each device's open
bucket (so what a device sent a moment ago counts at once); they merge exactly, so a fleet's histogram is
the sum of its devices'. The time series reads only the buckets' stored PSI (no counts), so a day of a
large fleet is one narrow query.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import NotFoundError
from ..monitoring.features import bin_labels
from . import schemas
from .config import ServerConfig
from .db.tables import Device, DeviceModel, DriftSample, Fleet, Model, ModelVersion
from .drift_ingest import open_counts
from .drift_refs import Reference, References, samples_of, split_by_sizes, worst
from .views import ts

SERIES_POINTS = 96
# One fleet by name, several (the fleets an operator key is limited to), or None (every fleet).
Fleets = str | tuple[str, ...] | None
DEVICES_SHOWN = 200


def resolve_version(session: Session, model: str, version: str | None, device: str | None = None,
                    fleet: Fleets = None) -> tuple[str | None, str | None]:
    """(version, package id) to report on: the one named, else the one most devices in scope run now,
    else the newest uploaded. A model the registry does not know is a 404."""
    model_row = session.scalar(select(Model).where(Model.name == model))
    if model_row is None:
        raise NotFoundError("no model with that name", value=model, field="model",
                            fix="name a model of the registry (GET /api/v1/models)")
    versions = {row.package_id: row.version for row in session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_row.id))}
    if version is not None:
        for package_id, v in versions.items():
            if v == version:
                return v, package_id
        raise NotFoundError(f"model {model!r} has no such version", value=version, field="version",
                            fix=f"use one of: {', '.join(sorted(versions.values())) or 'none'}")
    running = select(DeviceModel.package_id, func.count()).where(DeviceModel.model_name == model)
    in_scope = _scope_filter(DeviceModel.device_id, device, fleet)
    if in_scope is not None:
        running = running.where(in_scope)
    counted = sorted(session.execute(running.group_by(DeviceModel.package_id)), key=lambda r: -r[1])
    if counted:
        package_id = counted[0][0]
        return versions.get(package_id), package_id
    newest = session.scalar(select(ModelVersion).where(ModelVersion.model_id == model_row.id)
                            .order_by(ModelVersion.created_at.desc()).limit(1))
    return (newest.version, newest.package_id) if newest is not None else (None, None)


def check_scope(session: Session, device: str | None, fleet: Fleets) -> None:
    """A 404 naming the device or fleet of the scope that does not exist."""
    if isinstance(fleet, tuple):  # a key's fleets: they were checked when the key was made
        fleet = None
    if device is not None:
        stmt = select(Device.id).join(Fleet, Device.fleet_id == Fleet.id).where(Device.name == device)
        if session.scalar(stmt.where(Fleet.name == fleet) if fleet is not None else stmt) is None:
            raise NotFoundError("no device with that name" + (f" in fleet {fleet!r}" if fleet else ""), value=device,
                                field="device", fix="name a registered device (GET /api/v1/devices)")
    elif fleet is not None and session.scalar(select(Fleet.id).where(Fleet.name == fleet)) is None:
        raise NotFoundError("no fleet with that name", value=fleet, field="fleet", fix="GET /api/v1/fleets lists them")


def drift_report(session: Session, references: References, config: ServerConfig, now: float, model: str,
                 version: str | None = None, device: str | None = None, fleet: Fleets = None,
                 window_s: float = 3600.0, range_s: float = 86400.0) -> schemas.DriftOut:
    """``fleet``: one fleet's name, or several (an operator key's fleets: reported as no one fleet)."""
    check_scope(session, device, fleet)
    version, package_id = resolve_version(session, model, version, device, fleet)
    reference = references.get_many(session, [package_id]).get(package_id) if package_id else None
    sizes = [f.bins for f in reference.features] if reference is not None else None
    counted = window_counts(session, model, package_id, device, fleet, now - window_s, sizes)
    merged = counted.merged()
    samples = samples_of(merged) if merged else 0
    features: list[schemas.DriftFeatureOut] = []
    overall = None
    if reference is not None:
        window = merged if merged is not None and reference.fits(merged) else [[0] * f.bins for f in reference.features]
        scores = reference.scores(window)
        overall = worst(reference.features, {k: s[0] for k, s in scores.items()})
        features = [schemas.DriftFeatureOut(key=f.key, side=f.side, tensor=f.tensor, statistic=f.statistic,  # type: ignore[arg-type]
                                            index=f.index if f.index >= 0 else None, labels=bin_labels(f),
                                            edges=list(f.edges), categories=list(f.categories),
                                            reference=list(ref), window=list(map(int, counts)),
                                            psi=scores[f.key][0], js=scores[f.key][1])
                    for f, ref, counts in zip(reference.features, reference.counts, window)]
    status, message = _status(reference, samples, config, package_id)
    return schemas.DriftOut(
        model=model, version=version, package_id=package_id, device=device,
        fleet=fleet if isinstance(fleet, str) else None, window_s=window_s,
        bucket_s=config.drift_bucket_s, status=status, message=message, reference=reference_out(reference), samples=samples,
        input_psi=overall.input_psi if overall else None, prediction_psi=overall.prediction_psi if overall else None,
        input_feature=overall.input_feature if overall else None,
        prediction_feature=overall.prediction_feature if overall else None,
        features=features,
        series=(_series(session, model, package_id, device, fleet, now, range_s)
                + _open_point(counted.open_buckets, reference, now, config)),
        devices=_devices(counted, reference), refused=counted.refused)


@dataclass
class WindowCounts:
    per_device: dict[int, np.ndarray]  # device id -> its counts in the window, flat in feature order
    sizes: list[int]  # bins per feature of those counts
    open_buckets: dict[int, list[list[int]]]  # device id -> its open bucket alone
    refused: int
    names: dict[int, tuple[str, str]]  # device id -> (name, fleet)

    def merged(self) -> list[list[int]] | None:
        """Every device's counts summed (exact: same bins), per feature; None when nothing was counted."""
        if not self.per_device:
            return None
        return split_by_sizes(np.sum(list(self.per_device.values()), axis=0), self.sizes)


def _scope_filter(column: Any, device: str | None, fleet: Fleets) -> Any:
    """SQL for "the device id in ``column`` is in scope" (None: every device). ``fleet`` may be several
    (the fleets an operator key is limited to)."""
    if device is None and fleet is None:
        return None
    ids = select(Device.id).join(Fleet, Device.fleet_id == Fleet.id)
    if device is not None:
        ids = ids.where(Device.name == device)
    if isinstance(fleet, tuple):
        ids = ids.where(Fleet.name.in_(fleet))
    elif fleet is not None:
        ids = ids.where(Fleet.name == fleet)
    return column.in_(ids.scalar_subquery())


def window_counts(session: Session, model: str, package_id: str | None, device: str | None, fleet: Fleets,
                  since: float, sizes: list[int] | None, until: float | None = None) -> WindowCounts:
    """Per device: its counts in the window (closed buckets + the open one; flat, in feature order) and
    its open bucket alone; refusals in scope; device names. Counts of another shape than ``sizes`` (the
    reference's; without one, the first seen) are left out: they cannot merge. With ``until``, a past
    window: the stored buckets that ended in it, no open ones."""
    per_device: dict[int, np.ndarray] = {}
    open_buckets: dict[int, list[list[int]]] = {}
    if package_id is None:
        return WindowCounts(per_device, [], open_buckets, 0, {})
    expected = list(sizes) if sizes is not None else None
    total = sum(expected) if expected is not None else None

    def add(device_id: int, counts: list[list[int]]) -> None:
        nonlocal expected, total
        shape = [len(c) for c in counts]
        if expected is None:
            expected, total = shape, sum(shape)
        if shape != expected:
            return
        flat = np.fromiter(itertools.chain.from_iterable(counts), dtype=np.int64, count=total)
        have = per_device.get(device_id)
        per_device[device_id] = flat if have is None else have + flat

    stmt = select(DriftSample.device_id, DriftSample.counts).where(
        DriftSample.model_name == model, DriftSample.package_id == package_id, DriftSample.t > since)
    if until is not None:
        stmt = stmt.where(DriftSample.t <= until)
    # Only this model's open bucket, read out of each device's state by the database (JSON path): a
    # fleet view of thousands of devices parses their open buckets, not every model's counters.
    open_stmt = select(Device.id, Device.name, Fleet.name, Device.drift_state[(model, "package_id")].as_string(),
                       Device.drift_state[(model, "pending")], Device.drift_state[(model, "sizes")],
                       Device.drift_state[(model, "refused")]).join(
        Fleet, Device.fleet_id == Fleet.id).where(Device.drift_state.is_not(None))
    in_scope = _scope_filter(DriftSample.device_id, device, fleet)
    if in_scope is not None:
        stmt = stmt.where(in_scope)
        open_stmt = open_stmt.where(_scope_filter(Device.id, device, fleet))
    for device_id, counts in session.execute(stmt):
        add(int(device_id), counts)
    refused = 0
    names: dict[int, tuple[str, str]] = {}
    for device_id, name, fleet_name, entry_package, pending_flat, pending_sizes, refusals in (
            session.execute(open_stmt) if until is None else ()):
        refused += int(refusals or 0)
        pending = (open_counts({"pending": pending_flat, "sizes": pending_sizes}) if entry_package == package_id
                   else None)
        if pending:
            add(int(device_id), pending)
            open_buckets[int(device_id)] = pending
            names[int(device_id)] = (name, fleet_name)
    missing = [d for d in per_device if d not in names]
    if missing:
        for device_id, name, fleet_name in session.execute(select(Device.id, Device.name, Fleet.name).join(
                Fleet, Device.fleet_id == Fleet.id).where(Device.id.in_(missing))):
            names[int(device_id)] = (name, fleet_name)
    return WindowCounts(per_device, expected or [], open_buckets, refused, names)


def _devices(counted: WindowCounts, reference: Reference | None) -> list[schemas.DriftDeviceOut]:
    """Every device in scope scored in one matrix pass (thousands of devices in a fleet view), worst first."""
    ids = list(counted.per_device)
    worsts: list[Any] = [None] * len(ids)
    if reference is not None and ids and counted.sizes == [f.bins for f in reference.features]:
        rows = np.stack([counted.per_device[d] for d in ids])
        worsts = reference.worst_of_matrix(reference.psi_matrix(rows))
    out = []
    for device_id, w in zip(ids, worsts):
        name, fleet = counted.names.get(device_id, ("?", "?"))
        samples = int(np.add.reduceat(counted.per_device[device_id], np.cumsum([0] + counted.sizes[:-1])).max())
        out.append(schemas.DriftDeviceOut(device=name, fleet=fleet, samples=samples,
                                          input_psi=w.input_psi if w else None,
                                          prediction_psi=w.prediction_psi if w else None,
                                          input_feature=w.input_feature if w else None,
                                          prediction_feature=w.prediction_feature if w else None))
    out.sort(key=lambda d: (-max(d.input_psi or 0.0, d.prediction_psi or 0.0), d.device))
    return out[:DEVICES_SHOWN]


def _series(session: Session, model: str, package_id: str | None, device: str | None, fleet: Fleets,
            now: float, range_s: float) -> list[schemas.DriftPointOut]:
    """Per time bin: the worst and the median device's bucket PSI (read from the stored scores)."""
    if package_id is None:
        return []
    start = now - range_s
    width = range_s / SERIES_POINTS
    stmt = select(DriftSample.t, DriftSample.device_id, DriftSample.samples, DriftSample.input_psi,
                  DriftSample.prediction_psi).where(DriftSample.model_name == model,
                                                    DriftSample.package_id == package_id, DriftSample.t > start)
    in_scope = _scope_filter(DriftSample.device_id, device, fleet)
    if in_scope is not None:
        stmt = stmt.where(in_scope)
    bins: dict[int, dict[str, Any]] = defaultdict(lambda: {"samples": 0, "input": {}, "prediction": {}})
    for t, device_id, samples, input_psi, prediction_psi in session.execute(stmt):
        b = bins[min(SERIES_POINTS - 1, int((t - start) // width))]
        b["samples"] += int(samples)
        for side, value in (("input", input_psi), ("prediction", prediction_psi)):
            if value is not None:  # a device's worst bucket in the bin stands for it
                b[side][device_id] = max(value, b[side].get(device_id, value))
    points = []
    for index in sorted(bins):
        b = bins[index]
        points.append(schemas.DriftPointOut(
            t=start + (index + 1) * width, samples=b["samples"],
            input_psi=max(b["input"].values(), default=None), prediction_psi=max(b["prediction"].values(), default=None),
            median_input_psi=statistics.median(b["input"].values()) if b["input"] else None,
            median_prediction_psi=statistics.median(b["prediction"].values()) if b["prediction"] else None))
    return points


def _open_point(open_buckets: dict[int, list[list[int]]], reference: Reference | None, now: float,
                config: ServerConfig) -> list[schemas.DriftPointOut]:
    """The series' live end: the devices' open buckets that already hold enough samples, scored now."""
    if reference is None:
        return []
    scored = [worst(reference.features, reference.psis(c))
              for c in open_buckets.values() if reference.fits(c) and samples_of(c) >= config.drift_min_samples]
    if not scored:
        return []
    inputs = [w.input_psi for w in scored if w.input_psi is not None]
    outputs = [w.prediction_psi for w in scored if w.prediction_psi is not None]
    return [schemas.DriftPointOut(
        t=now, samples=sum(samples_of(c) for c in open_buckets.values()),
        input_psi=max(inputs, default=None), prediction_psi=max(outputs, default=None),
        median_input_psi=statistics.median(inputs) if inputs else None,
        median_prediction_psi=statistics.median(outputs) if outputs else None)]


def _status(reference: Reference | None, samples: int, config: ServerConfig,
            package_id: str | None) -> tuple[str, str]:
    if package_id is None:
        return "no_data", "no version of this model has been uploaded"
    if reference is None:
        return "no_baseline", ("no baseline: this package carries none (compiled before drift monitoring, or its "
                               "baseline was unreadable); recompile it to see drift, or pin a window as the reference")
    if samples == 0:
        return "no_data", "no drift counts in the window: no device in scope served this version in it"
    if samples < config.drift_min_samples:
        return "few_samples", (f"only {samples} sample(s) in the window; fewer than {config.drift_min_samples} "
                               "say little about a distribution, so read these scores with care")
    return "ok", f"{samples:,} samples in the window against the {reference.kind}"


def reference_out(reference: Reference | None) -> schemas.DriftReferenceOut | None:
    if reference is None:
        return None
    return schemas.DriftReferenceOut(kind=reference.kind, data=reference.data,  # type: ignore[arg-type]
                                     synthetic=reference.synthetic, samples=reference.samples,
                                     start=ts(reference.start) if reference.start is not None else None,
                                     end=ts(reference.end) if reference.end is not None else None)
