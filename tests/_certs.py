"""Certificates made by a test: CAs, server certificates for 127.0.0.1 and localhost, client
certificates (mutual TLS), with ``cryptography`` alone (no openssl binary)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1")


class Authority:
    """A self-signed CA that issues certificates; ``pem`` is what clients (or a server) trust."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _build(name, self.key.public_key(), name, self.key, ca=True)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, subject: str, names: tuple[str, ...] = (), *, client: bool = False,
              days: float = 1.0) -> tuple[bytes, bytes]:
        """``(certificate PEM, private key PEM)``: a server certificate for ``names`` (DNS names or IP
        addresses in its subjectAltName), or with ``client`` a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build(subject, key.public_key(), self.name, self.key, names=names, client=client, days=days)
        return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _build(subject: str, public_key: ec.EllipticCurvePublicKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
           *, ca: bool = False, names: tuple[str, ...] = (), client: bool = False, days: float = 1.0
           ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_pki(out: Path) -> dict[str, Path]:
    """In ``out``: ``ca.pem``; ``server.pem``/``server.key`` (127.0.0.1 and localhost, from ca);
    ``client.pem``/``client.key`` (from ca); ``other-ca.pem`` and ``rogue.pem``/``rogue.key`` (a client
    certificate from the other CA); ``elsewhere.pem``/``elsewhere.key`` (from ca, for another host)."""
    ca, other = Authority("edgemill test CA"), Authority("another CA")
    files = {"ca.pem": ca.pem, "other-ca.pem": other.pem}
    for stem, (cert, key) in {"server": ca.issue("edgemill server", LOCAL_NAMES),
                              "client": ca.issue("operator", client=True),
                              "rogue": other.issue("rogue", client=True),
                              "elsewhere": ca.issue("elsewhere", ("elsewhere.example",))}.items():
        files[f"{stem}.pem"], files[f"{stem}.key"] = cert, key
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: out / name for name in files}
