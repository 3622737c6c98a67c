"""bench/fleet_sim.py keeps working: a small simulated fleet registers, heartbeats, and takes a rollout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aiohttp")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_a_small_simulated_fleet_heartbeats_and_converges_on_a_rollout(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet_sim.py"), "--devices", "40", "--interval", "2",
                          "--long-poll", "1.5", "--duration", "4", "--rollout", "--canary-percent", "10",
                          "--batch-size", "20", "--bake", "0.5", "--json", str(out)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["devices"] == 40 and result["errors"] == {}
    assert result["heartbeats"] >= 40 and result["latency_ms"]["p99"] > 0
    assert result["cpu_share_of_one_core"]["server"] > 0 and result["db_bytes_per_device_day"] >= 0
    rollout = result["rollout"]
    assert (rollout["state"], rollout["waves"], rollout["devices_updated"]) == ("succeeded", 3, 40)
    assert 0 <= rollout["converged_after_last_release_s"] <= rollout["total_s"]


def test_simulated_devices_send_drift_histograms_the_server_stores(tmp_path: Path) -> None:
    """Every device reports its model's drift counts (over the package baseline's bins, a new epoch on a
    restart); the server accepts them all, closes buckets in the window and scores the fleet."""
    out = tmp_path / "sim.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet_sim.py"), "--devices", "12", "--interval", "1",
                          "--long-poll", "0.5", "--duration", "4", "--model", "--drift-bucket-s", "1",
                          "--drift-min-samples", "5", "--drift-shifted", "0.25", "--restart-rate", "0.05",
                          "--json", str(out)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["drift"] is True and result["errors"] == {} and result["heartbeats"] >= 12
    assert result["drift_features"] == 34  # 32 of the model's input columns, the predicted class, the top score
    assert result["drift_buckets_stored"] > 0
    assert 0 < result["drift_bytes_per_model"]["mean"] < result["heartbeat_bytes"]["mean"]
    view = result["drift_view"]
    assert view["status"] == "ok" and view["refused"] == 0 and view["devices_scored"] == 12, view
