"""The control plane's tables (SQLAlchemy 2). Times are unix seconds (float) so that SQLite and
PostgreSQL store and compare them the same way; the API turns them into ISO datetimes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    """An operator key: its name, role (auth.ROLES) and the sha256 of its secret, never the secret."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    role: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the key that created it
    # The fleets (by name) the key may see and change; None: every fleet (fleet/scope.py).
    fleets: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class AuditEvent(Base):
    """One state-changing request to the operator API, appended once it was answered; never updated."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    key_name: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # None: not authenticated
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    remote: Mapped[str] = mapped_column(String(64), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)  # as requested, e.g. /api/v1/deployments/7/rollback
    operation: Mapped[str] = mapped_column(String(256), index=True)  # the route: POST /api/v1/deployments/{deployment_id}/rollback
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # ok, refused (401/403), rejected (other 4xx), failed (5xx)
    fleet: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # the fleet it touched, if one


class AuditFold(Base):
    """Audit events past the retention period, counted per UTC day, key ("" for none), operation and
    outcome before they were deleted (fleet/audit_retention.py): the trail shrinks, the count stays."""

    __tablename__ = "audit_folds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[float] = mapped_column(Float, index=True)
    key_name: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))
    events: Mapped[int] = mapped_column(Integer)


class Fleet(Base):
    __tablename__ = "fleets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


class RegistrationToken(Base):
    __tablename__ = "registration_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[float] = mapped_column(Float)
    uses_left: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    fleet: Mapped[Fleet] = relationship(lazy="joined")


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"), index=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=-1)
    # The last heartbeat's summary: memory, capture queue, agent version, failures (what it reported).
    agent: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Stamped (server clock) whenever what this device should run may have changed: held heartbeats
    # are woken by one query per replica over this column, not one query each.
    desired_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # model name → [requests, errors]: the agent's cumulative counters at the last heartbeat, so the
    # next heartbeat's deltas need no read of the samples table.
    metric_totals: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A digest of the models (name, version, package) the last heartbeat reported: while it holds, the
    # heartbeat leaves the device's model rows alone (no read of them either).
    models_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # model name → its drift counters as last reported and the counts of the bucket not yet closed
    # (fleet/drift_ingest.py): read and written with the heartbeat's own row update, no extra statement.
    drift_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fleet: Mapped[Fleet] = relationship(lazy="joined")


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[str] = mapped_column(String(128))
    package_id: Mapped[str] = mapped_column(String(64), index=True)
    stage: Mapped[str] = mapped_column(String(16), default="none")
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # compile report summary
    signer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the .emp file as stored
    store_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[float] = mapped_column(Float)
    uploaded_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The package's monitoring/baseline.json (features, bins, baseline counts); None: it carries none.
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    model: Mapped[Model] = relationship(lazy="joined")


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"))
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # True when the operator named the devices: a device that joins the fleet later is not added to it.
    named_devices: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    wave: Mapped[int] = mapped_column(Integer, default=-1)
    waves: Mapped[int] = mapped_column(Integer)
    wave_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # Optimistic concurrency: every change bumps rev with "WHERE rev = old", so two replicas deciding
    # the same step at once cannot both apply it.
    rev: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[ModelVersion] = relationship(lazy="joined")
    fleet: Mapped[Fleet] = relationship(lazy="joined")


class DeploymentDevice(Base):
    __tablename__ = "deployment_devices"
    __table_args__ = (UniqueConstraint("deployment_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order in which devices are taken into waves
    wave: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    assigned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    device: Mapped[Device] = relationship(lazy="joined")


class DeploymentEvent(Base):
    __tablename__ = "deployment_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class DeviceModel(Base):
    """What a device reports running now (one row per device and model name)."""

    __tablename__ = "device_models"
    __table_args__ = (UniqueConstraint("device_id", "model_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    package_id: Mapped[str] = mapped_column(String(128), index=True)
    since: Mapped[float] = mapped_column(Float)


class MetricSample(Base):
    """One heartbeat's numbers for one model on one device: deltas since the previous heartbeat."""

    __tablename__ = "metric_samples"
    __table_args__ = (Index("ix_metric_samples_t", "t"), Index("ix_metric_samples_device_t", "device_id", "t"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(128))
    package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    t: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    total_requests: Mapped[int] = mapped_column(BigInteger)  # the agent's counters, to compute the next delta
    total_errors: Mapped[int] = mapped_column(BigInteger)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class MetricRollup(Base):
    """Samples older than the raw retention, folded into one row per device, model and hour (by default):
    sums of requests and errors, request-weighted p50, worst p95/p99."""

    __tablename__ = "metric_rollups"
    __table_args__ = (Index("ix_metric_rollups_t", "t"), Index("ix_metric_rollups_device_t", "device_id", "t"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(128))
    package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    t: Mapped[float] = mapped_column(Float)  # start of the bucket
    span_s: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class DriftSample(Base):
    """One closed bucket of a device's drift counts for one model package: counts per bin of each baseline
    feature (in the baseline's order) over ``span_s`` seconds ending at ``t``, and the PSI of the bucket
    against the reference at closing time (so charts and alerts need not re-read the counts)."""

    __tablename__ = "drift_samples"
    __table_args__ = (Index("ix_drift_samples_t", "t"), Index("ix_drift_samples_model_t", "model_name", "t"),
                      Index("ix_drift_samples_device_t", "device_id", "t"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(128))
    package_id: Mapped[str] = mapped_column(String(128))
    t: Mapped[float] = mapped_column(Float)
    span_s: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(BigInteger)
    counts: Mapped[list[Any]] = mapped_column(JSON)
    input_psi: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: no reference (or no input feature)
    prediction_psi: Mapped[float | None] = mapped_column(Float, nullable=True)
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # feature key → PSI


class DriftReference(Base):
    """A window of a package's counts (merged over every device) that an operator pinned as the reference
    drift is measured against instead of the package baseline."""

    __tablename__ = "drift_references"
    package_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(BigInteger)
    counts: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class RetentionMark(Base):
    """How far a retention job has got (``metric_rollups``: samples before ``watermark`` are folded).
    Moving the mark is a conditional UPDATE in the job's own transaction, so of two replicas running
    the job at once exactly one folds each span."""

    __tablename__ = "retention_marks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[float] = mapped_column(Float)


class Capture(Base):
    __tablename__ = "captures"
    __table_args__ = (UniqueConstraint("device_id", "capture_id"), Index("ix_captures_model_created", "model_name", "created_unix"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    capture_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    store_key: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[float] = mapped_column(Float, index=True)
    # Read from the record when it arrives (None for captures stored before labels existed):
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_unix: Mapped[float | None] = mapped_column(Float, nullable=True)  # when the device made the prediction
    task: Mapped[str | None] = mapped_column(String(16), nullable=True)  # captures.answers: classification | regression
    classes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prediction: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # type: ignore[type-arg]  # one per sample
    # The operator's label: one right answer per sample, who set it and when, and the value it replaced.
    label: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # type: ignore[type-arg]
    labeled_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    labeled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    previous_label: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # type: ignore[type-arg]
    device: Mapped[Device] = relationship(lazy="joined")


class AlertRule(Base):
    __tablename__ = "alert_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    metric: Mapped[str] = mapped_column(String(32))
    op: Mapped[str] = mapped_column(String(2))
    threshold: Mapped[float] = mapped_column(Float)
    window_s: Mapped[float] = mapped_column(Float)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device: Mapped[str | None] = mapped_column(String(128), nullable=True)
    fleet: Mapped[str | None] = mapped_column(String(128), nullable=True)
    feature: Mapped[str | None] = mapped_column(String(256), nullable=True)  # drift metrics: one feature's PSI
    min_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)  # accuracy: labeled samples needed to judge
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    rev: Mapped[int] = mapped_column(Integer, default=0)  # bumped with each fire/resolve (optimistic concurrency)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    value: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    started_at: Mapped[float] = mapped_column(Float)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rule: Mapped[AlertRule] = relationship(lazy="joined")


class WebhookDelivery(Base):
    """An outbox row: one notification to one URL, retried until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    claimed_until: Mapped[float] = mapped_column(Float, default=0.0)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    gave_up: Mapped[bool] = mapped_column(default=False)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
