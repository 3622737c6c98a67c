"""A small HTTP client for the control plane's agent endpoints, on the standard library alone.

One connection per request (no pool: a heartbeat every half minute does not need one), so calls from
several threads never share a socket. :meth:`ControlPlaneClient.abort` closes the connections in
flight, which is how the sync component stops in the middle of a long poll.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from ... import __version__
from ...errors import ConfigError, EdgemillError, UserError, first_line
from ...tls import Names, client_context, explain

API = "/api/v1/agent"
_CHUNK = 1 << 20
_MAX_REDIRECTS = 5


class ControlPlaneError(EdgemillError):
    """The control plane refused a request (``status`` and its ``ErrorOut`` fields), or could not be
    reached at all (``status`` is None)."""

    def __init__(self, problem: str, *, status: int | None = None, error: str | None = None,
                 last_seq: int | None = None, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.status = status
        self.error = error  # ErrorOut.error: the server's name for the problem (StaleHeartbeat...)
        self.last_seq = last_seq
        self.retry_after_s = retry_after_s
        super().__init__(problem, **kwargs)

    @property
    def unreachable(self) -> bool:
        """Worth retrying with backoff: no answer, or the server's own failure (5xx)."""
        return self.status is None or self.status >= 500


_TLS_NAMES = Names(ca="[server] ca_file", cert="[server] client_cert_file", key="[server] client_key_file",
                   url="[server] url")


