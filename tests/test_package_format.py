"""The package format is a contract: golden manifest, deterministic tar, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import edgemill
from edgemill.package import open_package, write_package
from edgemill.package.canonical import canonical_json

GOLDEN = Path(__file__).parent / "golden" / "manifest_mlp_x86_64-avx2.json"
VOLATILE = {"sha256", "created", "edgemill_version", "framework_version", "size", "value"}


def normalized(value: object) -> object:
    """The manifest with values that legitimately vary (hashes, times, versions) replaced by their type."""
    if isinstance(value, dict):
        return {k: (f"<{type(v).__name__}>" if k in VOLATILE else normalized(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if isinstance(value, str) and value.startswith("source:sha256:"):
        return "source:sha256:<hex>"
    return value


def test_manifest_matches_the_golden_contract(model_dir: Path, tmp_path: Path) -> None:
    result = edgemill.compile(model_dir / "mlp.onnx", target="x86_64-avx2", output=tmp_path / "m.emp",
                              name="mlp", version="1.2.3", measure=False)
    with open_package(result.path) as reader:
        raw = reader.read("manifest.json")
    assert raw == canonical_json(json.loads(raw)), "manifest.json must be canonical JSON"
    got = normalized(json.loads(raw))
    if os.environ.get("EDGEMILL_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text()), (
        "the manifest format changed: if intended, bump the format version or regenerate with "
        "EDGEMILL_UPDATE_GOLDEN=1 and explain the change in review"
    )


def test_tar_form_is_deterministic(tmp_path: Path) -> None:
    files = {"manifest.json": b"{}", "model/model.onnx": b"abc", "report.json": b"[]"}
    a = write_package(files, tmp_path / "a.emp")
    b = write_package(dict(reversed(list(files.items()))), tmp_path / "b.emp")
    assert a.read_bytes() == b.read_bytes()


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_error(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("edgemill.package.writer.os.fsync", disk_error)
    files = {"manifest.json": b"{}", "model/model.onnx": b"abc"}
    with pytest.raises(OSError):
        write_package(files, tmp_path / "x.emp")
    with pytest.raises(OSError):
        write_package(files, tmp_path / "xdir")
    assert os.listdir(tmp_path) == []


def test_directory_package_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    write_package({"manifest.json": b"1", "model/old.bin": b"old"}, out)
    write_package({"manifest.json": b"2", "model/new.bin": b"new"}, out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "manifest.json", "model/new.bin"]
    assert sorted(os.listdir(tmp_path)) == ["pkg"]
