"""Control-plane sync on the agent: the pure reconcile plan, the two-step model swap, the [server]
config, and the Sync component against a small real control plane on 127.0.0.1 (the four agent
endpoints, answers checked against the REST contract in edgemill.fleet.schemas)."""

from __future__ import annotations

import json
import logging
import shutil
import stat
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgemill
from edgemill.agent.capture import CaptureRecord, CaptureService
from edgemill.agent.capture.server_store import ServerStore
from edgemill.agent.config import AgentConfig, ModelsConfig, config_from_dict, load_config
from edgemill.agent.daemon import Agent
from edgemill.agent.models import ModelManager, health_check
from edgemill.agent.sync import Sync, package_file
from edgemill.agent.sync.plan import DesiredModel, Install, SkipFailed, Unload, plan, still_relevant
from edgemill.demo import zoo
from edgemill.errors import BackendError, ConfigError, InputMismatchError, ResourceExhaustedError, VerificationError
from edgemill.fleet.schemas import DesiredModelOut, DesiredStateOut, ErrorOut, HeartbeatIn, RegisterIn, RegisterOut
from edgemill.package.store import sign_package

from ._agent import free_port, wait_for

TOKEN = "token-for-fleet-a"

# --- the reconcile plan: a pure function ---------------------------------------------------------


def desired(name: str, package: str, rollback: bool = False) -> DesiredModel:
    return DesiredModel(name, "1.0.0", package, 10, f"/api/v1/agent/packages/{package}", rollback)


@pytest.mark.parametrize("wanted, loaded, failures, managed, expected", [
    ([], {}, set(), set(), []),
    ([desired("a", "p1")], {}, set(), set(), [Install(desired("a", "p1"))]),
    ([desired("a", "p1")], {"a": "p1"}, set(), {"a"}, []),  # already there
    ([desired("a", "p2")], {"a": "p1"}, set(), {"a"}, [Install(desired("a", "p2"))]),  # upgrade beside the old
    ([desired("a", "p2")], {"a": "p1"}, {("a", "p2")}, {"a"}, [SkipFailed("a", "p2")]),  # failed: old keeps serving
    ([desired("a", "p3")], {"a": "p1"}, {("a", "p2")}, {"a"}, [Install(desired("a", "p3"))]),  # a new package: tried
    ([desired("a", "p1")], {"a": "p1"}, {("a", "p2")}, {"a"}, []),  # a failure of another package does not matter
    ([], {"a": "p1"}, set(), {"a"}, [Unload("a")]),  # ours, no longer desired
    ([], {"a": "p1"}, set(), set(), []),  # an operator's model (gRPC, standalone) stays
    ([], {}, set(), {"a"}, [Unload("a")]),  # ours, unloaded meanwhile: its file still goes
    ([desired("b", "p9")], {"a": "p1", "b": "p8"}, set(), {"a"},  # unloads first, then installs
     [Unload("a"), Install(desired("b", "p9"))]),
    ([desired("a", "p1"), desired("a", "p2")], {}, set(), set(), [Install(desired("a", "p1"))]),  # first entry wins
    ([desired("b", "p2"), desired("a", "p1")], {}, {("b", "p2")}, set(),
     [SkipFailed("b", "p2"), Install(desired("a", "p1"))]),  # the desired order
    ([desired("a", "p1", rollback=True)], {"a": "p5"}, set(), {"a"}, [Install(desired("a", "p1", rollback=True))]),
])
def test_plan_reaches_the_desired_state(wanted: list[DesiredModel], loaded: dict[str, str], failures: set,
                                        managed: set, expected: list) -> None:
    assert plan(wanted, loaded, failures, managed) == expected


def test_a_failure_is_forgotten_once_the_desired_package_changes() -> None:
    tried = {("a", "p2", False), ("b", "p7", False), ("c", "p1", False)}
    now = [desired("a", "p2"), desired("b", "p8"), desired("c", "p1", rollback=True)]
    assert still_relevant(tried, now) == {("a", "p2")}  # b: another package; c: now ordered as a rollback
    assert still_relevant(tried, []) == set()