class ControlPlaneClient:
    """The four agent endpoints under ``url``. ``credential`` gives the bearer credential (None: none).

    For an https:// ``url`` the server's certificate is verified against ``ca_file`` (else the system's
    CAs); ``client_cert_file`` and ``client_key_file`` are presented for mutual TLS. The files are read
    and checked here, so a wrong one stops the agent at start with a ``ConfigError`` naming its key.
    """

    def __init__(self, url: str, *, timeout_s: float, download_timeout_s: float,
                 credential: Callable[[], str | None] = lambda: None, ca_file: Path | None = None,
                 client_cert_file: Path | None = None, client_key_file: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.download_timeout_s = download_timeout_s
        self._credential = credential
        self._ca_file = ca_file
        self._sent_cert = client_cert_file is not None
        self._ssl: ssl.SSLContext | None = None
        self._elsewhere_ssl: ssl.SSLContext | None = None  # for redirects off the server (presigned URLs)
        if self.url.startswith("https://"):
            self._ssl = client_context(ca_file, client_cert_file, client_key_file, _TLS_NAMES, ConfigError)
        elif ca_file or client_cert_file or client_key_file:
            raise ConfigError("[server] ca_file, client_cert_file and client_key_file apply to an https:// url",
                              value=self.url, fix="write [server] url = 'https://HOST:PORT', or remove them")
        self._active: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._aborted = False

    # --- endpoints -----------------------------------------------------------------------------

    def register(self, token: str, device: str, tags: dict[str, str], credential: str | None = None) -> dict[str, Any]:
        """``RegisterOut`` for a one-time ``token``: the device's credential and fleet. ``credential``
        is one the device chose itself, which makes the request safe to repeat."""
        body: dict[str, Any] = {"token": token, "device": device, "tags": tags}
        if credential is not None:
            body["credential"] = credential
        return self._json("POST", f"{API}/register", body, auth=False, what="registration")

    def heartbeat(self, payload: dict[str, Any], wait_s: float) -> dict[str, Any]:
        """``DesiredStateOut`` for a ``HeartbeatIn``; the server may hold the answer up to ``wait_s``."""
        return self._json("POST", f"{API}/heartbeat?wait_s={wait_s:g}", payload, what="heartbeat")

    def download(self, download_path: str, dest: Path, max_bytes: int | None = None) -> int:
        """Write the package at ``download_path`` to ``dest`` (fsync'd); returns its size.

        A redirect (to an object store's presigned URL) is followed without the credential. More than
        ``max_bytes`` is refused before it fills the disk.
        """
        url = self._absolute(download_path)
        auth = True
        deadline = time.monotonic() + self.download_timeout_s
        for _ in range(_MAX_REDIRECTS + 1):
            conn, response = self._open("GET", url, None, auth=auth, timeout=self.timeout_s)
            try:
                if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                    url = urljoin(url, response.getheader("Location", ""))
                    auth = False  # a presigned URL carries its own authority; never send ours elsewhere
                    continue
                if response.status != 200:
                    raise self._refused(response, "package download")
                return self._save(response, dest, deadline, max_bytes)
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(exc, "package download") from None
            finally:
                self._close(conn)
        raise ControlPlaneError("package download redirected too many times", value=url,
                                fix="check the server's object store settings (presigned URLs)")

    def put_capture(self, capture_id: str, model: str, data: bytes) -> None:
        """Upload one ``.emc`` record (idempotent: the same id twice leaves one capture)."""
        path = f"{API}/captures/{quote(capture_id, safe='')}?model={quote(model, safe='')}"
        self._json("PUT", path, data, what="capture upload", content_type="application/octet-stream")

    def abort(self) -> None:
        """Close every connection in flight (their calls raise) and refuse new calls from now on."""
        with self._lock:
            self._aborted = True
            active = list(self._active)
        for conn in active:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading the long poll
                except OSError:
                    pass
            conn.close()

    def capture_url(self, capture_id: str) -> str:
        return f"{self.url}{API}/captures/{quote(capture_id, safe='')}"

    # --- plumbing ------------------------------------------------------------------------------

    def _absolute(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.url + path

    def _json(self, method: str, path: str, body: dict[str, Any] | bytes, *, what: str, auth: bool = True,
              content_type: str = "application/json") -> dict[str, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        conn, response = self._open(method, self._absolute(path), data, auth=auth, timeout=self.timeout_s,
                                    content_type=content_type)
        try:
            if response.status >= 300:
                raise self._refused(response, what)
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc, what) from None
        finally:
            self._close(conn)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ControlPlaneError(f"the control plane's answer to the {what} is not a JSON object",
                                    status=502, value=raw[:80].decode("utf-8", "replace"),
                                    fix="check that [server] url points at an edgemill server")
        return answer

    def _open(self, method: str, url: str, body: bytes | None, *, auth: bool, timeout: float,
              content_type: str = "application/json") -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        if parts.scheme == "https":
            context = self._ssl if self._ssl is not None and self._same_server(parts) else self._elsewhere()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        headers = {"User-Agent": f"edgemill-agent/{__version__}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        credential = self._credential() if auth else None
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        with self._lock:
            if self._aborted:
                raise ControlPlaneError("the control-plane client is stopping", value=url)
            self._active.add(conn)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            conn.request(method, target, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._close(conn)
            raise self._unreachable(exc, f"{method} {parts.path}") from None

    def _same_server(self, parts: SplitResult) -> bool:
        own = urlsplit(self.url)
        return (parts.scheme, parts.hostname, parts.port) == (own.scheme, own.hostname, own.port)

    def _elsewhere(self) -> ssl.SSLContext:
        """Another https host (an object store's presigned URL): the system's CAs and ``ca_file``, and
        no client certificate (it is the control plane's to see)."""
        if self._elsewhere_ssl is None:
            context = ssl.create_default_context()
            if self._ca_file is not None:
                context.load_verify_locations(str(self._ca_file))
            self._elsewhere_ssl = context
        return self._elsewhere_ssl

    def _close(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._active.discard(conn)
        conn.close()

    def _save(self, response: http.client.HTTPResponse, dest: Path, deadline: float, max_bytes: int | None) -> int:
        """Network errors stay ``OSError`` (the caller retries later); the disk's become a ``UserError``."""
        size = 0
        with _disk(dest):
            handle = open(dest, "wb")
        try:
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise UserError("the package is larger than the control plane announced",
                                    value=f"over {max_bytes} bytes",
                                    fix="check the package's size in the server's registry")
                if time.monotonic() > deadline:
                    raise ControlPlaneError("package download took too long", value=f"{size} bytes so far",
                                            fix="raise [server] download_timeout_s on a slow link")
                with _disk(dest):
                    handle.write(chunk)
            with _disk(dest):
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            dest.unlink(missing_ok=True)
            raise
        handle.close()
        return size

    def _refused(self, response: http.client.HTTPResponse, what: str) -> ControlPlaneError:
        raw = response.read(64 * 1024)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"message": first_line(raw.decode("utf-8", "replace")) if raw.strip() else response.reason}
        retry_after = None
        if response.status in (429, 503):
            try:
                retry_after = max(0.0, float(response.getheader("Retry-After", "")))
            except ValueError:
                retry_after = None
        last_seq = body.get("last_seq")
        message = body.get("message") or (first_line(json.dumps(body["detail"])) if "detail" in body else None)
        return ControlPlaneError(
            f"the control plane refused the {what} (HTTP {response.status} {body.get('error') or response.reason}): "
            f"{message or response.reason}", status=response.status, error=body.get("error"),
            last_seq=last_seq if isinstance(last_seq, int) else None, retry_after_s=retry_after,
            fix=body.get("fix") or None, field=body.get("field") if isinstance(body.get("field"), str) else None)

    def _unreachable(self, exc: BaseException, what: str) -> ControlPlaneError:
        if isinstance(exc, ControlPlaneError):
            return exc
        tls = explain(exc, self.url, _TLS_NAMES, sent_cert=self._sent_cert)
        if tls is not None:  # retried like any unreachable server, but the log says what to change
            return ControlPlaneError(f"control plane unreachable ({what}): {tls[0]}", fix=tls[1])
        return ControlPlaneError(f"control plane unreachable ({what})",
                                 value=f"{type(exc).__name__}: {first_line(exc)}",
                                 fix=f"check [server] url ({self.url}) and the network; the agent keeps serving "
                                     "and retries")


class _disk:
    """Turn an ``OSError`` of the local disk into a one-line error (so it is not taken for the network)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, OSError):
            raise UserError("cannot write the downloaded package", value=f"{self.path}: {first_line(exc)}",
                            fix="free disk space in [models] directory, or check its permissions") from None
