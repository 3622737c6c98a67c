"""The trust decision: a pure function over bytes and digests, with a named reason for each refusal.

Order (as in OpenSSF model-signing): check the signature over the statement, then the statement's file
list against the files present, then the manifest's own file list. Nothing is loaded before this
returns. The I/O that gathers the inputs lives in :mod:`edgemill.package.open`.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import RefusalReason, VerificationError
from .bundle import hash_for, parse_bundle, parse_statement, pae
from .keys import PublicKey
from .layout import MANIFEST, SIGNATURE, UNLISTED
from .manifest import Manifest, package_id, parse_manifest, semver_key


@dataclass(frozen=True)
class VerifiedPackage:
    manifest: Manifest
    package_id: str
    signed_by: PublicKey | None  # None: integrity checked against the manifest only


def _refuse(reason: RefusalReason, problem: str, **kwargs: object) -> VerificationError:
    return VerificationError(reason, problem, **kwargs)  # type: ignore[arg-type]


def _compare_file_sets(expected: Mapping[str, str], actual: Mapping[str, str], where: str) -> None:
    removed = sorted(set(expected) - set(actual))
    if removed:
        raise _refuse(RefusalReason.FILE_REMOVED, f"a file listed {where} is missing", value=removed[0],
                      fix="re-download or rebuild the package; do not edit packages by hand")
    added = sorted(set(actual) - set(expected))
    if added:
        raise _refuse(RefusalReason.FILE_ADDED, f"a file not listed {where} was added", value=added[0],
                      fix="remove it, or rebuild and re-sign the package")
    for name in sorted(expected):
        if expected[name] != actual[name]:
            if name == MANIFEST:
                raise _refuse(RefusalReason.MANIFEST_MODIFIED, "manifest.json changed after signing",
                              value=f"sha256 {actual[name][:16]}…, signed {expected[name][:16]}…",
                              fix="rebuild and re-sign the package; do not edit manifests by hand")
            raise _refuse(RefusalReason.FILE_MODIFIED, f"a file differs from its hash {where}",
                          value=name, expected=f"sha256 {expected[name][:16]}…, found {actual[name][:16]}…",
                          fix="re-download or rebuild the package")


def check_signature(bundle: bytes, trusted_keys: Sequence[PublicKey]) -> tuple[PublicKey, dict[str, str]]:
    """Verify a bundle against the trusted keys; return the signer and the signed file digests."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        parsed = parse_bundle(bundle)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError) as exc:
        raise _refuse(RefusalReason.MALFORMED_SIGNATURE, f"{SIGNATURE} is not a valid signature bundle",
                      value=str(exc), fix="sign the package again with `edgemill sign`") from None
    candidates = [k for k in trusted_keys if k.hint == parsed.key_hint] if parsed.key_hint else list(trusted_keys)
    if not candidates:
        raise _refuse(RefusalReason.UNTRUSTED_KEY, "package is signed by a key that is not trusted",
                      value=f"key {parsed.key_hint[:16]}",
                      expected="one of " + ", ".join(f"{k.short_id} ({k.label})" for k in trusted_keys),
                      fix="pass the signer's public key with --trusted-key, or have the package signed by a trusted key")
    for key in candidates:
        try:
            key.key.verify(parsed.signature, pae(parsed.payload), ec.ECDSA(hash_for(key.key)))
        except InvalidSignature:
            continue
        try:
            return key, parse_statement(parsed.payload)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _refuse(RefusalReason.MALFORMED_SIGNATURE, "the signed statement is malformed",
                          value=str(exc), fix="sign the package again with `edgemill sign`") from None
    raise _refuse(RefusalReason.BAD_SIGNATURE, "the signature does not match the signed content",
                  value=f"key {candidates[0].short_id}", fix="the signature was altered or forged; re-sign the package")


def verify_package(
    manifest_bytes: bytes | None,
    digests: Mapping[str, str],
    bundle: bytes | None,
    trusted_keys: Sequence[PublicKey] | None,
    installed_version: str | None = None,
    allow_rollback: bool = False,
) -> VerifiedPackage:
    """Decide whether a package may be loaded.

    ``digests`` maps every file of the package except the signature to its sha256. With
    ``trusted_keys`` the package must carry a valid signature by one of them that covers exactly these
    files; with ``trusted_keys=None`` only integrity against the manifest is checked. A version older
    than ``installed_version`` is refused unless ``allow_rollback``.
    """
    signer: PublicKey | None = None
    if trusted_keys is not None:
        if not trusted_keys:
            raise _refuse(RefusalReason.UNTRUSTED_KEY, "no trusted keys were given", fix="pass at least one --trusted-key")
        if bundle is None:
            raise _refuse(RefusalReason.NOT_SIGNED, "package is not signed", value=f"no {SIGNATURE}",
                          fix="sign it with `edgemill sign PKG --key edgemill.key`")
        signer, signed = check_signature(bundle, trusted_keys)
        _compare_file_sets(signed, digests, "in the signature")
    if manifest_bytes is None:
        raise _refuse(RefusalReason.MALFORMED_MANIFEST, "package has no manifest.json", fix="rebuild the package")
    manifest = parse_manifest(manifest_bytes)
    listed = {name: entry.sha256 for name, entry in manifest.files.items()}
    present = {name: d for name, d in digests.items() if name not in UNLISTED}
    _compare_file_sets(listed, present, "in the manifest")
    if installed_version is not None and not allow_rollback:
        if semver_key(manifest.version) < semver_key(installed_version):
            raise _refuse(RefusalReason.VERSION_ROLLBACK, "package is older than the installed version",
                          value=manifest.version, expected=f">= {installed_version}",
                          fix="deploy a newer version, or order an explicit rollback from the control plane")
    return VerifiedPackage(manifest=manifest, package_id=package_id(json.loads(manifest_bytes)), signed_by=signer)
