"""End to end, all real processes on 127.0.0.1: `edgemill server` and three `edgemill agent`s.

deploy v1 → all converge and serve it; deploy v2 (which breaks its clients: it expects 32 features
where they send 64) → its canary's error rate fails the gate → rolled back automatically, the other two
never receive it; a tampered package is refused at upload and, forced into the store behind the
server's back, refused by the device too and reported."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from edgemill.client import AgentClient, AgentError  # noqa: E402
from edgemill.errors import VerificationError  # noqa: E402

from ._agent import AgentProcess, fleet_agent, stop_all, wait_for  # noqa: E402
from ._fleet import ServerProcess, build_model_package, postgres_url, tampered_copy  # noqa: E402

pytestmark = pytest.mark.slow
DEVICES = ("cam-0", "cam-1", "cam-2")


@pytest.fixture(scope="module")
def versions(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("e2e-packages")
    return {"1.0.0": build_model_package(out, "detector", "1.0.0", 64, keypair[0]),
            "2.0.0": build_model_package(out, "detector", "2.0.0", 32, keypair[0]),
            "3.0.0": build_model_package(out, "detector", "3.0.0", 64, keypair[0], seed=3)}


def _versions_served(agents: dict[str, AgentProcess]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, agent in agents.items():
        with AgentClient(agent.address) as client:
            models = {m["name"]: m["version"] for m in client.list_models()}
        out[name] = models.get("detector")
    return out


def _deployment(client, deployment_id: int) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return client.request("GET", f"/api/v1/deployments/{deployment_id}")


def test_three_agents_converge_roll_back_a_bad_canary_and_refuse_tampering(
        tmp_path: Path, keypair: tuple[Path, Path], versions: dict[str, Path]) -> None:
    db = None
    if postgres_url():
        from ._fleet import fresh_postgres_database

        db = fresh_postgres_database(postgres_url())  # type: ignore[arg-type]
    with ServerProcess(tmp_path / "server", keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s", "0.5",
                       "--offline-after-s", "20", db=db) as server:
        api = server.client()
        started = time.monotonic()
        for version in ("1.0.0", "2.0.0", "3.0.0"):
            api.push(versions[version])
        with pytest.raises(VerificationError) as refused:
            api.push(tampered_copy(versions["1.0.0"], tmp_path / "tampered.emp"))
        assert refused.value.reason.value == "file_modified"
        api.request("POST", "/api/v1/fleets", body={"name": "cams"})
        token = api.request("POST", "/api/v1/fleets/cams/registration-tokens", body={"uses": 3})["token"]
        agents = {name: fleet_agent(tmp_path, name, server.url, token, keypair[1],
                                   capture={"directory": "captures", "store": "server", "upload_interval_s": 0.2}) for name in DEVICES}
        try:
            for agent in agents.values():
                agent.start()
            assert wait_for(lambda: len([d for d in api.request("GET", "/api/v1/devices") if d["status"] == "online"]) == 3, 30)

            # v1 everywhere: canary (1 of 3), then the rest.
            fast = {"canary_percent": 33, "bake_time_s": 1, "gates": {"max_error_rate": 0.05, "min_requests": 5}}
            rollout_start = time.monotonic()
            d1 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "1.0.0",
                                                                  "fleet": "cams", "strategy": fast})
            assert wait_for(lambda: _deployment(api, d1["id"])["state"] == "succeeded", 60), _deployment(api, d1["id"])
            rollout_s = time.monotonic() - rollout_start
            assert wait_for(lambda: set(_versions_served(agents).values()) == {"1.0.0"}, 30)
            x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
            outputs = []
            for agent in agents.values():
                with AgentClient(agent.address) as client:
                    result = client.predict("detector", {"features": x}, capture=True)
                    outputs.append(result.outputs["logits"])
            assert all(np.array_equal(outputs[0], o) for o in outputs)
            assert wait_for(lambda: len(api.request("GET", "/api/v1/captures")) == 3, 30)
            captures = api.request("GET", "/api/v1/captures", query={"device": "cam-1"})
            assert captures[0]["key"].startswith("captures/cam-1/detector/")

            # v2 breaks its clients: the canary's error rate fails the gate; the others never get it.
            slow = {"canary_percent": 33, "bake_time_s": 600, "gates": {"max_error_rate": 0.05, "min_requests": 5}}
            d2 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "2.0.0",
                                                                  "fleet": "cams", "strategy": slow})
            canary = next(d["device"] for d in d2["devices"] if d["state"] == "assigned")
            others = [n for n in DEVICES if n != canary]
            assert wait_for(lambda: _versions_served(agents)[canary] == "2.0.0", 30)
            errors = 0
            for _ in range(20):
                for agent in agents.values():
                    with AgentClient(agent.address) as client:
                        try:
                            client.predict("detector", {"features": x})
                        except AgentError:
                            errors += 1
            assert errors == 20  # every request to the canary failed, none elsewhere
            assert wait_for(lambda: _deployment(api, d2["id"])["state"] == "rolled_back", 30), _deployment(api, d2["id"])
            rolled = _deployment(api, d2["id"])
            assert "max_error_rate" in rolled["reason"]
            assert {d["device"]: d["state"] for d in rolled["devices"]} == {canary: "rolled_back", **{n: "pending" for n in others}}
            assert wait_for(lambda: set(_versions_served(agents).values()) == {"1.0.0"}, 30)
            lineage = api.request("GET", "/api/v1/models/detector/versions/2.0.0/lineage")
            assert lineage["devices"] == [] and lineage["deployments"][0]["devices_updated"] == 0

            # A tampered package forced into the store: the device refuses it and says why.
            v3 = api.request("GET", "/api/v1/models/detector/versions/3.0.0/lineage")["package"]["id"]
            stored = next((tmp_path / "server" / "store" / "packages" / "detector" / "3.0.0").glob(f"{v3}.emp"))
            tampered_copy(stored, stored)
            d3 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "3.0.0", "fleet": "cams",
                                                                  "devices": ["cam-0"], "strategy": fast})
            assert wait_for(lambda: _deployment(api, d3["id"])["state"] == "rolled_back", 30), _deployment(api, d3["id"])
            detail = _deployment(api, d3["id"])
            assert "file_modified" in detail["reason"]
            device = api.request("GET", "/api/v1/devices/cam-0")
            assert any("file_modified" in p for p in device["problems"])
            assert _versions_served(agents)["cam-0"] == "1.0.0"
            print(f"\n3-device rollout of v1 (canary + 1 wave, bake 1 s): {rollout_s:.1f} s; "
                  f"whole scenario {time.monotonic() - started:.1f} s")
        finally:
            stop_all(agents.values())
    if db is not None:
        from ._fleet import drop_postgres_database

        drop_postgres_database(db)
