"""The agent's capture subsystem: record format, durable queue, uploads, crash recovery, S3."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgemill.agent.capture import (CaptureFormatError, CaptureRecord, CaptureService, LocalFolderStore,
                                    MemoryStore, S3Store, open_store)
from edgemill.agent.capture.uploader import backoff_delay
from edgemill.agent.config import CaptureConfig
from edgemill.errors import ConfigError, MissingDependencyError, ResourceExhaustedError, UserError
from tests._s3server import s3_server  # noqa: F401  (the fixture, found by name)
from tests.capture_crash_child import DEVICE, capture_id, make_record

CHILD = Path(__file__).with_name("capture_crash_child.py")


def record(capture_id: str = "cap-1", device: str = "dev-1", size: int = 16, **changes: object) -> CaptureRecord:
    fields: dict[str, object] = dict(
        capture_id=capture_id, model="resnet", model_version="3", device=device, created_unix=1_717_171_717.5,
        inputs={"image": np.arange(size, dtype=np.float32).reshape(-1, 4) / 7, "ids": np.array([1, -2], np.int64)},
        outputs={"mask": np.array([[True, False]]), "pixels": np.arange(6, dtype=np.uint8)},
        auxiliary={"meta": b'{"camera": 2}', "empty": b""}, sampled=False)
    fields.update(changes)
    return CaptureRecord(**fields)  # type: ignore[arg-type]


def config(tmp_path: Path, **changes: object) -> CaptureConfig:
    values: dict[str, object] = dict(directory=tmp_path / "queue", store=f"file://{tmp_path / 'store'}",
                                     upload_interval_s=0.02, retry_backoff_max_s=0.05, upload_batch_size=4)
    values.update(changes)
    return CaptureConfig(**values)  # type: ignore[arg-type]


class FlakyStore(MemoryStore):
    """Refuses puts while ``down`` is set (a server that is unreachable), then behaves."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.down = threading.Event()
        self.failures_left = failures
        self.attempts = 0

    def put(self, key: str, data: bytes) -> None:
        self.attempts += 1
        if self.down.is_set() or self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("store unreachable")
        super().put(key, data)


def started(tmp_path: Path, store: object, **changes: object) -> CaptureService:
    service = CaptureService(config(tmp_path, **changes), "dev-1", store=store)  # type: ignore[arg-type]
    service.start()
    return service


# --- record format ------------------------------------------------------------------------------


def test_record_round_trip_keeps_dtypes_shapes_and_blobs() -> None:
    original = record()
    decoded = CaptureRecord.decode(original.encode())
    assert decoded == original
    assert {k: v.dtype for k, v in decoded.inputs.items()} == {"image": np.float32, "ids": np.int64}
    assert decoded.outputs["mask"].dtype == bool and decoded.outputs["pixels"].dtype == np.uint8
    assert decoded.outputs["mask"].shape == (1, 2) and decoded.auxiliary["meta"] == b'{"camera": 2}'
    assert decoded != record(size=20)


def test_flipped_or_truncated_bytes_fail_the_checksum() -> None:
    blob = bytearray(record().encode())
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(CaptureFormatError, match="checksum"):
        CaptureRecord.decode(bytes(blob))
    with pytest.raises(CaptureFormatError):
        CaptureRecord.decode(record().encode()[:-10])


def test_bad_capture_id_is_a_user_error_naming_it() -> None:
    with pytest.raises(UserError, match="bad capture id: 'a/b'.*Fix"):
        record(capture_id="a/b")
    with pytest.raises(UserError, match="object arrays|plain dtype"):
        record(inputs={"x": np.array([object()])})


def test_object_key_is_device_model_and_utc_date() -> None:
    assert record().object_key() == "dev-1/resnet/2024/05/31/cap-1.emc"


# --- submit and upload ---------------------------------------------------------------------------


