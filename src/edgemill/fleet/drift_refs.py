"""What drift is measured against, per package: its signed baseline, or a window an operator pinned.

A package's features and bins never change (they are signed into it), so the registry's copy is read
once per replica and kept; a pin can be made or removed on any replica, so the answer is re-read after
``ttl_s`` seconds. A package the registry does not know (or one without a baseline) has no reference:
its devices' counts are still stored, and drift for it shows "no baseline", never zero.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..monitoring.drift import SMOOTHING, js_distance, psi
from ..monitoring.features import Feature
from .db.tables import DriftReference, ModelVersion

CACHED_PACKAGES = 4096


@dataclass(frozen=True, eq=False)
class Reference:
    package_id: str
    kind: str  # "baseline" or "pinned"
    bins: str  # the baseline's bins digest: a device's counts must carry the same
    features: tuple[Feature, ...]
    counts: tuple[tuple[int, ...], ...]  # per feature: the baseline's counts, or the pinned window's
    data: str  # what the baseline was counted from ("pinned window" for a pin)
    synthetic: bool
    samples: int
    start: float | None = None  # a pin's window
    end: float | None = None

    def fits(self, counts: Sequence[Sequence[int]]) -> bool:
        """Whether ``counts`` has this package's shape: one list per feature, one count per bin."""
        return len(counts) == len(self.features) and all(len(c) == f.bins for c, f in zip(counts, self.features))

    def scores(self, counts: Sequence[Sequence[int]]) -> dict[str, tuple[float | None, float | None]]:
        """PSI and JS distance of ``counts`` against this reference, per feature key."""
        return {f.key: (psi(ref, c), js_distance(ref, c)) for f, ref, c in zip(self.features, self.counts, counts)}

    def psis(self, counts: Sequence[Sequence[int]]) -> dict[str, float | None]:
        """PSI of ``counts`` (which must :meth:`fit`) per feature key, every feature in one vectorised pass:
        what closing a bucket costs on the heartbeat path (equal to ``monitoring.drift.psi`` per feature)."""
        row = np.fromiter(itertools.chain.from_iterable(counts), dtype=np.float64, count=int(self._starts[-1]))
        terms = self.psi_matrix(row[None, :])[0]
        return {f.key: None if np.isnan(t) else float(t) for f, t in zip(self.features, terms)}

    def psi_matrix(self, rows: np.ndarray) -> np.ndarray:
        """PSI per row (a device's counts, flat in feature order) and feature: ``[rows, features]``, NaN
        where the row counted nothing for the feature or the reference has nothing."""
        actual = np.asarray(rows, dtype=np.float64)
        totals = np.add.reduceat(actual, self._starts[:-1], axis=1)
        a = _smoothed(actual, totals, self._sizes, self._starts)
        terms = np.add.reduceat((a - self._expected) * np.log(a / self._expected), self._starts[:-1], axis=1)
        return np.where((totals > 0) & self._has_reference, terms, np.nan)

    def worst_of_matrix(self, psis: np.ndarray) -> list[Worst]:
        """:func:`worst` for each row of :meth:`psi_matrix`."""
        keys = [f.key for f in self.features]
        out = []
        for side in ("input", "output"):
            mask = np.array([f.side == side for f in self.features])
            if not mask.any():
                out.append([(None, None)] * len(psis))
                continue
            part = np.where(mask, psis, np.nan)
            empty = np.isnan(part).all(axis=1)
            best = np.argmax(np.where(np.isnan(part), -np.inf, part), axis=1)
            out.append([(None, None) if e else (float(part[i, b]), keys[b]) for i, (e, b) in enumerate(zip(empty, best))])
        return [Worst(i[0], i[1], o[0], o[1]) for i, o in zip(*out)]

    @cached_property
    def _sizes(self) -> np.ndarray:
        return np.array([f.bins for f in self.features], dtype=np.int64)

    @cached_property
    def _starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)

    @cached_property
    def _has_reference(self) -> np.ndarray:
        return np.array([sum(c) > 0 for c in self.counts])

    @cached_property
    def _expected(self) -> np.ndarray:
        flat = np.fromiter(itertools.chain.from_iterable(self.counts), dtype=np.float64, count=int(self._starts[-1]))
        return _smoothed(flat, np.add.reduceat(flat, self._starts[:-1], axis=-1), self._sizes, self._starts)


