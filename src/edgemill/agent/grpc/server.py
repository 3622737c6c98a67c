"""One gRPC server carrying every protocol, bound to TCP and/or a Unix socket, optionally with TLS."""

from __future__ import annotations

import logging
from concurrent import futures
from pathlib import Path

import grpc

from ...errors import ConfigError
from ..config import ListenConfig
from ..dataplane import DataPlane
from . import edgemill_v1, kserve
from .malformed import MalformedRequestInterceptor

log = logging.getLogger("edgemill.agent")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what}", value=str(path),
                          fix=f"point [listen.tls] at a readable PEM file ({exc.strerror})") from None


def _tls_credentials(listen: ListenConfig) -> grpc.ServerCredentials | None:
    tls = listen.tls
    if tls is None:
        return None
    pair = [(_read(tls.key_file, "key_file"), _read(tls.cert_file, "cert_file"))]
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=_read(tls.client_ca_file, "client_ca_file"),
                                       require_client_auth=True)


def build_server(listen: ListenConfig, dataplane: DataPlane) -> tuple[grpc.Server, list[str]]:
    """A started-ready (not yet started) server and the addresses it is bound to."""
    limit = listen.max_message_mb * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=listen.max_workers, thread_name_prefix="edgemill-rpc"),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=listen.max_workers * 8,  # beyond this, RESOURCE_EXHAUSTED instead of a growing queue
        interceptors=[MalformedRequestInterceptor()],
    )
    edgemill_v1.add_to_server(server, dataplane)
    kserve.add_to_server(server, dataplane)
    try:
        from . import sagemaker
    except ImportError as exc:  # only when the generated stubs are missing; the others still serve
        log.warning("Edge Manager compatible service unavailable: %s", exc)
    else:
        sagemaker.add_to_server(server, dataplane)
    credentials = _tls_credentials(listen)
    bound: list[str] = []
    if listen.address:
        try:
            port = (server.add_secure_port(listen.address, credentials) if credentials
                    else server.add_insecure_port(listen.address))
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError("cannot listen on that address (in use, or not this machine's)", value=listen.address,
                              fix="choose a free port in [listen] address, or stop the process using it")
        host = listen.address.rpartition(":")[0]
        bound.append(f"{host}:{port}")
    if listen.unix_socket is not None:
        path = listen.unix_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()  # a stale socket from a previous run; a live agent would hold the TCP port too
        target = f"unix:{path}"
        port = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
        if port == 0:
            raise ConfigError("cannot listen on the Unix socket", value=str(path),
                              fix="choose a writable path in [listen] unix_socket")
        bound.append(target)
    return server, bound
