"""Drift end to end, all real processes on 127.0.0.1: `edgemill server`, three `edgemill agent`s, a webhook
receiver. Two models, each compiled with a baseline of typical inputs: an image classifier and a tabular
classifier. Every device serves typical inputs and nothing fires; one camera's images get brighter and
`input_drift` fires for that device (its webhook delivered), the others stay quiet; its images return to
normal and the alert resolves; another device's tabular inputs become a different class mix and
`prediction_drift` fires."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("fastapi")

import edgemill  # noqa: E402
from edgemill.client import AgentClient  # noqa: E402
from edgemill.demo import zoo  # noqa: E402
from edgemill.package import sign_package  # noqa: E402

from ._agent import AgentProcess, fleet_agent, stop_all, wait_for  # noqa: E402
from ._fleet import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow
DEVICES = ("cam-0", "cam-1", "cam-2")
BRIGHT, MIXED = "cam-1", "cam-2"  # whose images get brighter; whose tabular inputs change class mix
BATCH = 64
WINDOW_S = 10.0  # alert windows (the shortest allowed): ten of the server's 1 s drift buckets
THRESHOLD = 0.25  # PSI: significant shift


def _images(rng: np.random.Generator, n: int, brighter: bool = False) -> np.ndarray:
    x = rng.uniform(0.1, 0.7, size=(n, 3, 32, 32)).astype(np.float32)
    return x + np.float32(0.25) if brighter else x


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def packages(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("drift-e2e")
    rng = np.random.default_rng(0)
    built = {}
    for name, graph, feed in (("camera", zoo.cnn(batch="N", image=32, classes=10), {"image": _images(rng, 2000)}),
                              ("sorter", zoo.mlp(batch="N", features=16, hidden=(32,), classes=4, seed=5),
                               {"features": _rows(rng, 2000)})):
        onnx.save(graph, str(out / f"{name}.onnx"))
        np.savez(out / f"{name}-typical.npz", **feed)
        path = edgemill.compile(out / f"{name}.onnx", output=out / f"{name}.emp", name=name, version="1.0.0",
                                measure=False, baseline=out / f"{name}-typical.npz").path
        sign_package(path, keypair[0])
        built[name] = path
    built["sorter.onnx"] = out / "sorter.onnx"
    return built


def _one_class_rows(sorter_onnx: Path, rng: np.random.Generator, n: int) -> np.ndarray:
    """Typical-looking rows the sorter puts in its least common class: another class mix."""
    session = ort.InferenceSession(str(sorter_onnx), providers=["CPUExecutionProvider"])
    pool = _rows(rng, 20000)
    predicted = session.run(None, {"features": pool})[0].argmax(axis=1)
    rare = np.bincount(predicted, minlength=4).argmin()
    chosen = pool[predicted == rare]
    assert len(chosen) >= 50, np.bincount(predicted)
    return chosen[rng.integers(0, len(chosen), n)]


class Webhooks:
    """A webhook receiver on 127.0.0.1 that keeps every notification it is sent."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def of(self, rule: str, state: str) -> list[dict]:  # type: ignore[type-arg]
        return [n for n in self.received if n.get("alert") == rule and n.get("state") == state]


@pytest.fixture()
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()
    yield hooks
    hooks.http.shutdown()


