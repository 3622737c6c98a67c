"""The corpus entries (corpus.toml) as typed values, and where their files live on this machine."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS_TOML = HERE / "corpus.toml"
FORMATS = ("onnx", "tflite", "keras", "saved_model", "torchscript", "darknet", "xgboost", "lightgbm", "sklearn")


@dataclass(frozen=True)
class Entry:
    id: str
    package: str  # NAME==VERSION
    file: str
    format: str
    options: tuple[str, ...] = ()
    feeds: dict[str, str] = field(default_factory=dict)
    tolerance: float = 1e-4
    expect: str = "match"
    refusal: str = ""
    partner: str | None = None
    member: str | None = None
    validation: tuple[dict, ...] = ()  # inputs of a --validation file: name, dtype, shape, feed
    note: str = ""

    @property
    def name(self) -> str:
        return self.package.split("==")[0]

    @property
    def version(self) -> str:
        return self.package.split("==")[1]

    def path(self, root: Path | None = None) -> Path:
        """The model file (or SavedModel directory) once fetched."""
        return (root or corpus_dir()) / "models" / self.id / Path(self.file).name

    def partner_path(self, root: Path | None = None) -> Path | None:
        return (root or corpus_dir()) / "models" / self.id / Path(self.partner).name if self.partner else None

    def compile_target(self, root: Path | None = None) -> str:
        """What `edgemill compile` is given: the file, or FILE:MEMBER for a TorchScript submodule."""
        path = str(self.path(root))
        return f"{path}:{self.member}" if self.member else path

    def fetched(self, root: Path | None = None) -> bool:
        partner = self.partner_path(root)
        return self.path(root).exists() and (partner is None or partner.exists())


def corpus_dir() -> Path:
    return Path(os.environ.get("EDGEMILL_CORPUS_DIR") or ROOT / ".corpus")


def load_entries(path: Path = CORPUS_TOML) -> list[Entry]:
    raw = tomllib.loads(path.read_text())
    entries = []
    for item in raw["model"]:
        item = dict(item)
        item["options"] = tuple(item.get("options", ()))
        item["validation"] = tuple(item.get("validation", ()))
        entry = Entry(**item)
        if entry.format not in FORMATS:
            raise ValueError(f"corpus entry {entry.id}: unknown format {entry.format!r}")
        if "==" not in entry.package:
            raise ValueError(f"corpus entry {entry.id}: package must be pinned as NAME==VERSION")
        entries.append(entry)
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("corpus ids must be unique")
    return entries
