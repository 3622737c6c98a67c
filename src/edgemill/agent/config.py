"""The agent's one configuration file (TOML), validated at start with errors that name key and line.

Every value has a default that works on a laptop; relative paths are relative to the config file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    name: str = "edge-device"
    fleet: str = "default"

    @field_validator("name", "fleet")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
            raise ValueError("use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value


class TlsConfig(_Section):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients must present a certificate signed by it (mTLS)


class ListenConfig(_Section):
    address: str = "127.0.0.1:8601"  # host:port for gRPC over TCP; "" disables TCP
    unix_socket: Path | None = None  # also serve on this Unix socket (Edge Manager applications use one)
    # The local fast path (docs/fastpath.md): Predict in plain frames over its own Unix socket, by default
    # the gRPC socket's path + ".fast" (edgemill.client finds it there); fast_path = false turns it off.
    fast_path: bool = True
    fast_socket: Path | None = None
    metrics_address: str = "127.0.0.1:9601"  # Prometheus text at /metrics; "" disables
    max_workers: int = Field(16, ge=1, le=1024)  # concurrent requests in flight
    max_message_mb: int = Field(64, ge=1, le=2047)
    # grpcio's I/O core for the gRPC server (agent/grpc_io.py): "iomgr" spends less CPU per call than
    # grpcio's EventEngine default (bench/agent.py); "event-engine" keeps grpcio's default.
    grpc_io: Literal["iomgr", "event-engine"] = "iomgr"
    tls: TlsConfig | None = None

    @field_validator("address", "metrics_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}", value):
            raise ValueError("write host:port, e.g. '127.0.0.1:8601', or '' to disable")
        return value

    @field_validator("unix_socket", mode="before")
    @classmethod
    def _no_socket(cls, value: Any) -> Any:
        return None if value == "" else value  # "" disables, as for the addresses (not the config's folder)

    def fast_socket_path(self) -> Path | None:
        """Where the fast path listens: fast_socket, else beside unix_socket; None when it is off."""
        if not self.fast_path:
            return None
        if self.fast_socket is not None:
            return self.fast_socket
        return None if self.unix_socket is None else self.unix_socket.with_name(self.unix_socket.name + ".fast")

    @model_validator(mode="after")
    def _somewhere(self) -> ListenConfig:
        if not self.address and self.unix_socket is None:
            raise ValueError("the agent listens nowhere: set address = 'host:port' or unix_socket = 'path'")
        return self


class BatchingPolicy(_Section):
    """Dynamic batching of one model (``[models.batching.NAME]``): concurrent requests are stacked along
    the batch dimension, run once and split. Only for models whose every input and output has a
    dynamic first dimension (checked at load)."""

    max_batch_size: int = Field(8, ge=2, le=4096)  # rows per backend call
    max_queue_delay_us: int = Field(1000, ge=0, le=1_000_000)  # the longest a request waits for others
    preferred_batch_sizes: list[int] = []  # sent at once when the queued rows reach one of these

    @model_validator(mode="after")
    def _sizes(self) -> BatchingPolicy:
        wrong = [n for n in self.preferred_batch_sizes if not 1 <= n <= self.max_batch_size]
        if wrong:
            raise ValueError(f"preferred_batch_sizes {wrong} must be between 1 and max_batch_size "
                             f"({self.max_batch_size})")
        return self


class ModelsConfig(_Section):
    directory: Path = Path("models")  # installed packages; standalone mode loads what it finds here
    standalone: bool = True
    trusted_keys: list[Path] = []
    allow_unsigned: bool = False  # only integrity is checked; for a laptop, never for a fleet
    memory_budget_mb: float = Field(1024, gt=0)
    when_over_budget: Literal["refuse", "evict-lru"] = "refuse"
    threads: int = Field(0, ge=0, le=256)  # intra-op threads per model; 0 lets the package/backend choose
    max_concurrency: int = Field(4, ge=1, le=256)  # requests computing at once per model; the rest queue
    batching: dict[str, BatchingPolicy] = {}  # by model name: dynamic batching (off for the others)

    @model_validator(mode="after")
    def _trust(self) -> ModelsConfig:
        if not self.trusted_keys and not self.allow_unsigned:
            raise ValueError("no trusted_keys: list the public keys packages must be signed with "
                             "(edgemill keys generate DIR), or set allow_unsigned = true on a test machine")
        return self


class CaptureConfig(_Section):
    directory: Path = Path("captures")  # the on-disk queue
    max_queue_mb: float = Field(256, gt=0)
    max_queue_records: int = Field(100_000, ge=1)
    sample_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of Predict calls captured automatically
    sample_rates: dict[str, float] = {}  # per model, overrides sample_rate
    store: str = "file://capture-store"  # file://DIR, s3://bucket/prefix, or "server" (the control plane)
    s3_endpoint_url: str | None = None  # any S3-compatible store (SeaweedFS, MinIO, Ceph...)
    s3_region: str | None = None
    upload_batch_size: int = Field(32, ge=1, le=10_000)
    upload_interval_s: float = Field(5.0, gt=0)
    retry_backoff_max_s: float = Field(300.0, gt=0)
    embed_limit_bytes: int = Field(0, ge=0)  # tensors up to this size also go inline (base64) in the JSON

    @field_validator("sample_rates")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        for model, rate in value.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate for model {model!r} is {rate}; use a share between 0 and 1")
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "server" and not re.match(r"(file|s3)://.+", value):
            raise ValueError("use file://DIRECTORY, s3://BUCKET/PREFIX, or 'server' (upload through the control plane)")
        return value


class MetricsConfig(_Section):
    input_stats_window: int = Field(1000, ge=1)  # requests per model kept for input statistics
    max_features: int = Field(64, ge=1)  # per input, the first N features get statistics
    drift_window_s: float = Field(600.0, gt=0)  # the sliding window the device's own drift scores cover
    drift: bool = True  # count the package baseline's features on every Predict (off: no drift from here)


class ServerConfig(_Section):
    """The control plane the sync component talks to; an empty url: the agent runs on its own."""

    url: str = ""  # http(s)://HOST[:PORT][/PREFIX]; the REST API lives under {url}/api/v1
    token_file: Path | None = None  # the operator's one-time registration token, read at the first start
    credential_file: Path = Path("state/credential")  # written (0600) once registered
    state_file: Path = Path("state/sync.json")  # heartbeat sequence, applied packages, apply failures
    tags: dict[str, str] = {}  # sent at registration; deployments can target devices by tag
    heartbeat_interval_s: float = Field(30.0, gt=0, le=86400)  # until the server says otherwise
    request_timeout_s: float = Field(40.0, gt=0, le=3600)  # one request, a long-polled heartbeat included
    long_poll_s: float = Field(25.0, ge=0, le=3600)  # how long the server may hold a heartbeat
    download_timeout_s: float = Field(600.0, gt=0)  # one package download, start to end
    max_backoff_s: float = Field(300.0, gt=0)  # longest wait between retries while the server is away
    ca_file: Path | None = None  # https:// url: trust this CA (PEM) instead of the system's
    client_cert_file: Path | None = None  # mutual TLS: the device's certificate (PEM), with client_key_file
    client_key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", value):
            raise ValueError("write http(s)://HOST[:PORT][/PREFIX], e.g. 'https://fleet.example.com', "
                             "or '' for no control plane")
        return value.rstrip("/")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag in value.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", key) or len(tag) > 256:
                raise ValueError(f"tag {key!r} = {tag!r}: keys are 1-64 letters, digits, '.', '_' or '-'; "
                                 "values at most 256 characters")
        return value

    @field_validator("long_poll_s")
    @classmethod
    def _poll_fits(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("request_timeout_s")
        if timeout is not None and value >= timeout:
            raise ValueError(f"long_poll_s ({value:g}) must be shorter than request_timeout_s ({timeout:g}): "
                             "the server holds a heartbeat up to long_poll_s before it answers")
        return value

    @model_validator(mode="after")
    def _tls(self) -> ServerConfig:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            given = "client_cert_file" if self.client_key_file is None else "client_key_file"
            raise ValueError(f"{given} is set alone: set client_cert_file and client_key_file together "
                             "(mutual TLS) or neither")
        tls = [k for k in ("ca_file", "client_cert_file", "client_key_file") if getattr(self, k) is not None]
        if tls and not self.url.startswith("https://"):
            raise ValueError(f"{', '.join(tls)} apply to an https:// url, but url is {self.url!r}: "
                             "write url = 'https://HOST:PORT' (the server runs with --tls-cert) or remove them")
        return self


class AgentConfig(_Section):
    device: DeviceConfig = DeviceConfig()
    listen: ListenConfig = ListenConfig()
    models: ModelsConfig = ModelsConfig(allow_unsigned=True)
    capture: CaptureConfig = CaptureConfig()
    metrics: MetricsConfig = MetricsConfig()
    server: ServerConfig = ServerConfig()
    source: Path | None = None  # the file this was read from (not a key)

    def sample_rate(self, model: str) -> float:
        return self.capture.sample_rates.get(model, self.capture.sample_rate)


_PATH_FIELDS = {
    ("listen", "unix_socket"), ("listen", "tls", "cert_file"), ("listen", "tls", "key_file"),
    ("listen", "tls", "client_ca_file"), ("models", "directory"), ("capture", "directory"),
    ("server", "token_file"), ("server", "credential_file"), ("server", "state_file"), ("server", "ca_file"),
    ("server", "client_cert_file"), ("server", "client_key_file"),
}


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate ``path``; relative paths in it become relative to its folder."""
    path = Path(path)
    text = read_config_text(path, "agent config file", "--config PATH to an existing file (edgemill agent "
                                                         "--example-config prints one)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})",
                          fix="correct the syntax at that line (strings need quotes, tables [name])") from None
    return config_from_dict(data, path, text)


