"""Environment faults around real agents, all real processes on 127.0.0.1 (issue 7, "Fault tests"):

* the control plane killed (SIGKILL), or its PostgreSQL taken away behind a TCP proxy, while agents
  predict with every request sampled for capture: every prediction is answered, captures and metrics
  wait within their bounds and catch up afterwards exactly once, the heartbeat sequence continues,
  and a rollout that was baking during the outage takes each step once;
* the object store (SeaweedFS behind a proxy) down, then slow: uploads back off (attempts counted at
  the proxy), resume, and every accepted capture is stored exactly once, direct and through the server;
* the disk under the capture queue full (a real tmpfs where mounting is allowed, and ENOSPC injected
  into the agent process everywhere): the agent keeps serving, stops capturing, says so in its log and
  heartbeat, and resumes when space returns;
* the device clock an hour ahead or behind the server's: registration, heartbeats, a rollout with
  bake time and capture uploads behave.

"Minutes" of outage are scaled down to seconds (``OUTAGE_S``) with the agents' backoff cap scaled the
same way (``max_backoff_s``); the logic under test is the same.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")

from edgemill.agent.capture import CaptureRecord  # noqa: E402
from edgemill.client import AgentClient, AgentError  # noqa: E402

from ._agent import AgentProcess, free_port, wait_for, write_config  # noqa: E402
from ._fleet import (ServerProcess, build_model_package, drop_postgres_database, fresh_postgres_database,  # noqa: E402
                     postgres_url)
from ._s3server import s3_server  # noqa: E402, F401  (a fixture)
from ._tcp import pump  # noqa: E402

OUTAGE_S = 6.0  # stands for "minutes": the agents' backoff cap below is scaled down alike
MAX_BACKOFF_S = 2.0
FEATURES = 64


# --- helpers: packages, processes, proxies ------------------------------------------------------


@pytest.fixture(scope="module")
def versions(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fault-packages")
    return {"1.0.0": build_model_package(out, "detector", "1.0.0", FEATURES, keypair[0]),
            "2.0.0": build_model_package(out, "detector", "2.0.0", FEATURES, keypair[0], seed=2)}


SITECUSTOMIZE = '''"""Faults for tests/test_faults_env.py, switched on per process by environment variables."""
import os

_offset = float(os.environ.get("EDGEMILL_FAULT_CLOCK_OFFSET_S") or 0)
if _offset:  # the wall clock is off; monotonic time is not (as on a device whose RTC is wrong)
    import datetime as _dt
    import time as _time

    class _Plain:  # a callable that, like the built-ins it replaces, does not bind as a method
        def __init__(self, function):
            self.function = function

        def __call__(self, *args):
            return self.function(*args)

    import sys as _sys

    def _off():
        # gRPC's C core keeps its own (unpatched) real-time clock and its Python layer turns deadlines
        # into that clock with time.time(): on a real device both are off alike, so gRPC gets the real one.
        caller = _sys._getframe(3).f_globals.get("__name__", "")
        return 0.0 if caller.startswith("grpc") else _offset

    _time_real, _time_ns_real = _time.time, _time.time_ns
    _localtime, _gmtime, _strftime = _time.localtime, _time.gmtime, _time.strftime
    _time.time = _Plain(lambda: _time_real() + _off())
    _time.time_ns = _Plain(lambda: _time_ns_real() + int(_off() * 1e9))
    _time.localtime = _Plain(lambda secs=None: _localtime(_time.time() if secs is None else secs))
    _time.gmtime = _Plain(lambda secs=None: _gmtime(_time.time() if secs is None else secs))
    _time.strftime = _Plain(lambda fmt, t=None: _strftime(fmt, _time.localtime() if t is None else t))

    class _SkewedDateTime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return super().now(tz) + _dt.timedelta(seconds=_offset)

        @classmethod
        def utcnow(cls):
            return super().utcnow() + _dt.timedelta(seconds=_offset)

        @classmethod
        def today(cls):
            return cls.now()

    _dt.datetime = _SkewedDateTime

_flag, _root = os.environ.get("EDGEMILL_FAULT_ENOSPC_FLAG"), os.environ.get("EDGEMILL_FAULT_ENOSPC_ROOT")
if _flag and _root:  # while the flag file exists, every write to a file under the root fails: disk full
    import errno as _errno

    _root = os.path.realpath(_root)
    _write, _pwrite = os.write, os.pwrite

    def _full(fd):
        if not os.path.exists(_flag):
            return False
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return target == _root or target.startswith(_root + os.sep)

    def _no_space():
        return OSError(_errno.ENOSPC, os.strerror(_errno.ENOSPC))

    def write(fd, data):
        if _full(fd):
            raise _no_space()
        return _write(fd, data)

    def pwrite(fd, data, offset):
        if _full(fd):
            raise _no_space()
        return _pwrite(fd, data, offset)

    os.write, os.pwrite = write, pwrite
'''


def fault_env(tmp: Path, **variables: str) -> dict[str, str]:
    """Environment for an agent process with the test's sitecustomize (faults off unless set)."""
    folder = tmp / "fault-site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **variables}


class TcpProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of ``target_port``, on a fixed port across modes.

    Modes: ``up`` forwards; ``down`` closes the listener and every live connection (connection
    refused, like a stopped host); ``reset`` accepts each connection and closes it at once (a backend
    gone behind a load balancer), counting it. ``delay_s`` > 0 holds every chunk that long.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.mode = "down"
        self.delay_s = 0.0
        self.connections = 0  # accepted in any mode
        self.resets = 0  # accepted and closed at once in "reset" mode
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in ("up", "down", "reset")
        with self._lock:
            self.mode = mode
        if mode == "down":
            self._close_listener()
        else:
            self._open_listener()
        if mode != "up":
            self.cut()  # kept-alive connections end too

    def cut(self) -> None:
        """Close every live connection (both ends)."""
        with self._lock:
            live, self._live = list(self._live), set()
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _open_listener(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + 10
            while True:
                try:
                    listener.bind(("127.0.0.1", self.port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            listener.listen(128)
            listener.settimeout(0.1)
            self._listener = listener
            self._stop.clear()
            self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
            self._thread.start()

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5)
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                mode = self.mode
                if mode == "reset":
                    self.resets += 1
            if mode == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._live |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            pump(source, sink, self.delay_s)
        finally:
            with self._lock:
                self._live -= {source, sink}

    def close(self) -> None:
        self._close_listener()
        self.cut()


def scrape(agent: AgentProcess) -> dict[str, float]:
    """The agent's capture and control-plane gauges by stat: {"capture.queued": 3.0, "sync.seq": 12.0, ...}."""
    with urllib.request.urlopen(agent.metrics_url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for name, prefix in (("edgemill_agent_capture", "capture"), ("edgemill_agent_control_plane", "sync")):
        for stat, value in re.findall(rf'^{name}{{stat="([a-z_]+)"}} (\S+)$', text, re.M):
            out[f"{prefix}.{stat}"] = float(value)
    return out


def predictions_served(agent: AgentProcess) -> float:
    with urllib.request.urlopen(agent.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r'^edgemill_agent_requests_total{[^}]*model="detector"[^}]*} (\S+)$', text, re.M))


def http_status(url: str, api_key: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def db_rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def agent_home(tmp: Path, name: str, public_key: Path, *, server_url: str = "", token: str = "",
               capture: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
               models: dict[str, Any] | None = None) -> Path:
    home = tmp / name
    home.mkdir()
    sections: dict[str, dict[str, Any]] = {
        "device": {"name": name},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": f"127.0.0.1:{free_port()}"},
        "models": {"directory": "models", "trusted_keys": [str(public_key)], **(models or {})},
        "capture": {"directory": "captures", "store": "server", "sample_rates": {"detector": 1.0},
                    "upload_interval_s": 0.2, "upload_batch_size": 8, "retry_backoff_max_s": MAX_BACKOFF_S,
                    **(capture or {})},
    }
    if server_url:
        (home / "token").write_text(token + "\n")
        sections["server"] = {"url": server_url, "token_file": "token", "heartbeat_interval_s": 0.5, "long_poll_s": 2,
                              "request_timeout_s": 5, "max_backoff_s": MAX_BACKOFF_S, **(server or {})}
    return write_config(home / "agent.toml", sections)


@dataclass
class Traffic:
    """Predicts on ``agent`` from a thread until stopped; every ``explicit_every``-th request also sends
    an explicit capture with a known id. Records every outcome."""

    agent: AgentProcess
    name: str
    explicit_every: int = 0
    interval_s: float = 0.03
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    explicit: list[str] = field(default_factory=list)  # accepted explicit capture ids
    explicit_refused: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        x = np.random.default_rng(len(self.name)).standard_normal((1, FEATURES)).astype(np.float32)
        n = 0
        with AgentClient(self.agent.address, timeout=10) as client:
            while not self._stop.is_set():
                n += 1
                started = time.perf_counter()
                try:
                    client.predict("detector", {"features": x})
                    self.ok += 1
                    self.latencies_ms.append((time.perf_counter() - started) * 1e3)
                except AgentError as exc:
                    self.errors.append(str(exc))
                if self.explicit_every and n % self.explicit_every == 0:
                    capture_id = f"{self.name}-x{n:05d}"
                    try:
                        client.capture_data("detector", {"features": x}, {}, {"n": str(n).encode()},
                                            capture_id=capture_id)
                        self.explicit.append(capture_id)
                    except AgentError as exc:
                        self.explicit_refused.append(f"{capture_id}: {exc}")
                self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def expected_sampled(stats: dict[str, float], served: float) -> int:
    """Sampled captures the agent accepted: every served prediction, less the ones it skipped."""
    return int(served - stats["capture.skipped_full"] - stats["capture.skipped_busy"])


def wait_drained(agent: AgentProcess, timeout: float = 60) -> dict[str, float]:
    assert wait_for(lambda: scrape(agent)["capture.queued"] == 0, timeout, 0.2), scrape(agent)
    return scrape(agent)


def note(line: str) -> None:
    """Measured figures go to the test log (run with -s to see them; the notes file quotes them)."""
    print("\n[faults] " + line)


def online(api: Any, fleet: str) -> int:
    return len([d for d in api.request("GET", "/api/v1/devices", query={"fleet": fleet}) if d["status"] == "online"])


def stop_all(*processes: Any) -> None:
    for process in processes:
        try:
            process.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - stop the others regardless
            pass


# --- control plane away -------------------------------------------------------------------------


FAULTS = ["server-killed", pytest.param("database-away", marks=pytest.mark.skipif(
    postgres_url() is None, reason="needs PostgreSQL: set EDGEMILL_TEST_POSTGRES_URL (the proxy stands in for its host)"))]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_control_plane_away_agents_keep_serving_and_catch_up_exactly_once(
        fault: str, tmp_path: Path, keypair: tuple[Path, Path], versions: dict[str, Path]) -> None:
    base = postgres_url()
    db = fresh_postgres_database(base) if base else f"sqlite:///{tmp_path / 'server' / 'edgemill.db'}"
    proxy = None
    server_db = db
    if fault == "database-away":
        from sqlalchemy.engine import make_url

        pg = make_url(db)
        proxy = TcpProxy(pg.port or 5432)
        proxy.set_mode("up")
        server_db = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = ServerProcess(tmp_path / "server", keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s", "0.5",
                           "--offline-after-s", "60", db=server_db)
    agents: dict[str, AgentProcess] = {}
    traffic: list[Traffic] = []
    try:
        server.start()
        api = server.client()
        for version in versions.values():
            api.push(version)
        api.request("POST", "/api/v1/fleets", body={"name": "plant"})
        token = api.request("POST", "/api/v1/fleets/plant/registration-tokens", body={"uses": 2})["token"]
        # "a" queues without a practical bound; "b" may queue 12 captures: the bound must hold.
        agents = {"plant-a": AgentProcess(agent_home(tmp_path, "plant-a", keypair[1], server_url=server.url, token=token)),
                  "plant-b": AgentProcess(agent_home(tmp_path, "plant-b", keypair[1], server_url=server.url, token=token,
                                                     capture={"max_queue_records": 12}))}
        for agent in agents.values():
            agent.start()
        assert wait_for(lambda: online(api, "plant") == 2, 30)
        fast = {"canary_percent": 50, "bake_time_s": 0.5, "gates": {"max_error_rate": 0.05, "min_requests": 1000}}
        d1 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "1.0.0", "fleet": "plant",
                                                              "strategy": fast})
        assert wait_for(lambda: api.request("GET", f"/api/v1/deployments/{d1['id']}")["state"] == "succeeded", 60)

        # v2 rolls with a bake time that runs out while the control plane is away.
        baking = {**fast, "bake_time_s": 2}
        d2 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "2.0.0", "fleet": "plant",
                                                              "strategy": baking})
        assert wait_for(lambda: api.request("GET", f"/api/v1/deployments/{d2['id']}")["counts"].get("updated") == 1, 60)
        traffic = [Traffic(agents["plant-a"], "plant-a", explicit_every=7).start(), Traffic(agents["plant-b"], "plant-b").start()]
        time.sleep(1.0)
        before = {name: row for name, *row in db_rows(db, "SELECT name, last_seq, last_seen_at FROM devices")}

        # --- the fault ---
        away_at = time.monotonic()
        if proxy is None:
            server.proc.kill()  # SIGKILL: no graceful anything
            server.proc.wait(10)
        else:
            proxy.set_mode("down")
        during: dict[str, dict[str, float]] = {}
        statuses: list[int] = []
        while time.monotonic() - away_at < OUTAGE_S:
            time.sleep(0.5)
            during = {name: scrape(agent) for name, agent in agents.items()}
            if proxy is not None:
                statuses.append(http_status(server.url + "/api/v1/devices", server.api_key)[0])
        served_during = {t.name: t.ok for t in traffic}
        assert all(s["sync.reachable"] == 0 for s in during.values()), during
        assert during["plant-b"]["capture.queued"] <= 12 and during["plant-b"]["capture.skipped_full"] > 0, during
        assert during["plant-a"]["capture.queued"] > 0, during
        health = http_status(server.url + "/healthz") if proxy is not None else None

        # --- back ---
        back_at = time.monotonic()
        if proxy is None:
            server.start()
        else:
            proxy.set_mode("up")
        assert wait_for(lambda: api.request("GET", f"/api/v1/deployments/{d2['id']}")["state"] == "succeeded", 60), \
            api.request("GET", f"/api/v1/deployments/{d2['id']}")
        converged_s = time.monotonic() - back_at
        for t in traffic:
            t.stop()
        stats = {name: wait_drained(agent) for name, agent in agents.items()}
        drained_s = time.monotonic() - back_at
        served = {name: predictions_served(agent) for name, agent in agents.items()}
        # The last heartbeat carries every request the agent served: the server's deltas add up to it.
        assert wait_for(lambda: all(
            db_rows(db, "SELECT coalesce(sum(m.requests), 0) FROM metric_samples m JOIN devices d ON d.id = m.device_id "
                        "WHERE d.name = :name AND m.model_name = 'detector'", name=name)[0][0] == served[name]
            for name in agents), 30, 0.2)
        after = {name: row for name, *row in db_rows(db, "SELECT name, last_seq, last_seen_at FROM devices")}

        # Every prediction answered, before, during and after.
        for t in traffic:
            assert t.errors == [] and t.ok > 0, (t.name, t.errors[:3])
        assert served["plant-a"] == traffic[0].ok and served["plant-b"] == traffic[1].ok

        # Every accepted capture arrived exactly once (one row, one object), nothing else arrived.
        arrived = {name: [r[0] for r in db_rows(db, "SELECT c.capture_id FROM captures c JOIN devices d ON "
                                                    "d.id = c.device_id WHERE d.name = :name", name=name)]
                   for name in agents}
        objects = {name: sorted(p.stem for p in (tmp_path / "server" / "store" / "captures" / name).rglob("*.emc"))
                   for name in agents}
        for name in agents:
            explicit = traffic[0].explicit if name == "plant-a" else []
            expected = expected_sampled(stats[name], served[name]) + len(explicit)
            assert len(arrived[name]) == len(set(arrived[name])) == expected == stats[name]["capture.uploaded"], \
                (name, len(arrived[name]), expected, stats[name])
            assert objects[name] == sorted(arrived[name])
            assert set(explicit) <= set(arrived[name])
        assert traffic[0].explicit_refused == []
        assert stats["plant-b"]["capture.skipped_full"] > 0  # the bound held; the rest was skipped, not queued

        # Heartbeats resumed: the sequence continued (no stale refusals), last seen moved on.
        for name, agent in agents.items():
            assert after[name][0] > before[name][0] and after[name][1] > before[name][1], (before, after)
            assert "stale" not in agent.stderr()
        # Retries backed off: failed attempts in a row stay within what the capped backoff allows.
        away_s = back_at - away_at
        allowed = 4 + int(away_s / (MAX_BACKOFF_S / 2))
        attempts = {name: during[name]["sync.failed_attempts"] for name in agents}
        assert all(0 < a <= allowed for a in attempts.values()), (attempts, allowed)
        upload_errors = {name: stats[name]["capture.upload_errors"] for name in agents}
        assert all(e <= 8 * allowed for e in upload_errors.values()), (upload_errors, 8 * allowed)

        # No deployment step twice: two waves, each device updated once, one success; each agent applied v2 once.
        detail = api.request("GET", f"/api/v1/deployments/{d2['id']}")
        kinds = [e["kind"] for e in detail["events"]]
        assert kinds.count("wave_started") == 2 and kinds.count("device_updated") == 2 and kinds.count("succeeded") == 1, kinds
        for agent in agents.values():
            assert agent.stderr().count("applying detector 2.0.0") == 1, agent.stderr()[-3000:]
            with AgentClient(agent.address) as client:
                assert {m["name"]: m["version"] for m in client.list_models()} == {"detector": "2.0.0"}
        if proxy is not None:
            assert health is not None and health[0] == 503 and health[1]["database"].startswith("error"), health
            assert statuses and all(s == 503 for s in statuses), statuses
            assert "Traceback" not in server.output()
        note(f"{fault}: away {away_s:.1f} s; predictions OK a={traffic[0].ok} b={traffic[1].ok} "
             f"(during outage a={served_during['plant-a']} b={served_during['plant-b']}), 0 errors; captures "
             f"arrived a={len(arrived['plant-a'])} (explicit {len(traffic[0].explicit)}) b={len(arrived['plant-b'])}, "
             f"expected a={expected_sampled(stats['plant-a'], served['plant-a']) + len(traffic[0].explicit)} "
             f"b={expected_sampled(stats['plant-b'], served['plant-b'])}; b skipped (bound 12) "
             f"{stats['plant-b']['capture.skipped_full']:.0f}; heartbeat attempts failed in a row {attempts} "
             f"(bound {allowed}); upload errors {upload_errors}; rollout converged {converged_s:.1f} s and queues "
             f"drained {drained_s:.1f} s after return; seq {[(before[n][0], after[n][0]) for n in agents]}; "
             f"statuses while away {sorted(set(statuses))}")
    finally:
        for t in traffic:
            t.stop()
        stop_all(*agents.values(), server)
        if proxy is not None:
            proxy.close()
        if base:
            drop_postgres_database(db)


