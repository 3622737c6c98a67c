"""Capture through a real agent: on request, sampled, uploaded to a folder and to a real S3 server, and
exactly once after the agent is killed with SIGKILL mid-upload and restarted."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.agent.capture import CaptureRecord
from edgemill.client import AgentClient, AgentError
from edgemill.package.store import sign_package

from ._agent import AgentProcess, wait_for
from ._s3server import s3_server  # noqa: F401  (a fixture)
from .test_agent import agent_config, feed_for


@pytest.fixture(scope="module")
def signed_mlp(packages: dict[str, Path], keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("signed-capture") / "mlp.emp"
    shutil.copy(packages["mlp"], target)
    sign_package(target, keypair[0])
    return target


def stored_records(root: Path) -> dict[str, list[CaptureRecord]]:
    found: dict[str, list[CaptureRecord]] = {}
    for path in root.rglob("*.emc"):
        record = CaptureRecord.decode(path.read_bytes())
        found.setdefault(record.capture_id, []).append(record)
    return found


def content(index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, bytes]]:
    return ({"x": np.full((2, 8), index, np.float32)}, {"y": np.arange(4, dtype=np.int64) * index},
            {"note": f"frame {index}".encode()})


def test_captures_on_request_and_sampled_reach_the_folder_store(signed_mlp: Path, keypair: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    config = agent_config(tmp_path, keypair[1], capture={"sample_rates": {"mlp": 1.0}, "upload_batch_size": 4})
    local = rt.load(signed_mlp)
    with AgentProcess(config) as agent, AgentClient(agent.address) as client:
        client.load_model(str(signed_mlp), name="mlp")
        inputs, outputs, aux = content(3)
        explicit = client.capture_data("mlp", inputs, outputs, aux, capture_id="explicit-1")
        feed = feed_for(local, seed=5)
        predicted = client.predict("mlp", feed, capture=True, capture_id="with-predict-1")
        for _ in range(5):  # sampled at rate 1.0
            client.predict("mlp", feed)
        assert explicit == "explicit-1" and predicted.capture_id == "with-predict-1"
        assert wait_for(lambda: client.capture_status("explicit-1").state == "uploaded", 30)
        assert wait_for(lambda: client.capture_status("with-predict-1").state == "uploaded", 30)
        assert client.capture_status("never-seen").state == "unknown"
        with pytest.raises(AgentError) as again:
            client.capture_data("mlp", inputs, outputs, aux, capture_id="explicit-1")
        assert "explicit-1" in again.value.message
        assert wait_for(lambda: len(stored_records(tmp_path / "store")) >= 7, 30)
    records = stored_records(tmp_path / "store")
    assert all(len(copies) == 1 for copies in records.values())
    explicit_record = records["explicit-1"][0]
    assert explicit_record.device == "test-device" and not explicit_record.sampled
    np.testing.assert_array_equal(explicit_record.inputs["x"], inputs["x"])
    assert explicit_record.auxiliary == aux
    with_predict = records["with-predict-1"][0]
    np.testing.assert_allclose(with_predict.outputs[local.outputs[0].name],
                               predicted.outputs[local.outputs[0].name])
    assert sum(r[0].sampled for r in records.values()) == 5


def test_sigkill_mid_upload_then_restart_stores_every_accepted_capture_once(keypair: tuple[Path, Path],
                                                                            signed_mlp: Path, tmp_path: Path) -> None:
    config = agent_config(tmp_path, keypair[1], capture={"upload_interval_s": 0.3, "upload_batch_size": 8})
    accepted: list[int] = []
    attempted: set[int] = set()
    lock = threading.Lock()
    agent = AgentProcess(config).start()
    try:
        stop = threading.Event()

        def sender(worker: int) -> None:
            with AgentClient(agent.address, timeout=5) as client:
                for index in range(worker, 100_000, 4):
                    if stop.is_set():
                        return
                    with lock:
                        attempted.add(index)
                    try:
                        client.capture_data("mlp-logger", *content(index), capture_id=f"c{index:06d}")
                    except AgentError:
                        return  # the agent is gone
                    with lock:
                        accepted.append(index)

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        assert wait_for(lambda: len(accepted) >= 200 and any((tmp_path / "store").rglob("*.emc")), 60)
        agent.proc.kill()  # SIGKILL while senders are mid-call and the uploader is mid-batch
        agent.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        agent.kill()
    queued_at_kill = list((tmp_path / "queue").rglob("*.emc"))
    uploaded_at_kill = len(stored_records(tmp_path / "store"))
    assert queued_at_kill, "the kill should leave captures queued"
    with AgentProcess(config) as restarted, AgentClient(restarted.address) as client:
        pending = [i for i in accepted]
        assert wait_for(lambda: all(client.capture_status(f"c{i:06d}").state == "uploaded" for i in pending[-50:])
                        and not list((tmp_path / "queue").rglob("*.emc")), 60)
    records = stored_records(tmp_path / "store")
    assert uploaded_at_kill < len(records)
    for index in accepted:
        copies = records.get(f"c{index:06d}")
        assert copies is not None and len(copies) == 1, index
        inputs, outputs, aux = content(index)
        np.testing.assert_array_equal(copies[0].inputs["x"], inputs["x"])
        np.testing.assert_array_equal(copies[0].outputs["y"], outputs["y"])
        assert copies[0].auxiliary == aux
    extra = set(records) - {f"c{i:06d}" for i in accepted}
    assert extra <= {f"c{i:06d}" for i in attempted}  # accepted just before the kill, reply lost: still whole
    objects = list((tmp_path / "store").rglob("*.emc"))
    assert len(objects) == len(records)  # one object per capture


@pytest.mark.slow
def test_captures_upload_to_a_real_s3_server(s3_server: tuple[str, str, str], signed_mlp: Path,  # noqa: F811
                                             keypair: tuple[Path, Path], tmp_path: Path) -> None:
    boto3 = pytest.importorskip("boto3")
    endpoint, key, secret = s3_server
    config = agent_config(tmp_path, keypair[1], capture={"store": "s3://edgemill-captures/fleet-a",
                                                         "s3_endpoint_url": endpoint, "s3_region": "us-east-1"})
    with AgentProcess(config) as agent, AgentClient(agent.address) as client:
        for index in range(5):
            client.capture_data("mlp", *content(index), capture_id=f"s3-{index}")
        assert wait_for(lambda: all(client.capture_status(f"s3-{i}").state == "uploaded" for i in range(5)), 60)
        key_of_first = client.capture_status("s3-0").object_key
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                      region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket="edgemill-captures", Prefix="fleet-a/test-device/mlp/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert len(keys) == 5 and key_of_first == f"s3://edgemill-captures/{keys[0]}"
    for object_key in keys:
        record = CaptureRecord.decode(s3.get_object(Bucket="edgemill-captures", Key=object_key)["Body"].read())
        index = int(record.capture_id.split("-")[1])
        np.testing.assert_array_equal(record.inputs["x"], content(index)[0]["x"])
