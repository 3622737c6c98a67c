"""Control-plane sync: register once, then heartbeat by long poll and apply the desired models.

One daemon thread. Each heartbeat reports what runs here (models, metrics, memory, captures, apply
failures) and gets the desired state back; :func:`~.plan.plan` turns the difference into actions
and this module carries them out: download to a ``.partial`` file, verify and load beside the serving
version, health-check, swap, delete the old file. Any failure leaves the old version serving and is
reported; a package that failed is not tried again until the desired package changes. Without the
server the agent keeps serving and retries with backoff; at start it restores the last applied
packages from disk, so a device that reboots offline serves what it served before.

Files: ``<models.directory>/<name>-<package id, 12 hex>.emp`` are the sync's own (standalone loading
leaves them to it); ``server.state_file`` and ``server.credential_file`` hold the rest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import EdgemillError, ModelNotFoundError, VerificationError, first_line
from ...package.layout import MANIFEST
from ...package.manifest import package_id
from ...package.reader import open_package
from ...captures.store import fsync_dir
from ..capture.uploader import backoff_delay
from ..config import AgentConfig
from ..models import ModelManager, health_check
from .client import ControlPlaneClient, ControlPlaneError
from .plan import DesiredModel, Install, SkipFailed, Unload, plan, still_relevant
from .state import Applied, Failure, SyncState, atomic_write, read_secret

log = logging.getLogger("edgemill.agent.sync")

_OWN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}-(?P<id>[0-9a-f]{12})\.emp")
_PARTIAL = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.[0-9a-f]{12}\.partial")
_LOUD_RETRIES = 3  # failed attempts in a row that are each logged; later ones only at debug level
_MAX_STALE = 3  # stale-sequence answers in a row before it counts as a problem (not a quick retry)
# Each wait for the next heartbeat moves by up to this share of the interval, at random. Agents whose
# answers arrive together (after a server stall or a network outage, or when a late answer leaves no
# wait at all) would otherwise heartbeat in step from then on, and a fleet in step loads its control
# plane in bursts; with the spread, such a burst dissolves within a few intervals. The mean is unchanged.
HEARTBEAT_JITTER = 0.05


def next_heartbeat_in(sent: float, now: float, interval: float, rng: random.Random) -> float:
    """Seconds until the next heartbeat: one interval after the last was sent, moved at random by up
    to ``HEARTBEAT_JITTER`` of the interval, never negative."""
    return max(0.0, sent + interval - now + rng.uniform(-HEARTBEAT_JITTER, HEARTBEAT_JITTER) * interval)


def package_file(name: str, package_id: str) -> str:
    """The file name a package applied by the sync gets in the models directory."""
    return f"{name}-{package_id[:12]}.emp"


class Sync:
    """The agent's link to the control plane: ``start()`` restores and starts the thread, ``stop()``
    ends it promptly (a long poll in flight is cut). ``report`` gives the heartbeat's status fields
    (``HeartbeatIn`` without device, seq and failures); by default the loaded models and memory."""

    def __init__(self, config: AgentConfig, models: ModelManager,
                 report: Callable[[], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = config.server
        self.device = config.device.name
        self.config_fleet = config.device.fleet
        self.directory = config.models.directory
        self.models = models
        self.fleet: str | None = None
        self._report = report or self._models_report
        self._clock = clock
        self._state = SyncState.load(self.server.state_file)
        self._credential: str | None = None
        self._registered = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()  # guards the state and the counters status() reads
        self._client = self._new_client()
        # Captures have their own client: stopping the sync cuts its long poll, not the last uploads.
        self._capture_client = self._new_client()
        self._thread: threading.Thread | None = None
        self._interval = self.server.heartbeat_interval_s
        self._jitter = random.Random()
        self._offline = 0  # attempts in a row that found no server
        self._stale = 0
        self._problem: str | None = None  # the refusal last logged, so a repeat is not logged again
        self._skips_logged: set[tuple[str, str]] = set()
        self._generation: str | None = None
        self._send_drift = True  # off when the server refused our drift histograms (a version mismatch)
        self.heartbeats = 0  # answered heartbeats since start
        self.last_heartbeat_unix: float | None = None
        self._read_credential()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Load the packages applied before (so a device that starts offline serves them), then sync."""
        if self._thread is not None:
            return
        self.restore()
        self._thread = threading.Thread(target=self._run, name="edgemill-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread: a request in flight is cut, an apply in progress stops between steps."""
        self._stop.set()
        self._client.abort()
        if self._thread is not None:
            self._thread.join(timeout)

    def owns(self, path: Path) -> bool:
        """Whether ``path`` in the models directory is the sync's (standalone loading skips it): a
        download in progress, or a package whose file name ends with its own package id."""
        if _PARTIAL.fullmatch(path.name):
            return True
        match = _OWN_FILE.fullmatch(path.name)
        if match is None:
            return False
        try:  # an operator's "resnet-0123456789ab.emp" is not ours: its id does not match its name
            with open_package(path) as reader:
                return package_id(json.loads(reader.read(MANIFEST)))[:12] == match["id"]
        except Exception:  # noqa: BLE001 - unreadable: not recognisably ours, so left alone
            return False

    def status(self) -> dict[str, Any]:
        """For metrics, logs and tests: registration, reachability, sequence, applied, failures."""
        with self._lock:
            return {"registered": self._registered.is_set(), "fleet": self.fleet,
                    "reachable": self.heartbeats > 0 and self._offline == 0, "failed_attempts": self._offline,
                    "seq": self._state.seq, "heartbeats": self.heartbeats,
                    "last_heartbeat_unix": self.last_heartbeat_unix,
                    "applied": {name: a.package_id for name, a in self._state.applied.items()},
                    "failures": [f.to_wire() for f in self._state.failures.values()]}

    def restore(self) -> list[str]:
        """Load what the state file says was applied; remove leftovers of interrupted applies."""
        keep = {a.file for a in self._state.applied.values()}
        if self.directory.is_dir():
            for entry in sorted(self.directory.iterdir()):
                if self.owns(entry) and entry.name not in keep:
                    log.info("removing %s, left over from an interrupted apply", entry)
                    entry.unlink(missing_ok=True)
        restored: list[str] = []
        dropped = False
        for name, applied in sorted(self._state.applied.items()):
            path = self.directory / applied.file
            try:
                prepared = self.models.prepare(path, name, package_id=applied.package_id)
                self.models.install(prepared)
                restored.append(name)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the agent
                log.error("cannot restore %s %s from %s (%s); it is downloaded again once the control plane "
                          "is reachable", name, applied.version, path, _one_line(exc))
                with self._lock:
                    self._state.applied.pop(name)
                path.unlink(missing_ok=True)
                dropped = True
        if dropped:
            self._save()
        if restored:
            log.info("restored %d model(s) applied from the control plane: %s", len(restored), ", ".join(restored))
        return restored

    # --- captures (ServerStore) ----------------------------------------------------------------

    def upload_capture(self, capture_id: str, model: str, data: bytes) -> None:
        """PUT one capture record with this device's credential; waits a while for the registration."""
        deadline = time.monotonic() + self.server.request_timeout_s
        while not self._registered.wait(0.2):
            if self._stop.is_set() or time.monotonic() > deadline:
                raise ControlPlaneError("not registered with the control plane yet", value=self.server.url,
                                        fix="captures stay queued and go out once the device has registered")
        self._capture_client.put_capture(capture_id, model, data)

    def capture_url(self, capture_id: str) -> str:
        return self._capture_client.capture_url(capture_id)

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                delay = self._heartbeat() if self._registered.is_set() else self._register()
            except Exception:  # the thread must outlive any one bad round (a disk error, a bug)
                log.exception("control-plane sync round failed; retrying in %g s", self.server.max_backoff_s)
                delay = self.server.max_backoff_s

    def _read_credential(self) -> None:
        try:
            self._credential = read_secret(self.server.credential_file)
        except OSError as exc:
            log.error("cannot read the device credential %s (%s): fix its permissions", self.server.credential_file,
                      first_line(exc))
        if self._credential:
            self._registered.set()

    def _pending_credential_file(self) -> Path:
        return self.server.credential_file.with_name(self.server.credential_file.name + ".pending")

    def _proposed_credential(self) -> str:
        """The credential this device asks to be registered with, chosen once and stored durably before
        the first request: a registration whose answer is lost (the agent killed, the link cut) is
        repeated with the same one, and the server recognises the retry instead of refusing the name."""
        pending = self._pending_credential_file()
        chosen = read_secret(pending)
        if chosen:
            return chosen
        chosen = "emd_" + secrets.token_urlsafe(32)
        atomic_write(pending, chosen.encode() + b"\n", mode=0o600)
        return chosen

    def _register(self) -> float:
        self._read_credential()  # an operator may have restored one meanwhile
        if self._registered.is_set():
            return 0.0
        try:
            token = read_secret(self.server.token_file)
        except OSError as exc:
            return self._refused(f"cannot read the registration token {self.server.token_file}: {first_line(exc)}; "
                                 "fix its permissions")
        if token is None:
            where = f"{self.server.token_file} is missing or empty" if self.server.token_file else \
                "[server] token_file is not set"
            return self._refused(f"not registered with the control plane: no credential in "
                                 f"{self.server.credential_file} and {where}. Fix: write the registration token "
                                 "the operator issued for this device's fleet to token_file")
        try:
            proposed = self._proposed_credential()
        except OSError as exc:
            return self._refused(f"cannot keep a credential beside {self.server.credential_file}: {first_line(exc)}; "
                                 "fix the folder's permissions")
        try:
            answer = self._client.register(token, self.device, dict(self.server.tags), credential=proposed)
        except ControlPlaneError as exc:
            if exc.unreachable:
                return self._offline_delay(exc)
            fix = {401: "ask the operator for a new registration token and write it to token_file",
                   409: f"the name {self.device!r} is taken: set another [device] name, or restore this device's "
                        f"credential file {self.server.credential_file}"}.get(exc.status or 0, exc.fix)
            return self._refused(f"{exc.problem}. Fix: {fix}")
        credential = answer.get("credential")
        if not isinstance(credential, str) or not credential:
            return self._offline_delay(ControlPlaneError("the registration answer has no credential",
                                                         status=502, value=sorted(answer)))
        atomic_write(self.server.credential_file, credential.encode() + b"\n", mode=0o600)
        self._pending_credential_file().unlink(missing_ok=True)
        self._credential = credential
        self.fleet = str(answer.get("fleet") or "") or None
        self._registered.set()
        self._reachable()
        log.info("registered with the control plane %s as device %s in fleet %s", self.server.url, self.device,
                 self.fleet)
        if self.fleet and self.fleet != self.config_fleet and self.config_fleet != "default":
            log.warning("the token registered this device in fleet %s, not in [device] fleet %s: the token decides",
                        self.fleet, self.config_fleet)
        return 0.0

    def _heartbeat(self) -> float:
        sent = self._clock()
        report = self._report()
        if not self._send_drift:
            report.pop("drift", None)
        with self._lock:
            self._state.seq += 1
            self._save()  # before sending: a restart never reuses a sequence number the server has seen
            payload = {**report, "device": self.device, "seq": self._state.seq,
                       "failures": [f.to_wire() for f in self._state.failures.values()]}
        try:
            answer = self._client.heartbeat(payload, self.server.long_poll_s)
        except ControlPlaneError as exc:
            if self._stop.is_set():
                return 0.0
            if exc.status == 409 and exc.last_seq is not None:  # stale: only that refusal carries last_seq
                self._stale += 1
                log.warning("heartbeat %d was stale (the server accepted up to %d): continuing from %d",
                            payload["seq"], exc.last_seq, exc.last_seq + 1)
                with self._lock:
                    self._state.seq = exc.last_seq
                    self._save()
                return 0.0 if self._stale <= _MAX_STALE else self._offline_delay(exc)
            if exc.unreachable:
                return self._offline_delay(exc)
            if exc.status == 422 and (exc.field or "").startswith("drift") and payload.get("drift"):
                # Drift is an extra: a server that cannot take our histograms must still see the device.
                self._send_drift = False
                log.error("the control plane refused this agent's drift histograms (%s); heartbeats go on without "
                          "them until the agent restarts", exc.problem)
                return 0.0
            fix = {401: f"the server does not accept the credential in {self.server.credential_file}: delete it "
                        "and write a new registration token to token_file",
                   403: f"the credential belongs to another device than {self.device!r}: restore the [device] name "
                        "it was issued to, or register this name with a new token"}.get(exc.status or 0, exc.fix)
            return self._refused(f"{exc.problem}. Fix: {fix}")
        self._stale = 0
        try:
            desired = [DesiredModel.from_wire(m) for m in answer["models"]]
            interval = float(answer.get("heartbeat_interval_s") or self.server.heartbeat_interval_s)
        except (KeyError, TypeError, ValueError) as exc:
            return self._offline_delay(ControlPlaneError("the control plane's desired state is malformed",
                                                         status=502, value=first_line(exc)))
        self._reachable(heartbeat=True)
        with self._lock:
            self.heartbeats += 1
            self.last_heartbeat_unix = time.time()
        # The server's interval rules; a floor keeps a misconfigured one from spinning the device.
        self._interval = max(interval, min(1.0, self.server.heartbeat_interval_s))
        generation = answer.get("generation")
        if generation != self._generation:
            log.info("desired state %s: %s", generation,
                     ", ".join(f"{m.name} {m.version}" for m in desired) or "no models")
            self._generation = generation if isinstance(generation, str) else None
        changed, retry_in = self._reconcile(desired)
        if retry_in is not None:
            return retry_in
        if changed:
            return 0.0  # report what changed at once
        return next_heartbeat_in(sent, self._clock(), self._interval, self._jitter)

    # --- applying the desired state ------------------------------------------------------------

    def _reconcile(self, desired: list[DesiredModel]) -> tuple[bool, float | None]:
        """Carry out the plan; returns whether anything changed here and, when a download must wait
        (server away, rate limit), how long until the next heartbeat."""
        relevant = still_relevant([(f.model, f.package_id, f.allow_rollback) for f in self._state.failures.values()],
                                  desired)
        if relevant != set(self._state.failures):
            with self._lock:
                self._state.failures = {k: v for k, v in self._state.failures.items() if k in relevant}
                self._save()
            self._skips_logged &= relevant
        # An evicted model counts as in place: a request loads it again (a cold start); loading it here
        # would only evict another one, and again on the next sync.
        loaded = {name: e.package_id for name, e in self.models.evicted().items()}
        loaded.update({m.name: m.model.package_id for m in self.models.list()})
        changed = False
        for action in plan(desired, loaded, relevant, managed=set(self._state.applied)):
            if self._stop.is_set():
                break
            if isinstance(action, Unload):
                self._unload(action.name)
                changed = True
            elif isinstance(action, SkipFailed):
                key = (action.name, action.package_id)
                if key not in self._skips_logged:
                    self._skips_logged.add(key)
                    log.info("not retrying %s package %s: it failed here (%s); waiting for another version",
                             action.name, action.package_id[:12], self._state.failures[key].reason)
            elif isinstance(action, Install):
                retry_in = self._install(action.model)
                if retry_in is not None:
                    return changed, retry_in
                changed = True
        return changed, None

    def _install(self, model: DesiredModel) -> float | None:
        """Apply one package. None when it is done or its failure is recorded; else seconds to wait
        before the next heartbeat (the download cannot happen now: server away, rate limit, stopping)."""
        short = model.package_id[:12]
        partial = self.directory / f".{model.name}.{short}.partial"
        final = self.directory / package_file(model.name, model.package_id)
        log.info("applying %s %s (package %s%s)", model.name, model.version, short,
                 f", deployment {model.deployment_id}" if model.deployment_id is not None else "")
        applied = self._state.applied.get(model.name)
        try:
            if applied is not None and applied.file == final.name and final.exists():
                pass  # applied before, unloaded since (gRPC, eviction): verified again below, not fetched again
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._client.download(model.download_path, partial,
                                      model.size_bytes if model.size_bytes > 0 else None)
                os.replace(partial, final)
                fsync_dir(self.directory)
        except ControlPlaneError as exc:
            self._remove(model.name, partial, final)
            if self._stop.is_set():
                return 0.0
            if exc.status == 429:
                wait = min(self.server.max_backoff_s, max(0.1, exc.retry_after_s or 5.0))
                log.info("the server limits package downloads: trying %s again in %g s", model.name, wait)
                return wait
            if exc.unreachable:
                return self._offline_delay(exc)
            if exc.status in (401, 403):
                return self._refused(str(exc))
            self._failed(model, exc, partial, final)  # the server refuses this package (404...)
            return None
        except Exception as exc:  # noqa: BLE001 - the local disk, a package larger than announced
            self._failed(model, exc, partial, final)
            return None
        if self._stop.is_set():
            self._remove(model.name, partial, final)
            return 0.0
        try:
            prepared = self.models.prepare(final, model.name, replace=True, allow_rollback=model.allow_rollback,
                                           package_id=model.package_id)
            try:
                health_check(prepared.loaded.model)
            except BaseException:
                self.models.discard(prepared)
                raise
            self.models.install(prepared)
        except Exception as exc:  # noqa: BLE001 - any failure: the old version keeps serving
            self._failed(model, exc, partial, final)
            return None
        with self._lock:
            previous = self._state.applied.get(model.name)
            self._state.applied[model.name] = Applied(model.package_id, prepared.loaded.model.version, final.name)
            self._save()
        if previous is not None and previous.file != final.name:
            (self.directory / previous.file).unlink(missing_ok=True)
            fsync_dir(self.directory)
        return None

    def _failed(self, model: DesiredModel, exc: BaseException, partial: Path, final: Path) -> None:
        self._remove(model.name, partial, final)
        refusal = exc.reason.value if isinstance(exc, VerificationError) else None
        failure = Failure(model.name, model.package_id, _one_line(exc), refusal, model.allow_rollback)
        with self._lock:
            self._state.failures[(model.name, model.package_id)] = failure
            self._save()
        self._skips_logged.add((model.name, model.package_id))
        log.error("could not apply %s %s (package %s): %s; the version loaded before keeps serving",
                  model.name, model.version, model.package_id[:12], failure.reason)

    def _remove(self, name: str, partial: Path, final: Path) -> None:
        """Delete an apply's files. The final file may be one applied before for the same package (the
        model was unloaded meanwhile and is being applied again): then it is no longer applied."""
        partial.unlink(missing_ok=True)
        if final.exists():
            final.unlink()
            with self._lock:
                applied = self._state.applied.get(name)
                if applied is not None and applied.file == final.name:
                    del self._state.applied[name]
                    self._save()
        if self.directory.is_dir():
            fsync_dir(self.directory)

    def _unload(self, name: str) -> None:
        try:
            self.models.unload(name)
        except ModelNotFoundError:
            pass  # unloaded meanwhile (gRPC, eviction): only its file is left
        with self._lock:
            applied = self._state.applied.pop(name, None)
            self._save()
        if applied is not None:
            (self.directory / applied.file).unlink(missing_ok=True)
        log.info("unloaded %s: the control plane no longer wants it here", name)

    # --- bookkeeping ---------------------------------------------------------------------------

    def _new_client(self) -> ControlPlaneClient:
        return ControlPlaneClient(self.server.url, timeout_s=self.server.request_timeout_s,
                                  download_timeout_s=self.server.download_timeout_s,
                                  credential=lambda: self._credential, ca_file=self.server.ca_file,
                                  client_cert_file=self.server.client_cert_file,
                                  client_key_file=self.server.client_key_file)

    def _models_report(self) -> dict[str, Any]:
        loaded = self.models.list()
        return {"models": [{"name": m.name, "version": m.model.version, "package_id": m.model.package_id}
                           for m in loaded],
                "memory": {"used_bytes": float(self.models.used_bytes()),
                           "budget_bytes": float(self.models.budget_bytes)},
                "agent_version": __version__}

    def _save(self) -> None:
        with self._lock:  # re-entrant: callers that change the state hold it across change and save
            self._state.save(self.server.state_file)

    def _offline_delay(self, exc: ControlPlaneError) -> float:
        with self._lock:
            self._offline += 1
            attempts = self._offline
        delay = backoff_delay(attempts, self.server.max_backoff_s)
        if attempts <= _LOUD_RETRIES:
            log.warning("%s (%d in a row); the agent keeps serving, next try in %.1f s", _one_line(exc), attempts,
                        delay)
        elif attempts == _LOUD_RETRIES + 1:
            log.warning("control plane still unreachable; retrying quietly, at most every %g s",
                        self.server.max_backoff_s)
        else:
            log.debug("control plane unreachable (%d in a row): %s", attempts, _one_line(exc))
        return delay

    def _reachable(self, heartbeat: bool = False) -> None:
        with self._lock:
            attempts, self._offline = self._offline, 0
        if attempts:
            log.info("control plane %s reachable again after %d failed attempt(s)", self.server.url, attempts)
        elif heartbeat and self.heartbeats == 0:
            log.info("connected to the control plane %s as device %s", self.server.url, self.device)
        self._problem = None

    def _refused(self, problem: str) -> float:
        """A refusal that waiting alone will not fix: logged once (until it changes), retried slowly."""
        if problem != self._problem:
            log.error("%s", problem)
            self._problem = problem
        else:
            log.debug("%s", problem)
        return self.server.max_backoff_s


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, EdgemillError) else f"{type(exc).__name__}: {first_line(exc)}"
    return " ".join(text.split())[:2000]
