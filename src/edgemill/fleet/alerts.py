"""Alert evaluation: a pure function from a rule, recent samples and fleet facts to a verdict.

No I/O and no clock: the caller reads the samples and the facts, passes `now`, and stores what
:func:`transition` says. That keeps every edge (window bounds, scopes, missing data) testable without
a database or a sleeping test.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Sample:
    """One heartbeat's worth of one model on one device: deltas over the interval ending at `t`."""

    t: float
    device: str
    fleet: str
    model: str
    requests: int
    errors: int
    p95_ms: float | None


@dataclass(frozen=True)
class DriftReading:
    """One closed drift bucket of one model on one device: its PSI against the reference at closing."""

    t: float
    device: str
    fleet: str
    model: str
    samples: int
    input_psi: float | None  # the largest over input features (None: no reference)
    prediction_psi: float | None
    scores: Mapping[str, float] | None = None  # feature key -> PSI

    def worst_feature(self, side: str) -> str | None:
        """The feature of ``side`` ("input" or "output") with the largest PSI in this bucket."""
        mine = {k: v for k, v in (self.scores or {}).items() if k.startswith(side + ":")}
        return max(mine, key=mine.__getitem__) if mine else None


@dataclass(frozen=True)
class LabeledReading:
    """One labeled classifier capture: when its prediction was made, its samples and how many were right."""

    t: float
    device: str
    fleet: str
    model: str
    samples: int
    correct: int


@dataclass(frozen=True)
class FleetFacts:
    """State facts at `now`. A fleet missing from a count mapping has zero of that count."""

    offline_devices: Mapping[str, int]  # fleet -> registered devices not seen within the offline threshold
    failed_deployments: Mapping[str, int]  # fleet -> devices whose last deployment apply failed
    device_fleet: Mapping[str, str]  # device -> fleet
    drift: Sequence[DriftReading] = ()  # closed drift buckets, newest rule window's worth
    labeled: Sequence[LabeledReading] = ()  # labeled classifier captures, newest accuracy rule window's worth


@dataclass(frozen=True)
class Rule:
    """What the database holds for a rule (the webhook lives beside it, not in the evaluation)."""

    name: str
    metric: str
    op: str
    threshold: float
    window_s: float
    model: str | None = None
    device: str | None = None
    fleet: str | None = None
    feature: str | None = None  # drift metrics: this feature's PSI instead of the largest
    min_samples: int | None = None  # accuracy: labeled samples needed in the window before it judges


@dataclass(frozen=True)
class Evaluation:
    # None: no data in the window. It never fires, and a firing alert with no data stays firing:
    # missing data is not recovery. A device that went silent mid-incident has not healed, and
    # resolving would page "all clear" exactly when nobody can see the fleet.
    value: float | None
    breached: bool
    message: str  # one line for humans, e.g. "error_rate of model 'mlp' on fleet 'cams' is 0.31 > 0.05 over 300 s"


OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

# Metrics measured over the rule's window from samples, and metrics read from the state facts at `now`.
WINDOW_METRICS = frozenset({"error_rate", "p95_latency_ms", "requests_per_min"})
STATE_METRICS = frozenset({"offline_devices", "failed_deployments"})
DRIFT_METRICS = frozenset({"input_drift", "prediction_drift"})
LABEL_METRICS = frozenset({"accuracy"})
METRICS = WINDOW_METRICS | STATE_METRICS | DRIFT_METRICS | LABEL_METRICS
DEFAULT_MIN_LABELED = 30  # an accuracy rule without min_samples judges from this many labeled samples
ACCURACY_HINT = "measured on the labeled captures: label more to narrow it"
PREDICTION_DRIFT_HINT = ("the model's answers have shifted; without labels this is the early warning that its "
                         "accuracy may be falling")


def _in_scope(rule: Rule, sample: Sample | DriftReading | LabeledReading, facts: FleetFacts, now: float) -> bool:
    # (now - window, now]: a sample exactly one window old describes the interval before the window.
    if not now - rule.window_s < sample.t <= now:
        return False
    if rule.model is not None and sample.model != rule.model:
        return False
    if rule.device is not None and sample.device != rule.device:
        return False
    # The registry's view of the device's fleet wins over the sample's: a device moved to another fleet
    # counts for its new fleet at once.
    fleet = facts.device_fleet.get(sample.device, sample.fleet)
    return rule.fleet is None or fleet == rule.fleet


def _scoped(rule: Rule, samples: Sequence[Sample], facts: FleetFacts, now: float) -> list[Sample]:
    return [s for s in samples if _in_scope(rule, s, facts, now)]


def _error_rate(rule: Rule, scoped: list[Sample]) -> float | None:
    requests = sum(s.requests for s in scoped)
    return sum(s.errors for s in scoped) / requests if requests else None


def _p95(rule: Rule, scoped: list[Sample]) -> float | None:
    # The worst p95 of any one report: p95s cannot be merged exactly, and one slow device is what
    # a latency alert is for.
    values = [s.p95_ms for s in scoped if s.p95_ms is not None]
    return max(values) if values else None


