"""The dashboard in a real browser against a real server: every view shows what the API holds, charts
draw, drift shows as PSI over time and as histograms against the reference, the operator actions work,
errors and a wrong key are shown, and the console stays clean.

Captures: the list with thumbnails and filters, one capture's image, table and waveform, labeling it
from the page (and a label the server refuses), and the live accuracy the labels give on the model page.

Skips where playwright (the Python package) or a Chromium binary is missing. Full-page screenshots of
the overview, a device page and the other views, and of the drift sections, go to
$EDGEMILL_SCREENSHOT_DIR (or the test's tmp_path).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("no Chromium binary (/usr/bin/chromium or `chromium` on PATH)", allow_module_level=True)

import edgemill  # noqa: E402  (after the skips: nothing below is needed when they apply)
from edgemill.captures.dataset import write_dataset  # noqa: E402
from edgemill.captures.record import CaptureRecord  # noqa: E402
from edgemill.monitoring.drift import psi  # noqa: E402
from edgemill.monitoring.features import Baseline, bins_digest  # noqa: E402
from edgemill.package.store import sign_package  # noqa: E402

FLEET, LAB = "factory-a", "lab"
CAMERAS = ["cam-01", "cam-02", "cam-03", "cam-04"]
SICK = "cam-03"  # its classifier fails 40 % of requests: degraded device, problem model, firing alert
DRIFTING = "cam-02"  # its inputs and predictions moved to the outer bins of the baseline: high PSI
BENCH = "bench-01"  # registered, silent until the test sends it one heartbeat: charts with a single sample
HISTORY_MIN = 50
DRIFT_BUCKET_S = 600  # the backfilled drift history: one closed bucket per device and model every ten minutes
DRIFT_HISTORY_S = 3 * 3600
DRIFT_STARTED_S = 3600  # DRIFTING's inputs began to move this long ago, and had moved fully 20 minutes later


@dataclass
class Server:
    url: str
    key: str
    db_url: str

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             data: bytes | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token or self.key}"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None
        return json.loads(raw) if raw else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory, keypair: tuple[Path, Path]) -> Iterator[Server]:
    """`edgemill server` in a subprocess on 127.0.0.1 with a fresh SQLite database and store; the
    operator key is the one the server writes into its --api-key-file on first start."""
    work = tmp_path_factory.mktemp("dashboard-server")
    port = _free_port()
    key_file = work / "operator.key"
    db_url = f"sqlite:///{work / 'edgemill.db'}"
    cmd = [sys.executable, "-m", "edgemill", "server", "--db", db_url, "--store", f"file://{work / 'store'}",
           "--listen", f"127.0.0.1:{port}", "--api-key-file", str(key_file), "--trusted-key", str(keypair[1]),
           "--tick-s", "0.5", "--log-format", "text"]
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200 and key_file.exists():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{(work / 'server.log').read_text()}")
            time.sleep(0.1)
        yield Server(url=url, key=key_file.read_text().strip(), db_url=db_url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- seeding through the API ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(model_dir: Path, keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mlp 1.0.0 (in production), mlp 1.1.0 (being rolled out), classifier 1.0.0: signed packages."""
    out = tmp_path_factory.mktemp("dashboard-packages")
    built = {}
    for key, source, name, version in (("mlp-1.0.0", "mlp", "mlp", "1.0.0"), ("mlp-1.1.0", "mlp", "mlp", "1.1.0"),
                                       ("classifier-1.0.0", "cnn", "classifier", "1.0.0")):
        path = edgemill.compile(model_dir / f"{source}.onnx", output=out / f"{key}.emp", name=name, version=version,
                                measure=False).path
        sign_package(path, keypair[0])
        built[key] = path
    return built


@dataclass
class Fleet:
    server: Server
    credentials: dict[str, str]  # the cameras' and the bench device's
    packages: dict[str, str]  # "mlp-1.0.0" -> package id
    baselines: dict[str, Baseline]  # package id -> the drift baseline it carries
    deployment: int
    canary: str


def _traffic(device: str, model: str, minute: int) -> tuple[int, int, float]:
    """Requests and errors in one minute, and a p50 latency: a smooth daily-ish wave with noise."""
    rng = random.Random(f"{device}/{model}/{minute}")
    requests = int(60 + 25 * math.sin(minute / 8) + rng.randint(0, 15))
    rate = 0.4 if (device == SICK and model == "classifier" and minute >= HISTORY_MIN - 12) else 0.004
    errors = int(requests * rate + rng.random())
    p50 = (3.0 if model == "mlp" else 7.0) * (1 + 0.15 * math.sin(minute / 5) + 0.1 * rng.random())
    return requests, errors, p50


def _drift_counts(baseline: Baseline, scale: float, shift: float = 0.0) -> list[list[int]]:
    """Counts per bin of each feature: the baseline's scaled up, with a ``shift`` share of them moved to
    the two outer bins (0: no drift)."""
    counts = []
    for feature in baseline.features:
        scaled = [c * scale for c in feature.baseline]
        moved = [c * (1 - shift) for c in scaled]
        moved[0] += sum(scaled) * shift / 2
        moved[-1] += sum(scaled) * shift / 2
        counts.append([round(c) for c in moved])
    return counts


def _drift_bucket(baseline: Baseline, counts: list[list[int]]) -> dict[str, Any]:
    """A closed drift bucket's row values: its counts and their PSI against the baseline, as the server
    stores them when a bucket closes."""
    scores = {f.key: psi(f.baseline, c) for f, c in zip(baseline.features, counts)}
    side = {s: max((v for f in baseline.features if f.side == s and (v := scores[f.key]) is not None), default=None)
            for s in ("input", "output")}
    return {"counts": counts, "samples": max(sum(c) for c in counts), "input_psi": side["input"],
            "prediction_psi": side["output"], "scores": scores}


def _drift_share(device: str, t: float, now: float) -> float:
    if device != DRIFTING:
        return 0.0
    return min(1.0, max(0.0, (t - (now - DRIFT_STARTED_S)) / (DRIFT_STARTED_S - 1200)))


