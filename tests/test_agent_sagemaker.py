"""The SageMaker Edge Manager drop-in: its JSON config, System V shared memory, and an unchanged Edge
Manager application driving a real agent over the Unix socket."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgemill
import edgemill.runtime as rt
from edgemill.agent import sysv_shm
from edgemill.captures.record import CaptureRecord, object_key
from edgemill.agent.edge_manager_config import DEFAULT_SOCKET, load_edge_manager_config
from edgemill.demo import zoo
from edgemill.errors import ConfigError, SharedMemoryError
from edgemill.package.store import sign_package

from ._agent import AgentProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "aws" / "sagemaker" / "edge"
CLIENT = Path(__file__).parent / "sagemaker_client" / "em_roundtrip.py"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="System V shared memory: Linux only")
needs_protoc = pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                                  reason="grpcio-tools generates the application's stubs (pip install -e '.[dev]')")


def write_json(tmp: Path, data: dict) -> Path:
    path = tmp / "sagemaker_edge_config.json"
    path.write_text(json.dumps(data, indent=4))
    return path


# --- the Edge Manager JSON config ----------------------------------------------------------------


def test_edge_manager_keys_map_onto_the_agent_config(tmp_path: Path) -> None:
    config, notes = load_edge_manager_config(write_json(tmp_path, {
        "sagemaker_edge_core_device_name": "camera-7",
        "sagemaker_edge_core_device_fleet_name": "cameras",
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": "/var/lib/em",
        "sagemaker_edge_core_folder_prefix": "upload/",
        "sagemaker_edge_core_capture_data_buffer_size": 30,
        "sagemaker_edge_core_capture_data_batch_size": 10,
        "sagemaker_edge_core_capture_data_push_period_seconds": 4,
        "sagemaker_edge_core_capture_data_base64_embed_limit": 2048,
    }))
    assert (config.device.name, config.device.fleet) == ("camera-7", "cameras")
    assert config.capture.store == "file:///var/lib/em/upload"
    assert (config.capture.max_queue_records, config.capture.upload_batch_size) == (30, 10)
    assert config.capture.upload_interval_s == 4 and config.capture.embed_limit_bytes == 2048
    assert config.listen.unix_socket == Path(DEFAULT_SOCKET)  # Edge Manager served on a Unix socket
    assert "sagemaker_edge_core_device_name -> device.name = 'camera-7'" in notes
    assert any(n.startswith("sagemaker_edge_core_capture_data_buffer_size -> capture.max_queue_records = 30")
               and "on-disk queue" in n for n in notes)


def test_cloud_destination_uploads_to_the_bucket(tmp_path: Path) -> None:
    config, notes = load_edge_manager_config(write_json(tmp_path, {
        "sagemaker_edge_core_capture_data_destination": "Cloud",
        "sagemaker_edge_provider_s3_bucket_name": "sagemaker-captures",
        "sagemaker_edge_core_folder_prefix": "fleet-a",
        "sagemaker_edge_core_region": "eu-west-1",
        "sagemaker_edge_core_capture_data_disk_path": "/unused",
    }))
    assert config.capture.store == "s3://sagemaker-captures/fleet-a"
    assert config.capture.s3_region == "eu-west-1"
    assert any(n.startswith("sagemaker_edge_core_capture_data_disk_path: not used") for n in notes)


def test_disk_with_periodic_upload_queues_on_that_disk_and_uploads_later(tmp_path: Path) -> None:
    config, _ = load_edge_manager_config(write_json(tmp_path, {
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": "/data/em",
        "sagemaker_edge_core_capture_data_periodic_upload": True,
        "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": 600,
        "sagemaker_edge_provider_s3_bucket_name": "sagemaker-later",
    }))
    assert config.capture.directory == Path("/data/em")
    assert config.capture.store == "s3://sagemaker-later"
    assert config.capture.upload_interval_s == 600


def test_keys_that_cannot_be_honoured_are_reported_with_what_to_use_instead(tmp_path: Path) -> None:
    _, notes = load_edge_manager_config(write_json(tmp_path, {
        "sagemaker_edge_core_root_certs_path": "/certs",
        "sagemaker_edge_provider_aws_cert_file": "/iot/device.pem.crt",
        "sagemaker_edge_provider_aws_iot_cred_endpoint": "https://example.iot.amazonaws.com",
        "sagemaker_edge_log_verbose": True,
        "sagemaker_edge_core_some_future_key": 1,
    }))
    text = "\n".join(notes)
    root = next(n for n in notes if n.startswith("sagemaker_edge_core_root_certs_path"))
    assert "not used" in root and "models.trusted_keys" in root
    iot = next(n for n in notes if "sagemaker_edge_provider_aws_cert_file" in n)
    assert "sagemaker_edge_provider_aws_iot_cred_endpoint" in iot and "control plane" in iot
    assert "--log-level debug" in text
    assert "sagemaker_edge_core_some_future_key: not recognised" in text
    assert "NO signature check" in text  # nothing said which keys to trust


def test_edgemill_object_is_merged_on_top(tmp_path: Path) -> None:
    config, notes = load_edge_manager_config(write_json(tmp_path, {
        "sagemaker_edge_core_device_name": "camera-7",
        "sagemaker_edge_core_capture_data_batch_size": 10,
        "edgemill": {"listen": {"unix_socket": "run/agent.sock", "address": ""},
                     "models": {"trusted_keys": ["keys/release.pub"], "memory_budget_mb": 64},
                     "capture": {"upload_batch_size": 50}},
    }))
    assert config.listen.unix_socket == tmp_path / "run" / "agent.sock"  # relative to the JSON file
    assert config.models.trusted_keys == [tmp_path / "keys" / "release.pub"]
    assert config.models.memory_budget_mb == 64 and not config.models.allow_unsigned
    assert config.capture.upload_batch_size == 50 and config.device.name == "camera-7"
    assert any("capture.upload_batch_size = 10" in n and 'overridden by "edgemill"' in n for n in notes)
    assert not any("NO signature check" in n for n in notes)


def test_malformed_json_is_refused_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "sagemaker_edge_core_device_name": "a",\n  "sagemaker_edge_core_region": eu-west-1\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3:33 is not valid JSON"):
        load_edge_manager_config(path)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("sagemaker_edge_core_capture_data_buffer_size", "30", "an integer"),
    ("sagemaker_edge_core_capture_data_batch_size", True, "an integer"),
    ("sagemaker_edge_core_capture_data_periodic_upload", "false", "true or false"),
    ("sagemaker_edge_core_device_name", 7, "a string"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_its_line(tmp_path: Path, key: str, value: object,
                                                              expected: str) -> None:
    path = write_json(tmp_path, {"sagemaker_edge_core_device_fleet_name": "f", key: value})
    with pytest.raises(ConfigError) as info:
        load_edge_manager_config(path)
    assert f"'{key}' in {path}:3" in str(info.value) and expected in str(info.value)


def test_an_unknown_key_outside_edge_managers_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'device_name'.*unknown key.*edgemill"):
        load_edge_manager_config(write_json(tmp_path, {"device_name": "a"}))


def test_a_bad_value_names_the_edge_manager_key_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"device\.name.*from sagemaker_edge_core_device_name at line 2"):
        load_edge_manager_config(write_json(tmp_path, {"sagemaker_edge_core_device_name": "no spaces allowed"}))
    with pytest.raises(ConfigError, match="sagemaker_edge_core_capture_data_destination.*Disk.*Cloud"):
        load_edge_manager_config(write_json(tmp_path, {"sagemaker_edge_core_capture_data_destination": "Tape"}))
    with pytest.raises(ConfigError, match="need a bucket"):
        load_edge_manager_config(write_json(tmp_path, {"sagemaker_edge_core_capture_data_destination": "Cloud"}))
    with pytest.raises(ConfigError, match="unknown key 'listen.port'.*edgemill"):
        load_edge_manager_config(write_json(tmp_path, {"edgemill": {"listen": {"port": 1}}}))


def test_the_embed_limit_keeps_edge_managers_ceiling(tmp_path: Path) -> None:
    config, notes = load_edge_manager_config(write_json(tmp_path, {
        "sagemaker_edge_core_capture_data_base64_embed_limit": 100_000}))
    assert config.capture.embed_limit_bytes == 3072
    assert any("capped" in n for n in notes)


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_edge_manager_config(tmp_path / "nope.json")


# --- System V shared memory ----------------------------------------------------------------------


class _Segments:
    """Real System V segments for a test, removed afterwards."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.shmat.restype = ctypes.c_void_p
        self.libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        self.libc.shmdt.argtypes = [ctypes.c_void_p]
        self.ids: list[int] = []

    def create(self, data: bytes, offset: int = 0) -> int:
        shmid = self.libc.shmget(0, offset + len(data), 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
        assert shmid >= 0
        self.ids.append(shmid)
        address = self.libc.shmat(shmid, None, 0)
        ctypes.memmove(address + offset, data, len(data))
        self.libc.shmdt(ctypes.c_void_p(address))
        return shmid

    def remove_all(self) -> None:
        for shmid in self.ids:
            self.libc.shmctl(shmid, 0, None)  # IPC_RMID


@pytest.fixture()
def segments():
    made = _Segments()
    yield made
    made.remove_all()


@linux_only
def test_a_sysv_segment_is_read_by_id_offset_and_size(segments: _Segments) -> None:
    data = np.arange(1000, dtype=np.float32).tobytes()
    shmid = segments.create(data, offset=100)
    assert sysv_shm.segment_size(shmid) == 100 + len(data)
    assert sysv_shm.read_segment(shmid, 100, len(data)) == data
    assert sysv_shm.read_segment(shmid, 104, 8) == data[4:12]


@linux_only
def test_a_sysv_region_beyond_the_segment_is_refused(segments: _Segments) -> None:
    shmid = segments.create(b"x" * 64)
    with pytest.raises(SharedMemoryError, match=r"\[60, 68\) lies beyond the segment"):
        sysv_shm.read_segment(shmid, 60, 8)


@linux_only
@pytest.mark.parametrize("shmid", [2**31 - 7, 2**40, -1])
def test_a_sysv_id_with_no_segment_is_refused(shmid: int) -> None:
    with pytest.raises(SharedMemoryError, match="no System V shared-memory segment with that id"):
        sysv_shm.read_segment(shmid, 0, 4)


# --- an Edge Manager application against a real agent --------------------------------------------


@pytest.fixture(scope="module")
def signed_mlp(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("em-package")
    onnx.save(zoo.mlp(), str(out / "mlp.onnx"))
    package = edgemill.compile(out / "mlp.onnx", output=out / "mlp.emp", measure=False).path
    sign_package(package, keypair[0])
    return Path(package)


def generate_client(out: Path) -> Path:
    """The application's stubs, generated from the .proto with plain protoc as Edge Manager's docs said."""
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
                           f"--grpc_python_out={out}", str(PROTO_DIR / "agent.proto")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


@linux_only
@needs_protoc
def test_an_edge_manager_application_runs_unchanged_against_the_agent(signed_mlp: Path, keypair: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    stubs = generate_client(tmp_path / "stubs")
    socket_path = tmp_path / "em.sock"
    config = write_json(tmp_path, {
        "sagemaker_edge_core_device_name": "em-device",
        "sagemaker_edge_core_device_fleet_name": "em-fleet",
        "sagemaker_edge_core_capture_data_destination": "Disk",
        "sagemaker_edge_core_capture_data_disk_path": str(tmp_path / "captured"),
        "sagemaker_edge_core_folder_prefix": "em",
        "sagemaker_edge_core_capture_data_buffer_size": 30,
        "sagemaker_edge_core_capture_data_batch_size": 10,
        "sagemaker_edge_core_capture_data_push_period_seconds": 1,
        "sagemaker_edge_core_root_certs_path": "/opt/aws/certs",
        "sagemaker_edge_log_verbose": False,
        "edgemill": {"listen": {"unix_socket": str(socket_path), "address": f"127.0.0.1:{free_port()}",
                                "metrics_address": ""},
                     "models": {"trusted_keys": [str(keypair[1])], "directory": str(tmp_path / "models")},
                     "capture": {"directory": str(tmp_path / "queue")}},
    })
    local = rt.load(signed_mlp, trusted_keys=[keypair[1]])
    rng = np.random.default_rng(3)
    feed = {s.name: rng.standard_normal([int(d) for d in s.shape]).astype(s.dtype) for s in local.inputs}
    np.savez(tmp_path / "in.npz", **feed)
    expected = local.run(feed)

    with AgentProcess(None, "--edge-manager-config", str(config)) as agent:
        assert f"unix:{socket_path}" in agent.addresses
        done = subprocess.run([sys.executable, str(CLIENT), str(stubs), str(socket_path), str(signed_mlp), "mlp",
                               str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                              capture_output=True, text=True, timeout=180)
        stderr = agent.stderr()
    assert done.returncode == 0, done.stderr + stderr
    assert "edge manager config: sagemaker_edge_core_device_name -> device.name = 'em-device'" in stderr
    assert "sagemaker_edge_core_root_certs_path: not used" in stderr
    report = json.loads(done.stdout)
    ok = {"code": "OK"}

    assert report["models_before"] == [] and report["load"] == ok
    metadata = {"inputs": [{"name": s.name, "data_type": "FLOAT32", "shape": list(s.shape)} for s in local.inputs],
                "outputs": [{"name": s.name, "data_type": "FLOAT32", "shape": list(s.shape)} for s in local.outputs]}
    assert report["describe"] == {"name": "mlp", "url": str(signed_mlp.resolve()), **metadata}
    assert report["load_model"] == report["describe"] and report["list"] == [report["describe"]]
    # Edge Manager's documented status codes for the same failures
    assert report["load_again"]["code"] == "ALREADY_EXISTS"
    assert report["load_missing"]["code"] == "NOT_FOUND"
    assert report["describe_unknown"]["code"] == "NOT_FOUND"
    assert report["predict_unknown_model"]["code"] == "NOT_FOUND"
    assert report["predict_wrong_size"]["code"] == "INVALID_ARGUMENT"
    assert report["predict_bad_segment"]["code"] == "INVALID_ARGUMENT"
    assert "no System V shared-memory segment" in report["predict_bad_segment"]["details"]
    assert report["predict_short_region"]["code"] == "INVALID_ARGUMENT"
    assert report["unload"] == ok and report["unload_again"]["code"] == "NOT_FOUND"
    assert report["models_after"] == []

    # the same numbers as our own runtime, whichever way the tensors travelled
    for way in ("predict_bytes", "predict_shm", "predict_shm_offset", "predict_no_metadata"):
        assert report[way] == ok, way
    got = dict(np.load(tmp_path / "out.npz"))
    for way in ("bytes", "shm", "shm_offset", "no_metadata"):
        for name, value in expected.items():
            np.testing.assert_allclose(got[f"{way}/{name}"], value, rtol=1e-6, atol=1e-6)
    assert report["concurrent_identical"]

    # captures: queued durably, then in the Disk destination; their status as Edge Manager named it
    assert report["capture"] == ok
    assert report["capture_again"]["code"] == "ALREADY_EXISTS"
    assert report["capture_future"]["code"] == "OUT_OF_RANGE"
    assert report["capture_bad_id"]["code"] == "INVALID_ARGUMENT"
    assert report["capture_statuses"][-1] == "SUCCESS"
    assert set(report["capture_statuses"]) <= {"IN_PROGRESS", "SUCCESS"}
    assert report["status_unknown"] == {"code": "OK", "status": "NOT_FOUND"}  # a value, as Edge Manager's enum says
    stored = list((tmp_path / "captured" / "em").rglob(f"{report['capture_id']}.emc"))
    assert len(stored) == 1
    record = CaptureRecord.decode(stored[0].read_bytes())
    assert stored[0].relative_to(tmp_path / "captured" / "em").as_posix() == object_key(
        "em-device", "mlp", record.created_unix, report["capture_id"])
    for name, value in feed.items():
        np.testing.assert_array_equal(record.inputs[name], value)
    for name, value in expected.items():
        np.testing.assert_allclose(record.outputs[name], value, rtol=1e-6, atol=1e-6)
    assert record.auxiliary["inputs/request"] == b'{"camera": 7}'
    assert record.auxiliary["outputs/label"] == b"label=cat"  # read from shared memory, rest of the segment
    extra = json.loads(record.auxiliary["edge_manager.json"])
    assert extra["encodings"] == {"inputs/request": "JSON", "outputs/label": "NONE"}
    assert extra["inference_timestamp"]["seconds"] > 0


@needs_protoc
def test_the_wire_definitions_are_edge_managers(tmp_path: Path) -> None:
    """Names, numbers and types of every field, checked from the generated descriptor (in a subprocess)."""
    stubs = generate_client(tmp_path / "stubs")
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import agent_pb2 as pb\n"
        "fd = pb.DESCRIPTOR\n"
        "out = {m.name: [[f.number, f.name, f.type] for f in m.fields] for m in fd.message_types_by_name.values()}\n"
        "out.update({'enum ' + e.name: [[v.number, v.name] for v in e.values]\n"
        "            for e in fd.enum_types_by_name.values()})\n"
        "s = fd.services_by_name['Agent']\n"
        "out['service'] = [fd.package + '.' + s.name] + [m.name for m in s.methods]\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script, str(stubs)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wire = json.loads(done.stdout)
    string, bytes_, message, enum, u64, i32, i64 = 9, 12, 11, 14, 4, 5, 3
    assert wire["service"] == ["AWS.SageMaker.Edge.Agent", "Predict", "LoadModel", "UnLoadModel", "ListModels",
                               "DescribeModel", "CaptureData", "GetCaptureDataStatus"]
    assert wire["enum DataType"] == [[0, "UINT8"], [1, "INT16"], [2, "INT32"], [3, "INT64"], [4, "FLOAT16"],
                                     [5, "FLOAT32"], [6, "FLOAT64"]]
    assert wire["enum CaptureDataStatus"] == [[0, "FAILURE"], [1, "SUCCESS"], [2, "IN_PROGRESS"], [3, "NOT_FOUND"]]
    assert wire["enum Encoding"] == [[0, "CSV"], [1, "JSON"], [2, "NONE"], [3, "BASE64"]]
    assert wire["TensorMetadata"] == [[1, "name", bytes_], [2, "data_type", enum], [3, "shape", i32]]
    assert wire["SharedMemoryHandle"] == [[1, "size", u64], [2, "offset", u64], [3, "segment_id", u64]]
    assert wire["Tensor"] == [[1, "tensor_metadata", message], [4, "byte_data", bytes_],
                              [5, "shared_memory_handle", message]]
    assert wire["Model"] == [[1, "url", string], [2, "name", string], [3, "input_tensor_metadatas", message],
                             [4, "output_tensor_metadatas", message]]
    assert wire["PredictRequest"] == [[1, "name", string], [2, "tensors", message]]
    assert wire["PredictResponse"] == [[1, "tensors", message]]
    assert wire["LoadModelRequest"] == [[1, "url", string], [2, "name", string]]
    assert wire["AuxilaryData"] == [[1, "name", string], [2, "encoding", enum], [3, "byte_data", bytes_],
                                    [4, "shared_memory_handle", message]]
    assert wire["CaptureDataRequest"] == [[1, "model_name", string], [2, "capture_id", string],
                                          [3, "inference_timestamp", message], [4, "input_tensors", message],
                                          [5, "output_tensors", message], [6, "inputs", message],
                                          [7, "outputs", message]]
    assert wire["GetCaptureDataStatusResponse"] == [[1, "status", enum]]
    assert wire["Timestamp"] == [[1, "seconds", i64], [2, "nanos", i32]]
    for empty in ("UnLoadModelResponse", "ListModelsRequest", "CaptureDataResponse"):
        assert wire[empty] == []
