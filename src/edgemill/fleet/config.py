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
    max_concurrent_downloads: int = Field(32, ge=1)  # per replica; beyond it agents get 429 + Retry-After
    long_poll_max_s: float = Field(30, ge=0, le=300)
    long_poll_check_s: float = Field(0.5, gt=0, le=30)  # how often a held heartbeat re-reads its desired state
    heartbeat_interval_s: float = Field(30, gt=0)  # told to agents
    offline_after_s: float = Field(90, gt=0)  # a device not seen for this long is offline
    degraded_error_rate: float = Field(0.05, ge=0, le=1)  # over the last heartbeats: marks a device degraded
    tick_s: float = Field(2.0, gt=0)  # how often rollouts, alerts and webhooks advance
    presign_downloads: bool = True  # S3 stores: redirect package downloads to a presigned URL
    presign_expiry_s: int = Field(900, ge=60)
    metrics_retention_s: float = Field(7 * 86400, gt=0)
    webhook_timeout_s: float = Field(5.0, gt=0)