def _backfill_history(server: Server, packages: dict[str, str],
                      baselines: dict[str, Baseline]) -> dict[tuple[str, str], tuple[int, int]]:
    """An hour of per-minute samples and three hours of closed drift buckets, written to the database
    directly: the API cannot write the past (the server stamps every heartbeat with its own clock) and
    the charts need time to show anything. Returns the cumulative counters the heartbeats continue from."""
    from sqlalchemy import select, update

    from edgemill.fleet.db import open_database
    from edgemill.fleet.db.tables import Device, DriftSample, MetricSample

    db = open_database(server.db_url)
    now = time.time()
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    with db.session() as session:
        ids = {name: id_ for name, id_ in session.execute(select(Device.name, Device.id))}
        for device in CAMERAS:
            for model, package in (("mlp", packages["mlp-1.0.0"]), ("classifier", packages["classifier-1.0.0"])):
                total_r = total_e = 0
                for minute in range(HISTORY_MIN):
                    requests, errors, p50 = _traffic(device, model, minute)
                    total_r, total_e = total_r + requests, total_e + errors
                    session.add(MetricSample(device_id=ids[device], model_name=model, package_id=package,
                                             t=now - (HISTORY_MIN - minute) * 60, requests=requests, errors=errors,
                                             total_requests=total_r, total_errors=total_e,
                                             p50_ms=p50, p95_ms=p50 * 2.1, p99_ms=p50 * 3.2))
                totals[(device, model)] = (total_r, total_e)
                rng = random.Random(f"{device}/{model}")
                for t in range(int(now) - DRIFT_HISTORY_S + DRIFT_BUCKET_S, int(now), DRIFT_BUCKET_S):
                    # A little noise: a device's histograms are never exactly the baseline's.
                    counts = [[max(0, c + rng.randint(-2, 2)) for c in feature]
                              for feature in _drift_counts(baselines[package], 3, _drift_share(device, t, now))]
                    session.add(DriftSample(device_id=ids[device], model_name=model, package_id=package, t=t,
                                            span_s=DRIFT_BUCKET_S, **_drift_bucket(baselines[package], counts)))
        # The counters the server continues from, as heartbeats would have left them.
        for device in CAMERAS:
            session.execute(update(Device).where(Device.id == ids[device]).values(metric_totals={
                model: list(totals[(device, model)]) for model in ("mlp", "classifier")}))
    db.engine.dispose()
    return totals


def _heartbeat(server: Server, device: str, credential: str, seq: int, running: dict[str, tuple[str, str]],
               totals: dict[tuple[str, str], tuple[int, int]], baselines: dict[str, Baseline]) -> dict[str, Any]:
    metrics = {}
    for model in running:
        requests, errors, p50 = _traffic(device, model, HISTORY_MIN + seq)
        r, e = totals[(device, model)]
        totals[(device, model)] = (r + requests, e + errors)
        metrics[model] = {"requests": r + requests, "errors": e + errors,
                          "latency_ms": {"p50": p50, "p90": p50 * 1.8, "p95": p50 * 2.1, "p99": p50 * 3.2}}
    # Cumulative since the model loaded (one epoch per package): each heartbeat's counts hold the last one's.
    drift = [{"model": m, "package_id": p, "epoch": f"e{p[:8]}", "bins": bins_digest(baselines[p].features),
              "counts": _drift_counts(baselines[p], seq, 1.0 if device == DRIFTING else 0.0)}
             for m, (_, p) in running.items() if baselines.get(p) is not None]
    body = {"device": device, "seq": seq, "agent_started_at": time.time() - 3 * 3600 - 12 * 60,
            "agent_version": edgemill.__version__,
            "models": [{"name": m, "version": v, "package_id": p} for m, (v, p) in running.items()],
            "metrics": metrics, "memory": {"used_bytes": 88_604_672, "budget_bytes": 2 * 2**30},
            "capture": {"queued": 3, "queued_bytes": 348_160, "failed": 0, "oldest_queued_age_s": 45}, "drift": drift}
    return server.call("POST", "/api/v1/agent/heartbeat", body, token=credential)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fleet(running_server: Server, signed: dict[str, Path]) -> Fleet:
    s = running_server
    s.call("POST", "/api/v1/fleets", {"name": FLEET, "description": "line cameras"})
    s.call("POST", "/api/v1/fleets", {"name": LAB, "description": "bench devices"})
    token = s.call("POST", f"/api/v1/fleets/{FLEET}/registration-tokens", {"uses": len(CAMERAS)})["token"]
    lab_token = s.call("POST", f"/api/v1/fleets/{LAB}/registration-tokens", {})["token"]
    credentials = {d: s.call("POST", "/api/v1/agent/register",
                             {"token": token, "device": d, "tags": {"line": "1"}})["credential"] for d in CAMERAS}
    credentials[BENCH] = s.call("POST", "/api/v1/agent/register", {"token": lab_token, "device": BENCH})["credential"]

    packages = {}
    baselines = {}
    for key, path in signed.items():
        name, version = key.rsplit("-", 1)
        packages[key] = s.call("POST", f"/api/v1/models/{name}/versions", data=path.read_bytes())["package_id"]
        baselines[packages[key]] = edgemill.runtime.load(path).baseline
    s.call("PATCH", "/api/v1/models/mlp/versions/1.0.0", {"stage": "production"})
    s.call("PATCH", "/api/v1/models/mlp/versions/1.1.0", {"stage": "staging"})
    s.call("PATCH", "/api/v1/models/classifier/versions/1.0.0", {"stage": "production"})

    totals = _backfill_history(s, packages, baselines)
    running = {"mlp": ("1.0.0", packages["mlp-1.0.0"]), "classifier": ("1.0.0", packages["classifier-1.0.0"])}
    for seq in range(1, 4):
        for device in CAMERAS:
            _heartbeat(s, device, credentials[device], seq, running, totals, baselines)

    deployment = s.call("POST", "/api/v1/deployments", {
        "model": "mlp", "version": "1.1.0", "fleet": FLEET,
        "strategy": {"canary_percent": 25, "bake_time_s": 3600, "gates": {"max_error_rate": 0.05}}})
    canary = next(d["device"] for d in deployment["devices"] if d["state"] == "assigned")
    _heartbeat(s, canary, credentials[canary], 4, {**running, "mlp": ("1.1.0", packages["mlp-1.1.0"])}, totals,
               baselines)

    # The webhook points at a closed port: the alert shows a delivery that keeps failing.
    s.call("POST", "/api/v1/alert-rules", {"name": "classifier-errors", "metric": "error_rate", "threshold": 0.05,
                                           "window_s": 300, "model": "classifier",
                                           "webhook_url": f"http://127.0.0.1:{_free_port()}/hook"})
    s.call("POST", "/api/v1/alert-rules", {"name": "slow-mlp", "metric": "p95_latency_ms", "threshold": 500,
                                           "model": "mlp"})
    s.call("POST", "/api/v1/alert-rules", {"name": "mlp-confidence", "metric": "prediction_drift", "threshold": 50,
                                           "model": "mlp", "feature": "output:logits:top_score"})
    deadline = time.monotonic() + 10
    while not any(a["state"] == "firing" for a in s.call("GET", "/api/v1/alerts")):
        assert time.monotonic() < deadline, "the error-rate alert did not fire"
        time.sleep(0.2)
    return Fleet(s, credentials, packages, baselines, deployment["id"], canary)


