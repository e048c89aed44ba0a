"""Metric collectors: one factory call per circuit, one update per command with hystrix-go's fields, resets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix import Context, FallbackError, MetricResult
from fasthystrix.metric_collector import MetricCollector, registry
from support import WAIT, wait_until

COUNT_FIELDS = (
    "attempts",
    "errors",
    "successes",
    "failures",
    "rejects",
    "short_circuits",
    "timeouts",
    "fallback_successes",
    "fallback_failures",
    "context_canceled",
    "context_deadline_exceeded",
)


class Recorder:
    """A collector that remembers every call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.updates: list[MetricResult] = []
        self.resets = 0
        self.log: list[str] = []

    def update(self, result: MetricResult) -> None:
        self.updates.append(result)
        self.log.append("update")

    def reset(self) -> None:
        self.resets += 1
        self.log.append("reset")


class Recorders:
    """A factory that records each circuit name it is called with and the collectors it made."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.made: dict[str, Recorder] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Recorder:
        with self._lock:
            self.calls.append(name)
            collector = self.made[name] = Recorder(name)
        return collector


@pytest.fixture
def recorders() -> Recorders:
    factory = Recorders()
    registry.register(factory)
    return factory


def _counts(result: MetricResult) -> dict[str, int]:
    return {f: getattr(result, f) for f in COUNT_FIELDS if getattr(result, f)}


def _wait_tickets(name: str) -> None:
    circuit = fasthystrix.get_circuit(name)[0]
    wait_until(lambda: circuit.tickets_in_use == 0, f"every ticket of {name} back")


def test_recorder_satisfies_the_protocol() -> None:
    assert isinstance(Recorder("x"), MetricCollector)
    assert isinstance(fasthystrix.metric_collector.DefaultMetricCollector("x"), MetricCollector)


# -- factories ---------------------------------------------------------------------------------


def test_factory_called_once_per_circuit_with_its_name(recorders: Recorders) -> None:
    assert recorders.calls == []
    _, created = fasthystrix.get_circuit("a")
    assert created
    assert recorders.calls == ["a"]
    fasthystrix.get_circuit("a")
    fasthystrix.do("a", lambda: None)
    fasthystrix.go("a", lambda: None).result(WAIT)
    assert recorders.calls == ["a"]
    fasthystrix.do("b", lambda: None)
    assert recorders.calls == ["a", "b"]
    assert recorders.made["a"].name == "a"


def test_factory_called_once_under_racing_threads(recorders: Recorders) -> None:
    start = threading.Barrier(16)
    created: list[bool] = []

    def race() -> None:
        start.wait()
        created.append(fasthystrix.get_circuit("raced")[1])

    threads = [threading.Thread(target=race) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert created.count(True) == 1
    assert recorders.calls == ["raced"]


def test_factories_apply_in_registration_order() -> None:
    order: list[str] = []

    def make(tag: str) -> Callable[[str], Recorder]:
        def factory(name: str) -> Recorder:
            order.append(tag)
            return Recorder(name)

        return factory

    registry.register(make("first"))
    registry.register(make("second"))
    fasthystrix.get_circuit("ordered")
    assert order == ["first", "second"]


def test_collectors_registered_later_do_not_apply_to_existing_circuits() -> None:
    fasthystrix.do("early", lambda: None)
    late = Recorders()
    registry.register(late)
    fasthystrix.do("early", lambda: None)
    assert late.calls == []
    fasthystrix.do("later", lambda: None)
    assert late.calls == ["later"]
    assert len(late.made["later"].updates) == 1
    fasthystrix.flush()
    fasthystrix.do("early", lambda: None)
    assert late.calls == ["later", "early"]
    assert len(late.made["early"].updates) == 1


def test_failing_factory_is_logged_and_circuit_still_created(
    caplog: pytest.LogCaptureFixture, recorders: Recorders
) -> None:
    def broken(name: str) -> MetricCollector:
        raise RuntimeError("factory exploded")

    registry.unregister(recorders)
    registry.register(broken)
    registry.register(recorders)
    with caplog.at_level(logging.ERROR, logger="fasthystrix"):
        circuit, created = fasthystrix.get_circuit("sturdy")
    assert created
    assert circuit.name == "sturdy"
    records = [r for r in caplog.records if r.name.startswith("fasthystrix")]
    assert len(records) == 1
    assert records[0].levelno >= logging.ERROR
    assert records[0].exc_info is not None
    assert "factory exploded" in str(records[0].exc_info[1])
    assert fasthystrix.do("sturdy", lambda: 7) == 7
    assert circuit.metrics().successes == 1
    assert recorders.calls == ["sturdy"]
    assert len(recorders.made["sturdy"].updates) == 1


# -- one update per command, with the right fields ------------------------------------------------

Scenario = Callable[[str, FakeClock], None]


def _success(name: str, clock: FakeClock) -> None:
    def run() -> str:
        clock.advance(ms=30)
        return "ok"

    assert fasthystrix.do(name, run) == "ok"


def _failure(name: str, clock: FakeClock) -> None:
    def run() -> None:
        clock.advance(ms=30)
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        fasthystrix.do(name, run)


def _failure_fallback_success(name: str, clock: FakeClock) -> None:
    def run() -> None:
        clock.advance(ms=30)
        raise RuntimeError("down")

    assert fasthystrix.do(name, run, lambda err: "fb") == "fb"


def _fallback_failure(name: str, clock: FakeClock) -> None:
    def run() -> None:
        clock.advance(ms=30)
        raise RuntimeError("down")

    def fallback(err: BaseException) -> None:
        raise ValueError("fallback down")

    with pytest.raises(FallbackError):
        fasthystrix.do(name, run, fallback)


def _rejected(name: str, clock: FakeClock) -> None:
    isolation = fasthystrix.get_circuit_settings()[name].isolation
    fasthystrix.configure_command(name, {"isolation": isolation, "max_concurrent_requests": 0})
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do(name, lambda: None)


def _short_circuit(name: str, clock: FakeClock) -> None:
    fasthystrix.get_circuit(name)[0].force_open = True
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: None)


def _timeout(name: str, clock: FakeClock) -> None:
    def run() -> str:
        clock.advance(ms=1500)
        return "late"

    with pytest.raises(fasthystrix.TimeoutError):
        fasthystrix.do(name, run)


def _timeout_fallback(name: str, clock: FakeClock) -> None:
    def run() -> str:
        clock.advance(ms=1500)
        return "late"

    assert fasthystrix.do(name, run, lambda err: "fb") == "fb"


def _context_canceled(name: str, clock: FakeClock) -> None:
    outer = Context()

    def run(ctx: Context) -> str:
        clock.advance(ms=30)
        outer.cancel()
        return "ignored"

    with pytest.raises(fasthystrix.ContextCanceledError):
        fasthystrix.do_c(outer, name, run)


def _context_deadline_exceeded(name: str, clock: FakeClock) -> None:
    ctx = Context.background().with_timeout(0.05)

    def run(inner: Context) -> str:
        clock.advance(ms=80)
        return "late"

    with pytest.raises(fasthystrix.ContextDeadlineExceededError):
        fasthystrix.do_c(ctx, name, run)


# scenario, expected counts, events, run duration, total duration
OUTCOMES: list[tuple[Scenario, dict[str, int], tuple[str, ...], timedelta, timedelta]] = [
    (_success, {"successes": 1}, ("success",), timedelta(milliseconds=30), timedelta(milliseconds=30)),
    (
        _failure,
        {"failures": 1, "errors": 1},
        ("failure",),
        timedelta(milliseconds=30),
        timedelta(milliseconds=30),
    ),
    (
        _failure_fallback_success,
        {"failures": 1, "errors": 1, "fallback_successes": 1},
        ("failure", "fallback-success"),
        timedelta(milliseconds=30),
        timedelta(milliseconds=30),
    ),
    (
        _fallback_failure,
        {"failures": 1, "errors": 1, "fallback_failures": 1},
        ("failure", "fallback-failure"),
        timedelta(milliseconds=30),
        timedelta(milliseconds=30),
    ),
    (_rejected, {"rejects": 1, "errors": 1}, ("rejected",), timedelta(0), timedelta(0)),
    (_short_circuit, {"short_circuits": 1, "errors": 1}, ("short-circuit",), timedelta(0), timedelta(0)),
    (_timeout, {"timeouts": 1, "errors": 1}, ("timeout",), timedelta(0), timedelta(milliseconds=1500)),
    (
        _timeout_fallback,
        {"timeouts": 1, "errors": 1, "fallback_successes": 1},
        ("timeout", "fallback-success"),
        timedelta(0),
        timedelta(milliseconds=1500),
    ),
    (
        _context_canceled,
        {"context_canceled": 1},
        ("context_canceled",),
        timedelta(0),
        timedelta(milliseconds=30),
    ),
    (
        _context_deadline_exceeded,
        {"context_deadline_exceeded": 1},
        ("context_deadline_exceeded",),
        timedelta(0),
        timedelta(milliseconds=80),
    ),
]


@pytest.mark.parametrize(
    ("scenario", "counts", "events", "run_duration", "total_duration"),
    OUTCOMES,
    ids=[o[0].__name__.strip("_") for o in OUTCOMES],
)
@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_one_update_per_command_with_the_outcome(
    isolation: str,
    scenario: Scenario,
    counts: dict[str, int],
    events: tuple[str, ...],
    run_duration: timedelta,
    total_duration: timedelta,
    recorders: Recorders,
    clock: FakeClock,
) -> None:
    name = "outcome"
    fasthystrix.configure_command(name, {"isolation": isolation})
    scenario(name, clock)
    _wait_tickets(name)
    updates = recorders.made[name].updates
    assert len(updates) == 1
    result = updates[0]
    assert _counts(result) == {"attempts": 1, **counts}
    assert result.events == events
    assert isinstance(result.run_duration, timedelta)
    assert isinstance(result.total_duration, timedelta)
    assert result.run_duration == run_duration
    assert result.total_duration == total_duration
    assert result.concurrency_in_use == 0.0
    assert recorders.made[name].resets == 0
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert metrics.requests == 1


def test_concurrency_in_use_is_a_fraction_of_max(recorders: Recorders) -> None:
    name = "busy"
    fasthystrix.configure_command(name, {"max_concurrent_requests": 4, "timeout": 120_000})
    gate = threading.Event()
    futures = [fasthystrix.go(name, lambda: gate.wait(2 * WAIT)) for _ in range(3)]
    try:
        assert fasthystrix.do(name, lambda: "quick") == "quick"
    finally:
        gate.set()
    for f in futures:
        f.result(WAIT)
    quick = recorders.made[name].updates[0]
    assert quick.concurrency_in_use == pytest.approx(3 / 4)
    assert len(recorders.made[name].updates) == 4
    assert all(0.0 <= u.concurrency_in_use <= 1.0 for u in recorders.made[name].updates)


@pytest.mark.parametrize("via", ["do", "go"])
def test_thread_timeout_updates_once_even_when_run_ends_later(via: str, recorders: Recorders) -> None:
    name = "late-run"
    fasthystrix.configure_command(name, {"timeout": 20})
    gate = threading.Event()
    before = time.monotonic()
    try:
        if via == "do":
            with pytest.raises(fasthystrix.TimeoutError):
                fasthystrix.do(name, lambda: gate.wait(2 * WAIT))
        else:
            err = fasthystrix.go(name, lambda: gate.wait(2 * WAIT)).exception(WAIT)
            assert isinstance(err, fasthystrix.TimeoutError)
        called_for = timedelta(seconds=time.monotonic() - before)
    finally:
        gate.set()  # the run ends only now, after the caller had its answer
    _wait_tickets(name)
    time.sleep(0.02)
    updates = recorders.made[name].updates
    assert len(updates) == 1
    assert updates[0].events == ("timeout",)
    assert updates[0].run_duration == timedelta(0)
    # From the start to the timeout, not to the run's later end: within the call as timed from outside.
    assert timedelta(milliseconds=15) <= updates[0].total_duration <= called_for + timedelta(microseconds=1)


@pytest.mark.parametrize("via", ["do", "go", "do_c", "go_c"])
def test_thread_isolation_durations_are_plausible(via: str, recorders: Recorders) -> None:
    name = "real-time"

    def run(*_: object) -> str:
        time.sleep(0.02)
        return "ok"

    # A second: far longer than the 20 ms run takes, even on a busy machine.
    fasthystrix.configure_command(name, {"timeout": 1000})
    before = time.monotonic()
    if via == "do":
        assert fasthystrix.do(name, run) == "ok"
    elif via == "go":
        assert fasthystrix.go(name, run).result(WAIT) == "ok"
    elif via == "do_c":
        assert fasthystrix.do_c(Context(), name, run) == "ok"
    else:
        assert fasthystrix.go_c(Context(), name, run).result(WAIT) == "ok"
    called_for = timedelta(seconds=time.monotonic() - before)
    (result,) = recorders.made[name].updates
    assert result.events == ("success",)
    # The run's sleep, and within the call as timed from outside (rounding: 1 us).
    assert timedelta(milliseconds=19) <= result.run_duration <= result.total_duration
    assert result.total_duration <= called_for + timedelta(microseconds=1)


def test_every_collector_gets_every_command(recorders: Recorders, clock: FakeClock) -> None:
    second = Recorders()
    registry.register(second)
    name = "fan-out"
    fasthystrix.configure_command(name, {"isolation": "semaphore", "error_percent_threshold": 100})
    for _ in range(10):
        fasthystrix.do(name, lambda: None)
        fasthystrix.do(name, lambda: 1 / 0, lambda err: None)
    fasthystrix.go(name, lambda: None).result(WAIT)
    for made in (recorders.made[name], second.made[name]):
        assert len(made.updates) == 21
        assert all(u.attempts == 1 for u in made.updates)
        assert sum(u.successes for u in made.updates) == 11
        assert sum(u.fallback_successes for u in made.updates) == 10


# -- collectors that raise --------------------------------------------------------------------------


class Exploding(Recorder):
    def update(self, result: MetricResult) -> None:
        super().update(result)
        raise RuntimeError("collector exploded")


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_failing_collector_is_logged_and_command_returns(
    isolation: str, caplog: pytest.LogCaptureFixture, recorders: Recorders
) -> None:
    exploding: list[Exploding] = []

    def factory(name: str) -> Exploding:
        exploding.append(Exploding(name))
        return exploding[-1]

    registry.unregister(recorders)
    registry.register(factory)
    registry.register(recorders)
    name = "fragile"
    fasthystrix.configure_command(name, {"isolation": isolation})
    with caplog.at_level(logging.ERROR, logger="fasthystrix"):
        assert fasthystrix.do(name, lambda: "value") == "value"
        assert fasthystrix.do(name, lambda: 1 / 0, lambda err: "fb") == "fb"
        assert fasthystrix.go(name, lambda: "async").result(WAIT) == "async"
        with pytest.raises(ZeroDivisionError):
            fasthystrix.do(name, lambda: 1 / 0)
    records = [r for r in caplog.records if r.name.startswith("fasthystrix")]
    assert len(records) == 4
    assert all(r.exc_info is not None and "collector exploded" in str(r.exc_info[1]) for r in records)
    assert len(exploding[0].updates) == 4
    assert len(recorders.made[name].updates) == 4
    circuit = fasthystrix.get_circuit(name)[0]
    assert circuit.tickets_in_use == 0
    metrics = circuit.metrics()
    assert (metrics.successes, metrics.failures, metrics.fallback_successes) == (2, 2, 1)


# -- reset ----------------------------------------------------------------------------------------------


def _trip(name: str) -> None:
    fasthystrix.configure_command(
        name, {"isolation": "semaphore", "request_volume_threshold": 3, "error_percent_threshold": 50}
    )
    for _ in range(3):
        with pytest.raises(ZeroDivisionError):
            fasthystrix.do(name, lambda: 1 / 0)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: None)


def test_reset_on_every_collector_when_trial_closes_circuit(recorders: Recorders, clock: FakeClock) -> None:
    second = Recorders()
    registry.register(second)
    name = "heal"
    _trip(name)
    collectors = [recorders.made[name], second.made[name]]
    assert [c.resets for c in collectors] == [0, 0]

    clock.advance(ms=5001)
    with pytest.raises(ZeroDivisionError):
        fasthystrix.do(name, lambda: 1 / 0)
    assert [c.resets for c in collectors] == [0, 0]

    clock.advance(ms=5001)
    assert fasthystrix.do(name, lambda: "healed") == "healed"
    assert [c.resets for c in collectors] == [1, 1]
    for c in collectors:
        assert c.log[-2:] == ["reset", "update"]
        assert c.updates[-1].events == ("success",)
    assert fasthystrix.do(name, lambda: "again") == "again"
    assert [c.resets for c in collectors] == [1, 1]
    assert fasthystrix.get_circuit(name)[0].metrics().requests == 2


def test_reset_on_every_collector_on_flush(recorders: Recorders) -> None:
    second = Recorders()
    registry.register(second)
    fasthystrix.do("one", lambda: None)
    fasthystrix.do("two", lambda: None)
    made = [recorders.made["one"], recorders.made["two"], second.made["one"], second.made["two"]]
    assert [c.resets for c in made] == [0, 0, 0, 0]
    fasthystrix.flush()
    assert [c.resets for c in made] == [1, 1, 1, 1]


def test_failing_reset_on_flush_is_logged(caplog: pytest.LogCaptureFixture, recorders: Recorders) -> None:
    class BadReset(Recorder):
        def reset(self) -> None:
            raise RuntimeError("reset exploded")

    registry.unregister(recorders)
    registry.register(BadReset)
    registry.register(recorders)
    fasthystrix.do("bad-reset", lambda: None)
    with caplog.at_level(logging.ERROR, logger="fasthystrix"):
        fasthystrix.flush()
    assert any(r.exc_info is not None and "reset exploded" in str(r.exc_info[1]) for r in caplog.records)
    assert recorders.made["bad-reset"].resets == 1
    assert fasthystrix.get_circuit("bad-reset")[1]


def test_factory_using_its_own_circuit_does_not_create_it_twice(caplog: pytest.LogCaptureFixture) -> None:
    """A factory that looks its circuit up (say, for its settings) must not recurse into creating it again."""
    calls: list[str] = []

    def curious(name: str) -> Recorder:
        calls.append(name)
        if len(calls) > 20:
            raise AssertionError("factory re-entered over and over")
        try:
            fasthystrix.get_circuit(name)
        except Exception:
            pass
        return Recorder(name)

    registry.register(curious)
    with caplog.at_level(logging.CRITICAL, logger="fasthystrix"):
        circuit, created = fasthystrix.get_circuit("self-aware")
    assert created
    assert calls == ["self-aware"]
    assert fasthystrix.get_circuit("self-aware") == (circuit, False)
