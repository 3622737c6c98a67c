"""A small client for the control plane's operator API (stdlib only): what `edgemill push`,
`edgemill deploy`, `edgemill fleet` and the demo use. Errors come back as EdgemillErrors carrying the
server's message, field and fix."""

from __future__ import annotations

import http.client
import io
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .errors import (AuthenticationError, ConflictError, EdgemillError, NotFoundError, PayloadTooLargeError,
                     PermissionDeniedError, RefusalReason, UsageError, UserError, VerificationError)
from .tls import Names, client_context, explain

DEFAULT_SERVER = "http://127.0.0.1:8700"
DEFAULT_KEY_FILE = Path("edgemill-data/operator.key")

_BY_STATUS: dict[int, type[UserError]] = {401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
                                          409: ConflictError, 413: PayloadTooLargeError}


def resolve_api_key(api_key: str | None = None, key_file: str | os.PathLike[str] | None = None) -> str:
    """The key from the argument, EDGEMILL_API_KEY, or a key file (default edgemill-data/operator.key)."""
    if api_key:
        return api_key
    if os.environ.get("EDGEMILL_API_KEY"):
        return os.environ["EDGEMILL_API_KEY"]
    path = Path(key_file) if key_file else DEFAULT_KEY_FILE
    try:
        return path.read_text().strip()
    except OSError:
        raise AuthenticationError("no operator API key", value=str(path),
                                  fix="pass --api-key, set EDGEMILL_API_KEY, or point --api-key-file at the key the "
                                      "server wrote (edgemill-data/operator.key where the server runs)") from None


TLS_OPTIONS = Names(ca="--ca-file (or EDGEMILL_CA_FILE)", cert="--client-cert (or EDGEMILL_CLIENT_CERT)",
                    key="--client-key (or EDGEMILL_CLIENT_KEY)", url="--server (or EDGEMILL_SERVER)")


class ControlPlane:
    """The operator API at ``url``. For https://, the server's certificate is checked against
    ``ca_file`` (else the system's CAs) and ``client_cert``/``client_key`` are presented when the
    server asks for them (mutual TLS); the files are checked here, before any request."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 60.0, *, ca_file: str | os.PathLike[str] | None = None,
                 client_cert: str | os.PathLike[str] | None = None,
                 client_key: str | os.PathLike[str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._ssl: ssl.SSLContext | None = None
        files = [Path(f) if f else None for f in (ca_file, client_cert, client_key)]
        self._sent_cert = client_cert is not None
        if self.url.startswith("https://"):
            self._ssl = client_context(*files, TLS_OPTIONS, UsageError)
        elif any(files):
            raise UsageError(f"{TLS_OPTIONS.ca}, {TLS_OPTIONS.cert} and {TLS_OPTIONS.key} apply to an https:// "
                             "server", value=self.url,
                             fix="use --server https://HOST:PORT (the server runs with --tls-cert), or unset them")

    def request(self, method: str, path: str, body: Any = None, data: bytes | None = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        """The JSON answer (None when empty), or with ``raw`` its bytes as they came."""
        url = self.url + path + (("?" + urllib.parse.urlencode(query, doseq=True)) if query else "")
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            tls = explain(exc, self.url, TLS_OPTIONS, sent_cert=self._sent_cert)
            if tls is not None:
                raise UserError(tls[0], fix=tls[1]) from None
            reason = getattr(exc, "reason", exc)
            raise UserError("cannot reach the control plane", value=self.url, expected=str(reason),
                            fix="start it with `edgemill server`, or pass --server URL (or set EDGEMILL_SERVER)") from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def _error(self, exc: urllib.error.HTTPError) -> EdgemillError:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        message = body.get("message") or f"HTTP {exc.code}"
        if body.get("reason"):
            try:
                return VerificationError(RefusalReason(body["reason"]), f"the server refused the package: {message}",
                                         fix=body.get("fix"), field=body.get("field"))
            except ValueError:
                pass
        cls = _BY_STATUS.get(exc.code, UserError)
        error = cls(f"the control plane answered {exc.code}: {message}", field=body.get("field"))
        error.body = body  # type: ignore[attr-defined]  # what the server said, for callers that read more of it
        return error

    # --- operations the CLI offers ------------------------------------------------------------

    def push(self, package: Path) -> dict[str, Any]:
        """Upload a package (an .emp file, or a package directory, sent as .emp)."""
        from .package.reader import iter_files, open_package
        from .package.writer import tar_bytes_to

        with open_package(package) as reader:  # the model's name comes from the package itself
            name = json.loads(reader.read("manifest.json"))["name"]
            if package.is_file():
                data = package.read_bytes()
            else:
                buffer = io.BytesIO()
                tar_bytes_to(dict(iter_files(reader)), buffer)
                data = buffer.getvalue()
        return self.request("POST", f"/api/v1/models/{urllib.parse.quote(name)}/versions", data=data)  # type: ignore[no-any-return]
