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
from .test_fleet_api import register, server, upload  # noqa: F401  (the fixture)
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


def test_the_capture_view_draws_a_bgr_frame_in_its_true_colours(server, camera_package: Path,  # noqa: F811
                                                                 keypair: tuple[Path, Path], tmp_path: Path) -> None:
    """The package says its frames are BGR: the dashboard's capture view turns them RGB to draw them."""
    import base64
    import shutil

    from edgemill.captures.record import CaptureRecord
    from edgemill.package.store import sign_package

    signed = tmp_path / "camera.emp"
    shutil.copy(camera_package, signed)
    sign_package(signed, keypair[0])
    reply = upload(server, signed, name="cnn")
    assert reply.status_code == 201, reply.text
    headers = register(server, "cams", "cam-5")
    frame = np.zeros((1, 60, 80, 3), np.uint8)
    frame[..., 0] = 200  # blue in BGR
    for capture_id, model in (("bgr", "cnn"), ("other", "unknown-model")):
        record = CaptureRecord(capture_id=capture_id, model=model, model_version="0.1.0", device="cam-5",
                               created_unix=server.clock.now, inputs={"image": frame}, auxiliary={},  # type: ignore[attr-defined]
                               outputs={"scores": np.ones((1, 3), np.float32)}, sampled=True)
        assert server.put(f"/api/v1/agent/captures/{capture_id}", params={"model": model}, content=record.encode(),
                          headers=headers).status_code == 201
    for capture_id, channel in (("bgr", 2), ("other", 0)):  # unknown package: drawn as sent
        image = server.get(f"/api/v1/captures/cam-5/{capture_id}/view").json()["inputs"][0]["image"]
        pixels = np.frombuffer(base64.b64decode(image["data_b64"]), np.uint8).reshape(image["height"], image["width"], 3)
        assert pixels[..., channel].min() == 200 and pixels.sum() == 200 * image["height"] * image["width"]
