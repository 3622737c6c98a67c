"""The rollout decision as a pure function: waves, bake time, health gates and automatic rollback."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

import pytest

from edgemill.fleet.rollout import Decision, DeviceView, RolloutView, check_gates, decide, wave_sizes
from edgemill.fleet.schemas import Gates, Strategy

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # the property tests need hypothesis; every other test runs without it
    st = None  # type: ignore[assignment]

GATE_NAMES = ("max_failed_devices", "max_error_rate", "max_p95_ms")
T0 = 1_000_000.0


def strategy(canary: float = 10, batch: int = 0, bake: float = 300, **gates: object) -> Strategy:
    gate_values = Gates(**gates)  # type: ignore[arg-type]
    return Strategy(canary_percent=canary, batch_size=batch, bake_time_s=bake, gates=gate_values)


def rollout(wave: int = -1, state: str = "rolling", started: float | None = None, **kw: object) -> RolloutView:
    plan = strategy(**kw)  # type: ignore[arg-type]
    return RolloutView(state=state, wave=wave, wave_started_at=started, strategy=plan)


def dev(name: str, state: str = "pending", wave: int | None = None, online: bool = True,
        updated_at: float | None = None, requests: int = 0, errors: int = 0, p95: float | None = None,
        failure: str | None = None) -> DeviceView:
    return DeviceView(name, wave, state, online, updated_at, requests, errors, p95, failure)


def updated(name: str, wave: int = 0, at: float = T0, **kw: object) -> DeviceView:
    return dev(name, "updated", wave, updated_at=at, **kw)  # type: ignore[arg-type]


def pending(n: int, start: int = 0) -> list[DeviceView]:
    return [dev(f"dev-{i}") for i in range(start, start + n)]


# --- wave sizes ----------------------------------------------------------------------------------

PERCENTS = (0.1, 1, 5, 10, 12.5, 25, 33.3, 50, 99.9, 100)
BATCHES = (0, 1, 2, 3, 7, 50, 100)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("percent", PERCENTS)
def test_wave_sizes_hold_their_invariants_for_every_fleet_size(percent: float, batch: int) -> None:
    for total in range(51):
        sizes = wave_sizes(total, percent, batch)
        assert sum(sizes) == total
        if total == 0:
            assert sizes == []
            continue
        canary = math.ceil(total * Fraction(str(percent)) / 100)
        assert sizes[0] == min(total, max(1, canary))
        assert all(size >= 1 for size in sizes)
        rest = sizes[1:]
        if batch:
            assert all(size <= batch for size in rest)
            assert all(size == batch for size in rest[:-1])  # only the last batch may be short
        else:
            assert len(rest) <= 1  # batch 0: everything after the canary in one wave


@pytest.mark.parametrize(
    ("total", "percent", "batch", "sizes"),
    [
        (0, 10, 0, []),
        (1, 10, 0, [1]),
        (10, 10, 0, [1, 9]),
        (10, 10, 3, [1, 3, 3, 3]),
        (20, 10, 5, [2, 5, 5, 5, 3]),
        (21, 10, 0, [3, 18]),
        (100, 100, 5, [100]),
        (1000, 0.1, 0, [1, 999]),  # 0.1 % of 1000 is one device, not two from float noise
        (3, 33.3, 1, [1, 1, 1]),
    ],
)
def test_wave_sizes_examples(total: int, percent: float, batch: int, sizes: list[int]) -> None:
    assert wave_sizes(total, percent, batch) == sizes


@pytest.mark.parametrize(("total", "percent", "batch"), [(-1, 10, 0), (5, 0, 0), (5, 100.5, 0), (5, 10, -1),
                                                         (5, float("nan"), 0)])
def test_wave_sizes_refuse_impossible_arguments(total: int, percent: float, batch: int) -> None:
    with pytest.raises(ValueError, match="expected"):
        wave_sizes(total, percent, batch)


# --- states that make no progress ------------------------------------------------------------------


@pytest.mark.parametrize("state", ["paused", "succeeded", "rolled_back", "superseded"])
def test_deployment_that_is_not_rolling_waits_even_when_a_gate_fails(state: str) -> None:
    devices = [dev("a", "failed", 0, failure="load error"), *pending(3)]
    d = decide(rollout(wave=0, state=state), devices, T0)
    assert d == Decision("wait", 0, (), f"deployment is {state}: no progress")


def test_deployment_without_devices_waits() -> None:
    assert decide(rollout(), [], T0) == Decision("wait", -1, (), "no devices")
    assert decide(rollout(), [dev("a", "rolled_back")], T0).reason == "no devices"


# --- the normal path -------------------------------------------------------------------------------


def test_first_call_assigns_the_canary_in_the_order_given() -> None:
    devices = [dev(n) for n in ("z", "b", "m", "a")] + pending(16)
    d = decide(rollout(canary=10), devices, T0)
    assert d == Decision("assign", 0, ("z", "b"), "canary wave 0: 2 of 20 devices")


def test_nothing_pending_at_the_start_succeeds_at_once() -> None:
    d = decide(rollout(), [updated("a"), dev("b", "rolled_back")], T0)
    assert d == Decision("succeed", -1, (), "no device pending: nothing to roll out")


def test_canary_is_at_least_one_device() -> None:
    assert decide(rollout(canary=1), pending(5), T0).devices == ("dev-0",)


def test_wave_waits_until_its_online_devices_have_updated() -> None:
    devices = [updated("a"), dev("b", "assigned", 0), *pending(8)]
    d = decide(rollout(wave=0, started=T0), devices, T0 + 10_000)
    assert d == Decision("wait", 0, (), "wave 0: 1 of 2 devices updated (waiting for b)")


def test_wave_waits_for_the_bake_time() -> None:
    devices = [updated("a", at=T0), *pending(9)]
    d = decide(rollout(wave=0, started=T0 - 5, bake=300), devices, T0 + 42.9)
    assert d == Decision("wait", 0, (), "wave 0 baking: 42 s of 300 s")


def test_bake_counts_from_the_latest_update_in_the_wave() -> None:
    devices = [updated("a", at=T0), updated("b", at=T0 + 100), *pending(8)]
    assert decide(rollout(wave=0, bake=300, canary=20), devices, T0 + 399).action == "wait"
    assert decide(rollout(wave=0, bake=300, canary=20), devices, T0 + 400).action == "assign"


def test_clock_behind_the_update_time_keeps_baking() -> None:
    devices = [updated("a", at=T0), *pending(1)]
    d = decide(rollout(wave=0, bake=60), devices, T0 - 30)
    assert d.action == "wait" and d.reason == "wave 0 baking: 0 s of 60 s"


def test_zero_bake_time_moves_on_as_soon_as_the_wave_is_updated() -> None:
    devices = [updated("a", at=T0, requests=50), *pending(3)]
    d = decide(rollout(wave=0, bake=0), devices, T0)
    assert d == Decision("assign", 1, ("dev-0", "dev-1", "dev-2"), "wave 0 healthy; wave 1: 3 devices")


def test_baked_healthy_wave_assigns_the_next_batch() -> None:
    devices = [updated("a", requests=100, errors=1), *pending(9)]
    d = decide(rollout(wave=0, batch=4), devices, T0 + 300)
    assert d == Decision("assign", 1, ("dev-0", "dev-1", "dev-2", "dev-3"), "wave 0 healthy; wave 1: 4 devices")


def test_last_wave_baked_and_healthy_succeeds() -> None:
    devices = [updated("a", requests=30), updated("b", wave=1, requests=30), updated("c", wave=1, requests=30)]
    d = decide(rollout(wave=1), devices, T0 + 300)
    assert d == Decision("succeed", 1, (), "all waves done and healthy")


def test_next_wave_takes_all_remaining_devices_once_the_sizes_run_out() -> None:
    # Three devices plan as one wave at 100 %; two more pending ones after it all go in the next wave.
    devices = [updated("a", requests=50), *pending(2)]
    assert wave_sizes(3, 100, 1) == [3]
    d = decide(rollout(wave=0, canary=100, batch=1), devices, T0 + 300)
    assert d.action == "assign" and d.wave == 1 and d.devices == ("dev-0", "dev-1")


def test_wave_whose_devices_were_all_rolled_back_does_not_block() -> None:
    devices = [updated("a", requests=50), dev("b", "rolled_back", 1), *pending(2)]
    d = decide(rollout(wave=1, batch=1), devices, T0)
    assert d == Decision("assign", 2, ("dev-0",), "wave 1 has no devices left; wave 2: 1 device")


def test_rolled_back_devices_are_ignored_for_sizes_gates_and_assignment() -> None:
    gone = [dev(f"old-{i}", "rolled_back", 0, errors=5, requests=5) for i in range(10)]
    d = decide(rollout(canary=50), [*gone, *pending(2)], T0)
    assert d == Decision("assign", 0, ("dev-0",), "canary wave 0: 1 of 2 devices")


# --- offline devices ------------------------------------------------------------------------------


def test_offline_device_does_not_block_its_wave() -> None:
    devices = [updated("a", requests=50), dev("b", "assigned", 0, online=False), *pending(2)]
    d = decide(rollout(wave=0), devices, T0 + 300)
    assert d.action == "assign" and d.devices == ("dev-0", "dev-1")


def test_wave_of_only_offline_devices_waits_for_evidence() -> None:
    devices = [dev("a", "assigned", 0, online=False), dev("b", "assigned", 0, online=False), *pending(2)]
    d = decide(rollout(wave=0, started=T0), devices, T0 + 10**6)
    assert d == Decision("wait", 0, (), "wave 0: no device updated yet (2 offline, 0 failed)")


def test_wave_of_only_tolerated_failures_waits_for_an_update() -> None:
    devices = [dev("a", "failed", 0, failure="x"), dev("b", "assigned", 0, online=False), *pending(2)]
    d = decide(rollout(wave=0, max_failed_devices=1), devices, T0 + 10**6)
    assert d == Decision("wait", 0, (), "wave 0: no device updated yet (1 offline, 1 failed)")


def test_updated_device_that_went_offline_still_counts_and_is_judged() -> None:
    devices = [replace(updated("a", requests=100, errors=50), online=False), *pending(2)]
    assert decide(rollout(wave=0), devices, T0).action == "rollback"


# --- gates ----------------------------------------------------------------------------------------


def test_failed_canary_rolls_back_before_bake_time() -> None:
    devices = [dev("a", "failed", 0, failure="verification refused: file_modified"), *pending(9)]
    d = decide(rollout(wave=0, started=T0), devices, T0 + 1)
    assert d == Decision("rollback", 0, (), "1 device failed to apply the version (max_failed_devices 0): "
                                            "a: verification refused: file_modified")


@pytest.mark.parametrize(("failed", "allowed", "rolls_back"), [(1, 1, False), (2, 1, True), (0, 0, False),
                                                               (1, 0, True), (3, 3, False), (4, 3, True)])
def test_failed_devices_gate_at_its_boundary(failed: int, allowed: int, rolls_back: bool) -> None:
    devices = [dev(f"f{i}", "failed", 0, failure="load error") for i in range(failed)]
    devices += [updated("ok", requests=100), *pending(20)]
    reason = check_gates(Gates(max_failed_devices=allowed), devices)
    assert (reason is not None) == rolls_back
    d = decide(rollout(wave=0, max_failed_devices=allowed), devices, T0)
    assert (d.action == "rollback") == rolls_back and (d.reason == reason or not rolls_back)


def test_failed_devices_reason_is_one_line_listing_a_few() -> None:
    devices = [dev("a", "failed", 0, failure="bad\n  signature"), dev("b", "failed", 0),
               *[dev(f"c{i}", "failed", 0, failure="oom") for i in range(4)]]
    reason = check_gates(Gates(max_failed_devices=2), devices)
    assert reason == ("6 devices failed to apply the version (max_failed_devices 2): a: bad signature; "
                      "b: no reason reported; c0: oom; and 3 more")


@pytest.mark.parametrize(
    ("limit", "requests", "errors", "rolls_back"),
    [(0.05, 100, 5, False), (0.05, 100, 6, True), (0.05, 20, 1, False), (0.05, 21, 2, True),
     (0.1, 30, 3, False), (0.1, 30, 4, True), (0.07, 100, 7, False), (0.07, 100, 8, True),
     (0.0, 1000, 0, False), (0.0, 1000, 1, True), (1.0, 20, 20, False)],
)
def test_error_rate_gate_at_its_boundary(limit: float, requests: int, errors: int, rolls_back: bool) -> None:
    devices = [updated("a", requests=requests, errors=errors), *pending(3)]
    reason = check_gates(Gates(max_error_rate=limit, min_requests=20), devices)
    assert (reason is not None) == rolls_back
    if rolls_back:
        assert reason == (f"error rate {errors / requests:.2%} ({errors} errors in {requests} requests on updated"
                          f" devices) > max_error_rate {limit:.2%}")


def test_error_rate_is_aggregated_over_all_updated_devices() -> None:
    noisy = updated("noisy", wave=1, requests=2, errors=1)  # 50 % alone, but 1 in 102 overall
    devices = [updated("a", requests=100), noisy, *pending(2)]
    assert check_gates(Gates(max_error_rate=0.01), devices) is None
    assert check_gates(Gates(max_error_rate=0.009), devices) is not None


def test_error_rate_is_not_judged_below_min_requests_and_the_next_wave_says_so() -> None:
    devices = [updated("a", requests=19, errors=19), *pending(2)]
    assert check_gates(Gates(min_requests=20), devices) is None
    d = decide(rollout(wave=0), devices, T0 + 300)
    assert d == Decision("assign", 1, ("dev-0", "dev-1"),
                         "wave 0 healthy; wave 1: 2 devices; error rate not judged: 19 requests < min 20")
    at_min = [updated("a", requests=20, errors=20), *pending(2)]
    assert decide(rollout(wave=0), at_min, T0).action == "rollback"


def test_success_with_too_little_traffic_says_the_error_rate_was_not_judged() -> None:
    d = decide(rollout(wave=0, min_requests=50), [updated("a", requests=3)], T0 + 300)
    assert d == Decision("succeed", 0, (), "all waves done and healthy; error rate not judged: 3 requests < min 50")


def test_zero_min_requests_still_needs_one_request_to_judge() -> None:
    devices = [updated("a"), *pending(1)]
    assert check_gates(Gates(min_requests=0, max_error_rate=0), devices) is None
    d = decide(rollout(wave=0, min_requests=0), devices, T0 + 300)
    assert d.reason.endswith("error rate not judged: 0 requests < min 1")
    assert check_gates(Gates(min_requests=0, max_error_rate=0), [updated("a", requests=1, errors=1)]) is not None


@pytest.mark.parametrize(("p95", "rolls_back"), [(499.9, False), (500.0, False), (500.01, True), (None, False)])
def test_p95_gate_at_its_boundary(p95: float | None, rolls_back: bool) -> None:
    devices = [updated("a", p95=120), updated("slow", p95=p95), *pending(2)]
    reason = check_gates(Gates(max_p95_ms=500), devices)
    assert (reason is not None) == rolls_back
    if rolls_back:
        assert reason == "p95 latency 500.01 ms on slow > max_p95_ms 500 ms"


def test_p95_gate_names_the_worst_device_and_is_off_when_unset() -> None:
    devices = [updated("a", p95=700), updated("b", p95=900), updated("c", p95=800)]
    assert check_gates(Gates(max_p95_ms=600), devices) == "p95 latency 900 ms on b > max_p95_ms 600 ms"
    assert check_gates(Gates(), devices) is None


def test_slow_device_rolls_back_before_bake_time() -> None:
    devices = [updated("a", p95=900, requests=5), *pending(3)]
    d = decide(rollout(wave=0, max_p95_ms=250), devices, T0 + 1)
    assert d.action == "rollback" and "on a" in d.reason


def test_gates_read_only_updated_and_failed_devices() -> None:
    quiet = [dev("p", requests=100, errors=100, p95=10_000), dev("s", "assigned", 0, requests=100, errors=100,
                                                                  p95=10_000)]
    assert check_gates(Gates(max_p95_ms=1, max_error_rate=0), quiet) is None


def test_failed_devices_gate_is_judged_before_the_error_rate() -> None:
    devices = [dev("f", "failed", 0, failure="x"), updated("a", requests=100, errors=100)]
    assert "max_failed_devices" in (check_gates(Gates(), devices) or "")


# --- a whole rollout against a fake fleet and a fake clock ----------------------------------------------

APPLY_S = 20.0  # how long an online device takes to download and load the version
TICK_S = 10.0


@dataclass
class FakeDevice:
    """A device's behaviour in the simulation, and the record the control plane keeps for it."""

    name: str
    kind: str = "ok"  # ok | errors | refuses | slow | offline
    state: str = "pending"
    wave: int | None = None
    assigned_at: float | None = None
    updated_at: float | None = None
    requests: int = 0
    errors: int = 0

    def tick(self, now: float) -> None:
        applied = self.assigned_at is not None and now - self.assigned_at >= APPLY_S
        if self.state == "assigned" and self.kind != "offline" and applied:
            self.state, self.updated_at = ("failed", None) if self.kind == "refuses" else ("updated", now)
        elif self.state == "updated":
            self.requests += 5
            self.errors += 5 if self.kind == "errors" else 0  # a broken model: every request fails

    def view(self) -> DeviceView:
        return DeviceView(self.name, self.wave, self.state, self.kind != "offline", self.updated_at, self.requests,
                          self.errors, 900.0 if self.kind == "slow" else 40.0,
                          "verification refused: not_signed" if self.state == "failed" else None)


