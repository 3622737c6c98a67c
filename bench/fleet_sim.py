"""A simulated fleet against a real `edgemill server`: thousands of lightweight agents in one process.

    python bench/fleet_sim.py --devices 10000 --interval 30 --duration 120 --db postgresql+psycopg://...
    python bench/fleet_sim.py --devices 500 --interval 5 --duration 30                # SQLite, quick look

Each simulated agent is an asyncio task that does what the real agent does on the wire: registers
with a registration token, heartbeats every ``--interval`` seconds with a long poll (``--long-poll``),
reports one loaded model with cumulative request/error counters and latency percentiles, and when the
desired state names a package it does not run, downloads it and reports it at once. Faults:
``--drop-rate`` (a heartbeat is lost before it is sent), ``--restart-rate`` (the agent restarts: its
counters start again from zero), ``--bad-devices`` (a share of devices whose model fails requests).

The run: start the server (or use ``--server``), register every device, warm up (one interval, or ``--warmup``),
then measure for ``--duration`` seconds, and with ``--rollout`` deploy a new version to the whole
fleet (canary, then ``--batch-size`` waves) and time it. With ``--rollout`` the fleet starts out
running v1 (deployed to all; each simulated device has it installed already, so the first heartbeats
report it and no one downloads it), which gives the steady state real per-model metrics; ``--model``
does the same without the rollout.

Drift (issue 15): a device that runs a model sends, with every heartbeat, that model's drift histograms as
the agent does (``HeartbeatIn.drift``): over the features and bins of the package's own signed baseline
(``monitoring/baseline.json``; ``--model-features`` input columns, of which the package watches at most
32, plus the predicted class and the top score), cumulative counts that grow with the device's requests,
drawn around the baseline's proportions (``--drift-shifted``: a share of devices whose first input
features have their mass moved towards the upper bins), the bins digest, and an ``epoch`` that changes
when the agent restarts or loads another version (the counts start again from zero). ``--no-drift``
leaves the histograms out, for a run to compare with. The server it starts closes a device's bucket every
``--drift-bucket-s`` seconds (once it holds ``--drift-min-samples``), so buckets close in the window.
It prints:

- heartbeat latency p50/p95/p99: time from the request to its answer, less the time the server held
  it in the long poll (the server reports that in ``X-Edgemill-Held-Ms``); so the figure is what a
  heartbeat costs, not how long nothing happened;
- CPU of the server process, of PostgreSQL's processes (when local) and of this simulator, as a
  share of one core over the measured window;
- database growth per device-day, from the database's size before and after the window (on PostgreSQL
  also per table, so drift buckets and device rows can be told apart);
- heartbeat bytes (the compact JSON body, as the agent sends it) and, with drift, the size of the drift
  entry per model, the drift buckets the server stored in the window, and what ``GET /api/v1/drift``
  answers for the fleet afterwards (timed);
- rollout: time from the last wave's release to the last device reporting the new version, and in all.

Figures are from this run only; the server, the database and the simulator share this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from edgemill.agent.sync import next_heartbeat_in  # noqa: E402
from edgemill.fleet.gc_policy import CollectorSchedule  # noqa: E402
from tests._fleet import ServerProcess, build_model_package  # noqa: E402

MODEL = "sim-model"
SHIFTED_FEATURES = 4  # a shifted device's first input features whose distribution moves
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- measuring -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """A process and all its descendants (``edgemill server --workers N`` runs its workers as children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu_seconds(p) for p in tree)