def read_config_text(path: Path, what: str, fix: str) -> str:
    """The text of a config file, or a ConfigError naming the path (``fix`` says which option to pass)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", value=str(path), fix=f"pass {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}", value=str(path), fix=str(exc)) from None


def config_from_dict(data: dict[str, Any], path: Path | None = None, text: str = "") -> AgentConfig:
    base = path.parent if path is not None else Path.cwd()
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, path, text) from None
    _check_across_sections(config, path, text)
    return _resolve_paths(config, base).model_copy(update={"source": path})


def _check_across_sections(config: AgentConfig, path: Path | None, text: str) -> None:
    """Rules that tie two sections together; the error names the key that asks for the other."""
    if config.capture.store == "server" and not config.server.url:
        raise ConfigError(f"capture.store = 'server' in {_where(path, text, ('capture', 'store'))} uploads "
                          "captures through the control plane, but [server] url is not set", value="server",
                          fix="set [server] url = 'https://HOST:PORT' (and token_file), or use a file:// "
                              "or s3:// capture store")


def _where(path: Path | None, text: str, loc: tuple[str, ...]) -> str:
    line = _line_of(text, loc)
    return f"{path}:{line}" if path is not None and line else (str(path) if path is not None else "config")


def _config_error(exc: ValidationError, path: Path | None, text: str) -> ConfigError:
    first = exc.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    key = ".".join(loc) or "(top level)"
    where = _where(path, text, loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section = ".".join(loc[:-1])
        known = _known_keys(loc[:-1])
        return ConfigError(f"unknown key {key!r} in {where}", value=first.get("input"),
                           fix=f"remove it or use one of {known} in [{section or 'top level'}]")
    return ConfigError(f"bad value for {key!r} in {where}: {message}", value=first.get("input"),
                       fix=f"correct {key} (docs/agent.md lists every key and its default)")


def _known_keys(loc: tuple[str, ...]) -> list[str]:
    model: Any = AgentConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
        model = next((a for a in getattr(model, "__args__", ()) if isinstance(a, type)), model)
    return sorted(k for k in getattr(model, "model_fields", {}) if k != "source")


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """The line where ``loc`` (table path + key) is written, found by reading the TOML as text."""
    if not text or not loc:
        return None
    table: tuple[str, ...] = ()
    header = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        match = re.fullmatch(r"\[\s*([A-Za-z0-9_.\s-]+?)\s*\]", line)
        if match:
            table = tuple(part.strip() for part in match.group(1).split("."))
            if table == loc:
                header = number
            continue
        key = re.match(r"([A-Za-z0-9_-]+)\s*=", line)
        if key and table + (key.group(1),) == loc[: len(table) + 1] and len(loc) > len(table):
            return number
        dotted = re.match(r"([A-Za-z0-9_.-]+)\s*=", line)
        if dotted and table + tuple(dotted.group(1).split(".")) == loc:
            return number
    return header


def _resolve_paths(config: AgentConfig, base: Path) -> AgentConfig:
    def fix(section: BaseModel, names: tuple[str, ...]) -> BaseModel:
        updates: dict[str, Any] = {}
        for name in names:
            value = getattr(section, name)
            if isinstance(value, Path) and not value.is_absolute():
                updates[name] = base / value
        return section.model_copy(update=updates)

    listen = config.listen
    if listen.tls is not None:
        listen = listen.model_copy(update={"tls": fix(listen.tls, ("cert_file", "key_file", "client_ca_file"))})
    listen = fix(listen, ("unix_socket",))
    models = fix(config.models, ("directory",))
    models = models.model_copy(update={"trusted_keys": [k if k.is_absolute() else base / k
                                                         for k in config.models.trusted_keys]})
    capture = fix(config.capture, ("directory",))
    store = config.capture.store
    if store.startswith("file://") and not Path(store[len("file://"):]).is_absolute():
        capture = capture.model_copy(update={"store": "file://" + str(base / store[len("file://"):])})
    server = fix(config.server, ("token_file", "credential_file", "state_file", "ca_file", "client_cert_file",
                                 "client_key_file"))
    return config.model_copy(update={"listen": listen, "models": models, "capture": capture, "server": server})