@dataclass
class Simulation:
    devices: list[FakeDevice]
    strategy: Strategy
    now: float = T0
    state: str = "rolling"
    wave: int = -1
    wave_started_at: float | None = None
    decisions: list[tuple[float, Decision]] = field(default_factory=list)

    def run(self, max_ticks: int = 2000) -> Decision:
        for _ in range(max_ticks):
            for device in self.devices:
                device.tick(self.now)
            view = RolloutView(self.state, self.wave, self.wave_started_at, self.strategy)
            d = decide(view, [device.view() for device in self.devices], self.now)
            if d.action != "wait":
                self.decisions.append((self.now, d))
            if d.action == "assign":
                by_name = {device.name: device for device in self.devices}
                for name in d.devices:
                    by_name[name].state, by_name[name].wave, by_name[name].assigned_at = "assigned", d.wave, self.now
                self.wave, self.wave_started_at = d.wave, self.now
            elif d.action in ("succeed", "rollback"):
                self.state = "succeeded" if d.action == "succeed" else "rolled_back"
                return d
            self.now += TICK_S
        raise AssertionError(f"rollout did not finish: {self.decisions[-3:]}")

    def assigned_waves(self) -> list[tuple[str, ...]]:
        return [d.devices for _, d in self.decisions if d.action == "assign"]


