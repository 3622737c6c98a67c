"""Webhook delivery: the payload, one POST attempt, and the backoff between attempts.

Each attempt is one call to :func:`deliver`, which never raises and says whether another attempt may
help. Scheduling attempts (up to :data:`MAX_ATTEMPTS`, :func:`backoff_s` apart) is the caller's job,
best kept with the alert record so a server restart resumes it instead of losing it. Delivery is at least
once: a receiver that answered too slowly may see the same alert again, and can tell by its `id`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException, InvalidURL
from typing import Any

import edgemill

from ..package.canonical import canonical_json

MAX_ATTEMPTS = 8
SIGNATURE_HEADER = "X-Edgemill-Signature"
DASHBOARD_PATH = "/dashboard/#alerts"

# 408 (request timeout) and 429 (too many requests) are the receiver saying "not now"; any other 4xx
# says "never", so sending the same payload again cannot help.
_RETRIED_4XX = frozenset({408, 429})
_ERROR_BODY_CHARS = 200  # enough of a refusal's body to say why, not enough to flood the alert record


def backoff_s(attempt: int, base_s: float = 2.0, cap_s: float = 600.0,
              rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retrying after failed attempt number `attempt` (1 = the first attempt).

    Exponential with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))). The jitter spreads
    the retries of many alerts that failed together (a receiver outage) instead of bunching them.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # The exponent is clamped so a long-failing webhook cannot overflow the float.
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 1000))
    return rand() * ceiling


def _when(value: Any) -> str | None:
    """A time as ISO 8601 UTC, whether the store holds datetimes or unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    else:
        moment = datetime.fromtimestamp(float(value), tz=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    # JSON has no NaN or infinity; a receiver's parser would choke on them, so they travel as null.
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def payload_for(alert: Mapping[str, Any]) -> bytes:
    """The JSON body for an alert (an `AlertOut`-shaped mapping): canonical, so the same alert state
    gives the same bytes and the same signature on every retry."""
    return canonical_json({
        "id": alert.get("id"),
        "alert": alert.get("rule", alert.get("name")),
        "state": alert["state"],
        "metric": alert["metric"],
        "value": _number(alert.get("value")),
        "threshold": _number(alert.get("threshold")),
        "message": alert.get("message", ""),
        "started_at": _when(alert.get("started_at")),
        "resolved_at": _when(alert.get("resolved_at")),
        "dashboard_path": DASHBOARD_PATH,
    })


def sign(body: bytes, secret: str | bytes) -> str:
    """The signature header's value: `sha256=<hex HMAC-SHA256 of the body>`, as GitHub-style receivers expect."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status: int | None  # the HTTP status, None when no answer came
    error: str | None  # one line: why it failed
    retry: bool  # whether another attempt may succeed


def _user_agent() -> str:
    version = getattr(edgemill, "__version__", None)
    return f"edgemill/{version}" if version else "edgemill"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a bodiless GET: the receiver would never see the alert while
    # we counted a 200 as delivered. A redirect is reported as a failure instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _refusal_text(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(_ERROR_BODY_CHARS * 4).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001  (the body is a courtesy; the status already says it failed)
        text = ""
    finally:
        exc.close()
    text = " ".join(text.split())[:_ERROR_BODY_CHARS]
    return f"HTTP {exc.code} {exc.reason}" + (f": {text}" if text else "")


def deliver(url: str, body: bytes, timeout_s: float = 5.0, headers: Mapping[str, str] | None = None,
            *, secret: str | bytes | None = None) -> DeliveryResult:
    """POST `body` to `url` once. Never raises: every outcome is a :class:`DeliveryResult`.

    `timeout_s` bounds each wait on the socket (connect, each read), not the whole exchange. With a
    `secret`, the body's HMAC goes in the `X-Edgemill-Signature` header.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        # urllib would also open file:// and ftp:// URLs; a webhook must never read the server's files.
        return DeliveryResult(False, None, f"webhook URL must be http or https, not {scheme or 'schemeless'}: {url}",
                              retry=False)
    all_headers = {"Content-Type": "application/json", "User-Agent": _user_agent(), **(headers or {})}
    if secret is not None:
        all_headers[SIGNATURE_HEADER] = sign(body, secret)
    request = urllib.request.Request(url, data=body, headers=all_headers, method="POST")
    try:
        # A fresh opener per attempt: it reads the proxy settings of the environment as they are now.
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout_s) as response:
            response.read(64 * 1024)  # drain a little so the connection closes cleanly; the body is not used
            return DeliveryResult(True, response.status, None, retry=False)
    except urllib.error.HTTPError as exc:
        status = exc.code
        if 300 <= status < 400:
            where = exc.headers.get("Location", "?") if exc.headers else "?"
            exc.close()
            return DeliveryResult(False, status, f"HTTP {status}: redirected to {where}; set the rule's "
                                  "webhook_url to the final address", retry=False)
        retry = status >= 500 or status in _RETRIED_4XX
        return DeliveryResult(False, status, _refusal_text(exc), retry=retry)
    except (ValueError, InvalidURL) as exc:  # a URL urllib cannot use: sending it again will not fix it
        return DeliveryResult(False, None, f"bad webhook URL {url!r}: {exc}", retry=False)
    except (OSError, HTTPException) as exc:
        # Timeouts, refused or reset connections, DNS failures, TLS failures, a receiver that hung up
        # mid-answer: all may pass. URLError is an OSError that wraps the cause.
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return DeliveryResult(False, None, f"no answer within {timeout_s:g} s", retry=True)
        text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        return DeliveryResult(False, None, text, retry=True)
    except Exception as exc:  # noqa: BLE001
        # The contract is "never raises": one odd failure must not stop the loop that delivers every
        # other alert. Unknown failures are not retried; the error is kept on the alert for a human.
        return DeliveryResult(False, None, f"{type(exc).__name__}: {exc}", retry=False)
