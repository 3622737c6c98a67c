"""Alert evaluation as a pure function, and webhook delivery against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import get_args

import pytest

import edgemill
from edgemill.fleet.alerts import (
    METRICS,
    OPS,
    Evaluation,
    FleetFacts,
    Rule,
    Sample,
    evaluate,
    measure,
    transition,
    validate_rule,
)
from edgemill.fleet.schemas import AlertMetric, AlertRuleIn
from edgemill.fleet.webhooks import (
    MAX_ATTEMPTS,
    SIGNATURE_HEADER,
    DeliveryResult,
    backoff_s,
    deliver,
    payload_for,
    sign,
)

NOW = 10_000.0
FACTS = FleetFacts(
    offline_devices={"cams": 3, "gates": 1},
    failed_deployments={"cams": 2},
    device_fleet={"cam-1": "cams", "cam-2": "cams", "gate-1": "gates"},
)
NO_FACTS = FleetFacts(offline_devices={}, failed_deployments={}, device_fleet={})


def rule(metric: str = "error_rate", op: str = ">", threshold: float = 0.05, window_s: float = 300, **scope: str) -> Rule:
    return Rule(name="r", metric=metric, op=op, threshold=threshold, window_s=window_s, **scope)


def sample(t: float = NOW, device: str = "cam-1", fleet: str = "cams", model: str = "mlp",
           requests: int = 100, errors: int = 0, p95_ms: float | None = 10.0) -> Sample:
    return Sample(t=t, device=device, fleet=fleet, model=model, requests=requests, errors=errors, p95_ms=p95_ms)


# --- the contract with the API schema ------------------------------------------------------------


def test_every_metric_and_op_the_api_accepts_is_evaluated() -> None:
    assert METRICS == set(get_args(AlertMetric))
    assert set(OPS) == set(get_args(AlertRuleIn.model_fields["op"].annotation))


# --- error_rate ----------------------------------------------------------------------------------


def test_error_rate_is_errors_over_requests_summed_across_samples() -> None:
    samples = [sample(requests=100, errors=10), sample(t=NOW - 60, device="cam-2", requests=300, errors=10)]
    assert measure(rule(), samples, FACTS, NOW) == pytest.approx(20 / 400)


def test_error_rate_with_no_requests_is_no_data() -> None:
    assert measure(rule(), [], FACTS, NOW) is None
    assert measure(rule(), [sample(requests=0, errors=0)], FACTS, NOW) is None


def test_error_rate_message_names_scope_value_threshold_window_and_requests() -> None:
    samples = [sample(requests=1000, errors=310), sample(device="cam-2", requests=204, errors=63)]
    ev = evaluate(rule(model="mlp", fleet="cams"), samples, FACTS, NOW)
    assert ev.breached
    assert ev.message == "error_rate of model 'mlp' on fleet 'cams' is 0.31 > 0.05 over 300 s (1,204 requests)"


# --- p95_latency_ms ------------------------------------------------------------------------------


def test_p95_is_the_worst_report_in_scope() -> None:
    samples = [sample(p95_ms=12.0), sample(device="cam-2", p95_ms=80.5), sample(device="cam-2", p95_ms=None)]
    assert measure(rule("p95_latency_ms", threshold=50), samples, FACTS, NOW) == 80.5


def test_p95_without_any_report_is_no_data() -> None:
    assert measure(rule("p95_latency_ms", threshold=50), [], FACTS, NOW) is None
    assert measure(rule("p95_latency_ms", threshold=50), [sample(p95_ms=None)], FACTS, NOW) is None


def test_p95_message_says_how_many_reports_it_rests_on() -> None:
    ev = evaluate(rule("p95_latency_ms", threshold=50), [sample(p95_ms=12.0), sample(p95_ms=80.5)], FACTS, NOW)
    assert ev.message == "p95_latency_ms on all fleets is 80.5 > 50 over 300 s (worst of 2 reports)"


# --- requests_per_min ----------------------------------------------------------------------------


def test_requests_per_min_is_requests_over_the_window_in_minutes() -> None:
    samples = [sample(requests=600), sample(t=NOW - 100, requests=900)]
    assert measure(rule("requests_per_min", threshold=1), samples, FACTS, NOW) == pytest.approx(1500 / 5)


def test_silence_is_zero_requests_per_min_so_a_traffic_drop_fires() -> None:
    stopped = rule("requests_per_min", op="<", threshold=1, model="mlp")
    ev = evaluate(stopped, [sample(model="other")], FACTS, NOW)
    assert ev.value == 0.0 and ev.breached
    assert ev.message == "requests_per_min of model 'mlp' on all fleets is 0 < 1 over 300 s (0 requests)"


# --- offline_devices and failed_deployments ------------------------------------------------------


@pytest.mark.parametrize(("metric", "fleet", "expected"), [
    ("offline_devices", "cams", 3.0),
    ("offline_devices", "gates", 1.0),
    ("offline_devices", None, 4.0),  # no fleet scope: every fleet
    ("offline_devices", "empty", 0.0),  # a fleet with nothing offline is simply absent from the facts
    ("failed_deployments", "cams", 2.0),
    ("failed_deployments", "gates", 0.0),
    ("failed_deployments", None, 2.0),
])
def test_state_metrics_count_the_fleet_in_scope(metric: str, fleet: str | None, expected: float) -> None:
    scope = {"fleet": fleet} if fleet else {}
    assert measure(rule(metric, op=">=", threshold=1, **scope), [], FACTS, NOW) == expected


def test_a_device_scope_on_a_state_metric_counts_that_devices_fleet() -> None:
    assert measure(rule("offline_devices", threshold=0, device="gate-1"), [], FACTS, NOW) == 1.0
    assert measure(rule("offline_devices", threshold=0, device="cam-2", fleet="cams"), [], FACTS, NOW) == 3.0


def test_a_device_scope_on_a_state_metric_gives_no_data_for_an_unknown_or_foreign_device() -> None:
    assert measure(rule("offline_devices", threshold=0, device="ghost"), [], FACTS, NOW) is None
    assert measure(rule("offline_devices", threshold=0, device="gate-1", fleet="cams"), [], FACTS, NOW) is None


def test_state_metrics_ignore_the_window_and_the_samples() -> None:
    old = [sample(t=NOW - 10_000)]
    ev = evaluate(rule("offline_devices", op=">=", threshold=2, fleet="cams"), old, FACTS, NOW)
    assert ev.value == 3.0 and ev.breached
    assert ev.message == "offline_devices on fleet 'cams' is 3 >= 2"


# --- ops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("op", "below", "equal", "above"), [
    (">", False, False, True),
    (">=", False, True, True),
    ("<", True, False, False),
    ("<=", True, True, False),
])
def test_each_op_compares_value_with_threshold(op: str, below: bool, equal: bool, above: bool) -> None:
    # requests_per_min over 60 s is the request count itself: an exact value to compare with 10.
    def breached(requests: int) -> bool:
        return evaluate(rule("requests_per_min", op=op, threshold=10, window_s=60),
                        [sample(requests=requests)], FACTS, NOW).breached

    assert (breached(9), breached(10), breached(11)) == (below, equal, above)


def test_a_value_within_the_threshold_says_not() -> None:
    ev = evaluate(rule(), [sample(requests=100, errors=1)], FACTS, NOW)
    assert not ev.breached
    assert ev.message == "error_rate on all fleets is 0.01, not > 0.05 over 300 s (100 requests)"


def test_an_unknown_op_or_metric_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="op"):
        evaluate(rule(op="=="), [], FACTS, NOW)
    with pytest.raises(ValueError, match="metric"):
        measure(rule("cpu"), [], FACTS, NOW)


# --- scopes --------------------------------------------------------------------------------------


MIXED = [
    sample(device="cam-1", model="mlp", requests=100, errors=50),
    sample(device="cam-2", model="cnn", requests=100, errors=20),
    sample(device="gate-1", fleet="gates", model="mlp", requests=100, errors=0),
]


@pytest.mark.parametrize(("scope", "expected"), [
    ({}, 70 / 300),
    ({"model": "mlp"}, 50 / 200),
    ({"device": "cam-2"}, 20 / 100),
    ({"fleet": "gates"}, 0.0),
    ({"fleet": "cams", "model": "mlp"}, 50 / 100),
    ({"device": "cam-1", "model": "cnn"}, None),
    ({"model": "absent"}, None),
])
def test_scope_selects_samples_by_model_device_and_fleet(scope: dict[str, str], expected: float | None) -> None:
    value = measure(rule(**scope), MIXED, FACTS, NOW)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_the_registry_fleet_of_a_device_wins_over_the_samples_fleet() -> None:
    moved = [sample(device="cam-1", fleet="old-fleet", requests=10, errors=10)]
    assert measure(rule(fleet="cams"), moved, FACTS, NOW) == 1.0
    assert measure(rule(fleet="old-fleet"), moved, FACTS, NOW) is None


def test_an_unregistered_device_counts_for_the_fleet_its_samples_name() -> None:
    assert measure(rule(fleet="lab"), [sample(device="bench", fleet="lab", requests=4, errors=1)], NO_FACTS, NOW) == 0.25


def test_message_names_every_scope_given() -> None:
    ev = evaluate(rule(model="mlp", device="cam-1"), [sample(requests=10, errors=5)], FACTS, NOW)
    assert ev.message.startswith("error_rate of model 'mlp' on device 'cam-1' is 0.5 > 0.05")


# --- the window ----------------------------------------------------------------------------------


def test_a_sample_exactly_one_window_old_is_out() -> None:
    assert measure(rule(), [sample(t=NOW - 300, requests=10, errors=10)], FACTS, NOW) is None


def test_a_sample_just_inside_the_window_is_in() -> None:
    assert measure(rule(), [sample(t=NOW - 299.999, requests=10, errors=10)], FACTS, NOW) == 1.0


def test_a_sample_exactly_at_now_is_in() -> None:
    assert measure(rule(), [sample(t=NOW, requests=10, errors=10)], FACTS, NOW) == 1.0


def test_a_sample_from_the_future_is_out() -> None:
    assert measure(rule(), [sample(t=NOW + 0.001, requests=10, errors=10)], FACTS, NOW) is None


def test_the_window_decides_which_samples_count() -> None:
    samples = [sample(t=NOW - 30, requests=10, errors=0), sample(t=NOW - 120, requests=10, errors=10)]
    assert measure(rule(window_s=60), samples, FACTS, NOW) == 0.0
    assert measure(rule(window_s=300), samples, FACTS, NOW) == 0.5


# --- no data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(OPS))
def test_no_data_never_breaches_whatever_the_op(op: str) -> None:
    ev = evaluate(rule(op=op, threshold=0.5), [], FACTS, NOW)
    assert ev == Evaluation(None, False, f"error_rate on all fleets has no data over 300 s (alert when {op} 0.5)")


def test_no_data_message_for_a_state_metric_has_no_window() -> None:
    ev = evaluate(rule("failed_deployments", threshold=0, device="ghost"), [], FACTS, NOW)
    assert ev.message == "failed_deployments on device 'ghost' has no data (alert when > 0)"


# --- transitions ---------------------------------------------------------------------------------

BREACHED = Evaluation(0.3, True, "")
HEALTHY = Evaluation(0.01, False, "")
NO_DATA = Evaluation(None, False, "")


@pytest.mark.parametrize(("firing", "ev", "expected"), [
    (False, BREACHED, "fire"),
    (False, HEALTHY, "stay"),
    (False, NO_DATA, "stay"),
    (True, BREACHED, "stay"),
    (True, HEALTHY, "resolve"),
    (True, NO_DATA, "stay"),  # missing data is not recovery
])
def test_transition_table(firing: bool, ev: Evaluation, expected: str) -> None:
    assert transition(firing, ev) == expected


def test_a_firing_alert_survives_a_silent_window_and_resolves_on_healthy_data() -> None:
    r = rule(device="cam-1")
    firing = False
    steps = []
    for now, samples in [(NOW, [sample(requests=10, errors=5)]),
                         (NOW + 600, []),  # the device went quiet
                         (NOW + 1200, [sample(t=NOW + 1200, requests=10, errors=0)])]:
        step = transition(firing, evaluate(r, samples, FACTS, now))
        firing = {"fire": True, "resolve": False, "stay": firing}[step]
        steps.append(step)
    assert steps == ["fire", "stay", "resolve"]


# --- rule validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "says"), [
    (rule(threshold=-0.1), "never negative"),
    (rule("p95_latency_ms", threshold=-1), "never negative"),
    (rule("requests_per_min", threshold=-5), "never negative"),
    (rule("offline_devices", threshold=-1), "never negative"),
    (rule(threshold=1.5), "between 0 and 1"),
    (rule(threshold=float("nan")), "finite"),
    (rule("p95_latency_ms", threshold=float("inf")), "finite"),
    (rule(window_s=0), "window_s"),
    (rule("cpu"), "metric"),
    (rule(op="=="), "op"),
    (rule("offline_devices", threshold=1, model="mlp"), "model"),
    (rule("failed_deployments", threshold=1, model="mlp"), "model"),
    (rule(op=">", threshold=1), "never be true"),
    (rule("requests_per_min", op="<", threshold=0), "never be true"),
    (rule("offline_devices", op=">=", threshold=0), "always true"),
    (rule(op="<=", threshold=1), "always true"),
])
def test_rules_that_make_no_sense_are_refused_with_a_reason(bad: Rule, says: str) -> None:
    reason = validate_rule(bad)
    assert reason is not None and says in reason


@pytest.mark.parametrize("good", [
    rule(),
    rule(op=">=", threshold=1),
    rule("p95_latency_ms", threshold=250, model="mlp", device="cam-1"),
    rule("requests_per_min", op="<=", threshold=0, model="mlp"),  # "no traffic at all"
    rule("offline_devices", op=">", threshold=0, fleet="cams"),
    rule("failed_deployments", op=">=", threshold=1, device="cam-1"),
])
def test_sensible_rules_pass_validation(good: Rule) -> None:
    assert validate_rule(good) is None


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_with_full_jitter_stays_between_zero_and_the_capped_exponential() -> None:
    for attempt in range(1, 200):
        ceiling = min(600.0, 2.0 * 2 ** min(attempt - 1, 30))
        assert backoff_s(attempt, rand=lambda: 0.0) == 0.0
        assert backoff_s(attempt, rand=lambda: 0.5) == pytest.approx(ceiling / 2)
        assert backoff_s(attempt, rand=lambda: 0.999999) <= ceiling <= 600.0


def test_backoff_doubles_until_the_cap() -> None:
    waits = [backoff_s(a, base_s=1.0, cap_s=50.0, rand=lambda: 1.0) for a in range(1, MAX_ATTEMPTS + 1)]
    assert waits == [1, 2, 4, 8, 16, 32, 50, 50]


def test_backoff_does_not_overflow_for_a_webhook_that_fails_forever() -> None:
    assert backoff_s(10_000, rand=lambda: 1.0) == 600.0


def test_backoff_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_s(0)


# --- payload -------------------------------------------------------------------------------------

ALERT = {
    "id": 7, "rule": "cams-errors", "metric": "error_rate", "state": "firing", "value": 0.31, "threshold": 0.05,
    "message": "error_rate of model 'mlp' on fleet 'cams' is 0.31 > 0.05 over 300 s (1,204 requests)",
    "started_at": datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc), "resolved_at": None,
    "webhook": {"attempts": 0},
}


def test_payload_is_canonical_json_with_the_documented_fields() -> None:
    body = payload_for(ALERT)
    decoded = json.loads(body)
    assert body == json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert decoded == {
        "id": 7, "alert": "cams-errors", "state": "firing", "metric": "error_rate", "value": 0.31,
        "threshold": 0.05, "message": ALERT["message"], "started_at": "2026-03-01T12:00:00Z",
        "resolved_at": None, "dashboard_path": "/dashboard/#alerts",
    }


def test_payload_is_the_same_bytes_for_the_same_alert_in_any_key_order() -> None:
    assert payload_for(dict(reversed(list(ALERT.items())))) == payload_for(ALERT)


def test_payload_times_may_be_unix_seconds_and_non_finite_values_travel_as_null() -> None:
    resolved = {**ALERT, "state": "resolved", "value": float("inf"),
                "started_at": 1_772_366_400.0, "resolved_at": datetime(2026, 3, 1, 12, 5)}
    decoded = json.loads(payload_for(resolved))
    assert decoded["started_at"] == "2026-03-01T12:00:00Z"
    assert decoded["resolved_at"] == "2026-03-01T12:05:00Z"  # a naive datetime is read as UTC
    assert decoded["value"] is None and decoded["state"] == "resolved"


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = payload_for(ALERT)
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == sign(body, b"s3cret") == f"sha256={expected}"


# --- delivery against a real HTTP server ---------------------------------------------------------

SECRET = "hook-secret"


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers from a script, checking each signature itself."""

    url: str
    script: list[int | None]  # status per request, in order (the last repeats); None: never answer
    seen: list[dict[str, object]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # a proxy in the environment must not stand in between
    state = Receiver(url="", script=[200])
    counter = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            good = hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), sign(body, SECRET))
            state.seen.append({"body": body, "signature_ok": good, "content_type": self.headers["Content-Type"],
                               "user_agent": self.headers["User-Agent"]})
            status = state.script[min(next(counter), len(state.script) - 1)]
            if status is None:
                state.release.wait(5)  # hold the connection without answering until the test ends
                return
            if not good:
                status = 401
            reply = b'{"detail": "payload refused: unknown alert"}' if status >= 400 else b"ok"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(2)