# --- object store away, then slow ---------------------------------------------------------------


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def s3_capture_ids(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = s3_client(endpoint)
    ids: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        ids.extend(Path(o["Key"]).stem for o in page.get("Contents", []) if o["Key"].endswith(".emc"))
    return ids


def standalone_model(config: Path, package: Path) -> None:
    models = config.parent / "models"
    models.mkdir()
    (models / "detector.emp").write_bytes(package.read_bytes())


@pytest.mark.slow
def test_object_store_down_then_slow_uploads_back_off_resume_and_lose_nothing(
        s3_server: tuple[str, str, str], tmp_path: Path, keypair: tuple[Path, Path],  # noqa: F811
        versions: dict[str, Path]) -> None:
    pytest.importorskip("boto3")
    endpoint = s3_server[0]
    proxy = TcpProxy(int(endpoint.rsplit(":", 1)[1]))
    proxy.set_mode("up")
    run = os.urandom(3).hex()  # the SeaweedFS is shared by the session: own buckets
    direct_bucket, server_bucket = f"faults-direct-{run}", f"faults-server-{run}"
    server = ServerProcess(tmp_path / "server", keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s", "0.5",
                           "--store", f"s3://{server_bucket}/p", "--s3-endpoint-url", proxy.url)
    agents: dict[str, AgentProcess] = {}
    traffic: list[Traffic] = []
    try:
        server.start()
        api = server.client()
        api.request("POST", "/api/v1/fleets", body={"name": "stores"})
        token = api.request("POST", "/api/v1/fleets/stores/registration-tokens", body={"uses": 1})["token"]
        direct = agent_home(tmp_path, "store-direct", keypair[1], capture={
            "store": f"s3://{direct_bucket}/p", "s3_endpoint_url": proxy.url, "s3_region": "us-east-1"})
        via_server = agent_home(tmp_path, "store-server", keypair[1], server_url=server.url, token=token)
        for config in (direct, via_server):
            standalone_model(config, versions["1.0.0"])
        agents = {"store-direct": AgentProcess(direct), "store-server": AgentProcess(via_server)}
        for agent in agents.values():
            agent.start()
        traffic = [Traffic(agent, name).start() for name, agent in agents.items()]
        assert wait_for(lambda: all(scrape(a)["capture.uploaded"] >= 5 for a in agents.values()), 30)

        # Down: every connection to the store is reset. Nothing accepted may be lost, retries back off.
        proxy.set_mode("reset")
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        down = {name: scrape(agent) for name, agent in agents.items()}
        resets = proxy.resets
        down_s = time.monotonic() - down_at
        assert all(s["capture.upload_errors"] > 0 and s["capture.queued"] > 0 for s in down.values()), down
        store_health = http_status(server.url + "/healthz")

        # Slow: every chunk each way waits 0.25 s. Uploads resume (slowly); serving does not slow down.
        proxy.delay_s = 0.25
        proxy.set_mode("up")
        slow_at = time.monotonic()
        latencies_before = [len(t.latencies_ms) for t in traffic]
        assert wait_for(lambda: all(scrape(a)["capture.uploaded"] > down[n]["capture.uploaded"]
                                    for n, a in agents.items()), 30)
        resumed_s = time.monotonic() - slow_at
        time.sleep(2.0)
        slow_latencies = sorted(ms for t, start in zip(traffic, latencies_before) for ms in t.latencies_ms[start:])
        proxy.delay_s = 0.0
        for t in traffic:
            t.stop()
        stats = {name: wait_drained(agent, 90) for name, agent in agents.items()}
        served = {name: predictions_served(agent) for name, agent in agents.items()}

        for t in traffic:
            assert t.errors == [] and t.ok > 0, (t.name, t.errors[:3])
        direct_ids = s3_capture_ids(endpoint, direct_bucket, "p/store-direct/detector/")
        rows = [r[0] for r in db_rows(f"sqlite:///{tmp_path / 'server' / 'edgemill.db'}", "SELECT capture_id FROM captures")]
        server_ids = s3_capture_ids(endpoint, server_bucket, "p/captures/store-server/detector/")
        expected = {name: expected_sampled(stats[name], served[name]) for name in agents}
        assert len(direct_ids) == len(set(direct_ids)) == expected["store-direct"] == stats["store-direct"]["capture.uploaded"]
        assert len(rows) == len(set(rows)) == expected["store-server"] == stats["store-server"]["capture.uploaded"]
        assert sorted(server_ids) == sorted(rows)
        # Backoff: per uploader pass at most a batch (8) of puts, each tried 3 times by boto3, and the
        # passes spaced by a backoff doubling from 0.25 s up to 1-2 s.
        passes = 4 + int(down_s / (MAX_BACKOFF_S / 2))
        assert 0 < resets <= len(agents) * passes * 8 * 3, (resets, passes)
        assert all(s["capture.upload_errors"] <= 8 * passes for s in down.values()), (down, passes)
        assert resumed_s <= MAX_BACKOFF_S + 10
        p99 = slow_latencies[int(0.99 * (len(slow_latencies) - 1))] if slow_latencies else 0.0
        assert slow_latencies and p99 < 250, p99  # the predictions do not wait for the slow uploads
        assert store_health[0] == 503 and store_health[1]["store"].startswith("error"), store_health
        note(f"store down {down_s:.1f} s then slow (0.25 s per chunk): predictions OK "
             f"{[t.ok for t in traffic]}, 0 errors, p99 during slow {p99:.1f} ms; connections reset while down "
             f"{resets} (bound {len(agents) * passes * 8 * 3}); upload errors while down "
             f"{ {n: s['capture.upload_errors'] for n, s in down.items()} } (bound {8 * passes}); first upload "
             f"{resumed_s:.1f} s after the store returned; stored direct {len(direct_ids)} / expected "
             f"{expected['store-direct']}, via server {len(rows)} rows {len(server_ids)} objects / expected "
             f"{expected['store-server']}")
    finally:
        for t in traffic:
            t.stop()
        stop_all(*agents.values(), server)
        proxy.close()


# --- a shared control plane for the device-side faults -------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory, keypair: tuple[Path, Path],
                  versions: dict[str, Path]) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("fault-server"), keypair[1], "--tick-s", "0.3",
                           "--heartbeat-interval-s", "0.5", "--offline-after-s", "30")
    with server:
        api = server.client()
        for version in versions.values():
            api.push(version)
        yield server


