"""Alerts on the database: gather samples and facts, evaluate every rule (pure :mod:`alerts`), record
fire/resolve transitions and queue webhook notifications (an outbox delivered with retries)."""

from __future__ import annotations

import logging
import math
import random

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .accuracy import Tally
from .alerts import DRIFT_METRICS, LABEL_METRICS, DriftReading, FleetFacts, LabeledReading, Rule, Sample, evaluate, transition
from .config import ServerConfig
from .db.tables import Alert, AlertRule, Capture, Device, DriftSample, MetricSample, WebhookDelivery
from .views import device_status
from .webhooks import MAX_ATTEMPTS, backoff_s, deliver, payload_for

log = logging.getLogger("edgemill.server")


def rule_of(row: AlertRule) -> Rule:
    return Rule(name=row.name, metric=row.metric, op=row.op, threshold=row.threshold, window_s=row.window_s,
                model=row.model, device=row.device, fleet=row.fleet, feature=row.feature, min_samples=row.min_samples)


def gather(session: Session, now: float, window_s: float, config: ServerConfig,
           drift_window_s: float | None = None, labeled_window_s: float | None = None) -> tuple[list[Sample], FleetFacts]:
    devices = session.scalars(select(Device)).all()
    fleet_of = {d.id: d.fleet.name for d in devices}
    offline: dict[str, int] = {}
    failed: dict[str, int] = {}
    for d in devices:
        if device_status(d, now, config) == "offline":
            offline[d.fleet.name] = offline.get(d.fleet.name, 0) + 1
        if d.agent.get("failures"):
            failed[d.fleet.name] = failed.get(d.fleet.name, 0) + 1
    names = {d.id: d.name for d in devices}
    rows = session.scalars(select(MetricSample).where(MetricSample.t > now - window_s)).all()
    samples = [Sample(t=r.t, device=names.get(r.device_id, "?"), fleet=fleet_of.get(r.device_id, "?"), model=r.model_name,
                      requests=r.requests, errors=r.errors, p95_ms=r.p95_ms) for r in rows]
    drift = _drift_readings(session, now, drift_window_s, names, fleet_of) if drift_window_s else []
    labeled = _labeled_readings(session, now, labeled_window_s, names, fleet_of) if labeled_window_s else []
    facts = FleetFacts(offline_devices=offline, failed_deployments=failed,
                       device_fleet={d.name: d.fleet.name for d in devices}, drift=drift, labeled=labeled)
    return samples, facts


def _drift_readings(session: Session, now: float, window_s: float, names: dict[int, str],
                    fleet_of: dict[int, str]) -> list[DriftReading]:
    """The drift buckets closed in the window: their PSIs and per-feature scores, not their counts."""
    readings = []
    for row in session.execute(select(DriftSample.t, DriftSample.device_id, DriftSample.model_name, DriftSample.samples,
                                      DriftSample.input_psi, DriftSample.prediction_psi, DriftSample.scores)
                               .where(DriftSample.t > now - window_s)):
        readings.append(DriftReading(t=row[0], device=names.get(row[1], "?"), fleet=fleet_of.get(row[1], "?"),
                                     model=row[2], samples=int(row[3]), input_psi=row[4], prediction_psi=row[5],
                                     scores=row[6]))
    return readings


def _labeled_readings(session: Session, now: float, window_s: float, names: dict[int, str],
                      fleet_of: dict[int, str]) -> list[LabeledReading]:
    """The labeled classifier captures whose predictions fall in the window: how many samples each holds
    and how many the model got right."""
    readings = []
    for t, device_id, model, prediction, label in session.execute(
            select(Capture.created_unix, Capture.device_id, Capture.model_name, Capture.prediction, Capture.label)
            .where(Capture.created_unix > now - window_s, Capture.label.is_not(None),
                   Capture.task == "classification")):
        tally = Tally()  # what counts as right is the accuracy API's rule
        tally.add("classification", prediction or [], label or [])
        readings.append(LabeledReading(t=float(t), device=names.get(device_id, "?"), fleet=fleet_of.get(device_id, "?"),
                                       model=model, samples=tally.samples, correct=tally.correct))
    return readings


