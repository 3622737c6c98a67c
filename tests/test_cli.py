"""The CLI end to end: demo, inspect, bench, run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .conftest import run_cli


def test_demo_runs_the_whole_flow(tmp_path: Path) -> None:
    result = run_cli("demo", "--workdir", tmp_path / "demo")
    assert result.code == 0, result.err
    for step in ("train", "compile", "sign", "verify", "tampered", "load", "predict"):
        assert step in result.out
    assert "refused as expected: file_modified" in result.out
    assert (tmp_path / "demo" / "classifier.emp").is_file()


def test_demo_json(tmp_path: Path) -> None:
    result = run_cli("demo", "--workdir", tmp_path / "demo", "--json")
    data = json.loads(result.out)
    assert result.code == 0 and data["agreement_with_numpy_model"] == 1.0
    assert all(step["seconds"] >= 0 for step in data["steps"])


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
