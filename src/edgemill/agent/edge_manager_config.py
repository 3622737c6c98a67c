"""Read a SageMaker Edge Manager agent JSON config as an :class:`AgentConfig`, saying what maps and what cannot.

Edge Manager's keys (``sagemaker_edge_*``) map onto the agent's TOML keys where edgemill has the same
behaviour; the rest are reported, each with the reason and what to use instead. Settings Edge Manager
never had (trusted keys, the socket path, budgets...) go in an optional ``"edgemill"`` object in the
same file, written in the TOML's shape and merged on top of the mapped values::

    {
      "sagemaker_edge_core_device_name": "camera-7",
      "sagemaker_edge_core_device_fleet_name": "cameras",
      "sagemaker_edge_core_capture_data_destination": "Disk",
      "sagemaker_edge_core_capture_data_disk_path": "/var/lib/captures",
      "edgemill": {"listen": {"unix_socket": "/tmp/edge_agent"},
                   "models": {"trusted_keys": ["/etc/edgemill/release.pub"]}}
    }
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import AgentConfig, config_from_dict, read_config_text

PREFIX = "sagemaker_edge_"
EXTRA = "edgemill"
# Where Edge Manager's own examples put the socket; Edge Manager took it on its command line (-a).
DEFAULT_SOCKET = "/tmp/sagemaker_edge_agent_example.sock"
EMBED_LIMIT_MAX = 3072  # Edge Manager's ceiling for base64-embedded tensors, in bytes

# Every key of the agent's config (release 1.20210820 and the developer guide) and its JSON type.
KNOWN_KEYS: dict[str, type] = {
    "sagemaker_edge_core_device_name": str,
    "sagemaker_edge_core_device_uuid": str,  # the device name's key in early releases
    "sagemaker_edge_core_device_fleet_name": str,
    "sagemaker_edge_core_region": str,
    "sagemaker_edge_core_root_certs_path": str,
    "sagemaker_edge_core_folder_prefix": str,
    "sagemaker_edge_core_capture_data_destination": str,
    "sagemaker_edge_core_capture_data_disk_path": str,
    "sagemaker_edge_core_capture_data_buffer_size": int,
    "sagemaker_edge_core_capture_data_batch_size": int,
    "sagemaker_edge_core_capture_data_push_period_seconds": int,
    "sagemaker_edge_core_capture_data_base64_embed_limit": int,
    "sagemaker_edge_core_capture_data_periodic_upload": bool,
    "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": int,
    "sagemaker_edge_core_iot_thing_name": str,
    "sagemaker_edge_core_endpoint_override": str,
    "sagemaker_edge_core_config_path": str,
    "sagemaker_edge_provider_provider": str,
    "sagemaker_edge_provider_provider_path": str,
    "sagemaker_edge_provider_s3_bucket_name": str,
    "sagemaker_edge_provider_aws_ca_cert_file": str,
    "sagemaker_edge_provider_aws_cert_file": str,
    "sagemaker_edge_provider_aws_cert_pk_file": str,
    "sagemaker_edge_provider_aws_iot_cred_endpoint": str,
    "sagemaker_edge_log_verbose": bool,
    "sagemaker_edge_telemetry_libsystemd_path": str,
}

_AWS_IOT = ("the AWS IoT credential provider is replaced by edgemill's control plane "
            "(set edgemill.server.url and server.token_file); S3 uploads use the standard AWS credential chain")
# Keys edgemill cannot honour, and why.
UNHONOURED: dict[str, str] = {
    "sagemaker_edge_core_root_certs_path": "edgemill packages are verified with ECDSA P-256 public keys, not AWS root "
                                           "certificates: list yours in edgemill.models.trusted_keys",
    "sagemaker_edge_provider_aws_ca_cert_file": _AWS_IOT,
    "sagemaker_edge_provider_aws_cert_file": _AWS_IOT,
    "sagemaker_edge_provider_aws_cert_pk_file": _AWS_IOT,
    "sagemaker_edge_provider_aws_iot_cred_endpoint": _AWS_IOT,
    "sagemaker_edge_provider_provider": "edgemill has no provider plug-ins: the capture store (file:// or any "
                                        "S3-compatible s3://) and the control plane take their place",
    "sagemaker_edge_provider_provider_path": "edgemill loads no provider shared objects",
    "sagemaker_edge_core_iot_thing_name": _AWS_IOT,
    "sagemaker_edge_core_endpoint_override": "there is no SageMaker endpoint any more: point edgemill.server.url "
                                             "at an edgemill control plane",
    "sagemaker_edge_core_config_path": "edgemill reads the file it is given (--edge-manager-config)",
    "sagemaker_edge_log_verbose": "the log level is a command-line option: edgemill agent --log-level debug",
    "sagemaker_edge_telemetry_libsystemd_path": "edgemill exports its metrics (restarts included, via the process "
                                                "start time) as Prometheus text at listen.metrics_address",
}


def load_edge_manager_config(path: str | Path) -> tuple[AgentConfig, list[str]]:
    """The agent config an Edge Manager JSON file describes, and one note per key: mapped or why not."""
    path = Path(path)
    text = read_config_text(path, "Edge Manager config file", "--edge-manager-config PATH to the agent's JSON config")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno} is not valid JSON ({exc.msg})",
                          fix="correct the syntax at that line and column (keys and strings need double quotes, "
                              "no trailing commas)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a JSON object", value=type(raw).__name__,
                          fix='write the settings as {"sagemaker_edge_core_device_name": "...", ...}')
    return _Mapper(path, text, raw).run()


class _Mapper:
    def __init__(self, path: Path, text: str, raw: dict[str, Any]) -> None:
        self.path, self.text, self.raw = path, text, raw
        self.data: dict[str, Any] = {}
        self.origin: dict[str, str] = {}  # our dotted key -> the Edge Manager key it came from
        self.notes: list[str] = []

    def run(self) -> tuple[AgentConfig, list[str]]:
        em = self._checked()
        self._map_device(em)
        self._map_capture(em)
        by_reason: dict[str, list[str]] = {}
        for key in sorted(k for k in em if k in UNHONOURED):
            by_reason.setdefault(UNHONOURED[key], []).append(key)
        self.notes += [f"{', '.join(keys)}: not used: {reason}" for reason, keys in by_reason.items()]
        self._defaults()
        extra = self.raw.get(EXTRA, {})
        if extra:
            self.data = _merge(self.data, extra)
            self.notes.append(f'"{EXTRA}" object: merged on top ({", ".join(sorted(extra))})')
        config = self._validate()
        if not config.models.trusted_keys:
            self.notes.append("models: NO signature check: no trusted keys are configured (allow_unsigned); list "
                              "the release keys in edgemill.models.trusted_keys before this serves a fleet")
        return config, self.notes

    # --- reading -------------------------------------------------------------------------------

    def _checked(self) -> dict[str, Any]:
        em: dict[str, Any] = {}
        for key, value in self.raw.items():
            if key == EXTRA:
                if not isinstance(value, dict):
                    raise self._error(key, f'"{EXTRA}" must be an object', value,
                                      'write it as {"models": {"trusted_keys": [...]}, ...} (the TOML\'s shape)')
                continue
            if not key.startswith(PREFIX):
                raise self._error(key, "unknown key", key,
                                  f'Edge Manager keys start with "{PREFIX}"; put edgemill settings in the '
                                  f'"{EXTRA}" object')
            expected = KNOWN_KEYS.get(key)
            if expected is None:
                self.notes.append(f"{key}: not recognised (from a later Edge Manager release?); ignored")
                continue
            if type(value) is not expected:  # bool is an int subclass: compare exactly
                raise self._error(key, f"must be {_TYPE_WORDS[expected]}", value,
                                  f"write {key} as {_TYPE_WORDS[expected]}")
            em[key] = value
        return em

    def _map_device(self, em: dict[str, Any]) -> None:
        name = em.get("sagemaker_edge_core_device_name")
        uuid_key = "sagemaker_edge_core_device_uuid"
        if name is not None:
            self._set("device.name", name, "sagemaker_edge_core_device_name")
            if uuid_key in em:
                self.notes.append(f"{uuid_key}: not used: sagemaker_edge_core_device_name names the device")
        elif uuid_key in em:
            self._set("device.name", em[uuid_key], uuid_key)
        fleet_key = "sagemaker_edge_core_device_fleet_name"
        if fleet_key in em:
            self._set("device.fleet", em[fleet_key], fleet_key)

    def _map_capture(self, em: dict[str, Any]) -> None:
        k = "sagemaker_edge_core_capture_data_"
        dest_key, disk_key = k + "destination", k + "disk_path"
        bucket_key, prefix_key = "sagemaker_edge_provider_s3_bucket_name", "sagemaker_edge_core_folder_prefix"
        region_key = "sagemaker_edge_core_region"
        periodic_key, periodic_period_key = k + "periodic_upload", k + "periodic_upload_period_seconds"
        push_key = k + "push_period_seconds"
        destination = em.get(dest_key)
        if destination is not None and destination.lower() not in ("disk", "cloud"):
            raise self._error(dest_key, 'must be "Disk" or "Cloud"', destination,
                              f'set {dest_key} to "Disk" or "Cloud"')
        destination = (destination or "Disk").lower()  # Edge Manager's default
        prefix = em.get(prefix_key, "").strip("/")
        bucket = em.get(bucket_key)
        periodic = em.get(periodic_key, False) and destination == "disk"
        to_s3 = destination == "cloud" or periodic
        if to_s3:
            if not bucket:
                raise self._error(bucket_key if bucket_key in em else dest_key,
                                  "uploads to the cloud need a bucket", bucket,
                                  f"set {bucket_key} (any S3-compatible store: add edgemill.capture.s3_endpoint_url)")
            self._set("capture.store", f"s3://{bucket}/{prefix}".rstrip("/"), bucket_key)
            if region_key in em:
                self._set("capture.s3_region", em[region_key], region_key)
            if periodic and disk_key in em:
                # Disk first, cloud later: the durable queue is exactly that, so it lives on that disk.
                self._set("capture.directory", str(Path(em[disk_key]) / prefix) if prefix else em[disk_key], disk_key)
        elif disk_key in em:
            store = Path(em[disk_key]) / prefix if prefix else Path(em[disk_key])
            self._set("capture.store", f"file://{store}", disk_key)
            if bucket_key in em:
                self.notes.append(f"{bucket_key}: not used: captures go to disk ({dest_key} is Disk, "
                                  f"{periodic_key} is off)")
        elif dest_key in em:
            self.notes.append(f"{dest_key}: Disk without {disk_key}: captures go to the default store "
                              "(capture-store next to this file)")
        if prefix_key in em and not (to_s3 or disk_key in em):
            self.notes.append(f"{prefix_key}: not used: no capture destination is configured")
        if region_key in em and not to_s3:
            self.notes.append(f"{region_key}: not used: nothing is uploaded to AWS")
        if periodic:
            period = em.get(periodic_period_key, em.get(push_key))
            if period is not None:
                self._set("capture.upload_interval_s", period,
                          periodic_period_key if periodic_period_key in em else push_key)
            if push_key in em and periodic_period_key in em:
                self.notes.append(f"{push_key}: not used: the on-disk queue is written at once (durably); "
                                  f"{periodic_period_key} paces the uploads")
        else:
            if push_key in em:
                self._set("capture.upload_interval_s", em[push_key], push_key)
            for key in (periodic_key, periodic_period_key):
                if key in em and (key != periodic_key or em[key]):
                    self.notes.append(f"{key}: not used: periodic upload is off, or the destination is Cloud")
            if to_s3 and disk_key in em:
                self.notes.append(f"{disk_key}: not used: the destination is Cloud (the on-disk queue is "
                                  "capture.directory)")
        if k + "buffer_size" in em:
            self._set("capture.max_queue_records", em[k + "buffer_size"], k + "buffer_size",
                      "a bounded on-disk queue that survives restarts, instead of an in-memory ring")
        if k + "batch_size" in em:
            self._set("capture.upload_batch_size", em[k + "batch_size"], k + "batch_size")
        if k + "base64_embed_limit" in em:
            limit = em[k + "base64_embed_limit"]
            capped = min(limit, EMBED_LIMIT_MAX) if limit >= 0 else limit
            self._set("capture.embed_limit_bytes", capped, k + "base64_embed_limit",
                      f"capped at Edge Manager's {EMBED_LIMIT_MAX} bytes; set edgemill.capture.embed_limit_bytes "
                      "for more" if capped != limit else "")

    def _defaults(self) -> None:
        """What Edge Manager did without being told: serve on a Unix socket."""
        self._set("listen.unix_socket", DEFAULT_SOCKET, "",
                  "Edge Manager took the socket on its command line; set edgemill.listen.unix_socket to the path "
                  "your applications use")

    # --- building ------------------------------------------------------------------------------

    def _set(self, dotted: str, value: Any, source: str, why: str = "") -> None:
        node = self.data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        if source:
            self.origin[dotted] = source
        overridden = _lookup(self.raw.get(EXTRA), dotted) is not _MISSING
        head = f"{source} -> {dotted}" if source else f"(default) {dotted}"
        text = f"{head} = {value!r}" + (f" ({why})" if why else "")
        self.notes.append(text + (f'; overridden by "{EXTRA}"' if overridden else ""))

    def _validate(self) -> AgentConfig:
        try:
            return config_from_dict(self.data, self.path)
        except ConfigError as exc:
            match = re.search(r"'([A-Za-z0-9_.]+)'", exc.problem)
            dotted = match.group(1) if match else ""
            if _lookup(self.raw.get(EXTRA), dotted) is not _MISSING:
                where = f'set in the "{EXTRA}" object'
            elif dotted in self.origin:
                source = self.origin[dotted]
                line = _json_line(self.text, source)
                where = f"from {source}" + (f" at line {line}" if line else "")
            else:
                raise
            raise ConfigError(f"{exc.problem} ({where})", value=exc.value, expected=exc.expected,
                              fix=exc.fix) from None

    def _error(self, key: str, problem: str, value: Any, fix: str) -> ConfigError:
        line = _json_line(self.text, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{key!r} in {where}: {problem}", value=value, fix=fix)


_TYPE_WORDS = {str: "a string", int: "an integer (no quotes)", bool: "true or false"}
_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split(".") if dotted else ():
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node if dotted else _MISSING


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _json_line(text: str, key: str) -> int | None:
    """The line where ``"key":`` is written (first occurrence), for messages that name it."""
    match = re.search(r'"' + re.escape(key) + r'"\s*:', text)
    return text.count("\n", 0, match.start()) + 1 if match else None
