"""The dashboard in a real browser against a real server: every view shows what the API holds, charts
draw, the operator actions work, errors and a wrong key are shown, and the console stays clean.

Skips where playwright (the Python package) or a Chromium binary is missing. Full-page screenshots of
the overview, a device page and the other views go to $EDGEMILL_SCREENSHOT_DIR (or the test's tmp_path).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("no Chromium binary (/usr/bin/chromium or `chromium` on PATH)", allow_module_level=True)

import edgemill  # noqa: E402  (after the skips: nothing below is needed when they apply)
from edgemill.package.store import sign_package  # noqa: E402

FLEET, LAB = "factory-a", "lab"
CAMERAS = ["cam-01", "cam-02", "cam-03", "cam-04"]
SICK = "cam-03"  # its classifier fails 40 % of requests: degraded device, problem model, firing alert
HISTORY_MIN = 50


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
    credentials: dict[str, str]
    packages: dict[str, str]  # "mlp-1.0.0" -> package id
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


def _backfill_history(server: Server, packages: dict[str, str]) -> dict[tuple[str, str], tuple[int, int]]:
    """An hour of per-minute samples, written to the database directly: the API cannot write the past
    (the server stamps every heartbeat with its own clock) and the charts need time to show anything.
    Returns the cumulative counters the heartbeats continue from."""
    from sqlalchemy import select, update

    from edgemill.fleet.db import open_database
    from edgemill.fleet.db.tables import Device, MetricSample

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
        # The counters the server continues from, as heartbeats would have left them.
        for device in CAMERAS:
            session.execute(update(Device).where(Device.id == ids[device]).values(metric_totals={
                model: list(totals[(device, model)]) for model in ("mlp", "classifier")}))
    db.engine.dispose()
    return totals


def _heartbeat(server: Server, device: str, credential: str, seq: int, running: dict[str, tuple[str, str]],
               totals: dict[tuple[str, str], tuple[int, int]]) -> dict[str, Any]:
    metrics = {}
    for model in running:
        requests, errors, p50 = _traffic(device, model, HISTORY_MIN + seq)
        r, e = totals[(device, model)]
        totals[(device, model)] = (r + requests, e + errors)
        metrics[model] = {"requests": r + requests, "errors": e + errors,
                          "latency_ms": {"p50": p50, "p90": p50 * 1.8, "p95": p50 * 2.1, "p99": p50 * 3.2}}
    body = {"device": device, "seq": seq, "agent_started_at": time.time() - 3600, "agent_version": edgemill.__version__,
            "models": [{"name": m, "version": v, "package_id": p} for m, (v, p) in running.items()],
            "metrics": metrics, "memory": {"rss_mb": 84.5, "models_mb": 12.0}, "capture": {"queued": 0}}
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
    s.call("POST", "/api/v1/agent/register", {"token": lab_token, "device": "bench-01"})  # registered, never seen

    packages = {}
    for key, path in signed.items():
        name, version = key.rsplit("-", 1)
        packages[key] = s.call("POST", f"/api/v1/models/{name}/versions", data=path.read_bytes())["package_id"]
    s.call("PATCH", "/api/v1/models/mlp/versions/1.0.0", {"stage": "production"})
    s.call("PATCH", "/api/v1/models/mlp/versions/1.1.0", {"stage": "staging"})
    s.call("PATCH", "/api/v1/models/classifier/versions/1.0.0", {"stage": "production"})

    totals = _backfill_history(s, packages)
    running = {"mlp": ("1.0.0", packages["mlp-1.0.0"]), "classifier": ("1.0.0", packages["classifier-1.0.0"])}
    for seq in range(1, 4):
        for device, credential in credentials.items():
            _heartbeat(s, device, credential, seq, running, totals)

    deployment = s.call("POST", "/api/v1/deployments", {
        "model": "mlp", "version": "1.1.0", "fleet": FLEET,
        "strategy": {"canary_percent": 25, "bake_time_s": 3600, "gates": {"max_error_rate": 0.05}}})
    canary = next(d["device"] for d in deployment["devices"] if d["state"] == "assigned")
    _heartbeat(s, canary, credentials[canary], 4, {**running, "mlp": ("1.1.0", packages["mlp-1.1.0"])}, totals)

    # The webhook points at a closed port: the alert shows a delivery that keeps failing.
    s.call("POST", "/api/v1/alert-rules", {"name": "classifier-errors", "metric": "error_rate", "threshold": 0.05,
                                           "window_s": 300, "model": "classifier",
                                           "webhook_url": f"http://127.0.0.1:{_free_port()}/hook"})
    s.call("POST", "/api/v1/alert-rules", {"name": "slow-mlp", "metric": "p95_latency_ms", "threshold": 500,
                                           "model": "mlp"})
    deadline = time.monotonic() + 10
    while not any(a["state"] == "firing" for a in s.call("GET", "/api/v1/alerts")):
        assert time.monotonic() < deadline, "the error-rate alert did not fire"
        time.sleep(0.2)
    return Fleet(s, credentials, packages, deployment["id"], canary)


# --- the browser -----------------------------------------------------------------------------------

# Pixels of a chart's canvas that are coloured (not white, black or grey): series lines, not only axes.
# Read from a copy, so that the chart's own canvas is never read back (Chrome warns when one is, often).
COLOURED_PIXELS = """canvas => {
  const copy = document.createElement("canvas");
  copy.width = canvas.width;
  copy.height = canvas.height;
  const ctx = copy.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(canvas, 0, 0);
  const d = ctx.getImageData(0, 0, copy.width, copy.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) n++;
  }
  return n;
}"""


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


# A chart's width and the width of the box it sits in.
CHART_AND_BOX = "c => [c.closest('.u-wrap').getBoundingClientRect().width, c.closest('.plot').clientWidth]"


def expect_charts(page: Any, at_least: int) -> None:
    """At least this many charts, each as wide as its box and with its series drawn."""
    canvases = page.locator(".plot .uplot canvas")
    canvases.nth(at_least - 1).wait_for()
    for i in range(canvases.count()):
        canvas = canvases.nth(i)
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100, box
        chart_width, box_width = canvas.evaluate(CHART_AND_BOX)
        assert abs(chart_width - box_width) <= 2, (chart_width, box_width)
        assert canvas.evaluate(COLOURED_PIXELS) > 100, f"chart {i} draws no series"


def go(page: Any, route: str, heading: str) -> None:
    page.evaluate(f"location.hash = {json.dumps(route)}")
    page.locator("main h1", has_text=heading).first.wait_for()
    expect(page.locator("#main")).to_have_attribute("aria-busy", "false")


def screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ["EDGEMILL_SCREENSHOT_DIR"]) if os.environ.get("EDGEMILL_SCREENSHOT_DIR") else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    return target


def shoot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_every_view_shows_the_fleet_with_charts_and_a_clean_console(fleet: Fleet, tmp_path: Path) -> None:
    s = fleet.server
    shots = screenshot_dir(tmp_path)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(10_000)
            console = Console(page)
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

            # A device: its models, agent report, and a traffic and a latency chart per model.
            go(page, f"#device/{SICK}", SICK)
            text = page.locator("main").inner_text()
            assert "classifier" in text and "mlp" in text and "memory rss mb" in text
            assert "error rate" in page.locator(".callout").inner_text()
            assert page.locator(".series-title").all_inner_texts() == ["classifier", "mlp"]
            expect_charts(page, 4)
            shoot(page, shots, "device")
            page.set_viewport_size({"width": 800, "height": 900})  # the charts follow their boxes
            page.wait_for_timeout(200)
            expect_charts(page, 4)
            page.set_viewport_size({"width": 1366, "height": 900})

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
            assert "staging" in page.locator(".table-wrap table").inner_text()
            expect_charts(page, 2)
            shoot(page, shots, "model")

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
            assert page.locator(".table-wrap table").nth(1).locator("tbody tr").count() == 2
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
        finally:
            browser.close()
    print(f"\nscreenshots in {shots}: overview.png device.png (and devices, model, deployment, alerts)")