def _queue_webhook(session: Session, rule: AlertRule, alert: Alert, now: float) -> None:
    if not rule.webhook_url:
        return
    body = payload_for({"id": alert.id, "rule": rule.name, "state": alert.state, "value": alert.value,
                        "threshold": rule.threshold, "metric": rule.metric, "message": alert.message,
                        "started_at": alert.started_at, "resolved_at": alert.resolved_at})
    session.add(WebhookDelivery(alert_id=alert.id, url=rule.webhook_url, body=body.decode(), attempts=0,
                                next_attempt_at=now, claimed_until=0.0))


def evaluate_all(db, now: float, config: ServerConfig) -> int:  # type: ignore[no-untyped-def]
    """One pass over every rule; returns the number of transitions."""
    with db.session() as session:
        rules = session.scalars(select(AlertRule)).all()
        if not rules:
            return 0
        drift_rules = [r for r in rules if r.metric in DRIFT_METRICS]
        accuracy_rules = [r for r in rules if r.metric in LABEL_METRICS]
        samples, facts = gather(session, now, max(r.window_s for r in rules), config,
                                drift_window_s=max((r.window_s for r in drift_rules), default=None),
                                labeled_window_s=max((r.window_s for r in accuracy_rules), default=None))
    changed = 0
    for rule_row in rules:
        ev = evaluate(rule_of(rule_row), samples, facts, now)
        with db.session() as session:
            firing = session.scalar(select(Alert).where(Alert.rule_id == rule_row.id, Alert.state == "firing"))
            move = transition(firing is not None, ev)
            if move == "stay":
                if firing is not None and ev.value is not None and math.isfinite(ev.value):
                    firing.value, firing.message = ev.value, ev.message
                continue
            # Claim the transition: only one replica wins a given rule revision.
            won = session.execute(update(AlertRule).where(AlertRule.id == rule_row.id, AlertRule.rev == rule_row.rev)
                                  .values(rev=rule_row.rev + 1)).rowcount
            if not won:
                continue
            if move == "fire":
                alert = Alert(rule_id=rule_row.id, state="firing", value=float(ev.value or 0.0), message=ev.message,
                              started_at=now)
                session.add(alert)
                session.flush()
                log.warning("alert %s firing: %s", rule_row.name, ev.message)
            else:
                assert firing is not None
                alert = firing
                alert.state, alert.resolved_at = "resolved", now
                if ev.value is not None:
                    alert.value = float(ev.value)
                alert.message = ev.message
                log.info("alert %s resolved: %s", rule_row.name, ev.message)
            session.flush()
            _queue_webhook(session, rule_row, alert, now)
            changed += 1
    return changed


def deliver_due(db, now: float, config: ServerConfig, rand=random.random) -> int:  # type: ignore[no-untyped-def]
    """Send every webhook notification that is due; each is claimed first so replicas share the work."""
    with db.session() as session:
        due = session.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.delivered_at.is_(None), WebhookDelivery.gave_up.is_(False),
            WebhookDelivery.next_attempt_at <= now, WebhookDelivery.claimed_until < now).limit(50)).all()
    sent = 0
    for delivery_id in due:
        with db.session() as session:
            claimed = session.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_until < now, WebhookDelivery.delivered_at.is_(None))
                .values(claimed_until=now + config.webhook_timeout_s * 3)).rowcount
            if not claimed:
                continue
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            url, body, attempts = row.url, row.body.encode(), row.attempts + 1
        result = deliver(url, body, timeout_s=config.webhook_timeout_s)
        with db.session() as session:
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            row.attempts, row.claimed_until = attempts, 0.0
            if result.ok:
                row.delivered_at, row.last_error = now, None
                sent += 1
            else:
                row.last_error = result.error or f"HTTP {result.status}"
                if not result.retry or attempts >= MAX_ATTEMPTS:
                    row.gave_up = True
                    log.error("webhook to %s given up after %d attempt(s): %s", url, attempts, row.last_error)
                else:
                    row.next_attempt_at = now + backoff_s(attempts, rand=rand)
    return sent

