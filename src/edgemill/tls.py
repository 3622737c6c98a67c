"""TLS files checked before use, and TLS failures explained in one line.

The server's certificate and key, the CA a client trusts and the certificate a client presents
(mutual TLS) are read and checked when a component starts, so a wrong file is named then, with the
option that named it, instead of surfacing as an OpenSSL message at the first connection. A failed
handshake later is turned into what went wrong and which option fixes it.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EdgemillError, first_line

if TYPE_CHECKING:
    from cryptography import x509


@dataclass(frozen=True)
class Names:
    """How a front door spells its TLS settings, so that an error names what the user writes."""

    ca: str
    cert: str
    key: str
    url: str


# OpenSSL verify codes (X509_V_ERR_*) a client meets most
_NOT_YET_VALID, _EXPIRED = 9, 10
_UNTRUSTED = {2, 18, 19, 20, 21, 27}  # unknown issuer, self-signed, not trusted
_NAME_MISMATCH = {62, 64}  # hostname / IP address mismatch

_CLIENT_CERT_REQUIRED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE",
                         "SSLV3_ALERT_HANDSHAKE_FAILURE"}
_CLIENT_CERT_REFUSED = {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR",
                        "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_ACCESS_DENIED",
                        "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST"}


# --- files ------------------------------------------------------------------------------------


def _read(path: Path, option: str, what: str, error: type[EdgemillError]) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read the {what} named by {option}", value=str(path),
                    fix=f"point {option} at a readable PEM file ({exc.strerror or first_line(exc)})") from None
    if b"-----BEGIN " not in data:
        raise error(f"{option} is not a PEM file (no '-----BEGIN' line)", value=str(path),
                    fix=f"point {option} at a PEM {what} (DER converts with: openssl x509 -inform der -in FILE)")
    return data


def read_certificates(path: Path, option: str, error: type[EdgemillError], what: str = "certificate"
                      ) -> list[x509.Certificate]:
    """Every certificate in the PEM file ``path`` (at least one), or ``error`` naming ``option``."""
    from cryptography import x509

    data = _read(path, option, what, error)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise error(f"{option} holds no readable certificate ({first_line(exc)})", value=str(path),
                    fix=f"point {option} at a PEM file with '-----BEGIN CERTIFICATE-----' blocks") from None
    return certificates


def check_pair(cert: Path, key: Path, cert_option: str, key_option: str, error: type[EdgemillError]) -> None:
    """The certificate file reads, the key file reads (unencrypted) and the key belongs to the certificate."""
    from cryptography.hazmat.primitives import serialization

    leaf = read_certificates(cert, cert_option, error)[0]
    data = _read(key, key_option, "private key", error)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise error(f"the private key in {key_option} is encrypted with a passphrase", value=str(key),
                    fix=f"write it unencrypted for edgemill (openssl pkey -in {key} -out KEY.pem) and keep "
                        "the file readable by its owner alone") from None
    except (ValueError, NotImplementedError) as exc:
        raise error(f"{key_option} holds no readable private key ({first_line(exc)})", value=str(key),
                    fix=f"point {key_option} at the PEM private key of {cert}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise error(f"the key in {key_option} does not belong to the certificate in {cert_option}",
                    value=f"{key} vs {cert}",
                    fix=f"point {key_option} at the private key that {cert_option}'s certificate was issued for")


def client_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None, names: Names,
                   error: type[EdgemillError]) -> ssl.SSLContext:
    """A verifying client context: trusts ``ca_file`` alone when given (else the system's CAs) and
    presents ``cert_file``/``key_file`` when given (mutual TLS). Files are checked first."""
    if (cert_file is None) != (key_file is None):
        given, missing = (names.cert, names.key) if key_file is None else (names.key, names.cert)
        raise error(f"{given} is set but {missing} is not", value=str(cert_file or key_file),
                    fix=f"set both {names.cert} and {names.key} (mutual TLS) or neither")
    if ca_file is not None:
        read_certificates(ca_file, names.ca, error, "CA certificate")
    if cert_file is not None and key_file is not None:
        check_pair(cert_file, key_file, names.cert, names.key, error)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, OSError) as exc:
        raise error("OpenSSL refused the TLS files", value=first_line(exc),
                    fix=f"check {names.ca}, {names.cert} and {names.key}") from None
    return context


# --- failures ---------------------------------------------------------------------------------


def explain(exc: BaseException, url: str, names: Names, *, sent_cert: bool = False) -> tuple[str, str] | None:
    """``(problem, fix)`` when ``exc`` (raised talking to ``url``) is a TLS problem or looks like
    one; None otherwise. The problem names ``url``, the fix names the setting to change.
    ``sent_cert``: the client had a certificate to present (mutual TLS)."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    https = url.startswith("https://")
    host = urllib.parse.urlsplit(url).hostname or url
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, detail = exc.verify_code, exc.verify_message
        if code in _NAME_MISMATCH:
            return (f"the certificate of {url} is not issued for {host} ({detail})",
                    f"use in {names.url} a name or IP address the certificate lists (subjectAltName), or "
                    f"reissue the server's certificate with {host} in it")
        if code == _EXPIRED:
            return (f"the certificate of {url} has expired", "renew the server's certificate (--tls-cert)")
        if code == _NOT_YET_VALID:
            return (f"the certificate of {url} is not valid yet",
                    "check this machine's clock, or wait until the certificate's start date")
        if code in _UNTRUSTED or code is None:
            return (f"the certificate of {url} is not signed by a CA this client trusts ({detail})",
                    f"set {names.ca} to the certificate of the CA that signed the server's certificate")
        return (f"the certificate of {url} was refused ({detail})",
                f"check the server's certificate, and {names.ca}")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        reason = getattr(exc, "reason", None) or ""
        if reason in _CLIENT_CERT_REQUIRED:
            return (f"{url} requires a client certificate (mutual TLS) and this client sent none",
                    f"set {names.cert} and {names.key} to a certificate and key signed by the CA the server "
                    "trusts for clients (its --tls-client-ca)")
        if reason in _CLIENT_CERT_REFUSED:
            return (f"{url} does not accept this client's certificate (mutual TLS: {reason.lower()})",
                    f"set {names.cert} and {names.key} to a certificate signed by the CA the server trusts "
                    "for clients (its --tls-client-ca), and not expired")
        if reason in _NOT_TLS:
            return (f"{url} does not answer TLS ({reason.lower()})",
                    f"use http:// in {names.url} if the server runs without --tls-cert, or check the port")
        return (f"the TLS handshake with {url} failed ({first_line(exc)})",
                f"check {names.url}, {names.ca}, {names.cert} and {names.key}")
    closed = isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                              http.client.BadStatusLine, ssl.SSLEOFError))
    # A server that refuses a client certificate after a TLS 1.3 handshake often just closes the
    # connection, so the client cannot tell "none" from "not trusted" by the error: it says which it sent.
    if closed and https and sent_cert:
        return (f"{url} closed the TLS connection without an answer: it does not accept this client's "
                "certificate (mutual TLS)",
                f"set {names.cert} and {names.key} to a certificate signed by the CA the server trusts for "
                "clients (its --tls-client-ca), and not expired")
    if closed and https:
        return (f"{url} closed the TLS connection without an answer: it requires a client certificate "
                "(mutual TLS) and this client sent none",
                f"set {names.cert} and {names.key} to a certificate and key signed by the CA the server trusts "
                "for clients (its --tls-client-ca)")
    if closed:
        return (f"{url} closed the connection without an answer (an HTTPS server does that to plain http)",
                f"use https:// in {names.url} if the server runs with --tls-cert, and set {names.ca}")
    return None