# --- captures: an image classifier's, a tabular model's and an audio model's -----------------------

IMAGES = 12  # captures of the classifier: a [1, 3, 64, 64] picture each, logits [1, 10]
LABELED = 10  # the first ten are labeled through the API before the browser opens; two of them wrong
WRONG = {3, 7}
TABULAR = 5  # captures of "scorer": 64 features, logits [1, 10]; scorer 1.1.0 was validated on them
WAVES = 3  # captures of "keyword": a second of 16 kHz audio, scores [1, 4]
# and one of "weigher", a regressor: a batch of two readings (and their unit, a string tensor), kg [2, 1]
CAPTURES = IMAGES + TABULAR + WAVES + 1
IMAGE_DEVICES = ["cam-01", "cam-02", "cam-04"]


@dataclass
class Captured:
    server: Server
    predicted: dict[str, int]  # the image captures' predicted class


def _picture(i: int) -> np.ndarray:
    """A colour gradient with a bright square that moves with i, normalized as a model's input is (so the
    view says what range it scaled from)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32) / 63
    rgb = np.stack([x, y, 1 - (x + y) / 2])
    top, left = 8 + (i * 7) % 40, 8 + (i * 11) % 40
    rgb[:, top:top + 16, left:left + 16] = np.array([1.0, 0.9, 0.1], np.float32)[:, None, None]
    return ((rgb - 0.5) / 0.25)[None].astype(np.float32)


def _audio(i: int) -> np.ndarray:
    """A tone that swells and fades, with a little noise: one second at 16 kHz."""
    t = np.arange(16000, dtype=np.float32) / 16000
    envelope = np.sin(np.pi * t) ** 2
    tone = envelope * np.sin(2 * np.pi * (220 + 110 * i) * t) * 0.8
    return (tone + np.random.default_rng(i).normal(0, 0.03, t.size)).astype(np.float32)[None]


def _upload_capture(server: Server, credential: str, record: CaptureRecord) -> None:
    server.call("PUT", f"/api/v1/agent/captures/{record.capture_id}?model={record.model}", data=record.encode(),
                token=credential)


@pytest.fixture(scope="module")
def captured(fleet: Fleet, model_dir: Path, keypair: tuple[Path, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """Captures of three models uploaded by the cameras (oldest first, over the last six hours), the first
    ten image captures labeled; "scorer" 1.0.0 and 1.1.0 registered, 1.1.0 validated on an export of
    scorer 1.0.0's captures (so its lineage names them). The browser test that uses this runs after the
    one above: its fleet is as that test expects it."""
    s, cred = fleet.server, fleet.credentials
    now = time.time()
    rng = np.random.default_rng(7)
    predicted = {}
    for i in range(IMAGES):
        capture_id, device = f"img-{i:02d}", IMAGE_DEVICES[i % len(IMAGE_DEVICES)]
        predicted[capture_id] = (i * 3) % 10
        logits = rng.normal(0, 1, (1, 10)).astype(np.float32)
        logits[0, predicted[capture_id]] = 4.0
        _upload_capture(s, cred[device], CaptureRecord(
            capture_id=capture_id, model="classifier", model_version="1.0.0", device=device,
            created_unix=now - 6 * 3600 + i * 1800, inputs={"image": _picture(i)}, outputs={"logits": logits},
            auxiliary={"frame.json": json.dumps({"camera": device, "frame": 1000 + i}).encode()}, sampled=True))
    features = rng.normal(0, 1, (TABULAR, 64)).astype(np.float32)
    for i in range(TABULAR):
        _upload_capture(s, cred["cam-04"], CaptureRecord(
            capture_id=f"tab-{i}", model="scorer", model_version="1.0.0", device="cam-04",
            created_unix=now - 3600 + i * 60, inputs={"features": features[i:i + 1]},
            outputs={"logits": rng.normal(0, 1, (1, 10)).astype(np.float32)}, auxiliary={}, sampled=True))
    _upload_capture(s, cred["cam-01"], CaptureRecord(
        capture_id="reg-0", model="weigher", model_version="0.3.0", device="cam-01", created_unix=now - 900,
        inputs={"reading": np.array([[1.5, 2.25, 3.0], [0.5, 0.75, 1.0]], np.float32), "unit": np.array(["kg", "kg"])},
        outputs={"kg": np.array([[12.0], [4.5]], np.float32)}, auxiliary={}, sampled=True))
    for i in range(WAVES):
        scores = np.array([[0.1, 0.2, 0.1, 0.6]], np.float32)
        _upload_capture(s, cred["cam-03"], CaptureRecord(
            capture_id=f"wav-{i}", model="keyword", model_version="2.1.0", device="cam-03",
            created_unix=now - 600 + i * 60, inputs={"audio": _audio(i)}, outputs={"scores": np.roll(scores, i, axis=1)},
            auxiliary={"meta.txt": b"sample_rate=16000\nmicrophone=front", "raw.bin": bytes(range(256)) * 8},
            sampled=False))
    for i in range(LABELED):
        capture_id = f"img-{i:02d}"
        truth = (predicted[capture_id] + 1) % 10 if i in WRONG else predicted[capture_id]
        s.call("PUT", f"/api/v1/captures/{IMAGE_DEVICES[i % len(IMAGE_DEVICES)]}/{capture_id}/label", {"label": truth})

    out = tmp_path_factory.mktemp("scorer-packages")
    dataset = out / "scorer-captures.npz"  # as `edgemill captures export` writes it
    write_dataset(dataset, {"features": features}, {"kind": "captures", "model": "scorer", "versions": {"1.0.0": TABULAR}},
                  [f"tab-{i}" for i in range(TABULAR)], ["cam-04"] * TABULAR)
    for version, validation in (("1.0.0", None), ("1.1.0", dataset)):
        path = edgemill.compile(model_dir / "mlp.onnx", output=out / f"scorer-{version}.emp", name="scorer",
                                version=version, measure=False, validation=validation).path
        sign_package(path, keypair[0])
        s.call("POST", "/api/v1/models/scorer/versions", data=path.read_bytes())
    return Captured(s, predicted)


# --- the browser -----------------------------------------------------------------------------------

# The pixels of ``canvas`` as ``d`` (RGBA bytes), read from a copy.
PIXELS = """  const copy = document.createElement("canvas");
  copy.width = canvas.width;
  copy.height = canvas.height;
  const ctx = copy.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(canvas, 0, 0);
  const d = ctx.getImageData(0, 0, copy.width, copy.height).data;
