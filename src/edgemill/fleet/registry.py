"""Accepting a package into the registry: verify it fully, then store it, then commit its row.

Order matters for "nothing half-written": the object is written first under a key derived from its
content (a retry rewrites the same object), the row is committed last; if the commit fails the object
is deleted again. A package that fails verification never reaches the store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConflictError, RefusalReason, UserError, VerificationError
from ..package import PublicKey, open_verified
from ..monitoring.features import bins_digest, parse_baseline
from ..package.layout import BASELINE, REPORT

log = logging.getLogger("edgemill.server")


@dataclass(frozen=True)
class CheckedPackage:
    name: str
    version: str
    package_id: str
    manifest: dict[str, Any]
    report: dict[str, Any]
    signer: str | None
    sha256: str
    size_bytes: int
    baseline: dict[str, Any] | None = None  # monitoring/baseline.json, checked, with its bins digest

    @property
    def store_key(self) -> str:
        return f"packages/{self.name}/{self.version}/{self.package_id}.emp"


def _report_summary(raw: bytes | None) -> dict[str, Any]:
    """The parts of report.json that lineage shows: passes, accuracy check, timings per step."""
    if not raw:
        return {}
    try:
        report = json.loads(raw)
    except ValueError:
        return {"error": "report.json is not JSON"}
    if not isinstance(report, dict):
        return {}
    keep = ("passes", "accuracy", "precision", "backend", "target", "steps", "latency", "tuning", "edgemill_version")
    return {k: report[k] for k in keep if k in report}


def _baseline_summary(raw: bytes | None, name: str) -> dict[str, Any] | None:
    """The package's drift baseline as the registry keeps it (None: none, or unreadable, which is logged:
    drift for this version then shows "no baseline", as it does on the device)."""
    if raw is None:
        return None
    try:
        baseline = parse_baseline(raw)
    except ValueError as exc:
        log.warning("package %s: its drift baseline is unreadable (%s); drift will show no baseline", name, exc)
        return None
    return {"data": baseline.data, "synthetic": baseline.synthetic, "samples": baseline.samples,
            "bins": bins_digest(baseline.features), "features": [f.to_dict() for f in baseline.features]}


def check_package(path: Path, sha256: str, trusted_keys: list[PublicKey], expected_name: str) -> CheckedPackage:
    """Verify the package at ``path`` (whose file hashes to ``sha256``, computed as it arrived)
    against the server's trusted keys (a signature is required)."""
    if not trusted_keys:
        raise VerificationError(
            RefusalReason.UNTRUSTED_KEY, "the server trusts no signing keys, so it cannot accept any package",
            fix="start the server with --trusted-key PUBLIC.pem (the key packages are signed with)")
    reader, verified = open_verified(path, trusted_keys)
    try:
        names = reader.names()
        report = reader.read(REPORT) if REPORT in names else None
        baseline = reader.read(BASELINE) if BASELINE in names else None
    finally:
        reader.close()
    manifest = verified.manifest
    if manifest.name != expected_name:
        raise UserError("the package is for another model", value=manifest.name, field="name",
                        expected=f"a package named {expected_name!r}",
                        fix=f"upload it to /api/v1/models/{manifest.name}/versions, or rebuild it with the right name")
    signer = verified.signed_by.short_id if verified.signed_by is not None else None
    return CheckedPackage(name=manifest.name, version=manifest.version, package_id=verified.package_id,
                          manifest=manifest.to_dict(), report=_report_summary(report), signer=signer,
                          sha256=sha256, size_bytes=path.stat().st_size,
                          baseline=_baseline_summary(baseline, manifest.name))


def same_or_conflict(existing_package_id: str, checked: CheckedPackage) -> bool:
    """True when the upload repeats an existing version (idempotent); a different package under the
    same version is a conflict: versions are immutable."""
    if existing_package_id == checked.package_id:
        return True
    raise ConflictError("this model version already exists with a different package", value=checked.version,
                        field="version", expected=f"package {existing_package_id[:16]}…",
                        fix="bump the version (edgemill compile --version X.Y.Z) and upload again")
