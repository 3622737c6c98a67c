"""bench/drift_overhead.py keeps working: the MLP's drift-on and drift-off calls are both timed, same agent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_drift_overhead_bench_times_both_sides_of_the_same_agent() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "drift_overhead.py"), "--seconds", "0.2", "--rounds", "2",
                          "--models", "mlp"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("mlp"))
    assert "34 features watched" in line
    on, off = (float(x) for x in re.search(r"p50 drift on\s+([\d.]+) µs\s+off\s+([\d.]+) µs", line).groups())  # type: ignore[union-attr]
    assert on > 0 and off > 0


def test_the_drift_overhead_bench_names_a_model_it_does_not_know() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "drift_overhead.py"), "--models", "resnet"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "'resnet'" in run.stderr and "mlp, cnn224" in run.stderr