def _requests_per_min(rule: Rule, scoped: list[Sample]) -> float:
    # Silence is a value here (0), so "model stopped receiving traffic" can fire with op "<".
    return sum(s.requests for s in scoped) / (rule.window_s / 60.0)


_WINDOW_MEASURES: Mapping[str, Callable[[Rule, list[Sample]], float | None]] = {
    "error_rate": _error_rate,
    "p95_latency_ms": _p95,
    "requests_per_min": _requests_per_min,
}

_STATE_COUNTS: Mapping[str, Callable[[FleetFacts], Mapping[str, int]]] = {
    "offline_devices": lambda facts: facts.offline_devices,
    "failed_deployments": lambda facts: facts.failed_deployments,
}


def _state_count(rule: Rule, facts: FleetFacts) -> float | None:
    """A fleet-level count at `now`. A device scope counts that device's whole fleet (the facts are per
    fleet, not per device); an unknown device, or one outside the rule's fleet, gives no data."""
    counts = _STATE_COUNTS[rule.metric](facts)
    fleet = rule.fleet
    if rule.device is not None:
        device_fleet = facts.device_fleet.get(rule.device)
        if device_fleet is None or (fleet is not None and fleet != device_fleet):
            return None
        fleet = device_fleet
    if fleet is None:
        return float(sum(counts.values()))
    return float(counts.get(fleet, 0))


def _drift_value(rule: Rule, reading: DriftReading) -> float | None:
    if rule.feature is not None:
        return (reading.scores or {}).get(rule.feature)
    return reading.input_psi if rule.metric == "input_drift" else reading.prediction_psi


def _latest_drift(rule: Rule, facts: FleetFacts, now: float) -> list[DriftReading]:
    """Per device in scope, its most recent bucket in the window that has a value for the rule."""
    latest: dict[tuple[str, str], DriftReading] = {}
    for r in facts.drift:
        if _in_scope(rule, r, facts, now) and _drift_value(rule, r) is not None:
            key = (r.device, r.model)
            if key not in latest or r.t > latest[key].t:
                latest[key] = r
    return list(latest.values())


def _worst_drift(rule: Rule, readings: list[DriftReading]) -> DriftReading | None:
    return max(readings, key=lambda r: (_drift_value(rule, r) or 0.0, r.device), default=None)


def _measure(rule: Rule, samples: Sequence[Sample], facts: FleetFacts,
             now: float) -> tuple[float | None, list[Any]]:
    """The value and the samples (or drift readings) it rests on (none for state metrics)."""
    if rule.metric in DRIFT_METRICS:
        readings = _latest_drift(rule, facts, now)
        top = _worst_drift(rule, readings)
        return (_drift_value(rule, top) if top is not None else None), readings
    if rule.metric in LABEL_METRICS:
        labeled = [r for r in facts.labeled if _in_scope(rule, r, facts, now)]
        samples = sum(r.samples for r in labeled)
        if not samples or samples < (rule.min_samples or DEFAULT_MIN_LABELED):
            return None, labeled  # too few labels to judge: no data, which never fires nor resolves
        return sum(r.correct for r in labeled) / samples, labeled
    if rule.metric in _STATE_COUNTS:
        return _state_count(rule, facts), []
    measure_window = _WINDOW_MEASURES.get(rule.metric)
    if measure_window is None:
        raise ValueError(f"unknown alert metric {rule.metric!r}; expected one of {sorted(METRICS)}")
    scoped = _scoped(rule, samples, facts, now)
    return measure_window(rule, scoped), scoped


def measure(rule: Rule, samples: Sequence[Sample], facts: FleetFacts, now: float) -> float | None:
    """The rule's metric over its scope and window at `now`; None when there is no data."""
    return _measure(rule, samples, facts, now)[0]


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def _subject(rule: Rule) -> str:
    text = rule.metric
    if rule.model is not None:
        text += f" of model '{rule.model}'"
    if rule.device is not None:
        text += f" on device '{rule.device}'"
    if rule.fleet is not None:
        text += f" on fleet '{rule.fleet}'"
    if rule.device is None and rule.fleet is None:
        text += " on all fleets"
    return text


def _evidence(rule: Rule, scoped: list[Any]) -> str:
    """What the value rests on, so a reader can tell 1 error in 2 requests from 600 in 1,200."""
    if rule.metric in DRIFT_METRICS:
        top = _worst_drift(rule, scoped)
        if top is None:
            return ""
        feature = rule.feature or top.worst_feature("input" if rule.metric == "input_drift" else "output")
        text = (f" (PSI on device '{top.device}'" + (f", feature {feature}" if feature else "")
                + f", its latest {top.samples:,} samples; {len(scoped):,} device(s) judged over {_fmt(rule.window_s)} s)")
        return text + (f": {PREDICTION_DRIFT_HINT}" if rule.metric == "prediction_drift" else "")
    if rule.metric in LABEL_METRICS:
        return (f" over {_fmt(rule.window_s)} s ({sum(r.samples for r in scoped):,} labeled samples in "
                f"{len(scoped):,} captures; {ACCURACY_HINT})")
    if rule.metric in ("error_rate", "requests_per_min"):
        return f" over {_fmt(rule.window_s)} s ({sum(s.requests for s in scoped):,} requests)"
    if rule.metric == "p95_latency_ms":
        reports = sum(1 for s in scoped if s.p95_ms is not None)
        return f" over {_fmt(rule.window_s)} s (worst of {reports:,} reports)"
    return ""  # state metrics are a count at `now`, not over a window


