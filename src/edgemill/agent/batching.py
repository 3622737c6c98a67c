"""Dynamic batching: concurrent requests to one model stacked along the batch dimension, run in one
backend call, and split back, each answer with its own queue and compute time.

One thread per batched model forms and runs the batches. A batch goes as soon as its rows reach
``max_batch_size`` or one of the ``preferred_batch_sizes``, or when its oldest request has waited
``max_queue_delay_us``: no request waits longer than that for others (it may still wait for the batch
before it to finish computing, as it would wait for a concurrency slot without batching). Requests are
stacked only with requests of the same input dtypes and per-row shapes; each request's inputs are
checked on their own before queueing, so a malformed request fails alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgemillError, ModelCheckError
from ..tensors import TensorSpec
from .config import BatchingPolicy

log = logging.getLogger("edgemill.agent")
Arrays = dict[str, np.ndarray]


def check_batchable(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Refuse a batching policy for a model whose tensors do not all have a dynamic first dimension."""
    fixed = [s for s in (*inputs, *outputs) if not s.shape or isinstance(s.shape[0], int)]
    if fixed:
        spec = fixed[0]
        raise ModelCheckError(f"model {name!r} cannot be batched: {spec.name!r} has no dynamic batch dimension",
                              value=f"{spec.name}{spec.shape_text()}",
                              fix=f"remove [models.batching.{name}] from the agent config, or compile the model "
                                  "with a dynamic first dimension (e.g. --input NAME:batchx...)")


@dataclass(frozen=True)
class BatchedResult:
    outputs: Arrays
    started: float  # perf_counter() when its batch started computing
    finished: float


@dataclass
class _Request:
    inputs: Arrays
    rows: int
    key: tuple[tuple[str, str, tuple[int, ...]], ...]  # what must match to stack: names, dtypes, row shapes
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    result: BatchedResult | None = None
    error: Exception | None = None

    def answer(self, result: BatchedResult | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class DynamicBatcher:
    def __init__(self, name: str, policy: BatchingPolicy, run: Callable[[Arrays], Arrays],
                 observe: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.policy = policy
        self._run = run
        self._observe = observe
        self._delay = policy.max_queue_delay_us / 1e6
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._unbatchable = False  # an output came back not batch-major: every request runs alone
        self.batches = 0  # backend calls made
        self.requests = 0  # requests answered through them
        self._thread = threading.Thread(target=self._loop, name=f"edgemill-batch-{name}", daemon=True)
        self._thread.start()

    def submit(self, inputs: Mapping[str, np.ndarray]) -> BatchedResult:
        """Run ``inputs`` (checked already) in the next batch that can hold them; blocks until done."""
        arrays = dict(inputs)
        first = next(iter(arrays.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        if self._unbatchable or rows > self.policy.max_batch_size or rows == 0 or any(
                a.ndim == 0 or a.shape[0] != rows for a in arrays.values()):
            return self._alone(arrays)  # too large to share a batch, or not batch-major: as without batching
        key = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in arrays.items()))
        request = _Request(arrays, rows, key, time.perf_counter())
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._queue.append(request)
                self._cond.notify()
        if closed:  # the model was replaced or unloaded while this request held it
            return self._alone(arrays)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _alone(self, inputs: Arrays) -> BatchedResult:
        started = time.perf_counter()
        outputs = self._run(inputs)
        return BatchedResult(outputs, started, time.perf_counter())

    def close(self) -> None:
        """Stop taking requests; those queued are still run."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    # --- the batching thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                taken, rows = self._compatible(first)
                deadline = first.arrived + self._delay
                now = time.perf_counter()
                if rows >= self.policy.max_batch_size or rows in self._preferred or now >= deadline or self._closed:
                    for request in taken:
                        self._queue.remove(request)
                    return taken
                self._cond.wait(deadline - now)

    def _compatible(self, first: _Request) -> tuple[list[_Request], int]:
        """The queued requests, oldest first, that stack with ``first`` within max_batch_size."""
        taken, rows = [], 0
        for request in self._queue:
            if request.key == first.key and rows + request.rows <= self.policy.max_batch_size:
                taken.append(request)
                rows += request.rows
        return taken, rows

    def _execute(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        rows = sum(r.rows for r in batch)
        try:
            if len(batch) == 1:
                outputs = [self._run(batch[0].inputs)]
            else:
                names = list(batch[0].inputs)
                stacked = {n: np.concatenate([r.inputs[n] for r in batch]) for n in names}
                outputs = self._split(self._run(stacked), batch, rows)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the thread lives
            if isinstance(exc, _NotBatchMajor) and not self._unbatchable:
                self._unbatchable = True
                log.warning("%s: output %r does not come back with one row per input row, so its requests are "
                            "no longer batched (remove [models.batching.%s])", self.name, str(exc), self.name)
            if len(batch) > 1 and not isinstance(exc, EdgemillError):
                self._one_by_one(batch)  # a batch-level failure must not be blamed on every request
                return
            for request in batch:
                request.answer(error=exc)
            return
        finished = time.perf_counter()
        self.batches += 1
        self.requests += len(batch)
        if self._observe is not None:
            self._observe(rows)
        for request, result in zip(batch, outputs):
            request.answer(BatchedResult(result, started, finished))

    def _split(self, outputs: Arrays, batch: list[_Request], rows: int) -> list[Arrays]:
        wrong = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != rows]
        if wrong:
            raise _NotBatchMajor(wrong[0])
        bounds = np.cumsum([0] + [r.rows for r in batch])
        return [{n: a[bounds[i]:bounds[i + 1]] for n, a in outputs.items()} for i in range(len(batch))]

    def _one_by_one(self, batch: list[_Request]) -> None:
        for request in batch:
            try:
                request.answer(self._alone(request.inputs))
            except Exception as exc:  # noqa: BLE001 - handed to its own request
                request.answer(error=exc)
        self.batches += len(batch)
        self.requests += len(batch)


class _NotBatchMajor(Exception):
    """An output whose first dimension is not the batch's rows: the batch is run request by request."""