def send(receiver: Receiver, timeout_s: float = 2.0) -> DeliveryResult:
    return deliver(receiver.url, payload_for(ALERT), timeout_s=timeout_s, secret=SECRET)


def test_a_receiver_that_fails_twice_then_accepts_is_retried_until_delivered(receiver: Receiver) -> None:
    receiver.script = [500, 500, 200]
    results = [send(receiver) for _ in range(3)]
    assert [(r.ok, r.status, r.retry) for r in results] == [(False, 500, True), (False, 500, True), (True, 200, False)]
    assert results[0].error is not None and results[0].error.startswith("HTTP 500")
    assert results[2].error is None
    assert [s["body"] for s in receiver.seen] == [payload_for(ALERT)] * 3


def test_the_receiver_can_check_the_sender(receiver: Receiver) -> None:
    assert send(receiver).ok
    seen = receiver.seen[0]
    assert seen["signature_ok"] is True
    assert seen["content_type"] == "application/json"
    assert seen["user_agent"] == f"edgemill/{edgemill.__version__}"


def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(receiver: Receiver) -> None:
    result = deliver(receiver.url, payload_for(ALERT), timeout_s=2.0, secret="wrong")
    assert receiver.seen[0]["signature_ok"] is False
    assert (result.ok, result.status, result.retry) == (False, 401, False)