def postgres_cpu_seconds() -> float:
    """All local PostgreSQL processes together (the server's backends do the database's work)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                total += cpu_seconds(int(entry.name))
        except OSError:
            continue
    return total


def database_bytes(db_url: str | None, data_dir: Path) -> int:
    if db_url and db_url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        engine = create_engine(db_url)
        with engine.connect() as conn:
            size = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        engine.dispose()
        return size
    files = [data_dir / "edgemill.db", data_dir / "edgemill.db-wal"]
    return sum(f.stat().st_size for f in files if f.exists())


def _engine(db_url: str | None, data_dir: Path):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(db_url if db_url else f"sqlite:///{data_dir / 'edgemill.db'}")


def drift_sample_rows(db_url: str | None, data_dir: Path) -> int | None:
    """Rows in ``drift_samples`` (closed drift buckets), or None where the database cannot be read."""
    from sqlalchemy import text

    if db_url is None and not (data_dir / "edgemill.db").exists():
        return None
    engine = _engine(db_url, data_dir)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM drift_samples")).scalar_one())
    except Exception:  # noqa: BLE001 - a server without the table (older) or an unreachable database
        return None
    finally:
        engine.dispose()


GROWTH_TABLES = ("devices", "drift_samples", "metric_samples")


def table_bytes(db_url: str | None) -> dict[str, int]:
    """PostgreSQL: each table's size with its indexes and TOAST (empty elsewhere)."""
    if not (db_url and db_url.startswith("postgresql")):
        return {}
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {t: int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one())
                    for t in GROWTH_TABLES}
    finally:
        engine.dispose()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


WRITER_METRICS = ("edgemill_server_heartbeat_queue_seconds", "edgemill_server_heartbeat_write_seconds",
                  "edgemill_server_heartbeat_batch_size")


