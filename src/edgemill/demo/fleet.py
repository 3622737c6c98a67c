"""The fleet half of `edgemill demo`: an in-process control plane, two in-process agents, a canary
deployment, predictions with capture, and the dashboard's address. Everything listens on 127.0.0.1
(free ports) and every wait is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserError

T = TypeVar("T")
MODEL, VERSION, FLEET, DEVICES = "classifier", "1.0.0", "demo", ("demo-1", "demo-2")
DRIFT_BATCH = 100  # rows per drift prediction, and the samples a drift bucket waits for
DRIFT_FEATURES, DRIFT_SHIFT = 4, 2.0  # the second device's first four features move by two standard deviations
DRIFT_SIGNIFICANT = 0.25  # PSI
LABELED_CAPTURES = 10  # per device: captured, labeled through the API, exported, checked on by the next version
NEXT_VERSION = "1.1.0"
SERVER_EXTRA_HINT = "the fleet part (control plane, agents, rollout, dashboard) needs `pip install 'edgemill[server]'`"


def server_extra_missing() -> str | None:
    """None when the control plane can run here; else the name of the missing module."""
    try:
        import alembic  # noqa: F401
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401

        from ..fleet import app  # noqa: F401
    except ImportError as exc:
        return exc.name or "a module of the server extra"
    return None


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float, interval_s: float = 0.1) -> T:
    """Poll ``check`` until it returns something other than None/False; a UserError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except UserError as exc:  # e.g. the server not up yet: keep trying until the deadline
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error is not None else ""
            raise UserError(f"demo: timed out after {timeout_s:g} s waiting for {what}{detail}",
                            fix="run it again; if it keeps failing, report it with this output")
        time.sleep(interval_s)


