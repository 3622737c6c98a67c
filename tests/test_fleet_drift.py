"""Drift on the control plane, in process (FastAPI TestClient, SQLite): heartbeats carry cumulative
histogram counts, the server folds them into buckets, scores them against the package baseline (or a
pinned window), shows them per device, fleet and population, refuses counts it cannot merge, and fires
the input_drift / prediction_drift alerts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select, update  # noqa: E402

import edgemill  # noqa: E402
from edgemill.fleet.app import create_app  # noqa: E402
from edgemill.fleet.config import ServerConfig  # noqa: E402
from edgemill.fleet.db.tables import DriftSample, ModelVersion  # noqa: E402
from edgemill.fleet.reconciler import tick  # noqa: E402
from edgemill.monitoring.features import Baseline, bins_digest  # noqa: E402

from ._fleet import build_model_package  # noqa: E402
from .test_fleet_api import FakeClock, register, upload  # noqa: E402

BUCKET_S = 60.0
MIN_SAMPLES = 100  # the synthetic baseline holds 64 samples: count(times=2) closes a bucket, times=1 does not


@pytest.fixture(scope="module")
def package(keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_package(tmp_path_factory.mktemp("drift-packages"), "detector", "1.0.0", 16, keypair[0])


@pytest.fixture()
def server(tmp_path: Path, keypair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    config = ServerConfig(db=f"sqlite:///{tmp_path / 'db.sqlite'}", store=f"file://{tmp_path / 'store'}",
                          trusted_keys=(keypair[1],), api_key_file=tmp_path / "operator.key",
                          drift_bucket_s=BUCKET_S, drift_min_samples=MIN_SAMPLES)
    app = create_app(config, clock=clock, background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {(tmp_path / 'operator.key').read_text().strip()}"
        client.clock = clock  # type: ignore[attr-defined]
        client.state = app.state.edgemill  # type: ignore[attr-defined]
        yield client
    app.state.edgemill.db.engine.dispose()


class Camera:
    """A scripted agent whose model counts drift: cumulative counts per feature under one epoch."""

    def __init__(self, client: TestClient, name: str, baseline: Baseline, package_id: str, fleet: str = "cams") -> None:
        self.client, self.name, self.baseline, self.package_id = client, name, baseline, package_id
        self.headers = register(client, fleet, name)
        self.seq = 0
        self.epoch = "e1"
        self.totals = [[0] * f.bins for f in baseline.features]
        self.bins = bins_digest(baseline.features)

    def count(self, shifted: bool = False, times: int = 2, side: str = "input") -> None:
        """Add ``times`` x the baseline's counts; shifted features get all of it in their top bin."""
        for i, f in enumerate(self.baseline.features):
            n = sum(f.baseline) * times
            if shifted and f.side == side:
                self.totals[i][-1] += n
            else:
                self.totals[i] = [t + c * times for t, c in zip(self.totals[i], f.baseline)]

    def beat(self, **override: object):  # type: ignore[no-untyped-def]
        self.seq += 1
        drift = {"model": "detector", "package_id": self.package_id, "epoch": self.epoch, "bins": self.bins,
                 "counts": self.totals}
        drift.update(override)
        return self.client.post("/api/v1/agent/heartbeat", headers=self.headers, json={
            "device": self.name, "seq": self.seq, "drift": [drift],
            "models": [{"name": "detector", "version": "1.0.0", "package_id": self.package_id}]})


def setup_fleet(server: TestClient, package: Path, names: tuple[str, ...] = ("cam-1", "cam-2")) -> list[Camera]:
    r = upload(server, package)
    assert r.status_code == 201, r.text
    baseline = edgemill.runtime.load(package).baseline
    assert baseline is not None and baseline.features
    return [Camera(server, n, baseline, r.json()["package_id"]) for n in names]