"""
# Per chart canvas: its size, the width of the chart and of the box it sits in, and how many of its pixels
# are coloured (not white, black or grey: series lines, not only axes). All read in one turn of the page's
# event loop, so that an auto-refresh cannot swap the charts between two readings; the pixels from a copy,
# so that the chart's own canvas is never read back (Chrome warns when one is, often).
CHARTS = """canvases => canvases.map(canvas => {
""" + PIXELS + """  let coloured = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) coloured++;
  }
  const { width, height } = canvas.getBoundingClientRect();
  return { width, height, coloured, chart: canvas.closest(".u-wrap").getBoundingClientRect().width,
    box: canvas.closest(".plot").clientWidth };
})"""


HIDE_TAB = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW_TAB = """() => {
  delete document.hidden;
  document.dispatchEvent(new Event("visibilitychange"));
}"""


class Console:
    """Every console message and page error; the test asserts none is an error or a warning, except
    the failed loads it provokes on purpose (a 404 and a 401)."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type in ("error", "warning") and not any(p.search(msg.text) for p in self.allowed):
            self.problems.append(f"console {msg.type}: {msg.text}")


def expect_charts(page: Any, at_least: int, series_pixels: int = 100) -> None:
    """At least this many charts, each as wide as its box and with its series drawn (this many coloured
    pixels: a line, or a lone sample's dot)."""
    canvases = page.locator(".plot .uplot canvas")
    canvases.nth(at_least - 1).wait_for()
    charts = canvases.evaluate_all(CHARTS)
    assert len(charts) >= at_least, charts
    for i, c in enumerate(charts):
        assert c["width"] > 200 and c["height"] > 100, (i, c)
        assert abs(c["chart"] - c["box"]) <= 2, (i, c)
        assert c["coloured"] > series_pixels, f"chart {i} draws no series: {c}"


def go(page: Any, route: str, heading: str) -> None:
    page.evaluate(f"location.hash = {json.dumps(route)}")
    page.locator("main h1", has_text=heading).first.wait_for()
    expect(page.locator("#main")).to_have_attribute("aria-busy", "false")


@contextmanager
def dashboard_page() -> Iterator[tuple[Any, Console]]:
    """A headless Chromium page (1366x900, 10 s default timeout) and the console watcher on it."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(10_000)
            yield page, Console(page)
        finally:
            browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ["EDGEMILL_SCREENSHOT_DIR"]) if os.environ.get("EDGEMILL_SCREENSHOT_DIR") else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    return target


def shoot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def shoot_part(part: Any, folder: Path, name: str) -> None:
    """A screenshot of one part of the page, without the sticky header drawn over its top."""
    part.screenshot(path=str(folder / f"{name}.png"), style="header.top { position: static; }")


def panel(page: Any, title: str) -> Any:
    """The page's section with this heading."""
    return page.locator("section.panel", has=page.locator("h2", has_text=title))


# Per chart on the page: the seconds its time axis spans, from the times its screen-reader text names
# (read from uPlot's x scale once the chart is drawn).
CHART_SPANS = """ps => ps.map(p => {
  const [from, to] = p.querySelectorAll("time");
  return (Date.parse(to.dateTime) - Date.parse(from.dateTime)) / 1000;
})"""

# How many colours a canvas shows (read from a copy, as CHARTS reads the charts).
CANVAS_COLOURS = """canvas => {
""" + PIXELS + """  const seen = new Set();
  for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size;
}"""

# The heights of a histogram bin's two bars: the reference's and the window's.
BAR_HEIGHTS = "bin => [...bin.querySelectorAll('.bar')].map(b => b.getBoundingClientRect().height)"


def expect_histogram(histogram: Any, bins: int) -> None:
    """A histogram comparison with this many bins, drawn: some bars of both kinds have a height."""
    expect(histogram.locator(".hist-bin")).to_have_count(bins)
    heights = histogram.locator(".hist-bin").evaluate_all(f"bins => bins.map({BAR_HEIGHTS})")
    assert max(r for r, _ in heights) > 10 and max(w for _, w in heights) > 10, heights


