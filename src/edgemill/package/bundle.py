"""The OpenSSF model-signing signature: a Sigstore bundle (v0.3) holding a DSSE envelope whose
payload is an in-toto statement listing every file of the package with its sha256.

This module builds and parses that format with ``cryptography`` alone, so a device can verify a
package without the ``model-signing``/``sigstore`` stack, while the ``model_signing`` tool still verifies
our packages (``model_signing verify key``) and we verify packages it signed. No I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from typing import TYPE_CHECKING

from .keys import key_hint
from .layout import SIGNATURE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"


def hash_for(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[key.curve.key_size]


def pae(payload: bytes) -> bytes:
    """DSSE pre-authentication encoding, the bytes that are actually signed."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def root_digest(resources: list[dict[str, str]]) -> str:
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def statement_payload(model_name: str, digests: Mapping[str, str]) -> bytes:
    resources = [{"name": n, "algorithm": "sha256", "digest": d} for n, d in sorted(digests.items())]
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [SIGNATURE],
            },
            "resources": resources,
        },
    }
    return json.dumps(statement, indent=2).encode("utf-8")


def make_bundle(model_name: str, digests: Mapping[str, str], private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign the file digests of a package; returns the bundle's JSON bytes."""
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = statement_payload(model_name, digests)
    signature = private_key.sign(pae(payload), ec.ECDSA(hash_for(private_key)))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(private_key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class ParsedBundle:
    key_hint: str
    payload: bytes
    signature: bytes


def parse_bundle(data: bytes) -> ParsedBundle:
    """Parse the bundle's structure (raises ValueError/KeyError/TypeError on a malformed one)."""
    raw = json.loads(data.decode("utf-8"))
    if raw.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise ValueError(f"media type {raw.get('mediaType')!r}, expected {BUNDLE_MEDIA_TYPE!r}")
    envelope = raw["dsseEnvelope"]
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise ValueError(f"payload type {envelope['payloadType']!r}")
    if len(envelope["signatures"]) != 1:
        raise ValueError("expected exactly one signature")
    hint = raw.get("verificationMaterial", {}).get("publicKey", {}).get("hint", "")
    return ParsedBundle(
        key_hint=str(hint),
        payload=base64.b64decode(envelope["payload"], validate=True),
        signature=base64.b64decode(envelope["signatures"][0]["sig"], validate=True),
    )


def parse_statement(payload: bytes) -> dict[str, str]:
    """The signed file digests (name -> sha256 hex) of an in-toto statement, after checking that its
    subject digest matches its resources."""
    statement = json.loads(payload.decode("utf-8"))
    if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
        raise ValueError(f"statement type {statement['_type']!r} / {statement['predicateType']!r}")
    resources = statement["predicate"]["resources"]
    if any(r["algorithm"] != "sha256" for r in resources):
        raise ValueError("only sha256 file digests are supported")
    subjects = statement["subject"]
    if len(subjects) != 1 or subjects[0]["digest"]["sha256"] != root_digest(resources):
        raise ValueError("subject digest does not match the listed files")
    digests = {str(r["name"]): str(r["digest"]).lower() for r in resources}
    if len(digests) != len(resources):
        raise ValueError("a file is listed twice")
    return digests