class Traffic:
    """Every device serves a batch of each model per round; what each device gets can be changed."""

    def __init__(self, agents: dict[str, AgentProcess], sorter_onnx: Path) -> None:
        self.clients = {name: AgentClient(agent.address) for name, agent in agents.items()}
        self.rng = np.random.default_rng(1)
        self.bright: set[str] = set()
        self.mixed: set[str] = set()
        self.one_class = _one_class_rows(sorter_onnx, self.rng, 4096)

    def round(self) -> None:
        for name, client in self.clients.items():
            client.predict("camera", {"image": _images(self.rng, BATCH, brighter=name in self.bright)})
            rows = (self.one_class[self.rng.integers(0, len(self.one_class), BATCH)] if name in self.mixed
                    else _rows(self.rng, BATCH))
            client.predict("sorter", {"features": rows})

    def until(self, what: str, check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
        """Serve rounds until ``check()`` holds (bounded): the server sees drift only through traffic."""
        deadline = time.monotonic() + timeout
        while True:
            self.round()
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def test_input_drift_fires_for_the_shifted_device_resolves_and_prediction_drift_fires(
        tmp_path: Path, keypair: tuple[Path, Path], packages: dict[str, Path], webhooks: Webhooks) -> None:
    with ServerProcess(tmp_path / "server", keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s", "0.3",
                       "--drift-bucket-s", "1", "--drift-min-samples", "128") as server:
        api = server.client()
        for name in ("camera", "sorter"):
            api.push(packages[name])
        api.request("POST", "/api/v1/fleets", body={"name": "cams"})
        agents = {}
        try:
            for name in DEVICES:
                token = api.request("POST", "/api/v1/fleets/cams/registration-tokens", body={})["token"]
                agents[name] = fleet_agent(tmp_path, name, server.url, token, keypair[1], heartbeat_s=0.3,
                                            long_poll_s=1).start()
            # A deployment targets the devices registered when it is made: wait for all three, or the
            # last to start may not be one of them yet (the agent serves before it registers).
            assert wait_for(lambda: len(api.request("GET", "/api/v1/devices")) == len(DEVICES), 30), \
                api.request("GET", "/api/v1/devices")
            deployments = [api.request("POST", "/api/v1/deployments", body={
                "model": model, "version": "1.0.0", "fleet": "cams",
                "strategy": {"canary_percent": 100, "bake_time_s": 0}})["id"] for model in ("camera", "sorter")]

            def settled() -> bool:
                states = [api.request("GET", f"/api/v1/deployments/{i}") for i in deployments]
                ended = [d for d in states if d["state"] in ("rolled_back", "superseded", "paused")]
                assert not ended, (f"deployment {ended[0]['id']} {ended[0]['state']}: {ended[0].get('reason')}\n"
                                   + "\n".join(f"--- {n}:\n{a.stderr()[-3000:]}" for n, a in agents.items()))
                return all(d["state"] == "succeeded" for d in states)
            assert wait_for(settled, timeout=90), \
                f"deployments not finished: {[api.request('GET', f'/api/v1/deployments/{i}') for i in deployments]}"

            def serving() -> bool:  # asked of the agents themselves: the registry's view trails them
                for agent in agents.values():
                    with AgentClient(agent.address) as client:
                        if {m["name"] for m in client.list_models()} != {"camera", "sorter"}:
                            return False
                return True
            assert wait_for(serving, timeout=60), (f"agents do not serve both models: {api.request('GET', '/api/v1/devices')}\n"
                                                   + "\n".join(f"--- {n}:\n{a.stderr()[-3000:]}" for n, a in agents.items()))
            for rule in ({"name": "camera-inputs", "metric": "input_drift", "model": "camera"},
                         {"name": "sorter-answers", "metric": "prediction_drift", "model": "sorter"}):
                api.request("POST", "/api/v1/alert-rules", body={**rule, "threshold": THRESHOLD, "window_s": WINDOW_S,
                                                                  "webhook_url": webhooks.url})
            traffic = Traffic(agents, packages["sorter.onnx"])
            try:
                def firing(rule: str) -> dict | None:  # type: ignore[type-arg]
                    return next((a for a in api.request("GET", "/api/v1/alerts")
                                 if a["rule"] == rule and a["state"] == "firing"), None)

                def device_drift(model: str, device: str, window_s: float = WINDOW_S) -> dict:  # type: ignore[type-arg]
                    return api.request("GET", f"/api/v1/drift?model={model}&device={device}&window_s={window_s}")

                # Typical inputs everywhere: every device's buckets close and score low; nothing fires.
                traffic.until("every device to report typical drift", lambda: all(
                    device_drift("camera", d)["status"] == "ok" and device_drift("sorter", d)["status"] == "ok"
                    for d in DEVICES))
                for _ in range(10):
                    traffic.round()
                assert firing("camera-inputs") is None and firing("sorter-answers") is None
                for d in DEVICES:
                    assert device_drift("camera", d)["input_psi"] < THRESHOLD

                # One camera's images get brighter: its input_drift fires, its webhook arrives.
                traffic.bright.add(BRIGHT)
                started = time.monotonic()
                alert = traffic.until("input_drift to fire", lambda: firing("camera-inputs"))
                fired_after_s = time.monotonic() - started
                assert f"device '{BRIGHT}'" in alert["message"], alert["message"]
                assert "channel_mean" in alert["message"], alert["message"]
                traffic.until("the firing webhook", lambda: webhooks.of("camera-inputs", "firing"), timeout=30)
                # The drift view agrees once its window holds only the brighter images (it merged the
                # typical ones before the shift until then); the other cameras stay typical.
                traffic.until("the drift view to show the shift", lambda: (
                    device_drift("camera", BRIGHT, 3)["input_psi"] or 0) > THRESHOLD, timeout=30)
                for d in set(DEVICES) - {BRIGHT}:
                    assert device_drift("camera", d, 3)["input_psi"] < THRESHOLD, d
                assert firing("sorter-answers") is None

                # Back to normal: the alert resolves (and says so by webhook).
                traffic.bright.clear()
                traffic.until("input_drift to resolve", lambda: firing("camera-inputs") is None)
                traffic.until("the resolved webhook", lambda: webhooks.of("camera-inputs", "resolved"), timeout=30)

                # Another device's tabular inputs become another class mix: prediction_drift fires.
                traffic.mixed.add(MIXED)
                alert = traffic.until("prediction_drift to fire", lambda: firing("sorter-answers"))
                assert f"device '{MIXED}'" in alert["message"] and "accuracy may be falling" in alert["message"]
                assert "predicted_class" in alert["message"] or "top_score" in alert["message"], alert["message"]
                assert fired_after_s < 30, fired_after_s
            finally:
                traffic.close()
        finally:
            stop_all(agents.values())
