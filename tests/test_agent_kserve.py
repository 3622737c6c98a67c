"""tritonclient (KServe V2 over gRPC), unchanged, against a real agent: load, infer, metadata, unload."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.package.store import sign_package

from ._agent import AgentProcess
from .test_agent import agent_config, feed_for

# Looked up, not imported: tritonclient's V2 protobuf definitions would clash with the agent's in this process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="tritonclient[grpc] is not installed (pip install -e '.[dev]')")
SCRIPT = Path(__file__).parent / "kserve_client" / "triton_roundtrip.py"


def test_tritonclient_loads_infers_and_unloads(packages: dict[str, Path], keypair: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    package = models / "classifier.emp"
    shutil.copy(packages["cnn"], package)
    sign_package(package, keypair[0])
    config = agent_config(tmp_path, keypair[1], models, models={"standalone": False})
    local = rt.load(package, trusted_keys=[keypair[1]])
    feed = feed_for(local, seed=7)
    np.savez(tmp_path / "in.npz", **feed)
    with AgentProcess(config) as agent:
        done = subprocess.run([sys.executable, str(SCRIPT), agent.address, "classifier", str(tmp_path / "in.npz"),
                               str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    assert not report["model_ready_after_unload"]
    assert report["server"]["name"] == "edgemill"
    assert {"name": "classifier", "state": "UNAVAILABLE", "reason": "not loaded"} in report["index_before"]["models"]
    assert [i["name"] for i in report["metadata"]["inputs"]] == [s.name for s in local.inputs]
    assert report["metadata"]["platform"] == f"edgemill_{local.backend}"
    assert "NOT_FOUND" in report["unknown_model_error"]["status"]
    assert "no-such-model" in report["unknown_model_error"]["message"]
    assert int(report["parameters"]["edgemill_compute_us"]["int64_param"]) > 0
    got = dict(np.load(tmp_path / "out.npz"))
    expected = local.run(feed)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)
