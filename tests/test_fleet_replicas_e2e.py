"""Two real `edgemill server` processes on one PostgreSQL and one store, behind a round-robin proxy,
with three real agents: registrations, a staged rollout and an alert behave exactly as with one
replica (each wave started once, each device told once, one alert, one webhook delivery), and when one
replica is killed the other carries on alone (the replicas keep no state of their own)."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from edgemill.remote import ControlPlane  # noqa: E402

from ._agent import AgentProcess, free_port, stop_all, wait_for, write_config  # noqa: E402
from ._fleet import (ServerProcess, build_model_package, drop_postgres_database, fresh_postgres_database,  # noqa: E402
                     postgres_url)
from ._tcp import pump  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not postgres_url(), reason="replicas share a PostgreSQL database: set "
                                                            "EDGEMILL_TEST_POSTGRES_URL (.ci/run does)")]
DEVICES = ("cam-0", "cam-1", "cam-2")


class RoundRobin:
    """A TCP load balancer on 127.0.0.1: each new connection goes to the next backend in turn; a backend
    that refuses the connection is skipped (as a load balancer's health check would)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.connections: Counter[int] = Counter()
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._route, args=(client,), daemon=True).start()

    def _route(self, client: socket.socket) -> None:
        first = next(self._turn)
        for k in range(len(self.ports)):
            port = self.ports[(first + k) % len(self.ports)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            self.connections[port] += 1
            upstream.settimeout(None)
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
            pump(client, upstream)
            return
        client.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(2)


class Hook:
    """A webhook receiver that counts what it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _agent(tmp: Path, name: str, url: str, token: str, public_key: Path) -> AgentProcess:
    home = tmp / name
    home.mkdir()
    (home / "token").write_text(token + "\n")
    return AgentProcess(write_config(home / "agent.toml", {
        "device": {"name": name, "fleet": "cams"},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": ""},
        "models": {"directory": "models", "trusted_keys": [str(public_key)]},
        "server": {"url": url, "token_file": "token", "heartbeat_interval_s": 0.5, "long_poll_s": 2,
                   "request_timeout_s": 10, "max_backoff_s": 2},
    }))


def _events(api: ControlPlane, deployment_id: int) -> list[str]:
    return [e["kind"] for e in api.request("GET", f"/api/v1/deployments/{deployment_id}")["events"]]


def _finished(api: ControlPlane, deployment_id: int) -> bool:
    return api.request("GET", f"/api/v1/deployments/{deployment_id}")["state"] == "succeeded"


def _rolls_out_once(api: ControlPlane, version: str, strategy: dict[str, object],
                    agents: dict[str, AgentProcess]) -> None:
    """Deploy ``version`` to the fleet; it must succeed with each wave, device update and success
    recorded once, and each agent told to apply it once."""
    created = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": version, "fleet": "cams",
                                                                "strategy": strategy})
    assert wait_for(lambda: _finished(api, created["id"]), 60), api.request("GET", f"/api/v1/deployments/{created['id']}")
    kinds = Counter(_events(api, created["id"]))
    assert (kinds["wave_started"], kinds["device_updated"], kinds["succeeded"]) == (2, 3, 1), kinds
    for agent in agents.values():
        assert agent.stderr().count(f"applying detector {version}") == 1


def test_two_server_processes_behind_round_robin_act_as_one_and_survive_losing_one(
        tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    db = fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    shared = ["--store", f"file://{tmp_path / 'store'}", "--api-key-file", str(tmp_path / "operator.key"),
              "--tick-s", "0.3", "--heartbeat-interval-s", "0.5", "--offline-after-s", "20"]
    replicas = [ServerProcess(tmp_path / f"replica-{i}", keypair[1], *shared, db=db) for i in range(2)]
    hook = Hook()
    agents: dict[str, AgentProcess] = {}
    balancer = None
    try:
        for replica in replicas:  # one after the other: the first creates the schema and the operator key
            replica.start()
        balancer = RoundRobin([r.port for r in replicas])
        api = ControlPlane(balancer.url, (tmp_path / "operator.key").read_text().strip(), timeout_s=30)
        for version, seed in (("1.0.0", 0), ("2.0.0", 1)):
            api.push(build_model_package(tmp_path, "detector", version, 16, keypair[0], seed=seed))
        api.request("POST", "/api/v1/fleets", body={"name": "cams"})
        token = api.request("POST", "/api/v1/fleets/cams/registration-tokens", body={"uses": 3})["token"]

        # Registrations through both replicas: the token's three uses are three devices, not more.
        agents = {name: _agent(tmp_path, name, balancer.url, token, keypair[1]) for name in DEVICES}
        for agent in agents.values():
            agent.start()
        online = lambda: [d["name"] for d in api.request("GET", "/api/v1/devices") if d["status"] == "online"]  # noqa: E731
        assert wait_for(lambda: sorted(online()) == list(DEVICES), 30), api.request("GET", "/api/v1/devices")
        with pytest.raises(Exception) as spent:
            api.request("POST", "/api/v1/agent/register", body={"token": token, "device": "cam-9"})
        assert "already used" in str(spent.value)

        # A staged rollout while both replicas tick: each step once.
        strategy = {"canary_percent": 34, "bake_time_s": 1, "gates": {"max_error_rate": 0.5}}
        _rolls_out_once(api, "1.0.0", strategy, agents)

        # An alert evaluated by both replicas fires once and its webhook is delivered once.
        api.request("POST", "/api/v1/alert-rules", body={"name": "quiet", "metric": "requests_per_min", "op": "<",
                                                         "threshold": 1000, "window_s": 60, "webhook_url": hook.url})
        assert wait_for(lambda: len(hook.bodies) >= 1, 30)
        time.sleep(2.0)  # a dozen more ticks on each replica
        alerts = api.request("GET", "/api/v1/alerts")
        assert len(hook.bodies) == 1 and len(alerts) == 1 and alerts[0]["state"] == "firing", (hook.bodies, alerts)
        assert all(balancer.connections[r.port] > 10 for r in replicas), balancer.connections  # both served

        # Lose a replica: the other one carries the fleet and the next rollout alone.
        replicas[0].proc.kill()  # type: ignore[union-attr]
        replicas[0].proc.wait(10)  # type: ignore[union-attr]
        _rolls_out_once(api, "2.0.0", strategy, agents)
        assert "Traceback" not in replicas[1].output()
    finally:
        stop_all(agents.values())
        for replica in replicas:
            replica.stop()
        if balancer is not None:
            balancer.close()
        hook.close()
        drop_postgres_database(db)


def test_workers_serve_one_port_from_several_processes(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    import os
    import urllib.request

    db = fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    with ServerProcess(tmp_path / "server", keypair[1], "--workers", "2", db=db) as server:
        api = server.client()
        api.request("POST", "/api/v1/fleets", body={"name": "cams"})
        token = api.request("POST", "/api/v1/fleets/cams/registration-tokens", body={"uses": 20})["token"]
        for i in range(20):  # new connections land on either worker; all share the database
            api.request("POST", "/api/v1/agent/register", body={"token": token, "device": f"cam-{i}"})
        assert len(api.request("GET", "/api/v1/devices")) == 20
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == server.proc.pid]  # type: ignore[union-attr]
        workers = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, [Path(f"/proc/{p}/cmdline").read_bytes() for p in children]
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
            assert response.status == 200
    drop_postgres_database(db)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
