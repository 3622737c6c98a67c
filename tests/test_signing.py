"""Signing and verification, including interoperability with the OpenSSF model-signing tool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.errors import RefusalReason, VerificationError
from edgemill.package import open_verified, sign_package

from .conftest import run_cli


def test_signed_package_verifies_and_loads(packages: dict, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    pkg = tmp_path / "m.emp"
    shutil.copy(packages["mlp"], pkg)
    signed = run_cli("sign", pkg, "--key", keypair[0])
    assert signed.code == 0 and "signed" in signed.out
    verified = run_cli("verify", pkg, "--trusted-key", keypair[1])
    assert verified.code == 0 and "verified" in verified.out
    model = rt.load(pkg, trusted_keys=[keypair[1]])
    assert model.signed_by is not None
    assert model.run({"features": np.zeros((1, 64), np.float32)})["logits"].shape == (1, 10)


def test_signing_does_not_change_the_package_id(packages: dict, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    pkg = tmp_path / "m.emp"
    shutil.copy(packages["mlp"], pkg)
    before = rt.load(pkg).package_id
    sign_package(pkg, keypair[0])
    assert rt.load(pkg, trusted_keys=[keypair[1]]).package_id == before


def test_any_of_several_trusted_keys_is_enough(packages: dict, keypair: tuple[Path, Path],
                                               other_keypair: tuple[Path, Path], tmp_path: Path) -> None:
    pkg = tmp_path / "m.emp"
    shutil.copy(packages["mlp"], pkg)
    sign_package(pkg, keypair[0])
    result = run_cli("verify", pkg, "--trusted-key", other_keypair[1], "--trusted-key", keypair[1])
    assert result.code == 0


def test_resigning_replaces_the_signature(packages: dict, keypair: tuple[Path, Path],
                                          other_keypair: tuple[Path, Path], tmp_path: Path) -> None:
    pkg = tmp_path / "m.emp"
    shutil.copy(packages["mlp"], pkg)
    sign_package(pkg, keypair[0])
    sign_package(pkg, other_keypair[0])
    with tarfile.open(pkg) as tar:
        assert tar.getnames().count("signature/model.sig") == 1
    with pytest.raises(VerificationError) as err:
        open_verified(pkg, [keypair[1]])
    assert err.value.reason is RefusalReason.UNTRUSTED_KEY
    open_verified(pkg, [other_keypair[1]])[0].close()


def test_directory_packages_are_signed_in_place(model_dir: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    import edgemill

    pkg = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "pkg", measure=False).path
    sign_package(pkg, keypair[0])
    assert (pkg / "signature" / "model.sig").is_file()
    rt.load(pkg, trusted_keys=[keypair[1]])
    (pkg / "model" / "notes.txt").write_text("added later")
    with pytest.raises(VerificationError) as err:
        rt.load(pkg, trusted_keys=[keypair[1]])
    assert err.value.reason is RefusalReason.FILE_ADDED


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run_cli("keys", "generate", tmp_path / "k").code == 0
    assert oct((tmp_path / "k" / "edgemill.key").stat().st_mode & 0o777) == "0o600"
    again = run_cli("keys", "generate", tmp_path / "k")
    assert again.code == 1 and "already exists" in again.err and "--force" in again.err
    assert run_cli("keys", "generate", tmp_path / "k", "--force").code == 0


# --- OpenSSF model-signing interoperability (needs the model-signing package from [dev]) -----------

model_signing = pytest.importorskip("model_signing")


def _model_signing_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", *args], capture_output=True, text=True, timeout=300)


def test_model_signing_tool_verifies_our_signature(model_dir: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    import edgemill

    pkg = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "pkg", measure=False).path
    sign_package(pkg, keypair[0])
    ok = _model_signing_cli("verify", "key", "--signature", str(pkg / "signature" / "model.sig"),
                            "--public_key", str(keypair[1]), str(pkg))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (pkg / "report.json").write_text("{}")
    tampered = _model_signing_cli("verify", "key", "--signature", str(pkg / "signature" / "model.sig"),
                                  "--public_key", str(keypair[1]), str(pkg))
    assert tampered.returncode != 0


def test_we_verify_a_package_signed_by_the_model_signing_tool(model_dir: Path, keypair: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    import edgemill

    pkg = edgemill.compile(model_dir / "mlp.onnx", output=tmp_path / "pkg", measure=False).path
    (pkg / "signature").mkdir()
    made = _model_signing_cli("sign", "key", "--private_key", str(keypair[0]),
                              "--signature", str(pkg / "signature" / "model.sig"), str(pkg))
    assert made.returncode == 0, made.stdout + made.stderr
    model = rt.load(pkg, trusted_keys=[keypair[1]])
    assert model.signed_by is not None
    bundle = json.loads((pkg / "signature" / "model.sig").read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
