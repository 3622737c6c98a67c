"""Security, end to end against a real `edgemill server` process (and a real `edgemill agent` where the
device side is the point): one device's credential reaches nothing of another's, credentials die at
once, and hostile packages are refused with a named reason by the server's upload path and by the
agent's install path (ModelManager, as the sync uses it).

Operator API keys carry no scope (the ``api_keys`` table has a name, a hash and ``revoked_at``, nothing
else): any valid key reaches every fleet, so there is no cross-scope case to test. Nor is there an API
to revoke a key; an operator sets ``revoked_at`` in the database, which is what the test does.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import lzma
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import pytest

pytest.importorskip("fastapi")

from edgemill.captures.record import MAGIC, CaptureRecord  # noqa: E402
from edgemill.agent.config import ModelsConfig  # noqa: E402
from edgemill.agent.models import ModelManager  # noqa: E402
from edgemill.client import AgentClient  # noqa: E402
from edgemill.errors import VerificationError  # noqa: E402
from edgemill.package import sign_package  # noqa: E402
from edgemill.package.reader import MAX_FILES  # noqa: E402

from ._agent import AgentProcess, free_port, wait_for, write_config  # noqa: E402
from ._fleet import (ServerProcess, build_model_package, drop_postgres_database, fresh_postgres_database,  # noqa: E402
                     postgres_url, tampered_copy)

pytestmark = pytest.mark.slow
FEATURES = 16
UPLOAD_LIMIT_MB = 8


# --- plumbing -----------------------------------------------------------------------------------------


class Http:
    """Raw requests with whatever credential a test wants to try (one connection per request)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def __call__(self, method: str, path: str, token: str | None = None, *, body: Any = None,
                 data: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        if "json" in (response.getheader("Content-Type") or "") and raw:
            return response.status, json.loads(raw)
        return response.status, raw


class Device:
    """A device as the server sees it: its credential and its heartbeat sequence."""

    def __init__(self, http: Http, name: str, credential: str) -> None:
        self.http, self.name, self.credential, self.seq = http, name, credential, 0

    def heartbeat(self, device: str | None = None) -> tuple[int, Any]:
        self.seq += 1
        return self.http("POST", "/api/v1/agent/heartbeat", self.credential,
                         body={"device": device or self.name, "seq": self.seq})

    def put_capture(self, capture_id: str, data: bytes, model: str = "detector") -> tuple[int, Any]:
        return self.http("PUT", f"/api/v1/agent/captures/{capture_id}?model={model}", self.credential, data=data)


def register(server: ServerProcess, fleet: str, name: str) -> Device:
    api = server.client()
    if not any(f["name"] == fleet for f in api.request("GET", "/api/v1/fleets")):
        api.request("POST", "/api/v1/fleets", body={"name": fleet})
    token = api.request("POST", f"/api/v1/fleets/{fleet}/registration-tokens", body={})["token"]
    http = Http(server.url)
    status, body = http("POST", "/api/v1/agent/register", body={"token": token, "device": name})
    assert status == 201, body
    return Device(http, name, body["credential"])


def capture(device: str, capture_id: str, value: float = 1.0) -> bytes:
    return CaptureRecord(capture_id=capture_id, model="detector", model_version="1.0.0", device=device,
                         created_unix=time.time(), inputs={"x": np.full((1, 4), value, np.float32)},
                         outputs={"y": np.zeros((1, 2), np.float32)}, auxiliary={}, sampled=False).encode()


def forged_capture(**header: Any) -> bytes:
    """A well-formed record (its checksum is right) whose header says whatever the forger wants."""
    head = json.dumps({"format": 1, "model": "detector", "model_version": "1.0.0", "created_unix": time.time(),
                       "sampled": False, "inputs": [], "outputs": [], "auxiliary": [], **header}).encode()
    body = MAGIC + len(head).to_bytes(4, "little") + head
    return body + hashlib.sha256(body).digest()


def stored_objects(root: Path, under: str = "") -> dict[str, bytes]:
    base = root / under
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()} \
        if base.exists() else {}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    value = wait_for(predicate, timeout)
    assert value, f"timed out after {timeout:g} s waiting for {what}"
    return value


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def versions(keypair: tuple[Path, Path], other_keypair: tuple[Path, Path],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signed "detector" packages 1.0.0 … 5.0.0, another package claiming 1.0.0, and 1.0.0 signed by an
    untrusted key. Same shape throughout, so the files have the same size."""
    out = tmp_path_factory.mktemp("security-packages")
    built = {v: build_model_package(out, "detector", v, FEATURES, keypair[0], seed=i)
             for i, v in enumerate(("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"), start=1)}
    (out / "alt").mkdir()
    built["1.0.0-other"] = build_model_package(out / "alt", "detector", "1.0.0", FEATURES, keypair[0], seed=99)
    built["untrusted"] = Path(shutil.copy(built["1.0.0"], out / "untrusted.emp"))
    sign_package(built["untrusted"], other_keypair[0])
    return built


@pytest.fixture(scope="module")
def server(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the module, on PostgreSQL when the environment offers one. Its temporary
    folder is its own, so a test can check that refused uploads leave nothing there."""
    data = tmp_path_factory.mktemp("security-server")
    pg = postgres_url()
    db = fresh_postgres_database(pg) if pg else f"sqlite:///{data / 'edgemill.db'}"
    spool = data / "tmp"
    spool.mkdir()
    process = ServerProcess(data, keypair[1], "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--tick-s", "0.3",
                            "--heartbeat-interval-s", "0.5", "--offline-after-s", "30", db=db)
    process.db_url = db  # type: ignore[attr-defined]
    process.spool = spool  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(spool))
        process.start()
    try:
        yield process
    finally:
        process.stop()
        if db.startswith("postgresql"):
            drop_postgres_database(db)


