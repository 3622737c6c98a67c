"""The REST contract of the control plane (`/api/v1`): request and response bodies.

These pydantic models are what the committed OpenAPI document is generated from; a change here is a
change to the contract (tests/golden/openapi.json shows it in review).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Field(pattern=NAME_PATTERN, min_length=1, max_length=128)

Stage = Literal["none", "staging", "production", "archived"]
DeviceStatus = Literal["online", "offline", "degraded", "never_seen"]
DeploymentState = Literal["rolling", "paused", "succeeded", "rolled_back", "superseded"]
DeviceRolloutState = Literal["pending", "assigned", "updated", "failed", "rolled_back"]
AlertMetric = Literal["error_rate", "p95_latency_ms", "offline_devices", "failed_deployments", "requests_per_min",
                      "input_drift", "prediction_drift", "accuracy"]


INT64_MAX = 2**63 - 1  # the database's BIGINT: counters and sequence numbers
INT32_MAX = 2**31 - 1  # the database's INTEGER: record ids


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorOut(BaseModel):
    """Every 4xx answer: what was wrong, the offending field and value, and the fix."""

    error: str
    message: str
    field: str | None = None
    value: str | None = None
    fix: str | None = None
    reason: str | None = None  # a package refusal's named reason (file_modified, not_signed, ...)
    last_seq: int | None = None  # a refused stale heartbeat: the last sequence number accepted


# --- registry -------------------------------------------------------------------------------


class TensorOut(BaseModel):
    name: str
    dtype: str
    shape: list[int | str]


class VersionOut(BaseModel):
    model: str
    version: str
    package_id: str
    stage: Stage
    target: str
    backend: str
    precision: str
    size_bytes: int
    signer: str | None  # short id of the key that signed it
    source: dict[str, Any]  # framework, file name, sha256 (from the manifest)
    inputs: list[TensorOut]
    outputs: list[TensorOut]
    created_at: datetime
    uploaded_by: str | None = None


class ModelOut(BaseModel):
    name: str
    versions: int
    latest_version: str | None
    production_version: str | None
    created_at: datetime


class ModelDetailOut(ModelOut):
    version_list: list[VersionOut]


class StageIn(_Body):
    stage: Stage


class LineageDeployment(BaseModel):
    id: int
    state: DeploymentState
    fleet: str
    created_at: datetime
    devices_updated: int
    devices_targeted: int


class LineageOut(BaseModel):
    """source file hash -> compile report -> package -> deployments -> devices."""

    model: str
    version: str
    source: dict[str, Any]
    compile: dict[str, Any]  # report.json summary: passes, accuracy check, precision, backend, target
    package: dict[str, Any]  # id, size, signer, files
    deployments: list[LineageDeployment]
    devices: list[str]  # devices that report running this package now


# --- fleets and devices ----------------------------------------------------------------------


class FleetIn(_Body):
    name: str = Name
    description: str = Field("", max_length=1000)


class FleetOut(BaseModel):
    name: str
    description: str
    created_at: datetime
    devices: int
    online: int
    offline: int
    degraded: int


class TokenIn(_Body):
    expires_in_s: int = Field(86400, ge=60, le=30 * 86400)
    uses: int = Field(1, ge=1, le=100_000)  # one-time by default; a batch of devices may share one


class TokenOut(BaseModel):
    token: str  # shown once; the server keeps only its hash
    fleet: str
    expires_at: datetime
    uses: int


class DeviceModelOut(BaseModel):
    name: str
    version: str
    package_id: str


class DeviceOut(BaseModel):
    name: str
    fleet: str
    tags: dict[str, str]
    status: DeviceStatus
    registered_at: datetime
    last_seen_at: datetime | None
    models: list[DeviceModelOut]
    problems: list[str]  # why it is degraded: failed deployments, verification refusals, error rates
    agent: dict[str, Any]  # memory, capture queue, agent version from the last heartbeat


class DevicePatch(_Body):
    tags: dict[str, str] | None = None


# --- deployments -----------------------------------------------------------------------------


class Gates(_Body):
    max_error_rate: float = Field(0.05, ge=0, le=1)  # errors / requests on updated devices
    max_p95_ms: float | None = Field(None, gt=0)  # p95 latency on any updated device
    max_failed_devices: int = Field(0, ge=0)  # devices that refused or could not load the version
    min_requests: int = Field(20, ge=0)  # requests needed before the error rate is judged


class Strategy(_Body):
    canary_percent: float = Field(10, gt=0, le=100)  # share of target devices in the first wave (at least one)
    batch_size: int = Field(0, ge=0)  # devices per later wave; 0: all the rest at once
    bake_time_s: float = Field(300, ge=0, le=7 * 86400)  # healthy time after a wave before the next
    gates: Gates = Gates()


class DeploymentIn(_Body):
    model: str = Name
    version: str = Field(min_length=1, max_length=128)
    fleet: str = Name
    tags: dict[str, str] = Field({}, max_length=64)  # only devices of the fleet with all these tags
    devices: list[str] = Field([], max_length=100_000)  # only these devices (names) of the fleet
    strategy: Strategy = Strategy()


class DeploymentDeviceOut(BaseModel):
    device: str
    wave: int | None
    state: DeviceRolloutState
    previous_version: str | None
    updated_at: datetime | None
    reason: str | None


class DeploymentEventOut(BaseModel):
    at: datetime
    kind: str
    message: str


class DeploymentOut(BaseModel):
    id: int
    model: str
    version: str
    fleet: str
    tags: dict[str, str]
    strategy: Strategy
    state: DeploymentState
    wave: int
    waves: int
    reason: str | None
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]  # per device state
    devices: list[DeploymentDeviceOut]
    events: list[DeploymentEventOut]


# --- agent endpoints -------------------------------------------------------------------------


class RegisterIn(_Body):
    token: str = Field(min_length=8, max_length=256)
    device: str = Name
    tags: dict[str, str] = {}
    # The credential the device chose and stored before asking (at least 32 random bytes, URL-safe).
    # It makes registration safe to retry: a device that lost the answer (killed, cut off) sends the
    # same request again and is told it is registered. Without it the server picks one.
    credential: str | None = Field(None, min_length=47, max_length=256, pattern=r"^emd_[A-Za-z0-9_-]{43,}$")


class RegisterOut(BaseModel):
    device: str
    fleet: str
    credential: str  # the device's bearer credential; shown once, stored hashed


class LatencyIn(_Body):
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


class ModelMetricsIn(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # agents may send more (input statistics)
    requests: int = Field(0, ge=0, le=INT64_MAX)  # every call, failed ones included; cumulative since the agent started
    errors: int = Field(0, ge=0, le=INT64_MAX)
    latency_ms: LatencyIn = LatencyIn()


class LoadedModelIn(_Body):
    name: str = Name
    version: str = Field(max_length=128)
    package_id: str = Field(max_length=128)


class ApplyFailureIn(_Body):
    model: str = Name
    package_id: str = Field(max_length=128)
    reason: str = Field(max_length=2000)
    refusal: str | None = Field(None, max_length=64)  # verification refusal reason, when it was one


# A heartbeat's drift counts are bounded so one device cannot make the server parse or store megabytes:
# a baseline has at most a few hundred features (32 per tabular input) and a classifier's predicted-class
# feature at most 1,001 bins (MAX_CLASSES + "other").
MAX_DRIFT_FEATURES = 512
MAX_DRIFT_BINS = 1025
BinCounts = Annotated[list[Annotated[int, Field(ge=0, le=INT64_MAX)]], Field(min_length=1, max_length=MAX_DRIFT_BINS)]


class DriftCountsIn(_Body):
    """One loaded model's drift histograms: counts per bin of each baseline feature, in the baseline's
    order, cumulative since ``epoch`` began (the agent starts a new epoch when it loads the model)."""

    model: str = Name
    package_id: str = Field(max_length=128)
    epoch: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    bins: str = Field(pattern=r"^[0-9a-f]{8,64}$")  # digest of the features' keys and bin edges
    counts: list[BinCounts] = Field(min_length=1, max_length=MAX_DRIFT_FEATURES)


class HeartbeatIn(_Body):
    device: str = Name  # must be the credential's own device
    seq: int = Field(ge=0, le=INT64_MAX)  # strictly increasing per device: a stale or replayed heartbeat is refused
    agent_started_at: float | None = None
    models: list[LoadedModelIn] = Field([], max_length=256)
    metrics: dict[str, ModelMetricsIn] = Field({}, max_length=256)
    failures: list[ApplyFailureIn] = Field([], max_length=256)
    memory: dict[str, float] = Field({}, max_length=64)
    capture: dict[str, float] = Field({}, max_length=64)
    agent_version: str | None = Field(None, max_length=64)
    drift: list[DriftCountsIn] = Field([], max_length=256)


class DesiredModelOut(BaseModel):
    name: str
    version: str
    package_id: str
    size_bytes: int
    download_path: str  # relative to the server URL; may redirect to the object store
    allow_rollback: bool  # the control plane ordered this older version (a rollback)
    deployment_id: int | None


class DesiredStateOut(BaseModel):
    device: str
    seq: int  # the heartbeat this answers
    models: list[DesiredModelOut]
    heartbeat_interval_s: float
    generation: str  # a digest of the desired state: unchanged digest, nothing to do


# --- captures --------------------------------------------------------------------------------


LabelValue = int | float | list[int | float]


class CaptureOut(BaseModel):
    capture_id: str
    device: str
    model: str
    size_bytes: int
    key: str  # where it lies in the object store
    received_at: datetime
    version: str | None = None  # the model version that answered (None: stored before versions were read)
    created_at: datetime | None = None  # when the device made the prediction
    task: Literal["classification", "regression"] | None = None  # None: no answer a label can judge
    prediction: list[int | float] | None = None  # one per sample: class index or value
    label: list[int | float] | None = None
    labeled_by: str | None = None  # the operator key's name
    labeled_at: datetime | None = None
    previous_label: list[int | float] | None = None  # what the last change replaced


class CaptureViewOut(BaseModel):
    """A capture for people (``fleet.capture_view``): tensors as images, tables or waveforms where their
    form allows, else shape, dtype and statistics; the model's answer; short auxiliary text."""

    capture: CaptureOut
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    auxiliary: list[dict[str, Any]]
    answer: dict[str, Any] | None
    sampled: bool


