"""Loaded models: verify, load, unload and swap within a memory budget; count use for LRU eviction.

A swap is two steps, :meth:`ModelManager.prepare` (verify and load beside the serving version) and
:meth:`ModelManager.install` (serve it), so the control-plane sync can health-check in between.

A model evicted to make room (or a package of the models directory that did not fit at start) is
remembered: the next request for it loads it again, verified as at first, within the budget (a cold
start). Concurrent first requests wait for one load. A model unloaded on purpose is forgotten.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import (BackendError, EdgemillError, ModelAlreadyLoadedError, ModelNotFoundError, RefusalReason,
                      ResourceExhaustedError, UserError, VerificationError, first_line)
from ..monitoring.window import FeatureWindow
from ..package.keys import PublicKey, load_public_keys
from ..package.store import read_verified_model
from ..runtime.session import Model
from .batching import DynamicBatcher, check_batchable
from .budget import Resident, choose_evictions
from .config import ModelsConfig

log = logging.getLogger("edgemill.agent")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MB = 1024 * 1024


@dataclass
class LoadedModel:
    """One model in memory, with what the budget, the LRU choice and DescribeModel need."""

    name: str
    model: Model
    package_path: Path
    memory_bytes: int
    loaded_unix: float
    last_used: float
    gate: threading.BoundedSemaphore
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    drift: FeatureWindow | None = None  # counts the baseline's features (None: no baseline, or drift off)
    batcher: DynamicBatcher | None = None  # [models.batching.NAME]: requests run stacked, not one by one
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def resident(self) -> Resident:
        return Resident(self.name, self.memory_bytes, self.last_used, self.in_flight)

    def retire(self) -> None:
        """No longer served (replaced, unloaded, evicted): its batcher runs what it holds, then stops."""
        if self.batcher is not None:
            self.batcher.close()


@dataclass(frozen=True)
class Evicted:
    """A model out of memory that the next request for it loads again: its package, and which one."""

    path: Path
    package_id: str  # the load checks the file is still this package


@dataclass(frozen=True)
class Prepared:
    """A verified model loaded beside the serving one, not yet serving (see :meth:`ModelManager.prepare`)."""

    loaded: LoadedModel
    replaces: LoadedModel | None  # what served under the name when it was prepared
    evicted: list[str]

    @property
    def name(self) -> str:
        return self.loaded.name


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: no cheap current RSS; the file size stands in
        return 0


def is_package(entry: Path) -> bool:
    """A package as the models directory holds them: a ``.emp`` file or a folder with a manifest."""
    return entry.suffix == ".emp" or (entry.is_dir() and (entry / "manifest.json").exists())


class ModelManager:
    """Thread-safe registry of loaded models. Loads are serialized (one verification and one memory
    measurement at a time); requests on loaded models never wait for a load."""

    def __init__(self, config: ModelsConfig, clock: Callable[[], float] = time.monotonic,
                 drift_window_s: float | None = 600.0,
                 on_cold_start: Callable[[str, float], None] | None = None,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        """``drift_window_s``: the sliding window of each model's drift counts (None: no drift counting).
        ``on_cold_start(name, seconds)``: called after each load a request triggered; ``on_batch(name,
        rows)``: after each backend call of a batched model."""
        self.config = config
        self._drift_window_s = drift_window_s
        self.budget_bytes = int(config.memory_budget_mb * MB)
        self._clock = clock
        self._keys: list[PublicKey] | None = None if config.allow_unsigned and not config.trusted_keys \
            else load_public_keys([str(k) for k in config.trusted_keys])
        if self._keys is None:
            log.warning("models are checked for integrity only, not signatures (allow_unsigned, no trusted_keys): "
                        "set [models] trusted_keys before this device joins a fleet")
        self._models: dict[str, LoadedModel] = {}
        self._pending: list[LoadedModel] = []  # prepared, not yet installed: they hold memory too
        self._lock = threading.Lock()       # guards _models, _pending, _evicted and _cold_locks
        self._load_lock = threading.Lock()  # one load at a time
        self._evicted: dict[str, Evicted] = {}  # loaded again by the next request for it
        self._cold_locks: dict[str, threading.Lock] = {}  # one cold start per name at a time
        self._on_cold_start = on_cold_start
        self._on_batch = on_batch
        self.cold_starts = 0

    # --- queries -------------------------------------------------------------------------------

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            loaded = self._models.get(name)
            if loaded is None:
                raise self._not_found(name)
            return loaded

    def evicted(self) -> dict[str, Evicted]:
        """Models a request would load again (evicted, or not fitting at start), by name."""
        with self._lock:
            return dict(self._evicted)

    def get_or_load(self, name: str) -> LoadedModel:
        """The loaded model, or, for one that was evicted, the model loaded again now (a cold start:
        verified and fitted into the budget like any load; concurrent callers wait for the one load)."""
        with self._lock:
            loaded = self._models.get(name)
            if loaded is not None:
                return loaded
            if name not in self._evicted:
                raise self._not_found(name)
            gate = self._cold_locks.setdefault(name, threading.Lock())
        with gate:
            with self._lock:
                loaded = self._models.get(name)
                record = self._evicted.get(name)
            if loaded is not None:  # another request loaded it while this one waited
                return loaded
            if record is None:  # unloaded on purpose meanwhile
                raise self._not_found(name)
            started = time.perf_counter()
            prepared = self.prepare(record.path, name, replace=True, package_id=record.package_id)
            self.install(prepared)
            loaded = prepared.loaded
            seconds = time.perf_counter() - started
            with self._lock:
                self.cold_starts += 1
            log.info("cold start: loaded %s again for a request in %.0f ms", name, seconds * 1e3)
            if self._on_cold_start is not None:
                self._on_cold_start(name, seconds)
            return loaded

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.name)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._models.values())

    def reserved_bytes(self) -> int:
        """Memory held by prepared models not yet installed (a swap in progress)."""
        with self._lock:
            return sum(m.memory_bytes for m in self._pending)

    def _not_found(self, name: str) -> ModelNotFoundError:
        known = ", ".join(sorted(self._models)) or "none"
        return ModelNotFoundError("no model loaded under that name", value=name,
                                  fix=f"load it first (LoadModel) or use a loaded one: {known}")

    # --- use -----------------------------------------------------------------------------------

    @contextmanager
    def use(self, name: str) -> Iterator[tuple[LoadedModel, float]]:
        """Hold ``name`` for one request: counts it in flight (so it is not evicted) and waits for a
        free slot of its concurrency limit. Yields the model and when the slot was granted. A model
        that was evicted is loaded again first (:meth:`get_or_load`)."""
        loaded = self.get_or_load(name)
        with loaded._lock:
            loaded.in_flight += 1
        try:
            if loaded.batcher is not None:  # its batches run one at a time: no slot to wait for
                yield loaded, time.perf_counter()
                return
            loaded.gate.acquire()
            try:
                yield loaded, time.perf_counter()
            finally:
                loaded.gate.release()
        finally:
            with loaded._lock:
                loaded.in_flight -= 1
                loaded.requests += 1
                loaded.last_used = self._clock()

    # --- load / unload -------------------------------------------------------------------------

    def load(self, package_path: str | os.PathLike[str], name: str = "", replace: bool = False,
             allow_rollback: bool = False, remember_if_full: bool = False) -> tuple[LoadedModel, list[str]]:
        """Verify the package, make room, load it and serve it. Returns the model and the names evicted.

        ``replace``: a model already loaded under ``name`` is swapped for the new one once the new one
        has loaded (requests in flight finish on the old one); its version must not be older unless
        ``allow_rollback``. :meth:`prepare` then :meth:`install`, with nothing in between.
        """
        prepared = self.prepare(package_path, name, replace=replace, allow_rollback=allow_rollback,
                                remember_if_full=remember_if_full)
        self.install(prepared)
        return prepared.loaded, prepared.evicted

    def prepare(self, package_path: str | os.PathLike[str], name: str = "", *, replace: bool = False,
                allow_rollback: bool = False, package_id: str | None = None,
                remember_if_full: bool = False) -> Prepared:
        """Verify the package and load it beside whatever serves under ``name``, without serving it.

        The memory budget counts the old and the new version together (both are in memory until the
        swap), and the prepared model keeps its share reserved until :meth:`install` or
        :meth:`discard`. ``package_id``: refuse a package whose id is not this one (a download must be
        the package the control plane ordered). ``remember_if_full``: a package refused for want of
        memory is remembered, so a request for it loads it once there is room.
        """
        path = Path(package_path)
        if not path.exists():
            raise UserError("package not found on the device", value=str(path),
                            fix="give a path the agent can read (relative paths are relative to the agent's directory)")
        with self._load_lock:
            with self._lock:
                old = self._models.get(name) if name else None
            installed = old.model.version if (old is not None and replace) else None
            verified, files = read_verified_model(path, self._keys, installed, allow_rollback)
            if package_id is not None and verified.package_id != package_id:
                raise VerificationError(RefusalReason.MANIFEST_MODIFIED, "package is not the one ordered",
                                        value=verified.package_id[:12], expected=package_id[:12],
                                        fix="the server sent another package than it announced; check its registry")
            name = name or verified.manifest.name
            if not _NAME.fullmatch(name):
                raise UserError("bad model name", value=name,
                                fix="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
            policy = self.config.batching.get(name)
            if policy is not None:  # before any byte reaches a backend
                check_batchable(name, list(verified.manifest.inputs), list(verified.manifest.outputs))
            with self._lock:
                old = self._models.get(name)
            if old is not None and not replace:
                raise ModelAlreadyLoadedError("a model is already loaded under that name", value=name,
                                              fix="unload it first, load under another name, or ask for a replace")
            estimate = sum(len(b) for b in files.values())
            loaded: LoadedModel | None = None
            try:
                evicted = self._make_room(estimate, keep=name)
                before = _rss_bytes()
                threads = self.config.threads or None
                model = Model(verified, files, threads)
                measured = max(estimate, _rss_bytes() - before)
                loaded = LoadedModel(name=name, model=model, package_path=path.resolve(), memory_bytes=measured,
                                     loaded_unix=time.time(), last_used=self._clock(),
                                     gate=threading.BoundedSemaphore(self.config.max_concurrency),
                                     drift=self._drift_window(model, name))
                if policy is not None:
                    observe = self._on_batch
                    loaded.batcher = DynamicBatcher(name, policy, model.run_checked,
                                                    None if observe is None else lambda rows: observe(name, rows))
                # What the backend really took decides (it may exceed the files); held from here to install.
                evicted += self._make_room(measured, keep=name, reserve=loaded)
            except ResourceExhaustedError:
                if loaded is not None:
                    loaded.retire()
                if remember_if_full:  # a request for it tries again once room is free
                    with self._lock:
                        self._evicted.setdefault(name, Evicted(path.resolve(), verified.package_id))
                raise
            return Prepared(loaded, old, evicted)

    def _drift_window(self, model: Model, name: str) -> FeatureWindow | None:
        if self._drift_window_s is None:
            return None
        try:
            baseline = model.baseline
        except ValueError as exc:  # signed, so a compiler bug: serve the model, say why drift is missing
            log.warning("%s %s: its drift baseline is unreadable (%s); serving it without drift", name, model.version, exc)
            return None
        return FeatureWindow(baseline.features, window_s=self._drift_window_s) if baseline and baseline.features else None

    def install(self, prepared: Prepared) -> LoadedModel | None:
        """Serve the prepared model under its name at once; returns the model it replaced, if any.

        Requests already holding the old model finish on it; every later request gets the new one.
        """
        loaded = prepared.loaded
        with self._lock:
            self._drop_pending(loaded)
            old = self._models.get(loaded.name)
            self._models[loaded.name] = loaded
            self._evicted.pop(loaded.name, None)
        if old is not None and old is not loaded:
            old.retire()
        model = loaded.model
        log.info("loaded %s %s (%s, %.1f MB)%s", loaded.name, model.version, model.backend,
                 loaded.memory_bytes / MB, f", replacing {old.model.version}" if old is not None else "")
        return old

    def discard(self, prepared: Prepared) -> None:
        """Drop a prepared model that will not be installed (failed health check); frees its reservation."""
        with self._lock:
            self._drop_pending(prepared.loaded)
        prepared.loaded.retire()

    def _drop_pending(self, loaded: LoadedModel) -> None:
        self._pending = [m for m in self._pending if m is not loaded]

    def _make_room(self, needed: int, keep: str, reserve: LoadedModel | None = None) -> list[str]:
        """Evict (or refuse) so that ``needed`` more bytes fit beside every loaded and prepared model;
        the model under ``keep`` counts but is never evicted (it serves until a swap). ``reserve`` is
        added to the prepared models in the same step, so no other load can take its room."""
        with self._lock:
            swapping = self._models[keep].memory_bytes if keep in self._models else 0
            fixed = swapping + sum(m.memory_bytes for m in self._pending)
            residents = [m.resident() for n, m in self._models.items() if n != keep]
            used = fixed + sum(r.memory_bytes for r in residents)
            if self.config.when_over_budget == "refuse":
                if used + needed > self.budget_bytes:
                    raise self._over_budget(keep, needed, used, swapping=swapping)
                chosen: list[str] = []
            else:
                found = choose_evictions(residents, needed + fixed, self.budget_bytes)
                if found is None:
                    raise self._over_budget(keep, needed, used, busy=[r.name for r in residents if r.in_flight],
                                            swapping=swapping)
                chosen = found
            for victim in chosen:
                gone = self._models.pop(victim)
                gone.retire()
                self._evicted[victim] = Evicted(gone.package_path, gone.model.package_id)
                log.info("evicted idle model %s to make room for %s (a request for it loads it again)", victim, keep)
            if reserve is not None:
                self._pending.append(reserve)
            return chosen

    def _over_budget(self, name: str, needed: int, used: int, busy: list[str] | None = None,
                     swapping: int = 0) -> ResourceExhaustedError:
        detail = f"; busy models cannot be evicted: {', '.join(busy)}" if busy else ""
        if swapping:
            detail += (f"; a replace holds both versions until the swap, and the serving one takes "
                       f"{swapping / MB:.1f} MB of that")
        fix = "unload a model, raise [models] memory_budget_mb, or set when_over_budget = 'evict-lru'"
        if swapping:
            fix = ("raise [models] memory_budget_mb so the old and the new version fit together, "
                   "or unload the old version first")
        return ResourceExhaustedError(
            f"model {name!r} needs {needed / MB:.1f} MB but {used / MB:.1f} of {self.budget_bytes / MB:.1f} MB "
            f"are in use{detail}", value=f"memory_budget_mb = {self.config.memory_budget_mb:g}", fix=fix)

    def unload(self, name: str) -> LoadedModel | None:
        """Stop serving ``name`` (and forget it: no request loads it again). Returns the model, or None
        when it had been evicted already."""
        with self._lock:
            loaded = self._models.pop(name, None)
            forgotten = self._evicted.pop(name, None)
            if loaded is None and forgotten is None:
                raise self._not_found(name)
        if loaded is not None:
            loaded.retire()
        log.info("unloaded %s", name)
        return loaded  # requests still holding it finish; the session is freed with the last reference

    def load_directory(self, directory: Path, skip: Callable[[Path], bool] | None = None) -> list[str]:
        """Standalone mode: load every package (``*.emp`` file or package folder) in ``directory``
        except those ``skip`` claims (the control-plane sync loads its own). A package that fails is
        logged and skipped so the others still serve."""
        loaded: list[str] = []
        if not directory.is_dir():
            log.warning("models directory %s does not exist; starting with no models", directory)
            return loaded
        for entry in sorted(directory.iterdir()):
            if not is_package(entry) or (skip is not None and skip(entry)):
                continue
            try:
                model, _ = self.load(entry, remember_if_full=True)  # one that does not fit loads on request
                loaded.append(model.name)
            except ResourceExhaustedError as exc:
                log.warning("not loading %s now: %s. A Predict for it loads it once there is room", entry, exc)
            except EdgemillError as exc:  # refusals included: the message names the reason
                log.error("not loading %s: %s", entry, exc)
            except Exception as exc:  # noqa: BLE001 - one bad package must not stop the agent
                log.error("not loading %s: %s: %s", entry, type(exc).__name__, exc)
        return loaded


def health_check(model: Model) -> None:
    """Run ``model`` once on zeros shaped by its manifest (dynamic dimensions = 1): it must not raise
    and its float outputs must be finite. A :class:`BackendError` says what went wrong."""
    feed = {spec.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape],
                                dtype=np.str_ if spec.dtype == "str" else np.dtype(spec.dtype))
            for spec in model.inputs}
    try:
        outputs = model.run(feed)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raised, the version is unhealthy
        raise BackendError(f"health check failed: {model.name} {model.version} cannot run on zeros",
                           value=f"{type(exc).__name__}: {first_line(exc)}",
                           fix="test the package with `edgemill run` before deploying it") from None
    for name, array in outputs.items():
        array = np.asarray(array)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise BackendError(f"health check failed: {model.name} {model.version} gives non-finite values "
                               f"(NaN or infinity) in output {name!r} for zero inputs",
                               fix="check the model and its compile report before deploying it")
