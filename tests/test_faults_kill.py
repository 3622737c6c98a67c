"""Fault tests: the agent killed with SIGKILL mid capture upload, mid package download and mid model swap.

All real processes on 127.0.0.1: one `edgemill server` (SQLite, local-folder store) and one `edgemill
agent` per test, its [server] url pointing at a small TCP proxy owned by the test. The proxy stalls a
chosen request or response after a chosen number of bytes, which puts the agent exactly where the
kill must land (no sleeps guessing at it). After each kill the agent restarts with the same config and
folders, and the test checks: it serves a complete model (the v1 or the v2 answer, compared with the
package run locally), its models folder holds only the applied package, and every capture whose
Predict returned OK reached the server exactly once, byte for byte. A last test kills the agent after
the server accepted its registration but before the answer arrived: the retry, with the credential
the agent chose and stored before asking, is recognised and the device joins.
"""

from __future__ import annotations

import collections
import itertools
import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

pytest.importorskip("fastapi")

import edgemill  # noqa: E402
import edgemill.runtime as rt  # noqa: E402
from edgemill.agent.capture import CaptureRecord  # noqa: E402
from edgemill.agent.sync import package_file  # noqa: E402
from edgemill.client import AgentClient, AgentError  # noqa: E402
from edgemill.demo import zoo  # noqa: E402
from edgemill.errors import ConflictError  # noqa: E402
from edgemill.package import sign_package  # noqa: E402

from ._agent import AgentProcess, free_port, wait_for, write_config  # noqa: E402
from ._fleet import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "detector"
MIB = 1 << 20
PACKAGE_PATH = "/api/v1/agent/packages/"
PACKAGES = "GET " + PACKAGE_PATH
CAPTURES = "PUT /api/v1/agent/captures/"


# --- a proxy that stalls one transfer at a chosen byte ----------------------------------------------


@dataclass
class Stall:
    """Hold a matching request (side "request") or its response (side "response") after ``after`` bytes
    of the body (``from_body``) or of the whole stream; ``hit`` is set once bytes are being held back."""

    match: str  # "METHOD /path-prefix"
    side: str
    after: int
    from_body: bool = True
    times: int = 1
    hit: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    targets: list[str] = field(default_factory=list)  # the request targets it held


@dataclass
class Exchange:
    """One request through the proxy and what the server answered (None: no answer reached the proxy)."""

    method: str
    target: str
    status: int | None = None
    complete: threading.Event = field(default_factory=threading.Event)  # the whole response went to the agent
    complete_at: float = 0.0


