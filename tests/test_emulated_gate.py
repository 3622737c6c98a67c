"""The accuracy gate of an Arm compile runs on Arm kernels when an emulated device is prepared, and says
where it ran either way.

The deliberate case: one MatMul with a 4096-long dot product, compiled to fp16 for an Armv8.2 target.
onnxruntime's x86 build computes the fp16 MatMul by widening to fp32 (relative error ~2e-4), its Arm build
accumulates in fp16 with the CPU's fp16 arithmetic (~1e-2): the same candidate passes a 0.3 % allowance on
x86 and fails it on the target."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgemill
from edgemill.emulation.device import EmulatedDevice
from edgemill.emulation.gate import HostRunner, runner_for
from edgemill.emulation.platforms import PLATFORMS, get_platform
from edgemill.emulation.prepare import why_unavailable
from edgemill.errors import AccuracyCheckError, OptionError
from edgemill.targets import get_target

from .conftest import run_cli
from ._emulated import aarch64_device, aarch64_rootfs, machine_device_cache  # noqa: F401

AARCH64 = PLATFORMS["linux-aarch64"]


def _long_dot(folder: Path, k: int = 4096) -> Path:
    w = np.random.default_rng(0).standard_normal((k, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "long_dot",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "long_dot.onnx"
    onnx.save(model, str(path))
    return path


def _report(package: Path) -> dict:  # type: ignore[type-arg]
    with tarfile.open(package) as tar:
        member = tar.extractfile("report.json")
        assert member is not None
        return json.loads(member.read())


# --- without emulation: every machine -----------------------------------------------------------------

def test_a_cross_compile_without_a_device_says_its_gate_ran_on_the_host(tmp_path: Path) -> None:
    source = _long_dot(tmp_path)
    result = run_cli("compile", source, "-t", "aarch64", "-o", tmp_path / "x.emp")
    assert result.code == 0, result.err
    report = _report(tmp_path / "x.emp")
    assert report["gate"]["ran_on"] == "host"
    note = report["gate"]["note"]
    assert "aarch64" in note and "edgemill emulator prepare --platform linux-aarch64" in note
    assert "edgemill emulator prepare" in result.err  # the warning the user sees
    assert report["accuracy"]["judged_on"].startswith("host")
    shown = run_cli("inspect", tmp_path / "x.emp")
    assert "judged on host (x86_64)" in shown.out or "judged on host (" in shown.out, shown.out


def test_a_host_compile_needs_no_device_and_adds_no_note(tmp_path: Path) -> None:
    runner = runner_for(get_target("host"), lambda *a: [])
    assert isinstance(runner, HostRunner) and "note" not in runner.describe()


def test_the_fp16_candidate_passes_on_x86_kernels(tmp_path: Path) -> None:
    """The control for the emulated test below: judged on this host, the fp16 candidate is within 0.3 %."""
    result = edgemill.compile(_long_dot(tmp_path), target="aarch64-v8.2", precision="fp16", max_accuracy_drop=0.003,
                              output=tmp_path / "x86.emp", measure=False)
    assert result.manifest.precision == "fp16"
    assert result.report["accuracy"]["max_relative_error"] < 1e-3


def test_what_the_device_cannot_emulate_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import edgemill.emulation.prepare as prepare

    monkeypatch.setattr(prepare.os, "geteuid", lambda: 1000)
    assert "need root" in (why_unavailable(AARCH64) or "")
    monkeypatch.setattr(prepare.os, "geteuid", lambda: 0)
    monkeypatch.setattr(prepare, "BINFMT", tmp_path / "binfmt_misc")
    assert "mount -t binfmt_misc" in (why_unavailable(AARCH64) or "")
    (tmp_path / "binfmt_misc").mkdir()
    (tmp_path / "binfmt_misc" / "status").write_text("enabled\n")
    assert "apt install qemu-user-static" in (why_unavailable(AARCH64) or "")
    (tmp_path / "binfmt_misc" / "qemu-aarch64").write_text("enabled\ninterpreter /x\nflags: P\n")
    assert "lacks the F flag" in (why_unavailable(AARCH64) or "")
    (tmp_path / "binfmt_misc" / "qemu-aarch64").write_text("disabled\ninterpreter /x\nflags: PF\n")
    assert "update-binfmts --enable qemu-aarch64" in (why_unavailable(AARCH64) or "")


def test_armv7l_is_refused_with_the_reason() -> None:
    with pytest.raises(OptionError) as refused:
        get_platform("linux-armv7l")
    assert "32-bit Arm wheels" in str(refused.value) and "docs/devices.md" in str(refused.value)


def test_a_device_command_is_a_private_chroot_with_a_clean_environment(tmp_path: Path) -> None:
    device = EmulatedDevice(tmp_path / "root", AARCH64)
    offline = device.command(["python3", "-V"], network=False, env={"A": "1"}, cwd="/tmp")
    assert offline[:4] == ["unshare", "--mount", "--net", "--"]
    assert str(tmp_path / "root") in offline and offline[-2:] == ["python3", "-V"] and "A=1" in offline
    assert "--net" not in device.command(["true"])


def test_emulator_status_and_run_say_what_to_do(tmp_path: Path) -> None:
    status = run_cli("emulator", "status")
    assert status.code == 0 and "linux-aarch64:" in status.out
    ran = run_cli("emulator", "run", "--", "uname", "-m")
    assert ran.code != 0 and ("edgemill emulator prepare" in ran.err or "cannot emulate" in ran.err)


# --- on an emulated aarch64 device ----------------------------------------------------------------------

@pytest.mark.slow
def test_an_aarch64_compile_is_judged_on_emulated_aarch64(aarch64_device: EmulatedDevice, machine_device_cache: Path,
                                                          tmp_path: Path) -> None:
    result = run_cli("compile", _long_dot(tmp_path, k=256), "-t", "aarch64", "-o", tmp_path / "arm.emp")
    assert result.code == 0, result.err
    assert "emulated aarch64" in result.out + result.err
    report = _report(tmp_path / "arm.emp")
    gate = report["gate"]
    assert gate["ran_on"] == "emulated aarch64" and gate["machine"] == "aarch64"
    assert "not measured" in gate["note"] and gate["versions"]["onnxruntime"]
    assert report["accuracy"]["judged_on"] == "emulated aarch64"
    assert "judged on emulated aarch64" in run_cli("inspect", tmp_path / "arm.emp").out
    assert all(c.get("judged_on") == "emulated aarch64" for c in report["candidates"] if c["status"] == "passed")
    assert "cannot run here" in report["chosen"]["why"]  # nothing timed under qemu


@pytest.mark.slow
def test_the_arm_gate_rejects_an_fp16_candidate_that_x86_kernels_pass(aarch64_device: EmulatedDevice,
                                                                       machine_device_cache: Path,
                                                                       tmp_path: Path) -> None:
    source = _long_dot(tmp_path)
    with pytest.raises(AccuracyCheckError) as rejected:
        edgemill.compile(source, target="aarch64-v8.2", precision="fp16", max_accuracy_drop=0.003,
                         output=tmp_path / "arm.emp", measure=False)
    message = str(rejected.value)
    assert "onnxruntime/fp16" in message and "relative_error drop" in message
    drop = float(message.split("relative_error drop ")[1].split(",")[0].split(")")[0])
    assert drop > 0.003  # ~1e-2 on Arm; the same candidate judged on x86 is ~2e-4 (the test above)
    assert not (tmp_path / "arm.emp").exists()
    # Allowed that much, the package is written, and says its gate was Arm's.
    result = edgemill.compile(source, target="aarch64-v8.2", precision="fp16", max_accuracy_drop=0.05,
                              output=tmp_path / "arm.emp", measure=False)
    assert result.manifest.accuracy["judged_on"] == "emulated aarch64"
    assert result.manifest.accuracy["max_relative_error"] > 10 * 2e-4


def test_a_backend_whose_parent_package_is_missing_is_reported_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a device without onnx, the reference backend's library (onnx.reference) is missing, not an error."""
    import importlib.util

    from edgemill.runtime.backends import missing_library

    real = importlib.util.find_spec

    def no_onnx(name: str, *args: object) -> object:
        if name == "onnx" or name.startswith("onnx."):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_onnx)
    assert missing_library("reference") == "onnx.reference"


@pytest.mark.parametrize("with_filter", [True, False])
def test_a_bundle_is_unpacked_as_plain_files_with_or_without_tarfiles_data_filter(
        with_filter: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Debian bookworm's Python is 3.11.2, whose tarfile has no data filter (3.11.4 added it)."""
    import io

    from edgemill.emulation.prepare import EmulationUnavailable, _extract_plain

    if not with_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def tar_of(name: str) -> tarfile.TarFile:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
        buffer.seek(0)
        return tarfile.open(fileobj=buffer)

    _extract_plain(tar_of("bundle/install.sh"), tmp_path / "in")
    assert (tmp_path / "in" / "bundle" / "install.sh").read_text() == "ok"
    with pytest.raises(EmulationUnavailable, match="outside plain files"):
        _extract_plain(tar_of("../evil.sh"), tmp_path / "in")
    assert not (tmp_path / "evil.sh").exists()
