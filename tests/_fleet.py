"""Control-plane test helpers: a real `edgemill server` process, versioned signed packages, an
operator client, and a database URL (SQLite, or PostgreSQL when the environment offers one)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import onnx

import edgemill
from edgemill.demo import zoo
from edgemill.package import sign_package
from edgemill.remote import ControlPlane

from ._agent import free_port

POSTGRES_ENV = "EDGEMILL_TEST_POSTGRES_URL"  # e.g. postgresql+psycopg://edgemill:edgemill@127.0.0.1/edgemill_test


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def fresh_postgres_database(base_url: str) -> str:
    """A new, empty database on the server of ``base_url`` (each test gets its own)."""
    from sqlalchemy import create_engine, text

    name = "edgemill_t_" + uuid.uuid4().hex[:12]
    engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str, attempts: int = 20) -> None:
    """Drop a test database. Our own leftover sessions are ended first (the test role may end its own);
    ``WITH (FORCE)`` is not used because it refuses outright when an autovacuum worker happens to be in
    the database, which a non-superuser may not signal. Plain DROP asks autovacuum to leave and waits,
    and the short retry covers a session that connects between the two statements."""
    from sqlalchemy import create_engine, exc, text

    base, _, name = url.rpartition("/")
    engine = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for attempt in range(attempts):
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = :name AND usename = current_user AND pid <> pg_backend_pid()"),
                    {"name": name},
                )
                try:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                    return
                except exc.DBAPIError:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(0.25)
    finally:
        engine.dispose()


def build_model_package(out: Path, name: str, version: str, features: int, private_key: Path, seed: int = 1) -> Path:
    """A signed MLP package: ``features`` inputs; change it between versions to break clients."""
    onnx_path = out / f"{name}-{version}.onnx"
    onnx.save(zoo.mlp(features=features, hidden=(32,), classes=4, seed=seed), str(onnx_path))
    result = edgemill.compile(onnx_path, output=out / f"{name}-{version}.emp", measure=False, name=name, version=version)
    sign_package(result.path, private_key)
    return result.path


@dataclass(frozen=True)
class ServerTls:
    """The server's ``cert``/``key`` (HTTPS), the ``ca`` its clients trust, and for mutual TLS the
    ``client_ca`` it requires plus the ``client_cert``/``client_key`` the helper's own probes present."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def flags(self) -> list[str]:
        flags = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        return flags + (["--tls-client-ca", str(self.client_ca)] if self.client_ca else [])

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class ServerProcess:
    """``with ServerProcess(tmp, trusted_key) as server: server.url, server.api_key``; with ``tls``
    it serves HTTPS (``server.url`` is https://) and its probes and ``client()`` use ``tls``."""

    def __init__(self, data_dir: Path, trusted_key: Path | None, *args: str, db: str | None = None,
                 port: int | None = None, tls: ServerTls | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "edgemill", "server", "--listen", f"127.0.0.1:{self.port}",
                        "--data-dir", str(data_dir), "--log-format", "text", *args]
        if db:
            self.command += ["--db", db]
        if trusted_key is not None:
            self.command += ["--trusted-key", str(trusted_key)]
        if tls is not None:
            self.command += tls.flags()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2,
                                            context=self.tls.context() if self.tls else None) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy within {timeout:g} s:\n{self.output()}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    @property
    def api_key(self) -> str:
        return (self.data_dir / "operator.key").read_text().strip()

    def client(self) -> ControlPlane:
        if self.tls is None:
            return ControlPlane(self.url, self.api_key, timeout_s=30)
        return ControlPlane(self.url, self.api_key, timeout_s=30, ca_file=self.tls.ca,
                            client_cert=self.tls.client_cert, client_key=self.tls.client_key)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tampered_copy(package: Path, out: Path) -> Path:
    """The same signed package with one byte of its model file flipped (under the signature)."""
    import tarfile

    data = bytearray(package.read_bytes())
    with tarfile.open(package) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".onnx"))
    data[member.offset_data + member.size // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    return out
