"""Every bad input gets one clear line naming the value and the fix, the documented exit code, no
traceback, and nothing half-written left behind."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgemill.package.writer import tar_bytes_to

from .conftest import CliResult, run_cli


def assert_one_clear_line(result: CliResult, code: int, *needles: str) -> None:
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = [ln for ln in result.err.splitlines() if ln.startswith("edgemill:")]
    assert len(lines) == 1, result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def rewrite_emp(src: Path, dst: Path, change) -> Path:  # type: ignore[no-untyped-def]
    with tarfile.open(src, "r:") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    change(files)
    with open(dst, "wb") as f:
        tar_bytes_to(files, f)  # type: ignore[arg-type]
    return dst


@pytest.fixture()
def signed(packages: dict, keypair: tuple[Path, Path], tmp_path: Path) -> Path:
    pkg = tmp_path / "signed.emp"
    shutil.copy(packages["mlp"], pkg)
    assert run_cli("sign", pkg, "--key", keypair[0]).code == 0
    return pkg


# --- compile ---------------------------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    result = run_cli("compile", tmp_path / "nope.onnx")
    assert_one_clear_line(result, 1, "model file not found", "nope.onnx", "Fix:")


def test_file_that_is_not_a_model(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("these are my notes, not a model\n")
    result = run_cli("compile", bogus, "-o", tmp_path / "out.emp")
    assert_one_clear_line(result, 1, "not an ONNX model", "notes.onnx")
    assert not (tmp_path / "out.emp").exists()


def test_file_of_unknown_kind(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.bin"
    bogus.write_bytes(b"\x00\x01garbage")
    result = run_cli("compile", bogus)
    assert_one_clear_line(result, 1, "cannot tell which framework", "weights.bin", "--framework")


def test_model_that_fails_the_onnx_checker(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["undefined_tensor"], ["y"])
    graph = helper.make_graph([node], "broken", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    result = run_cli("compile", path, "-o", tmp_path / "out.emp")
    assert_one_clear_line(result, 1, "fails the ONNX checker", "undefined_tensor", "re-export")
    assert not (tmp_path / "out.emp").exists()


def test_unknown_target(model_dir: Path) -> None:
    result = run_cli("compile", model_dir / "mlp.onnx", "-t", "raspberry")
    assert_one_clear_line(result, 1, "unknown target", "'raspberry'", "aarch64", "edgemill targets")


def test_input_override_with_an_unknown_name(model_dir: Path) -> None:
    result = run_cli("compile", model_dir / "dynamic_batch.onnx", "--input", "pixels:8x64")
    assert_one_clear_line(result, 1, "'pixels'", "'features'")


def test_input_override_with_the_wrong_dtype(model_dir: Path) -> None:
    result = run_cli("compile", model_dir / "dynamic_batch.onnx", "--input", "features:8x64:int64")
    assert_one_clear_line(result, 1, "different dtype", "'int64'", "float32")


def test_input_override_that_cannot_be_parsed(model_dir: Path) -> None:
    result = run_cli("compile", model_dir / "dynamic_batch.onnx", "--input", "features")
    assert_one_clear_line(result, 1, "cannot read --input", "NAME:SHAPE")


def test_int8_that_cannot_be_built_says_why(model_dir: Path) -> None:
    # No --calibration (static INT8 needs it) and a Gemm-only MLP (dynamic INT8 quantizes MatMul).
    result = run_cli("compile", model_dir / "mlp.onnx", "--precision", "int8")
    assert_one_clear_line(result, 1, "int8", "--calibration", "fp32")


def test_accuracy_gate_refuses_and_writes_nothing(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict.emp"
    # OpenVINO has no optimization ladder to step down: its fp32 kernels differ from the reference by rounding
    result = run_cli("compile", model_dir / "cnn.onnx", "-o", out, "--tolerance", "0", "--backend", "openvino")
    assert_one_clear_line(result, 1, "differs from the original", "no package was written")
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary files left either


def test_a_failed_compile_keeps_the_previous_package(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.emp"
    assert run_cli("compile", model_dir / "cnn.onnx", "-o", out, "--no-measure").code == 0
    before = out.read_bytes()
    assert run_cli("compile", model_dir / "cnn.onnx", "-o", out, "--tolerance", "0", "--backend", "openvino").code == 1
    assert out.read_bytes() == before


def test_usage_error_exits_2() -> None:
    result = run_cli("compile")
    assert result.code == 2 and "usage" in result.err and "Traceback" not in result.err


# --- run ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "needles"),
    [
        ({"pixels": np.zeros((1, 64), np.float32)}, ["unknown input name", "'pixels'", "'features'"]),
        ({"features": np.zeros((1, 64), np.float64)}, ["wrong dtype", "float64", "float32", "astype"]),
        ({"features": np.zeros((1, 63), np.float32)}, ["wrong shape", "[1, 63]", "axis 1 must be 64"]),
        ({"features": np.zeros((64,), np.float32)}, ["wrong rank", "[64]", "2 dimensions"]),
    ],
)
def test_run_with_wrong_inputs(array: dict, needles: list[str], packages: dict, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", **array)
    result = run_cli("run", packages["mlp"], "-i", tmp_path / "in.npz")
    assert_one_clear_line(result, 1, *needles)


def test_run_with_a_missing_input_file(packages: dict, tmp_path: Path) -> None:
    result = run_cli("run", packages["mlp"], "-i", f"features={tmp_path / 'x.npy'}")
    assert_one_clear_line(result, 1, "input file not found", "x.npy")


def test_run_without_inputs_says_what_is_expected(packages: dict) -> None:
    result = run_cli("run", packages["mlp"])
    assert_one_clear_line(result, 1, "no inputs given", "features: float32[1, 64]", "--random")


# --- corrupt packages ---------------------------------------------------------------------------


def test_truncated_package(packages: dict, tmp_path: Path) -> None:
    data = packages["cnn"].read_bytes()
    bad = tmp_path / "truncated.emp"
    bad.write_bytes(data[: len(data) // 2])
    result = run_cli("run", bad, "--random")
    assert_one_clear_line(result, 3, "corrupt_package", "truncated.emp")


def test_package_that_is_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "random.emp"
    bad.write_bytes(os.urandom(4096))
    result = run_cli("inspect", bad)
    assert_one_clear_line(result, 3, "corrupt_package", "random.emp")


def test_missing_package(tmp_path: Path) -> None:
    result = run_cli("verify", tmp_path / "none.emp", "--trusted-key", tmp_path / "k.pub")
    assert result.code == 1 and "not found" in result.err


def test_tar_with_path_traversal_is_refused(packages: dict, tmp_path: Path) -> None:
    bad = tmp_path / "evil.emp"
    with tarfile.open(packages["mlp"], "r:") as src, tarfile.open(bad, "w:") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        dst.addfile(info, io.BytesIO(b"bad"))
    assert_one_clear_line(run_cli("run", bad, "--random"), 3, "corrupt_package", "../escape.txt")


def test_tar_with_a_symlink_is_refused(packages: dict, tmp_path: Path) -> None:
    bad = tmp_path / "link.emp"
    with tarfile.open(packages["mlp"], "r:") as src, tarfile.open(bad, "w:") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        link = tarfile.TarInfo("model/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        dst.addfile(link)
    assert_one_clear_line(run_cli("run", bad, "--random"), 3, "corrupt_package", "model/link")


# --- signatures -----------------------------------------------------------------------------------


def test_untrusted_key(signed: Path, other_keypair: tuple[Path, Path]) -> None:
    result = run_cli("verify", signed, "--trusted-key", other_keypair[1])
    assert_one_clear_line(result, 3, "untrusted_key", "not trusted", "--trusted-key")


def test_unsigned_package_when_a_signature_is_required(packages: dict, keypair: tuple[Path, Path]) -> None:
    result = run_cli("verify", packages["mlp"], "--trusted-key", keypair[1])
    assert_one_clear_line(result, 3, "not_signed", "edgemill sign")


def test_file_changed_after_signing(signed: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    def flip(files: dict) -> None:
        data = bytearray(files["model/model.onnx"])
        data[len(data) // 2] ^= 0xFF
        files["model/model.onnx"] = bytes(data)

    bad = rewrite_emp(signed, tmp_path / "changed.emp", flip)
    result = run_cli("run", bad, "--random", "--trusted-key", keypair[1])
    assert_one_clear_line(result, 3, "file_modified", "model/model.onnx")


def test_file_added_after_signing(signed: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    bad = rewrite_emp(signed, tmp_path / "added.emp", lambda f: f.update({"model/extra.so": b"\x7fELF"}))
    result = run_cli("verify", bad, "--trusted-key", keypair[1])
    assert_one_clear_line(result, 3, "file_added", "model/extra.so")


def test_file_removed_after_signing(signed: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    bad = rewrite_emp(signed, tmp_path / "removed.emp", lambda f: f.pop("report.json"))
    result = run_cli("verify", bad, "--trusted-key", keypair[1])
    assert_one_clear_line(result, 3, "file_removed", "report.json")


def test_manifest_edited_after_signing(signed: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    def edit(files: dict) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["version"] = "9.9.9"
        files["manifest.json"] = json.dumps(manifest).encode()

    bad = rewrite_emp(signed, tmp_path / "edited.emp", edit)
    result = run_cli("verify", bad, "--trusted-key", keypair[1])
    assert_one_clear_line(result, 3, "manifest_modified", "re-sign")


def test_signature_bytes_altered(signed: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    def forge(files: dict) -> None:
        bundle = json.loads(files["signature/model.sig"])
        sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
        files["signature/model.sig"] = json.dumps(bundle).encode()

    bad = rewrite_emp(signed, tmp_path / "forged.emp", forge)
    result = run_cli("verify", bad, "--trusted-key", keypair[1])
    assert result.code == 3 and ("bad_signature" in result.err or "malformed_signature" in result.err)


def test_tampered_unsigned_package_is_refused_by_its_own_manifest(packages: dict, tmp_path: Path) -> None:
    def flip(files: dict) -> None:
        data = bytearray(files["model/model.onnx"])
        data[-1] ^= 0x01
        files["model/model.onnx"] = bytes(data)

    bad = rewrite_emp(packages["mlp"], tmp_path / "bad.emp", flip)
    assert_one_clear_line(run_cli("run", bad, "--random"), 3, "file_modified", "model/model.onnx")


def test_signing_refuses_a_package_already_tampered_with(packages: dict, keypair: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    bad = rewrite_emp(packages["mlp"], tmp_path / "bad.emp", lambda f: f.update({"model/evil.bin": b"x"}))
    assert_one_clear_line(run_cli("sign", bad, "--key", keypair[0]), 3, "file_added", "model/evil.bin")
    with tarfile.open(bad) as tar:
        assert "signature/model.sig" not in tar.getnames()


def test_signing_with_a_file_that_is_not_a_key(packages: dict, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    assert_one_clear_line(run_cli("sign", packages["mlp"], "--key", key), 1, "not a PEM private key", "key.pem")


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgemill", "compile", str(tmp_path / "missing.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "model file not found" in proc.stderr
