"""Export captures from the control plane into a dataset the next compile reads (``captures.dataset``).

The selection is the captures API's (model, version, fleet, device, since, labeled); each record is
fetched, checked and decoded, and its inputs stacked sample by sample, oldest first. Captures whose
inputs differ in names, dtypes or per-sample shapes from the most common form among the first ones
(another version's inputs) are left out and counted. Labels go in when every exported capture has one
(else they are left out, and the summary says how to get them).
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
from .dataset import write_dataset, write_description
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
    shards: int | None = None  # files written into the output folder (None: one .npz)
    versions: dict[str, int] = field(default_factory=dict)  # samples per version
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> captures
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "captures": self.captures, "samples": self.samples, "labeled": self.labeled,
                "labels": self.labels_written or None, "shards": self.shards, "versions": self.versions, "skipped": self.skipped,
                "notes": self.notes}


def list_captures(api: Api, selection: Selection) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while selection.limit is None or len(rows) < selection.limit:
        page = api.request("GET", "/api/v1/captures", query={**selection.query(), "offset": len(rows), "limit": PAGE})
        rows += page
        if len(page) < PAGE:
            break
    return rows[:selection.limit] if selection.limit is not None else rows


PROBE = 64  # the inputs' most common form among the first records decoded is the dataset's
SHARD_SAMPLES = 10_000


def export(api: Api, selection: Selection, output: Path,
           progress: Callable[[int, int], None] = lambda done, total: None,
           shard_samples: int = SHARD_SAMPLES) -> ExportSummary:
    """Fetch, decode and write the selected captures, oldest first: to one ``.npz`` (``output`` ends in
    .npz), else to a folder of shards of at most ``shard_samples`` samples written as they fill (memory
    stays at a shard's worth) and its ``dataset.json``. Raises a :class:`UserError`, and leaves no
    dataset, when nothing can be exported."""
    listed = list_captures(api, selection)
    if not listed:
        raise UserError("no captures match", value=selection.describe(),
                        fix="check the names (GET /api/v1/captures lists what the server holds), widen --since, "
                            "or drop --labeled-only")
    listed.reverse()  # oldest first: the order the devices saw them
    summary = ExportSummary(path=output)
    label_key = _label_key(listed, summary)
    sink = _Sink(output, label_key, shard_samples)
    form: Form | None = None
    probe: list[tuple[dict[str, Any], CaptureRecord]] = []
    versions: Counter[str] = Counter()

    def take(row: dict[str, Any], record: CaptureRecord) -> None:
        if _form(record) != form:
            summary.skipped["inputs of another form"] = summary.skipped.get("inputs of another form", 0) + 1
            return
        n = sink.add(row, record)
        summary.captures += 1
        summary.samples += n
        summary.labeled += row.get("label") is not None
        versions[record.model_version] += n

    for done, row in enumerate(listed, 1):
        path = f"/api/v1/captures/{urllib.parse.quote(row['device'])}/{urllib.parse.quote(row['capture_id'])}"
        try:
            record = CaptureRecord.decode(api.request("GET", path, raw=True))
        except CaptureFormatError:
            summary.skipped["record unreadable"] = summary.skipped.get("record unreadable", 0) + 1
            record = None
        if record is not None and form is None:
            probe.append((row, record))
        elif record is not None:
            take(row, record)
        if form is None and (len(probe) >= PROBE or done == len(listed)) and probe:
            form = Counter(_form(r) for _, r in probe).most_common(1)[0][0]
            for pair in probe:
                take(*pair)
            probe.clear()
        progress(done, len(listed))
    if form is None or not summary.captures:
        sink.abandon()
        raise UserError("none of the selected captures could be read", value=len(listed),
                        fix="the records in the store are damaged; check the server's object store")
    other = summary.skipped.get("inputs of another form", 0)
    if other:
        summary.notes.append(f"{other} capture(s) have other inputs than the most common form ({_form_text(form)}): "
                             "left out; export one --version at a time to keep them")
    summary.labels_written = label_key or ""
    summary.versions = dict(sorted(versions.items()))
    description = {"kind": "captures", "model": selection.model, "versions": summary.versions,
                   "captures": summary.captures, "samples": summary.samples, "labels": label_key,
                   "selection": {k: v for k, v in selection.query().items() if k != "model"},
                   "exported_at": time.time()}
    summary.shards = sink.finish(description)
    return summary


def _label_key(listed: list[dict[str, Any]], summary: ExportSummary) -> str | None:
    """"labels" (classifier) or "targets" (regressor) when every capture has a label, else None."""
    labeled = sum(1 for row in listed if row.get("label") is not None)
    if labeled and labeled < len(listed):
        summary.notes.append(f"{len(listed) - labeled} of {len(listed)} capture(s) have no label: labels left out "
                             "(pass --labeled-only to export only labeled captures, with their labels)")
        return None
    tasks = {row.get("task") for row in listed}
    if not labeled or len(tasks) != 1:
        return None
    return {"classification": "labels", "regression": "targets"}.get(tasks.pop() or "")


class _Sink:
    """Samples gathered for one file, or for shards written as they fill."""

    def __init__(self, output: Path, label_key: str | None, shard_samples: int) -> None:
        self.output = output
        self.sharded = output.suffix != ".npz"
        self.label_key = label_key
        self.shard_samples = max(1, shard_samples)
        self.shards = 0
        self._rows: list[tuple[dict[str, Any], CaptureRecord]] = []
        self._samples = 0
        if self.sharded:
            if output.exists() and any(output.iterdir()):
                raise UserError("the export folder is not empty", value=str(output),
                                fix="name a new folder, or an .npz file for a single-file export")
            output.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any], record: CaptureRecord) -> int:
        n = _samples(record)
        self._rows.append((row, record))
        self._samples += n
        if self.sharded and self._samples >= self.shard_samples:
            self._flush()
        return n

    def _flush(self, description: dict[str, Any] | None = None) -> None:
        """Write the gathered samples: a shard, or (with the export's ``description``) the one file."""
        if not self._rows:
            return
        path = self.output / f"part-{self.shards:05d}.npz" if self.sharded else self.output
        inputs = {name: np.concatenate([r.inputs[name] for _, r in self._rows])
                  for name in self._rows[0][1].inputs if self._rows[0][1].inputs[name].ndim}
        ids = [row["capture_id"] for row, r in self._rows for _ in range(_samples(r))]
        devices = [row["device"] for row, r in self._rows for _ in range(_samples(r))]
        values = [v for row, _ in self._rows for v in (row.get("label") or [])]
        labels = np.asarray(values, dtype=np.int64) if self.label_key == "labels" else None
        targets = np.asarray(values, dtype=np.float32) if self.label_key == "targets" else None
        write_dataset(path, inputs, description or {"kind": "captures-shard"}, ids, devices, labels=labels,
                      targets=targets)
        self.shards += 1
        self._rows, self._samples = [], 0

    def finish(self, description: dict[str, Any]) -> int | None:
        """Write what is left and the description; the number of shards (None for one file)."""
        if not self.sharded:
            self._flush(description)
            return None
        self._flush()
        write_description(self.output, {**description, "shards": self.shards})
        return self.shards

    def abandon(self) -> None:
        if self.sharded:
            for part in self.output.glob("part-*.npz"):
                part.unlink()


Form = tuple[tuple[str, str, tuple[int, ...]], ...]


def _form(record: CaptureRecord) -> Form:
    """Input names, dtypes and per-sample shapes: what must agree for samples to stack."""
    return tuple(sorted((name, a.dtype.str, tuple(a.shape[1:])) for name, a in record.inputs.items() if a.ndim))


def _form_text(form: Form) -> str:
    return ", ".join(f"{name} {np.dtype(dtype).name}[N, {', '.join(map(str, shape))}]" for name, dtype, shape in form)


def _samples(record: CaptureRecord) -> int:
    return max((a.shape[0] for a in record.inputs.values() if a.ndim), default=1)