class _Connection:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class StallingProxy:
    """TCP proxy from the agent to the server. The agent opens one connection per request, so each
    connection is one exchange; the first rule that matches its request line may stall it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.exchanges: list[Exchange] = []
        self._stalls: list[Stall] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self, match: str, side: str, after: int, *, from_body: bool = True, times: int = 1) -> Stall:
        stall = Stall(match, side, after, from_body, times)
        with self._lock:
            self._stalls.append(stall)
        return stall

    def release(self, stall: Stall) -> None:
        with self._lock:
            if stall in self._stalls:
                self._stalls.remove(stall)
        stall.released.set()

    def find(self, method: str, prefix: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.method == method and e.target.startswith(prefix)]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            stalls = list(self._stalls)
        for stall in stalls:
            self.release(stall)
        self.listener.close()

    def _claim(self, line: str) -> Stall | None:
        with self._lock:
            for stall in self._stalls:
                if stall.times > 0 and line.startswith(stall.match):
                    stall.times -= 1
                    stall.targets.append(line.split(" ", 1)[1])
                    return stall
        return None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        conn = _Connection(client, upstream)
        head = bytearray()
        client.settimeout(10)
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(65536)
                if not data:
                    break
                head += data
        except OSError:
            pass
        request_line = bytes(head.split(b"\r\n", 1)[0]).decode("latin-1").split(" ")
        if len(request_line) < 2:
            conn.close()
            return
        client.settimeout(None)
        upstream.settimeout(None)
        exchange = Exchange(request_line[0], request_line[1])
        with self._lock:
            self.exchanges.append(exchange)
        stall = self._claim(f"{exchange.method} {exchange.target}")
        threading.Thread(target=self._pump, args=(conn, client, upstream, bytes(head),
                                                  stall if stall and stall.side == "request" else None, None),
                         daemon=True).start()
        self._pump(conn, upstream, client, b"", stall if stall and stall.side == "response" else None, exchange)

    def _pump(self, conn: _Connection, src: socket.socket, dst: socket.socket, first: bytes, stall: Stall | None,
              exchange: Exchange | None) -> None:
        """Copy ``src`` to ``dst``, holding back what ``stall`` says. ``exchange`` marks the response side."""
        pending = bytearray()
        received = forwarded = 0
        head = bytearray()
        head_end: int | None = None
        length: int | None = None
        limit = None if stall is None or stall.from_body else stall.after
        data: bytes | None = first
        while True:
            if data:
                received += len(data)
                pending += data
                if head_end is None:
                    head += data
                    index = head.find(b"\r\n\r\n")
                    if index >= 0:
                        head_end = index + 4
                        if stall is not None and stall.from_body:
                            limit = head_end + stall.after
                        if exchange is not None:
                            lines = bytes(head[:index]).decode("latin-1").split("\r\n")
                            exchange.status = int(lines[0].split(" ")[1])
                            for line in lines[1:]:
                                name, _, value = line.partition(":")
                                if name.strip().lower() == "content-length":
                                    length = int(value.strip())
            if stall is None or stall.released.is_set() or limit is None:
                allowed = received
            else:
                allowed = min(received, limit)
                if received > limit:
                    stall.hit.set()
            if allowed > forwarded:
                try:
                    dst.sendall(pending[: allowed - forwarded])
                except OSError:
                    conn.close()
                    return
                del pending[: allowed - forwarded]
                forwarded = allowed
                if exchange is not None and head_end is not None and length is not None \
                        and forwarded >= head_end + length and not exchange.complete.is_set():
                    exchange.complete_at = time.monotonic()
                    exchange.complete.set()
            if conn.closed:
                return
            try:
                readable, _, _ = select.select([src], [], [], 0.02)
                data = src.recv(65536) if readable else b""
                if readable and not data:
                    data = None  # end of stream
            except (OSError, ValueError):
                data = None
            if data is None:
                if exchange is None:  # the agent closed its end, or died: the request is over
                    conn.close()
                    return
                while stall is not None and not stall.released.is_set() and not conn.closed:
                    time.sleep(0.02)  # the server finished; the agent still waits for what is held
                if not conn.closed and pending:
                    try:
                        dst.sendall(pending)
                    except OSError:
                        pass
                conn.close()
                return


# --- packages, server, agents -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Version:
    version: str
    path: Path
    package_id: str
    expected: np.ndarray  # the logits for X, run locally


X = np.random.default_rng(7).standard_normal((1, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def versions(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Version]:
    """detector 1.0.0 and 2.0.0: same inputs, different weights, 2.6 MB each (several 1 MiB download
    chunks, and a load long enough to be killed in)."""
    out = tmp_path_factory.mktemp("kill-packages")
    result = {}
    for version, seed in (("1.0.0", 1), ("2.0.0", 2)):
        source = out / f"{version}.onnx"
        onnx.save(zoo.mlp(features=64, hidden=(2048, 256), classes=4, seed=seed), str(source))
        path = edgemill.compile(source, output=out / f"{MODEL}-{version}.emp", measure=False, name=MODEL,
                                version=version).path
        sign_package(path, keypair[0])
        model = rt.load(path)
        result[version] = Version(version, path, model.package_id, model.run({"features": X})["logits"])
    assert not np.allclose(result["1.0.0"].expected, result["2.0.0"].expected, atol=1e-3)
    return result


@dataclass
class Fleet:
    server: ServerProcess
    proxy: StallingProxy
    api: Any

    def token(self, fleet: str) -> str:
        self.api.request("POST", "/api/v1/fleets", body={"name": fleet})
        return self.api.request("POST", f"/api/v1/fleets/{fleet}/registration-tokens", body={"uses": 1})["token"]

    def deploy(self, fleet: str, device: str, version: str) -> int:
        strategy = {"canary_percent": 100, "bake_time_s": 0, "gates": {"min_requests": 1_000_000}}
        return int(self.api.request("POST", "/api/v1/deployments", body={
            "model": MODEL, "version": version, "fleet": fleet, "devices": [device], "strategy": strategy})["id"])

    def registered(self, device: str) -> bool:
        return any(d["name"] == device for d in self.api.request("GET", "/api/v1/devices", query={"fleet": device}))

    def rollback(self, deployment_id: int) -> None:
        for attempt in range(5):  # the server asks to retry when its rollout tick changed the deployment meanwhile
            try:
                self.api.request("POST", f"/api/v1/deployments/{deployment_id}/rollback")
                return
            except ConflictError as exc:
                if "changed while" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.1)

    def captures(self, device: str) -> list[dict[str, Any]]:
        return list(self.api.request("GET", "/api/v1/captures", query={"device": device, "limit": 1000}))

    def stored(self, key: str) -> CaptureRecord:
        return CaptureRecord.decode((self.server.data_dir / "store" / key).read_bytes())


@pytest.fixture(scope="module")
def server(keypair: tuple[Path, Path], versions: dict[str, Version],
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("kill-server")
    with ServerProcess(data, keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s", "0.5",
                       "--offline-after-s", "300") as server:
        for version in versions.values():
            server.client().push(version.path)
        yield server


@pytest.fixture
def fleet(server: ServerProcess) -> Any:
    """The module's server behind a proxy of this test's own (its exchanges are this test's alone)."""
    proxy = StallingProxy(server.port)
    try:
        yield Fleet(server, proxy, server.client())
    finally:
        proxy.close()


@dataclass
class Device:
    name: str
    home: Path
    config: Path
    agent: AgentProcess | None = None

    @property
    def models(self) -> Path:
        return self.home / "models"

    def start(self) -> AgentProcess:
        self.agent = AgentProcess(self.config).start()
        return self.agent

    def kill(self) -> None:
        assert self.agent is not None and self.agent.proc is not None
        self.agent.proc.kill()  # SIGKILL
        self.agent.proc.wait(10)

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.__exit__(None, None, None)

    def applied(self) -> str | None:
        """The package id the agent's state file says it applied (None: none)."""
        try:
            state = json.loads((self.home / "state" / "sync.json").read_text())
        except (OSError, ValueError):
            return None
        entry = state.get("applied", {}).get(MODEL)
        return entry["package_id"] if entry else None

    def queued(self) -> int:
        return len(list((self.home / "captures").rglob("*.emc")))


def make_device(tmp: Path, fleet: Fleet, name: str, public_key: Path) -> Device:
    home = tmp / name
    home.mkdir()
    (home / "token").write_text(fleet.token(name) + "\n")
    config = write_config(home / "agent.toml", {
        "device": {"name": name, "fleet": name},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": ""},
        "models": {"directory": "models", "trusted_keys": [str(public_key)]},
        "capture": {"directory": "captures", "store": "server", "upload_interval_s": 0.1, "upload_batch_size": 4,
                    "retry_backoff_max_s": 0.5, "sample_rates": {MODEL: 1.0}},
        "server": {"url": fleet.proxy.url, "token_file": "token", "heartbeat_interval_s": 0.5, "long_poll_s": 2,
                   "request_timeout_s": 10, "max_backoff_s": 1},
    })
    return Device(name, home, config)


def served(device: Device, versions: dict[str, Version]) -> Version | None:
    """The version the agent serves, after checking its answer is that version's, complete."""
    assert device.agent is not None
    with AgentClient(device.agent.address, timeout=10) as client:
        listed = {m["name"]: m["version"] for m in client.list_models()}
        if MODEL not in listed:
            return None
        result = client.predict(MODEL, {"features": X})
    version = versions[result.model_version]
    np.testing.assert_allclose(result.outputs["logits"], version.expected, rtol=1e-4, atol=1e-5)
    return version


def serves(device: Device, versions: dict[str, Version], version: str, timeout: float = 30) -> bool:
    def check() -> bool:
        current = served(device, versions)
        return current is not None and current.version == version
    return bool(wait_for(check, timeout, 0.05))


def sync_files(device: Device) -> list[str]:
    return sorted(p.name for p in device.models.iterdir()) if device.models.is_dir() else []


# --- SIGKILL during a capture upload --------------------------------------------------------------


def _features(index: int) -> np.ndarray:
    x = np.random.default_rng(index).standard_normal((1, 64)).astype(np.float32)
    x[0, 0] = index  # names the request in a sampled capture, whose id the agent makes up
    return x


class Senders:
    """Two client threads sending Predicts: even indices with capture=True and a known id (accepted
    once Predict returns OK), odd ones plain (sampled at 100%, written off the request path)."""

    def __init__(self, address: str, device: str, counter: Any, book: dict[str, set[int]]) -> None:
        self.address, self.device, self.counter, self.book = address, device, counter, book
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with AgentClient(self.address, timeout=5) as client:
            while not self.stop.is_set():
                index = next(self.counter)
                explicit = index % 2 == 0
                with self.lock:
                    self.book["attempted" if explicit else "plain_attempted"].add(index)
                try:
                    result = client.predict(MODEL, {"features": _features(index)}, capture=explicit,
                                            capture_id=capture_id(self.device, index) if explicit else "")
                except AgentError:
                    return  # the agent is gone
                wrong = explicit and result.capture_id != capture_id(self.device, index)
                with self.lock:
                    self.book["wrong_id" if wrong else "accepted" if explicit else "plain_ok"].add(index)

    def accepted(self) -> int:
        with self.lock:
            return len(self.book["accepted"])

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def capture_id(device: str, index: int) -> str:
    return f"{device}-{index:06d}"


def test_sigkill_mid_capture_upload_every_accepted_capture_arrives_once(
        fleet: Fleet, versions: dict[str, Version], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    device = make_device(tmp_path, fleet, "kill-capture", keypair[1])
    book: dict[str, set[int]] = {k: set() for k in ("attempted", "accepted", "plain_attempted", "plain_ok", "wrong_id")}
    counter = itertools.count()
    stalled: dict[str, str] = {}
    try:
        device.start()
        assert wait_for(lambda: fleet.registered(device.name), 20)
        fleet.deploy(device.name, device.name, "1.0.0")
        assert serves(device, versions, "1.0.0")
        # 1: the PUT's body stops half-way (the server has a torn request); 2: the server stored the
        # capture and answered 201, but the answer never reaches the agent.
        for kind, side, after in (("mid-body", "request", 200), ("answered-unheard", "response", 0)):
            stall = fleet.proxy.stall(CAPTURES, side, after, from_body=side == "request")
            assert device.agent is not None
            senders = Senders(device.agent.address, device.name, counter, book)
            before = senders.accepted()
            assert stall.hit.wait(30), f"no capture upload reached the {kind} stall"
            assert wait_for(lambda: senders.accepted() >= before + 20, 30)
            device.kill()
            senders.join()
            target = stall.targets[0]
            stalled[kind] = target.split("/")[-1].split("?")[0]
            fleet.proxy.release(stall)
            device.start()
            assert served(device, versions) is versions["1.0.0"]
            assert sync_files(device) == [package_file(MODEL, versions["1.0.0"].package_id)]
            assert wait_for(lambda: device.queued() == 0, 30)  # the held capture went out again: next phase
        with AgentClient(device.agent.address) as client:  # type: ignore[union-attr]
            for index in range(900_000, 900_010):  # a few after the last restart
                book["attempted"].add(index)
                client.predict(MODEL, {"features": _features(index)}, capture=True,
                               capture_id=capture_id(device.name, index))
                book["accepted"].add(index)
        wanted = {capture_id(device.name, i) for i in book["accepted"]}
        assert wait_for(lambda: wanted <= {c["capture_id"] for c in fleet.captures(device.name)}
                        and device.queued() == 0, 60), (len(wanted), device.queued())
    finally:
        device.stop()

    assert not book["wrong_id"]
    rows = fleet.captures(device.name)
    ids = collections.Counter(c["capture_id"] for c in rows)
    assert max(ids.values()) == 1 and len(rows) < 1000  # none twice; the listing was not cut
    explicit = {i for i in book["attempted"] if capture_id(device.name, i) in ids}
    assert book["accepted"] <= explicit  # every accepted capture arrived...
    sampled_indices = []
    probes = 0
    local = rt.load(versions["1.0.0"].path)
    for row in rows:
        record = fleet.stored(row["key"])
        assert record.capture_id == row["capture_id"] and record.device == device.name
        assert record.model_version == "1.0.0"
        if record.sampled and np.array_equal(record.inputs["features"], X):  # the test's own checks, sampled
            np.testing.assert_allclose(record.outputs["logits"], versions["1.0.0"].expected, rtol=1e-4, atol=1e-5)
            probes += 1
            continue
        index = int(record.inputs["features"][0, 0])
        np.testing.assert_array_equal(record.inputs["features"], _features(index))  # ...whole
        np.testing.assert_allclose(record.outputs["logits"], local.run({"features": _features(index)})["logits"],
                                   rtol=1e-4, atol=1e-5)
        if record.sampled:
            sampled_indices.append(index)
        else:
            assert row["capture_id"] == capture_id(device.name, index) and index in book["attempted"]
    sampled = collections.Counter(sampled_indices)
    assert not sampled or max(sampled.values()) == 1  # one sample per Predict, never a second copy
    assert set(sampled) <= book["plain_attempted"]
    objects = list((fleet.server.data_dir / "store" / "captures" / device.name).rglob("*.emc"))
    assert len(objects) == len(rows) == len(explicit) + len(sampled) + probes
    # The stalled uploads were sent again after the restart and landed once; the answered one was
    # already stored, so the server said so (200) instead of storing a second copy.
    statuses = {kind: [e.status for e in fleet.proxy.find("PUT", f"/api/v1/agent/captures/{cid}?")]
                for kind, cid in stalled.items()}
    assert statuses["mid-body"][0] is None and statuses["mid-body"][-1] == 201, statuses
    assert statuses["answered-unheard"][:2] == [201, 200], statuses
    assert ids[stalled["mid-body"]] == 1 and ids[stalled["answered-unheard"]] == 1
    print(f"\ncapture kill: explicit attempted {len(book['attempted'])}, accepted {len(book['accepted'])}, "
          f"arrived {len(explicit)} (each once); plain predicts ok {len(book['plain_ok'])}, sampled captures "
          f"arrived {len(sampled)} (each once); stalled uploads {statuses}")


# --- SIGKILL during a package download ------------------------------------------------------------


def test_sigkill_mid_package_download_serves_the_old_version_then_the_new(
        fleet: Fleet, versions: dict[str, Version], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    v1, v2 = versions["1.0.0"], versions["2.0.0"]
    device = make_device(tmp_path, fleet, "kill-download", keypair[1])
    partial = device.models / f".{MODEL}.{v2.package_id[:12]}.partial"
    try:
        device.start()
        assert wait_for(lambda: fleet.registered(device.name), 20)
        fleet.deploy(device.name, device.name, "1.0.0")
        assert serves(device, versions, "1.0.0")
        stall = fleet.proxy.stall(PACKAGES + v2.package_id, "response", 3 * MIB // 2)
        fleet.deploy(device.name, device.name, "2.0.0")
        assert stall.hit.wait(30)
        assert wait_for(lambda: partial.exists() and partial.stat().st_size >= MIB, 10)  # the first chunk is on disk
        device.kill()
        size = partial.stat().st_size
        assert MIB <= size < v2.path.stat().st_size  # killed mid-download: a half-written package on disk
        fleet.proxy.release(stall)

        hold = fleet.proxy.stall(PACKAGES, "response", 0, from_body=False)  # the next download waits
        device.start()
        assert served(device, versions) == v1  # the old version, complete
        assert sync_files(device) == [package_file(MODEL, v1.package_id)]  # the half-written one is gone
        assert hold.hit.wait(20)  # and it is being downloaded again
        fleet.proxy.release(hold)
        assert serves(device, versions, "2.0.0")
        assert wait_for(lambda: sync_files(device) == [package_file(MODEL, v2.package_id)], 10), sync_files(device)
        assert device.applied() == v2.package_id
        print(f"\ndownload kill: killed with {size} of {v2.path.stat().st_size} bytes written; after restart "
              "served 1.0.0, then 2.0.0")
    finally:
        device.stop()


# --- SIGKILL during a model swap ------------------------------------------------------------------


def completed_downloads(fleet: Fleet, version: Version) -> list[Exchange]:
    return [e for e in fleet.proxy.find("GET", PACKAGE_PATH + version.package_id) if e.complete.is_set()]


def _phase(device: Device, old: Version, new: Version) -> str:
    """Where the kill landed, read from the files it left (before the restart cleans up)."""
    files = set(sync_files(device))
    applied = device.applied()
    if f".{MODEL}.{new.package_id[:12]}.partial" in files:
        return "download/fsync"
    if applied == old.package_id:
        return "verify/load/health-check" if package_file(MODEL, new.package_id) in files else "no new file"
    if applied == new.package_id:
        return "swapped, old file not yet removed" if package_file(MODEL, old.package_id) in files else "done"
    return f"unexpected: applied {applied}, files {sorted(files)}"


def test_sigkill_during_model_swaps_always_serves_a_whole_version(
        fleet: Fleet, versions: dict[str, Version], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    device = make_device(tmp_path, fleet, "kill-swap", keypair[1])
    outcomes: list[tuple[str, str, str]] = []
    accepted: list[str] = []
    try:
        device.start()
        assert wait_for(lambda: fleet.registered(device.name), 20)
        deployment = fleet.deploy(device.name, device.name, "1.0.0")
        assert serves(device, versions, "1.0.0")
        # Calibrate: how long a swap takes from the package's last byte to the swap being recorded.
        deployment = fleet.deploy(device.name, device.name, "2.0.0")
        assert wait_for(lambda: completed_downloads(fleet, versions["2.0.0"]), 30, 0.001)
        done_at = completed_downloads(fleet, versions["2.0.0"])[0].complete_at
        assert wait_for(lambda: device.applied() == versions["2.0.0"].package_id, 30, 0.001)
        window = time.monotonic() - done_at
        assert serves(device, versions, "2.0.0")
        # Kills at delays spread over that window after the package's last byte, then the moment the
        # new file is renamed into place (verify/load/health-check under way) and the moment the swap
        # is recorded. v2 -> v1 (a rollback), then v1 -> v2 (a new deployment), and so on.
        triggers = [f"{window * i / 5 * 1000:.1f} ms" for i in range(6)] + ["renamed", "recorded"] * 2
        target, old = versions["1.0.0"], versions["2.0.0"]
        fleet.rollback(deployment)
        seen = len(completed_downloads(fleet, target))
        for index, trigger in enumerate(triggers):
            def fresh() -> Exchange | None:
                found = completed_downloads(fleet, target)
                return found[-1] if len(found) > seen else None
            exchange = wait_for(fresh, 30, 0.001)
            assert exchange is not None, f"kill {index}: {target.version} was not downloaded"
            final = device.models / package_file(MODEL, target.package_id)
            if trigger == "renamed":
                assert wait_for(final.exists, 10, 0.001)
            elif trigger == "recorded":
                assert wait_for(lambda: device.applied() == target.package_id, 10, 0.001)
            else:
                time.sleep(max(0.0, exchange.complete_at + float(trigger.split()[0]) / 1000 - time.monotonic()))
            device.kill()
            phase = _phase(device, old, target)
            hold = fleet.proxy.stall(PACKAGES, "response", 0, from_body=False)  # no new download during the checks
            device.start()
            now = served(device, versions)  # its answer is compared with the version it claims
            assert now is (target if phase in ("done", "swapped, old file not yet removed") else old), \
                f"kill {index} ({trigger}, {phase}): serves {now and now.version}"
            assert device.applied() == now.package_id  # type: ignore[union-attr]
            assert sync_files(device) == [package_file(MODEL, now.package_id)], (phase, sync_files(device))  # type: ignore[union-attr]
            with AgentClient(device.agent.address) as client:  # type: ignore[union-attr]
                client.predict(MODEL, {"features": X}, capture=True, capture_id=f"swap-{index}")
                accepted.append(f"swap-{index}")
            outcomes.append((trigger, phase, now.version))  # type: ignore[union-attr]
            if now is target:  # swapped before the kill: order the other version next
                if target.version == "2.0.0":
                    fleet.rollback(deployment)
                else:
                    deployment = fleet.deploy(device.name, device.name, "2.0.0")
                target, old = old, target
            seen = len(completed_downloads(fleet, target))
            fleet.proxy.release(hold)
        assert serves(device, versions, target.version)
        assert wait_for(lambda: sync_files(device) == [package_file(MODEL, target.package_id)], 10)
        wanted = set(accepted)
        assert wait_for(lambda: wanted <= {c["capture_id"] for c in fleet.captures(device.name)}
                        and device.queued() == 0, 30)
    finally:
        device.stop()
    ids = collections.Counter(c["capture_id"] for c in fleet.captures(device.name))
    assert all(ids[c] == 1 for c in accepted) and max(ids.values()) == 1
    kept = collections.Counter(version == "1.0.0" for _, _, version in outcomes)
    new_side = {"done", "swapped, old file not yet removed"}
    assert any(p in new_side for _, p, _ in outcomes) and any(p not in new_side for _, p, _ in outcomes), outcomes
    print(f"\nswap kill: window {window * 1000:.0f} ms; " + "; ".join(
        f"{t}: {p} -> serves {v}" for t, p, v in outcomes) + f"; served 1.0.0/2.0.0 after restart: {dict(kept)}")



# --- SIGKILL right after the server accepted the registration -------------------------------------


def test_sigkill_after_the_server_registered_the_device_it_still_joins(
        fleet: Fleet, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    device = make_device(tmp_path, fleet, "kill-register", keypair[1])
    stall = fleet.proxy.stall("POST /api/v1/agent/register", "response", 0, from_body=False)
    try:
        device.start()
        assert stall.hit.wait(20)  # the server registered the device and answered; the agent never hears it
        device.kill()
        fleet.proxy.release(stall)
        device.start()
        joined = wait_for(lambda: fleet.api.request("GET", f"/api/v1/devices/{device.name}")["last_seen_at"], 5)
    finally:
        device.stop()
    statuses = [e.status for e in fleet.proxy.find("POST", "/api/v1/agent/register")]
    assert joined, f"the device never heartbeat; registration answers: {statuses}"
    assert statuses == [201, 201], statuses  # the first answer was lost; the retry was recognised, not refused
