"""The server's one typed config: where its state lives and every limiter, validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str = "sqlite:///edgemill-data/edgemill.db"
    store: str = "file://edgemill-data/store"  # file://DIR or s3://BUCKET/PREFIX
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    trusted_keys: tuple[Path, ...] = ()  # uploads must be signed by one of these
    api_key_file: Path | None = Path("edgemill-data/operator.key")  # created with a fresh key when missing
    # Limiters: every one has a setting.
    max_upload_mb: float = Field(512, gt=0)  # packages; bigger uploads get 413
    max_capture_mb: float = Field(64, gt=0)
    # Database connections per replica = request worker threads. Few: the statements are short, and
    # every extra thread competes for the GIL with the event loop that accepts and answers requests.
    db_pool_size: int = Field(8, ge=1, le=512)
    max_concurrent_downloads: int = Field(32, ge=1)  # per replica; beyond it agents get 429 + Retry-After
    package_cache_mb: float = Field(256, ge=0)  # per replica: packages served from memory (0: off)
    package_cache_item_mb: float = Field(64, ge=0)  # larger packages stream from the store under the limiter
    long_poll_max_s: float = Field(30, ge=0, le=300)
    long_poll_check_s: float = Field(0.5, gt=0, le=30)  # how often a held heartbeat re-reads its desired state
    heartbeat_interval_s: float = Field(30, gt=0)  # told to agents
    offline_after_s: float = Field(90, gt=0)  # a device not seen for this long is offline
    degraded_error_rate: float = Field(0.05, ge=0, le=1)  # over the last heartbeats: marks a device degraded
    tick_s: float = Field(2.0, gt=0)  # how often rollouts, alerts and webhooks advance
    presign_downloads: bool = True  # S3 stores: redirect package downloads to a presigned URL
    presign_expiry_s: int = Field(900, ge=60)
    # Retention: the database and the store stay bounded whatever the fleet's age.
    metrics_retention_s: float = Field(7 * 86400, gt=0)  # raw per-heartbeat samples; older ones are folded
    metrics_rollup_s: float = Field(3600, ge=60, le=86400)  # ...into one row per device, model and this span
    metrics_rollup_retention_s: float = Field(90 * 86400, gt=0)  # rollups older than this are deleted
    captures_retention_s: float | None = Field(30 * 86400, gt=0)  # captures (rows and objects); None: keep all
    # Audit events older than this are folded into per-day counts (audit_retention.py); None: kept for good.
    audit_retention_s: float | None = Field(None, ge=86400)
    retention_every_s: float = Field(60, gt=0)  # how often a replica runs the retention jobs
    webhook_timeout_s: float = Field(5.0, gt=0)
    # Drift (fleet/drift_ingest.py): a device's counts close into a stored bucket once it spans
    # drift_bucket_s and holds drift_min_samples samples; fewer samples say too little about a distribution.
    drift_bucket_s: float = Field(300, gt=0, le=86400)
    drift_min_samples: int = Field(100, ge=1)
    drift_attention_psi: float = Field(0.25, gt=0)  # the overview lists what drifts more than this
    drift_reference_ttl_s: float = Field(10, gt=0)  # how soon a pin made on another replica applies here