def fleet_token(server: ServerProcess, fleet: str, uses: int) -> str:
    api = server.client()
    api.request("POST", "/api/v1/fleets", body={"name": fleet})
    return str(api.request("POST", f"/api/v1/fleets/{fleet}/registration-tokens", body={"uses": uses})["token"])


def server_captures(server: ServerProcess, device: str) -> list[str]:
    return [r[0] for r in db_rows(f"sqlite:///{server.data_dir / 'edgemill.db'}",
                                  "SELECT c.capture_id FROM captures c JOIN devices d ON d.id = c.device_id "
                                  "WHERE d.name = :name", name=device)]


def reported_capture(server: ServerProcess, device: str) -> dict[str, float]:
    """What the device's last heartbeat said about its capture queue."""
    return dict(server.client().request("GET", f"/api/v1/devices/{device}")["agent"].get("capture") or {})


# --- disk full ----------------------------------------------------------------------------------


@dataclass
class FullDisk:
    """A small disk for the capture queue that a test can fill and free: a real tmpfs, or a folder whose
    writes fail with ENOSPC inside the agent process while a flag file exists."""

    kind: str
    root: Path
    flag: Path
    env: dict[str, str]
    filler: Path | None = None

    def fill(self) -> None:
        if self.kind == "enospc":
            self.flag.touch()
            return
        self.filler = self.root / "filler"
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            block = b"\0" * 65536
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        break
                    block = block[: len(block) // 2]
        finally:
            os.close(fd)

    def free(self) -> None:
        if self.kind == "enospc":
            self.flag.unlink()
        elif self.filler is not None:
            self.filler.unlink()


@pytest.fixture(params=["tmpfs", "enospc"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    flag = tmp_path / "disk-is-full"
    if request.param == "enospc":
        yield FullDisk("enospc", root, flag, fault_env(tmp_path, EDGEMILL_FAULT_ENOSPC_FLAG=str(flag),
                                                       EDGEMILL_FAULT_ENOSPC_ROOT=str(root)))
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the 'enospc' variant covers a full disk here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); "
                    "the 'enospc' variant covers a full disk")
    try:
        yield FullDisk("tmpfs", root, flag, {})
    finally:
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def test_full_disk_stops_capturing_not_serving_reports_it_and_recovers(
        full_disk: FullDisk, shared_server: ServerProcess, tmp_path: Path, keypair: tuple[Path, Path],
        versions: dict[str, Path]) -> None:
    name = f"disk-{full_disk.kind}"
    token = fleet_token(shared_server, f"disks-{full_disk.kind}", 1)
    config = agent_home(tmp_path, name, keypair[1], server_url=shared_server.url, token=token,
                        capture={"directory": str(full_disk.root / "captures")})
    standalone_model(config, versions["1.0.0"])
    agent = AgentProcess(config, env=full_disk.env)
    traffic = None
    try:
        agent.start()
        traffic = Traffic(agent, name).start()
        assert wait_for(lambda: scrape(agent)["capture.uploaded"] >= 5, 30)

        full_disk.fill()
        filled_at = time.monotonic()
        assert wait_for(lambda: reported_capture(shared_server, name).get("disk_full") == 1, 15), \
            reported_capture(shared_server, name)
        reported_s = time.monotonic() - filled_at
        time.sleep(0.5)  # what was written before the fill has settled
        first = scrape(agent)
        time.sleep(2.0)
        with AgentClient(agent.address) as client:
            with pytest.raises(AgentError) as refused:
                client.capture_data("detector", {"features": np.zeros((1, FEATURES), np.float32)}, {}, {},
                                    capture_id=f"{name}-explicit")
        second = scrape(agent)
        assert refused.value.code.name == "RESOURCE_EXHAUSTED" and "disk" in refused.value.message, refused.value
        # Capturing stopped: nothing more accepted while full, every sample counted as skipped for the disk.
        accepted = [s["capture.uploaded"] + s["capture.queued"] for s in (first, second)]
        assert accepted[0] == accepted[1], (first, second)
        assert second["capture.skipped_disk_full"] > first["capture.skipped_disk_full"] > 0
        assert second["capture.disk_full"] == 1 and second["capture.refused_disk_full"] == 1
        served_while_full = traffic.ok

        full_disk.free()
        freed_at = time.monotonic()
        assert wait_for(lambda: reported_capture(shared_server, name).get("disk_full") == 0
                        and scrape(agent)["capture.uploaded"] > accepted[1], 15), scrape(agent)
        recovered_s = time.monotonic() - freed_at
        time.sleep(0.5)
        traffic.stop()
        stats = wait_drained(agent)
        served = predictions_served(agent)
        arrived = server_captures(shared_server, name)
        assert traffic.errors == [] and traffic.ok == served, traffic.errors[:3]
        assert len(arrived) == len(set(arrived)) == expected_sampled(stats, served) == stats["capture.uploaded"]
        log = agent.stderr()
        assert log.count("capture paused") == 1 and log.count("capture resumed") == 1, log[-3000:]
        note(f"disk full ({full_disk.kind}): predictions OK {traffic.ok} ({served_while_full} by the end of the full "
             f"spell), 0 errors; reported disk_full {reported_s:.1f} s after the fill, cleared {recovered_s:.1f} s "
             f"after space returned; samples skipped for the disk {stats['capture.skipped_disk_full']:.0f}; captures "
             f"arrived {len(arrived)} / expected {expected_sampled(stats, served)}")
    finally:
        if traffic is not None:
            traffic.stop()
        stop_all(agent)
        if full_disk.flag.exists():
            full_disk.flag.unlink()


# --- clock skew ---------------------------------------------------------------------------------


def test_device_clock_an_hour_off_registers_heartbeats_rolls_out_and_uploads(
        shared_server: ServerProcess, tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    api = shared_server.client()
    token = fleet_token(shared_server, "skewed", 2)
    offsets = {"skew-ahead": 3600.0, "skew-behind": -3600.0}
    agents = {name: AgentProcess(agent_home(tmp_path, name, keypair[1], server_url=shared_server.url, token=token),
                                 env=fault_env(tmp_path, EDGEMILL_FAULT_CLOCK_OFFSET_S=str(offset)))
              for name, offset in offsets.items()}
    traffic: list[Traffic] = []
    try:
        for agent in agents.values():
            agent.start()
        assert wait_for(lambda: online(api, "skewed") == 2, 30)
        for name, offset in offsets.items():  # the skew is real in the agent: it reports its start on its clock
            started = api.request("GET", f"/api/v1/devices/{name}")["agent"]["started_at"]
            assert abs(started - time.time() - offset) < 120, (name, started - time.time())

        bake = 2.0
        strategy = {"canary_percent": 50, "bake_time_s": bake, "gates": {"max_error_rate": 0.05, "min_requests": 1000}}
        rollouts = []
        for version in ("1.0.0", "2.0.0"):
            started_at = time.monotonic()
            d = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": version,
                                                                 "fleet": "skewed", "strategy": strategy})
            assert wait_for(lambda: api.request("GET", f"/api/v1/deployments/{d['id']}")["state"] == "succeeded", 60), \
                api.request("GET", f"/api/v1/deployments/{d['id']}")
            detail = api.request("GET", f"/api/v1/deployments/{d['id']}")
            waves = [e for e in detail["events"] if e["kind"] == "wave_started"]
            canary = next(x for x in detail["devices"] if x["wave"] == 0)
            from datetime import datetime

            baked = (datetime.fromisoformat(waves[1]["at"]) - datetime.fromisoformat(canary["updated_at"])).total_seconds()
            assert len(waves) == 2 and bake <= baked < bake + 10, (baked, detail["events"])  # baked once, on the server's clock
            rollouts.append((version, time.monotonic() - started_at, baked))
        for agent in agents.values():
            with AgentClient(agent.address) as client:
                assert {m["name"]: m["version"] for m in client.list_models()} == {"detector": "2.0.0"}

        traffic = [Traffic(agent, name, explicit_every=5).start() for name, agent in agents.items()]
        time.sleep(2.0)
        for t in traffic:
            t.stop()
        for (name, agent), t in zip(agents.items(), traffic):
            stats = wait_drained(agent)
            served = predictions_served(agent)
            arrived = server_captures(shared_server, name)
            assert t.errors == [] and t.explicit_refused == [], (t.errors[:3], t.explicit_refused[:3])
            assert len(arrived) == len(set(arrived)) == expected_sampled(stats, served) + len(t.explicit)
            device = api.request("GET", f"/api/v1/devices/{name}")
            seen = datetime.fromisoformat(device["last_seen_at"]).timestamp()
            assert device["status"] == "online" and abs(seen - time.time()) < 10, device  # server time, not the device's
            log = agent.stderr()
            assert "stale" not in log and "expired" not in log and "ERROR" not in log, log[-3000:]
            with AgentClient(agent.address) as client:
                status = client.capture_status(t.explicit[0])
            assert status.state == "uploaded", status
        note(f"clock skew {offsets}: both registered and online; rollouts (canary 50%, bake {bake:g} s) "
             + ", ".join(f"{v} converged in {s:.1f} s, baked {b:.1f} s" for v, s, b in rollouts)
             + f"; captures arrived exactly once ({[len(server_captures(shared_server, n)) for n in agents]}); no stale "
               "heartbeat")
    finally:
        for t in traffic:
            t.stop()
        stop_all(*agents.values())


