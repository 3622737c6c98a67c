"""The package manifest: what a package is, and the hash of every file it carries.

The manifest is stored as canonical JSON. The **package id** is the sha256 of the canonical manifest
with the ``created`` timestamp left out, so two compiles of the same model with the same options give
the same id whenever they were run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import RefusalReason, VerificationError
from ..tensors import TensorSpec
from .canonical import canonical_json, sha256_hex
from .layout import FORMAT

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
VOLATILE_FIELDS = ("created",)


def is_semver(text: str) -> bool:
    return bool(_SEMVER.match(text))


def semver_key(text: str) -> tuple[int, int, int, int, str]:
    """Sort key for semantic versions: releases order after their pre-releases."""
    m = _SEMVER.match(text)
    if not m:
        raise ValueError(text)
    core, _, rest = text.partition("+")[0].partition("-")
    major, minor, patch = (int(x) for x in core.split("."))
    return (major, minor, patch, 0 if rest else 1, rest)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: str
    target: dict[str, Any]
    backend: str
    precision: str
    entrypoint: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: dict[str, Any]
    files: dict[str, FileEntry]
    accuracy: dict[str, Any]
    edgemill_version: str
    lineage: tuple[str, ...] = ()
    backend_options: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    # Pre- and post-processing around the model (edgemill.pipeline.stages.PipelineLayout); ``inputs`` and
    # ``outputs`` above are then the package's (frames in, names out) and the model's own are in here.
    pipeline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "target": self.target,
            "backend": self.backend,
            "backend_options": self.backend_options,
            "precision": self.precision,
            "entrypoint": self.entrypoint,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "source": self.source,
            "files": {path: entry.to_dict() for path, entry in sorted(self.files.items())},
            "accuracy": self.accuracy,
            "edgemill_version": self.edgemill_version,
            "lineage": list(self.lineage),
            **({"pipeline": self.pipeline} if self.pipeline is not None else {}),  # absent: ids of older packages hold
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def package_id(self) -> str:
        return package_id(self.to_dict())


def package_id(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical manifest, volatile fields excluded."""
    stable = {k: v for k, v in manifest.items() if k not in VOLATILE_FIELDS}
    return sha256_hex(canonical_json(stable))


def _pipeline(raw: Any, files: dict[str, FileEntry]) -> dict[str, Any] | None:
    if raw is None:
        return None
    from ..pipeline.stages import PipelineLayout  # checks its shape; the runtime reads it again

    layout = PipelineLayout.from_dict(raw)
    missing = [f for f in layout.files if f not in files]
    if missing:
        raise _refuse("the pipeline names a file the manifest does not list", value=missing[0])
    return dict(raw)


def _refuse(problem: str, **kwargs: Any) -> VerificationError:
    return VerificationError(RefusalReason.MALFORMED_MANIFEST, problem, **kwargs)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; any defect is a MALFORMED_MANIFEST refusal."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse("manifest.json is not valid JSON", value=str(exc), fix="rebuild the package") from None
    if not isinstance(raw, dict):
        raise _refuse("manifest.json is not a JSON object", fix="rebuild the package")
    fmt = raw.get("format")
    if fmt != FORMAT:
        raise VerificationError(
            RefusalReason.UNSUPPORTED_FORMAT,
            "unsupported package format",
            value=fmt,
            expected=repr(FORMAT),
            fix="rebuild the package with this edgemill version, or upgrade edgemill on the device",
        )
    required = ("name", "version", "created", "target", "backend", "precision", "entrypoint", "inputs",
                "outputs", "source", "files", "accuracy", "edgemill_version")
    missing = [k for k in required if k not in raw]
    if missing:
        raise _refuse("manifest.json lacks fields", value=", ".join(missing), fix="rebuild the package")
    try:
        if not is_semver(str(raw["version"])):
            raise _refuse("version is not semantic", value=raw["version"], expected="MAJOR.MINOR.PATCH")
        files: dict[str, FileEntry] = {}
        for path, entry in dict(raw["files"]).items():
            digest, size = str(entry["sha256"]), int(entry["size"])
            if not _SHA256.match(digest) or size < 0:
                raise _refuse("bad file entry in manifest", value=path)
            files[str(path)] = FileEntry(digest, size)
        entrypoint = str(raw["entrypoint"])
        if entrypoint not in files:
            raise _refuse("entrypoint is not among the manifest's files", value=entrypoint)
        return Manifest(
            name=str(raw["name"]),
            version=str(raw["version"]),
            created=str(raw["created"]),
            target=dict(raw["target"]),
            backend=str(raw["backend"]),
            backend_options=dict(raw.get("backend_options", {})),
            precision=str(raw["precision"]),
            entrypoint=entrypoint,
            inputs=tuple(TensorSpec.from_dict(s) for s in raw["inputs"]),
            outputs=tuple(TensorSpec.from_dict(s) for s in raw["outputs"]),
            source=dict(raw["source"]),
            files=files,
            accuracy=dict(raw["accuracy"]),
            edgemill_version=str(raw["edgemill_version"]),
            lineage=tuple(str(x) for x in raw.get("lineage", [])),
            pipeline=_pipeline(raw.get("pipeline"), files),
        )
    except VerificationError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise _refuse("manifest.json has a field of the wrong type", value=str(exc), fix="rebuild the package") from None