def test_every_view_shows_the_fleet_with_charts_and_a_clean_console(fleet: Fleet, tmp_path: Path) -> None:
    s = fleet.server
    shots = screenshot_dir(tmp_path)
    bins = {f.key: f.bins for baseline in fleet.baselines.values() for f in baseline.features}  # the same in each
    with dashboard_page() as (page, console):
        paths = s.call("GET", "/openapi.json")["paths"]
        assert not [p for p in paths if p == "/" or p.startswith("/dashboard")], "the dashboard is not API"

        # The key handed over in the address is taken, kept for the tab, and removed from the address.
        page.goto(f"{s.url}/#key={s.key}")
        page.locator("main h1", has_text="Overview").wait_for()
        assert "key=" not in page.url and page.url.endswith("/dashboard/#overview")
        assert page.evaluate("sessionStorage.getItem('edgemill.apiKey')") == s.key

        # Overview: health numbers, the sick device and model highlighted, the rollout, the alert.
        labels = page.locator(".tile .label").all_inner_texts()
        tiles = dict(zip(labels, page.locator(".tile .big").all_inner_texts(), strict=True))
        assert tiles == {"devices": "5", "online": "3", "degraded": "1", "offline": "0", "never seen": "1"}
        assert page.locator(".stack[aria-label^='Devices by status']").get_attribute("aria-label") == \
            "Devices by status: 3 online, 1 degraded, 0 offline, 1 never seen"
        sick = page.locator(".item.warn", has_text=SICK)
        assert "error rate" in sick.inner_text()
        assert "error rate" in page.locator(".item.bad", has_text="classifier").first.inner_text()
        rollout = page.locator(".item", has_text="mlp 1.1.0 → factory-a")
        assert "1 of 4 updated · wave 1 / 2" in rollout.inner_text()
        assert page.locator(".item.bad", has_text="classifier-errors").count() == 1
        drifting = panel(page, "Needs attention").locator("div", has=page.locator("h3", has_text="Drift"))
        drifting_device = drifting.locator(f".item.bad:has(a[href='#device/{DRIFTING}'])").first
        assert "significant drift" in drifting_device.inner_text()
        expect_charts(page, 2)
        shoot(page, shots, "overview")

        # Devices: list, status filter, fleet filter.
        page.click("nav >> text=Devices")
        page.locator("main h1", has_text="Devices").wait_for()
        rows = page.locator("main tbody tr")
        expect(rows).to_have_count(5)
        assert page.locator("tbody tr.warn th").inner_text() == SICK
        page.click("a.chip.filter.degraded")
        expect(rows).to_have_count(1)
        assert page.locator("main tbody tr th").inner_text() == SICK
        page.click("a.chip.filter.all")
        expect(rows).to_have_count(5)
        page.select_option("#fleet-filter", LAB)
        expect(rows).to_have_count(1)
        assert "never seen" in page.locator("main tbody tr").inner_text()
        page.click("a.chip.filter.all")
        expect(rows).to_have_count(1)  # the fleet filter stays
        page.select_option("#fleet-filter", "")
        expect(rows).to_have_count(5)
        shoot(page, shots, "devices")

        # A device that never reported: its charts say so instead of drawing nothing.
        go(page, "#device/bench-01", "bench-01")
        expect(page.locator(".chart .no-data")).to_have_count(2)
        assert page.locator(".no-data").first.inner_text() == "no data yet"

        # A device: its models, agent report in units people read, and a traffic and a latency chart per model.
        go(page, f"#device/{SICK}", SICK)
        text = page.locator("main").inner_text()
        assert "classifier" in text and "mlp" in text
        agent = panel(page, "Agent").inner_text()
        for shown in ("85 MiB of 2 GiB (4.1 %)", "340 KiB", "oldest queued age\n45 s", "3 h 12 min"):
            assert shown in agent, (shown, agent)
        assert "error rate" in page.locator(".callout").inner_text()
        assert panel(page, "Performance").locator(".series-title").all_inner_texts() == ["classifier", "mlp"]
        # Per model input and prediction drift, traffic and latency; but SICK is the canary: the mlp
        # version new on it has no closed drift bucket yet, so its drift charts say "no data yet".
        expect_charts(page, 6)
        shoot(page, shots, "device")
        page.set_viewport_size({"width": 800, "height": 900})  # the charts follow their boxes
        page.wait_for_timeout(200)
        expect_charts(page, 6)
        page.set_viewport_size({"width": 1366, "height": 900})

        # A drifting device: per model, its PSI over time, and its worst input and prediction feature
        # against the reference, mass moved to the outer bins.
        go(page, f"#device/{DRIFTING}", DRIFTING)
        drift = panel(page, "Drift")
        statuses = drift.locator(".drift-status")
        expect(statuses).to_have_count(2)
        assert all("significant drift" in t for t in statuses.all_inner_texts()), statuses.all_inner_texts()
        histograms = drift.locator(".hist")
        expect(histograms).to_have_count(4)
        for i in range(4):
            expect_histogram(histograms.nth(i), bins[histograms.nth(i).locator("figcaption code").inner_text()])
            reference, window = histograms.nth(i).locator(".hist-bin").first.evaluate(BAR_HEIGHTS)
            assert window > 2 * reference, (i, reference, window)
        expect_charts(page, 8)
        shoot_part(drift, shots, "device-drift")

        # One heartbeat from a silent device: its charts hold one sample each, on a span of minutes, not years.
        _heartbeat(s, BENCH, fleet.credentials[BENCH], 1, {"mlp": ("1.0.0", fleet.packages["mlp-1.0.0"])},
                   {(BENCH, "mlp"): (0, 0)}, fleet.baselines)
        go(page, f"#device/{BENCH}", BENCH)
        expect_charts(page, 2, series_pixels=40)
        spans = page.locator(".chart .sr-only").evaluate_all(CHART_SPANS)
        assert len(spans) == 2 and all(0 < span < 86400 for span in spans), spans
        shoot(page, shots, "device-single-sample")

        # Models: the problem model highlighted; a model's versions, lineage chain and charts.
        go(page, "#models", "Models")
        assert page.locator("tr.bad th").inner_text() == "classifier"
        page.click("main >> text=mlp")
        page.locator("main h1", has_text="mlp").wait_for()
        expect(page.locator(".chain")).to_have_count(2)
        chain = page.locator(".lineage", has_text="1.1.0").locator(".node")
        assert chain.locator("h4").all_text_contents() == ["Source", "Compile", "Package", "Deployments", "Devices"]
        assert "sha256" in chain.nth(0).inner_text()
        assert fleet.packages["mlp-1.1.0"][:12] in chain.nth(2).inner_text()
        assert f"#{fleet.deployment}" in chain.nth(3).inner_text()
        assert fleet.canary in chain.nth(4).inner_text()
        assert "staging" in panel(page, "Versions").locator("table").inner_text()
        expect_charts(page, 4)  # input and prediction drift, traffic and latency
        shoot(page, shots, "model")

        # The model's drift: the production version, features worst first, the worst one's histogram
        # against the baseline, devices worst first; another feature is picked without leaving the spot.
        drift = panel(page, "Drift")
        assert drift.locator("#drift-version").input_value() == "1.0.0"
        assert "PSI" in drift.locator(".drift-status").inner_text()
        features = drift.locator(".table-wrap table").first.locator("tbody tr")
        scores = [float(v) for v in features.locator("td.num:nth-of-type(1)").all_inner_texts()]
        assert scores == sorted(scores, reverse=True) and len(scores) == 10, scores
        worst_key = features.first.locator("th").inner_text()
        histogram = drift.locator(".hist")
        assert worst_key in histogram.locator("figcaption").inner_text()
        expect_histogram(histogram, bins[worst_key])
        devices = drift.locator(".table-wrap table").nth(1).locator("tbody tr")
        assert devices.first.locator("th").inner_text() == DRIFTING
        second_key = features.nth(1).locator("th").inner_text()
        features.nth(1).locator("a").click()
        expect(histogram.locator("figcaption")).to_contain_text(second_key)
        assert page.evaluate("window.scrollY") > 0  # the same page: it stays where it was
        expect(drift.locator("tr.selected th")).to_have_text(second_key)
        shoot_part(drift, shots, "model-drift")

        # The last hour pinned as the reference, then unpinned: back to the package baseline.
        drift.locator("button", has_text="Pin the last 1 h as reference").click()
        page.click("#confirm-ok")
        expect(drift.locator(".drift-reference")).to_contain_text("a pinned window")
        drift.locator("button", has_text="Unpin").click()
        page.click("#confirm-ok")
        expect(drift.locator(".drift-reference")).to_contain_text("the package baseline")

        # Deployments: the list, then pause and resume with confirmation.
        go(page, "#deployments", "Deployments")
        page.click(f"main a[href='#deployment/{fleet.deployment}']")
        page.locator("main h1", has_text=f"Deployment #{fleet.deployment}").wait_for()
        assert fleet.canary in page.locator(".wave", has_text="wave 1 · canary").inner_text()
        assert "created" in page.locator(".timeline").inner_text()
        page.click("button:text('Pause')")
        page.locator("dialog[open]").wait_for()
        page.click("#confirm-ok")
        page.locator(".page-head .chip.paused").wait_for()
        assert s.call("GET", f"/api/v1/deployments/{fleet.deployment}")["state"] == "paused"
        page.click("button:text('Resume')")
        page.click("button:text('Cancel')")  # cancelled: nothing happens
        assert s.call("GET", f"/api/v1/deployments/{fleet.deployment}")["state"] == "paused"
        page.click("button:text('Resume')")
        page.click("#confirm-ok")
        page.locator(".page-head .chip.rolling").wait_for()
        shoot(page, shots, "deployment")

        # Alerts: firing first, with its failing webhook; the rules.
        go(page, "#alerts", "Alerts")
        first = page.locator(".table-wrap table").first.locator("tbody tr").first
        assert "firing" in first.inner_text() and "classifier-errors" in first.inner_text()
        assert re.search(r"retrying|gave up|pending", first.inner_text())
        rules = page.locator(".table-wrap table").nth(1).locator("tbody tr")
        assert rules.count() == 3
        assert "prediction drift (PSI) of output:logits:top_score > 50.00 over 5 min" in \
            rules.filter(has_text="mlp-confidence").inner_text()
        shoot(page, shots, "alerts")

        # Auto-refresh: the view is read again within the 5 s period, but not while the tab is hidden.
        refresh = page.locator("#refresh")
        before = refresh.inner_text()
        expect(refresh).not_to_have_text(before, timeout=8000)
        page.evaluate(HIDE_TAB)
        expect(refresh).to_have_text("refresh paused")
        page.wait_for_timeout(6000)
        expect(refresh).to_have_text("refresh paused")
        page.evaluate(SHOW_TAB)  # shown again: read at once
        expect(refresh).to_have_text(re.compile("^updated "), timeout=2000)

        # A failure shows the server's own message in the banner.
        console.allowed.append(re.compile(r"status of 404"))
        go(page, "#device/no-such-device", "Device")
        assert "no device with that name" in page.locator("#banner").inner_text()

        # A wrong key brings the sign-in form back with the server's message; the right one gets in.
        console.allowed.append(re.compile(r"status of 401"))
        page.evaluate("sessionStorage.setItem('edgemill.apiKey', 'emk_wrong')")
        page.evaluate("history.replaceState(null, '', '#overview')")
        page.reload()
        page.locator("#login:not([hidden])").wait_for()
        assert "unknown or revoked operator API key" in page.locator("#login-message").inner_text()
        page.fill("#login-key", s.key)
        page.click("#login button[type=submit]")
        page.locator("main h1", has_text="Overview").wait_for()

        assert console.problems == []
    print(f"\nscreenshots in {shots}: overview.png device.png device-drift.png model-drift.png (and devices, model, "
          "device-single-sample, deployment, alerts)")


