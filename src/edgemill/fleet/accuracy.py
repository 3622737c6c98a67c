"""Live accuracy from labeled captures: top-1 for classifiers, MAE and RMSE for regressors, each always
with the count of labeled samples it rests on, over time (by when the prediction was made) and split by
version, device and fleet."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Labeled:
    """One labeled capture, as the database holds it."""

    t: float  # when the device made the prediction
    version: str
    device: str
    fleet: str
    task: str
    prediction: list[float | int]
    label: list[float | int]


@dataclass
class Tally:
    """Running sums for one group: samples, correct answers (classifiers), absolute and squared errors."""

    samples: int = 0
    correct: int = 0
    abs_error: float = 0.0
    sq_error: float = 0.0

    def add(self, task: str, prediction: Iterable[float | int], label: Iterable[float | int]) -> None:
        for p, y in zip(prediction, label):
            self.samples += 1
            if task == "classification":
                self.correct += int(p == y)
            else:
                error = float(p) - float(y)
                self.abs_error += abs(error)
                self.sq_error += error * error

    def value(self, task: str) -> float:
        """Top-1 accuracy for a classifier, MAE for a regressor (the headline per group)."""
        if not self.samples:
            return math.nan
        return self.correct / self.samples if task == "classification" else self.abs_error / self.samples


@dataclass
class AccuracySummary:
    task: str | None
    samples: int = 0
    captures: int = 0
    top1: float | None = None
    mae: float | None = None
    rmse: float | None = None
    series: list[tuple[float, int, float]] = field(default_factory=list)  # (bucket start, samples, value)
    by_version: list[tuple[str, int, float]] = field(default_factory=list)
    by_device: list[tuple[str, int, float]] = field(default_factory=list)
    by_fleet: list[tuple[str, int, float]] = field(default_factory=list)


def summarize(rows: Iterable[Labeled], bucket_s: int) -> AccuracySummary:
    """Accuracy of ``rows`` overall, per time bucket and per group. Rows of another task than the most
    common one (a model whose versions changed kind) are left out rather than mixed."""
    rows = list(rows)
    if not rows:
        return AccuracySummary(task=None)
    tasks = [r.task for r in rows]
    task = max(set(tasks), key=tasks.count)
    rows = [r for r in rows if r.task == task]
    total = Tally()
    buckets: dict[float, Tally] = {}
    groups: dict[str, dict[str, Tally]] = {"version": {}, "device": {}, "fleet": {}}
    for r in rows:
        total.add(task, r.prediction, r.label)
        buckets.setdefault(math.floor(r.t / bucket_s) * bucket_s, Tally()).add(task, r.prediction, r.label)
        for kind, name in (("version", r.version), ("device", r.device), ("fleet", r.fleet)):
            groups[kind].setdefault(name, Tally()).add(task, r.prediction, r.label)

    def listed(kind: str) -> list[tuple[str, int, float]]:
        return sorted(((name, t.samples, t.value(task)) for name, t in groups[kind].items()), key=lambda g: (g[2], g[0]),
                      reverse=task != "classification")  # worst first: lowest accuracy, largest error

    summary = AccuracySummary(task=task, samples=total.samples, captures=len(rows),
                              series=[(t, b.samples, b.value(task)) for t, b in sorted(buckets.items()) if b.samples],
                              by_version=listed("version"), by_device=listed("device"), by_fleet=listed("fleet"))
    if total.samples:
        if task == "classification":
            summary.top1 = total.correct / total.samples
        else:
            summary.mae = total.abs_error / total.samples
            summary.rmse = math.sqrt(total.sq_error / total.samples)
    return summary