def drift(server: TestClient, **params: object) -> dict:  # type: ignore[type-arg]
    r = server.get("/api/v1/drift", params={"model": "detector", "window_s": 600, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_shifted_device_drifts_and_the_others_do_not(server: TestClient, package: Path) -> None:
    quiet, shifted = setup_fleet(server, package)
    for _ in range(3):
        quiet.count()
        shifted.count(shifted=True)
        assert quiet.beat().status_code == 200
        assert shifted.beat().status_code == 200
        server.clock.advance(BUCKET_S)  # type: ignore[attr-defined]
    one = drift(server, device="cam-2")
    assert one["status"] == "ok" and one["reference"]["kind"] == "baseline"
    assert one["input_psi"] > 1.0, one["input_psi"]
    assert one["input_feature"].startswith("input:")
    assert drift(server, device="cam-1")["input_psi"] < 0.01
    population = drift(server)
    assert [d["device"] for d in population["devices"]] == ["cam-2", "cam-1"]  # worst first
    # The merged histogram is exactly the sum of the devices' counts (closed buckets + open ones).
    assert population["samples"] == one["samples"] + drift(server, device="cam-1")["samples"]
    feature = next(f for f in population["features"] if f["key"] == one["input_feature"])
    assert len(feature["labels"]) == len(feature["reference"]) == len(feature["window"])
    assert population["series"] and population["series"][-1]["input_psi"] > 1.0
    assert population["series"][-1]["median_input_psi"] is not None
    assert population["bucket_s"] == BUCKET_S
    continuous = next(f for f in population["features"] if f["statistic"] == "column")
    assert len(continuous["edges"]) + 1 == len(continuous["labels"]) and continuous["categories"] == []
    classes = next(f for f in population["features"] if f["statistic"] == "predicted_class")
    assert len(classes["categories"]) + 1 == len(classes["labels"]) and classes["edges"] == []


def test_counts_are_cumulative_so_a_lost_heartbeat_loses_nothing_and_a_new_epoch_restarts(
        server: TestClient, package: Path) -> None:
    (cam,) = setup_fleet(server, package, ("cam-1",))
    per_call = sum(cam.baseline.features[0].baseline) * 2
    cam.count()
    cam.beat()
    cam.count()  # this heartbeat is "lost": its counts arrive with the next one
    cam.count()
    cam.beat()
    assert drift(server)["samples"] == 3 * per_call
    cam.epoch, cam.totals = "e2", [[0] * f.bins for f in cam.baseline.features]  # the agent restarted
    cam.count()
    cam.beat()
    assert drift(server)["samples"] == 4 * per_call


def test_buckets_close_by_span_and_samples_and_store_their_scores(server: TestClient, package: Path) -> None:
    (cam,) = setup_fleet(server, package, ("cam-1",))
    cam.count(times=1)
    cam.beat()
    server.clock.advance(BUCKET_S * 2)  # type: ignore[attr-defined]
    cam.beat()  # long enough, but too few samples: the bucket stays open
    with server.state.db.session() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(DriftSample)).all() == []
    cam.count(times=2, shifted=True, side="output")
    cam.beat()
    with server.state.db.session() as session:  # type: ignore[attr-defined]
        (row,) = session.scalars(select(DriftSample)).all()
        assert row.samples >= MIN_SAMPLES and row.span_s == pytest.approx(BUCKET_S * 2)
        assert row.prediction_psi > 1.0 and row.input_psi < 0.01
        assert set(row.scores) == {f.key for f in cam.baseline.features}


def test_counts_whose_bins_do_not_match_are_refused_counted_and_shown(server: TestClient, package: Path) -> None:
    (cam,) = setup_fleet(server, package, ("cam-1",))
    cam.count()
    r = cam.beat(bins="0123456789abcdef")
    assert r.status_code == 200, r.text  # the rest of the heartbeat applies
    r = cam.beat(counts=[[1, 2]] * len(cam.totals))
    assert r.status_code == 200
    device = server.get("/api/v1/devices/cam-1").json()
    assert any("drift histograms refused (2 so far)" in p and "shape" in p for p in device["problems"]), device["problems"]
    report = drift(server)
    assert report["refused"] == 2 and report["samples"] == 0 and report["status"] == "no_data"


@pytest.mark.parametrize(("counts", "field"), [
    ([[-1, 2]], "drift.0.counts.0.0"),
    ([[1] * 2000], "drift.0.counts.0"),
    ([], "drift.0.counts"),
])
def test_malformed_or_oversized_counts_are_a_422_naming_the_field(
        server: TestClient, package: Path, counts: list, field: str) -> None:  # type: ignore[type-arg]
    (cam,) = setup_fleet(server, package, ("cam-1",))
    r = cam.beat(counts=counts)
    assert r.status_code == 422, r.text
    assert field in r.text, r.text
    assert cam.beat().status_code == 200  # the next well-formed heartbeat is taken (seq moved on)


def test_a_package_without_baseline_shows_no_baseline_never_zero(server: TestClient, package: Path) -> None:
    (cam,) = setup_fleet(server, package, ("cam-1",))
    with server.state.db.session() as session:  # type: ignore[attr-defined]
        session.execute(update(ModelVersion).values(baseline=None))  # a package compiled before drift monitoring
    server.state.heartbeats.references = type(server.state.heartbeats.references)()  # type: ignore[attr-defined]
    cam.count()
    assert cam.beat().status_code == 200  # accepted and stored
    report = drift(server)
    assert report["status"] == "no_baseline" and "no baseline" in report["message"]
    assert report["input_psi"] is None and report["features"] == []


def test_a_pinned_window_becomes_the_reference(server: TestClient, package: Path) -> None:
    (cam,) = setup_fleet(server, package, ("cam-1",))
    start = server.clock.now  # type: ignore[attr-defined]
    for _ in range(2):
        cam.count(shifted=True)
        cam.beat()
        server.clock.advance(BUCKET_S)  # type: ignore[attr-defined]
    cam.beat()
    assert drift(server)["input_psi"] > 1.0
    r = server.put("/api/v1/models/detector/versions/1.0.0/drift-reference",
                   json={"start": start, "end": server.clock.now})  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "pinned" and r.json()["samples"] > 0
    report = drift(server)
    assert report["reference"]["kind"] == "pinned" and report["input_psi"] < 0.01
    assert server.delete("/api/v1/models/detector/versions/1.0.0/drift-reference").status_code == 204
    assert drift(server)["reference"]["kind"] == "baseline"
    r = server.put("/api/v1/models/detector/versions/1.0.0/drift-reference", json={"start": 1.0, "end": 2.0})
    assert r.status_code == 400 and "no drift counts" in r.text
    cam.count(shifted=True)
    cam.beat()  # an open bucket: the last hour by server time includes it
    r = server.put("/api/v1/models/detector/versions/1.0.0/drift-reference", json={"last_s": 3600})
    assert r.status_code == 200 and r.json()["samples"] == drift(server, window_s=3600)["samples"], r.text
    r = server.put("/api/v1/models/detector/versions/1.0.0/drift-reference", json={"last_s": 60, "start": 1.0})
    assert r.status_code == 400 and "either last_s or start" in r.text


def test_input_drift_fires_for_the_shifted_device_and_resolves(server: TestClient, package: Path) -> None:
    quiet, shifted = setup_fleet(server, package)
    rule = {"name": "inputs-moved", "metric": "input_drift", "threshold": 0.25, "window_s": BUCKET_S * 3,
            "model": "detector"}
    assert server.post("/api/v1/alert-rules", json=rule).status_code == 201
    assert server.post("/api/v1/alert-rules", json=dict(rule, name="quiet-cam", device="cam-1")).status_code == 201
    state = server.state  # type: ignore[attr-defined]

    def round_(shift: bool) -> None:
        quiet.count()
        shifted.count(shifted=shift)
        quiet.beat()
        shifted.beat()
        server.clock.advance(BUCKET_S)  # type: ignore[attr-defined]
        tick(state)

    for _ in range(2):
        round_(shift=False)
    round_(shift=True)
    round_(shift=True)
    alerts = {a["rule"]: a for a in server.get("/api/v1/alerts").json()}
    assert alerts["inputs-moved"]["state"] == "firing"
    assert "device 'cam-2'" in alerts["inputs-moved"]["message"], alerts["inputs-moved"]["message"]
    assert "quiet-cam" not in alerts
    round_(shift=False)
    round_(shift=False)
    alerts = {a["rule"]: a for a in server.get("/api/v1/alerts").json()}
    assert alerts["inputs-moved"]["state"] == "resolved"


def test_prediction_drift_and_feature_rules_are_validated(server: TestClient, package: Path) -> None:
    bad = server.post("/api/v1/alert-rules", json={"name": "x", "metric": "error_rate", "threshold": 0.1,
                                                   "feature": "input:x:column:0"})
    assert bad.status_code == 400 and "feature" in bad.text
    bad = server.post("/api/v1/alert-rules", json={"name": "x", "metric": "prediction_drift", "threshold": 0.1,
                                                   "feature": "input:x:column:0"})
    assert bad.status_code == 400 and "output" in bad.text
    (cam,) = setup_fleet(server, package, ("cam-1",))
    output = next(f.key for f in cam.baseline.features if f.side == "output")
    assert server.post("/api/v1/alert-rules", json={"name": "answers", "metric": "prediction_drift", "threshold": 0.25,
                                                    "feature": output, "window_s": 600}).status_code == 201
    cam.count(shifted=True, side="output")
    cam.beat()
    server.clock.advance(BUCKET_S)  # type: ignore[attr-defined]
    cam.count(shifted=True, side="output")
    cam.beat()
    tick(server.state)  # type: ignore[attr-defined]
    (alert,) = server.get("/api/v1/alerts").json()
    assert alert["state"] == "firing" and output in alert["message"]
    assert "accuracy may be falling" in alert["message"]


def test_overview_lists_drifting_models_and_devices(server: TestClient, package: Path) -> None:
    _, shifted = setup_fleet(server, package)
    for _ in range(2):
        shifted.count(shifted=True)
        shifted.beat()
        server.clock.advance(BUCKET_S)  # type: ignore[attr-defined]
    drifting = server.get("/api/v1/overview").json()["drifting"]
    assert any(d["device"] == "cam-2" and d["input_psi"] > 0.25 for d in drifting), drifting
    (summary,) = [d for d in drifting if d["device"] is None]
    assert summary["model"] == "detector" and summary["devices"] == 1 and summary["version"] == "1.0.0"


def test_the_series_ends_with_the_open_buckets_scored_now(server: TestClient, package: Path) -> None:
    (cam,) = setup_fleet(server, package, ("cam-1",))
    cam.count(shifted=True)
    cam.beat()  # one open bucket, nothing stored yet
    series = drift(server)["series"]
    assert len(series) == 1 and series[0]["t"] == server.clock.now and series[0]["input_psi"] > 1.0  # type: ignore[attr-defined]


def test_old_buckets_fold_per_span_exactly_and_expire(server: TestClient, package: Path) -> None:
    from edgemill.fleet.drift_retention import fold_drift

    quiet, shifted = setup_fleet(server, package)
    for _ in range(4):
        quiet.count()
        shifted.count(shifted=True)
        quiet.beat()
        shifted.beat()
        server.clock.advance(BUCKET_S)  # type: ignore[attr-defined]
    state = server.state  # type: ignore[attr-defined]
    with state.db.session() as session:
        before = {d: sum(r.samples for r in session.scalars(select(DriftSample).where(DriftSample.device_id == d)))
                  for d in (1, 2)}
    later = server.clock.now + 8 * 86400  # type: ignore[attr-defined]
    config = state.config.model_copy(update={"metrics_rollup_s": 3600.0})
    folded, written = fold_drift(state.db, later, config)
    assert folded == 6 and written == 2, (folded, written)
    assert fold_drift(state.db, later, config) == (0, 0)  # nothing twice
    with state.db.session() as session:
        rows = session.scalars(select(DriftSample)).all()
        assert {r.device_id: 0 for r in rows}  # every device keeps its history
        for d in (1, 2):  # counts merge exactly: nothing lost or doubled
            assert sum(r.samples for r in rows if r.device_id == d) == before[d]
        assert max(r.input_psi for r in rows) > 1.0  # rescored: the shifted device still reads as drifted
    fold_drift(state.db, later + 100 * 86400, config)
    with state.db.session() as session:
        assert session.scalars(select(DriftSample)).all() == []


def test_the_vectorised_psi_of_a_bucket_equals_the_per_feature_one(package: Path) -> None:
    import numpy as np

    from edgemill.fleet.drift_refs import Reference
    from edgemill.monitoring.drift import psi

    baseline = edgemill.runtime.load(package).baseline
    assert baseline is not None
    features = list(baseline.features)
    features[1] = replace(features[1], baseline=(0,) * features[1].bins)  # a feature the baseline never saw
    reference = Reference("p", "baseline", "b", tuple(features), tuple(f.baseline for f in features), "x", False, 1)
    rng = np.random.default_rng(0)
    counts = [rng.integers(0, 50, f.bins).tolist() for f in features]
    counts[2] = [0] * features[2].bins  # nothing counted
    vectorised = reference.psis(counts)
    for f, c in zip(features, counts):
        expected = psi(f.baseline, c)
        assert vectorised[f.key] == (None if expected is None else pytest.approx(expected, rel=1e-9)), f.key
