"""The agent over TLS and mutual TLS, with certificates made by the test."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgemill.client import AgentClient, AgentError

from ._agent import AgentProcess
from .test_agent import agent_config


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgemill test CA", ca_key, None, ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for name, server in (("agent", True), ("app", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.pem"] = _cert(name, key, ("edgemill test CA", ca_key), server=server).public_bytes(
            serialization.Encoding.PEM)
        files[f"{name}.key"] = _pem(key)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: out / name for name in files}


def test_mutual_tls_admits_a_client_with_a_certificate_and_refuses_one_without(
        certificates: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    tls = {"cert_file": str(certificates["agent.pem"]), "key_file": str(certificates["agent.key"]),
           "client_ca_file": str(certificates["ca.pem"])}
    config = agent_config(tmp_path, keypair[1])
    config.write_text(config.read_text() + "\n[listen.tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in tls.items()))
    root = certificates["ca.pem"].read_bytes()
    with AgentProcess(config) as agent:
        with AgentClient(agent.address, root_certificates=root, certificate_chain=certificates["app.pem"].read_bytes(),
                         private_key=certificates["app.key"].read_bytes()) as client:
            assert client.list_models() == []
        with AgentClient(agent.address, root_certificates=root, timeout=5) as anonymous:
            with pytest.raises(AgentError) as refused:
                anonymous.list_models()
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        with AgentClient(agent.address, timeout=5) as plaintext:
            with pytest.raises(AgentError):
                plaintext.list_models()


def test_a_missing_certificate_file_is_named(certificates: dict[str, Path], keypair: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    from .conftest import run_cli

    config = agent_config(tmp_path, keypair[1])
    config.write_text(config.read_text() + f'\n[listen.tls]\ncert_file = "{tmp_path / "absent.pem"}"\n'
                                           f'key_file = "{certificates["agent.key"]}"\n')
    result = run_cli("agent", "--config", config)
    assert result.code == 1 and "absent.pem" in result.err and "cert_file" in result.err
