"""The rollout decision: a pure function from a deployment's state to its next step.

The control plane calls :func:`decide` on every tick and on every heartbeat that touches a rolling
deployment, and carries out the :class:`Decision` it returns (assign devices to a wave, mark the
deployment succeeded or rolled back, or do nothing). Nothing here reads a clock, a database or the
network: ``now`` and every device's measurements are passed in, so the same inputs always give the
same decision.

Rules, in the order :func:`decide` applies them:

1. A deployment whose state is not ``"rolling"`` makes no progress: ``wait``, the reason names the state.
2. Devices in state ``"rolled_back"`` are ignored everywhere. With none left: ``wait`` ("no devices").
3. Health gates (:func:`check_gates`) are judged on every call, over the devices in state ``"updated"``
   or ``"failed"`` across all waves, in this order; the first that fails is a ``rollback`` at once,
   even before the current wave has baked (fail fast):

   - more ``"failed"`` devices than ``max_failed_devices``;
   - the aggregate error rate ``sum(errors) / sum(requests)`` over updated devices above
     ``max_error_rate`` -- judged only once ``sum(requests) >= min_requests`` and ``> 0``;
   - any updated device's ``p95_ms`` above ``max_p95_ms`` (when set); the worst device is named.

   A value equal to its limit passes.
4. Wave ``-1`` (nothing assigned yet): ``assign`` wave 0, the canary -- the first
   ``wave_sizes(...)[0]`` pending devices in the order given (``succeed`` if none is pending).
5. The current wave is *complete* when each of its devices is updated, failed or offline (an offline
   device catches up later and must not hold back the fleet) and at least one is updated (all offline
   or failed is no evidence of health). It is *baked* when ``now`` minus the latest ``updated_at``
   among its updated devices is at least ``bake_time_s``. Until both: ``wait``, saying what for.
6. Complete, baked and healthy: ``assign`` the next wave -- the next ``wave_sizes`` entry (computed
   over all non-ignored devices) taken from the pending devices in order, or all remaining pending
   ones once the sizes run out -- or ``succeed`` when no device is pending. Too little traffic to
   judge the error rate does not hold a wave back; the reason says it was not judged. A wave left with
   no devices (all ignored) holds nothing back either: waiting on it would never end.

Device counts use every non-ignored device; "pending" means state ``"pending"`` (the ``wave`` field
of a pending device is not read), and a wave's devices are those in state ``"assigned"``,
``"updated"`` or ``"failed"`` whose ``wave`` is that index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from .schemas import Gates, Strategy

# A rollback reason lists at most this many failed devices: it is one line on a dashboard.
_MAX_LISTED_FAILURES = 3
_WAVE_STATES = ("assigned", "updated", "failed")


@dataclass(frozen=True)
class DeviceView:
    """One target device of a deployment, as the decision sees it."""

    name: str
    wave: int | None  # None while pending (not yet assigned to a wave)
    state: str  # "pending" | "assigned" | "updated" | "failed" | "rolled_back"
    online: bool
    updated_at: float | None  # when it first reported running the new version (unix s)
    requests: int = 0  # requests served by the NEW version since updated_at (summed deltas)
    errors: int = 0
    p95_ms: float | None = None  # worst p95 latency of the new version since updated_at
    failure: str | None = None  # why it failed (verification refusal, load error), when state == "failed"


@dataclass(frozen=True)
class RolloutView:
    """The deployment itself: where it stands and how it should roll."""

    state: str  # "rolling" | "paused" | "succeeded" | "rolled_back" | "superseded"
    wave: int  # index of the current wave; -1 before the first assignment
    wave_started_at: float | None
    strategy: Strategy


@dataclass(frozen=True)
class Decision:
    """What the caller should do now. ``wait`` changes nothing; the caller asks again later."""

    action: Literal["wait", "assign", "succeed", "rollback"]
    wave: int  # the wave the action concerns (for assign: the new wave index)
    devices: tuple[str, ...] = ()  # for assign: the devices to put in that wave, in order
    reason: str = ""  # one human line: why (shown in the dashboard and the deployment events)


def has_tags(device_tags: Mapping[str, str] | None, wanted: Mapping[str, str] | None) -> bool:
    """A deployment with tags ``wanted`` targets a device with ``device_tags`` when it has all of them."""
    have = device_tags or {}
    return all(have.get(k) == v for k, v in (wanted or {}).items())


def wave_sizes(total: int, canary_percent: float, batch_size: int) -> list[int]:
    """Split ``total`` devices into waves: a canary, then batches of ``batch_size`` (0: one batch).

    The canary is ``ceil(total * canary_percent / 100)``, at least 1 and at most ``total``. The sizes
    sum to ``total``; ``total == 0`` gives ``[]``. Raises ValueError for a negative total or batch
    size, or a percent outside (0, 100].
    """
    if total < 0 or batch_size < 0 or not 0 < canary_percent <= 100:
        raise ValueError(f"wave_sizes({total}, {canary_percent}, {batch_size}): expected total >= 0, "
                         "0 < canary_percent <= 100, batch_size >= 0")
    if total == 0:
        return []
    # The percent as written (10.1, not the binary float nearest it), so a share that is a whole number
    # of devices on paper is not rounded up by one by float noise.
    first = min(total, max(1, math.ceil(total * Fraction(str(canary_percent)) / 100)))
    rest = total - first
    if rest == 0:
        return [first]
    step = batch_size or rest
    return [first] + [min(step, rest - start) for start in range(0, rest, step)]


def check_gates(gates: Gates, devices: Sequence[DeviceView]) -> str | None:
    """Judge the health gates over ``devices``; None when healthy, else why, for a rollback.

    Only devices in state ``"updated"`` (measurements) and ``"failed"`` (the failed count) are read.
    The reason names the gate's field, the measured value and the limit.
    """
    failed = [d for d in devices if d.state == "failed"]
    if len(failed) > gates.max_failed_devices:
        listed = "; ".join(f"{d.name}: {_one_line(d.failure)}" for d in failed[:_MAX_LISTED_FAILURES])
        more = len(failed) - _MAX_LISTED_FAILURES
        limit = f"max_failed_devices {gates.max_failed_devices}"
        return (f"{_count(len(failed), 'device')} failed to apply the version ({limit}): {listed}"
                + (f"; and {more} more" if more > 0 else ""))

    updated = [d for d in devices if d.state == "updated"]
    requests = sum(d.requests for d in updated)
    errors = sum(d.errors for d in updated)
    # Division is correctly rounded, so a rate exactly at the limit compares equal and passes.
    if _error_rate_judged(gates, requests) and errors / requests > gates.max_error_rate:
        return (f"error rate {errors / requests:.2%} ({errors} errors in {requests} requests on updated devices)"
                f" > max_error_rate {gates.max_error_rate:.2%}")

    if gates.max_p95_ms is not None:
        measured = [(d.p95_ms, d.name) for d in updated if d.p95_ms is not None]
        if measured:
            p95, name = max(measured, key=lambda m: m[0])  # the first of equals: the order given
            if p95 > gates.max_p95_ms:
                return f"p95 latency {p95:g} ms on {name} > max_p95_ms {gates.max_p95_ms:g} ms"
    return None


def decide(rollout: RolloutView, devices: Sequence[DeviceView], now: float) -> Decision:
    """The next step for ``rollout`` given its target ``devices`` (in assignment order) at time ``now``.

    See the module docstring for the rules. Pure: no I/O and no clock reads.
    """
    if rollout.state != "rolling":
        return Decision("wait", rollout.wave, reason=f"deployment is {rollout.state}: no progress")
    live = [d for d in devices if d.state != "rolled_back"]
    if not live:
        return Decision("wait", rollout.wave, reason="no devices")

    strategy = rollout.strategy
    unhealthy = check_gates(strategy.gates, live)
    if unhealthy is not None:
        return Decision("rollback", rollout.wave, reason=unhealthy)

    pending = [d.name for d in live if d.state == "pending"]
    sizes = wave_sizes(len(live), strategy.canary_percent, strategy.batch_size)
    if rollout.wave < 0:
        if not pending:
            return Decision("succeed", rollout.wave, reason="no device pending: nothing to roll out")
        chosen = tuple(pending[: sizes[0]])
        return Decision("assign", 0, chosen, f"canary wave 0: {len(chosen)} of {len(live)} devices")

    members = [d for d in live if d.wave == rollout.wave and d.state in _WAVE_STATES]
    holdup = _wave_holdup(rollout, members, now)
    if holdup is not None:
        return Decision("wait", rollout.wave, reason=holdup)

    note = _traffic_note(strategy.gates, live)
    if not pending:
        return Decision("succeed", rollout.wave, reason=f"all waves done and healthy{note}")
    nxt = rollout.wave + 1
    size = sizes[nxt] if nxt < len(sizes) else len(pending)
    chosen = tuple(pending[:size])
    done = f"wave {rollout.wave} healthy" if members else f"wave {rollout.wave} has no devices left"
    return Decision("assign", nxt, chosen, f"{done}; wave {nxt}: {_count(len(chosen), 'device')}{note}")


def _wave_holdup(rollout: RolloutView, members: Sequence[DeviceView], now: float) -> str | None:
    """Why the current wave may not be followed yet (not complete, or not baked); None when it may.

    A wave with no devices left (all ignored) holds nothing up: waiting on it would never end.
    """
    if not members:
        return None
    wave = rollout.wave
    updated = [d for d in members if d.state == "updated"]
    # Online devices still applying the version are what the wave waits for; offline ones catch up later.
    applying = [d.name for d in members if d.state == "assigned" and d.online]
    if applying:
        names = ", ".join(applying[:_MAX_LISTED_FAILURES]) + (", ..." if len(applying) > _MAX_LISTED_FAILURES else "")
        return f"wave {wave}: {len(updated)} of {len(members)} devices updated (waiting for {names})"
    if not updated:
        offline = sum(1 for d in members if d.state == "assigned")
        failed = len(members) - offline
        return f"wave {wave}: no device updated yet ({offline} offline, {failed} failed)"

    bake = rollout.strategy.bake_time_s
    times = [d.updated_at for d in updated if d.updated_at is not None]
    since = max(times) if times else rollout.wave_started_at
    if since is None:
        # No time to measure from: only a zero bake time can be over.
        return None if bake == 0 else f"wave {wave} baking: no update time reported yet, {bake:g} s to bake"
    elapsed = now - since
    if elapsed < bake:
        return f"wave {wave} baking: {max(0, math.floor(elapsed))} s of {bake:g} s"
    return None


def _error_rate_judged(gates: Gates, requests: int) -> bool:
    return requests > 0 and requests >= gates.min_requests


def _traffic_note(gates: Gates, devices: Sequence[DeviceView]) -> str:
    """A reason suffix when the error rate was not judged for lack of traffic; "" when it was."""
    requests = sum(d.requests for d in devices if d.state == "updated")
    if _error_rate_judged(gates, requests):
        return ""
    return f"; error rate not judged: {requests} requests < min {max(gates.min_requests, 1)}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _one_line(text: str | None) -> str:
    return " ".join(text.split()) if text else "no reason reported"
