"""Export captures from the control plane into a dataset the next compile reads (``captures.dataset``).

The selection is the captures API's (model, version, fleet, device, since, labeled); each record is
fetched, checked and decoded, and its inputs stacked sample by sample. Captures whose inputs differ
in names, dtypes or per-sample shapes from the most common form (another version's inputs) are left
out and counted. Labels go in when every exported capture has one (else they are left out, and the
summary says how to get them).
"""

from __future__ import annotations

import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UserError
from .dataset import write_dataset
from .record import CaptureFormatError, CaptureRecord

PAGE = 1000


class Api(Protocol):
    def request(self, method: str, path: str, body: Any = None, data: bytes | None = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any: ...


@dataclass(frozen=True)
class Selection:
    model: str
    version: str | None = None
    fleet: str | None = None
    device: str | None = None
    since: float | None = None  # unix seconds: predictions made at or after
    labeled_only: bool = False
    limit: int | None = None  # newest first, at most this many captures

    def query(self) -> dict[str, Any]:
        q: dict[str, Any] = {"model": self.model}
        for key in ("version", "fleet", "device", "since"):
            if getattr(self, key) is not None:
                q[key] = getattr(self, key)
        if self.labeled_only:
            q["labeled"] = "true"
        return q

    def describe(self) -> str:
        parts = [f"model {self.model!r}"] + [f"{k} {getattr(self, k)!r}" for k in ("version", "fleet", "device")
                                               if getattr(self, k) is not None]
        if self.since is not None:
            parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.since))} UTC")
        if self.labeled_only:
            parts.append("labeled only")
        return ", ".join(parts)


@dataclass
class ExportSummary:
    path: Path
    captures: int = 0
    samples: int = 0
    labeled: int = 0  # captures with a label
    labels_written: str = ""  # "labels", "targets" or ""
    versions: dict[str, int] = field(default_factory=dict)  # samples per version
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> captures
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "captures": self.captures, "samples": self.samples, "labeled": self.labeled,
                "labels": self.labels_written or None, "versions": self.versions, "skipped": self.skipped,
                "notes": self.notes}


def list_captures(api: Api, selection: Selection) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while selection.limit is None or len(rows) < selection.limit:
        page = api.request("GET", "/api/v1/captures", query={**selection.query(), "offset": len(rows), "limit": PAGE})
        rows += page
        if len(page) < PAGE:
            break
    return rows[:selection.limit] if selection.limit is not None else rows


def export(api: Api, selection: Selection, output: Path,
           progress: Callable[[int, int], None] = lambda done, total: None) -> ExportSummary:
    """Fetch, decode and write the selected captures; raises a :class:`UserError` (and writes nothing)
    when the selection holds no capture that can be exported."""
    listed = list_captures(api, selection)
    if not listed:
        raise UserError("no captures match", value=selection.describe(),
                        fix="check the names (GET /api/v1/captures lists what the server holds), widen --since, "
                            "or drop --labeled-only")
    summary = ExportSummary(path=output)
    records: list[tuple[dict[str, Any], CaptureRecord]] = []
    for done, row in enumerate(listed, 1):
        path = f"/api/v1/captures/{urllib.parse.quote(row['device'])}/{urllib.parse.quote(row['capture_id'])}"
        try:
            records.append((row, CaptureRecord.decode(api.request("GET", path, raw=True))))
        except CaptureFormatError:
            summary.skipped["record unreadable"] = summary.skipped.get("record unreadable", 0) + 1
        progress(done, len(listed))
    forms = Counter(_form(r) for _, r in records)
    if not forms:
        raise UserError("none of the selected captures could be read", value=len(listed),
                        fix="the records in the store are damaged; check the server's object store")
    form, _ = forms.most_common(1)[0]
    kept = [(row, r) for row, r in records if _form(r) == form]
    if len(kept) < len(records):
        summary.skipped["inputs of another form"] = len(records) - len(kept)
        summary.notes.append(f"{len(records) - len(kept)} capture(s) have other inputs than the most common form "
                             f"({_form_text(form)}): left out; export one --version at a time to keep them")
    kept.reverse()  # oldest first: the order the devices saw them
    inputs = {name: np.concatenate([r.inputs[name] for _, r in kept]) for name, _, _ in form}
    ids: list[str] = []
    devices: list[str] = []
    versions: Counter[str] = Counter()
    for row, r in kept:
        n = _samples(r)
        ids += [row["capture_id"]] * n
        devices += [row["device"]] * n
        versions[r.model_version] += n
    labeled = [row for row, _ in kept if row.get("label") is not None]
    labels = targets = None
    if labeled and len(labeled) == len(kept):
        tasks = {row.get("task") for row, _ in kept}
        values = [v for row, _ in kept for v in row["label"]]
        if len(values) == len(ids) and tasks == {"classification"}:
            labels, summary.labels_written = np.asarray(values, dtype=np.int64), "labels"
        elif len(values) == len(ids) and tasks == {"regression"}:
            targets, summary.labels_written = np.asarray(values, dtype=np.float32), "targets"
    elif labeled:
        summary.notes.append(f"{len(kept) - len(labeled)} of {len(kept)} capture(s) have no label: labels left out "
                             "(pass --labeled-only to export only labeled captures, with their labels)")
    summary.captures, summary.samples, summary.labeled = len(kept), len(ids), len(labeled)
    summary.versions = dict(sorted(versions.items()))
    description = {"kind": "captures", "model": selection.model, "versions": summary.versions,
                   "captures": summary.captures, "samples": summary.samples, "labels": summary.labels_written or None,
                   "selection": {k: v for k, v in selection.query().items() if k != "model"},
                   "exported_at": time.time()}
    write_dataset(output, inputs, description, ids, devices, labels=labels, targets=targets)
    return summary


Form = tuple[tuple[str, str, tuple[int, ...]], ...]


def _form(record: CaptureRecord) -> Form:
    """Input names, dtypes and per-sample shapes: what must agree for samples to stack."""
    return tuple(sorted((name, a.dtype.str, tuple(a.shape[1:])) for name, a in record.inputs.items() if a.ndim))


def _form_text(form: Form) -> str:
    return ", ".join(f"{name} {np.dtype(dtype).name}[N, {', '.join(map(str, shape))}]" for name, dtype, shape in form)


def _samples(record: CaptureRecord) -> int:
    return max((a.shape[0] for a in record.inputs.values() if a.ndim), default=1)
