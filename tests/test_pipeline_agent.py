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
from edgemill.pipeline.spec import (
    PipelineSpec,
    parse_postprocess,
    parse_preprocess,
    read_labels,
)

from ._agent import AgentProcess, free_port
from .test_agent_sagemaker import generate_client, linux_only, needs_protoc, write_json
from .test_fleet_api import register, server, upload  # noqa: F401  (the fixture)

CAMERA_CLIENT = Path(__file__).parent / "sagemaker_client" / "em_camera.py"
TRITON_FRAMES = Path(__file__).parent / "kserve_client" / "triton_frames.py"


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
                              capture_output=True, text=True, timeout=180, check=False)
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


# --- names and encoded images over our API and KServe V2 ------------------------------------------


@pytest.fixture(scope="module")
def named_package(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from edgemill.package.store import sign_package

    folder = tmp_path_factory.mktemp("named")
    onnx.save(zoo.cnn(batch="N", image=32, channels=(8, 16), classes=10), str(folder / "cnn.onnx"))
    labels = folder / "labels.txt"
    labels.write_text("\n".join(["cat", "dog", "café ☕", "car", "bus", "tree", "sky", "road", "bird", "boat"]) + "\n")
    pre = "frame=60x80 color=BGR scale=1/255 mean=0.485,0.456,0.406 std=0.229,0.224,0.225"
    spec = PipelineSpec((parse_preprocess(pre),), parse_postprocess(["softmax,topk=5"], read_labels(labels)))
    path = Path(edgemill.compile(folder / "cnn.onnx", output=folder / "named.emp", measure=False, pipeline=spec).path)
    sign_package(path, keypair[0])
    return {"path": path, "pre": pre, "model": folder / "cnn.onnx", "names": labels.read_text().split("\n")[:10]}


def numpy_names(named: dict, frames: np.ndarray) -> list[list[str]]:
    """NumPy pre-processing + the original model (onnxruntime on the source file) + NumPy top-5."""
    import onnxruntime as ort

    from edgemill.pipeline import preprocess
    from edgemill.tensors import TensorSpec

    pre = parse_preprocess(named["pre"])
    image = preprocess.ModelImage.of(TensorSpec("image", "float32", ("N", 3, 32, 32)), None)
    session = ort.InferenceSession(str(named["model"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: preprocess.apply_numpy(pre, image, frames)})[0]
    return [[named["names"][i] for i in row] for row in np.argsort(-logits, axis=-1, kind="stable")[:, :5]]


def png(frame_bgr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1])).save(buffer, format="PNG")  # PNG holds RGB
    return buffer.getvalue()


def test_names_and_encoded_images_over_our_api_and_kserve(named_package: dict, keypair: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    import importlib.util

    pytest.importorskip("PIL")
    if importlib.util.find_spec("tritonclient") is None:  # found, not imported: its V2 protos clash with ours
        pytest.skip("tritonclient is not installed (pip install -e '.[dev]')")
    from edgemill.client import AgentClient

    from .test_agent import agent_config

    frames = np.clip(np.random.default_rng(6).normal(128, 60, (3, 60, 80, 3)), 0, 255).astype(np.uint8)
    want = numpy_names(named_package, frames)
    encoded = np.empty(3, dtype=object)
    encoded[:] = [png(f) for f in frames]
    np.save(tmp_path / "frames.npy", frames)
    np.save(tmp_path / "encoded.npy", encoded, allow_pickle=True)
    config = agent_config(tmp_path, keypair[1], models={"standalone": False})
    with AgentProcess(config) as agent:
        with AgentClient(agent.address, timeout=30) as client:
            client.load_model(str(named_package["path"]), name="named")
            raw = client.predict("named", {"image": frames}).outputs
            from_png = client.predict("named", {"image": encoded}).outputs
        done = subprocess.run([sys.executable, str(TRITON_FRAMES), agent.address, "named", "image",
                               str(tmp_path / "frames.npy"), str(tmp_path / "encoded.npy")],
                              capture_output=True, text=True, timeout=120, check=False)
        stderr = agent.stderr()
    assert raw["labels"].tolist() == want and from_png["labels"].tolist() == want
    assert done.returncode == 0, done.stderr + stderr
    triton = json.loads(done.stdout)
    assert triton["raw"]["labels"] == want and triton["encoded"]["labels"] == want
    assert triton["raw"]["datatypes"]["labels"] == "BYTES" and triton["raw"]["datatypes"]["scores"] == "FP32"