def test_a_malformed_desired_model_is_named() -> None:
    good = {"name": "a", "version": "1.0.0", "package_id": "p", "size_bytes": 3, "download_path": "/x",
            "allow_rollback": False, "deployment_id": 4}
    assert DesiredModel.from_wire(good).deployment_id == 4
    for bad in ({**good, "size_bytes": "many"}, {k: v for k, v in good.items() if k != "package_id"},
                {**good, "download_path": "x"}):
        with pytest.raises(ValueError, match="malformed desired model"):
            DesiredModel.from_wire(bad)


# --- packages --------------------------------------------------------------------------------------


def _reciprocal() -> onnx.ModelProto:
    """1/x: fine on the random inputs the compiler checks, infinite on the health check's zeros."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Reciprocal", ["features"], ["y"])], "reciprocal", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def versions(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model "mlp" at 1.0.0, 2.0.0 and 3.0.0, one that is infinite on zeros, and 2.0.0 tampered; all signed."""
    out = tmp_path_factory.mktemp("sync-packages")
    onnx.save(zoo.mlp(), str(out / "mlp.onnx"))
    onnx.save(_reciprocal(), str(out / "nan.onnx"))
    result: dict[str, Path] = {}
    for key, source, version in (("1.0.0", "mlp", "1.0.0"), ("2.0.0", "mlp", "2.0.0"), ("3.0.0", "mlp", "3.0.0"),
                                 ("nan", "nan", "2.5.0")):
        path = edgemill.compile(out / f"{source}.onnx", output=out / f"{key}.emp", measure=False, name="mlp",
                                version=version).path
        sign_package(path, keypair[0])
        result[key] = path
    data = bytearray(result["2.0.0"].read_bytes())
    with tarfile.open(result["2.0.0"]) as tar:  # a byte flipped inside the model file, under the signature
        member = next(m for m in tar.getmembers() if m.name.endswith(".onnx"))
    data[member.offset_data + member.size // 2] ^= 0xFF
    result["tampered"] = out / "tampered.emp"
    result["tampered"].write_bytes(bytes(data))
    return result


def package_id(path: Path) -> str:
    return edgemill.runtime.load(path).package_id


def manager(tmp_path: Path, public_key: Path, **config: Any) -> ModelManager:
    return ModelManager(ModelsConfig(directory=tmp_path / "models", trusted_keys=[public_key], **config))


# --- the two-step swap -----------------------------------------------------------------------------


def test_a_prepared_version_serves_only_once_installed_and_requests_in_flight_finish_on_the_old(
        versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    models = manager(tmp_path, keypair[1])
    models.load(versions["1.0.0"], name="mlp")
    x = {"features": np.ones((1, 64), np.float32)}
    with models.use("mlp") as (in_flight, _):  # a request holds the old version across the swap
        prepared = models.prepare(versions["2.0.0"], "mlp", replace=True)
        assert models.get("mlp").model.version == "1.0.0"  # prepared: loaded, not serving
        health_check(prepared.loaded.model)
        replaced = models.install(prepared)
        assert replaced is in_flight and models.get("mlp").model.version == "2.0.0"
        assert in_flight.model.version == "1.0.0" and in_flight.model.run(x)["logits"].shape == (1, 10)

    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                with models.use("mlp") as (loaded, _):
                    loaded.model.run(x)
                    seen.add(loaded.model.version)
            except BaseException as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for version in ("3.0.0", "2.0.0"):
            models.install(models.prepare(versions[version], "mlp", replace=True, allow_rollback=True))
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors and seen <= {"2.0.0", "3.0.0"} and models.get("mlp").model.version == "2.0.0"
    assert [m.name for m in models.list()] == ["mlp"]


def test_a_failed_health_check_keeps_the_old_version(versions: dict[str, Path], keypair: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    models = manager(tmp_path, keypair[1])
    models.load(versions["1.0.0"], name="mlp")
    used = models.used_bytes()
    prepared = models.prepare(versions["nan"], "mlp", replace=True)
    assert models.reserved_bytes() == prepared.loaded.memory_bytes > 0  # held beside the serving version
    with pytest.raises(BackendError, match="non-finite"):
        health_check(prepared.loaded.model)
    models.discard(prepared)
    assert models.get("mlp").model.version == "1.0.0" and models.used_bytes() == used
    assert models.reserved_bytes() == 0


def test_a_swap_needs_room_for_both_versions_at_once(versions: dict[str, Path], keypair: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    models = manager(tmp_path, keypair[1])
    loaded, _ = models.load(versions["1.0.0"], name="mlp")
    models.budget_bytes = loaded.memory_bytes + 1000  # the new version alone would fit, not beside the old
    with pytest.raises(ResourceExhaustedError) as caught:
        models.prepare(versions["2.0.0"], "mlp", replace=True)
    assert "both versions" in str(caught.value) and "memory_budget_mb" in str(caught.value)
    assert models.get("mlp").model.version == "1.0.0"
    with pytest.raises(ResourceExhaustedError):  # the gRPC path (load with replace) follows the same rule
        models.load(versions["2.0.0"], name="mlp", replace=True)


def test_prepare_refuses_a_package_other_than_the_one_ordered(versions: dict[str, Path], keypair: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    models = manager(tmp_path, keypair[1])
    with pytest.raises(VerificationError) as caught:
        models.prepare(versions["1.0.0"], "mlp", package_id=package_id(versions["2.0.0"]))
    assert "not the one ordered" in str(caught.value) and models.list() == []


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, line", [
    ('[server]\nurl = "ftp://fleet"\n', "server.url", 2),
    ('[server]\nurl = "http://fleet"\nrequest_timeout_s = 10\nlong_poll_s = 20\n', "server.long_poll_s", 4),
    ('[server]\nurl = "http://fleet"\n\n[server.tags]\n"bad key" = "x"\n', "server.tags", 4),
    ('[server]\nurl = "http://fleet"\nheartbeat_s = 3\n', "server.heartbeat_s", 3),
    ('[device]\nname = "d"\n\n[capture]\nstore = "server"\n', "capture.store", 5),
])
def test_a_bad_server_config_names_the_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert key in message and f"agent.toml:{line}" in message and "Fix:" in message
    if key == "capture.store":
        assert "[server] url" in message


def test_server_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "agent.toml"
    path.parent.mkdir()
    path.write_text('[server]\nurl = "https://fleet.example.com/edge/"\ntoken_file = "token"\n'
                    '[capture]\nstore = "server"\n')
    server = load_config(path).server
    assert server.url == "https://fleet.example.com/edge"
    assert server.token_file == path.parent / "token"
    assert server.credential_file == path.parent / "state" / "credential"
    assert server.state_file == path.parent / "state" / "sync.json"


# --- a small real control plane --------------------------------------------------------------------


class FakeControlPlane:
    """The four agent endpoints of the control plane, in memory, on 127.0.0.1.

    Requests are parsed and answers built with the contract's own pydantic models, so a payload the
    real server would refuse fails here too. ``stop()`` drops held long polls without an answer, as a
    crashed server would; ``start()`` again serves on the same port.
    """

    def __init__(self) -> None:
        self.port = 0
        self.tokens = {TOKEN: "fleet-a"}  # one-time tokens -> fleet
        self.credentials: dict[str, str] = {}  # credential -> device
        self.last_seq: dict[str, int] = {}
        self.heartbeats: list[HeartbeatIn] = []
        self.packages: dict[str, bytes] = {}
        self.desired: list[DesiredModelOut] = []
        self.generation = 0
        self.downloads: list[str] = []
        self.captures: dict[str, tuple[str, str, bytes]] = {}  # capture id -> device, model, bytes
        self.redirect = False  # serve packages through a 307 to a "presigned" URL
        self.rate_limited = 0  # answer this many downloads with 429
        self.hold_s = 0.3  # the server's cap on a long poll
        self.interval_s = 0.1
        self.closing = False
        self.cond = threading.Condition()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeControlPlane:
        self.closing = False
        handler = type("Handler", (_Handler,), {"plane": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def want(self, *models: tuple[Path, bool], serve: bytes | None = None) -> list[DesiredModelOut]:
        """Make these packages (path, allow_rollback) the desired state of every device; ``serve``:
        the bytes to send instead of the first package's (a package tampered with on the way)."""
        entries = []
        for path, rollback in models:
            model = edgemill.runtime.load(path)
            data = path.read_bytes()
            pid = model.package_id
            self.packages[pid] = serve if serve is not None and not entries else data
            entries.append(DesiredModelOut(name="mlp", version=model.version, package_id=pid, size_bytes=len(data),
                                           download_path=f"/api/v1/agent/packages/{pid}", allow_rollback=rollback,
                                           deployment_id=len(self.packages)))
        with self.cond:
            self.desired = entries
            self.generation += 1
            self.cond.notify_all()
        return entries

    def last(self) -> HeartbeatIn | None:
        with self.cond:
            return self.heartbeats[-1] if self.heartbeats else None

    def reports(self, version: str) -> bool:
        beat = self.last()
        return beat is not None and [m.version for m in beat.models] == [version]


class _Handler(BaseHTTPRequestHandler):
    plane: FakeControlPlane

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, error: str, **fields: Any) -> None:
        self._answer(status, ErrorOut(error=error, message=error, **fields).model_dump())

    def _device(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        device = self.plane.credentials.get(auth.removeprefix("Bearer "))
        if device is None:
            self._error(401, "Unauthorized", fix="register again")
        return device

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self) -> None:
        plane, url = self.plane, urlsplit(self.path)
        if url.path == "/api/v1/agent/register":
            body = RegisterIn.model_validate_json(self._body())
            if plane.tokens.pop(body.token, None) is None:
                return self._error(401, "TokenRefused", fix="ask the operator for a new token")
            if body.device in plane.credentials.values():
                return self._error(409, "DeviceExists", field="device", value=body.device)
            credential = f"cred-{body.device}-{len(plane.credentials)}"
            plane.credentials[credential] = body.device
            answer = RegisterOut(device=body.device, fleet="fleet-a", credential=credential)
            return self._answer(201, answer.model_dump())
        device = self._device()
        if device is None:
            return None
        beat = HeartbeatIn.model_validate_json(self._body())
        if beat.device != device:
            return self._error(403, "Forbidden")
        with plane.cond:
            if beat.seq <= plane.last_seq.get(device, -1):
                return self._error(409, "StaleRequestError", last_seq=plane.last_seq[device])
            plane.last_seq[device] = beat.seq
            plane.heartbeats.append(beat)
            reported = {(m.name, m.package_id) for m in beat.models}
            generation = plane.generation
            failed = {(f.model, f.package_id) for f in beat.failures}
            if all((m.name, m.package_id) in reported | failed for m in plane.desired):
                wait = min(float(parse_qs(url.query)["wait_s"][0]), plane.hold_s)
                plane.cond.wait_for(lambda: plane.generation != generation or plane.closing, wait)
            if plane.closing:
                return None  # a crashed server: the connection drops without an answer
            answer = DesiredStateOut(device=device, seq=beat.seq, models=plane.desired,
                                     heartbeat_interval_s=plane.interval_s, generation=f"g{plane.generation}")
        return self._answer(200, answer.model_dump(mode="json"))

    def do_GET(self) -> None:
        plane, url = self.plane, urlsplit(self.path)
        if url.path.startswith("/objects/"):  # the "object store": a presigned URL, never our credential
            if "Authorization" in self.headers or parse_qs(url.query).get("sig") != ["ok"]:
                return self._error(400, "NotPresigned")
            return self._answer(200, plane.packages[url.path.rsplit("/", 1)[1]])
        if self._device() is None:
            return None
        pid = url.path.rsplit("/", 1)[1]
        plane.downloads.append(pid)
        if plane.rate_limited > 0:
            plane.rate_limited -= 1
            return self._answer(429, ErrorOut(error="TooManyDownloads", message="later").model_dump(),
                                {"Retry-After": "0.2"})
        if pid not in plane.packages:
            return self._error(404, "NotFound")
        if plane.redirect:
            return self._answer(307, None, {"Location": f"{plane.url}/objects/{pid}?sig=ok"})
        return self._answer(200, plane.packages[pid])

    def do_PUT(self) -> None:
        device = self._device()
        if device is None:
            return None
        url = urlsplit(self.path)
        capture_id = url.path.rsplit("/", 1)[1]
        self.plane.captures[capture_id] = (device, parse_qs(url.query)["model"][0], self._body())
        return self._answer(201, {"capture_id": capture_id})


@pytest.fixture
def plane() -> Any:
    server = FakeControlPlane().start()
    yield server
    server.stop()


def sync_config(tmp_path: Path, url: str, public_key: Path, device: str = "dev-1", **server: Any) -> AgentConfig:
    (tmp_path / "token").write_text(TOKEN + "\n")
    return config_from_dict({
        "device": {"name": device},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": ""},
        "models": {"directory": str(tmp_path / "models"), "trusted_keys": [str(public_key)], "standalone": True},
        "capture": {"directory": str(tmp_path / "queue"), "store": "server", "upload_interval_s": 0.05},
        "server": {"url": url, "token_file": "token", "heartbeat_interval_s": 0.1, "long_poll_s": 0.3,
                   "request_timeout_s": 5, "max_backoff_s": 0.2, **server},
    }, tmp_path / "agent.toml")


def started_sync(tmp_path: Path, plane: FakeControlPlane, public_key: Path, **server: Any) -> tuple[Sync, ModelManager]:
    config = sync_config(tmp_path, plane.url, public_key, **server)
    models = ModelManager(config.models)
    sync = Sync(config, models)
    sync.start()
    return sync, models


def own_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "models").iterdir())


def test_registers_installs_the_desired_version_and_reports_it(plane: FakeControlPlane, versions: dict[str, Path],
                                                               keypair: tuple[Path, Path], tmp_path: Path) -> None:
    v1 = plane.want((versions["1.0.0"], False))[0]
    sync, models = started_sync(tmp_path, plane, keypair[1], tags={"site": "lab"})
    try:
        assert wait_for(lambda: plane.reports("1.0.0"), 10), plane.heartbeats[-1:]
        credential = tmp_path / "state" / "credential"
        assert stat.S_IMODE(credential.stat().st_mode) == 0o600
        assert credential.read_text().strip() in plane.credentials and sync.status()["fleet"] == "fleet-a"
        assert models.get("mlp").model.package_id == v1.package_id
        assert own_files(tmp_path) == [package_file("mlp", v1.package_id)]
        beat = plane.last()
        assert beat is not None and beat.models[0].package_id == v1.package_id and not beat.failures
        seqs = [b.seq for b in plane.heartbeats]
        assert seqs == sorted(set(seqs))  # strictly increasing, and saved before each was sent:
        assert json.loads((tmp_path / "state" / "sync.json").read_text())["seq"] >= seqs[-1]
        assert plane.downloads == [v1.package_id]  # installed once, then only heartbeats
    finally:
        sync.stop()


def test_a_tampered_version_is_refused_and_reported_while_the_old_keeps_serving_then_rollback(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    v1 = plane.want((versions["1.0.0"], False))[0]
    sync, models = started_sync(tmp_path, plane, keypair[1])
    try:
        assert wait_for(lambda: plane.reports("1.0.0"), 10)
        # the same package id (the manifest is unchanged), a byte of the model file flipped on the way
        v2 = plane.want((versions["2.0.0"], False), serve=versions["tampered"].read_bytes())[0]
        assert wait_for(lambda: (b := plane.last()) is not None and b.failures, 10)
        failure = plane.last().failures[0]  # type: ignore[union-attr]
        assert (failure.model, failure.package_id, failure.refusal) == ("mlp", v2.package_id, "file_modified")
        assert "refused" in failure.reason and "\n" not in failure.reason
        assert models.get("mlp").model.version == "1.0.0" and plane.reports("1.0.0")
        assert own_files(tmp_path) == [package_file("mlp", v1.package_id)]  # the bad file is gone
        downloads = len(plane.downloads)
        time.sleep(0.5)  # several heartbeats: the failed package is not fetched again
        assert len(plane.downloads) == downloads and plane.last().failures  # type: ignore[union-attr]

        v3 = plane.want((versions["3.0.0"], False))[0]  # another package: tried, and the failure forgotten
        assert wait_for(lambda: plane.reports("3.0.0") and not plane.last().failures, 10)  # type: ignore[union-attr]
        assert own_files(tmp_path) == [package_file("mlp", v3.package_id)]

        plane.want((versions["1.0.0"], False))  # an older version without a rollback order: refused
        assert wait_for(lambda: (b := plane.last()) is not None and b.failures, 10)
        assert plane.last().failures[0].refusal == "version_rollback"  # type: ignore[union-attr]
        assert models.get("mlp").model.version == "3.0.0"

        plane.want((versions["1.0.0"], True))  # the control plane orders the rollback
        assert wait_for(lambda: plane.reports("1.0.0") and not plane.last().failures, 10)  # type: ignore[union-attr]
        assert own_files(tmp_path) == [package_file("mlp", v1.package_id)]

        models.unload("mlp")  # by hand (gRPC UnloadModel): the file on disk is verified and loaded again
        downloads = len(plane.downloads)
        assert wait_for(lambda: "mlp" in {m.name for m in models.list()}, 10) and len(plane.downloads) == downloads

        plane.want()  # no longer desired: unloaded, file deleted
        assert wait_for(lambda: (b := plane.last()) is not None and b.models == [], 10)
        assert models.list() == [] and own_files(tmp_path) == []
    finally:
        sync.stop()


def test_offline_the_models_keep_serving_with_backoff_then_the_agent_catches_up(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    plane.want((versions["1.0.0"], False))
    sync, models = started_sync(tmp_path, plane, keypair[1])
    try:
        assert wait_for(lambda: plane.reports("1.0.0"), 10)
        plane.stop()
        with caplog.at_level(logging.DEBUG, logger="edgemill.agent.sync"):
            assert wait_for(lambda: sync.status()["failed_attempts"] >= 6, 10)
            assert models.get("mlp").model.run({"features": np.ones((1, 64), np.float32)})
            v2 = plane.want((versions["2.0.0"], False))[0]  # changed while the device was away
            plane.start()
            assert wait_for(lambda: plane.reports("2.0.0"), 10)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.getMessage()]
        assert 1 <= len(warnings) <= 4  # the first few failures, then quiet
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert models.get("mlp").model.package_id == v2.package_id and sync.status()["reachable"]
    finally:
        sync.stop()


def test_a_stale_sequence_is_recovered_from_the_servers_last_seq(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    sync, _ = started_sync(tmp_path, plane, keypair[1])
    try:
        assert wait_for(lambda: plane.heartbeats, 10)
        with plane.cond:  # e.g. the state file was restored from an old backup
            plane.last_seq["dev-1"] = 1000
        assert wait_for(lambda: plane.last().seq > 1000, 10)  # type: ignore[union-attr]
        assert plane.last().seq == 1001  # type: ignore[union-attr]
        assert any("stale" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    finally:
        sync.stop()


def test_downloads_follow_a_presigned_redirect_without_the_credential_and_wait_when_rate_limited(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    plane.redirect, plane.rate_limited = True, 2
    v1 = plane.want((versions["1.0.0"], False))[0]
    sync, models = started_sync(tmp_path, plane, keypair[1])
    try:
        assert wait_for(lambda: plane.reports("1.0.0"), 10)
        assert plane.downloads == [v1.package_id] * 3 and not plane.last().failures  # type: ignore[union-attr]
    finally:
        sync.stop()


def test_a_restart_offline_serves_what_was_applied_and_clears_leftovers(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    v1 = plane.want((versions["1.0.0"], False))[0]
    sync, _ = started_sync(tmp_path, plane, keypair[1])
    assert wait_for(lambda: plane.reports("1.0.0"), 10)
    sync.stop()
    plane.stop()
    models_dir = tmp_path / "models"
    (models_dir / ".mlp.0123456789ab.partial").write_bytes(b"half a download")
    v3 = package_file("mlp", package_id(versions["3.0.0"]))
    shutil.copy(versions["3.0.0"], models_dir / v3)  # downloaded, never recorded: the apply was cut
    shutil.copy(versions["2.0.0"], models_dir / "local-0123456789ab.emp")  # an operator's, named like ours
    config = sync_config(tmp_path, plane.url, keypair[1])
    agent = Agent(config)
    try:
        agent.start()  # offline: what was applied serves; it wins over a standalone package of the same name
        assert agent.models.get("mlp").model.package_id == v1.package_id
        assert sorted(p.name for p in models_dir.iterdir()) == ["local-0123456789ab.emp",
                                                                package_file("mlp", v1.package_id)]
    finally:
        agent.stop(grace_s=0)


def test_a_refused_token_is_logged_with_the_fix_and_retried(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config = sync_config(tmp_path, plane.url, keypair[1])
    (tmp_path / "token").write_text("expired-token-0000")
    sync = Sync(config, ModelManager(config.models))
    sync.start()
    try:
        assert wait_for(lambda: any("TokenRefused" in r.getMessage() for r in caplog.records), 10)
        refused = next(r for r in caplog.records if "TokenRefused" in r.getMessage())
        assert refused.levelno == logging.ERROR and "new registration token" in refused.getMessage()
        (tmp_path / "token").write_text(TOKEN)  # the operator issues a good one: no restart needed
        assert wait_for(lambda: plane.heartbeats, 10) and sync.status()["registered"]
        assert sum("TokenRefused" in r.getMessage() and r.levelno >= logging.WARNING
                   for r in caplog.records) == 1  # logged once, not per retry
    finally:
        sync.stop()


def test_stop_returns_promptly_in_the_middle_of_a_long_poll(plane: FakeControlPlane, keypair: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    plane.hold_s = 30.0
    sync, _ = started_sync(tmp_path, plane, keypair[1], long_poll_s=30, request_timeout_s=40)
    assert wait_for(lambda: plane.heartbeats, 10)
    time.sleep(0.2)  # the first heartbeat is held by the server now
    began = time.monotonic()
    sync.stop()
    assert time.monotonic() - began < 2.0 and not sync._thread.is_alive()  # type: ignore[union-attr]


def test_captures_upload_through_the_control_plane_with_the_devices_credential(
        plane: FakeControlPlane, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    config = sync_config(tmp_path, plane.url, keypair[1])
    sync = Sync(config, ModelManager(config.models))
    service = CaptureService(config.capture, "dev-1", store=ServerStore(sync))
    record = CaptureRecord("cap-1", "mlp", "1.0.0", "dev-1", 1717113600.0,
                           {"features": np.arange(4, dtype=np.float32)}, {"logits": np.zeros(2, np.float32)}, {}, False)
    service.start()
    try:
        service.submit(record)  # queued before the device has registered: it waits on disk
        sync.start()
        assert wait_for(lambda: "cap-1" in plane.captures, 10)
        assert plane.captures["cap-1"] == ("dev-1", "mlp", record.encode())
        assert wait_for(lambda: service.status("cap-1").state == "uploaded", 10)
        assert ServerStore(sync).url(record.object_key()) == f"{plane.url}/api/v1/agent/captures/cap-1"
    finally:
        service.stop(flush_timeout=1)
        sync.stop()


def test_the_agent_reports_metrics_memory_and_captures_in_the_contracts_heartbeat(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    plane.want((versions["1.0.0"], False))
    agent = Agent(sync_config(tmp_path, plane.url, keypair[1]))
    agent.start()
    try:
        assert wait_for(lambda: plane.reports("1.0.0"), 10)
        x = {"features": np.ones((1, 64), np.float32)}
        for _ in range(5):
            agent.dataplane.predict("mlp", x, received=time.perf_counter(), protocol="test")
        with pytest.raises(InputMismatchError):
            agent.dataplane.predict("mlp", {"features": np.ones((1, 32), np.float32)}, received=time.perf_counter(),
                                    protocol="test")
        assert wait_for(lambda: (b := plane.last()) is not None and "mlp" in b.metrics
                        and b.metrics["mlp"].requests == 6, 10)
        beat = plane.last()
        assert beat is not None and beat.metrics["mlp"].errors == 1  # requests count failed calls too
        assert beat.metrics["mlp"].latency_ms.p95 is not None
        assert beat.memory["used_bytes"] > 0 and "queued" in beat.capture and beat.agent_version
        assert beat.agent_started_at is not None
        assert b"edgemill_agent_control_plane" in agent.metrics.prometheus_text()
    finally:
        agent.stop(grace_s=0)


def test_the_next_heartbeat_is_one_interval_after_the_last_spread_so_a_fleet_in_step_drifts_apart() -> None:
    import random
    import statistics

    from edgemill.agent.sync import HEARTBEAT_JITTER, next_heartbeat_in

    rng = random.Random(7)
    on_time = [next_heartbeat_in(100.0, 101.0, 30.0, rng) for _ in range(2000)]  # answered 1 s after sending
    assert all(29.0 - 1.5 <= d <= 29.0 + 1.5 for d in on_time)
    assert statistics.fmean(on_time) == pytest.approx(29.0, abs=0.1) and statistics.pstdev(on_time) > 0.5
    # Answered late (a stalled server): more than the spread late goes at once; the on-time waits after
    # that drift apart by the spread each interval, which is what breaks a fleet's step.
    late = [next_heartbeat_in(100.0, 135.0, 30.0, rng) for _ in range(2000)]
    assert all(d == 0.0 for d in late)
    just_late = [next_heartbeat_in(100.0, 130.0, 30.0, rng) for _ in range(2000)]
    assert 0.4 < sum(d == 0.0 for d in just_late) / 2000 < 0.6 and max(just_late) <= HEARTBEAT_JITTER * 30.0


def test_an_evicted_desired_model_is_left_to_load_on_its_next_request(
        plane: FakeControlPlane, versions: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync counts an evicted model as in place: it does not load it back (which would only evict
    another, every sync); the next Predict for it does, from the package the sync applied."""
    from edgemill.agent import models as models_module

    monkeypatch.setattr(models_module, "_rss_bytes", lambda: 0)  # each model costs its files exactly
    v1 = plane.want((versions["1.0.0"], False))[0]
    size_mb = versions["1.0.0"].stat().st_size / 2**20
    config = sync_config(tmp_path, plane.url, keypair[1])
    config = config.model_copy(update={"models": config.models.model_copy(update={
        "memory_budget_mb": size_mb * 1.5, "when_over_budget": "evict-lru"})})  # room for one of two
    models = ModelManager(config.models)
    sync = Sync(config, models)
    sync.start()
    try:
        assert wait_for(lambda: plane.reports("1.0.0"), 10), plane.heartbeats[-1:]
        other = tmp_path / "other.emp"
        shutil.copy(versions["3.0.0"], other)
        _, evicted = models.load(other, name="other")  # an application's LoadModel evicts the desired one
        assert evicted == ["mlp"] and set(models.evicted()) == {"mlp"}
        beats = len(plane.heartbeats)
        assert wait_for(lambda: len(plane.heartbeats) >= beats + 3, 10)  # several syncs later:
        assert [m.name for m in models.list()] == ["other"] and plane.downloads == [v1.package_id]
        with models.use("mlp") as (loaded, _):  # a Predict: loaded again from the applied file
            assert loaded.model.package_id == v1.package_id
        assert models.cold_starts == 1 and [m.name for m in models.list()] == ["mlp"]
    finally:
        sync.stop()
