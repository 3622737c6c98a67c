"""Captures exported as a dataset: one ``.npz`` in exactly the form ``--validation``, ``--calibration``
and ``--baseline`` read (one array per model input, samples along the first axis), with

* ``labels`` (int64, one class per sample) for a labeled classifier, or ``targets`` (float32) for a
  labeled regressor;
* ``capture_ids`` and ``capture_devices``: where each sample came from (the manifest of captures);
* ``edgemill_dataset``: a JSON description (model, versions and their sample counts, filters, when).

A large export is a folder of such files instead (``part-00000.npz``, ... each at most a shard's worth
of samples, each complete in itself) with the description in ``dataset.json``, written last: a folder
without it is an export that did not finish. The compiler reads a folder like one file.

The compiler reads the description of the data it is given and records it in the new package's
lineage (``validation:captures:MODEL@VERSION:SAMPLES``), so the registry can show which captures of
which version a model was checked (or calibrated) on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..package.writer import write_file_atomic

DATASET_KEY = "edgemill_dataset"
SHARD_GLOB = "part-*.npz"
DESCRIPTION_FILE = "dataset.json"


def write_dataset(path: Path, inputs: Mapping[str, np.ndarray], description: Mapping[str, Any],
                  capture_ids: list[str], capture_devices: list[str], labels: np.ndarray | None = None,
                  targets: np.ndarray | None = None) -> None:
    """Write atomically: a reader never sees half a file, and a failed export leaves none."""
    arrays: dict[str, np.ndarray] = dict(inputs)
    arrays["capture_ids"] = np.asarray(capture_ids, dtype=np.str_)
    arrays["capture_devices"] = np.asarray(capture_devices, dtype=np.str_)
    arrays[DATASET_KEY] = np.asarray(json.dumps(dict(description), sort_keys=True))
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    if targets is not None:
        arrays["targets"] = targets.astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_description(folder: Path, description: Mapping[str, Any]) -> None:
    """The sharded export's ``dataset.json``, atomically: its presence says every shard is written."""
    write_file_atomic(folder / DESCRIPTION_FILE, (json.dumps(dict(description), indent=2, sort_keys=True) + "\n").encode())


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / DESCRIPTION_FILE).is_file()


def read_shards(folder: Path) -> dict[str, np.ndarray]:
    """A sharded export's arrays, joined along the samples (the description key from the first shard)."""
    parts = sorted(folder.glob(SHARD_GLOB))
    if not parts:
        raise ValueError(f"{folder} holds no {SHARD_GLOB} files")
    loaded: list[dict[str, np.ndarray]] = []
    for part in parts:
        with np.load(part, allow_pickle=False) as data:
            loaded.append({k: data[k] for k in data.files})
    return {k: (np.concatenate([d[k] for d in loaded]) if v.ndim else v) for k, v in loaded[0].items()}


def describe(path: Path | None) -> dict[str, Any] | None:
    """The description an exported dataset carries, or None for any other file (or none)."""
    if path is not None and is_sharded(path):
        try:
            value = json.loads((path / DESCRIPTION_FILE).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None
    if path is None or not path.is_file() or path.suffix != ".npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if DATASET_KEY not in data.files:
                return None
            value = json.loads(str(data[DATASET_KEY]))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def lineage_entries(role: str, path: Path | None) -> list[str]:
    """``ROLE:captures:MODEL@VERSION:SAMPLES`` for each version whose captures are in the dataset."""
    info = describe(path)
    if not info or info.get("kind") != "captures":
        return []
    versions = info.get("versions") or {}
    return [f"{role}:captures:{info.get('model')}@{version}:{count}" for version, count in sorted(versions.items())]
