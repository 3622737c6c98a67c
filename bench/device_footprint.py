"""The agent's footprint on a device, measured on an emulated aarch64 device (and natively, for scale).

    .venv/bin/python bench/device_footprint.py [--platform linux-aarch64] [--seconds 20]

Needs what `edgemill emulator prepare` needs (root, binfmt_misc, qemu-user-static, mmdebstrap); uses (and
makes, the first time) the prepared device, then works on a copy of it. Printed:

* storage: the agent's Python environment as install.sh leaves it (/opt/edgemill/venvs/...), by package
  (the sizes of the files each package's RECORD lists), and the Debian base with Python it needs;
* memory: the agent's resident set (VmRSS) idle, after ``--seconds``, and with a model loaded and served
  (the test MLP, and the test CNN at 1x3x224x224), each in a fresh agent, inside the emulated device and natively on this
  host. Under qemu-user the process is the emulator running the device's program: its RSS holds the
  program's memory plus qemu's translation cache (tens of MB), so it is an upper bound of the device's.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run inside the virtual environment: edgemill as installed (its metadata builds the device's bundle).
from edgemill.emulation.device import AGENT_EDGEMILL as AGENT  # noqa: E402
from edgemill.emulation.device import EmulatedDevice  # noqa: E402
from edgemill.emulation.platforms import get_platform  # noqa: E402
from edgemill.emulation.prepare import prepare_device, require  # noqa: E402



def package_sizes(site_packages: Path) -> dict[str, int]:
    """Bytes per installed distribution, from the files its RECORD lists."""
    sizes: dict[str, int] = {}
    for info in site_packages.glob("*.dist-info"):
        name = info.name.split("-")[0].lower().replace("_", "-")
        total = 0
        record = info / "RECORD"
        if record.exists():
            for row in csv.reader(io.StringIO(record.read_text())):
                if row and not row[0].startswith(".."):
                    path = site_packages / row[0]
                    if path.is_file():
                        total += path.stat().st_size
        sizes[name] = total
    return sizes


def tree_size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_models(folder: Path) -> dict[str, Path]:
    import onnx

    import edgemill
    from edgemill.demo import zoo

    out: dict[str, Path] = {}
    for name, model in {"mlp": zoo.mlp(), "cnn224": zoo.cnn(image=224)}.items():
        onnx.save(model, str(folder / f"{name}.onnx"))
        out[name] = edgemill.compile(folder / f"{name}.onnx", target="aarch64", output=folder / f"{name}.emp",
                                     measure=False, name=name).path
    return out


def config(folder: str, port: int) -> str:
    return (f'[device]\nname = "footprint"\n[listen]\naddress = "127.0.0.1:{port}"\nunix_socket = ""\n'
            f'metrics_address = ""\n[models]\ndirectory = "{folder}/models"\nallow_unsigned = true\n'
            f'[capture]\ndirectory = "{folder}/captures"\n')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_agent(command: list[str], port: int, package: Path | None, seconds: float, install: Path,
                  install_as: str) -> tuple[float, float | None]:
    """(idle RSS MB, RSS MB with ``package`` loaded and 20 predictions served) of an agent started by
    ``command``; the package is copied into ``install`` and loaded as ``install_as`` (the agent's path)."""
    from edgemill.client import AgentClient

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with AgentClient(f"127.0.0.1:{port}", timeout=300) as client:
            client.wait_ready(300)
            client.list_models()
            time.sleep(seconds)
            idle = rss_mb(proc.pid)
            loaded = None
            if package is not None:
                shutil.copy(package, install / package.name)
                model = client.load_model(f"{install_as}/{package.name}")
                spec = model["model"]["inputs"][0]
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
                x = np.zeros(shape, dtype=np.float32)
                for _ in range(20):
                    client.predict(model["model"]["name"], {spec["name"]: x}, timeout=300)
                time.sleep(2)
                loaded = rss_mb(proc.pid)
            return idle, loaded
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", default="linux-aarch64")
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time before reading the idle RSS")
    args = parser.parse_args()
    platform = get_platform(args.platform)
    require(platform, to_build=True)
    prepared = prepare_device(platform, log=lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="edgemill-footprint-") as tmp:
        work = Path(tmp)
        device: EmulatedDevice = prepared.clone(work / "device")
        venv = device.path(os.readlink(device.path("/opt/edgemill/venv")))  # install.sh: an absolute link
        site = next(venv.glob("lib/python3*/site-packages"))
        sizes = package_sizes(site)
        venv_total = tree_size(venv)
        base = tree_size(prepared.root.parent / "rootfs")
        print(f"storage on emulated {platform.machine} (Debian {platform.suite}):")
        print(f"  agent environment {venv.name}: {venv_total / 1e6:.1f} MB")
        for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
            print(f"    {name:<20} {size / 1e6:7.1f} MB")
        print(f"  Debian minbase + python3 (the base the bundle needs): {base / 1e6:.0f} MB")

        models = write_models(work)
        results = []
        for name, package in [("no model", None), *models.items()]:
            for where in ("emulated", "native"):
                port = free_port()
                if where == "emulated":
                    folder = "/var/lib/footprint"
                    device.path(folder + "/models").mkdir(parents=True, exist_ok=True)
                    device.path("/etc/footprint.toml").write_text(config(folder, port))
                    command = device.command([AGENT, "agent", "--config", "/etc/footprint.toml"])
                    install, install_as = device.path(folder + "/models"), folder + "/models"
                else:
                    folder = str(work / "native")
                    Path(folder, "models").mkdir(parents=True, exist_ok=True)
                    Path(folder, "agent.toml").write_text(config(folder, port))
                    command = [sys.executable, "-m", "edgemill", "agent", "--config", f"{folder}/agent.toml"]
                    install, install_as = Path(folder, "models"), f"{folder}/models"
                for old in install.glob("*.emp"):
                    old.unlink()
                idle, loaded = measure_agent(command, port, package, args.seconds, install, install_as)
                results.append((name, where, idle, loaded))
        print("memory (VmRSS, MB):")
        print(f"  {'model':<10} {'where':<9} {'idle':>7} {'loaded+served':>14}")
        for name, where, idle, loaded in results:
            print(f"  {name:<10} {where:<9} {idle:7.1f} {'' if loaded is None else f'{loaded:14.1f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
