"""The trust decision as a pure function: each refusal has its named reason."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgemill.errors import RefusalReason, VerificationError
from edgemill.package.bundle import make_bundle
from edgemill.package.canonical import canonical_json
from edgemill.package.keys import generate_keypair, load_private_key, load_public_key
from edgemill.package.verify import verify_package

MODEL = b"model bytes"
REPORT = b"{}"


def manifest(version: str = "1.0.0", files: dict | None = None) -> bytes:
    files = files if files is not None else {"model/model.onnx": {"sha256": hashlib.sha256(MODEL).hexdigest(),
                                                                  "size": len(MODEL)}}
    return canonical_json({
        "format": "edgemill.package/1", "name": "m", "version": version, "created": "2026-01-01T00:00:00Z",
        "target": {"name": "host"}, "backend": "onnxruntime", "precision": "fp32", "entrypoint": "model/model.onnx",
        "inputs": [], "outputs": [], "source": {}, "files": files, "accuracy": {}, "edgemill_version": "0.1.0",
        "lineage": [],
    })


def digests(manifest_bytes: bytes, **extra: bytes) -> dict[str, str]:
    files = {"manifest.json": manifest_bytes, "model/model.onnx": MODEL, "report.json": REPORT, **extra}
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@pytest.fixture(scope="module")
def keys():  # type: ignore[no-untyped-def]
    private, public = generate_keypair()
    other_private, other_public = generate_keypair()
    return load_private_key(private), load_public_key(public), load_public_key(other_public)


def refusal(*args, **kwargs) -> RefusalReason:  # type: ignore[no-untyped-def]
    with pytest.raises(VerificationError) as err:
        verify_package(*args, **kwargs)
    return err.value.reason


def test_intact_signed_package_is_accepted(keys) -> None:  # type: ignore[no-untyped-def]
    private, public, _ = keys
    m = manifest()
    d = digests(m)
    verified = verify_package(m, d, make_bundle("m", d, private), [public])
    assert verified.signed_by == public and verified.manifest.version == "1.0.0"


def test_package_id_ignores_the_creation_time() -> None:
    a = verify_package(manifest(), digests(manifest()), None, None)
    raw = json.loads(manifest())
    raw["created"] = "2030-05-05T00:00:00Z"
    later = canonical_json(raw)
    b = verify_package(later, digests(later), None, None)
    assert a.package_id == b.package_id


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", RefusalReason.NOT_SIGNED),
        ("untrusted", RefusalReason.UNTRUSTED_KEY),
        ("garbage_bundle", RefusalReason.MALFORMED_SIGNATURE),
        ("wrong_signature", RefusalReason.BAD_SIGNATURE),
        ("model_changed", RefusalReason.FILE_MODIFIED),
        ("file_added", RefusalReason.FILE_ADDED),
        ("file_removed", RefusalReason.FILE_REMOVED),
        ("manifest_changed", RefusalReason.MANIFEST_MODIFIED),
        ("no_keys", RefusalReason.UNTRUSTED_KEY),
    ],
)
def test_each_refusal_has_its_reason(case: str, reason: RefusalReason, keys) -> None:  # type: ignore[no-untyped-def]
    private, public, other = keys
    m = manifest()
    d = digests(m)
    bundle = make_bundle("m", d, private)
    trusted = [public]
    if case == "unsigned":
        bundle = None
    elif case == "untrusted":
        trusted = [other]
    elif case == "garbage_bundle":
        bundle = b"{not json"
    elif case == "wrong_signature":
        raw = json.loads(bundle)
        other_bundle = json.loads(make_bundle("m", {**d, "x": "00" * 32}, private))
        raw["dsseEnvelope"]["signatures"] = other_bundle["dsseEnvelope"]["signatures"]
        bundle = json.dumps(raw).encode()
    elif case == "model_changed":
        d["model/model.onnx"] = "11" * 32
    elif case == "file_added":
        d["model/extra.bin"] = "22" * 32
    elif case == "file_removed":
        del d["report.json"]
    elif case == "manifest_changed":
        m = manifest(version="2.0.0")
        d["manifest.json"] = hashlib.sha256(m).hexdigest()
    elif case == "no_keys":
        trusted = []
    assert refusal(m, d, bundle, trusted) is reason


def test_integrity_only_mode_checks_the_manifest_list() -> None:
    m = manifest()
    assert refusal(m, {**digests(m), "model/model.onnx": "33" * 32}, None, None) is RefusalReason.FILE_MODIFIED
    assert refusal(m, {**digests(m), "model/x": "44" * 32}, None, None) is RefusalReason.FILE_ADDED
    d = digests(m)
    del d["model/model.onnx"]
    assert refusal(m, d, None, None) is RefusalReason.FILE_REMOVED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", RefusalReason.MALFORMED_MANIFEST),
        (b"[]", RefusalReason.MALFORMED_MANIFEST),
        (canonical_json({"format": "other/9"}), RefusalReason.UNSUPPORTED_FORMAT),
        (canonical_json({"format": "edgemill.package/1", "name": "m"}), RefusalReason.MALFORMED_MANIFEST),
    ],
)
def test_malformed_manifests(data: bytes, reason: RefusalReason) -> None:
    assert refusal(data, {"manifest.json": hashlib.sha256(data).hexdigest()}, None, None) is reason


def test_missing_manifest() -> None:
    assert refusal(None, {}, None, None) is RefusalReason.MALFORMED_MANIFEST


def test_version_rollback_is_refused_unless_ordered() -> None:
    m = manifest(version="1.0.0")
    assert refusal(m, digests(m), None, None, installed_version="1.2.0") is RefusalReason.VERSION_ROLLBACK
    verify_package(m, digests(m), None, None, installed_version="1.2.0", allow_rollback=True)
    verify_package(m, digests(m), None, None, installed_version="1.0.0-rc.1")