async def scrape_writer(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    """The server's heartbeat-writer histograms (``le`` → cumulative count, plus sum and count)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    out: dict[str, dict[str, float]] = {name: {} for name in WRITER_METRICS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name in WRITER_METRICS:
                if sample.name == name + "_bucket":
                    out[name][sample.labels["le"]] = sample.value
                elif sample.name in (name + "_sum", name + "_count"):
                    out[name][sample.name[len(name) + 1:]] = sample.value
    return out


def writer_summary(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                   window_s: float) -> dict[str, float | None]:
    """What the server's heartbeat writer did in the window: mean batch, mean write time, queue waits, and
    its busy share (seconds spent writing per second: it writes one batch at a time, so near 1 it is the
    bottleneck and heartbeats queue)."""
    def delta(name: str, key: str) -> float:
        return after[name].get(key, 0.0) - before[name].get(key, 0.0)

    def quantile(name: str, q: float) -> float | None:  # the upper bound of the bucket holding quantile q
        total = delta(name, "count")
        bounds = sorted((float(le), le) for le in after[name] if le not in ("sum", "count"))
        for bound, le in bounds:
            if total and delta(name, le) >= q * total:
                return bound
        return None

    batches = delta(WRITER_METRICS[2], "count")
    queue_ms = quantile(WRITER_METRICS[0], 0.99)
    return {"writes": batches,
            "mean_batch": round(delta(WRITER_METRICS[2], "sum") / batches, 1) if batches else None,
            "mean_write_ms": round(delta(WRITER_METRICS[1], "sum") / batches * 1000, 1) if batches else None,
            "queue_wait_p99_ms_at_most": queue_ms * 1000 if queue_ms is not None else None,
            "busy_share": round(delta(WRITER_METRICS[1], "sum") / window_s, 2) if window_s > 0 else None}


# --- the simulated agent ---------------------------------------------------------------------


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    heartbeats: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    downloads: int = 0
    rate_limited: int = 0  # downloads answered 429 (retried after Retry-After)
    dropped: int = 0
    restarts: int = 0
    measuring: bool = False
    body_bytes: list[int] = field(default_factory=list)  # measured heartbeats' JSON bodies
    drift_bytes: list[int] = field(default_factory=list)  # their drift entry (one model), compact JSON

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True)
class DriftModel:
    """What a package watches (the features of its signed baseline) and how this simulator draws counts
    over them: ``pvals`` holds each feature's baseline proportions, one row per feature, zero past the
    feature's own bins; ``shifted`` the same with a few input features' mass moved up."""

    package_id: str
    digest: str
    bins: tuple[int, ...]
    pvals: np.ndarray
    shifted: np.ndarray

    @classmethod
    def from_package(cls, path: Path, package_id: str) -> DriftModel | None:
        from edgemill.monitoring.features import bins_digest
        from edgemill.runtime import load

        baseline = load(path).baseline
        if baseline is None or not baseline.features:
            return None
        features = baseline.features
        width = max(f.bins for f in features)
        pvals = np.zeros((len(features), width))
        shifted = np.zeros_like(pvals)
        moved = 0
        for i, f in enumerate(features):
            counts = np.asarray(f.baseline, dtype=np.float64) + 1e-3  # a bin the baseline never saw: rare, not never
            p = counts / counts.sum()
            pvals[i, :f.bins] = p
            if f.side == "input" and f.bins >= 3 and moved < SHIFTED_FEATURES:
                q = p * np.exp(1.5 * np.linspace(-1.0, 1.0, f.bins))  # the mass moves towards the upper bins
                shifted[i, :f.bins] = q / q.sum()
                moved += 1
            else:
                shifted[i, :f.bins] = p
        return cls(package_id, bins_digest(features), tuple(f.bins for f in features), pvals, shifted)


@dataclass
class DriftCounters:
    """One loaded model's counters on a device, cumulative since ``epoch`` began (as the agent keeps them)."""

    model: DriftModel
    epoch: str
    counts: np.ndarray  # [features, widest feature's bins] int64

    def entry(self, model_name: str) -> dict:  # type: ignore[type-arg]
        rows = self.counts.tolist()
        return {"model": model_name, "package_id": self.model.package_id, "epoch": self.epoch,
                "bins": self.model.digest, "counts": [row[:b] for row, b in zip(rows, self.model.bins)]}


@dataclass
class SimDevice:
    name: str
    credential: str
    bad: bool
    shifted: bool = False  # its inputs have drifted (drift on)
    drift_from: int = 0  # the heartbeat (seq) from which it reports drift: spreads the fleet's bucket closes
    seq: int = 0
    package_id: str | None = None
    version: str | None = None
    requests: int = 0
    errors: int = 0
    drift: DriftCounters | None = None
    applied_at: dict[str, float] = field(default_factory=dict)  # package id → when its report was accepted

    def load(self, package_id: str, version: str, drift_model: DriftModel | None, rng: random.Random) -> None:
        """The agent loads a version: its counters (requests, errors, drift counts) start afresh."""
        self.package_id, self.version = package_id, version
        self.requests = self.errors = 0
        self.drift = (DriftCounters(drift_model, f"{rng.getrandbits(48):012x}",
                                    np.zeros(drift_model.pvals.shape, dtype=np.int64))
                      if drift_model is not None else None)

    def restart(self, rng: random.Random) -> None:
        """The agent restarted: every counter starts again from zero, drift under a new epoch."""
        self.requests = self.errors = 0
        if self.drift is not None:
            self.drift = DriftCounters(self.drift.model, f"{rng.getrandbits(48):012x}",
                                       np.zeros_like(self.drift.counts))

    def report(self, rng: random.Random, interval: float, draw: np.random.Generator | None = None) -> dict:  # type: ignore[type-arg]
        served = rng.randint(int(2 * interval), int(8 * interval))  # 2–8 requests a second
        failed = sum(1 for _ in range(served) if rng.random() < (0.3 if self.bad else 0.001))
        self.requests += served
        self.errors += failed
        self.seq += 1
        models = [{"name": MODEL, "version": self.version, "package_id": self.package_id}] if self.package_id else []
        p50 = rng.uniform(2.0, 4.0)
        metrics = {MODEL: {"requests": self.requests, "errors": self.errors,
                           "latency_ms": {"p50": p50, "p95": p50 * 1.8, "p99": p50 * 2.5}}} if self.package_id else {}
        drift = []
        if self.drift is not None and self.package_id is not None:
            if served > failed and draw is not None:  # the answered requests are counted, one sample each
                m = self.drift.model
                self.drift.counts += draw.multinomial(served - failed, m.shifted if self.shifted else m.pvals)
            if self.seq > self.drift_from:
                drift = [self.drift.entry(MODEL)]
        return {"device": self.name, "seq": self.seq, "models": models, "metrics": metrics, "failures": [],
                "memory": {"rss_mb": rng.uniform(80, 120)}, "capture": {"queued": rng.randint(0, 20)},
                "agent_version": "sim", "drift": drift}


async def run_device(dev: SimDevice, session: aiohttp.ClientSession, url: str, args: argparse.Namespace,
                     stats: Stats, stop: asyncio.Event, rng: random.Random, drift_models: dict[str, DriftModel],
                     draw: np.random.Generator) -> None:
    headers = {"Authorization": f"Bearer {dev.credential}"}
    post_headers = {**headers, "Content-Type": "application/json"}
    await asyncio.sleep(rng.uniform(0, args.interval))  # spread the fleet over one interval
    delay = 0.0
    while not stop.is_set():
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except asyncio.TimeoutError:
                pass
        sent = time.monotonic()
        if rng.random() < args.restart_rate:
            dev.restart(rng)
            stats.restarts += 1
        body = dev.report(rng, args.interval, draw)
        data = json.dumps(body, separators=(",", ":"))  # compact, as the agent sends it
        if rng.random() < args.drop_rate:  # lost on the way: the server never sees this sequence number
            stats.dropped += 1
            delay = args.interval
            continue
        try:
            async with session.post(f"{url}/api/v1/agent/heartbeat", data=data, headers=post_headers,
                                    params={"wait_s": str(args.long_poll)},
                                    timeout=aiohttp.ClientTimeout(total=args.long_poll + 60)) as response:
                answer = await response.json()
                held_ms = float(response.headers.get("X-Edgemill-Held-Ms", "0"))
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            stats.error(type(exc).__name__)
            delay = args.interval
            continue
        elapsed_ms = (time.monotonic() - sent) * 1000
        if status != 200:
            stats.error(f"http {status}")
            delay = args.interval
            continue
        if stats.measuring:
            stats.latencies_ms.append(max(0.0, elapsed_ms - held_ms))
            stats.heartbeats += 1
            stats.body_bytes.append(len(data))
            if body["drift"]:
                stats.drift_bytes.append(len(json.dumps(body["drift"][0], separators=(",", ":"))))
        if dev.package_id is not None:
            dev.applied_at.setdefault(dev.package_id, time.time())
        wanted = next((m for m in answer["models"] if m["name"] == MODEL), None)
        if wanted is not None and wanted["package_id"] != dev.package_id:
            try:
                async with session.get(url + wanted["download_path"], headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=120)) as response:
                    await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                stats.error(f"download {type(exc).__name__}")
                status, retry_after = 0, None
            if status == 200:
                stats.downloads += 1
                # a new model: its counters start afresh (drift under a new epoch, over its own baseline)
                dev.load(wanted["package_id"], wanted["version"],
                         drift_models.get(wanted["package_id"]) if args.drift else None, rng)
                delay = 0.0  # report the change at once, as the agent does
                continue
            if status == 429:  # the server limits downloads: come back when it says, as the agent does
                stats.rate_limited += 1
                delay = float(retry_after) if retry_after else 5.0
                continue
            stats.error(f"download http {status}")
            delay = args.interval
            continue
        # Spread as the agent spreads it (a fleet in step would otherwise stay in step).
        delay = next_heartbeat_in(sent, time.monotonic(), float(answer.get("heartbeat_interval_s", args.interval)), rng)