def test_submitted_capture_reaches_the_folder_store_with_exact_bytes(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    service = started(tmp_path, store, upload_interval_s=3600)
    try:
        rec = record()
        service.submit(rec)
        assert service.status("cap-1").state == "queued"
        assert service.stats()["queued"] == 1 and service.stats()["queued_bytes"] == len(rec.encode())
        assert service.flush(5)
        status = service.status("cap-1")
        assert (status.state, status.uploaded_key) == ("uploaded", "dev-1/resnet/2024/05/31/cap-1.emc")
        assert store.get(status.uploaded_key) == rec.encode()
        assert store.list() == [status.uploaded_key]
        assert service.status("never-seen").state == "unknown"
        assert not list((tmp_path / "queue").glob("*.emc"))
        assert service.stats()["uploaded"] == 1 and service.stats()["queued"] == 0
    finally:
        service.stop()


def test_uploader_runs_on_its_own_every_interval(tmp_path: Path) -> None:
    store = MemoryStore()
    service = started(tmp_path, store, upload_interval_s=0.05, upload_batch_size=100)
    try:
        service.submit(record())
        deadline = time.monotonic() + 5
        while service.status("cap-1").state != "uploaded" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.status("cap-1").state == "uploaded"
    finally:
        service.stop()


def test_duplicate_capture_id_is_refused_while_queued_and_after_upload(tmp_path: Path) -> None:
    service = started(tmp_path, MemoryStore(), upload_interval_s=3600)
    try:
        service.submit(record())
        with pytest.raises(UserError, match="already accepted \\(it is queued\\).*'cap-1'"):
            service.submit(record())
        assert service.flush(5)
        with pytest.raises(UserError, match="it is uploaded"):
            service.submit(record())
    finally:
        service.stop()


def test_record_for_another_device_is_refused(tmp_path: Path) -> None:
    service = started(tmp_path, MemoryStore())
    try:
        with pytest.raises(UserError, match="another device: 'dev-2'"):
            service.submit(record(device="dev-2"))
    finally:
        service.stop()


def test_many_threads_submitting_at_once_each_capture_stored_once(tmp_path: Path) -> None:
    store = MemoryStore()
    service = started(tmp_path, store, upload_batch_size=8)
    try:
        def submit_some(thread: int) -> None:
            for i in range(15):
                service.submit(record(capture_id=f"t{thread}-{i}"))

        threads = [threading.Thread(target=submit_some, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert service.flush(10)
        assert len(store.objects) == 90 and set(store.puts.values()) == {1}
    finally:
        service.stop()


def test_json_sidecar_inlines_small_tensors_when_embed_limit_is_set(tmp_path: Path) -> None:
    store = MemoryStore()
    service = started(tmp_path, store, embed_limit_bytes=32)
    try:
        service.submit(record())
        assert service.flush(5)
        summary = json.loads(store.get("dev-1/resnet/2024/05/31/cap-1.json"))
        inputs = {t["name"]: t for t in summary["inputs"]}
        assert "data_b64" in inputs["ids"] and "data_b64" not in inputs["image"]  # 16 bytes vs 64 bytes
        assert summary["capture_id"] == "cap-1" and summary["auxiliary"][0] == {"name": "meta", "size": 13}
    finally:
        service.stop()


# --- bounds -------------------------------------------------------------------------------------


def test_full_queue_refuses_submits_and_skips_samples_keeping_what_it_accepted(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down.set()
    service = started(tmp_path, store, max_queue_records=3)
    try:
        for i in range(3):
            service.submit(record(capture_id=f"c{i}"))
        with pytest.raises(ResourceExhaustedError, match="max_queue_records = 3") as info:
            service.submit(record(capture_id="c3"))
        assert "Fix:" in str(info.value)
        built = []
        assert service.offer_sample(lambda: built.append(1) or record(capture_id="s1")) is False
        assert built == []  # a full queue does not even pay for building the record
        stats = service.stats()
        assert (stats["skipped_full"], stats["refused_full"], stats["queued"]) == (1, 1, 3)
        store.down.clear()
        assert service.flush(5)
        assert sorted(store.objects) == [f"dev-1/resnet/2024/05/31/c{i}.emc" for i in range(3)]
        assert service.offer_sample(lambda: record(capture_id="s2", sampled=True)) is True
    finally:
        service.stop()


def test_queue_size_limit_names_max_queue_mb(tmp_path: Path) -> None:
    service = started(tmp_path, MemoryStore(), max_queue_mb=0.001, upload_interval_s=3600)  # ~1 KB
    try:
        service.submit(record(capture_id="small"))
        with pytest.raises(ResourceExhaustedError, match="max_queue_mb"):
            service.submit(record(capture_id="big", size=400))
        assert service.offer_sample(lambda: record(capture_id="big2", size=400)) is False
        assert service.stats()["skipped_full"] == 1 and service.status("small").state == "queued"
    finally:
        service.stop()


def test_oldest_queued_age_follows_the_injected_clock(tmp_path: Path) -> None:
    now = [1000.0]
    service = CaptureService(config(tmp_path, upload_interval_s=3600), "dev-1", store=MemoryStore(),
                             clock=lambda: now[0])
    service.start()
    try:
        assert service.stats()["oldest_queued_age_s"] == 0.0
        service.submit(record(capture_id="old"))
        now[0] += 30
        service.submit(record(capture_id="new"))
        now[0] += 12.5
        assert service.stats()["oldest_queued_age_s"] == 42.5
    finally:
        service.stop()


# --- failures and retries -----------------------------------------------------------------------


def test_failing_store_reports_failed_then_uploads_after_retries(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down.set()
    service = started(tmp_path, store, retry_backoff_max_s=0.05)
    try:
        service.submit(record())
        assert service.flush(0.5) is False
        status = service.status("cap-1")
        assert status.state == "failed" and status.attempts >= 2
        assert "ConnectionError: store unreachable" in status.last_error
        # The backoff is capped at 0.05 s, so half a second holds several attempts, not one or two.
        before = status.attempts
        time.sleep(0.5)
        assert service.status("cap-1").attempts >= before + 4
        store.down.clear()
        assert service.flush(5)
        assert service.status("cap-1").state == "uploaded"
        assert store.get("dev-1/resnet/2024/05/31/cap-1.emc") == record().encode()
        assert service.stats()["upload_errors"] >= before + 4 and service.stats()["failed"] == 0
    finally:
        service.stop()


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    assert [backoff_delay(n, 300, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(40, 300, rand=lambda: 1.0) == 300
    assert backoff_delay(40, 300, rand=lambda: 0.0) == 150
    assert backoff_delay(10**6, 2.0, rand=lambda: 0.5) == 1.5


# --- restart and recovery -----------------------------------------------------------------------


def test_captures_queued_before_stop_are_uploaded_after_restart(tmp_path: Path) -> None:
    down = FlakyStore()
    down.down.set()
    first = started(tmp_path, down)
    for i in range(5):
        first.submit(record(capture_id=f"r{i}"))
    first.stop(flush_timeout=0.1)
    assert len(list((tmp_path / "queue").glob("*.emc"))) == 5

    store = MemoryStore()
    second = started(tmp_path, store, upload_interval_s=3600)
    assert second.stats()["queued"] == 5
    assert second.flush(5)
    second.stop()
    assert sorted(store.objects) == [f"dev-1/resnet/2024/05/31/r{i}.emc" for i in range(5)]

    third = started(tmp_path, MemoryStore())  # the uploaded log answers after another restart
    try:
        assert third.status("r3").state == "uploaded"
        with pytest.raises(UserError, match="already accepted"):
            third.submit(record(capture_id="r3"))
    finally:
        third.stop()


def test_second_service_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    first = started(tmp_path, MemoryStore())
    try:
        with pytest.raises(UserError, match="in use by another process"):
            started(tmp_path, MemoryStore())
    finally:
        first.stop()


def test_torn_and_damaged_queue_files_are_removed_on_recovery(tmp_path: Path) -> None:
    down = FlakyStore()
    down.down.set()
    first = started(tmp_path, down)
    for name in ("keep-1", "damaged", "keep-2"):
        first.submit(record(capture_id=name))
    first.stop(flush_timeout=0)
    queue = tmp_path / "queue"
    damaged = next(queue.glob("*.damaged.emc"))
    damaged.write_bytes(damaged.read_bytes()[:-7])  # truncated, as a disk fault would leave it
    (queue / "0000000000000099.half-written.emc.tmp").write_bytes(b"EMC1\x00")  # a write cut by a crash

    store = MemoryStore()
    second = started(tmp_path, store)
    try:
        stats = second.stats()
        assert (stats["queued"], stats["discarded_torn"], stats["quarantined_corrupt"]) == (2, 1, 1)
        assert not list(queue.glob("*.tmp")) and (queue / "quarantine" / damaged.name).exists()
        assert second.flush(5)
        assert sorted(store.objects) == ["dev-1/resnet/2024/05/31/keep-1.emc", "dev-1/resnet/2024/05/31/keep-2.emc"]
        assert second.status("damaged").state == "unknown"
    finally:
        second.stop()


def test_sigkill_while_queueing_and_uploading_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    queue_dir, store_dir, count = tmp_path / "queue", tmp_path / "store", 300
    stderr_path = tmp_path / "child.stderr"
    with stderr_path.open("w") as stderr:
        child = subprocess.Popen([sys.executable, str(CHILD), str(queue_dir), str(store_dir), str(count)],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
    accepted: list[str] = []
    store = LocalFolderStore(store_dir)
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        for line in child.stdout:
            if line.startswith("ACCEPTED "):
                accepted.append(line.split()[1])
            # Kill mid-way, once uploads are under way: some captures stored, others queued or uploading.
            if len(accepted) >= count // 2 and store.list() or time.monotonic() > deadline:
                break
        child.send_signal(signal.SIGKILL)
        # Read the rest through the same reader: lines it already buffered while we iterated are
        # still there (communicate() would read the raw pipe and drop them).
        rest = child.stdout.read()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    err = stderr_path.read_text()
    assert child.returncode == -signal.SIGKILL, err
    accepted += [line.split()[1] for line in rest.splitlines() if line.startswith("ACCEPTED ")]
    assert count // 2 <= len(accepted) < count, "the child finished before it was killed; slow it down"
    stored_before = {k for k in store.list() if k.endswith(".emc")}

    service = CaptureService(config(tmp_path, directory=queue_dir, store=f"file://{store_dir}"), DEVICE, store=store)
    service.start()
    try:
        assert service.flush(30)
        stored = [k for k in store.list() if k.endswith(".emc")]
        ids = [Path(k).name[: -len(".emc")] for k in stored]
        assert len(ids) == len(set(ids)), "a capture was stored twice"
        assert set(accepted) <= set(ids), f"accepted but lost: {sorted(set(accepted) - set(ids))[:5]}"
        # Beyond what was printed, only the capture in flight at the kill may have been accepted.
        assert set(ids) - set(accepted) <= {capture_id(len(accepted))}
        for key, cid in zip(stored, ids):
            expected = make_record(int(cid.split("-")[1]))
            assert key == expected.object_key()
            assert CaptureRecord.decode(store.get(key)) == expected
            assert service.status(cid).state == "uploaded"
        stats = service.stats()
        assert stats["queued"] == 0 and stats["quarantined_corrupt"] == 0
        assert not list(queue_dir.glob("*.emc")) and not list(queue_dir.glob("*.tmp"))
        assert stored_before < set(stored), "the kill should leave some captures for the restart to upload"
    finally:
        service.stop()


# --- stores -------------------------------------------------------------------------------------


def test_local_folder_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    for key in ("../escape.emc", "/abs.emc", "a//b.emc", ".incoming/x"):
        with pytest.raises(UserError, match="plain relative path"):
            store.put(key, b"x")
    store.put("a/b.emc", b"1")
    store.put("a/b.emc", b"2")  # an overwrite, as a re-upload after a crash does
    assert store.list() == ["a/b.emc"] and store.get("a/b.emc") == b"2" and store.list("b") == []
    with pytest.raises(KeyError):
        store.get("a/c.emc")


def test_open_store_parses_urls_and_names_bad_ones(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}"), LocalFolderStore)
    with pytest.raises(ConfigError, match="file://DIRECTORY or s3://BUCKET/PREFIX"):
        open_store("ftp://host/dir")
    with pytest.raises(ConfigError, match="bad S3 bucket name: 'ab'"):
        open_store("s3://ab/prefix")


def test_s3_store_without_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgemill\[s3\]'"):
        open_store("s3://captures/fleet")


@pytest.mark.slow
def test_uploads_to_a_real_s3_server(tmp_path: Path, s3_server: tuple[str, str, str]) -> None:  # noqa: F811
    import boto3

    endpoint, key_id, secret = s3_server
    cfg = config(tmp_path, store="s3://edgemill-captures/fleet-a", s3_endpoint_url=endpoint, s3_region="us-east-1")
    service = CaptureService(cfg, "dev-1")
    assert isinstance(service.store, S3Store)
    service.start()
    try:
        records = [record(capture_id=f"s3-{i}") for i in range(6)]
        for rec in records:
            service.submit(rec)
        assert service.flush(30), service.stats()
        service.submit(record(capture_id="s3-late"))
        assert service.flush(30)
    finally:
        service.stop()
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
                          region_name="us-east-1")
    listed = client.list_objects_v2(Bucket="edgemill-captures", Prefix="fleet-a/")
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    assert keys == sorted(f"fleet-a/dev-1/resnet/2024/05/31/s3-{i}.emc" for i in [*range(6), "late"])
    body = client.get_object(Bucket="edgemill-captures", Key="fleet-a/dev-1/resnet/2024/05/31/s3-4.emc")["Body"]
    assert CaptureRecord.decode(body.read()) == records[4]
    assert service.store.list("dev-1/resnet/") == [k[len("fleet-a/"):] for k in keys]
    assert service.store.get("dev-1/resnet/2024/05/31/s3-0.emc") == records[0].encode()
    with pytest.raises(KeyError):
        service.store.get("dev-1/none.emc")


def test_a_record_s_outputs_read_alone_equal_the_decoded_ones() -> None:
    from edgemill.captures.record import read_outputs

    record = CaptureRecord(capture_id="o-1", model="m", model_version="1", device="d", created_unix=1.0,
                           inputs={"x": np.arange(12, dtype=np.float32).reshape(1, 12)},
                           outputs={"p": np.array([[0.2, 0.8]], np.float32), "k": np.array([1], np.int64)},
                           auxiliary={}, sampled=True)
    blob = record.encode()
    outputs = read_outputs(blob)
    assert list(outputs) == ["p", "k"]
    for name, array in record.outputs.items():
        np.testing.assert_array_equal(outputs[name], array)
        assert outputs[name].dtype == array.dtype
    with pytest.raises(CaptureFormatError):
        read_outputs(blob[:-1])