class ClockCheckingS3Proxy:
    """An HTTP reverse proxy in front of an S3 server that refuses what AWS S3 (and MinIO) refuse and
    SeaweedFS does not check: a request signed (X-Amz-Date) more than 15 minutes from the real time gets
    403 RequestTimeTooSkewed with ServerTime in the body and a Date header (HEAD: the header only)."""

    MAX_SKEW_S = 900

    def __init__(self, target: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = target.split("//", 1)[1].rsplit(":", 1)
        proxy = self
        self.refused = 0
        self.forwarded = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                import http.client
                from datetime import datetime, timezone
                from email.utils import formatdate

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = datetime.now(timezone.utc)
                signed = self.headers.get("X-Amz-Date")
                if signed and abs((datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                                   - now).total_seconds()) > proxy.MAX_SKEW_S:
                    proxy.refused += 1
                    xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>RequestTimeTooSkewed</Code>"
                           "<Message>The difference between the request time and the current time is too large."
                           f"</Message><RequestTime>{signed}</RequestTime><ServerTime>"
                           f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')}</ServerTime><MaxAllowedSkewMilliseconds>900000"
                           "</MaxAllowedSkewMilliseconds></Error>").encode()
                    self.send_response_only(403)
                    self.send_header("Date", formatdate(usegmt=True))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                proxy.forwarded += 1
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None,
                                 headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response_only(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_device_clock_an_hour_off_signs_direct_s3_uploads_with_the_store_time(
        s3_server: tuple[str, str, str], tmp_path: Path, keypair: tuple[Path, Path],  # noqa: F811
        versions: dict[str, Path]) -> None:
    pytest.importorskip("boto3")
    endpoint = s3_server[0]
    strict = ClockCheckingS3Proxy(endpoint)
    bucket = f"faults-skew-{os.urandom(3).hex()}"
    offsets = {"s3-ahead": 3600.0, "s3-behind": -3600.0}
    agents: dict[str, AgentProcess] = {}
    traffic: list[Traffic] = []
    try:
        for name, offset in offsets.items():
            config = agent_home(tmp_path, name, keypair[1], capture={
                "store": f"s3://{bucket}/p", "s3_endpoint_url": strict.url, "s3_region": "us-east-1"})
            standalone_model(config, versions["1.0.0"])
            agents[name] = AgentProcess(config, env=fault_env(tmp_path, EDGEMILL_FAULT_CLOCK_OFFSET_S=str(offset)))
            agents[name].start()
        traffic = [Traffic(agent, name, explicit_every=5).start() for name, agent in agents.items()]
        time.sleep(2.0)
        for t in traffic:
            t.stop()
        for (name, agent), t in zip(agents.items(), traffic):
            stats = wait_drained(agent, 30)
            served = predictions_served(agent)
            stored = s3_capture_ids(endpoint, bucket, f"p/{name}/detector/")
            assert t.errors == [] and t.explicit_refused == []
            assert len(stored) == len(set(stored)) == expected_sampled(stats, served) + len(t.explicit) > 0
            assert set(t.explicit) <= set(stored)
            where = "ahead of" if offsets[name] > 0 else "behind"
            assert re.search(rf"clock is 3[56]\d\d s {where} the object store", agent.stderr()), agent.stderr()[-2000:]
        assert 0 < strict.refused <= 2 * len(agents), strict.refused  # learnt at once, not refused over and over
        note(f"direct S3 with the device clock {offsets}: store refused {strict.refused} request(s) as skewed, "
             f"forwarded {strict.forwarded}; captures stored "
             f"{[len(s3_capture_ids(endpoint, bucket, f'p/{n}/detector/')) for n in agents]}, each once")
    finally:
        for t in traffic:
            t.stop()
        stop_all(*agents.values())
        strict.close()


# --- the capture queue on a full disk, in process (runs everywhere) -----------------------------


def _queue_with(tmp_path: Path, count: int) -> Any:
    from edgemill.agent.capture.queue import DiskQueue

    queue = DiskQueue(tmp_path / "queue", 100, 2**20)
    queue.open()
    for i in range(count):
        record = CaptureRecord(capture_id=f"c{i}", model="m", model_version="1", device="dev", created_unix=1.7e9,
                               inputs={"x": np.full((1, 4), i, np.float32)}, outputs={}, auxiliary={}, sampled=True)
        queue.add(record.capture_id, record.object_key(), record.encode())
    return queue


def test_uploads_on_a_full_disk_free_their_files_then_record_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    queue = _queue_with(tmp_path, 3)
    pending = queue.take(10)
    log_path = tmp_path / "queue" / "uploaded.log"
    real_pwrite = os.pwrite

    def full_while_queue_files_exist(fd: int, data: bytes, offset: int) -> int:
        if any(p.path.exists() for p in pending):  # the queue's own files fill the disk
            real_pwrite(fd, bytes(data)[:5], offset)  # a torn piece reaches the file first
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_while_queue_files_exist)
    queue.uploaded(pending)
    assert not list((tmp_path / "queue").glob("*.emc"))
    assert [line.split(" ")[0] for line in log_path.read_text().splitlines()] == ["c0", "c1", "c2"]
    assert all(queue.status(f"c{i}").state == "uploaded" for i in range(3)) and len(queue) == 0
    queue.close()

    # Still no room after the files went: remembered for this run, never a torn line in the log.
    queue = _queue_with(tmp_path, 0)
    more = _queue_with(tmp_path / "b", 2)
    pending = more.take(10)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: (real_pwrite(fd, bytes(data)[:3], offset),
                                                                 (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))[1])
    more.uploaded(pending)
    assert [more.status(p.capture_id).state for p in pending] == ["uploaded", "uploaded"]
    assert (tmp_path / "b" / "queue" / "uploaded.log").read_bytes() == b""
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    more.close()
    queue.close()