def evaluate(rule: Rule, samples: Sequence[Sample], facts: FleetFacts, now: float) -> Evaluation:
    """Measure the rule and compare with its threshold; the message says what was seen, in one line."""
    compare = OPS.get(rule.op)
    if compare is None:
        raise ValueError(f"unknown alert op {rule.op!r}; expected one of {sorted(OPS)}")
    value, scoped = _measure(rule, samples, facts, now)
    condition = f"{rule.op} {_fmt(rule.threshold)}"
    if value is None:
        window = f" over {_fmt(rule.window_s)} s" if rule.metric in WINDOW_METRICS | DRIFT_METRICS | LABEL_METRICS else ""
        if rule.metric in LABEL_METRICS:
            have = sum(r.samples for r in scoped)
            return Evaluation(None, False, f"{_subject(rule)} has {have:,} labeled samples{window}, fewer than the "
                                           f"{rule.min_samples or DEFAULT_MIN_LABELED:,} it needs (alert when {condition})")
        return Evaluation(None, False, f"{_subject(rule)} has no data{window} (alert when {condition})")
    breached = compare(value, rule.threshold)
    shown = f"{_fmt(value)} {condition}" if breached else f"{_fmt(value)}, not {condition}"
    return Evaluation(value, breached, f"{_subject(rule)} is {shown}{_evidence(rule, scoped)}")


def transition(firing: bool, ev: Evaluation) -> Literal["fire", "resolve", "stay"]:
    """What to do with the rule's alert: open one, close the open one, or leave things as they are."""
    if ev.breached:
        return "stay" if firing else "fire"
    if firing and ev.value is not None:  # missing data is not recovery (see Evaluation.value)
        return "resolve"
    return "stay"


# Every metric is a count, a rate or a latency: none is negative, and an error rate is at most 1.
_UPPER = {"error_rate": 1.0, "accuracy": 1.0}


def validate_rule(rule: Rule) -> str | None:
    """Why the rule makes no sense, or None. The API edge turns a reason into a 422."""
    if rule.metric not in METRICS:
        return f"metric {rule.metric!r} is not one of {', '.join(sorted(METRICS))}"
    if rule.op not in OPS:
        return f"op {rule.op!r} is not one of {', '.join(OPS)}"
    if not math.isfinite(rule.window_s) or rule.window_s <= 0:
        return f"window_s must be a positive number of seconds, not {rule.window_s!r}"
    if not math.isfinite(rule.threshold):
        return f"threshold must be a finite number, not {rule.threshold!r}"
    if rule.threshold < 0:
        return f"{rule.metric} is never negative, so a threshold of {_fmt(rule.threshold)} makes no sense"
    upper = _UPPER.get(rule.metric, math.inf)
    if rule.threshold > upper:
        return f"{rule.metric} is a fraction between 0 and 1; a threshold of {_fmt(rule.threshold)} can never be reached"
    if rule.feature is not None and rule.metric not in DRIFT_METRICS:
        return f"feature names a drift feature; {rule.metric} has none (use input_drift or prediction_drift)"
    if rule.feature is not None and rule.metric == "input_drift" and not rule.feature.startswith("input:"):
        return f"input_drift judges input features (input:...), not {rule.feature!r}; use prediction_drift for outputs"
    if rule.feature is not None and rule.metric == "prediction_drift" and not rule.feature.startswith("output:"):
        return f"prediction_drift judges output features (output:...), not {rule.feature!r}"
    if rule.min_samples is not None and rule.metric not in LABEL_METRICS:
        return f"min_samples counts labeled samples; only accuracy has them, not {rule.metric}"
    if rule.min_samples is not None and rule.min_samples < 1:
        return f"min_samples must be at least 1, not {rule.min_samples}"
    if rule.metric in STATE_METRICS and rule.model is not None:
        # The facts are per fleet, not per model: the model scope would be silently ignored.
        return f"{rule.metric} is counted per fleet and cannot be scoped to a model; drop the model"
    # A rule that can never fire, or fires whenever there is data, is a mistake, not a rule.
    never = (rule.op == ">" and rule.threshold >= upper) or (rule.op == "<" and rule.threshold <= 0)
    if never:
        return f"{rule.metric} {rule.op} {_fmt(rule.threshold)} can never be true"
    always = (rule.op == ">=" and rule.threshold <= 0) or (rule.op == "<=" and rule.threshold >= upper)
    if always:
        return f"{rule.metric} {rule.op} {_fmt(rule.threshold)} is always true"
    return None
