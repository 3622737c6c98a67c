"""`edgemill captures export` against a real server process: labeled captures become a dataset that
compiles as --validation, and the new version's lineage names the captures it was checked on."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

import edgemill.runtime as rt  # noqa: E402
from edgemill.captures.dataset import describe, lineage_entries  # noqa: E402
from edgemill.captures.record import CaptureRecord  # noqa: E402
from edgemill.cli.captures_cmd import parse_since  # noqa: E402

from ._fleet import ServerProcess, build_model_package  # noqa: E402
from .conftest import run_cli  # noqa: E402


def _post(url: str, body: dict, headers: dict[str, str] | None = None, method: str = "POST") -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _device(server: ServerProcess, fleet: str, name: str) -> dict[str, str]:
    client = server.client()
    client.request("POST", "/api/v1/fleets", body={"name": fleet})
    token = client.request("POST", f"/api/v1/fleets/{fleet}/registration-tokens", body={})["token"]
    reply = _post(server.url + "/api/v1/agent/register", {"token": token, "device": name, "tags": {}})
    return {"Authorization": f"Bearer {reply['credential']}"}


def _capture(server: ServerProcess, headers: dict[str, str], device: str, capture_id: str, model: rt.Model,
             x: np.ndarray, version: str = "1.0.0", created: float | None = None) -> int:
    outputs = model.run({"features": x})
    record = CaptureRecord(capture_id=capture_id, model="detector", model_version=version, device=device,
                           created_unix=created or time.time(), inputs={"features": x}, outputs=dict(outputs),
                           auxiliary={}, sampled=True)
    request = urllib.request.Request(f"{server.url}/api/v1/agent/captures/{capture_id}?model=detector",
                                     data=record.encode(), method="PUT",
                                     headers={"Content-Type": "application/octet-stream", **headers})
    urllib.request.urlopen(request, timeout=30).close()
    return int(np.argmax(outputs["logits"][0]))


def test_labeled_captures_export_compile_as_validation_and_show_in_lineage(tmp_path: Path,
                                                                             keypair: tuple[Path, Path]) -> None:
    package = build_model_package(tmp_path, "detector", "1.0.0", 8, keypair[0])
    model = rt.load(package)
    rng = np.random.default_rng(3)
    with ServerProcess(tmp_path / "server", keypair[1]) as server:
        remote = ["--server", server.url, "--api-key", server.api_key]
        assert run_cli("push", package, *remote).code == 0
        cam = _device(server, "north", "cam-1")
        samples = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(12)]
        predicted = [_capture(server, cam, "cam-1", f"c{i}", model, x) for i, x in enumerate(samples)]
        client = server.client()
        truth = [p if i % 4 else (p + 1) % 4 for i, p in enumerate(predicted)]  # every 4th answer was wrong
        for i, label in enumerate(truth[:8]):
            client.request("PUT", f"/api/v1/captures/cam-1/c{i}/label", body={"label": label})
        # Two more from a file with the CLI: a wrong row stops the whole file, then the fixed file applies.
        labels = tmp_path / "labels.csv"
        labels.write_text(f"capture_id,label\nc8,{truth[8]}\nc9,99\n")
        refused = run_cli("captures", "label", labels, *remote)
        assert refused.code == 1 and "row 3:" in refused.err and "99" in refused.err and "nothing was applied" in refused.err
        labels.write_text(f"capture_id,label\nc8,{truth[8]}\nc9,{truth[9]}\n")
        applied = run_cli("captures", "label", labels, *remote)
        assert applied.code == 0 and "labeled 2 capture(s)" in applied.out, applied.err

        # Two captures are unlabeled: a plain export leaves the labels out and says why.
        everything = tmp_path / "all.npz"
        result = run_cli("captures", "export", "--model", "detector", "-o", everything, *remote)
        assert result.code == 0, result.err
        assert "12 samples from 12 captures" in result.out and "without labels" in result.out
        assert "--labeled-only" in result.err and "fetched 12/12 captures" in result.err
        with np.load(everything) as data:
            assert "labels" not in data.files and data["features"].shape == (12, 8)
            np.testing.assert_array_equal(data["features"], np.concatenate(samples))  # oldest first
            assert list(data["capture_ids"]) == [f"c{i}" for i in range(12)]

        dataset = tmp_path / "labeled.npz"
        result = run_cli("captures", "export", "--model", "detector", "--labeled-only", "--since", "1h", "-o", dataset,
                         "--json", *remote)
        assert result.code == 0, result.err
        summary = json.loads(result.out)
        assert (summary["captures"], summary["samples"], summary["labels"]) == (10, 10, "labels")
        with np.load(dataset) as data:
            np.testing.assert_array_equal(data["labels"], truth[:10])
            assert set(data["capture_devices"]) == {"cam-1"}
        assert describe(dataset)["versions"] == {"1.0.0": 10}  # type: ignore[index]

        # A large export: shards written as they fill, read back like one file.
        folder = tmp_path / "sharded"
        result = run_cli("captures", "export", "--model", "detector", "--labeled-only", "--shard-samples", "4",
                         "-o", folder, *remote)
        assert result.code == 0, result.err
        assert "in 3 shards" in result.out and sorted(p.name for p in folder.iterdir()) == [
            "dataset.json", "part-00000.npz", "part-00001.npz", "part-00002.npz"]
        from edgemill.compiler.calibration import load_validation
        from edgemill.tensors import TensorSpec

        feeds, labels = load_validation(folder, [TensorSpec("features", "float32", ("N", 8))])
        np.testing.assert_array_equal(labels, truth[:10])
        np.testing.assert_array_equal(np.concatenate([f["features"] for f in feeds]), np.concatenate(samples[:10]))
        assert lineage_entries("calibration", folder) == ["calibration:captures:detector@1.0.0:10"]
        not_empty = run_cli("captures", "export", "--model", "detector", "-o", folder, *remote)
        assert not_empty.code != 0 and "not empty" in not_empty.err

        # The next version, checked on those captures with the CLI's defaults.
        v2 = tmp_path / "detector-2.0.0.emp"
        result = run_cli("compile", tmp_path / "detector-1.0.0.onnx", "--validation", dataset, "--name", "detector",
                         "--version", "2.0.0", "-o", v2)
        assert result.code == 0, result.err
        assert run_cli("sign", v2, "--key", keypair[0]).code == 0
        manifest = json.loads(run_cli("inspect", v2, "--json").out)
        assert "validation:captures:detector@1.0.0:10" in manifest["manifest"]["lineage"]
        assert run_cli("push", v2, *remote).code == 0
        lineage = client.request("GET", "/api/v1/models/detector/versions/2.0.0/lineage")
        assert "validation:captures:detector@1.0.0:10" in lineage["compile"]["parents"]

        # Nothing selected: one line, no file.
        empty = tmp_path / "none.npz"
        result = run_cli("captures", "export", "--model", "detector", "--version", "9.9.9", "-o", empty, *remote)
        assert result.code != 0 and not empty.exists()
        assert "no captures match" in result.err and "9.9.9" in result.err and "Traceback" not in result.err


def test_since_reads_durations_dates_and_unix_seconds() -> None:
    now = 1_800_000_000.0
    assert parse_since("7d", now) == now - 7 * 86400 and parse_since("30m", now) == now - 1800
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2026-12-01", now) == 1796083200.0
    assert parse_since(None, now) is None
    from edgemill.errors import UsageError

    with pytest.raises(UsageError, match="bad --since"):
        parse_since("last week", now)


def test_data_that_is_not_an_export_adds_no_lineage(tmp_path: Path) -> None:
    plain = tmp_path / "plain.npz"
    np.savez(plain, features=np.zeros((2, 8), np.float32))
    assert describe(plain) is None and lineage_entries("validation", plain) == []
    assert lineage_entries("validation", None) == [] and lineage_entries("validation", tmp_path / "missing.npz") == []