def test_a_refused_payload_is_not_retried_and_the_reason_is_kept(receiver: Receiver) -> None:
    receiver.script = [400]
    result = send(receiver)
    assert (result.ok, result.status, result.retry) == (False, 400, False)
    assert result.error is not None and "payload refused: unknown alert" in result.error


@pytest.mark.parametrize("status", [408, 429, 502, 503])
def test_not_now_answers_are_retried(receiver: Receiver, status: int) -> None:
    receiver.script = [status]
    assert send(receiver).retry


def test_a_redirect_is_reported_instead_of_silently_dropping_the_body(receiver: Receiver) -> None:
    receiver.script = [302]
    result = send(receiver)
    assert (result.ok, result.status, result.retry) == (False, 302, False)


def test_a_receiver_that_never_answers_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.script = [None]
    result = send(receiver, timeout_s=0.3)
    assert (result.ok, result.status, result.retry) == (False, None, True)
    assert result.error == "no answer within 0.3 s"


def test_a_closed_port_is_retried() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = deliver(f"http://127.0.0.1:{port}/hook", b"{}", timeout_s=1.0)
    assert (result.ok, result.status, result.retry) == (False, None, True)
    assert result.error is not None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "not a url", "http://127.0.0.1:notaport/"])
def test_a_url_that_cannot_work_is_not_retried_and_nothing_is_raised(url: str) -> None:
    result = deliver(url, b"{}", timeout_s=1.0)
    assert (result.ok, result.retry) == (False, False)
    assert result.error