def test_captures_show_their_data_take_labels_and_give_live_accuracy(captured: Captured, tmp_path: Path) -> None:
    s = captured.server
    shots = screenshot_dir(tmp_path)
    with dashboard_page() as (page, console):
        console.allowed.append(re.compile(r"status of 422"))  # the label refused on purpose
        views_read: list[str] = []  # the capture views the page asked for
        page.on("request", lambda r: views_read.append(r.url) if r.url.endswith("/view") else None)
        page.goto(f"{s.url}/#key={s.key}")
        page.locator("main h1", has_text="Overview").wait_for()

        # The list: every capture, newest first; image inputs as thumbnails, the others by their shape.
        page.click("nav >> text=Captures")
        page.locator("main h1", has_text="Captures").wait_for()
        rows = page.locator("main tbody tr")
        expect(rows).to_have_count(CAPTURES)
        assert "wav-2" in rows.first.inner_text()
        thumbs = page.locator("main tbody canvas.thumb-img")
        expect(thumbs).to_have_count(IMAGES)
        colours = thumbs.evaluate_all(f"cs => cs.map({CANVAS_COLOURS})")
        assert all(c > 10 for c in colours), colours
        assert rows.filter(has_text="wav-0").locator(".thumb-shape").text_content() == "[1 × 16000] float32"
        assert rows.filter(has_text="tab-0").locator(".thumb-shape").text_content() == "[1 × 64] float32"
        assert "unlabeled" in rows.filter(has_text="img-11").inner_text()
        assert "right" in rows.filter(has_text="img-00").inner_text()
        assert "wrong" in rows.filter(has_text="img-03").inner_text()
        expect(page.locator("main button", has_text="Next")).to_be_disabled()  # one short page
        assert len(views_read) == CAPTURES, views_read
        shoot(page, shots, "captures")

        # Shown again (as every 5 s), the rows' thumbnails come from what was read, not from the server.
        page.click("a.chip.filter.label-labeled")
        expect(rows.filter(has_text="unlabeled")).to_have_count(0)
        page.click("a.chip.filter.label-all")
        expect(rows).to_have_count(CAPTURES)
        expect(thumbs).to_have_count(IMAGES)
        assert len(views_read) == CAPTURES, views_read

        # Filters live in the address: the label state picked in the page survives a reload.
        page.click("a.chip.filter.label-unlabeled")
        expect(rows).to_have_count(CAPTURES - LABELED)
        assert "labeled=false" in page.url
        page.reload()
        page.locator("main h1", has_text="Captures").wait_for()
        expect(rows).to_have_count(CAPTURES - LABELED)
        page.click("a.chip.filter.label-labeled")
        expect(rows.filter(has_text="unlabeled")).to_have_count(0)
        expect(rows).to_have_count(LABELED)
        page.fill("#captures-model", "keyword")
        page.press("#captures-model", "Enter")
        expect(page.locator(".empty-state")).to_have_text("No captures match these filters.")
        page.click("a.chip.filter.label-all")
        expect(rows).to_have_count(WAVES)
        assert page.input_value("#captures-model") == "keyword"
        page.click("main >> text=clear filters")
        expect(rows).to_have_count(CAPTURES)

        # An image capture, opened from its row: the picture, the answer, and the label form.
        rows.filter(has_text="img-11").locator("td").nth(3).click()
        page.locator("main h1", has_text="img-11").wait_for()
        inputs = panel(page, "Inputs")
        picture = inputs.locator("canvas.pixelated")
        expect(picture).to_have_count(1)
        assert picture.evaluate(CANVAS_COLOURS) > 10
        box = picture.bounding_box()
        assert box and box["width"] == 256 and box["height"] == 256, box  # 64 px, four times over
        assert "[1 × 3 × 64 × 64] float32" in inputs.inner_text() and "scaled from [-2, 2]" in inputs.inner_text()
        said = captured.predicted["img-11"]
        answer = panel(page, "Answer")
        assert answer.locator(".answer strong").inner_text() == str(said)
        assert answer.locator("li.picked .bar-name").inner_text() == f"class {said}"
        assert '"frame": 1011' in panel(page, "Auxiliary").inner_text()
        label = panel(page, "Label")
        assert "Not labeled yet." in label.inner_text()
        page.fill("#label-0", "3")
        page.click("main button:text('Save label')")
        expect(label.locator("dd").first).to_contain_text("class 3")
        stored = {c["capture_id"]: c for c in s.call("GET", "/api/v1/captures?labeled=true")}
        assert stored["img-11"]["label"] == [3] and stored["img-11"]["labeled_by"] == "admin", stored["img-11"]
        assert "admin" in label.inner_text()
        shoot(page, shots, "capture-image")

        # A class the model does not have: the server's message in the banner, the typed value kept.
        page.fill("#label-0", "12")
        page.click("main button:text('Save new label')")
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#banner")).to_contain_text("the class index is out of range for this model")
        expect(page.locator("#banner")).to_contain_text("0 to 9")
        assert page.locator("#banner").inner_text().count("send a class index from 0 to 9") == 1  # the fix, once
        assert page.input_value("#label-0") == "12"
        shoot(page, shots, "capture-label-refused")
        assert {c["capture_id"]: c for c in s.call("GET", "/api/v1/captures?labeled=true")}["img-11"]["label"] == [3]

        # Audio: the envelope of the signal over the sample index, and the auxiliary text.
        go(page, "#capture/cam-03/wav-0", "wav-0")
        expect_charts(page, 1)
        assert "16,000 samples" in panel(page, "Inputs").inner_text()
        assert "sample_rate=16000" in panel(page, "Auxiliary").inner_text()
        assert "binary: not shown" in panel(page, "Auxiliary").inner_text()
        assert "class 3" in panel(page, "Answer").inner_text()
        shoot(page, shots, "capture-audio")

        # A row of features: a grid of index and value.
        go(page, "#capture/cam-04/tab-0", "tab-0")
        expect(panel(page, "Inputs").locator("ol.values li")).to_have_count(64)
        shoot(page, shots, "capture-table")

        # A regressor's batch of two: a value per sample, labeled with one number each; a string tensor
        # is shown by its shape and dtype.
        go(page, "#capture/cam-01/reg-0", "reg-0")
        assert "Predicted values 12, 4.5" in panel(page, "Answer").inner_text()
        unit = panel(page, "Inputs").locator("figure.kind-other")
        assert "unit" in unit.inner_text() and "<U2" in unit.inner_text()
        page.fill("#label-0", "12.5")
        page.fill("#label-1", "4")
        page.click("main button:text('Save label')")
        expect(panel(page, "Label").locator("dd").first).to_contain_text("12.5, 4")
        stored = {c["capture_id"]: c for c in s.call("GET", "/api/v1/captures?labeled=true")}
        assert stored["reg-0"]["label"] == [12.5, 4.0], stored["reg-0"]
        shoot(page, shots, "capture-regression")

        # The model page: live accuracy from the labels, with the count it rests on.
        go(page, "#model/classifier", "classifier")
        accuracy = panel(page, "Live accuracy")
        top1 = (LABELED - len(WRONG) + (said == 3)) / (LABELED + 1)
        headline = accuracy.locator(".headline").inner_text()
        assert f"{100 * top1:.1f} % of {LABELED + 1} labeled samples" in headline, headline
        expect(accuracy.locator(".plot .uplot canvas")).not_to_have_count(0)
        versions = accuracy.locator(".accuracy-groups table").first.locator("tbody tr")
        assert versions.all_inner_texts() == [f"1.0.0\t{LABELED + 1}\t{100 * top1:.1f} %"], versions.all_inner_texts()
        shoot_part(accuracy, shots, "model-accuracy")

        # A version validated on captures names them in its lineage and links to them; nothing of this
        # model is labeled yet, and its accuracy section says where to label.
        go(page, "#model/scorer", "scorer")
        parent = page.locator(".lineage", has_text="1.1.0").locator(".parent")
        expect(parent).to_have_text(f"validated on {TABULAR} samples captured by scorer 1.0.0")
        assert parent.locator("a").get_attribute("href") == "#captures?model=scorer&version=1.0.0"
        assert "No labeled captures yet" in panel(page, "Live accuracy").inner_text()
        shoot_part(panel(page, "Lineage"), shots, "model-lineage")
        parent.locator("a").click()
        page.locator("main h1", has_text="Captures").wait_for()
        expect(rows).to_have_count(TABULAR)
        assert page.input_value("#captures-version") == "1.0.0"

        assert console.problems == []
    print(f"\nscreenshots in {shots}: captures.png capture-image.png capture-audio.png capture-table.png "
          "model-accuracy.png (and capture-label-refused, capture-table, capture-regression, model-lineage)")


