"""Where the accuracy gate runs a candidate: on this host, or inside an emulated device of the target's
architecture, so that an Arm target's candidates are judged on Arm kernels.

onnxruntime's Arm build has kernels of its own: its fp16 MatMul/Conv accumulate in fp16 where the x86
build widens to fp32, and its int8 paths differ too. A candidate judged on x86 can pass there and lose
accuracy on the device. With a prepared device (``edgemill emulator prepare``) the compile for an Arm
target sends each candidate's model files and the check feeds into the device, runs them with the device's
own Python, numpy and onnxruntime (the versions its agent bundle installs), and judges the outputs on the
host. Timings are not measured there: qemu's speed says nothing about the device's.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..targets import Target, host
from .device import AGENT_PYTHON, DeviceCommandError, EmulatedDevice

Run = Callable[[Any, Sequence[str], int | None, list[dict[str, np.ndarray]]], list[list[np.ndarray]]]


class CandidateRunner(Protocol):
    """Runs a candidate's artifact on the check feeds for the gate, somewhere."""

    def run(self, artifact: Any, output_names: Sequence[str], threads: int | None,
            feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]: ...

    def where(self, backend: str) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class HostRunner:
    """The gate on this machine's kernels. ``cross_reason``: why a target of another architecture is judged
    here anyway (no emulated device, and how to get one), which the report says."""

    def __init__(self, run: Run, target: Target, cross_reason: str | None = None) -> None:
        self._run, self.target, self.cross_reason = run, target, cross_reason

    def run(self, artifact: Any, output_names: Sequence[str], threads: int | None,
            feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        return self._run(artifact, output_names, threads, feeds)

    def where(self, backend: str) -> str:
        return f"host ({host().arch})"

    def describe(self) -> dict[str, Any]:
        record: dict[str, Any] = {"ran_on": "host", "machine": host().arch}
        if self.cross_reason is not None:
            record["note"] = (f"target {self.target.name} is {self.target.arch}, but the gate ran on this {host().arch} "
                              f"host's kernels ({self.cross_reason}); int8 and fp16 kernels differ between "
                              "architectures")
        return record

    def close(self) -> None:
        pass


class EmulatedRunner:
    """The gate inside an emulated device: one job folder inside it per compile, with the host's edgemill
    source (so the worker is this edgemill's, whatever version the device's agent is)."""

    def __init__(self, device: EmulatedDevice, fallback: Run, timeout_s: float = 900) -> None:
        self.device, self._fallback, self.timeout_s = device, fallback, timeout_s
        self._inside = f"/tmp/edgemill-gate-{uuid.uuid4().hex[:12]}"
        self._folder = device.path(self._inside)
        source = Path(__file__).resolve().parents[1]  # the edgemill package
        shutil.copytree(source, self._folder / "lib" / "edgemill",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static"))
        self._jobs = 0
        try:
            done = self._python(["-m", "edgemill.emulation.worker", "--probe"], timeout=300)
            self.probe: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except BaseException:
            self.close()
            raise

    def _python(self, args: list[str], timeout: float) -> Any:
        return self.device.run([AGENT_PYTHON, *args], env={"PYTHONPATH": f"{self._inside}/lib",
                                                           "PYTHONDONTWRITEBYTECODE": "1"},
                               timeout=timeout, network=False)

    def where(self, backend: str) -> str:
        missing = self.probe.get("missing", {}).get(backend)
        if missing:
            return f"host ({host().arch}): the emulated device has no {missing}"
        return f"emulated {self.device.platform.machine}"

    def describe(self) -> dict[str, Any]:
        versions = self.probe.get("versions", {})
        return {"ran_on": f"emulated {self.device.platform.machine}", "machine": self.probe.get("machine"),
                "device": str(self.device.root), "python": self.probe.get("python"), "versions": versions,
                "note": (f"candidates ran inside an emulated {self.device.platform.name} device (qemu-user) with its "
                         f"own onnxruntime {versions.get('onnxruntime', '?')}: the target's kernels judged accuracy; "
                         "timings are not measured under emulation")}

    def run(self, artifact: Any, output_names: Sequence[str], threads: int | None,
            feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        backend = artifact.candidate.backend
        if self.probe.get("missing", {}).get(backend):
            return self._fallback(artifact, output_names, threads, feeds)
        self._jobs += 1
        job = f"{self._inside}/job-{self._jobs}"
        folder = self.device.path(job)
        (folder / "files").mkdir(parents=True)
        names = list(artifact.files)
        for index, name in enumerate(names):
            (folder / "files" / str(index)).write_bytes(artifact.files[name])
        (folder / "job.json").write_text(json.dumps({
            "backend": backend, "entrypoint": artifact.entrypoint, "files": names, "output_names": list(output_names),
            "threads": threads, "backend_options": artifact.backend_options}, default=str))
        np.savez(folder / "feeds.npz", **{f"{i}/{name}": value for i, feed in enumerate(feeds)
                                          for name, value in feed.items()})
        try:
            self._python(["-m", "edgemill.emulation.worker", job], timeout=self.timeout_s)
            with np.load(folder / "outputs.npz") as stored:
                got: list[list[np.ndarray]] = [[] for _ in feeds]
                for key in sorted(stored.files, key=lambda k: tuple(int(p) for p in k.split("/"))):
                    index = int(key.split("/")[0])
                    got[index].append(stored[key])
            return got
        except DeviceCommandError as exc:
            error = folder / "error.json"
            if error.exists():
                raised = json.loads(error.read_text())
                raise RuntimeError(f"on the emulated {self.device.platform.machine} device: "
                                   f"{raised['type']}: {raised['message']}") from None
            raise RuntimeError(f"the emulated device could not run the candidate: {exc}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def runner_for(target: Target, run_here: Run) -> CandidateRunner:
    """The gate's runner for ``target``: the host when it runs the target's code (or nothing better is
    available), else the prepared emulated device of the target's architecture."""
    if target.arch == host().arch:  # this machine's kernels (whether or not it can time them)
        return HostRunner(run_here, target)
    from .platforms import platform_for_arch
    from .prepare import device_status

    platform = platform_for_arch(target.arch) if target.os == "linux" else None
    if platform is None:
        return HostRunner(run_here, target, f"no emulated device for {target.os}/{target.arch}")
    device, reason = device_status(platform)
    if device is None:
        return HostRunner(run_here, target, reason)
    try:
        return EmulatedRunner(device, run_here)
    except Exception as exc:  # noqa: BLE001 - a broken device must not stop the compile: judge here, say why
        return HostRunner(run_here, target, f"the emulated device at {device.root} did not start: {str(exc)[:300]}")
