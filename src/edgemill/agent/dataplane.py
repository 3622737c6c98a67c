"""The protocol-neutral data plane: every gRPC service is a thin translator over this one class.

It owns the request path (model lookup, input check, concurrency slot, compute, timing, metrics,
sampling) and delegates loading to :class:`~.models.ModelManager` and capture to the capture service.
"""

from __future__ import annotations

import logging
import os
import random
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgemillError, InputMismatchError, UserError, status_for
from ..tensors import TensorSpec
from .capture import CaptureRecord, CaptureService, CaptureStatus
from .capture.text import recordable
from .config import AgentConfig
from .metrics import AgentMetrics
from .models import LoadedModel, ModelManager

log = logging.getLogger("edgemill.agent")
_MAX_PENDING_SAMPLES = 64  # sampled captures waiting to be written; beyond this a sample is skipped


@dataclass(frozen=True)
class Timing:
    queue_us: int
    compute_us: int
    total_us: int


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    model_version: str
    timing: Timing
    capture_id: str = ""


@dataclass(frozen=True)
class ModelView:
    """What ListModels/DescribeModel/ModelMetadata report about a loaded model."""

    name: str
    version: str
    package_id: str
    backend: str
    precision: str
    target: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    signed_by: str
    loaded_unix: float
    memory_bytes: int
    requests: int
    errors: int
    in_flight: int
    package_path: str

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelView:
        model = loaded.model
        target = model.manifest.target
        return cls(name=loaded.name, version=model.version, package_id=model.package_id, backend=model.backend,
                   precision=model.manifest.precision,
                   target=str(target.get("name", "")) if isinstance(target, dict) else str(target),
                   inputs=tuple(model.inputs), outputs=tuple(model.outputs), signed_by=model.signed_by or "",
                   loaded_unix=loaded.loaded_unix, memory_bytes=loaded.memory_bytes, requests=loaded.requests,
                   errors=loaded.errors, in_flight=loaded.in_flight, package_path=str(loaded.package_path))


def _check_package_path(package_path: str) -> None:
    """Refuse, before anything reads it, a path a client names that cannot hold a package.

    A device or FIFO would never end a read (``/dev/zero``) and hold the one load slot for good; an
    empty path would mean the agent's own working directory.
    """
    if not package_path:
        raise UserError("no package path given", value=package_path,
                        fix="pass the path of a .emp file or package folder on the device")
    try:
        mode = os.stat(package_path).st_mode
    except (FileNotFoundError, ValueError):
        return  # the model manager says "not found", with its own fix
    except OSError as exc:  # name too long, a file where a folder was expected, a link loop...
        raise UserError(f"cannot use that package path ({exc.strerror})", value=package_path[:300],
                        fix="pass the path of a .emp file or package folder the agent can read") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError("not a package: neither a regular file nor a folder", value=package_path[:300],
                        fix="pass the path of a .emp file or package folder (not a device, pipe or socket)")