class _ServerThread:
    """The control plane's FastAPI app served by uvicorn in a background thread on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="edgemill-demo-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def _per_device(accuracy: dict[str, Any]) -> str:
    return ", ".join(f"{g['name']} {g['value']:.2f}" for g in accuracy["by_device"])


def _agent_toml(name: str, url: str, public: Path) -> str:
    return (f'[device]\nname = "{name}"\nfleet = "{FLEET}"\n'
            '[listen]\naddress = "127.0.0.1:0"\nmetrics_address = ""\n'
            f'[models]\ndirectory = "models"\ntrusted_keys = ["{public.resolve()}"]\n'
            '[capture]\ndirectory = "capture-queue"\nstore = "server"\nupload_interval_s = 0.1\n'
            f'[server]\nurl = "{url}"\ntoken_file = "token"\nheartbeat_interval_s = 0.5\nlong_poll_s = 2\n'
            'request_timeout_s = 10\nmax_backoff_s = 2\n')


def run_fleet(step: Callable[..., Any], work: Path, package: Path, public: Path, x: Any,
              expected: Any, truth: Any, recompile: Callable[[Path], Path]) -> dict[str, Any]:
    """Server, two agents, push, deploy, predict with capture, drift; then the data loop: captures
    labeled with ``truth`` (the held-out classes) through the API, exported, and ``recompile(dataset)``
    (which compiles and signs the next version with it as validation data) pushed beside the first.
    Returns the summary's fleet fields; ``predictions_agree`` and ``deployment.state == "succeeded"``
    say whether it worked."""
    import numpy as np

    from ..agent.config import load_config
    from ..agent.daemon import Agent
    from ..client import AgentClient
    from ..fleet.app import create_app
    from ..fleet.auth import new_secret
    from ..fleet.config import ServerConfig
    from ..remote import ControlPlane

    server_dir, agents_dir = work / "server", work / "agents"
    for old in (server_dir, agents_dir):  # a re-run starts from a fresh fleet
        shutil.rmtree(old, ignore_errors=True)
    server_dir.mkdir(parents=True)
    key = new_secret("emk")  # written first, so the server registers it quietly
    key_file = server_dir / "operator.key"
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(key + "\n")

    def start_server() -> _ServerThread:
        config = ServerConfig(db=f"sqlite:///{server_dir / 'edgemill.db'}", store=f"file://{server_dir / 'store'}",
                              trusted_keys=(public,), api_key_file=key_file, tick_s=0.3, heartbeat_interval_s=1,
                              long_poll_max_s=2, long_poll_check_s=0.1, offline_after_s=10,
                              drift_bucket_s=1, drift_min_samples=DRIFT_BATCH)
        server = _ServerThread(create_app(config))
        server.start()
        probe = ControlPlane(server.url, key, timeout_s=2)

        def healthy() -> bool:
            probe.request("GET", "/healthz")  # raises while the server is starting or unhealthy
            return True
        try:
            wait_for("the control plane's /healthz", healthy, timeout_s=20)
        except BaseException:
            server.stop()
            raise
        return server
    server = step("start the control plane (SQLite, HTTP)", start_server,
                  lambda s: f"{s.url} (API docs {s.url}/docs), data in {server_dir}")
    cp = ControlPlane(server.url, key, timeout_s=15)
    agents: list[Any] = []
    try:
        def push() -> dict[str, Any]:
            version = cp.push(package)
            cp.request("PATCH", f"/api/v1/models/{MODEL}/versions/{VERSION}", {"stage": "production"})
            return version  # type: ignore[no-any-return]
        step("push the signed package, stage production", push,
             lambda v: f"{v.get('name', MODEL)} {v.get('version', VERSION)}, verified by the server")

        def make_fleet() -> dict[str, Any]:
            cp.request("POST", "/api/v1/fleets", {"name": FLEET, "description": "edgemill demo"})
            return cp.request("POST", f"/api/v1/fleets/{FLEET}/registration-tokens",  # type: ignore[no-any-return]
                              {"uses": len(DEVICES), "expires_in_s": 3600})
        token = step(f'create fleet "{FLEET}" and a join token', make_fleet,
                     lambda t: f"token for {t['uses']} devices, expires {t['expires_at'][:19]}")["token"]

        def start_agents() -> list[str]:
            addresses = []
            for name in DEVICES:
                home = agents_dir / name
                (home / "models").mkdir(parents=True)
                (home / "token").write_text(token + "\n")
                (home / "agent.toml").write_text(_agent_toml(name, server.url, public))
                agent = Agent(load_config(home / "agent.toml"))
                agents.append(agent)
                addresses.append(agent.start()[0])

            def online() -> list[dict[str, Any]] | None:
                devices = cp.request("GET", "/api/v1/devices", query={"fleet": FLEET})
                ok = [d for d in devices if d["name"] in DEVICES and d["status"] == "online"]
                return devices if len(ok) == len(DEVICES) else None
            wait_for(f"devices {', '.join(DEVICES)} to register and come online", online, timeout_s=30)
            return addresses
        addresses = step("start two agents, register, come online", start_agents,
                         lambda a: ", ".join(f"{n} at {addr}" for n, addr in zip(DEVICES, a)))

        def deploy() -> dict[str, Any]:
            created = cp.request("POST", "/api/v1/deployments", {
                "model": MODEL, "version": VERSION, "fleet": FLEET,
                "strategy": {"canary_percent": 50, "bake_time_s": 1, "gates": {"min_requests": 1}}})
            started = time.monotonic()

            def finished() -> dict[str, Any] | None:
                detail = cp.request("GET", f"/api/v1/deployments/{created['id']}")
                if detail["state"] in ("rolled_back", "superseded", "paused"):
                    raise RuntimeError(f"deployment {created['id']} {detail['state']}: {detail.get('reason')}")
                return detail if detail["state"] == "succeeded" else None
            try:
                detail = wait_for(f"deployment {created['id']} to succeed", finished, timeout_s=30)
            except RuntimeError as exc:
                raise UserError(f"demo: {exc}", fix="see the agents' logs above") from None

            def serving() -> bool:
                for address in addresses:
                    with AgentClient(address) as client:
                        if not any(m["name"] == MODEL and m["version"] == VERSION for m in client.list_models()):
                            return False
                return True
            wait_for(f"both agents to serve {MODEL} {VERSION}", serving, timeout_s=15)
            detail["seconds"] = round(time.monotonic() - started, 2)
            return detail  # type: ignore[no-any-return]
        deployment = step(f"deploy {VERSION}: canary 50%, then the rest", deploy,
                          lambda d: f"deployment {d['id']} {d['state']} in {d['seconds']:.1f} s over "
                                    f"{d['waves']} waves; both agents serve it")

        def predict() -> dict[str, Any]:
            agree, capture_ids = True, []
            for address in addresses:
                with AgentClient(address) as client:
                    result = client.predict(MODEL, {"features": x}, capture=True)
                agree = agree and bool(np.allclose(result.outputs["logits"], expected, rtol=1e-6, atol=1e-6))
                capture_ids.append(result.capture_id)
            return {"agree": agree, "capture_ids": capture_ids}
        predicted = step("predict on both agents over gRPC", predict,
                         lambda p: f"{len(addresses)} x logits {list(np.shape(expected))}, "
                                   + ("equal to the runtime's" if p["agree"] else "DIFFERENT from the runtime's"))

        def captured() -> list[dict[str, Any]]:
            def stored() -> list[dict[str, Any]] | None:
                listed = cp.request("GET", "/api/v1/captures", query={"model": MODEL})
                mine = [c for c in listed if c["capture_id"] in predicted["capture_ids"]]
                return mine if len(mine) == len(predicted["capture_ids"]) else None
            return wait_for("both captures to reach the control plane", stored, timeout_s=20)
        captures = step("capture both requests to the server", captured,
                        lambda cs: f"{len(cs)} stored under {server_dir / 'store' / 'captures'}")

        def drift() -> dict[str, Any]:
            shifted = np.array(x, dtype=np.float32, copy=True)
            shifted[:, :DRIFT_FEATURES] += DRIFT_SHIFT  # a few features move (a sensor recalibrated, say)

            rng = np.random.default_rng(0)

            def scores() -> dict[str, Any] | None:
                rows = rng.choice(len(x), DRIFT_BATCH, replace=False)  # fresh held-out rows each time
                for address, batch in zip(addresses, (x, shifted)):  # demo-1 typical, demo-2 shifted
                    with AgentClient(address) as client:
                        client.predict(MODEL, {"features": batch[rows]})
                seen = {d: cp.request("GET", "/api/v1/drift", query={"model": MODEL, "device": d, "window_s": 3})
                        for d in DEVICES}
                # A few hundred samples each: on fewer, chance alone moves a PSI by a tenth or more.
                ready = all(s["status"] == "ok" and s["input_psi"] is not None and s["samples"] >= 3 * DRIFT_BATCH
                            for s in seen.values())
                return seen if ready and seen[DEVICES[1]]["input_psi"] > DRIFT_SIGNIFICANT else None
            return wait_for("the control plane to see demo-2's inputs drift", scores, timeout_s=30, interval_s=0.3)
        drifted = step(f"shift {DEVICES[1]}'s inputs: drift is seen", drift,
                       lambda d: f"input PSI {d[DEVICES[1]]['input_psi']:.2f} on {DEVICES[1]} "
                                 f"({d[DEVICES[1]]['input_feature']}), {d[DEVICES[0]]['input_psi']:.2f} on "
                                 f"{DEVICES[0]} (over {DRIFT_SIGNIFICANT} is significant)")

        def label() -> dict[str, Any]:
            ids: list[tuple[str, str, int]] = []
            for d, (name, address) in enumerate(zip(DEVICES, addresses)):
                with AgentClient(address) as client:
                    for i in range(LABELED_CAPTURES):
                        row = d * LABELED_CAPTURES + i
                        result = client.predict(MODEL, {"features": x[row:row + 1]}, capture=True)
                        ids.append((name, result.capture_id, int(truth[row])))

            def uploaded() -> bool | None:
                listed = cp.request("GET", "/api/v1/captures", query={"model": MODEL, "limit": 1000})
                return True if {c for _, c, _ in ids} <= {c["capture_id"] for c in listed} else None
            wait_for("the new captures to reach the control plane", uploaded, timeout_s=20)
            # What an operator's labeling tool would send: one CSV row per capture, applied whole or not at all.
            csv = "device,capture_id,label\n" + "".join(f"{d},{c},{y}\n" for d, c, y in ids)
            report = cp.request("POST", "/api/v1/captures/labels", data=csv.encode())
            accuracy = cp.request("GET", "/api/v1/accuracy", query={"model": MODEL})
            return {"labeled": report["labeled"], **accuracy}
        labeled = step(f"label {LABELED_CAPTURES * len(DEVICES)} captures: live accuracy", label,
                       lambda a: f"top-1 {a['top1']:.3f} on {a['samples']} labeled samples ({_per_device(a)})")

        def export_captures() -> Any:
            from ..captures.export import Selection, export
            return export(cp, Selection(model=MODEL, labeled_only=True), work / "labeled-captures.npz")
        exported = step("export the labeled captures", export_captures,
                        lambda e: f"{e.path}: {e.samples} samples with {e.labels_written} "
                                  f"(versions {', '.join(e.versions)})")

        def next_version() -> dict[str, Any]:
            path = recompile(exported.path)
            cp.push(path)
            return cp.request("GET", f"/api/v1/models/{MODEL}/versions/{NEXT_VERSION}/lineage")  # type: ignore[no-any-return]
        lineage = step(f"recompile on them, push {NEXT_VERSION}", next_version,
                       lambda lin: "lineage: " + ", ".join(p for p in lin["compile"]["parents"] if ":captures:" in p))

        def dashboard_data() -> dict[str, Any]:
            def reported() -> dict[str, Any] | None:
                series = cp.request("GET", "/api/v1/metrics/series", query={"model": MODEL, "since_s": 600})
                requests = sum(p["requests"] for s in series for p in s["points"])
                overview = cp.request("GET", "/api/v1/overview")
                return overview if requests >= len(DEVICES) else None
            return wait_for("the agents' heartbeats to report the requests", reported, timeout_s=15)
        overview = step("heartbeats bring metrics to dashboard", dashboard_data,
                        lambda o: f"{o['devices'].get('online', 0)} devices online, {o['captures']} captures, "
                                  f"{server.url}/dashboard/")
    finally:
        for agent in agents:
            agent.stop(grace_s=2)
        server.stop()
    later = "127.0.0.1:8700"
    return {"server_url": server.url, "dashboard_url": f"{server.url}/dashboard/#key={key}",
            "operator_key_file": str(key_file), "server_dir": str(server_dir), "database": str(server_dir / "edgemill.db"),
            "store": str(server_dir / "store"), "devices_online": int(overview["devices"].get("online", 0)),
            "devices": list(DEVICES),
            "deployment": {"id": deployment["id"], "state": deployment["state"], "waves": deployment["waves"],
                           "seconds": deployment["seconds"]},
            "captures_stored": len(captures), "fleet_predictions_agree": predicted["agree"],
            "input_drift": {d: drifted[d]["input_psi"] for d in DEVICES},
            "live_accuracy": {"top1": labeled["top1"], "samples": labeled["samples"]},
            "exported": {"path": str(exported.path), "samples": exported.samples, "labels": exported.labels_written},
            "next_version": {"version": NEXT_VERSION,
                             "validated_on": [p for p in lineage["compile"]["parents"] if ":captures:" in p]},
            "view_later": f"edgemill server --data-dir {server_dir} --trusted-key {public} --listen {later}",
            "view_later_url": f"http://{later}/dashboard/#key={key}"}