def _smoothed(flat: np.ndarray, totals: np.ndarray, sizes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per feature (along the last axis): proportions, empty bins raised to SMOOTHING, renormalised (as
    ``drift.proportions``)."""
    p = flat / np.repeat(np.where(totals > 0, totals, 1.0), sizes, axis=-1)
    p = np.maximum(p, SMOOTHING)
    return p / np.repeat(np.add.reduceat(p, starts[:-1], axis=-1), sizes, axis=-1)


@dataclass(frozen=True)
class Worst:
    """The largest PSI over a model's input features and over its output features, and which ones."""

    input_psi: float | None
    input_feature: str | None
    prediction_psi: float | None
    prediction_feature: str | None


def worst(features: Iterable[Feature], psis: dict[str, float | None]) -> Worst:
    best: dict[str, tuple[float | None, str | None]] = {"input": (None, None), "output": (None, None)}
    for f in features:
        value = psis.get(f.key)
        if value is None:
            continue
        current = best[f.side][0]
        if current is None or value > current:
            best[f.side] = (value, f.key)
    return Worst(best["input"][0], best["input"][1], best["output"][0], best["output"][1])


def samples_of(counts: Sequence[Sequence[int]]) -> int:
    """Samples behind a set of feature histograms: every feature counts each sample once (the largest
    total, since a tensor missing from a call leaves its features uncounted)."""
    return max((int(sum(c)) for c in counts), default=0)


def split_by_sizes(flat: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """Flat counts (features in order) back into one list per feature of ``sizes`` bins each."""
    values = flat.tolist() if isinstance(flat, np.ndarray) else list(flat)
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def add_counts(a: Sequence[Sequence[int]] | None, b: Sequence[Sequence[int]]) -> list[list[int]]:
    """Bin-wise sum (``a`` None: a copy of ``b``); the shapes must agree."""
    if a is None:
        return [list(map(int, c)) for c in b]
    # Plain lists: a heartbeat's few hundred bins add faster so than through numpy arrays.
    return [[p + q for p, q in zip(x, y)] for x, y in zip(a, b)]


def _from_baseline(package_id: str, baseline: dict) -> Reference:  # type: ignore[type-arg]
    features = tuple(Feature.from_dict(f) for f in baseline["features"])
    return Reference(package_id=package_id, kind="baseline", bins=str(baseline["bins"]), features=features,
                     counts=tuple(f.baseline for f in features), data=str(baseline.get("data", "")),
                     synthetic=bool(baseline.get("synthetic")), samples=int(baseline.get("samples", 0)))


def pinned(base: Reference, pin: DriftReference) -> Reference:
    return Reference(package_id=base.package_id, kind="pinned", bins=base.bins, features=base.features,
                     counts=tuple(tuple(int(v) for v in c) for c in pin.counts), data="pinned window",
                     synthetic=False, samples=int(pin.samples), start=pin.start, end=pin.end)


class References:
    def __init__(self, ttl_s: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        self._ttl_s = ttl_s
        self._clock = clock or time.monotonic
        self._baselines: OrderedDict[str, tuple[float, Reference | None]] = OrderedDict()  # + expiry for None
        self._pins: OrderedDict[str, tuple[float, DriftReference | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, session: Session, package_ids: Iterable[str]) -> dict[str, Reference | None]:
        """The reference of each package (one query for those not cached, one for their pins)."""
        wanted = set(package_ids)
        now = self._clock()
        with self._lock:
            base = {p: self._baselines[p] for p in wanted if p in self._baselines}
            pins = {p: self._pins[p] for p in wanted if p in self._pins}
        stale_base = [p for p in wanted if p not in base or (base[p][1] is None and base[p][0] <= now)]
        if stale_base:
            found: dict[str, Reference | None] = {p: None for p in stale_base}
            for package_id, baseline in session.execute(select(ModelVersion.package_id, ModelVersion.baseline)
                                                        .where(ModelVersion.package_id.in_(stale_base))):
                if baseline:
                    found[package_id] = _from_baseline(package_id, baseline)
            for p, ref in found.items():  # a known baseline never expires; "none yet" is asked again later
                base[p] = (now + self._ttl_s, ref)
        stale_pins = [p for p in wanted if base[p][1] is not None and (p not in pins or pins[p][0] <= now)]
        if stale_pins:
            got = {row.package_id: row for row in session.scalars(
                select(DriftReference).where(DriftReference.package_id.in_(stale_pins)))}
            for p in stale_pins:
                if p in got:
                    session.expunge(got[p])
                pins[p] = (now + self._ttl_s, got.get(p))
        with self._lock:
            for p in stale_base:
                self._baselines[p] = base[p]
                self._baselines.move_to_end(p)
            for p in stale_pins:
                self._pins[p] = pins[p]
                self._pins.move_to_end(p)
            while len(self._baselines) > CACHED_PACKAGES:
                self._baselines.popitem(last=False)
            while len(self._pins) > CACHED_PACKAGES:
                self._pins.popitem(last=False)
        out: dict[str, Reference | None] = {}
        for p in wanted:
            ref = base[p][1]
            pin = pins.get(p, (0.0, None))[1] if ref is not None else None
            out[p] = pinned(ref, pin) if ref is not None and pin is not None and ref.fits(pin.counts) else ref
        return out

    def forget(self, package_id: str) -> None:
        """Drop what this replica knows of a package's pin (after pinning or unpinning here)."""
        with self._lock:
            self._pins.pop(package_id, None)
