"""The CLI end to end: demo, inspect, bench, run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import run_cli


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    result = run_cli("demo", "--workdir", tmp_path / "demo")
    assert result.code == 0, result.err
    for step in ("train", "compile", "sign", "verify", "tampered", "load", "predict", "control plane", "push",
                 "two agents", "canary", "capture", "drift is seen", "live accuracy", "export the labeled captures",
                 "push 1.1.0", "dashboard"):
        assert step in result.out
    assert "refused as expected: file_modified" in result.out
    assert "deployment 1 succeeded" in result.out and "2 stored under" in result.out
    assert "lineage: validation:captures:classifier@1.0.0:20" in result.out
    assert "20 captured predictions labeled" in result.out
    assert "/dashboard/#key=emk_" in result.out and "edgemill server --data-dir" in result.out
    assert (tmp_path / "demo" / "classifier.emp").is_file()
    assert (tmp_path / "demo" / "server" / "edgemill.db").is_file()
    assert "Traceback" not in result.err


def test_demo_json(tmp_path: Path) -> None:
    for _ in range(2):  # a re-run in the same workdir starts a fresh fleet
        result = run_cli("demo", "--workdir", tmp_path / "demo", "--json")
        assert result.code == 0, result.err
        data = json.loads(result.out)
        assert data["agreement_with_numpy_model"] == 1.0
        assert all(step["seconds"] >= 0 for step in data["steps"])
        fleet = data["fleet"]
        assert fleet["deployment"]["state"] == "succeeded" and fleet["deployment"]["id"] == 1
        assert fleet["devices_online"] == 2 and fleet["captures_stored"] == 2 and fleet["fleet_predictions_agree"]
        assert fleet["input_drift"]["demo-2"] > 0.25 > fleet["input_drift"]["demo-1"], fleet["input_drift"]
        # The data loop: the labels are the held-out truth, so live accuracy is the package's on those rows.
        assert fleet["live_accuracy"]["samples"] == 20 and 0.8 <= fleet["live_accuracy"]["top1"] <= 1.0
        assert fleet["exported"]["samples"] == 20 and fleet["exported"]["labels"] == "labels"
        assert fleet["next_version"]["validated_on"] == ["validation:captures:classifier@1.0.0:20"]
        assert fleet["dashboard_url"].startswith(fleet["server_url"] + "/dashboard/#key=")
        key = (tmp_path / "demo" / "server" / "operator.key").read_text().strip()
        assert fleet["view_later_url"].endswith(f"#key={key}")


def test_demo_without_the_server_extra_runs_the_local_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if `pip install 'edgemill[server]'` was not done
    result = run_cli("demo", "--workdir", tmp_path / "demo")
    assert result.code == 0, result.err
    assert "predict the held-out set" in result.out and "start the control plane" not in result.out
    assert "pip install 'edgemill[server]'" in result.out
    assert not (tmp_path / "demo" / "server").exists()


def test_inspect_shows_manifest_and_signature_state(packages: dict, keypair: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    pkg = tmp_path / "m.emp"
    shutil.copy(packages["cnn"], pkg)
    unsigned = run_cli("inspect", pkg)
    assert unsigned.code == 0 and "unsigned" in unsigned.out and "image: float32[1, 3, 32, 32]" in unsigned.out
    run_cli("sign", pkg, "--key", keypair[0])
    signed = run_cli("inspect", pkg, "--trusted-key", keypair[1], "--json")
    data = json.loads(signed.out)
    assert data["signature"] == {"signed": True, "key": data["signature"]["key"], "verified": True}
    assert data["manifest"]["name"] == "cnn" and data["report"]["steps"]


def test_bench_reports_latency_throughput_and_memory(packages: dict) -> None:
    result = run_cli("bench", packages["mlp"], "--json", "--iterations", "50", "--warmup", "2", "--threads", "1")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert 0 < data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"]
    assert data["iterations"] == 50 and data["throughput_per_s"] > 0 and data["peak_rss_mb"] > 0


def test_bench_human_output(packages: dict) -> None:
    result = run_cli("bench", packages["dynamic_batch"], "--duration", "0.2", "--batch", "4")
    assert result.code == 0 and "p50" in result.out and "batch=4" in result.out


def test_run_random_json(packages: dict) -> None:
    result = run_cli("run", packages["encoder"], "--random", "--json")
    data = json.loads(result.out)
    assert data["outputs"]["hidden"]["shape"] == [1, 16, 64]


def test_version_flag() -> None:
    result = run_cli("--version")
    assert result.code == 0 and "edgemill" in result.out