class DataPlane:
    def __init__(self, config: AgentConfig, models: ModelManager, metrics: AgentMetrics,
                 capture: CaptureService | None, seed: int | None = None) -> None:
        self.config = config
        self.models = models
        self.metrics = metrics
        self.capture = capture
        self._random = random.Random(seed)
        self._pending_samples = threading.BoundedSemaphore(_MAX_PENDING_SAMPLES)
        # Sampled captures are written off the request path: the fsync must not add to Predict latency.
        self._sample_writer = ThreadPoolExecutor(1, thread_name_prefix="edgemill-sample")
        self.samples_skipped_busy = 0
        self.samples_skipped_unrecordable = 0  # a tensor a record cannot hold (text too wide, odd objects)
        self._unrecordable_logged: set[str] = set()  # models already warned about
        self.ready = False

    # --- models --------------------------------------------------------------------------------

    def load_model(self, package_path: str, name: str = "", replace: bool = False) -> tuple[ModelView, list[str]]:
        _check_package_path(package_path)
        loaded, evicted = self.models.load(package_path, name=name, replace=replace)
        return ModelView.of(loaded), evicted

    def unload_model(self, name: str) -> None:
        self.models.unload(name)

    def list_models(self) -> list[ModelView]:
        return [ModelView.of(m) for m in self.models.list()]

    def describe_model(self, name: str) -> ModelView:
        return ModelView.of(self.models.get(name))

    # --- inference -----------------------------------------------------------------------------

    def predict(self, model: str, inputs: Mapping[str, np.ndarray], *, received: float, protocol: str,
                outputs: Sequence[str] = (), capture: bool = False, capture_id: str = "") -> Prediction:
        """Run ``model``. ``received`` is ``time.perf_counter()`` when the request reached the agent."""
        try:
            with self.models.use(model) as (loaded, granted):
                session = loaded.model
                started = time.perf_counter()
                try:
                    if loaded.batcher is not None:  # checked alone, computed stacked with its neighbours
                        batched = loaded.batcher.submit(session.checked(inputs))
                        result, started, finished = batched.outputs, batched.started, batched.finished
                    else:
                        result = session.run(inputs if type(inputs) is dict else dict(inputs))
                        finished = time.perf_counter()
                except EdgemillError:
                    raise
                except Exception as exc:  # the backend's own failure: name it, keep serving
                    raise UserError(f"model {model!r} failed on this input: {type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                                    fix="check the input values; the model's other requests are unaffected") from None
            if loaded.drift is not None:  # counted on everything the model computed, before any selection
                self._count_drift(loaded, inputs, result)
            if outputs:
                result = self._select(model, result, outputs)
            ids = ""
            if capture:
                ids = self.capture_data(model, capture_id, inputs, result, {}, version=session.version)
            elif self.capture is not None:
                self._maybe_sample(model, session.version, inputs, result)
            done = time.perf_counter()
            self.metrics.observe(model, protocol, done - received, finished - started, inputs)
            return Prediction(result, session.version,
                              Timing(queue_us=int((started - received) * 1e6), compute_us=int((finished - started) * 1e6),
                                     total_us=int((done - received) * 1e6)), ids)
        except EdgemillError as exc:
            self.metrics.error(model, status_for(exc).grpc_code)
            self._count_error(model)
            raise

    @staticmethod
    def _count_drift(loaded: LoadedModel, inputs: Mapping[str, np.ndarray], result: Mapping[str, np.ndarray]) -> None:
        drift = loaded.drift
        try:
            drift.observe(inputs, result)
        except Exception as exc:  # noqa: BLE001 - monitoring must never fail a prediction
            loaded.drift = None
            log.error("%s %s: drift counting failed (%s: %s) and is off for this model until it reloads",
                      loaded.name, loaded.model.version, type(exc).__name__, exc)

    def _count_error(self, model: str) -> None:
        try:
            loaded = self.models.get(model)
        except EdgemillError:
            return
        with loaded._lock:
            loaded.errors += 1

    @staticmethod
    def _select(model: str, result: dict[str, np.ndarray], wanted: Sequence[str]) -> dict[str, np.ndarray]:
        unknown = [n for n in wanted if n not in result]
        if unknown:
            raise InputMismatchError(f"model {model!r} has no output named {unknown[0]!r}", value=unknown[0],
                                     fix=f"ask for one of {sorted(result)} or for none (all outputs)")
        return {n: result[n] for n in wanted}

    # --- capture -------------------------------------------------------------------------------

    def _require_capture(self) -> CaptureService:
        if self.capture is None:
            raise UserError("capture is not enabled on this agent", fix="configure a [capture] section")
        return self.capture

    def capture_data(self, model: str, capture_id: str, inputs: Mapping[str, np.ndarray],
                     outputs: Mapping[str, np.ndarray], auxiliary: Mapping[str, bytes],
                     version: str | None = None) -> str:
        """Queue a capture durably (on disk before this returns); returns its id."""
        service = self._require_capture()
        if version is None:  # the model need not be loaded here: applications may log for any model
            try:
                version = self.models.get(model).model.version
            except EdgemillError:
                version = ""
        record = self._record(model, version, capture_id or uuid.uuid4().hex, inputs, outputs, auxiliary, False)
        service.submit(record)
        return record.capture_id

    def capture_status(self, capture_id: str) -> CaptureStatus:
        return self._require_capture().status(capture_id)

    def _record(self, model: str, version: str, capture_id: str, inputs: Mapping[str, np.ndarray],
                outputs: Mapping[str, np.ndarray], auxiliary: Mapping[str, bytes], sampled: bool) -> CaptureRecord:
        """A record of copies of the tensors (text as fixed-width unicode, see ``capture.text``)."""
        limit = int(self._require_capture().config.max_queue_mb * 2**20)

        def held(kind: str, name: str, array: np.ndarray, copy: bool) -> np.ndarray:
            array = np.asarray(array)
            if array.dtype.hasobject:
                return recordable(kind, name, array, limit)  # a new array already
            return np.array(array, copy=True) if copy else array

        return CaptureRecord(capture_id=capture_id, model=model, model_version=version,
                             device=self.config.device.name, created_unix=time.time(),
                             inputs={k: held("input", k, v, True) for k, v in inputs.items()},
                             outputs={k: held("output", k, v, False) for k, v in outputs.items()},
                             auxiliary=dict(auxiliary), sampled=sampled)

    def _maybe_sample(self, model: str, version: str, inputs: Mapping[str, np.ndarray],
                      outputs: Mapping[str, np.ndarray]) -> None:
        rate = self.config.sample_rate(model)
        if rate <= 0.0 or self._random.random() >= rate:
            return
        service = self.capture
        assert service is not None
        if not self._pending_samples.acquire(blocking=False):
            self.samples_skipped_busy += 1  # the writer is behind; the disk queue is the next limit
            return
        try:
            record = self._record(model, version, uuid.uuid4().hex, inputs, outputs, {}, True)
        except EdgemillError as exc:  # a sample never fails a prediction: skipped, counted, said once per model
            self._pending_samples.release()
            self.samples_skipped_unrecordable += 1
            if model not in self._unrecordable_logged:
                self._unrecordable_logged.add(model)
                log.warning("%s: sampled captures skipped (counted as skipped_unrecordable): %s", model, exc)
            return

        def write() -> None:
            try:
                service.offer_sample(lambda: record)
            except Exception as exc:  # noqa: BLE001 - a failed sample never fails a prediction
                log.warning("sampled capture for %s not written: %s", model, exc)
            finally:
                self._pending_samples.release()

        self._sample_writer.submit(write)

    def close(self) -> None:
        self._sample_writer.shutdown(wait=True)
