"""The I/O shell around the package format: open and verify, read verified bytes, sign, describe."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RefusalReason, VerificationError
from .bundle import make_bundle, parse_bundle
from .keys import KeySource, PublicKey, load_private_key, load_public_keys
from .layout import BASELINE, MANIFEST, PIPELINE_DIR, REPORT, SIGNATURE
from .reader import PackageReader, open_package
from .verify import VerifiedPackage, verify_package
from .writer import is_tar_path, write_file_atomic, write_package

TrustedKeys = Sequence[KeySource | PublicKey]


def _public_keys(trusted_keys: TrustedKeys | None) -> list[PublicKey] | None:
    if trusted_keys is None:
        return None
    keys = [k for k in trusted_keys if isinstance(k, PublicKey)]
    keys += load_public_keys([k for k in trusted_keys if not isinstance(k, PublicKey)])
    return keys


def _gather(reader: PackageReader, keep_model: bool = False
            ) -> tuple[bytes | None, dict[str, str], bytes | None, dict[str, bytes]]:
    """Manifest bytes, the sha256 of every file but the signature, the signature bytes, and (when
    asked) the bytes of the model's files (the entrypoint and whatever else lies beside it under
    ``model/``, e.g. OpenVINO's weights, the pipeline's graphs and the drift baseline), read once: hashed here and later
    handed to the backend (and the monitor) as they are."""
    names = set(reader.names())
    bundle = reader.read(SIGNATURE) if SIGNATURE in names else None
    manifest = reader.read(MANIFEST) if MANIFEST in names else None
    entrypoint = _entrypoint(manifest) if keep_model else None
    kept: dict[str, bytes] = {}
    if entrypoint is not None:
        folder = entrypoint.rpartition("/")[0]
        wanted = {entrypoint, BASELINE} | ({n for n in names if n.startswith(folder + "/")} if folder else set())
        wanted |= {n for n in names if n.startswith(PIPELINE_DIR + "/")}
        kept = {n: reader.read(n) for n in sorted(wanted & names) if n not in (MANIFEST, SIGNATURE)}
    digests = {n: (hashlib.sha256(kept[n]).hexdigest() if n in kept else reader.sha256(n))
               for n in sorted(names - {SIGNATURE})}
    return manifest, digests, bundle, kept


def _entrypoint(manifest: bytes | None) -> str | None:
    """The entrypoint a manifest names, read leniently: verification judges the manifest properly."""
    try:
        value = json.loads(manifest or b"").get("entrypoint")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def open_verified(
    path: str | os.PathLike[str],
    trusted_keys: TrustedKeys | None = None,
    installed_version: str | None = None,
    allow_rollback: bool = False,
) -> tuple[PackageReader, VerifiedPackage]:
    """Open the package at ``path`` and verify it; the caller closes the reader."""
    keys = _public_keys(trusted_keys)
    reader = open_package(path)
    try:
        manifest, digests, bundle, _ = _gather(reader)
        verified = verify_package(manifest, digests, bundle, keys, installed_version, allow_rollback)
    except BaseException:
        reader.close()
        raise
    return reader, verified


def read_verified_model(
    path: str | os.PathLike[str],
    trusted_keys: TrustedKeys | None = None,
    installed_version: str | None = None,
    allow_rollback: bool = False,
) -> tuple[VerifiedPackage, dict[str, bytes]]:
    """Verify the package and return its model files' bytes (path -> bytes, the entrypoint among
    them): the very bytes that were hashed, so what a backend loads is exactly what was verified,
    even if the files change afterwards."""
    keys = _public_keys(trusted_keys)
    with open_package(path) as reader:
        manifest, digests, bundle, files = _gather(reader, keep_model=True)
    verified = verify_package(manifest, digests, bundle, keys, installed_version, allow_rollback)
    if verified.manifest.entrypoint not in files:  # cannot happen once verified: a listed, present file
        raise VerificationError(RefusalReason.FILE_REMOVED, "the model file is missing",
                                value=verified.manifest.entrypoint, fix="rebuild the package")
    return verified, files


def sign_package(path: str | os.PathLike[str], private_key: KeySource, password: bytes | None = None) -> str:
    """Sign the package at ``path`` in place (replacing any signature); returns the signer's key hint.

    The package must be intact against its own manifest: we never sign something already tampered with.
    """
    key = load_private_key(private_key, password)
    path = Path(path)
    with open_package(path) as reader:
        manifest, digests, _, _ = _gather(reader)
        verified = verify_package(manifest, digests, None, None)
        bundle = make_bundle(verified.manifest.name, digests, key)
        if is_tar_path(path) or path.is_file():
            files = {n: reader.read(n) for n in reader.names() if n != SIGNATURE}
            files[SIGNATURE] = bundle
    if path.is_dir():
        write_file_atomic(path / SIGNATURE, bundle)
    else:
        write_package(files, path)
    return parse_bundle(bundle).key_hint


def describe_package(path: str | os.PathLike[str], trusted_keys: TrustedKeys | None = None) -> dict[str, Any]:
    """Everything `edgemill inspect` shows: manifest, id, signature state, report summary."""
    keys = _public_keys(trusted_keys)
    with open_package(path) as reader:
        manifest_bytes, digests, bundle, _ = _gather(reader)
        verified = verify_package(manifest_bytes, digests, None, None)
        report = json.loads(reader.read(REPORT)) if REPORT in reader.names() else None
        partition = json.loads(reader.read("partition.json")) if "partition.json" in reader.names() else None
    signature: dict[str, Any] = {"signed": bundle is not None}
    if bundle is not None:
        try:
            signature["key"] = parse_bundle(bundle).key_hint[:16]
        except Exception:  # noqa: BLE001 - shown as state, verification reports the reason
            signature["key"] = None
        if keys is not None:
            try:
                verify_package(manifest_bytes, digests, bundle, keys)
                signature["verified"] = True
            except VerificationError as exc:
                signature["verified"] = False
                signature["refusal"] = exc.reason.value
    return {
        "path": str(path),
        "package_id": verified.package_id,
        "manifest": json.loads(manifest_bytes or b"{}"),
        "signature": signature,
        "report": report,
        "partition": partition,
    }
