"""Per-model metrics: Prometheus text on a local port, and a snapshot for heartbeats.

Counts, errors by gRPC code, latency histograms (agent processing time, model compute time) and
input statistics per feature. One registry per agent, so tests can run several agents in a process.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .input_stats import InputStats

# 50 us .. 10 s: edge models span a tiny MLP to a detector on a weak CPU.
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
COLD_START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
RECENT = 1024  # latencies kept per model for the heartbeat's percentiles


class AgentMetrics:
    def __init__(self, input_window: int = 1000, max_features: int = 64) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter("edgemill_agent_requests", "Predict calls per model and protocol",
                                 ["model", "protocol"], registry=self.registry)
        self._errors = Counter("edgemill_agent_errors", "Failed calls per model and gRPC status code",
                               ["model", "code"], registry=self.registry)
        self._latency = Histogram("edgemill_agent_request_seconds",
                                  "Agent processing time per Predict (queue + compute + encode)",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._compute = Histogram("edgemill_agent_compute_seconds", "Model compute time per Predict",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._cold_starts = Counter("edgemill_agent_cold_starts", "Loads a Predict triggered (the model had been "
                                    "evicted)", ["model"], registry=self.registry)
        self._cold_start_seconds = Histogram("edgemill_agent_cold_start_seconds",
                                             "Time a cold start took: verify, load, fit into the budget",
                                             ["model"], buckets=COLD_START_BUCKETS, registry=self.registry)
        self._batch_rows = Histogram("edgemill_agent_batch_rows", "Rows per backend call of a batched model",
                                     ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self._input_window = input_window
        self._max_features = max_features
        self._inputs: dict[str, InputStats] = {}
        self._recent: dict[str, deque[float]] = {}
        self._counts: dict[str, list[int]] = {}  # model -> [requests, errors]
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}  # labelled metrics, looked up once
        self._lock = threading.Lock()
        self.registry.register(_InputStatsCollector(self))

    def _model(self, model: str) -> tuple[InputStats, deque[float], list[int]]:
        stats = self._inputs.get(model)
        if stats is None:
            with self._lock:
                stats = self._inputs.setdefault(model, InputStats(self._input_window, self._max_features))
                self._recent.setdefault(model, deque(maxlen=RECENT))
                self._counts.setdefault(model, [0, 0])
        return stats, self._recent[model], self._counts[model]

    def observe(self, model: str, protocol: str, total_s: float, compute_s: float,
                inputs: Mapping[str, np.ndarray]) -> None:
        stats, recent, counts = self._model(model)
        children = self._children.get((model, protocol))
        if children is None:
            children = self._children.setdefault((model, protocol), (
                self._requests.labels(model, protocol), self._latency.labels(model), self._compute.labels(model)))
        children[0].inc()
        children[1].observe(total_s)
        children[2].observe(compute_s)
        recent.append(total_s)
        counts[0] += 1
        stats.add(inputs)

    def cold_start(self, model: str, seconds: float) -> None:
        self._cold_starts.labels(model).inc()
        self._cold_start_seconds.labels(model).observe(seconds)

    def batch(self, model: str, rows: int) -> None:
        self._batch_rows.labels(model).observe(rows)

    def error(self, model: str, code: str) -> None:
        self._errors.labels(model or "-", code).inc()
        if model:
            self._model(model)[2][1] += 1

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        """Expose more metrics computed at scrape time (capture queue, memory) from ``collect``."""
        self.registry.register(_Callback(collect))

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, address: str) -> Any:
        host, _, port = address.rpartition(":")
        server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        return server

    def snapshot(self) -> dict[str, Any]:
        """Per model: requests, errors, latency percentiles (ms) over the last requests, input stats."""
        with self._lock:
            models = list(self._inputs)
        out: dict[str, Any] = {}
        for model in models:
            stats, recent, counts = self._model(model)
            latencies = np.array(list(recent)) * 1e3
            out[model] = {
                "requests": counts[0], "errors": counts[1],
                "latency_ms": ({f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 95, 99)}
                               if len(latencies) else {}),
                "inputs": stats.stats(),
            }
        return out


class _InputStatsCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily("edgemill_agent_input_feature",
                                   "Statistics of recent inputs per feature (window of requests)",
                                   labels=["model", "input", "feature", "stat"])
        with self._metrics._lock:
            items = list(self._metrics._inputs.items())
        for model, stats in items:
            for name, by_stat in stats.stats().items():
                for stat, values in by_stat.items():
                    if stat == "count":
                        continue
                    for feature, value in enumerate(values):
                        family.add_metric([model, name, str(feature), stat], value)
        yield family

    def describe(self) -> Iterable[Any]:
        return []


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Any]:
        return self._collect()

    def describe(self) -> Iterable[Any]:
        return []
