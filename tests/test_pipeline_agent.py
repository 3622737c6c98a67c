"""Packages with pre- and post-processing served by the agent: an unchanged Edge Manager camera
application sends raw frame bytes with the metadata ListModels gives and gets the package's top-k."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.demo import zoo
from edgemill.pipeline.spec import PipelineSpec, parse_postprocess, parse_preprocess

from ._agent import AgentProcess, free_port
from .test_agent_sagemaker import generate_client, linux_only, needs_protoc, write_json

CAMERA_CLIENT = Path(__file__).parent / "sagemaker_client" / "em_camera.py"


@pytest.fixture(scope="module")
def camera_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("camera")
    onnx.save(zoo.cnn(batch=1, image=32, channels=(8, 16), classes=10), str(folder / "cnn.onnx"))
    spec = PipelineSpec((parse_preprocess("frame=60x80 color=BGR scale=1/255 mean=0.5 std=0.25"),),
                        parse_postprocess(["softmax,topk=3"]))
    return Path(edgemill.compile(folder / "cnn.onnx", output=folder / "camera.emp", measure=False, pipeline=spec).path)


@linux_only
@needs_protoc
def test_an_edge_manager_camera_app_sends_raw_frames(camera_package: Path, tmp_path: Path) -> None:
    stubs = generate_client(tmp_path / "stubs")
    socket_path = tmp_path / "em.sock"
    config = write_json(tmp_path, {
        "sagemaker_edge_core_device_name": "cam-1", "sagemaker_edge_core_device_fleet_name": "cams",
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "captured"),
        "edgemill": {"listen": {"unix_socket": str(socket_path), "address": f"127.0.0.1:{free_port()}",
                                "metrics_address": ""},
                     "models": {"allow_unsigned": True, "directory": str(tmp_path / "models")},
                     "capture": {"directory": str(tmp_path / "queue")}},
    })
    frames = np.clip(np.random.default_rng(2).normal(128, 60, (3, 60, 80, 3)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    with AgentProcess(None, "--edge-manager-config", str(config)) as agent:
        done = subprocess.run([sys.executable, str(CAMERA_CLIENT), str(stubs), str(socket_path), str(camera_package),
                               "camera", str(tmp_path / "frames.npy"), str(tmp_path / "out.npz")],
                              capture_output=True, text=True, timeout=180)
        stderr = agent.stderr()
    assert done.returncode == 0, done.stderr + stderr
    report = json.loads(done.stdout)
    assert report["input"]["data_type"] == "UINT8" and report["input"]["shape"] == [1, 60, 80, 3]
    assert report["outputs"] == ["classes", "scores"]
    got = dict(np.load(tmp_path / "out.npz"))
    local = rt.load(camera_package)
    want = [local.run({local.inputs[0].name: frame[None]}) for frame in frames]
    np.testing.assert_array_equal(got["classes"], np.concatenate([w["classes"] for w in want]))
    np.testing.assert_allclose(got["scores"], np.concatenate([w["scores"] for w in want]), rtol=1e-6)
