"""Signing keys: ECDSA P-256 in PEM, the key type OpenSSF model-signing accepts for offline signing.

A public key is identified by the sha256 of its PEM (SubjectPublicKeyInfo) text, as the Sigstore
bundle's ``publicKey.hint`` does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..errors import FileNotFound, KeyFileError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# `cryptography` is imported inside the functions that need it: importing the runtime (which loads
# unsigned packages too) should not pay ~40 ms and ~14 MiB for it on a small device.

PRIVATE_KEY_NAME = "edgemill.key"
PUBLIC_KEY_NAME = "edgemill.pub"
_CURVES = {"secp256r1", "secp384r1", "secp521r1"}

KeySource = Union[str, os.PathLike, bytes]


@dataclass(frozen=True)
class PublicKey:
    key: ec.EllipticCurvePublicKey
    hint: str  # sha256 of the PEM text
    label: str  # where it came from, for messages

    @property
    def short_id(self) -> str:
        return self.hint[:16]


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    return hashlib.sha256(public_pem(key)).hexdigest()


def generate_keypair() -> tuple[bytes, bytes]:
    """A new P-256 key pair as (private PKCS#8 PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private_pem, public_pem(private.public_key())


def _read(source: KeySource, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "<bytes>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFound(f"{what} not found", value=str(path), fix="run `edgemill keys generate DIR` to make a key pair")
    return path.read_bytes(), str(path)


def _check_curve(key: object, label: str, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or key.curve.name not in _CURVES:
        kind = getattr(getattr(key, "curve", None), "name", type(key).__name__)
        raise KeyFileError(
            f"unsupported {what} type in {label}",
            value=kind,
            expected="an ECDSA key on P-256, P-384 or P-521",
            fix="run `edgemill keys generate DIR` to make a supported key pair",
        )


def load_private_key(source: KeySource, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization

    data, label = _read(source, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise KeyFileError("the private key is encrypted", value=label, fix="give its password") from None
    except ValueError:
        raise KeyFileError(
            "not a PEM private key", value=label, fix="pass the edgemill.key written by `edgemill keys generate`"
        ) from None
    _check_curve(key, label, "private key")
    return key  # type: ignore[return-value]


def load_public_key(source: KeySource) -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    data, label = _read(source, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(
            "not a PEM public key", value=label, fix="pass the edgemill.pub written by `edgemill keys generate`"
        ) from None
    _check_curve(key, label, "public key")
    return PublicKey(key=key, hint=key_hint(key), label=label)  # type: ignore[arg-type]


def load_public_keys(sources: list[KeySource] | tuple[KeySource, ...]) -> list[PublicKey]:
    return [load_public_key(s) for s in sources]


def write_keypair(directory: str | os.PathLike[str], force: bool = False) -> tuple[Path, Path, str]:
    """Generate a key pair into ``directory``; returns (private path, public path, key id)."""
    from ..errors import OptionError
    from .writer import write_file_atomic

    out = Path(directory)
    private_path, public_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    if not force and (private_path.exists() or public_path.exists()):
        raise OptionError("a key pair already exists", value=str(private_path),
                          fix="use another directory, or --force to replace it (packages signed with it will "
                              "no longer verify against the new key)")
    private_pem, public_pem = generate_keypair()
    out.mkdir(parents=True, exist_ok=True)
    write_file_atomic(private_path, private_pem, mode=0o600)
    write_file_atomic(public_path, public_pem, mode=0o644)
    return private_path, public_path, load_public_key(public_pem).short_id