def fleet(n: int, **kinds: str) -> list[FakeDevice]:
    return [FakeDevice(f"dev-{i}", kinds.get(f"dev_{i}", "ok")) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 7, 25, 50])
@pytest.mark.parametrize(("canary", "batch"), [(10, 0), (20, 3), (100, 0), (1, 10)])
def test_healthy_fleet_rolls_out_wave_by_wave_and_succeeds(n: int, canary: float, batch: int) -> None:
    sim = Simulation(fleet(n), strategy(canary=canary, batch=batch, bake=120))
    final = sim.run()
    assert final.action == "succeed" and sim.state == "succeeded"
    assert all(device.state == "updated" for device in sim.devices)
    waves = sim.assigned_waves()
    assert [len(w) for w in waves] == wave_sizes(n, canary, batch)
    assert [name for w in waves for name in w] == [device.name for device in sim.devices]  # in order
    assigns = [t for t, d in sim.decisions]
    assert all(later - earlier >= APPLY_S + 120 for earlier, later in zip(assigns, assigns[1:]))


@pytest.mark.parametrize(("bad", "kind"), [(0, "refuses"), (0, "errors"), (0, "slow"), (9, "errors"),
                                           (9, "refuses"), (24, "slow")])
def test_unhealthy_device_rolls_back_in_its_wave_and_later_waves_are_never_assigned(bad: int, kind: str) -> None:
    n, canary, batch = 25, 4, 5  # waves: [1, 5, 5, 5, 5, 4]
    sim = Simulation(fleet(n, **{f"dev_{bad}": kind}), strategy(canary=canary, batch=batch, bake=300, max_p95_ms=500))
    final = sim.run()
    assert final.action == "rollback" and sim.state == "rolled_back"
    assert any(gate in final.reason for gate in GATE_NAMES)
    bad_wave = next(device.wave for device in sim.devices if device.name == f"dev-{bad}")
    assert final.wave == bad_wave
    assert len(sim.assigned_waves()) == bad_wave + 1
    assert all(device.state == "pending" for device in sim.devices if device.wave is None)


