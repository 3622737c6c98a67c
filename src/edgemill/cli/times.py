"""Durations and moments as the CLI takes them: ``30m``, ``12h``, ``7d``, ``2w``; ``--since`` also an ISO
date or time, or unix seconds."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from ..errors import UsageError

UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def duration_s(text: str) -> int:
    """'30d', '12h', '90m', '3600' (seconds) -> whole seconds, more than zero."""
    value = text.strip()
    match = _DURATION.fullmatch(value) or (re.fullmatch(r"(\d+)()", value))
    seconds = int(float(match[1]) * UNIT_S[match[2] or "s"]) if match else 0
    if seconds <= 0:
        raise UsageError("not a duration", value=text, expected="a number with s, m, h, d or w (e.g. 30d, 12h)",
                         fix="e.g. --expires 30d")
    return seconds


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """Unix seconds of ``--since``: a duration back from now (30m, 12h, 7d), an ISO date or time
    (UTC unless it says otherwise), or unix seconds; None when not given."""
    if text is None:
        return None
    now = time.time() if now is None else now
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match:
        return now - float(match[1]) * UNIT_S[match[2]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError("bad --since", value=text, expected="a duration (30m, 12h, 7d), an ISO date or time, or unix seconds",
                         fix="e.g. --since 7d or --since 2026-12-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