def test_queue_refuses_captures_that_would_eat_the_disk_reserve_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from edgemill.agent.capture.queue import DiskFullError

    queue = _queue_with(tmp_path, 1)
    real_statvfs = os.statvfs
    free = {"blocks": 100}  # of 4 KiB, on a 1 GiB file system whose reserve is 1% (about 10 MiB)

    def statvfs(path: Any) -> Any:
        real = real_statvfs(path)
        return os.statvfs_result((4096, 4096, 262144, free["blocks"], free["blocks"], *real[5:]))

    monkeypatch.setattr(os, "statvfs", statvfs)
    blob = queue.read(queue.take(1)[0])
    queue.failed(queue.take(0)[0] if queue.take(0) else _pending(queue, "c0"), "x", lambda n: 0.0)
    with caplog.at_level("INFO", logger="edgemill.agent.capture"):
        for attempt in range(3):
            with pytest.raises(DiskFullError) as refused:
                queue.add(f"full{attempt}", f"dev/m/2024/01/01/full{attempt}.emc", blob)
        assert "disk" in refused.value.one_line() and "reserve" in refused.value.one_line()
        assert queue.blocked() == "disk_full" and queue.stats()["disk_full"] == 1
        free["blocks"] = 200_000
        assert queue.blocked() == ""
        queue.add("roomy", "dev/m/2024/01/01/roomy.emc", blob)
    assert queue.stats()["disk_full"] == 0 and queue.status("roomy").state == "queued"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("capture paused" in m for m in messages) == 1 and sum("capture resumed" in m for m in messages) == 1
    assert "3 capture(s) refused meanwhile" in next(m for m in messages if "capture resumed" in m)
    queue.close()


def _pending(queue: Any, capture_id: str) -> Any:
    from edgemill.agent.capture.queue import Pending

    entry = queue._entries[capture_id]
    return Pending(capture_id, entry.path, entry.key, entry.size)