def test_failing_canary_rolls_back_well_within_the_bake_time() -> None:
    sim = Simulation(fleet(10, dev_0="refuses"), strategy(bake=3600))
    final = sim.run()
    assert final.action == "rollback" and sim.now - T0 <= APPLY_S + TICK_S
    assert [device.state for device in sim.devices].count("pending") == 9


def test_offline_devices_catch_up_later_and_do_not_hold_the_fleet_back() -> None:
    sim = Simulation(fleet(12, dev_3="offline", dev_8="offline"), strategy(canary=10, batch=4, bake=60))
    final = sim.run()
    assert final.action == "succeed"
    assert {device.name for device in sim.devices if device.state == "assigned"} == {"dev-3", "dev-8"}


def test_error_prone_device_within_min_requests_is_judged_once_traffic_arrives() -> None:
    # Every request fails, but the rate is not judged until 100 requests have been served.
    sim = Simulation(fleet(5, dev_0="errors"), strategy(canary=20, bake=30, min_requests=100))
    final = sim.run()
    assert final.action == "rollback" and "max_error_rate" in final.reason
    # The first wave moved on after its bake with the error rate not yet judged; the next one did not.
    assert "error rate not judged" in sim.decisions[1][1].reason


# --- properties over arbitrary device states ----------------------------------------------------------