# --- roles: what a viewer sees, and an admin managing keys ---------------------------------------------

def test_a_viewer_finds_no_controls_and_an_admin_creates_and_revokes_a_key(fleet: Fleet, tmp_path: Path) -> None:
    s = fleet.server
    viewer = s.call("POST", "/api/v1/operator-keys", {"name": "wall-screen", "role": "viewer"})["key"]
    shots = screenshot_dir(tmp_path)
    with dashboard_page() as (page, console):
        console.allowed.append(re.compile(r"status of 403"))  # the keys page opened by a viewer, on purpose

        # A viewer: every page reads, no page offers a change.
        page.goto(f"{s.url}/#key={viewer}")
        page.locator("main h1", has_text="Overview").wait_for()
        expect(page.locator("#whoami")).to_have_text("wall-screen · viewer")
        expect(page.locator("nav a[data-nav=keys]")).to_be_hidden()
        go(page, f"deployment/{fleet.deployment}", f"Deployment #{fleet.deployment}")
        assert page.locator("#main button").count() == 0  # no pause, resume or roll back
        go(page, "model/mlp", "mlp")
        page.locator("main h2", has_text="Drift").first.wait_for()
        expect(page.locator("#main button", has_text="Pin")).to_have_count(0)
        expect(page.locator("#main button", has_text="Unpin")).to_have_count(0)
        for route, heading in (("devices", "Devices"), ("alerts", "Alerts"), ("captures", "Captures"),
                               ("deployments", "Deployments")):
            go(page, route, heading)
            for word in ("Delete", "Roll back", "Revoke", "Create", "Save label"):
                expect(page.locator("#main button", has_text=word)).to_have_count(0)
        go(page, "audit", "Audit")
        assert page.locator("main tbody tr").count() >= 1  # what the fixture and the admin did
        shoot(page, shots, "audit-as-viewer")
        page.evaluate("location.hash = 'keys'")  # typed by hand: refused, and said why
        expect(page.locator("#banner")).to_contain_text("needs the admin role")

        # An admin: the controls are there, and keys are made and revoked from the page.
        page.evaluate(f"location.hash = {json.dumps('overview?key=' + s.key)}")
        expect(page.locator("#whoami")).to_contain_text("· admin")
        go(page, f"deployment/{fleet.deployment}", f"Deployment #{fleet.deployment}")
        expect(page.locator("#main button", has_text="Roll back")).to_have_count(1)
        page.click("nav a[data-nav=keys]")
        page.locator("main h1", has_text="Operator keys").wait_for()
        page.fill("#key-name", "ci-bot")
        page.select_option("#key-role", "deployer")
        page.select_option("#key-expiry", label="30 days")
        page.click("#main button[type=submit]")
        expect(page.locator("#new-key")).to_contain_text("emk_")
        secret = page.locator("#new-key").inner_text().strip()
        assert s.call("GET", "/api/v1/whoami", token=secret)["role"] == "deployer"
        row = page.locator("main tbody tr", has_text="ci-bot")
        expect(row).to_contain_text("active")
        shoot(page, shots, "keys")
        row.locator("button", has_text="Revoke").click()
        page.click("#confirm-ok")
        expect(page.locator("main tbody tr", has_text="ci-bot")).to_contain_text("revoked")
        with pytest.raises(AssertionError, match="401"):
            s.call("GET", "/api/v1/whoami", token=secret)
        go(page, "audit", "Audit")
        expect(page.locator("main tbody")).to_contain_text("DELETE /api/v1/operator-keys/ci-bot")
        expect(page.locator("main tbody")).to_contain_text("POST /api/v1/operator-keys")

        # A key limited to the lab fleet, made on the page: signed in, it sees the lab's devices only,
        # and no Keys section (a limited admin cannot make itself a wider key).
        page.click("nav a[data-nav=keys]")
        page.locator("main h1", has_text="Operator keys").wait_for()
        page.fill("#key-name", "lab-lead")
        page.select_option("#key-role", "admin")
        page.check(f"#key-fleets input[value={LAB}]")
        page.click("#main button[type=submit]")
        expect(page.locator("main tbody tr", has_text="lab-lead")).to_contain_text(LAB)
        limited = page.locator("#new-key").inner_text().strip()
        page.evaluate(f"location.hash = {json.dumps('devices?key=' + limited)}")
        expect(page.locator("#whoami")).to_have_text(f"lab-lead · admin · {LAB}")
        expect(page.locator("nav a[data-nav=keys]")).to_be_hidden()
        page.locator("main tbody tr", has_text=BENCH).wait_for()
        for camera in CAMERAS:
            expect(page.locator("main tbody tr", has_text=camera)).to_have_count(0)
        shoot(page, shots, "devices-as-lab-lead")
        for route, heading in (("overview", "Overview"), ("models", "Models"), ("model/mlp", "mlp"),
                               ("captures", "Captures"), ("deployments", "Deployments"), ("alerts", "Alerts"),
                               ("audit", "Audit")):  # every page reads with a limited key, no refusal
            go(page, route, heading)
            expect(page.locator("#banner")).to_be_hidden()
            for camera in CAMERAS:  # the other fleet's cameras appear on none of them
                expect(page.locator("main", has_text=camera)).to_have_count(0)
        page.evaluate("location.hash = 'keys'")
        expect(page.locator("#banner")).to_contain_text("needs a key for every fleet")
        assert not console.problems, console.problems
