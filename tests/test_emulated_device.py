"""On an emulated aarch64 device (qemu-user, Debian bookworm arm64): the x86-built offline bundle installs
with no network, the agent starts from the installed layout as systemd would start it and serves an
aarch64 package with the device's own onnxruntime, and a control plane on the host drives a fleet of one
native and one emulated device through a rollout, captures and a rollback."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgemill
from edgemill.runtime import load as load_package
from edgemill.client import AgentClient
from edgemill.demo import zoo
from edgemill.emulation.device import AGENT_EDGEMILL as AGENT
from edgemill.emulation.device import AGENT_PYTHON, EmulatedDevice
from edgemill.emulation.prepare import install_bundle
from edgemill.package import sign_package

from ._agent import AgentProcess, fleet_agent, free_port, stop_all, wait_for
from ._emulated import aarch64_bundle, aarch64_device, aarch64_rootfs, require_emulation  # noqa: F401
from ._fleet import ServerProcess

pytestmark = pytest.mark.slow
CONFIG = "/etc/edgemill/agent.toml"


def _package(out: Path, private_key: Path, version: str, seed: int) -> Path:
    """A signed fp32 MLP package for -t aarch64: portable ONNX (no host-only layouts), so one package serves
    an x86 and an Arm device alike."""
    source = out / f"detector-{version}.onnx"
    onnx.save(zoo.mlp(features=16, hidden=(32,), classes=4, seed=seed), str(source))
    result = edgemill.compile(source, target="aarch64", output=out / f"detector-{version}.emp", measure=False,
                              name="detector", version=version)
    assert "requires_cpu_features" not in result.manifest.backend_options
    sign_package(result.path, private_key)
    return result.path


class EmulatedAgent(AgentProcess):
    """`edgemill agent --config /etc/edgemill/agent.toml` inside the device: the unit's ExecStart."""

    def __init__(self, device: EmulatedDevice) -> None:
        super().__init__()
        self.command = device.command([AGENT, "agent", "--config", CONFIG])
        self.start_timeout_s = 240.0  # imports numpy, onnxruntime and grpc under qemu


def _set(config: str, section: str, key: str, value: str) -> str:
    """``config`` with ``key = value`` in ``[section]`` (replacing the template's line)."""
    head, _, rest = config.partition(f"[{section}]\n")
    body, nxt, tail = rest.partition("\n[")
    lines = [line for line in body.splitlines() if not re.match(rf"#?\s*{key}\s*=", line)]
    return head + f"[{section}]\n" + "\n".join([f"{key} = {value}", *lines]) + nxt + tail


def _configure(device: EmulatedDevice, name: str, public_key: Path, port: int, server: str | None = None,
               token: str | None = None) -> None:
    """What an operator edits after install.sh: the device's name, its port, the key; a fleet to join."""
    path = device.path(CONFIG)
    config = path.read_text()
    config = _set(config, "device", "name", f'"{name}"')
    config = _set(config, "device", "fleet", '"cams"')
    config = _set(config, "listen", "address", f'"127.0.0.1:{port}"')
    config = _set(config, "listen", "unix_socket", '""')  # systemd's RuntimeDirectory= makes /run/edgemill
    config = _set(config, "listen", "metrics_address", '""')
    if server is not None:
        config = config.replace("# [server]", "[server]")
        config = config.split("\n[server]")[0] + (
            f'\n[server]\nurl = "{server}"\ntoken_file = "/etc/edgemill/token"\nheartbeat_interval_s = 0.5\n'
            'long_poll_s = 2\nrequest_timeout_s = 30\nmax_backoff_s = 2\n')
        config = _set(config, "capture", "store", '"server"')
        config = _set(config, "capture", "upload_interval_s", "0.2")
        device.path("/etc/edgemill/token").write_text(f"{token}\n")
    path.write_text(config)
    shutil.copy(public_key, device.path("/etc/edgemill/keys/edgemill.pub"))