if st is not None:
    STATES = ("pending", "assigned", "updated", "failed", "rolled_back")

    # Tuples and builds, not one draw per field: it keeps each example cheap, so the file stays fast.
    _device_rows = st.lists(st.tuples(
        st.sampled_from(STATES), st.integers(0, 5), st.booleans(), st.none() | st.floats(0, 1000),
        st.integers(0, 60), st.integers(0, 60), st.none() | st.floats(1, 1000),
        st.none() | st.sampled_from(["load error", "verification refused:\nnot_signed"]),
    ), max_size=14)
    _gates = st.builds(Gates, max_error_rate=st.sampled_from([0, 0.05, 0.5, 1]),
                       max_p95_ms=st.none() | st.floats(100, 900), max_failed_devices=st.integers(0, 3),
                       min_requests=st.integers(0, 50))
    _strategies = st.builds(Strategy, canary_percent=st.floats(0.01, 100), batch_size=st.integers(0, 5),
                            bake_time_s=st.sampled_from([0, 10, 300]), gates=_gates)
    _rollouts = st.builds(RolloutView, st.sampled_from(["rolling"] * 4 + ["paused", "succeeded", "rolled_back",
                                                                          "superseded"]),
                          st.integers(-1, 5), st.none() | st.floats(0, 1000), _strategies)

    def _devices(rows: list[tuple]) -> list[DeviceView]:  # type: ignore[type-arg]
        # Pending devices have no wave; errors never exceed requests. Other combinations are left random.
        return [DeviceView(f"dev-{i}", None if state == "pending" else wave, state, online, at, requests,
                           min(errors, requests), p95, failure)
                for i, (state, wave, online, at, requests, errors, p95, failure) in enumerate(rows)]

    def scenarios():  # type: ignore[no-untyped-def]
        return st.tuples(_rollouts, _device_rows.map(_devices), st.floats(0, 2000))

    quick = settings(max_examples=100, deadline=None, database=None)

    @quick
    @given(scenarios())
    def test_never_assigns_a_device_that_is_not_pending(scenario) -> None:  # type: ignore[no-untyped-def]
        view, devices, now = scenario
        d = decide(view, devices, now)
        if d.action == "assign":
            states = {device.name: device.state for device in devices}
            assert d.devices and all(states[name] == "pending" for name in d.devices)
            assert len(set(d.devices)) == len(d.devices)
            assert d.wave == max(view.wave, -1) + 1

    @quick
    @given(scenarios())
    def test_never_assigns_more_than_the_wave_size(scenario) -> None:  # type: ignore[no-untyped-def]
        view, devices, now = scenario
        d = decide(view, devices, now)
        if d.action == "assign":
            live = [device for device in devices if device.state != "rolled_back"]
            sizes = wave_sizes(len(live), view.strategy.canary_percent, view.strategy.batch_size)
            limit = sizes[d.wave] if d.wave < len(sizes) else len(live)
            assert len(d.devices) <= limit

    @quick
    @given(scenarios())
    def test_rollback_always_names_the_gate_that_failed(scenario) -> None:  # type: ignore[no-untyped-def]
        view, devices, now = scenario
        d = decide(view, devices, now)
        live = [device for device in devices if device.state != "rolled_back"]
        unhealthy = check_gates(view.strategy.gates, live)
        if d.action == "rollback":
            assert any(gate in d.reason for gate in GATE_NAMES) and d.reason == unhealthy
            assert "\n" not in d.reason
        # A failing gate on a rolling deployment always rolls back; a healthy one never does.
        assert (d.action == "rollback") == (view.state == "rolling" and unhealthy is not None)

    @quick
    @given(scenarios())
    def test_succeeds_only_when_no_device_is_pending(scenario) -> None:  # type: ignore[no-untyped-def]
        view, devices, now = scenario
        d = decide(view, devices, now)
        if d.action == "succeed":
            assert view.state == "rolling"
            assert not any(device.state == "pending" for device in devices)

    @quick
    @given(scenarios())
    def test_decision_depends_only_on_its_inputs(scenario) -> None:  # type: ignore[no-untyped-def]
        view, devices, now = scenario
        first = decide(view, devices, now)
        assert decide(view, tuple(devices), now) == first and first.reason
        if view.state != "rolling":
            assert first.action == "wait"
else:

    @pytest.mark.skip(reason="the property tests need hypothesis (pip install hypothesis)")
    def test_property_tests_need_hypothesis() -> None:
        pass