@pytest.fixture(scope="module")
def uploaded(server: ServerProcess, versions: dict[str, Path]) -> dict[str, str]:
    """Versions 1.0.0 … 5.0.0 in the registry: version → package id."""
    api = server.client()
    return {v: api.push(versions[v])["package_id"] for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0")}


# --- device isolation ---------------------------------------------------------------------------------


def _fill(path: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        path = path.replace("{" + key + "}", quote(value, safe=""))
    return path


def test_a_device_credential_reaches_nothing_of_another_device(server: ServerProcess, uploaded: dict[str, str],
                                                              versions: dict[str, Path]) -> None:
    a, b = register(server, "iso", "iso-a"), register(server, "iso", "iso-b")
    http, api, store = Http(server.url), server.client(), server.data_dir / "store"
    assert a.heartbeat()[0] == 200 and b.heartbeat()[0] == 200

    # Heartbeats: only for itself.
    status, body = a.heartbeat(device="iso-b")
    assert status == 403 and body["field"] == "device" and body["error"] == "PermissionDeniedError"

    # Packages: B is told to run 1.0.0, A nothing; A cannot fetch B's package, B can.
    deployment = api.request("POST", "/api/v1/deployments", body={
        "model": "detector", "version": "1.0.0", "fleet": "iso", "devices": ["iso-b"],
        "strategy": {"canary_percent": 100, "bake_time_s": 0}})
    package_id = uploaded["1.0.0"]
    wait_until(lambda: [m["package_id"] for m in b.heartbeat()[1]["models"]] == [package_id], 15,
               "B's desired state to name 1.0.0")
    assert a.heartbeat()[1]["models"] == []
    download = f"/api/v1/agent/packages/{package_id}"
    status, body = http("GET", download, a.credential)
    assert status == 404 and body["field"] == "package_id" and body["error"] == "NotFoundError"
    status, raw = http("GET", download, b.credential)
    assert status == 200 and raw == versions["1.0.0"].read_bytes()
    other = uploaded["2.0.0"]  # in the registry, ordered to nobody: refused to B as well
    assert http("GET", f"/api/v1/agent/packages/{other}", b.credential)[0] == 404

    # Captures land under the credential's own device, whatever the request says.
    b_data, a_data = capture("iso-b", "cap-1", 2.0), capture("iso-a", "cap-1", 1.0)
    status, body = b.put_capture("cap-1", b_data)
    assert status == 201 and body["key"].startswith("captures/iso-b/detector/")
    b_key = body["key"]
    status, body = a.put_capture("cap-1", a_data)  # the same id from A: A's own object, B's untouched
    assert status == 201 and body["key"].startswith("captures/iso-a/detector/") and body["device"] == "iso-a"
    assert (store / b_key).read_bytes() == b_data and (store / body["key"]).read_bytes() == a_data
    status, body = a.put_capture("cap-2", capture("iso-b", "cap-2"))  # A claims B wrote it
    assert status == 403 and body["field"] == "device"
    status, body = a.put_capture("cap-3", forged_capture(capture_id="cap-3", device="iso-b"))
    assert status == 403 and body["field"] == "device"
    for sneaky in ("..%2F..%2Fiso-b%2Fdetector%2Fcap-4", "%2E%2E%2Fiso-b%2Fcap-4"):
        status, _ = a.put_capture(sneaky, forged_capture(capture_id="../../iso-b/detector/cap-4", device="iso-a"))
        assert status == 404  # a '/' never reaches the id: no route
    status, _ = a.put_capture("cap-5", capture("iso-a", "cap-5"), model="..%2Fiso-b")
    assert status == 422  # the model becomes part of the key: only a plain name passes
    objects = [k for k in stored_objects(store, "captures") if k.rsplit("/", 1)[1].startswith("cap-")]
    assert sorted(k.split("/")[1] + ":" + k.rsplit("/", 1)[1] for k in objects) == \
        ["iso-a:cap-1.emc", "iso-b:cap-1.emc"]  # nothing of cap-2 … cap-5 anywhere

    # Every operator endpoint, read or write, refuses a device credential (401), B's records above all.
    capture_row = api.request("GET", "/api/v1/captures", query={"device": "iso-b"})[0]
    assert capture_row["key"] == b_key
    values = {"version": "1.0.0", "deployment_id": str(deployment["id"]), "device": "iso-b",
              "capture_id": "cap-1"}
    spec = http("GET", "/openapi.json")[1]
    tried = []
    for path, operations in spec["paths"].items():
        if path.startswith("/api/v1/agent"):
            continue
        for method, operation in operations.items():
            if not operation.get("security"):
                continue
            name = {"/api/v1/models": "detector", "/api/v1/fleets": "iso", "/api/v1/devices": "iso-b"}.get(
                "/".join(path.split("/")[:4]), "iso-b")
            target = _fill(path, {**values, "name": name})
            status, body = http(method.upper(), target, a.credential, body={} if method in ("post", "patch", "put") else None)
            assert status == 401, (method, target, status, body)
            assert body["error"] == "AuthenticationError" and body["field"] == "Authorization"
            tried.append(f"{method.upper()} {target}")
    assert len(tried) >= 25 and "DELETE /api/v1/devices/iso-b" in tried and "GET /api/v1/captures/iso-b/cap-1" in tried
    # ... and nothing changed behind those refusals.
    assert api.request("GET", "/api/v1/devices/iso-b")["name"] == "iso-b"
    assert api.request("GET", f"/api/v1/deployments/{deployment['id']}")["state"] != "rolled_back"

    # An operator key is not a device credential either.
    operator = server.api_key
    assert http("POST", "/api/v1/agent/heartbeat", operator, body={"device": "iso-b", "seq": 10**6})[0] == 401
    assert http("GET", download, operator)[0] == 401
    assert http("PUT", "/api/v1/agent/captures/cap-9?model=detector", operator, data=capture("iso-b", "cap-9"))[0] == 401

    # Nor can A take B's name by registering again.
    token = api.request("POST", "/api/v1/fleets/iso/registration-tokens", body={})["token"]
    status, body = http("POST", "/api/v1/agent/register", body={"token": token, "device": "iso-b"})
    assert status == 409 and body["field"] == "device"
    assert b.heartbeat()[0] == 200


def test_a_deleted_device_is_refused_at_once_even_after_its_name_is_registered_again(server: ServerProcess) -> None:
    device = register(server, "revoke", "rev-1")
    api, http = server.client(), Http(server.url)
    assert device.heartbeat()[0] == 200
    assert device.put_capture("c-1", capture("rev-1", "c-1"))[0] == 201
    assert http("DELETE", "/api/v1/devices/rev-1", server.api_key)[0] == 204
    # The very next request of each kind is refused: nothing is cached.
    status, body = device.heartbeat()
    assert status == 401 and body["error"] == "AuthenticationError"
    assert device.put_capture("c-2", capture("rev-1", "c-2"))[0] == 401
    assert http("GET", "/api/v1/agent/packages/" + "0" * 64, device.credential)[0] == 401
    # A new registration under the same name gets a new credential; the old one stays dead.
    again = register(server, "revoke", "rev-1")
    assert again.heartbeat()[0] == 200
    assert device.heartbeat()[0] == 401 and again.credential != device.credential
    # The deleted device's captures leave the index with it (the new rev-1 does not inherit them); their
    # objects stay in the store, as DELETE /api/v1/devices documents.
    assert api.request("GET", "/api/v1/captures", query={"device": "rev-1"}) == []
    assert [k.rsplit("/", 1)[1] for k in stored_objects(server.data_dir / "store", "captures/rev-1")] == ["c-1.emc"]


@pytest.mark.parametrize("capture_id, header", [
    ("c-huge-time", {"created_unix": 1e300}), ("c-text-time", {"created_unix": "yesterday"}),
    ("c-no-time", {"created_unix": None}), ("x" * 200, {}), ("a b", {})], ids=["huge-time", "text-time", "no-time",
                                                                              "long-id", "id-with-space"])
def test_a_forged_capture_header_is_a_400_naming_the_field_and_stores_nothing(
        server: ServerProcess, capture_id: str, header: dict[str, Any]) -> None:
    device = register(server, "forgers", f"forger-{hashlib.sha256(capture_id.encode()).hexdigest()[:8]}")
    status, body = device.put_capture(quote(capture_id), forged_capture(capture_id=capture_id, device=device.name, **header))
    assert status in (400, 422) and body["field"], body
    assert stored_objects(server.data_dir / "store", f"captures/{device.name}") == {}


def test_a_revoked_or_deleted_operator_key_is_refused_on_the_next_request(server: ServerProcess) -> None:
    from sqlalchemy import create_engine, delete, update
    from sqlalchemy.orm import Session

    from edgemill.fleet.auth import digest, new_secret
    from edgemill.fleet.db.tables import ApiKey

    http = Http(server.url)
    engine = create_engine(server.db_url)  # type: ignore[attr-defined]
    keys = {name: new_secret("emk") for name in ("ops-revoked", "ops-deleted")}
    try:
        with Session(engine) as session, session.begin():
            for name, secret in keys.items():
                session.add(ApiKey(name=name, key_hash=digest(secret), created_at=time.time()))
        for secret in keys.values():
            assert http("GET", "/api/v1/devices", secret)[0] == 200
        with Session(engine) as session, session.begin():
            session.execute(update(ApiKey).where(ApiKey.name == "ops-revoked").values(revoked_at=time.time()))
            session.execute(delete(ApiKey).where(ApiKey.name == "ops-deleted"))
        for secret in keys.values():
            status, body = http("GET", "/api/v1/devices", secret)
            assert status == 401 and "revoked" in body["message"] and body["field"] == "Authorization"
            assert http("POST", "/api/v1/fleets", secret, body={"name": "not-made"})[0] == 401
        assert http("GET", "/api/v1/fleets/not-made", server.api_key)[0] == 404
        assert http("GET", "/api/v1/devices", server.api_key)[0] == 200  # the other key is untouched
    finally:
        engine.dispose()


# --- package attacks ------------------------------------------------------------------------------------


def _entries(package: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(package, "r:") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "", major: int = 0, minor: int = 0) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.devmajor, info.devminor = kind, linkname, major, minor
    return info, None


def _tar(out: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], raw: bytes = b"",
         fmt: int = tarfile.GNU_FORMAT) -> Path:
    """A tar of ``entries``, then ``raw`` (hand-made headers tarfile would not write) before its end."""
    with tarfile.open(out, "w:", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if raw:
            tar.fileobj.write(raw)  # type: ignore[union-attr]
            tar.offset += len(raw)
    return out


def _replace(package: Path, out: Path, files: dict[str, bytes]) -> Path:
    """The package with some of its files' bytes replaced."""
    entries = [(_member(m.name, files[m.name]) if m.name in files else (m, d)) for m, d in _entries(package)]
    return _tar(out, entries)


def _read(package: Path, name: str) -> bytes:
    return dict((m.name, d) for m, d in _entries(package))[name]  # type: ignore[return-value]


def _sparse_header(name: str, real_size: int) -> bytes:
    """A GNU sparse member: no data in the file, ``real_size`` bytes of hole once unpacked."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    buf[386:398] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # one map entry: data at the very end...
    buf[398:410] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # ... of no bytes
    buf[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # the size once unpacked
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf[:512])
    return bytes(buf)


def _gzip_bomb(out: Path, declared: int = 4 * 1024**3) -> Path:
    """A gzip stream whose tar declares a ``declared``-byte model file of zeros: ~1000x expansion
    (concatenated gzip members of one compressed MiB)."""
    header = tarfile.TarInfo("model/model.onnx")
    header.size = declared
    zeros = gzip.compress(b"\0" * (1 << 20), 9)
    with open(out, "wb") as f:
        f.write(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT), 9))
        for _ in range(declared >> 20):
            f.write(zeros)
    return out


def _model_file(package: Path) -> str:
    return next(m.name for m, _ in _entries(package) if m.name.endswith(".onnx"))


ATTACKS: dict[str, tuple[Callable[[dict[str, Path], Path], Path], str, str]] = {
    # name: (build from the signed packages into a folder, refusal reason, text the refusal must name)
    "tampered-file": (lambda v, d: tampered_copy(v["1.0.0"], d / "x.emp"), "file_modified", ".onnx"),
    "manifest-of-another-package": (lambda v, d: _replace(v["1.0.0"], d / "x.emp", {
        "manifest.json": _read(v["2.0.0"], "manifest.json")}), "manifest_modified", "manifest.json changed after signing"),
    "manifest-and-signature-of-another-package": (lambda v, d: _replace(v["1.0.0"], d / "x.emp", {
        "manifest.json": _read(v["2.0.0"], "manifest.json"),
        "signature/model.sig": _read(v["2.0.0"], "signature/model.sig")}), "file_modified", ".onnx"),
    "untrusted-signer": (lambda v, d: v["untrusted"], "untrusted_key", "not trusted"),
    "path-traversal": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [_member("model/../../escape.txt", b"x")]),
                       "corrupt_package", "escape.txt"),
    "absolute-path": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [_member("/etc/edgemill-escape", b"x")]),
                      "corrupt_package", "/etc/edgemill-escape"),
    "long-pax-traversal-name": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [
        _member("model/" + "../" * 40 + "etc/cron.d/escape", b"x")], fmt=tarfile.PAX_FORMAT),
        "corrupt_package", "etc/cron.d/escape"),
    "symlink": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [_special("model/link", tarfile.SYMTYPE, "/etc/passwd")]),
                "corrupt_package", "symbolic link"),
    "hardlink": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [_special("model/hard", tarfile.LNKTYPE, "/etc/shadow")]),
                 "corrupt_package", "hard link"),
    "hardlink-in-place-of-a-file": (lambda v, d: _tar(d / "x.emp", [
        (m, data) if m.name != "report.json" else _special("report.json", tarfile.LNKTYPE, "manifest.json")
        for m, data in _entries(v["1.0.0"])]), "corrupt_package", "hard link"),
    "character-device": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [
        _special("model/mem", tarfile.CHRTYPE, major=1, minor=1)]), "corrupt_package", "character device"),
    "block-device": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [_special("model/sda", tarfile.BLKTYPE, major=8)]),
                     "corrupt_package", "block device"),
    "fifo": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [_special("model/pipe", tarfile.FIFOTYPE)]),
             "corrupt_package", "fifo"),
    "duplicate-manifest": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]) + [
        _member("manifest.json", _read(v["2.0.0"], "manifest.json"))]), "corrupt_package", "duplicate"),
    "sparse-bomb": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]), raw=_sparse_header("model/holes", 64 * 1024**3)),
                    "corrupt_package", "sparse"),
    "declared-size-bomb": (lambda v, d: _tar(d / "x.emp", _entries(v["1.0.0"]), raw=_declared(64 * 1024**3)),
                           "corrupt_package", "truncated"),
    "gzip-bomb": (lambda v, d: _gzip_bomb(d / "x.emp"), "corrupt_package", "gzip-compressed"),
    "xz-compressed-package": (lambda v, d: _write(d / "x.emp", lzma.compress(v["1.0.0"].read_bytes())),
                              "corrupt_package", "xz-compressed"),
    "too-many-members": (lambda v, d: _tar(d / "x.emp", [_dir(f"d/{i:05d}") for i in range(MAX_FILES + 1)]
                                           + _entries(v["1.0.0"])), "corrupt_package", f"at most {MAX_FILES}"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _declared(size: int) -> bytes:
    """A header announcing ``size`` bytes that the file does not hold."""
    info = tarfile.TarInfo("model/big.bin")
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


@pytest.fixture(scope="module")
def attack_packages(versions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("attacks")
    built = {}
    for name, (build, _, _) in ATTACKS.items():
        (out / name).mkdir()
        built[name] = build(versions, out / name)
    return built


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_package_is_refused_by_the_server_and_by_the_agent_with_its_reason(
        attack: str, attack_packages: dict[str, Path], server: ServerProcess, uploaded: dict[str, str],
        versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    _, reason, needle = ATTACKS[attack]
    package = attack_packages[attack]
    assert package.stat().st_size < UPLOAD_LIMIT_MB * 1024**2  # refused for what it is, not for its size
    http, store = Http(server.url), server.data_dir / "store"
    before = stored_objects(store, "packages")
    registry = server.client().request("GET", "/api/v1/models/detector")

    # The server's upload path: 422 naming the reason and the member; nothing stored, nothing spooled.
    started = time.monotonic()
    status, body = http("POST", "/api/v1/models/detector/versions", server.api_key, data=package.read_bytes())
    elapsed = time.monotonic() - started
    assert status == 422, body
    assert body["error"] == "VerificationError" and body["reason"] == reason and body["fix"], body
    assert needle in body["message"] and str(package) not in body["message"], body["message"]
    assert elapsed < 10, f"the refusal took {elapsed:.1f} s: was something expanded?"
    assert stored_objects(store, "packages") == before
    assert server.client().request("GET", "/api/v1/models/detector") == registry
    assert list(server.spool.iterdir()) == []  # type: ignore[attr-defined]

    # The agent's install path: the sync prepares what it downloaded with the ordered package id; the
    # version serving under the name keeps serving.
    models = ModelManager(ModelsConfig(directory=tmp_path / "models", trusted_keys=[keypair[1]]))
    models.load(versions["1.0.0"], name="detector")
    with pytest.raises(VerificationError) as refused:
        models.prepare(package, "detector", replace=True, package_id=uploaded["1.0.0"])
    assert refused.value.reason.value == reason and needle in str(refused.value)
    assert models.reserved_bytes() == 0
    assert [(m.name, m.model.version) for m in models.list()] == [("detector", "1.0.0")]


def test_versions_are_immutable_and_an_older_version_is_installed_only_when_ordered(
        server: ServerProcess, uploaded: dict[str, str], versions: dict[str, Path], keypair: tuple[Path, Path],
        tmp_path: Path) -> None:
    http = Http(server.url)
    same = http("POST", "/api/v1/models/detector/versions", server.api_key, data=versions["1.0.0"].read_bytes())
    assert same[0] == 200 and same[1]["package_id"] == uploaded["1.0.0"]  # the same bytes again: idempotent
    status, body = http("POST", "/api/v1/models/detector/versions", server.api_key,
                        data=versions["1.0.0-other"].read_bytes())
    assert status == 409 and body["field"] == "version" and body["error"] == "ConflictError", body
    assert http("GET", "/api/v1/models/detector/versions/1.0.0", server.api_key)[1]["package_id"] == uploaded["1.0.0"]
    objects = stored_objects(server.data_dir / "store", "packages/detector/1.0.0")
    assert list(objects) == [f"packages/detector/1.0.0/{uploaded['1.0.0']}.emp"]

    models = ModelManager(ModelsConfig(directory=tmp_path / "models", trusted_keys=[keypair[1]]))
    models.load(versions["2.0.0"], name="detector")
    with pytest.raises(VerificationError) as refused:
        models.prepare(versions["1.0.0"], "detector", replace=True, package_id=uploaded["1.0.0"])
    assert refused.value.reason.value == "version_rollback" and "1.0.0" in str(refused.value)
    assert models.get("detector").model.version == "2.0.0"
    models.install(models.prepare(versions["1.0.0"], "detector", replace=True, allow_rollback=True,
                                  package_id=uploaded["1.0.0"]))
    assert models.get("detector").model.version == "1.0.0"


def _stream(conn: http.client.HTTPConnection, chunks: Iterator[bytes]) -> None:
    try:
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed while we were still sending: its answer is what counts


def test_an_upload_over_the_limit_is_refused_with_413_declared_or_streamed(server: ServerProcess) -> None:
    limit = UPLOAD_LIMIT_MB * 1024**2
    store = server.data_dir / "store"
    before = stored_objects(store, "packages")
    path = "/api/v1/models/detector/versions"
    web = Http(server.url)
    answers = []
    for declared in (True, False):
        conn = http.client.HTTPConnection(web.host, web.port, timeout=60)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Authorization", f"Bearer {server.api_key}")
            conn.putheader("Content-Type", "application/octet-stream")
            if declared:  # refused on the header alone: only a first piece of the body is ever sent
                conn.putheader("Content-Length", str(limit + 1))
                conn.endheaders()
                conn.send(b"\0" * 65536)
            else:  # no length given: refused once the stream passes the limit
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                _stream(conn, (b"\0" * (1 << 20) for _ in range(UPLOAD_LIMIT_MB + 2)))
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read())))
        finally:
            conn.close()
    for status, body in answers:
        assert status == 413 and body["error"] == "PayloadTooLargeError" and body["field"] == "body", body
        assert "--max-upload-mb" in body["fix"]
    assert str(limit) in answers[0][1]["message"] and str(limit + 1) in answers[0][1]["message"]
    assert stored_objects(store, "packages") == before
    assert list(server.spool.iterdir()) == []  # type: ignore[attr-defined]
    assert web("GET", "/healthz")[0] == 200


# --- the real agent, fed by the real server ---------------------------------------------------------------


def _served(agent: AgentProcess) -> str | None:
    with AgentClient(agent.address) as client:
        return {m["name"]: m["version"] for m in client.list_models()}.get("detector")


def test_the_agent_refuses_an_unordered_rollback_a_swapped_object_a_hard_link_and_an_oversized_download(
        server: ServerProcess, uploaded: dict[str, str], versions: dict[str, Path], keypair: tuple[Path, Path],
        tmp_path: Path) -> None:
    """The store is tampered with behind the server's back (it verified each upload): the device is the
    last line, refuses each, keeps serving what it ran, and the server learns why."""
    api = server.client()
    api.request("POST", "/api/v1/fleets", body={"name": "guarded"})
    token = api.request("POST", "/api/v1/fleets/guarded/registration-tokens", body={})["token"]
    home = tmp_path / "device"
    home.mkdir()
    (home / "token").write_text(token + "\n")
    config = write_config(home / "agent.toml", {
        "device": {"name": "guard-1", "fleet": "guarded"},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": ""},
        "models": {"directory": "models", "trusted_keys": [str(keypair[1])]},
        "capture": {"directory": "captures", "store": "server"},
        "server": {"url": server.url, "token_file": "token", "heartbeat_interval_s": 0.5, "long_poll_s": 2,
                   "request_timeout_s": 10, "max_backoff_s": 1},
    })
    store = server.data_dir / "store" / "packages" / "detector"

    def stored(version: str) -> Path:
        return store / version / f"{uploaded[version]}.emp"

    def deploy(version: str) -> int:
        return int(api.request("POST", "/api/v1/deployments", body={
            "model": "detector", "version": version, "fleet": "guarded", "devices": ["guard-1"],
            "strategy": {"canary_percent": 100, "bake_time_s": 0}})["id"])

    def refused(deployment: int, needle: str) -> str:
        def done() -> str | None:
            d = api.request("GET", f"/api/v1/deployments/{deployment}")
            text = json.dumps([d["reason"], [x["reason"] for x in d["devices"]]])
            return text if d["state"] in ("rolled_back", "failed") and needle in text else None
        return str(wait_until(done, 30, f"deployment {deployment} to fail with {needle!r}"))

    with AgentProcess(config) as agent:
        wait_until(lambda: any(d["name"] == "guard-1" for d in api.request("GET", "/api/v1/devices",
                                                                           query={"fleet": "guarded"})),
                   30, "the agent to register")  # a deployment names registered devices only
        deploy("2.0.0")
        wait_until(lambda: _served(agent) == "2.0.0", 30, "the agent to serve 2.0.0")

        # 1. A new deployment of an older version is not a rollback order: refused on the device.
        refused(deploy("1.0.0"), "version_rollback")
        assert _served(agent) == "2.0.0"

        # 2. The object of 3.0.0 swapped for another validly signed, newer package (4.0.0).
        assert stored("4.0.0").stat().st_size <= stored("3.0.0").stat().st_size
        shutil.copy(stored("4.0.0"), stored("3.0.0"))
        text = refused(deploy("3.0.0"), "manifest_modified")
        assert "not the one ordered" in text
        assert _served(agent) == "2.0.0"

        # 3. The object of 4.0.0 rewritten with a hard link in place of one of its files.
        entries = [(m, d) if m.name != "report.json" else _special("report.json", tarfile.LNKTYPE, "/etc/shadow")
                   for m, d in _entries(versions["4.0.0"])]
        _tar(stored("4.0.0"), entries)
        assert "hard link" in refused(deploy("4.0.0"), "corrupt_package")
        assert _served(agent) == "2.0.0"

        # 4. The object of 5.0.0 replaced by a gzip bomb far larger than the size the server announces.
        _gzip_bomb(stored("5.0.0"), declared=64 * 1024**2)
        refused(deploy("5.0.0"), "larger than the control plane announced")
        assert _served(agent) == "2.0.0"

        # Nothing of the refused packages stays on the device.
        assert sorted(p.name for p in (home / "models").iterdir()) == [f"detector-{uploaded['2.0.0'][:12]}.emp"]