def test_the_x86_built_bundle_installs_offline_and_the_agent_serves_an_aarch64_package(
        aarch64_rootfs: EmulatedDevice, aarch64_bundle: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    device = aarch64_rootfs.clone(tmp_path / "device")
    started = time.monotonic()
    said = install_bundle(device, aarch64_bundle)  # network=False inside: a fetch would fail
    install_s = time.monotonic() - started
    assert "installed: /opt/edgemill/venv/bin/edgemill" in said, said
    assert device.run(["uname", "-m"]).stdout.strip() == "aarch64"
    # The installed environment is the device's own: Arm wheels, the device's Python.
    machine = device.run([AGENT_PYTHON, "-c", "import onnxruntime, platform; print(platform.machine(), "
                                              "onnxruntime.__file__)"]).stdout.split()
    assert machine[0] == "aarch64" and machine[1].startswith("/opt/edgemill/venv/")
    # Trimmed: no pip, no numpy test suite, no onnxruntime build-side tools in the agent's environment.
    venv = device.path(os.readlink(device.path("/opt/edgemill/venv")))
    site = next(venv.glob("lib/python3*/site-packages"))
    assert not (venv / "bin" / "pip").exists() and not (site / "numpy" / "_core" / "tests").exists()
    assert not (site / "onnxruntime" / "quantization").exists() and (site / "onnxruntime" / "capi").is_dir()

    package = _package(tmp_path, keypair[0], "1.0.0", seed=1)
    models = device.path("/var/lib/edgemill/models")
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(package, models / "detector.emp")
    port = free_port()
    _configure(device, "arm-standalone", keypair[1], port)
    config = device.path(CONFIG)
    config.write_text(_set(config.read_text(), "listen", "unix_socket", '"/tmp/edgemill.sock"'))  # + the fast path
    agent = EmulatedAgent(device)
    with agent:
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        with AgentClient(f"127.0.0.1:{port}", timeout=120) as client:
            assert [m["name"] for m in client.list_models()] == ["detector"]
            got = client.predict("detector", {"features": x}).outputs
        want = load_package(package).run({"features": x})
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
        # An application on the device: the installed client takes the agent's fast path there.
        local = device.run([AGENT_PYTHON, "-c", (
            "import json, sys, numpy as np\n"
            "from edgemill.client import AgentClient\n"
            "x = np.array(json.loads(sys.stdin.read()), dtype=np.float32)\n"
            "with AgentClient('unix:/tmp/edgemill.sock', timeout=120) as c:\n"
            "    out = c.predict('detector', {'features': x})\n"
            "    print(json.dumps({'transport': c.transport, 'outputs': {k: v.tolist() for k, v in out.outputs.items()}}))\n")],
            input=json.dumps(x.tolist()), timeout=300)
        answer = json.loads(local.stdout.strip().splitlines()[-1])
        assert answer["transport"] == "fast", local.stdout + local.stderr
        for name, value in want.items():
            np.testing.assert_allclose(np.array(answer["outputs"][name], dtype=np.float32), value, rtol=1e-5, atol=1e-6)
        assert agent.terminate(60) == 0  # SIGTERM, as systemctl stop sends it
    print(f"\ninstall.sh on emulated aarch64: {install_s:.1f} s")


def _served(address: str) -> str | None:
    with AgentClient(address, timeout=60) as client:
        return next((m["version"] for m in client.list_models() if m["name"] == "detector"), None)


def test_one_fleet_of_a_native_and_an_emulated_aarch64_device_rolls_out_captures_and_rolls_back(
        aarch64_device: EmulatedDevice, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    v1 = _package(tmp_path, keypair[0], "1.0.0", seed=1)
    v2 = _package(tmp_path, keypair[0], "2.0.0", seed=2)
    device = aarch64_device.clone(tmp_path / "arm-0")
    with ServerProcess(tmp_path / "server", keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s", "0.5",
                       "--offline-after-s", "120") as server:
        api = server.client()
        api.push(v1)
        api.push(v2)
        api.request("POST", "/api/v1/fleets", body={"name": "cams"})
        token = api.request("POST", "/api/v1/fleets/cams/registration-tokens", body={"uses": 2})["token"]
        native = fleet_agent(tmp_path, "x86-0", server.url, token, keypair[1],
                             capture={"directory": "captures", "store": "server", "upload_interval_s": 0.2})
        arm_port = free_port()
        _configure(device, "arm-0", keypair[1], arm_port, server.url, token)
        arm = EmulatedAgent(device)
        agents = [native, arm]
        arm_address = f"127.0.0.1:{arm_port}"
        try:
            native.start()
            arm.start()
            assert wait_for(lambda: {d["name"]: d["status"] for d in api.request("GET", "/api/v1/devices")}
                            == {"x86-0": "online", "arm-0": "online"}, 120), api.request("GET", "/api/v1/devices")

            fast = {"canary_percent": 50, "bake_time_s": 1, "gates": {"max_error_rate": 0.05, "min_requests": 0}}
            d1 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "1.0.0",
                                                                  "fleet": "cams", "strategy": fast})
            assert wait_for(lambda: api.request("GET", f"/api/v1/deployments/{d1['id']}")["state"] == "succeeded",
                            240), api.request("GET", f"/api/v1/deployments/{d1['id']}")
            assert wait_for(lambda: _served(native.address) == "1.0.0" and _served(arm_address) == "1.0.0", 120)

            # The same package on both: the Arm kernels give the host runtime's answer within FP32 tolerance.
            rng = np.random.default_rng(3)
            want_runtime = load_package(v1)
            sent = 6
            with AgentClient(arm_address, timeout=120) as arm_client, AgentClient(native.address) as native_client:
                for i in range(sent):
                    x = rng.standard_normal((1, 16)).astype(np.float32)
                    got = arm_client.predict("detector", {"features": x}, capture=True).outputs
                    here = native_client.predict("detector", {"features": x}).outputs
                    for name, value in want_runtime.run({"features": x}).items():
                        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
                        np.testing.assert_allclose(here[name], value, rtol=1e-5, atol=1e-6)

            # Captures from the emulated device arrive, each exactly once.
            def arm_captures() -> list[dict]:  # type: ignore[type-arg]
                return api.request("GET", "/api/v1/captures", query={"device": "arm-0"})
            assert wait_for(lambda: len(arm_captures()) >= sent, 120), arm_captures()
            time.sleep(2)  # a duplicate upload would land after the first
            keys = [c["key"] for c in arm_captures()]
            assert len(keys) == sent and len(set(keys)) == sent, keys

            # v2 everywhere, then an operator's rollback: the emulated device goes back to v1.
            d2 = api.request("POST", "/api/v1/deployments", body={"model": "detector", "version": "2.0.0",
                                                                  "fleet": "cams", "strategy": fast})
            assert wait_for(lambda: api.request("GET", f"/api/v1/deployments/{d2['id']}")["state"] == "succeeded",
                            240), api.request("GET", f"/api/v1/deployments/{d2['id']}")
            assert wait_for(lambda: _served(arm_address) == "2.0.0", 120)
            api.request("POST", f"/api/v1/deployments/{d2['id']}/rollback")
            assert wait_for(lambda: _served(arm_address) == "1.0.0" and _served(native.address) == "1.0.0", 240)
        finally:
            stop_all(agents)