class LabelIn(_Body):
    # The right answer: a class index for a classifier, a number for a regressor; a list with one per
    # sample when the capture holds several.
    label: LabelValue


class LabelRowResult(BaseModel):
    row: int  # 1-based line of the bulk file
    device: str | None
    capture_id: str | None
    status: Literal["labeled", "unchanged", "error"]
    error: str | None = None


class LabelImportOut(BaseModel):
    applied: bool  # False: nothing was applied, because some row is in error
    labeled: int
    unchanged: int
    errors: int
    rows: list[LabelRowResult]
    fleets: list[str] = []  # the fleets of the captures labeled (applied imports)


class AccuracyPoint(BaseModel):
    t: datetime  # the bucket's start (by prediction time)
    samples: int
    value: float  # top-1 accuracy, or MAE for a regressor


class AccuracyGroup(BaseModel):
    name: str  # a device, fleet or version
    samples: int
    value: float


class AccuracyOut(BaseModel):
    model: str
    version: str | None
    scope: dict[str, str | None]  # fleet, device
    task: Literal["classification", "regression"] | None  # None: no labeled captures in scope
    samples: int  # labeled samples the figures rest on
    captures: int
    top1: float | None = None  # classification
    mae: float | None = None  # regression
    rmse: float | None = None
    bucket_s: int
    series: list[AccuracyPoint]
    by_version: list[AccuracyGroup]
    by_device: list[AccuracyGroup]
    by_fleet: list[AccuracyGroup]


