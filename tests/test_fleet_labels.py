"""Labels on captures and the live accuracy they give (issue 16): set over the API one at a time or in
bulk (all or nothing), kept with who set them and what they replaced; accuracy per version, device,
fleet and over time; the ``accuracy`` alert, which judges only from a minimum labeled count."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from edgemill.captures.answers import Answer, answer_of, check_label  # noqa: E402
from edgemill.captures.record import CaptureRecord  # noqa: E402
from edgemill.errors import UserError  # noqa: E402
from edgemill.fleet.reconciler import tick  # noqa: E402

from .test_fleet_api import register, server  # noqa: E402,F401  (the fixture)

SCORES = np.eye(3, dtype=np.float32)  # row k: a classifier sure of class k


def _upload(client: TestClient, headers: dict[str, str], device: str, capture_id: str, outputs: dict[str, np.ndarray],
            version: str = "1.0.0", model: str = "detector", ago_s: float = 60.0) -> None:
    record = CaptureRecord(capture_id=capture_id, model=model, model_version=version, device=device,
                           created_unix=client.clock.now - ago_s, inputs={"x": np.ones((1, 4), np.float32)},  # type: ignore[attr-defined]
                           outputs=outputs, auxiliary={}, sampled=True)
    reply = client.put(f"/api/v1/agent/captures/{capture_id}", params={"model": model}, content=record.encode(),
                       headers=headers)
    assert reply.status_code == 201, reply.text


def _label(client: TestClient, device: str, capture_id: str, label: object) -> dict:  # type: ignore[type-arg]
    reply = client.put(f"/api/v1/captures/{device}/{capture_id}/label", json={"label": label})
    assert reply.status_code == 200, reply.text
    return reply.json()


def _classifier_fleet(server: TestClient) -> None:  # noqa: F811
    """cam-1 (fleet north) answers 0, 1, 2, 0 with v1; cam-2 (fleet south) answers 1, 1 with v2 and one
    batch of two samples (2, 0)."""
    a, b = register(server, "north", "cam-1"), register(server, "south", "cam-2")
    for i, k in enumerate([0, 1, 2, 0]):
        _upload(server, a, "cam-1", f"a{i}", {"scores": SCORES[k:k + 1]}, ago_s=4000 - i * 1000)
    for i, k in enumerate([1, 1]):
        _upload(server, b, "cam-2", f"b{i}", {"scores": SCORES[k:k + 1]}, version="2.0.0", ago_s=500)
    _upload(server, b, "cam-2", "b-batch", {"scores": SCORES[[2, 0]]}, version="2.0.0", ago_s=100)


def test_labels_move_live_accuracy_to_the_value_computed_by_hand(server: TestClient) -> None:  # noqa: F811
    _classifier_fleet(server)
    listed = {c["capture_id"]: c for c in server.get("/api/v1/captures", params={"model": "detector"}).json()}
    assert listed["a2"]["prediction"] == [2] and listed["a2"]["task"] == "classification" and listed["a2"]["label"] is None
    assert listed["b-batch"]["prediction"] == [2, 0] and listed["b0"]["version"] == "2.0.0"
    before = server.get("/api/v1/accuracy", params={"model": "detector"}).json()
    assert (before["task"], before["samples"], before["top1"]) == (None, 0, None)

    # Right: a0 (0), a1 (1); wrong: a2 (said 2, was 1), a3 (said 0, was 2); b0 right; batch: right, wrong.
    for device, capture_id, label in [("cam-1", "a0", 0), ("cam-1", "a1", 1), ("cam-1", "a2", 1), ("cam-1", "a3", 2),
                                      ("cam-2", "b0", 1), ("cam-2", "b-batch", [2, 1])]:
        _label(server, device, capture_id, label)
    report = server.get("/api/v1/accuracy", params={"model": "detector", "bucket_s": 3600}).json()
    assert report["task"] == "classification" and report["samples"] == 7 and report["captures"] == 6
    assert report["top1"] == pytest.approx(4 / 7)
    assert {g["name"]: (g["samples"], g["value"]) for g in report["by_device"]} == {"cam-1": (4, 0.5), "cam-2": (3, pytest.approx(2 / 3))}
    assert {g["name"]: g["samples"] for g in report["by_fleet"]} == {"north": 4, "south": 3}
    assert {g["name"]: g["value"] for g in report["by_version"]} == {"1.0.0": 0.5, "2.0.0": pytest.approx(2 / 3)}
    assert sum(p["samples"] for p in report["series"]) == 7 and len(report["series"]) >= 2
    assert server.get("/api/v1/accuracy", params={"model": "detector", "fleet": "south"}).json()["samples"] == 3
    v1 = server.get("/api/v1/accuracy", params={"model": "detector", "version": "1.0.0", "device": "cam-1"}).json()
    assert (v1["samples"], v1["top1"]) == (4, 0.5)

    # A correction keeps who and what it replaced; the figure follows.
    changed = _label(server, "cam-1", "a2", 2)
    assert (changed["label"], changed["previous_label"], changed["labeled_by"]) == ([2], [1], "admin")
    assert server.get("/api/v1/accuracy", params={"model": "detector"}).json()["top1"] == pytest.approx(5 / 7)
    cleared = server.delete("/api/v1/captures/cam-1/a2/label").json()
    assert cleared["label"] is None and cleared["previous_label"] == [2]
    assert server.get("/api/v1/accuracy", params={"model": "detector"}).json()["samples"] == 6
    unlabeled = server.get("/api/v1/captures", params={"model": "detector", "labeled": "false"}).json()
    assert [c["capture_id"] for c in unlabeled] == ["b1", "a2"]  # newest first
    assert [c["capture_id"] for c in server.get("/api/v1/captures", params={"fleet": "south", "limit": 2, "offset": 1}).json()] \
        == ["b1", "b0"]


def test_a_regressor_gets_mae_and_rmse(server: TestClient) -> None:  # noqa: F811
    a = register(server, "north", "scale-1")
    for i, (said, truth) in enumerate([(10.0, 12.0), (5.0, 5.0), (7.5, 3.5)]):
        _upload(server, a, "scale-1", f"r{i}", {"kg": np.array([[said]], np.float32)}, model="scale")
        _label(server, "scale-1", f"r{i}", truth)
    report = server.get("/api/v1/accuracy", params={"model": "scale"}).json()
    assert report["task"] == "regression" and report["top1"] is None and report["samples"] == 3
    assert report["mae"] == pytest.approx((2 + 0 + 4) / 3) and report["rmse"] == pytest.approx(np.sqrt((4 + 0 + 16) / 3))


def test_a_label_the_capture_cannot_take_is_refused_naming_the_value(server: TestClient) -> None:  # noqa: F811
    _classifier_fleet(server)
    headers = register(server, "north", "scale-1")
    _upload(server, headers, "scale-1", "r0", {"kg": np.array([[1.5]], np.float32)}, model="scale")
    _upload(server, headers, "scale-1", "img", {"mask": np.zeros((1, 1, 8, 8), np.float32)}, model="segmenter")
    missing = server.put("/api/v1/captures/cam-1/nope/label", json={"label": 1})
    assert missing.status_code == 404 and "nope" in missing.json()["message"]
    for device, capture_id, label, named in [("cam-1", "a0", 3, "3"), ("cam-1", "a0", -1, "-1"), ("cam-1", "a0", 1.5, "1.5"),
                                              ("cam-1", "a0", [0, 1], "[0, 1]"), ("cam-2", "b-batch", 1, "1"),
                                              ("scale-1", "img", 1, "1")]:
        reply = server.put(f"/api/v1/captures/{device}/{capture_id}/label", json={"label": label})
        assert reply.status_code == 422, (capture_id, label, reply.text)
        body = reply.json()
        assert named in body["message"] and body["fix"], body
    wrong_kind = server.put("/api/v1/captures/scale-1/r0/label", json={"label": "heavy"})
    assert wrong_kind.status_code == 422 and "heavy" in wrong_kind.text
    assert server.get("/api/v1/captures", params={"labeled": "true"}).json() == []


def test_a_bulk_label_file_applies_whole_or_not_at_all(server: TestClient) -> None:  # noqa: F811
    _classifier_fleet(server)
    bad = "device,capture_id,label\ncam-1,a0,0\ncam-1,a1,7\ncam-1,ghost,1\ncam-2,b-batch,2 0\ncam-1,a0,0\n,a3,x\n"
    reply = server.post("/api/v1/captures/labels", content=bad, headers={"Content-Type": "text/csv"})
    assert reply.status_code == 422
    report = reply.json()
    assert report["applied"] is False and report["errors"] == 4
    by_row = {r["row"]: r for r in report["rows"]}
    assert by_row[2]["status"] == "labeled" and by_row[5]["status"] == "labeled"
    assert "7" in by_row[3]["error"] and "ghost" in by_row[4]["error"]
    assert "twice" in by_row[6]["error"] and "'x'" in by_row[7]["error"]
    assert server.get("/api/v1/captures", params={"labeled": "true"}).json() == []  # nothing half-applied

    good = "capture_id,label\na0,0\na1,1\nb-batch,2 1\n"
    reply = server.post("/api/v1/captures/labels", content=good, headers={"Content-Type": "text/csv"})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["applied"], reply.json()["labeled"]) == (True, 3)
    jsonl = '{"device": "cam-1", "capture_id": "a0", "label": 0}\n{"capture_id": "a3", "label": 2}\n'
    reply = server.post("/api/v1/captures/labels", content=jsonl, headers={"Content-Type": "application/x-ndjson"})
    assert [r["status"] for r in reply.json()["rows"]] == ["unchanged", "labeled"]
    report = server.get("/api/v1/accuracy", params={"model": "detector"}).json()
    assert (report["samples"], report["top1"]) == (5, pytest.approx(3 / 5))
    header_less = server.post("/api/v1/captures/labels", content="a0,1\n", headers={"Content-Type": "text/csv"})
    assert header_less.status_code == 400 and "capture_id" in header_less.json()["fix"]  # the file, not a row
    # Carriage returns alone end lines too (the API fuzz once got a 500 from the csv module on one)
    old_mac = server.post("/api/v1/captures/labels", content="capture_id,label\ra1,1\r", headers={"Content-Type": "text/csv"})
    assert old_mac.status_code == 200 and old_mac.json()["rows"][0]["status"] in ("labeled", "unchanged"), old_mac.text
    for odd in ('capture_id,label\n"a1\r\n,1', 'capture_id,label\na\x001,1\n', "capture_id,label\n\"a1\"x,1\n"):
        reply = server.post("/api/v1/captures/labels", content=odd.encode(), headers={"Content-Type": "text/csv"})
        assert reply.status_code < 500, (odd, reply.text)
    # PostgreSQL cannot store a NUL character: refused alike on every database, naming the value
    nul = server.post("/api/v1/captures/labels", content=b"capture_id,label\na\x001,1\n", headers={"Content-Type": "text/csv"})
    assert nul.status_code == 400 and "NUL" in nul.json()["message"] and "a\\x001" in nul.json()["value"], nul.text


def test_the_accuracy_alert_waits_for_its_minimum_count_then_fires_and_resolves(server: TestClient) -> None:  # noqa: F811
    _classifier_fleet(server)
    rule = {"name": "detector-accuracy", "metric": "accuracy", "op": "<", "threshold": 0.75, "window_s": 86400,
            "model": "detector", "min_samples": 4}
    assert server.post("/api/v1/alert-rules", json=rule).status_code == 201
    misplaced = server.post("/api/v1/alert-rules", json={**rule, "name": "x", "metric": "error_rate", "threshold": 0.1})
    assert misplaced.status_code == 400 and misplaced.json()["field"] == "min_samples"  # as every rule that cannot work
    for capture_id, label in [("a0", 0), ("a1", 0), ("a2", 1)]:  # 1 of 3 right: low, but too few to judge
        _label(server, "cam-1", capture_id, label)
    tick(server.state)  # type: ignore[attr-defined]
    assert [a for a in server.get("/api/v1/alerts").json() if a["rule"] == "detector-accuracy"] == []
    _label(server, "cam-1", "a3", 0)  # the fourth: 2 of 4 right, 0.5 < 0.75
    tick(server.state)  # type: ignore[attr-defined]
    alerts = [a for a in server.get("/api/v1/alerts").json() if a["rule"] == "detector-accuracy"]
    assert [(a["state"], a["value"]) for a in alerts] == [("firing", 0.5)]
    assert "4 labeled samples" in alerts[0]["message"] and "accuracy of model 'detector'" in alerts[0]["message"]
    _label(server, "cam-1", "a1", 1)
    _label(server, "cam-1", "a2", 2)  # 4 of 4 right
    tick(server.state)  # type: ignore[attr-defined]
    alerts = [a for a in server.get("/api/v1/alerts").json() if a["rule"] == "detector-accuracy"]
    assert [(a["state"], a["value"]) for a in alerts] == [("resolved", 1.0)]


# --- the answer a label judges (pure) -------------------------------------------------------------

def test_answers_are_read_from_the_first_output_by_its_form() -> None:
    assert answer_of({"p": np.array([[0.1, 0.7, 0.2]], np.float32)}) == Answer("classification", (1,), 3)
    assert answer_of({"label": np.array([4, 2], np.int64)}) == Answer("classification", (4, 2))
    assert answer_of({"v": np.array([[2.5]], np.float32)}) == Answer("regression", (2.5,))
    assert answer_of({"boxes": np.zeros((1, 10, 4), np.float32)}) is None
    assert answer_of({}) is None and answer_of({"v": np.zeros((0, 3), np.float32)}) is None


def test_labels_are_checked_against_the_answer() -> None:
    scores = Answer("classification", (1, 0), 3)
    assert check_label(scores, [2, 0]) == [2, 0]
    assert check_label(Answer("classification", (1,), 3), 2.0) == [2]
    assert check_label(Answer("regression", (1.0,)), 3) == [3.0]
    for bad in (True, "1", [1], [1, 5], None, float("nan")):
        with pytest.raises(UserError):
            check_label(scores, bad)
    with pytest.raises(UserError, match="no answer"):
        check_label(None, 1)


# --- a capture for people -------------------------------------------------------------------------

def test_a_capture_view_draws_images_tables_waveforms_and_the_answer(server: TestClient) -> None:  # noqa: F811
    import base64

    headers = register(server, "north", "cam-9")
    rng = np.random.default_rng(8)
    frame = rng.random((1, 3, 300, 200)).astype(np.float32)  # NCHW float: scaled to 0-255, at most 256 a side
    record = CaptureRecord(capture_id="v1", model="detector", model_version="1.0.0", device="cam-9",
                           created_unix=server.clock.now, auxiliary={"note": b"dock 4", "raw": b"\xff\x00"},  # type: ignore[attr-defined]
                           inputs={"image": frame, "audio": rng.standard_normal((1, 16000)).astype(np.float32),
                                   "row": np.arange(12, dtype=np.float32)[None], "tokens": np.zeros((1, 2, 3, 4, 5), np.int8),
                                   "nan": np.full((1, 3), np.nan, np.float32)},
                           outputs={"logits": np.array([[0.0, 3.0, 1.0]], np.float32)}, sampled=False)
    assert server.put("/api/v1/agent/captures/v1", params={"model": "detector"}, content=record.encode(),
                      headers=headers).status_code == 201
    view = server.get("/api/v1/captures/cam-9/v1/view").json()
    inputs = {t["name"]: t for t in view["inputs"]}
    image = inputs["image"]["image"]
    assert inputs["image"]["kind"] == "image" and (image["height"], image["width"], image["channels"]) == (150, 100, 3)
    assert len(base64.b64decode(image["data_b64"])) == 150 * 100 * 3 and image["scaled_from"][1] <= 1.0
    assert inputs["audio"]["kind"] == "waveform" and len(inputs["audio"]["waveform"]["min"]) == 1000
    assert inputs["row"]["kind"] == "table" and inputs["row"]["values"][:3] == [0.0, 1.0, 2.0]
    assert inputs["tokens"]["kind"] == "table" and inputs["tokens"]["stats"]["max"] == 0
    assert inputs["nan"]["stats"] == {"min": None, "max": None, "mean": None, "std": None}
    assert view["answer"]["task"] == "classification" and view["answer"]["top"][0]["class"] == 1
    assert view["answer"]["top"][0]["score"] == pytest.approx(np.exp(3) / (1 + np.exp(3) + np.exp(1)))
    assert {a["name"]: a.get("text") for a in view["auxiliary"]} == {"note": "dock 4", "raw": None}
    assert view["capture"]["capture_id"] == "v1" and view["capture"]["prediction"] == [1]
    assert server.get("/api/v1/captures/cam-9/nope/view").status_code == 404
