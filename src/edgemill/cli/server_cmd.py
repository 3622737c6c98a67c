"""`edgemill server`: the fleet control plane (API + dashboard) on embedded defaults or at scale."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, UsageError


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("server", parents=[common], help="run the fleet control plane (REST API + dashboard)",
                       description="Model registry, fleets, rollouts, alerts and the dashboard. Embedded defaults: "
                                   "SQLite and a local folder under ./edgemill-data; at scale PostgreSQL and S3.")
    p.add_argument("--listen", default="127.0.0.1:8700", metavar="HOST:PORT", help="where to serve (default 127.0.0.1:8700)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="SQLAlchemy URL (default sqlite:///edgemill-data/edgemill.db; postgresql+psycopg://USER:PW@HOST/DB)")
    p.add_argument("--store", default=None, metavar="URL", help="object store: file://DIR (default edgemill-data/store) or s3://BUCKET/PREFIX")
    p.add_argument("--s3-endpoint-url", default=None, metavar="URL", help="any S3-compatible service (MinIO, SeaweedFS, Ceph...)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUBLIC.pem",
                   help="uploads must be signed by this key (repeat for several)")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="operator API key: created there on first start when missing (default edgemill-data/operator.key)")
    p.add_argument("--data-dir", default="edgemill-data", metavar="DIR", help="where the embedded defaults live")
    p.add_argument("--max-upload-mb", type=float, default=None)
    p.add_argument("--max-concurrent-downloads", type=int, default=None)
    p.add_argument("--heartbeat-interval-s", type=float, default=None)
    p.add_argument("--offline-after-s", type=float, default=None)
    p.add_argument("--tick-s", type=float, default=None, help="how often rollouts, alerts and webhooks advance (default 2)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes on this port (default 1). Each is a full replica; use about one per "
                        "core left after the database")
    p.add_argument("--db-pool-size", type=int, default=None,
                   help="database connections (and request worker threads) per server process (default 8)")
    p.add_argument("--metrics-retention-s", type=float, default=None,
                   help="keep per-heartbeat metric samples this long, then fold them into rollups (default 7 days)")
    p.add_argument("--metrics-rollup-s", type=float, default=None, help="the span of one rollup (default 3600)")
    p.add_argument("--metrics-rollup-retention-s", type=float, default=None,
                   help="delete rollups older than this (default 90 days)")
    p.add_argument("--captures-retention-s", type=float, default=None,
                   help="delete captures (objects and records) older than this; 0 keeps them all (default 30 days)")
    p.add_argument("--audit-retention-s", type=float, default=None,
                   help="fold audit events older than this into per-day counts (at least 86400); default: keep them all")
    p.add_argument("--drift-bucket-s", type=float, default=None,
                   help="a device's drift counts close into a stored bucket after this long (default 300)...")
    p.add_argument("--drift-min-samples", type=int, default=None,
                   help="...once the bucket holds this many samples (default 100; a quiet device's bucket keeps filling)")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument("--tls-cert", default=None, metavar="FILE",
                   help="serve HTTPS with this PEM certificate (chain); needs --tls-key")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="the certificate's PEM private key (unencrypted)")
    p.add_argument("--tls-client-ca", default=None, metavar="FILE",
                   help="mutual TLS: every client (operators, devices, /healthz probes) must present a "
                        "certificate signed by this CA")
    p.set_defaults(handler=run)


KEEP_ALIVE_S = 75
BACKLOG = 4096


def build_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from ..errors import ConfigError
    from ..fleet.config import ServerConfig

    data = Path(args.data_dir)
    values = {"db": args.db or f"sqlite:///{data / 'edgemill.db'}", "store": args.store or f"file://{data / 'store'}",
              "s3_endpoint_url": args.s3_endpoint_url, "trusted_keys": tuple(Path(k) for k in args.trusted_key),
              "api_key_file": Path(args.api_key_file) if args.api_key_file else data / "operator.key"}
    for name in ("max_upload_mb", "max_concurrent_downloads", "heartbeat_interval_s", "offline_after_s", "tick_s",
                 "db_pool_size", "metrics_retention_s", "metrics_rollup_s", "metrics_rollup_retention_s",
                 "drift_bucket_s", "drift_min_samples", "audit_retention_s"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "captures_retention_s", None) is not None:
        values["captures_retention_s"] = args.captures_retention_s or None  # 0: keep every capture
    try:
        return ServerConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"bad value for {option}: {first['msg']}", value=first.get("input"), field=option,
                          fix=f"see `edgemill server --help` for {option}") from None


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's ssl_* arguments for the --tls-* flags, after checking the files they name."""
    import ssl

    from ..tls import check_pair, read_certificates

    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key", value=args.tls_client_ca,
                             fix="mutual TLS runs over HTTPS: add --tls-cert FILE --tls-key FILE")
        return {}
    if args.tls_cert is None or args.tls_key is None:
        given, missing = ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        raise UsageError(f"{given} needs {missing}", value=args.tls_cert or args.tls_key,
                         fix="pass both --tls-cert FILE and --tls-key FILE (HTTPS) or neither (HTTP)")
    check_pair(Path(args.tls_cert), Path(args.tls_key), "--tls-cert", "--tls-key", UsageError)
    options: dict[str, Any] = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    if args.tls_client_ca is not None:
        read_certificates(Path(args.tls_client_ca), "--tls-client-ca", UsageError, "CA certificate")
        options.update(ssl_ca_certs=args.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..fleet.app import CONFIG_ENV, LOG_FORMAT_ENV, create_app
        from ..fleet.observability import configure_logging
    except ImportError as exc:
        raise MissingDependencyError("the control plane needs its extra", value=exc.name,
                                     fix="pip install 'edgemill[server]'") from None
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError("bad --listen", value=args.listen, expected="HOST:PORT", fix="e.g. --listen 127.0.0.1:8700")
    if not 1 <= args.workers <= 64:
        raise UsageError("bad --workers", value=args.workers, expected="1 to 64",
                         fix="about one per CPU core left after the database")
    tls = tls_options(args)
    configure_logging(json_lines=args.log_format == "json")
    config = build_config(args)
    app = create_app(config)
    key_hint = f"{config.api_key_file}" if config.api_key_file else "(no key file)"
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    mutual = "; mutual TLS: clients need a certificate signed by " + args.tls_client_ca if args.tls_client_ca else ""
    print(f"edgemill server: listening on {url} (API {url}/docs, dashboard {url}/dashboard/); "
          f"operator API key in {key_hint}; database {config.db}; store {config.store}{mutual}", flush=True)
    # Keep-alive outlives an agent's pause between a long poll's answer and its next heartbeat, so a
    # device that reuses its connection does not reconnect every interval; the accept backlog takes a
    # fleet reconnecting at once (the kernel caps it at net.core.somaxconn).
    options: dict[str, Any] = dict(host=host.strip("[]"), port=int(port), log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_S, backlog=BACKLOG, **tls)
    if args.workers == 1:
        uvicorn.run(app, **options)
        return 0
    # Several processes on one port: each builds its own app from the same config (this process has
    # migrated the database and written the operator key already, so they do not race to).
    app.state.edgemill.db.engine.dispose()
    os.environ[CONFIG_ENV] = config.model_dump_json()
    os.environ[LOG_FORMAT_ENV] = args.log_format
    uvicorn.run("edgemill.fleet.app:app_from_environment", factory=True, workers=args.workers, **options)
    return 0