# --- alerts ----------------------------------------------------------------------------------


class AlertRuleIn(_Body):
    name: str = Name
    metric: AlertMetric
    threshold: float
    op: Literal[">", ">=", "<", "<="] = ">"
    window_s: float = Field(300, ge=10, le=7 * 86400)
    model: str | None = Field(None, pattern=NAME_PATTERN)
    device: str | None = Field(None, pattern=NAME_PATTERN)
    fleet: str | None = Field(None, pattern=NAME_PATTERN)
    # input_drift / prediction_drift only: judge this one feature (its key, e.g. "input:image:channel_mean:0")
    # instead of the largest PSI over the model's input (or output) features.
    feature: str | None = Field(None, min_length=1, max_length=256)
    # accuracy only: the labeled samples in the window the rule needs before it judges (fewer: no data).
    min_samples: int | None = Field(None, ge=1, le=1_000_000)
    webhook_url: str | None = Field(None, pattern=r"^https?://", max_length=2000)


class AlertRuleOut(AlertRuleIn):
    created_at: datetime


class AlertOut(BaseModel):
    id: int
    rule: str
    metric: AlertMetric
    state: Literal["firing", "resolved"]
    value: float
    threshold: float
    started_at: datetime
    resolved_at: datetime | None
    message: str
    webhook: dict[str, Any]  # delivery state: attempts, delivered, last error


# --- dashboard data --------------------------------------------------------------------------


class SeriesPoint(BaseModel):
    t: float  # unix seconds
    requests: int  # in the interval ending at t
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class SeriesOut(BaseModel):
    key: str  # "model/<name>" or "device/<name>" or "device/<name>/model/<name>"
    points: list[SeriesPoint]


class DriftFeatureOut(BaseModel):
    key: str  # e.g. "input:image:channel_mean:0", "output:probs:predicted_class"
    side: Literal["input", "output"]
    tensor: str
    statistic: str  # channel_mean | channel_std | column | sample_mean | sample_std | predicted_class | top_score | category
    index: int | None  # channel or column
    labels: list[str]  # one per bin
    edges: list[float] = []  # continuous features: the inner bin edges (bins = len + 1)
    categories: list[int] = []  # categorical features: the values with a bin of their own (+1 "other")
    reference: list[int]  # counts per bin: the package baseline, or the pinned window
    window: list[int]  # counts per bin over the window, merged over the devices in scope
    psi: float | None  # None: no data in the window (or no reference)
    js: float | None


