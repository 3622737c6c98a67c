"""What the sync component keeps on disk: its credential, the heartbeat sequence, the packages it
applied and the ones that failed. Every write is atomic (temp file, fsync, rename, fsync folder), so a
power cut leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import first_line
from ...package.writer import write_file_atomic

log = logging.getLogger("edgemill.agent.sync")


@dataclass(frozen=True)
class Applied:
    """A package the sync installed: ``file`` lies in the models directory."""

    package_id: str
    version: str
    file: str


@dataclass(frozen=True)
class Failure:
    """A package that could not be applied here (``ApplyFailureIn`` on the wire)."""

    model: str
    package_id: str
    reason: str  # one line: the error's message
    refusal: str | None = None  # the verification refusal's named reason, when it was one
    allow_rollback: bool = False  # how it was ordered (kept here, not sent): a rollback order retries it

    def to_wire(self) -> dict[str, Any]:
        return {"model": self.model, "package_id": self.package_id, "reason": self.reason[:2000],
                "refusal": self.refusal[:64] if self.refusal else None}


@dataclass
class SyncState:
    seq: int = 0  # the last heartbeat sequence number used (persisted before the heartbeat is sent)
    applied: dict[str, Applied] = field(default_factory=dict)  # model name -> package
    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)  # (model, package id) -> why

    @classmethod
    def load(cls, path: Path) -> SyncState:
        """The state in ``path``; a fresh one when there is none or it cannot be read (logged)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(seq=int(data.get("seq", 0)),
                       applied={name: Applied(**entry) for name, entry in data.get("applied", {}).items()},
                       failures={(f["model"], f["package_id"]): Failure(**f) for f in data.get("failures", [])})
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("sync state %s is unreadable (%s): starting afresh; the server's answer restores the "
                        "heartbeat sequence and the desired models are downloaded again", path, first_line(exc))
            return cls()

    def save(self, path: Path) -> None:
        data = {"seq": self.seq, "applied": {name: asdict(a) for name, a in sorted(self.applied.items())},
                "failures": [asdict(f) for _, f in sorted(self.failures.items())]}
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` completely or not at all; missing folders are created private to us."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file_atomic(path, data, mode)


def read_secret(path: Path | None) -> str | None:
    """The stripped text of a token or credential file; None when it is absent or empty."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None
