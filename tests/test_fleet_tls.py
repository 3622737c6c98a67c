"""The control plane over HTTPS and mutual TLS, with certificates made by the test (tests/_certs.py).

A real `edgemill server` serves HTTPS; operators (ControlPlane, the CLI) and a real `edgemill agent`
reach it with the CA they are given; under mutual TLS a client without a certificate, or with one from
another CA, is refused and told which option to set. Misconfigured files stop the server (exit 2) and
the agent at start, naming the file and the flag or key."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from edgemill.agent.config import config_from_dict, load_config  # noqa: E402
from edgemill.agent.sync.client import ControlPlaneClient, ControlPlaneError  # noqa: E402
from edgemill.client import AgentClient  # noqa: E402
from edgemill.errors import ConfigError, UsageError, UserError  # noqa: E402
from edgemill.remote import ControlPlane  # noqa: E402

from ._agent import AgentProcess, free_port, wait_for, write_config  # noqa: E402
from ._certs import make_pki  # noqa: E402
from ._fleet import ServerProcess, ServerTls, build_model_package  # noqa: E402
from .conftest import run_cli  # noqa: E402

TLS_ENV = ("EDGEMILL_CA_FILE", "EDGEMILL_CLIENT_CERT", "EDGEMILL_CLIENT_KEY", "EDGEMILL_SERVER", "EDGEMILL_API_KEY")


@pytest.fixture(autouse=True)
def _no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_server(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tls = ServerTls(pki["server.pem"], pki["server.key"], pki["ca.pem"])
    with ServerProcess(tmp_path_factory.mktemp("https"), None, tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(pki: dict[str, Path], keypair: tuple[Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tls = ServerTls(pki["server.pem"], pki["server.key"], pki["ca.pem"], client_ca=pki["ca.pem"],
                    client_cert=pki["client.pem"], client_key=pki["client.key"])
    with ServerProcess(tmp_path_factory.mktemp("mtls"), keypair[1], "--tick-s", "0.3", "--heartbeat-interval-s",
                       "0.5", tls=tls) as server:
        yield server


@contextlib.contextmanager
def bare_server(cert: Path | None = None, key: Path | None = None) -> Iterator[str]:
    """A minimal HTTP server on 127.0.0.1 (HTTPS with ``cert``/``key``), for failures an edgemill
    server cannot show: a certificate issued for another host, a port that does not speak TLS."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the handler's API
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if cert else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- HTTPS -------------------------------------------------------------------------------------


def test_the_server_announces_https_and_answers_a_client_that_trusts_its_ca(
        https_server: ServerProcess, pki: dict[str, Path]) -> None:
    assert f"listening on {https_server.url} " in https_server.output()
    assert https_server.url.startswith("https://127.0.0.1:")
    api = ControlPlane(https_server.url, https_server.api_key, timeout_s=10, ca_file=pki["ca.pem"])
    assert api.request("POST", "/api/v1/fleets", body={"name": "tls-fleet"})["name"] == "tls-fleet"
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    localhost = https_server.url.replace("127.0.0.1", "localhost")  # the certificate names both
    with urllib.request.urlopen(localhost + "/healthz", timeout=10, context=context) as response:
        assert response.status == 200


def test_plain_http_to_the_https_port_fails_and_says_to_use_https(https_server: ServerProcess) -> None:
    plain = https_server.url.replace("https://", "http://")
    with pytest.raises(OSError):
        urllib.request.urlopen(plain + "/healthz", timeout=10)
    with pytest.raises(UserError) as refused:
        ControlPlane(plain, https_server.api_key, timeout_s=10).request("GET", "/api/v1/fleets")
    assert plain in str(refused.value) and "use https://" in str(refused.value)