class DriftPointOut(BaseModel):
    t: float  # unix seconds: the end of the buckets summarised
    samples: int
    input_psi: float | None  # worst device's largest input-feature PSI in the buckets ending here
    prediction_psi: float | None
    median_input_psi: float | None  # the median device's (the population's typical drift)
    median_prediction_psi: float | None


class DriftDeviceOut(BaseModel):
    device: str
    fleet: str
    samples: int
    input_psi: float | None
    prediction_psi: float | None
    input_feature: str | None  # the input feature with the largest PSI
    prediction_feature: str | None


class DriftReferenceOut(BaseModel):
    kind: Literal["baseline", "pinned"]
    data: str  # what the baseline was counted from, or "pinned window"
    synthetic: bool  # a baseline from generated inputs: weak evidence of real data
    samples: int
    start: datetime | None = None  # a pinned window's bounds
    end: datetime | None = None


class DriftOut(BaseModel):
    model: str
    version: str | None
    package_id: str | None
    device: str | None
    fleet: str | None
    window_s: float
    bucket_s: float  # a device's counts close into a stored bucket after this long (one point of the series)
    # ok | no_baseline (the package carries none: drift is unknown, never zero) | no_data | few_samples
    status: Literal["ok", "no_baseline", "no_data", "few_samples"]
    message: str  # one line for humans about the status
    reference: DriftReferenceOut | None
    samples: int  # counted in the window over the scope
    input_psi: float | None  # the largest over input features (merged scope)
    prediction_psi: float | None
    input_feature: str | None
    prediction_feature: str | None
    features: list[DriftFeatureOut]
    series: list[DriftPointOut]
    devices: list[DriftDeviceOut]  # per device in scope, worst first
    refused: int  # histograms refused in scope because their bins did not match the package's


class DriftPinIn(_Body):
    """The window whose counts become the reference: ``last_s`` seconds up to now (server time, open
    buckets included), or ``start`` and ``end`` in unix seconds (stored buckets only)."""

    last_s: float | None = Field(None, gt=0, le=90 * 86400)
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, gt=0)


class DriftingOut(BaseModel):
    """A model version, or one device running it, whose latest drift bucket is past drift_attention_psi."""

    model: str
    version: str | None
    device: str | None  # None: the model's summary over its drifting devices
    devices: int  # drifting devices (1 for a device entry)
    input_psi: float | None  # None: no input feature scored (never shown as 0)
    prediction_psi: float | None
    feature: str | None  # the feature with the largest PSI
    samples: int  # behind the device's latest bucket (summed over devices for a model)
    reason: str


class OverviewOut(BaseModel):
    devices: dict[str, int]  # total, online, offline, degraded, never_seen
    fleets: int
    models: int
    versions: int
    problem_devices: list[DeviceOut]
    problem_models: list[dict[str, Any]]  # name, error_rate, p95_ms, reason
    active_deployments: list[DeploymentOut]
    firing_alerts: list[AlertOut]
    captures: int
    drifting: list[DriftingOut] = []  # drifting models first, then devices, worst first


Role = Literal["viewer", "deployer", "admin"]
Outcome = Literal["ok", "refused", "rejected", "failed"]


class WhoAmIOut(BaseModel):
    name: str
    role: Role
    expires_at: datetime | None
    fleets: list[str] | None = None  # the fleets the key is limited to; None: every fleet


class OperatorKeyIn(_Body):
    name: str = Name
    role: Role
    expires_in_s: int | None = Field(None, ge=60, le=10 * 365 * 86400,
                                     description="seconds until the key stops working; none: it does not expire")
    fleets: list[Annotated[str, Name]] | None = Field(
        None, min_length=1, max_length=100,
        description="limit the key to these fleets (it sees and changes only what belongs to them); none: every fleet")


class OperatorKeyOut(BaseModel):
    name: str
    role: Role
    fleets: list[str] | None = None  # None: every fleet
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    active: bool


class OperatorKeyCreated(OperatorKeyOut):
    key: str  # shown once; the server keeps only its hash


class AuditFoldOut(BaseModel):
    day: datetime  # the UTC day the events were made on
    key: str | None
    operation: str
    outcome: Outcome
    events: int


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    key: str | None  # the key's name (None: the request carried no valid key)
    role: Role | None
    remote: str
    method: str
    path: str
    operation: str
    status: int
    outcome: Outcome
    fleet: str | None = None  # the fleet the request touched, when it touched one