# --- the run ---------------------------------------------------------------------------------


async def register_all(url: str, token: str, run_id: str, count: int, concurrency: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    queue = list(range(count))
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                name = f"sim-{run_id}-{i:06d}"
                async with session.post(f"{url}/api/v1/agent/register", json={"token": token, "device": name}) as r:
                    body = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"registration of {name} failed: {r.status} {body}")
                    out.append((name, body["credential"]))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def simulate(args: argparse.Namespace, url: str, api_key: str, server_pid: int | None, data_dir: Path,
                   packages: list[Path]) -> dict:  # type: ignore[type-arg]
    from edgemill.remote import ControlPlane

    api = ControlPlane(url, api_key, timeout_s=300)
    run_id = uuid.uuid4().hex[:6]
    fleet = f"sim-{run_id}"
    api.request("POST", "/api/v1/fleets", body={"name": fleet})
    token = api.request("POST", f"/api/v1/fleets/{fleet}/registration-tokens",
                        body={"uses": args.devices, "expires_in_s": 86400})["token"]
    t0 = time.monotonic()
    creds = await register_all(url, token, run_id, args.devices, 32)
    register_s = time.monotonic() - t0
    print(f"registered {len(creds)} devices in {register_s:.1f} s ({len(creds) / register_s:.0f}/s)", flush=True)
    rng = random.Random(args.seed)
    draw = np.random.default_rng(args.seed)  # drift counts, for every device (one event loop: no contention)
    # The server opens a device's first drift bucket when its first counts arrive; a fleet that all starts
    # at once would close every bucket in the same interval. Real devices started at different times, so
    # each device here starts reporting at a random heartbeat within the first bucket: the fleet's buckets
    # then close at an even rate (devices / --drift-bucket-s a second) once --warmup covers one bucket.
    spread = max(1, int(-(-args.drift_bucket_s // args.interval)))
    devices = [SimDevice(name, cred, bad=rng.random() < args.bad_devices,
                         shifted=args.drift and rng.random() < args.drift_shifted, drift_from=rng.randrange(spread))
               for name, cred in creds]
    drift_models: dict[str, DriftModel] = {}
    stats = Stats()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    result: dict = {"devices": args.devices, "interval_s": args.interval, "long_poll_s": args.long_poll,  # type: ignore[type-arg]
                    "register_per_s": round(len(creds) / register_s, 1),
                    "drift": bool(args.drift and packages), "drift_shifted_devices": sum(d.shifted for d in devices)}
    first = None
    if packages:  # the fleet already runs v1 (deployed to all, each device installed it before the run)
        v1 = api.push(packages[0])
        v1_drift = DriftModel.from_package(packages[0], v1["package_id"]) if args.drift else None
        if v1_drift is not None:
            drift_models[v1["package_id"]] = v1_drift
            result["drift_features"] = len(v1_drift.bins)
            result["drift_bins"] = sum(v1_drift.bins)
        first = api.request("POST", "/api/v1/deployments", body={
            "model": MODEL, "version": "1.0.0", "fleet": fleet, "strategy": {"canary_percent": 100, "bake_time_s": 0}})
        for d in devices:
            d.load(v1["package_id"], "1.0.0", v1_drift, rng)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(run_device(d, session, url, args, stats, stop, random.Random(rng.random()),
                                                drift_models, draw))
                 for d in devices]
        # Thousands of live agents make full collector passes long; this process measures latency, so
        # it schedules them as the server does (between runs of the measurement, not in the middle).
        collector = CollectorSchedule(full_every_s=3600)
        collector.start()
        if first is not None:
            await wait_deployment(api, first["id"], timeout=args.interval * 4 + 120)
        warmup = args.interval if args.warmup is None else args.warmup
        print(f"warming up for {warmup:g} s", flush=True)
        await asyncio.sleep(warmup)
        size0 = database_bytes(args.db, data_dir)
        tables0 = table_bytes(args.db)
        rows0 = drift_sample_rows(args.db, data_dir)
        writer0 = await scrape_writer(session, url)
        cpu0 = (tree_cpu_seconds(server_pid) if server_pid else 0.0, postgres_cpu_seconds(), cpu_seconds(os.getpid()))
        w0 = time.monotonic()
        stats.measuring = True
        print(f"measuring for {args.duration:g} s", flush=True)
        lags = await loop_lags_ms(args.duration)
        stats.measuring = False
        window = time.monotonic() - w0
        cpu1 = (tree_cpu_seconds(server_pid) if server_pid else 0.0, postgres_cpu_seconds(), cpu_seconds(os.getpid()))
        size1 = database_bytes(args.db, data_dir)
        tables1 = table_bytes(args.db)
        rows1 = drift_sample_rows(args.db, data_dir)
        writer1 = await scrape_writer(session, url)
        lat = stats.latencies_ms
        result.update({
            "heartbeats": stats.heartbeats, "heartbeats_per_s": round(stats.heartbeats / window, 1),
            "latency_ms": {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                           "p99": round(percentile(lat, 99), 1), "max": round(max(lat), 1) if lat else None,
                           "mean": round(statistics.fmean(lat), 1) if lat else None},
            # How late this simulator's own event loop ran: a late loop adds to every latency above, so a
            # large figure here means the simulator, not the server, set the tail.
            "simulator_loop_lag_ms": {"p99": round(percentile(lags, 99), 1), "max": round(max(lags), 1)},
            "cpu_share_of_one_core": {"server": round((cpu1[0] - cpu0[0]) / window, 2) if server_pid else None,
                                      "postgres": round((cpu1[1] - cpu0[1]) / window, 2),
                                      "simulator": round((cpu1[2] - cpu0[2]) / window, 2)},
            "db_bytes_per_device_day": round((size1 - size0) / args.devices * 86400 / window),
            "db_bytes_per_device_day_by_table": {t: round((tables1[t] - tables0[t]) / args.devices * 86400 / window)
                                                 for t in tables1} or None,
            "server_heartbeat_writer": writer_summary(writer0, writer1, window),
            "heartbeat_bytes": {"mean": round(statistics.fmean(stats.body_bytes)) if stats.body_bytes else None,
                                "max": max(stats.body_bytes, default=None)},
            "drift_bytes_per_model": {"mean": round(statistics.fmean(stats.drift_bytes)) if stats.drift_bytes else None,
                                      "p50": percentile(stats.drift_bytes, 50) if stats.drift_bytes else None,
                                      "max": max(stats.drift_bytes, default=None)},
            "drift_buckets_stored": (rows1 - rows0) if rows0 is not None and rows1 is not None else None,
            "drift_buckets_per_s": (round((rows1 - rows0) / window, 1)
                                    if rows0 is not None and rows1 is not None else None),
            "errors": dict(stats.errors), "dropped": stats.dropped, "restarts": stats.restarts})
        if result["drift"]:
            result["drift_view"] = await drift_view(api, fleet, devices)
        stats.rate_limited = 0
        print("steady state: " + json.dumps(result), flush=True)
        if args.rollout:
            v2 = api.push(packages[1])
            v2_drift = DriftModel.from_package(packages[1], v2["package_id"]) if args.drift else None
            if v2_drift is not None:
                drift_models[v2["package_id"]] = v2_drift
            result["rollout"] = await timed_rollout(api, fleet, devices, args)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        collector.stop()
    result["errors"] = dict(stats.errors)
    result["downloads_rate_limited_during_rollout"] = stats.rate_limited
    return result


async def drift_view(api, fleet: str, devices: list[SimDevice]) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """What the server makes of the fleet's histograms (``GET /api/v1/drift`` for v1 over the fleet, last
    hour): its status, samples, how many devices it scores, and whether the shifted ones come out worst."""
    t0 = time.monotonic()
    try:
        body = await asyncio.to_thread(api.request, "GET", "/api/v1/drift", None, None,
                                       {"model": MODEL, "version": "1.0.0", "fleet": fleet, "window_s": 3600})
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the steady-state figures stand
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    took_ms = (time.monotonic() - t0) * 1000
    shifted = {d.name for d in devices if d.shifted}
    scored = [d for d in body.get("devices", []) if d.get("input_psi") is not None]
    top = [d["device"] for d in scored[:len(shifted)]]  # worst first
    return {"status": body.get("status"), "samples": body.get("samples"), "refused": body.get("refused"),
            "fleet_input_psi": body.get("input_psi"), "devices_scored": len(scored),
            "shifted_devices": len(shifted), "shifted_among_worst": sum(1 for name in top if name in shifted),
            "worst_input_psi": scored[0]["input_psi"] if scored else None,
            "median_input_psi": (round(statistics.median(d["input_psi"] for d in scored), 4) if scored else None),
            "query_ms": round(took_ms, 1)}


async def loop_lags_ms(duration: float, every: float = 0.05) -> list[float]:
    """Sleep ``duration`` seconds in steps of ``every``, recording how late each step woke (ms)."""
    lags: list[float] = []
    end = time.monotonic() + duration
    while (now := time.monotonic()) < end:
        await asyncio.sleep(every)
        lags.append(max(0.0, (time.monotonic() - now - every) * 1000))
    return lags or [0.0]


async def wait_deployment(api, deployment_id: int, timeout: float) -> dict:  # type: ignore[no-untyped-def,type-arg]
    # Poll the summaries (counts only), as a dashboard list would; read the detail (every device's
    # row) once at the end, so the observer does not load the server it measures.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summaries = await asyncio.to_thread(api.request, "GET", "/api/v1/deployments", None, None, {"limit": 10})
        state = next((d["state"] for d in summaries if d["id"] == deployment_id), None)
        if state in ("succeeded", "rolled_back", "superseded"):
            return await asyncio.to_thread(api.request, "GET", f"/api/v1/deployments/{deployment_id}")
        await asyncio.sleep(2.0)
    raise TimeoutError(f"deployment {deployment_id} did not finish within {timeout:g} s")


async def timed_rollout(api, fleet: str, devices: list[SimDevice], args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def,type-arg]
    print("rolling out 2.0.0 to the whole fleet", flush=True)
    started = time.time()
    created = api.request("POST", "/api/v1/deployments", body={
        "model": MODEL, "version": "2.0.0", "fleet": fleet,
        "strategy": {"canary_percent": args.canary_percent, "batch_size": args.batch_size, "bake_time_s": args.bake,
                     "gates": {"max_error_rate": 0.5}}})
    body = await wait_deployment(api, created["id"], timeout=args.interval * 10 + 600)
    waves = [e for e in body["events"] if e["kind"] == "wave_started"]
    from datetime import datetime

    last_release = datetime.fromisoformat(waves[-1]["at"]).timestamp()
    updated = [datetime.fromisoformat(d["updated_at"]).timestamp() for d in body["devices"] if d["updated_at"]]
    return {"state": body["state"], "waves": body["waves"], "devices_updated": body["counts"].get("updated", 0),
            "converged_after_last_release_s": round(max(updated) - last_release, 1) if updated else None,
            "total_s": round(max(updated) - started, 1) if updated else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=30.0, help="heartbeat interval (s), told by the server")
    parser.add_argument("--long-poll", type=float, default=25.0, help="how long a heartbeat may be held (s)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured window (s)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds between the start and the measured window (default: one interval); at least "
                             "--drift-bucket-s for drift buckets to close at their steady rate")
    parser.add_argument("--db", default=None, help="database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--server", default=None, help="use a running server (URL) instead of starting one")
    parser.add_argument("--api-key", default=os.environ.get("EDGEMILL_API_KEY"))
    parser.add_argument("--rollout", action="store_true", help="deploy v1 first, then time a rollout of v2")
    parser.add_argument("--model", action="store_true",
                        help="every device runs v1 (deployed before the run), no rollout")
    parser.add_argument("--model-features", type=int, default=32,
                        help="input columns of the simulated MLP (its baseline watches up to 32 of them, plus "
                             "2 output features)")
    parser.add_argument("--no-drift", dest="drift", action="store_false",
                        help="send no drift histograms (to compare with a run that does)")
    parser.add_argument("--drift-shifted", type=float, default=0.01,
                        help="share of devices whose inputs have drifted (default 0.01)")
    parser.add_argument("--drift-bucket-s", type=float, default=60.0,
                        help="the started server's --drift-bucket-s (default 60, so buckets close in a short run; "
                             "the server's own default is 300); with --server, say what that server uses")
    parser.add_argument("--drift-min-samples", type=int, default=100, help="the started server's --drift-min-samples")
    parser.add_argument("--canary-percent", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=0, help="devices per wave after the canary (0: the rest)")
    parser.add_argument("--bake", type=float, default=10.0, help="bake time per wave (s)")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--restart-rate", type=float, default=0.0)
    parser.add_argument("--bad-devices", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to the `edgemill server` it starts (repeat; e.g. --server-arg=--db-pool-size=4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgemill-sim-") as tmp:
        work = Path(tmp)
        packages: list[Path] = []
        server_args = ["--heartbeat-interval-s", str(args.interval), "--tick-s", "1",
                       "--drift-bucket-s", str(args.drift_bucket_s), "--drift-min-samples", str(args.drift_min_samples),
                       *args.server_arg]
        key = None
        if args.rollout or args.model:
            from edgemill.package import generate_keypair

            private, public = work / "sim.key", work / "sim.pub"
            private_pem, public_pem = generate_keypair()
            private.write_bytes(private_pem)
            public.write_bytes(public_pem)
            packages = [build_model_package(work, MODEL, v, args.model_features, private, seed=i)
                        for i, v in enumerate(("1.0.0", "2.0.0"))]
            key = public
        if args.server:
            if not args.api_key:
                parser.error("--server needs --api-key (or EDGEMILL_API_KEY)")
            result = asyncio.run(simulate(args, args.server.rstrip("/"), args.api_key, None, work, packages))
        else:
            with ServerProcess(work / "server", key, *server_args, db=args.db) as server:
                assert server.proc is not None
                result = asyncio.run(simulate(args, server.url, server.api_key, server.proc.pid, work / "server", packages))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