def test_the_cli_without_the_ca_fails_clearly_and_with_it_works(
        https_server: ServerProcess, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    remote = ("--server", https_server.url, "--api-key", https_server.api_key)
    result = run_cli("fleet", "create", "cli-no-ca", *remote)
    assert result.code == 1 and "Traceback" not in result.err
    assert f"the certificate of {https_server.url} is not signed by a CA this client trusts" in result.err
    assert "--ca-file (or EDGEMILL_CA_FILE)" in result.err
    result = run_cli("fleet", "create", "cli-with-ca", *remote, "--ca-file", pki["ca.pem"])
    assert result.code == 0, result.err
    monkeypatch.setenv("EDGEMILL_CA_FILE", str(pki["ca.pem"]))
    result = run_cli("fleet", "create", "cli-env-ca", *remote)
    assert result.code == 0, result.err
    names = {f["name"] for f in https_server.client().request("GET", "/api/v1/fleets")}
    assert {"cli-with-ca", "cli-env-ca"} <= names and "cli-no-ca" not in names


def test_a_certificate_issued_for_another_host_is_refused_by_name(pki: dict[str, Path]) -> None:
    with bare_server(pki["elsewhere.pem"], pki["elsewhere.key"]) as url:
        with pytest.raises(UserError) as refused:
            ControlPlane(url, "key", timeout_s=10, ca_file=pki["ca.pem"]).request("GET", "/api/v1/fleets")
    message = str(refused.value)
    assert f"the certificate of {url} is not issued for 127.0.0.1" in message and "--server" in message


def test_https_to_a_plain_http_server_says_it_does_not_speak_tls(pki: dict[str, Path]) -> None:
    with bare_server() as url:
        assert ControlPlane(url, "key", timeout_s=10).request("GET", "/") == []  # the server itself answers
        https = url.replace("http://", "https://")
        with pytest.raises(UserError) as refused:
            ControlPlane(https, "key", timeout_s=10, ca_file=pki["ca.pem"]).request("GET", "/")
    assert f"{https} does not answer TLS" in str(refused.value) and "use http://" in str(refused.value)


# --- mutual TLS --------------------------------------------------------------------------------


def test_mutual_tls_refuses_clients_without_a_certificate_or_with_another_cas(
        mtls_server: ServerProcess, pki: dict[str, Path]) -> None:
    url, key, ca = mtls_server.url, mtls_server.api_key, pki["ca.pem"]
    with pytest.raises(UserError) as anonymous:
        ControlPlane(url, key, timeout_s=10, ca_file=ca).request("GET", "/api/v1/fleets")
    assert "requires a client certificate" in str(anonymous.value) and "--client-cert" in str(anonymous.value)
    with pytest.raises(UserError) as rogue:
        ControlPlane(url, key, timeout_s=10, ca_file=ca, client_cert=pki["rogue.pem"],
                     client_key=pki["rogue.key"]).request("GET", "/api/v1/fleets")
    assert "does not accept this client's certificate" in str(rogue.value) and url in str(rogue.value)
    with pytest.raises(OSError):  # a health probe needs a certificate too
        urllib.request.urlopen(url + "/healthz", timeout=10, context=ssl.create_default_context(cafile=str(ca)))
    good = ControlPlane(url, key, timeout_s=10, ca_file=ca, client_cert=pki["client.pem"], client_key=pki["client.key"])
    assert isinstance(good.request("GET", "/api/v1/fleets"), list)


def test_the_cli_presents_its_client_certificate_from_flags_or_environment(
        mtls_server: ServerProcess, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    remote = ("--server", mtls_server.url, "--api-key", mtls_server.api_key, "--ca-file", pki["ca.pem"])
    result = run_cli("fleet", "create", "m-none", *remote)
    assert result.code == 1 and "Traceback" not in result.err and "--client-cert (or EDGEMILL_CLIENT_CERT)" in result.err
    result = run_cli("fleet", "create", "m-rogue", *remote, "--client-cert", pki["rogue.pem"], "--client-key",
                     pki["rogue.key"])
    assert result.code == 1 and "does not accept this client's certificate" in result.err
    result = run_cli("fleet", "create", "m-flags", *remote, "--client-cert", pki["client.pem"], "--client-key",
                     pki["client.key"])
    assert result.code == 0, result.err
    monkeypatch.setenv("EDGEMILL_CLIENT_CERT", str(pki["client.pem"]))
    monkeypatch.setenv("EDGEMILL_CLIENT_KEY", str(pki["client.key"]))
    result = run_cli("fleet", "create", "m-env", *remote)
    assert result.code == 0, result.err


def test_the_agents_client_names_its_keys_when_mutual_tls_refuses_it(
        mtls_server: ServerProcess, pki: dict[str, Path]) -> None:
    for cert in (None, "rogue"):
        client = ControlPlaneClient(mtls_server.url, timeout_s=10, download_timeout_s=10, ca_file=pki["ca.pem"],
                                    client_cert_file=pki[f"{cert}.pem"] if cert else None,
                                    client_key_file=pki[f"{cert}.key"] if cert else None)
        with pytest.raises(ControlPlaneError) as refused:
            client.register("no-token", "dev", {})
        assert refused.value.unreachable  # retried with backoff, like a server that is away
        assert "[server] client_cert_file" in str(refused.value) and mtls_server.url in str(refused.value)
    client = ControlPlaneClient(mtls_server.url, timeout_s=10, download_timeout_s=10)
    with pytest.raises(ControlPlaneError) as untrusted:
        client.register("no-token", "dev", {})
    assert "[server] ca_file" in str(untrusted.value)


def _device(home: Path, name: str, server: ServerProcess, token: str, public_key: Path, pki: dict[str, Path],
            client: str | None = "client") -> AgentProcess:
    """An agent whose TLS files are given relative to its config file (they resolve there)."""
    home.mkdir()
    (home / "tls").mkdir()
    server_section: dict[str, object] = {"url": server.url, "token_file": "token", "ca_file": "tls/ca.pem",
                                         "heartbeat_interval_s": 0.5, "long_poll_s": 2, "request_timeout_s": 10,
                                         "max_backoff_s": 1}
    shutil.copy(pki["ca.pem"], home / "tls" / "ca.pem")
    if client is not None:
        shutil.copy(pki[f"{client}.pem"], home / "tls" / "device.pem")
        shutil.copy(pki[f"{client}.key"], home / "tls" / "device.key")
        server_section.update(client_cert_file="tls/device.pem", client_key_file="tls/device.key")
    (home / "token").write_text(token + "\n")
    config = write_config(home / "agent.toml", {
        "device": {"name": name, "fleet": "secure"},
        "listen": {"address": f"127.0.0.1:{free_port()}", "metrics_address": ""},
        "models": {"directory": "models", "trusted_keys": [str(public_key)]},
        "capture": {"directory": "captures"},
        "server": server_section,
    })
    return AgentProcess(config)


def test_an_agent_registers_heartbeats_and_downloads_a_deployment_over_mutual_tls(
        mtls_server: ServerProcess, pki: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    api = mtls_server.client()
    api.push(build_model_package(tmp_path, "sensor", "1.0.0", 8, keypair[0]))
    api.request("POST", "/api/v1/fleets", body={"name": "secure"})
    token = api.request("POST", "/api/v1/fleets/secure/registration-tokens", body={"uses": 2})["token"]
    good = _device(tmp_path / "good", "dev-good", mtls_server, token, keypair[1], pki)
    rogue = _device(tmp_path / "rogue", "dev-rogue", mtls_server, token, keypair[1], pki, client="rogue")
    with good, rogue:
        assert wait_for(lambda: any(d["name"] == "dev-good" and d["status"] == "online"
                                    for d in api.request("GET", "/api/v1/devices")), 30)
        deployment = api.request("POST", "/api/v1/deployments", body={
            "model": "sensor", "version": "1.0.0", "fleet": "secure", "devices": ["dev-good"],
            "strategy": {"canary_percent": 100, "bake_time_s": 0, "gates": {"min_requests": 0}}})

        def served() -> str | None:
            with AgentClient(good.address) as client:
                return {m["name"]: m["version"] for m in client.list_models()}.get("sensor")

        assert wait_for(lambda: served() == "1.0.0", 30), good.stderr()
        before = api.request("GET", "/api/v1/devices/dev-good")
        assert wait_for(lambda: api.request("GET", "/api/v1/devices/dev-good")["last_seen_at"] != before["last_seen_at"], 10)
        assert wait_for(lambda: "does not accept this client's certificate" in rogue.stderr(), 10), rogue.stderr()
        assert "[server] client_cert_file" in rogue.stderr()
        assert "dev-rogue" not in {d["name"] for d in api.request("GET", "/api/v1/devices")}
        assert api.request("GET", f"/api/v1/deployments/{deployment['id']}")["devices"][0]["device"] == "dev-good"


def test_an_agent_with_a_missing_ca_file_stops_at_start_naming_it(
        mtls_server: ServerProcess, pki: dict[str, Path], keypair: tuple[Path, Path], tmp_path: Path) -> None:
    agent = _device(tmp_path / "dev", "dev-missing", mtls_server, "token", keypair[1], pki)
    (tmp_path / "dev" / "tls" / "ca.pem").unlink()
    # its own process: an agent that did start would serve until stopped
    result = subprocess.run(agent.command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "[server] ca_file" in result.stderr and str(tmp_path / "dev" / "tls" / "ca.pem") in result.stderr


# --- validation at start -----------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "expected"), [
    (["--tls-cert", "server.pem"], "--tls-cert needs --tls-key"),
    (["--tls-key", "server.key"], "--tls-key needs --tls-cert"),
    (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "absent.pem", "--tls-key", "server.key"], "cannot read the certificate named by --tls-cert"),
    (["--tls-cert", "server.pem", "--tls-key", "client.key"], "the key in --tls-key does not belong to the certificate"),
    (["--tls-cert", "server.key", "--tls-key", "server.key"], "--tls-cert holds no readable certificate"),
    (["--tls-cert", "server.pem", "--tls-key", "server.key", "--tls-client-ca", "notes.txt"],
     "--tls-client-ca is not a PEM file"),
])
def test_the_server_refuses_bad_tls_flags_before_starting(
        flags: list[str], expected: str, pki: dict[str, Path], tmp_path: Path) -> None:
    (pki["ca.pem"].parent / "notes.txt").write_text("not a certificate\n")
    args = [str(pki["ca.pem"].parent / f) if not f.startswith("--") else f for f in flags]
    result = run_cli("server", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", tmp_path / "data", *args)
    assert result.code == 2, result.err
    assert expected in result.err and "Fix:" in result.err and "Traceback" not in result.err
    if "absent.pem" in flags:
        assert str(pki["ca.pem"].parent / "absent.pem") in result.err
    assert not (tmp_path / "data").exists()  # checked before anything was created


def test_an_encrypted_server_key_is_named_with_the_fix(pki: dict[str, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki["server.key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    result = run_cli("server", "--data-dir", tmp_path / "data", "--tls-cert", pki["server.pem"], "--tls-key", encrypted)
    assert result.code == 2 and "encrypted with a passphrase" in result.err and "openssl pkey" in result.err


def test_operator_tls_options_are_checked_before_any_request(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--client-cert \(or EDGEMILL_CLIENT_CERT\) is set but --client-key"):
        ControlPlane("https://127.0.0.1:1", "key", client_cert=pki["client.pem"])
    with pytest.raises(UsageError, match="apply to an https:// server"):
        ControlPlane("http://127.0.0.1:1", "key", ca_file=pki["ca.pem"])
    with pytest.raises(UsageError, match="cannot read the CA certificate named by --ca-file"):
        ControlPlane("https://127.0.0.1:1", "key", ca_file=tmp_path / "absent.pem")
    result = run_cli("fleet", "create", "x", "--server", "https://127.0.0.1:1", "--api-key", "k",
                     "--client-cert", pki["client.pem"], "--client-key", pki["rogue.key"])
    assert result.code == 2 and "does not belong to the certificate" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(("server", "expected"), [
    ({"url": "https://fleet:8700", "client_cert_file": "c.pem"}, "client_cert_file is set alone"),
    ({"url": "https://fleet:8700", "client_key_file": "c.key"}, "client_key_file is set alone"),
    ({"url": "http://fleet:8700", "ca_file": "ca.pem"}, "ca_file apply to an https:// url"),
    ({"ca_file": "ca.pem"}, "write url = 'https://HOST:PORT'"),
    ({"url": "https://fleet:8700", "ca_cert": "ca.pem"}, "unknown key 'server.ca_cert'"),
])
def test_the_agent_config_checks_its_server_tls_keys(server: dict[str, str], expected: str, tmp_path: Path) -> None:
    path = write_config(tmp_path / "agent.toml", {"server": server})
    with pytest.raises(ConfigError) as bad:
        load_config(path)
    assert expected in str(bad.value) and str(path) in str(bad.value)


def test_the_agents_tls_paths_resolve_beside_its_config_and_are_read_at_start(
        pki: dict[str, Path], tmp_path: Path) -> None:
    path = write_config(tmp_path / "agent.toml", {"server": {
        "url": "https://fleet:8700", "ca_file": "tls/ca.pem", "client_cert_file": "tls/d.pem",
        "client_key_file": str(pki["client.key"])}})
    server = load_config(path).server
    assert (server.ca_file, server.client_cert_file, server.client_key_file) == (
        tmp_path / "tls" / "ca.pem", tmp_path / "tls" / "d.pem", pki["client.key"])
    with pytest.raises(ConfigError, match=r"cannot read the CA certificate named by \[server\] ca_file"):
        ControlPlaneClient(server.url, timeout_s=1, download_timeout_s=1, ca_file=server.ca_file)
    mismatched = config_from_dict({"server": {"url": "https://fleet:8700", "ca_file": str(pki["ca.pem"]),
                                              "client_cert_file": str(pki["client.pem"]),
                                              "client_key_file": str(pki["rogue.key"])}}).server
    with pytest.raises(ConfigError, match=r"the key in \[server\] client_key_file does not belong"):
        ControlPlaneClient(mismatched.url, timeout_s=1, download_timeout_s=1, ca_file=mismatched.ca_file,
                           client_cert_file=mismatched.client_cert_file, client_key_file=mismatched.client_key_file)
