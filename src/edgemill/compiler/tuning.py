"""Measured autotuning: time each candidate that passed the accuracy gate, at each thread setting, each
in its own process, within a time budget; keep the fastest. Results are cached by (model, target,
options, library versions) so compiling the same model again skips the measuring.

Each measurement runs in a fresh interpreter (``python -m edgemill.compiler.measure_worker``): thread
pools of different libraries in one process spin against each other and skew the comparison (see
ANCHORS.md: onnxruntime ran MobileNetV2 1.7x slower right after PyTorch in the same process).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import BackendError, OptionError
from .lowering import Artifact

MIN_SECONDS_PER_SETTING = 0.2  # below this a p50 is noise
WORKER_START_S = 1.0  # interpreter + numpy + backend import, roughly, per measurement
# A first pass gets this share of the budget; settings within RUNOFF_MARGIN of the fastest (at most
# RUNOFF_SIZE of them) are then measured again, in alternating order, with the rest: on a shared
# machine a few percent between two settings measured seconds apart is drift, not speed.
FIRST_PASS_SHARE = 0.75
RUNOFF_MARGIN = 0.08
RUNOFF_SIZE = 3
RUNOFF_ROUNDS = 2


@dataclass(frozen=True)
class Measurement:
    label: str
    threads: int
    p50_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.label, "threads": self.threads, "p50_ms": round(self.p50_ms, 4), "runs": self.runs}


def thread_settings(cores: int | None) -> list[int]:
    """All cores, and one: on small models a single thread often wins (no synchronisation)."""
    cores = max(1, cores or os.cpu_count() or 1)
    return [cores, 1] if cores > 1 else [1]


def check_budget(budget_s: float, settings: int) -> float:
    """Seconds per setting; a budget that cannot time each setting at all is refused."""
    if budget_s <= 0:
        raise OptionError("the tuning budget must be positive", value=budget_s, fix="pass e.g. --tune-budget 30")
    per_setting = budget_s / max(settings, 1) - WORKER_START_S / 2
    if per_setting < MIN_SECONDS_PER_SETTING:
        needed = settings * (MIN_SECONDS_PER_SETTING + WORKER_START_S / 2)
        raise OptionError("the tuning budget is too small to measure the candidates", value=f"{budget_s:g} s",
                          expected=f"at least {needed:.1f} s for {settings} candidate/thread settings",
                          fix=f"pass --tune-budget {max(10, int(needed) + 1)}, or --no-measure to skip tuning")
    return per_setting


def contenders(measurements: Sequence[Measurement]) -> list[Measurement]:
    """The settings worth a runoff: within RUNOFF_MARGIN of the fastest, fastest first (at most
    RUNOFF_SIZE); fewer than two means the first pass decided."""
    if not measurements:
        return []
    ranked = sorted(measurements, key=lambda m: m.p50_ms)
    close = [m for m in ranked if m.p50_ms <= ranked[0].p50_ms * (1 + RUNOFF_MARGIN)][:RUNOFF_SIZE]
    return close if len(close) >= 2 else []


def after_runoff(measurements: Sequence[Measurement], again: dict[tuple[str, int], list[float]]) -> list[Measurement]:
    """``measurements`` with each runoff contender's p50 replaced by the median of its first-pass p50
    and its runoff p50s (``again``, by label and threads): the figures the choice is made on."""
    out = []
    for m in measurements:
        more = again.get((m.label, m.threads))
        out.append(Measurement(m.label, m.threads, float(np.median([m.p50_ms, *more])), m.runs) if more else m)
    return out


def measure(artifact: Artifact, output_names: Sequence[str], feed: dict[str, np.ndarray], threads: Sequence[int],
            seconds_per_setting: float, label: str) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="edgemill-tune-") as folder:
        root = Path(folder)
        for name, data in artifact.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        np.savez(root / "feed.npz", **feed)
        spec = {"backend": artifact.candidate.backend, "entrypoint": artifact.entrypoint, "files": sorted(artifact.files),
                "options": artifact.backend_options, "outputs": list(output_names), "threads": list(threads),
                "seconds": seconds_per_setting}
        (root / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        timeout = 60 + len(threads) * (seconds_per_setting * 3 + 30)
        try:
            proc = subprocess.run([sys.executable, "-m", "edgemill.compiler.measure_worker", str(root)],
                                  capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise BackendError(f"measuring {label} did not finish", value=f"{timeout:.0f} s",
                               fix="pass --no-measure, or a smaller --tune-budget") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise BackendError(f"measuring {label} failed", value=(lines[-1] if lines else f"exit {proc.returncode}")[:300],
                           fix="pass --no-measure to skip tuning, and report the model to us")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return [Measurement(label, int(r["threads"]), float(r["p50_ms"]), int(r["runs"])) for r in result]


# --- cache ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get("EDGEMILL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgemill")
    return Path(root) / "tune"


def cache_key(model_bytes: bytes, parts: dict[str, Any]) -> str:
    h = hashlib.sha256(model_bytes)
    h.update(json.dumps({**parts, "edgemill": __version__, "libraries": _library_versions()}, sort_keys=True,
                        default=str).encode())
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnxruntime", "openvino", "onnx", "apache-tvm"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def artifact_digest(artifact: Artifact) -> str:
    """The identity of what a measurement measured: the artifact's files and load options."""
    h = hashlib.sha256(json.dumps(artifact.backend_options, sort_keys=True, default=str).encode())
    for name in sorted(artifact.files):
        h.update(name.encode() + b"\0" + hashlib.sha256(artifact.files[name]).digest())
    return h.hexdigest()


def load_cached(key: str) -> dict[str, Any] | None:
    path = cache_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_cached(key: str, value: dict[str, Any]) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**value, "saved": time.time()}, sort_keys=True))
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        pass  # a read-only home only costs the next compile its measuring
