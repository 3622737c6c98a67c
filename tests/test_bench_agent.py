"""bench/agent.py section (a) keeps working: every path is timed in the same run, gRPC on both I/O cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_overhead_section_times_every_path_beside_its_transport_floor() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "agent.py"), "--only", "a", "--calls", "40"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    rows = {cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| path")
            for cells in [line.split("|")]}
    agent_rows = [label for label in rows if label.startswith("agent, ")]
    assert len(agent_rows) == 5 and sum("event-engine" in label for label in agent_rows) == 2
    assert len([label for label in rows if label.startswith("bare grpcio echo")]) == 4
    for label in agent_rows:
        p50, p99, _, _, own = (float(v) for v in rows[label])
        assert 0 < own < p50 <= p99, (label, rows[label])  # the agent's own time is inside the round trip
    assert float(rows["bare framed echo (Python), Unix socket"][0]) > 0
