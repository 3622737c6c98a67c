"""The agent process: wires config, models, metrics, capture, control-plane sync and the gRPC server;
stops gracefully.

Components beside the data plane (capture uploader, control-plane sync) each have start()/stop(), so
adding one is adding it to :meth:`Agent.start` and :meth:`Agent.stop`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from .. import __version__
from .capture import CaptureService
from .capture.server_store import ServerStore
from .config import AgentConfig
from .dataplane import DataPlane
from .fastpath import FastPathServer
from .grpc.server import build_server
from .metrics import AgentMetrics
from .models import ModelManager
from .sync import Sync

log = logging.getLogger("edgemill.agent")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # metrics of requests naming no valid model stay local


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics(config.metrics.input_stats_window, config.metrics.max_features)
        self.started_unix = time.time()
        self.models = ModelManager(config.models, drift_window_s=config.metrics.drift_window_s if config.metrics.drift
                                   else None, on_cold_start=self.metrics.cold_start,
                                   on_batch=self.metrics.batch)
        self.sync = Sync(config, self.models, report=self.heartbeat_payload) if config.server.url else None
        store = ServerStore(self.sync) if self.sync is not None and config.capture.store == "server" else None
        self.capture = CaptureService(config.capture, device=config.device.name, store=store)
        self.dataplane = DataPlane(config, self.models, self.metrics, self.capture)
        self.metrics.add_collector(self._agent_metrics)
        self._server: Any = None
        self._metrics_server: Any = None
        self.addresses: list[str] = []
        self._fast: FastPathServer | None = None
        self._stopped = threading.Event()

    def start(self) -> list[str]:
        """Start serving; returns the addresses bound (``host:port`` and ``unix:path``)."""
        self.capture.start()
        if self.sync is not None:  # first: the packages it applied before serve even when offline
            self.sync.start()
        if self.config.models.standalone:
            loaded = self.models.load_directory(self.config.models.directory,
                                                skip=self.sync.owns if self.sync is not None else None)
            log.info("standalone: loaded %d model(s) from %s", len(loaded), self.config.models.directory)
        self._server, self.addresses = build_server(self.config.listen, self.dataplane)
        self._server.start()
        if self.config.listen.unix_socket is not None:
            try:
                os.chmod(self.config.listen.unix_socket, 0o660)  # the agent's user and group
            except OSError as exc:
                log.warning("cannot restrict the Unix socket's permissions: %s", exc)
        fast_socket = self.config.listen.fast_socket_path()
        if fast_socket is not None:
            self._fast = FastPathServer(fast_socket, self.dataplane, self.config.listen.max_message_mb * 2**20,
                                        max_connections=self.config.listen.max_workers * 16)
            self.addresses.append(self._fast.start())
        if self.config.listen.metrics_address:
            self._metrics_server = self.metrics.serve(self.config.listen.metrics_address)
            self.addresses.append(f"http://{self.config.listen.metrics_address}/metrics")
        self.dataplane.ready = True
        return self.addresses

    def stop(self, grace_s: float = 10.0) -> None:
        """In-flight requests finish (up to ``grace_s``), then captures are flushed and kept on disk."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.sync is not None:  # no swap starts while requests drain
            self.sync.stop()
        self.dataplane.ready = False
        if self._fast is not None:
            self._fast.stop()
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 1)
        self.dataplane.close()
        self.capture.stop(flush_timeout=grace_s)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("agent stopped")

    def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()

        def handle(signum: int, frame: Any) -> None:
            log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
            done.set()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not done.wait(1.0):
                pass
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.stop()

    def _agent_metrics(self) -> Iterable[Any]:
        used = GaugeMetricFamily("edgemill_agent_memory_used_bytes", "Memory taken by loaded models")
        used.add_metric([], self.models.used_bytes())
        yield used
        budget = GaugeMetricFamily("edgemill_agent_memory_budget_bytes", "The models' memory budget")
        budget.add_metric([], self.models.budget_bytes)
        yield budget
        loaded = GaugeMetricFamily("edgemill_agent_models_loaded", "Models loaded now")
        loaded.add_metric([], len(self.models.list()))
        yield loaded
        yield from self._drift_metrics()
        capture = GaugeMetricFamily("edgemill_agent_capture", "Capture queue state", labels=["stat"])
        for key, value in self.capture.stats().items():
            capture.add_metric([key], float(value))
        capture.add_metric(["skipped_busy"], float(self.dataplane.samples_skipped_busy))
        capture.add_metric(["skipped_unrecordable"], float(self.dataplane.samples_skipped_unrecordable))
        yield capture
        if self.sync is not None:
            status = self.sync.status()
            sync = GaugeMetricFamily("edgemill_agent_control_plane", "Control-plane sync state", labels=["stat"])
            for key in ("registered", "reachable", "failed_attempts", "seq", "heartbeats"):
                sync.add_metric([key], float(status[key]))
            sync.add_metric(["apply_failures"], float(len(status["failures"])))
            yield sync

    def _drift_metrics(self) -> Iterable[Any]:
        """Per loaded model and baseline feature: PSI and Jensen-Shannon distance of the device's sliding
        window against the package baseline (a feature with nothing counted yet is left out)."""
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily("edgemill_agent_drift_psi", "Population stability index of the recent window "
                                "against the package baseline (<0.1 stable, 0.1-0.25 moderate, >0.25 significant)",
                                labels=labels)
        js = GaugeMetricFamily("edgemill_agent_drift_js_distance", "Jensen-Shannon distance (0-1) of the recent "
                               "window against the package baseline", labels=labels)
        samples = GaugeMetricFamily("edgemill_agent_drift_samples", "Samples counted for drift since the model loaded",
                                    labels=["model", "version"])
        for loaded in self.models.list():
            if loaded.drift is None:
                continue
            version = loaded.model.version
            samples.add_metric([loaded.name, version], float(loaded.drift.samples))
            for key, scores in loaded.drift.drift().items():
                if scores["psi"] is not None and scores["js"] is not None:
                    psi.add_metric([loaded.name, version, key], scores["psi"])
                    js.add_metric([loaded.name, version, key], scores["js"])
        yield psi
        yield js
        yield samples

    def heartbeat_payload(self) -> dict[str, Any]:
        """What each heartbeat reports (``HeartbeatIn`` less device, seq and failures, which the sync
        adds): loaded models, per-model requests/errors/latency percentiles, memory, capture queue."""
        # The snapshot counts successes and errors apart; the control plane's error rate is errors / requests.
        metrics = {name: {"requests": m["requests"] + m["errors"], "errors": m["errors"], "latency_ms": m["latency_ms"]}
                   for name, m in self.metrics.snapshot().items() if _NAME.fullmatch(name)}
        capture = {key: float(value) for key, value in self.capture.stats().items()}
        capture["skipped_busy"] = float(self.dataplane.samples_skipped_busy)
        capture["skipped_unrecordable"] = float(self.dataplane.samples_skipped_unrecordable)
        return {
            "agent_started_at": self.started_unix, "agent_version": __version__,
            "models": [{"name": v.name, "version": v.version, "package_id": v.package_id}
                       for v in self.dataplane.list_models()],
            "memory": {"used_bytes": float(self.models.used_bytes()), "budget_bytes": float(self.models.budget_bytes)},
            "metrics": metrics, "capture": capture, "drift": self._drift_report(),
        }

    def _drift_report(self) -> list[dict[str, Any]]:
        """Per model with a baseline: its drift counts since the window began (cumulative under ``epoch``,
        so a lost heartbeat loses nothing), in the baseline's feature order, with the digest of the bins."""
        report = []
        for loaded in self.models.list():
            window = loaded.drift
            if window is None or not _NAME.fullmatch(loaded.name):
                continue
            report.append({"model": loaded.name, "package_id": loaded.model.package_id, "epoch": window.epoch,
                           "bins": window.bins_digest, "counts": window.totals_in_order()})
        return report
