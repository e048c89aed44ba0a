"""hystrix-go's own test suite (spec section 10, items 1-28 and 32-34) ported to fasthystrix.

Each test is named after its Go counterpart and checks the same behaviour through the
Python API: futures instead of error channels, exceptions instead of returned errors,
``Context`` instead of Go's context, and public equivalents of the internals the Go tests
reach into (``force_open``, failures driven through ``do``, ``tickets_in_use``,
``metrics().executed``/``max_concurrent``). Where Go sleeps for seconds the fake clock
moves instead. The last tests check that hystrix-go's command-flow bugs stay fixed.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix import (
    CircuitOpenError,
    CommandConfig,
    Context,
    ContextCanceledError,
    ContextDeadlineExceededError,
    ErrCircuitOpen,
    ErrMaxConcurrency,
    ErrTimeout,
    FallbackError,
    MaxConcurrencyError,
    TimeoutError as CommandTimeoutError,
    _impl,
)
from fasthystrix._core import _rolling_py
from support import WAIT

ISOLATIONS = ("thread", "semaphore")
NS_PER_SECOND = 1_000_000_000


class RunError(Exception):
    """The error the test run functions raise."""


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked runs wait on; set at teardown so every abandoned run ends."""
    event = threading.Event()
    yield event
    event.set()


def _configure(name: str, **fields: Any) -> fasthystrix.Settings:
    return fasthystrix.configure_command(name, CommandConfig(**fields))


def _circuit(name: str) -> Any:
    return fasthystrix.get_circuit(name)[0]


def _metrics(name: str) -> fasthystrix.MetricsSnapshot:
    return _circuit(name).metrics()


def _ok() -> str:
    return "ok"


def _fail() -> str:
    raise RunError("run failed")


def _wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _trip(name: str, failures: int) -> None:
    """Record ``failures`` failed runs, then let the next health check open the circuit."""
    for _ in range(failures):
        with pytest.raises(RunError):
            fasthystrix.do(name, _fail)
    assert _circuit(name).is_open()


# -- hystrix/hystrix_test.go ------------------------------------------------------------


def test_success() -> None:
    """TestSuccess: the run's value arrives, the future holds no error, one success is counted."""
    results: queue.Queue[int] = queue.Queue()

    def run(ctx: Context) -> None:
        results.put(1)

    future = fasthystrix.go_c(Context.background(), "", run)
    assert results.get(timeout=WAIT) == 1
    assert future.exception(timeout=WAIT) is None
    metrics = _metrics("")
    assert metrics.successes == 1
    assert metrics.requests == 1
    assert metrics.concurrent == 0


def test_fallback() -> None:
    """TestFallback: the fallback gets run's error and its value arrives instead."""
    results: queue.Queue[int] = queue.Queue()
    raised = RunError("error")
    seen: list[BaseException] = []

    def run() -> None:
        raise raised

    def fallback(err: BaseException) -> None:
        seen.append(err)
        results.put(1)

    future = fasthystrix.go("", run, fallback)
    assert results.get(timeout=WAIT) == 1
    assert future.exception(timeout=WAIT) is None
    assert seen == [raised]
    assert str(seen[0]) == "error"
    metrics = _metrics("")
    assert (metrics.successes, metrics.failures, metrics.fallback_successes) == (0, 1, 1)


def test_timeout(release: threading.Event) -> None:
    """TestTimeout: at the 100 ms timeout the fallback gets ErrTimeout and answers first."""
    _configure("", timeout=100)
    results: queue.Queue[int] = queue.Queue()

    def run() -> None:
        release.wait(2 * WAIT)
        results.put(1)

    def fallback(err: BaseException) -> None:
        results.put(2 if isinstance(err, ErrTimeout) else -1)

    future = fasthystrix.go("", run, fallback)
    assert results.get(timeout=WAIT) == 2
    assert future.exception(timeout=WAIT) is None
    assert _metrics("").timeouts == 1


def test_timeout_empty_fallback(release: threading.Event) -> None:
    """TestTimeoutEmptyFallback: without a fallback the future fails with ErrTimeout."""
    _configure("", timeout=100)
    future = fasthystrix.go("", lambda: release.wait(2 * WAIT))
    err = future.exception(timeout=WAIT)
    assert isinstance(err, ErrTimeout)
    assert str(err) == "hystrix: timeout"
    metrics = _metrics("")
    assert (metrics.successes, metrics.timeouts) == (0, 1)
    assert (metrics.fallback_successes, metrics.fallback_failures) == (0, 0)


def test_max_concurrent(release: threading.Event) -> None:
    """TestMaxConcurrent: with 2 tickets, of 3 long commands exactly one is rejected at once."""
    _configure("", max_concurrent_requests=2, timeout=120_000)
    futures = [fasthystrix.go("", lambda: release.wait(2 * WAIT)) for _ in range(3)]
    assert _wait_for(lambda: any(f.done() for f in futures))
    rejected = [f for f in futures if f.done() and isinstance(f.exception(), ErrMaxConcurrency)]
    assert len(rejected) == 1
    assert sum(not f.done() for f in futures) == 2
    assert str(rejected[0].exception()) == "hystrix: max concurrency"
    release.set()
    assert sorted(f.exception(timeout=WAIT) is None for f in futures) == [False, True, True]
    metrics = _metrics("")
    assert (metrics.successes, metrics.rejects) == (2, 1)


def test_force_open_circuit() -> None:
    """TestForceOpenCircuit: a forced-open circuit short-circuits without running."""
    circuit = _circuit("")
    circuit.force_open = True
    ran: list[bool] = []
    future = fasthystrix.go("", lambda: ran.append(True))
    err = future.exception(timeout=WAIT)
    assert isinstance(err, ErrCircuitOpen)
    assert str(err) == "hystrix: circuit open"
    assert ran == []
    assert circuit.state() == "forced-open"
    metrics = _metrics("")
    assert (metrics.successes, metrics.short_circuits) == (0, 1)


def test_force_open_circuit_allows_no_trial(clock: FakeClock) -> None:
    """The documented force_open: every call short-circuits, even on a tripped circuit past its sleep window.

    (hystrix-go let trials through when the circuit was also tripped, spec 3.5; fasthystrix's
    documentation (docs/concepts.md, docs/configuration.md) and ``force_open`` docstring promise no
    trial request.)
    """
    name = "forced-and-tripped"
    _configure(name, isolation="semaphore", request_volume_threshold=1)
    _trip(name, 1)
    circuit = _circuit(name)
    circuit.force_open = True
    clock.advance(6)
    ran: list[bool] = []
    with pytest.raises(CircuitOpenError):
        fasthystrix.do(name, lambda: ran.append(True))
    assert ran == []
    assert circuit.state() == "forced-open"
    circuit.force_open = False
    assert circuit.state() == "open"


def test_nil_fallback_run_error() -> None:
    """TestNilFallbackRunError: without a fallback run's own error comes back unchanged."""
    raised = RunError("run_error")

    def run() -> None:
        raise raised

    err = fasthystrix.go("", run).exception(timeout=WAIT)
    assert err is raised
    assert str(err) == "run_error"
    with pytest.raises(RunError) as info:
        fasthystrix.do("", run)
    assert info.value is raised


def test_failed_fallback() -> None:
    """TestFailedFallback: both failing gives hystrix-go's composite message."""
    run_error = RunError("run_error")
    fallback_error = RunError("fallback_error")

    def run() -> None:
        raise run_error

    def fallback(err: BaseException) -> None:
        raise fallback_error

    err = fasthystrix.go("", run, fallback).exception(timeout=WAIT)
    assert isinstance(err, FallbackError)
    assert str(err) == "fallback failed with 'fallback_error'. run error was 'run_error'"
    assert err.run_error is run_error
    assert err.fallback_error is fallback_error
    assert _metrics("").fallback_failures == 1


def test_close_circuit_after_success(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """TestCloseCircuitAfterSuccess: open, short-circuit, then after 6 s a success closes it."""
    caplog.set_level(logging.INFO, logger="fasthystrix")
    name = "close-after-success"
    _configure(name, isolation="semaphore")
    for _ in range(20):
        with pytest.raises(RunError):
            fasthystrix.do(name, _fail)
    with pytest.raises(CircuitOpenError):
        fasthystrix.do(name, _ok)
    circuit = _circuit(name)
    assert circuit.state() == "open"
    assert f"opening circuit {name}" in caplog.messages

    clock.advance(4.9)
    with pytest.raises(CircuitOpenError):
        fasthystrix.do(name, _ok)

    clock.advance(1.1)
    assert fasthystrix.do(name, _ok) == "ok"
    assert f"allowing single test to possibly close circuit {name}" in caplog.messages
    assert f"closing circuit {name}" in caplog.messages
    assert not circuit.is_open()
    assert circuit.state() == "closed"
    metrics = circuit.metrics()
    assert (metrics.requests, metrics.successes, metrics.errors) == (1, 1, 0)


def test_fail_after_timeout() -> None:
    """TestFailAfterTimeout: a run failing after its timeout changes nothing; one fallback call."""
    _configure("", timeout=10)
    go_on = threading.Event()
    finished = threading.Event()
    fallback_calls: list[BaseException] = []

    def run() -> None:
        try:
            go_on.wait(2 * WAIT)
            raise RunError("late failure")
        finally:
            finished.set()

    def fallback(err: BaseException) -> None:
        fallback_calls.append(err)
        raise err

    future = fasthystrix.go("", run, fallback)
    try:
        err = future.exception(timeout=WAIT)
    finally:
        go_on.set()
    assert isinstance(err, FallbackError)
    assert "timeout" in str(err)
    assert finished.wait(WAIT)
    assert _wait_for(lambda: _circuit("").tickets_in_use == 0)
    assert len(fallback_calls) == 1
    assert isinstance(fallback_calls[0], ErrTimeout)
    metrics = _metrics("")
    assert (metrics.timeouts, metrics.failures, metrics.fallback_failures) == (1, 0, 1)


def test_slow_fallback_open_circuit() -> None:
    """TestSlowFallbackOpenCircuit: a fallback slower than the timeout is not a timeout."""
    name = "slow-fallback"
    _trip(name, 20)
    _configure(name, timeout=10)
    ran: list[bool] = []
    fallback_calls: list[BaseException] = []

    def fallback(err: BaseException) -> str:
        fallback_calls.append(err)
        time.sleep(0.1)
        return "fallback"

    assert fasthystrix.go(name, lambda: ran.append(True), fallback).result(timeout=WAIT) == "fallback"
    assert len(fallback_calls) == 1
    assert isinstance(fallback_calls[0], CircuitOpenError)
    metrics = _metrics(name)
    assert (metrics.short_circuits, metrics.timeouts) == (1, 0)

    assert fasthystrix.do(name, lambda: ran.append(True), fallback) == "fallback"
    assert len(fallback_calls) == 2
    metrics = _metrics(name)
    assert (metrics.short_circuits, metrics.timeouts) == (2, 0)
    assert ran == []


def test_fallback_after_rejected(release: threading.Event) -> None:
    """TestFallbackAfterRejected: with the only ticket taken, the fallback runs and run never does."""
    _configure("", max_concurrent_requests=1, timeout=120_000)
    holder = fasthystrix.go("", lambda: release.wait(2 * WAIT))
    assert _circuit("").tickets_in_use == 1
    ran: list[bool] = []
    errors: list[BaseException] = []

    def fallback(err: BaseException) -> str:
        errors.append(err)
        return "fallback"

    assert fasthystrix.do("", lambda: ran.append(True), fallback) == "fallback"
    assert ran == []
    assert len(errors) == 1
    assert isinstance(errors[0], MaxConcurrencyError)
    release.set()
    assert holder.exception(timeout=WAIT) is None
    assert _metrics("").rejects == 1


def test_return_ticket_quick_check() -> None:
    """TestReturnTicket_QuickCheck: 20 rounds of a 2 ms timeout; every ticket comes back.

    hystrix-go returned the ticket at the timeout; fasthystrix keeps it until the
    abandoned run really ends (issue #81), then returns it.
    """
    _configure("", timeout=2)
    circuit = _circuit("")
    for _ in range(20):
        blocked = threading.Event()
        try:
            err = fasthystrix.go("", lambda event=blocked: event.wait(2 * WAIT)).exception(timeout=WAIT)
            assert isinstance(err, ErrTimeout)
            assert circuit.tickets_in_use == 1
        finally:
            blocked.set()
        assert _wait_for(lambda: circuit.tickets_in_use == 0)
    metrics = circuit.metrics()
    assert (metrics.timeouts, metrics.executed) == (20, 20)


def test_return_ticket(release: threading.Event) -> None:
    """TestReturnTicket: a 10 ms timeout; the ticket comes back once the run ends."""
    _configure("", timeout=10)
    circuit = _circuit("")
    with pytest.raises(ErrTimeout):
        fasthystrix.do("", lambda: release.wait(2 * WAIT))
    assert circuit.tickets_in_use == 1
    release.set()
    assert _wait_for(lambda: circuit.tickets_in_use == 0)
    assert circuit.metrics().concurrent == 0


CONTEXT_CASES = [
    pytest.param("background", False, id="background-no-fallback"),
    pytest.param("background", True, id="background-fallback"),
    pytest.param("deadline", False, id="deadline-no-fallback"),
    pytest.param("deadline", True, id="deadline-fallback"),
    pytest.param("cancel", False, id="cancel-no-fallback"),
    pytest.param("cancel", True, id="cancel-fallback"),
]

EXPECTED_CONTEXT_ERRORS: dict[str, tuple[type[BaseException], str]] = {
    "background": (CommandTimeoutError, "hystrix: timeout"),
    "deadline": (ContextDeadlineExceededError, "context deadline exceeded"),
    "cancel": (ContextCanceledError, "context canceled"),
}


def _check_context_metrics(name: str, kind: str, with_fallback: bool) -> None:
    metrics = _metrics(name)
    assert metrics.requests == 1
    assert metrics.failures == 0
    assert metrics.timeouts == (kind == "background")
    assert metrics.context_deadline_exceeded == (kind == "deadline")
    assert metrics.context_canceled == (kind == "cancel")
    assert metrics.fallback_successes == with_fallback


@pytest.mark.parametrize("api", ["go_c", "do_c"])
@pytest.mark.parametrize(("kind", "with_fallback"), CONTEXT_CASES)
def test_context_handling(kind: str, with_fallback: bool, api: str, release: threading.Event) -> None:
    """TestContextHandling (thread isolation): timeout vs context deadline vs cancellation.

    The command times out at 250 ms (Go: 15 ms) and the context ends at 5 ms; the run
    outlasts both. The wide gap keeps the order of the two sure on a loaded machine,
    where a 5 ms timer thread can fire tens of milliseconds late.
    """
    _configure("", timeout=250)
    canceller: threading.Timer | None = None
    if kind == "deadline":
        ctx = Context.background().with_timeout(0.005)
    elif kind == "cancel":
        ctx = Context()
        canceller = threading.Timer(0.005, ctx.cancel)
    else:
        ctx = Context.background()
    seen: list[BaseException] = []

    def run(run_ctx: Context) -> None:
        release.wait(2 * WAIT)

    def fallback(fallback_ctx: Context, err: BaseException) -> str:
        seen.append(err)
        return "fallback"

    error_type, message = EXPECTED_CONTEXT_ERRORS[kind]
    if canceller is not None:
        canceller.start()
    try:
        if api == "go_c":
            future = fasthystrix.go_c(ctx, "", run, fallback if with_fallback else None)
            if with_fallback:
                assert future.result(timeout=WAIT) == "fallback"
            else:
                err = future.exception(timeout=WAIT)
        elif with_fallback:
            assert fasthystrix.do_c(ctx, "", run, fallback) == "fallback"
        else:
            with pytest.raises(error_type) as info:
                fasthystrix.do_c(ctx, "", run)
            err = info.value
        if with_fallback:
            assert len(seen) == 1
            err = seen[0]
        assert isinstance(err, error_type)
        assert str(err) == message
        _check_context_metrics("", kind, with_fallback)
    finally:
        if canceller is not None:
            canceller.cancel()
            canceller.join()


@pytest.mark.parametrize(("kind", "with_fallback"), CONTEXT_CASES)
def test_context_handling_semaphore(kind: str, with_fallback: bool, clock: FakeClock) -> None:
    """TestContextHandling with Go's exact times (15 ms timeout, 20 ms run, 5 ms context), on the fake clock."""
    _configure("", timeout=15, isolation="semaphore")
    if kind == "deadline":
        ctx = Context.background().with_timeout(0.005)
    elif kind == "cancel":
        ctx = Context()
    else:
        ctx = Context.background()

    def run(run_ctx: Context) -> str:
        clock.advance(ms=5)
        if kind == "cancel":
            ctx.cancel()
        clock.advance(ms=15)
        return "late"

    seen: list[BaseException] = []

    def fallback(fallback_ctx: Context, err: BaseException) -> str:
        seen.append(err)
        return "fallback"

    error_type, message = EXPECTED_CONTEXT_ERRORS[kind]
    if with_fallback:
        assert fasthystrix.do_c(ctx, "", run, fallback) == "fallback"
        assert len(seen) == 1
        err = seen[0]
    else:
        with pytest.raises(error_type) as info:
            fasthystrix.do_c(ctx, "", run)
        err = info.value
    assert isinstance(err, error_type)
    assert str(err) == message
    _check_context_metrics("", kind, with_fallback)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_do_c_success(isolation: str) -> None:
    """TestDoC: a successful run returns its value."""
    _configure("", isolation=isolation)
    ran: list[Context] = []

    def run(ctx: Context) -> str:
        ran.append(ctx)
        return "done"

    assert fasthystrix.do_c(Context.background(), "", run) == "done"
    assert len(ran) == 1


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_do_c_failure_without_fallback(isolation: str) -> None:
    """TestDoC: a failing run without a fallback raises its own error."""
    _configure("", isolation=isolation)

    def run(ctx: Context) -> None:
        raise RunError("i failed")

    with pytest.raises(RunError, match=r"^i failed$"):
        fasthystrix.do_c(Context.background(), "", run)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_do_c_fallback_success(isolation: str) -> None:
    """TestDoC: a failing run with a succeeding fallback returns the fallback's value."""
    _configure("", isolation=isolation)
    fallback_ran: list[BaseException] = []

    def run(ctx: Context) -> None:
        raise RunError("i failed")

    def fallback(ctx: Context, err: BaseException) -> str:
        fallback_ran.append(err)
        return "fallback"

    assert fasthystrix.do_c(Context.background(), "", run, fallback) == "fallback"
    assert [str(e) for e in fallback_ran] == ["i failed"]


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_do_c_fallback_failure(isolation: str) -> None:
    """TestDoC: a failing fallback raises the composite error."""
    _configure("", isolation=isolation)

    def run(ctx: Context) -> None:
        raise RunError("i failed")

    def fallback(ctx: Context, err: BaseException) -> None:
        raise RunError("fallback failed")

    with pytest.raises(FallbackError) as info:
        fasthystrix.do_c(Context.background(), "", run, fallback)
    assert str(info.value) == "fallback failed with 'fallback failed'. run error was 'i failed'"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_do_c_timeout(isolation: str, release: threading.Event, request: pytest.FixtureRequest) -> None:
    """TestDoC: a 100 ms run under a 10 ms timeout raises ``hystrix: timeout``."""
    _configure("", timeout=10, isolation=isolation)
    if isolation == "semaphore":
        clock: FakeClock = request.getfixturevalue("clock")

        def run(ctx: Context) -> None:
            clock.advance(ms=100)

    else:

        def run(ctx: Context) -> None:
            release.wait(0.1)

    with pytest.raises(CommandTimeoutError) as info:
        fasthystrix.do_c(Context.background(), "", run)
    assert str(info.value) == "hystrix: timeout"
    assert _metrics("").timeouts == 1


# -- hystrix/circuit_test.go -------------------------------------------------------------


def test_get_circuit() -> None:
    """TestGetCircuit: the first call creates the circuit, the second reuses it."""
    circuit, created = fasthystrix.get_circuit("foo")
    assert created is True
    again, created_again = fasthystrix.get_circuit("foo")
    assert created_again is False
    assert again is circuit
    assert circuit.name == "foo"


def test_multithreaded_get_circuit() -> None:
    """TestMultithreadedGetCircuit: 100 threads released together; exactly one creates it."""
    barrier = threading.Barrier(100)
    results: list[tuple[Any, bool]] = []
    lock = threading.Lock()

    def get() -> None:
        barrier.wait(WAIT)
        result = fasthystrix.get_circuit("foo")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=get) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(results) == 100
    assert sum(created for _, created in results) == 1
    assert len({id(circuit) for circuit, _ in results}) == 1


def test_report_event_open_then_close(release: threading.Event) -> None:
    """TestReportEventOpenThenClose: a success reported on an unhealthy closed circuit does not open it."""
    name = "report-success"
    _configure(
        name, request_volume_threshold=10, error_percent_threshold=50, max_concurrent_requests=20, timeout=120_000
    )
    circuit = _circuit(name)
    slow = fasthystrix.go(name, lambda: release.wait(2 * WAIT) and "slow")
    for _ in range(10):
        with pytest.raises(RunError):
            fasthystrix.do(name, _fail)
    assert circuit.state() == "closed"
    assert circuit.metrics().error_percent == 100
    release.set()
    assert slow.result(timeout=WAIT) == "slow"
    assert circuit.state() == "closed"
    metrics = circuit.metrics()
    assert (metrics.requests, metrics.successes, metrics.failures) == (11, 1, 10)
    assert circuit.is_open()


class _CountingCollector:
    """A metric collector that keeps every update, across resets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts = 0
        self.counts = dict.fromkeys(["successes", "failures", "rejects", "short_circuits", "timeouts"], 0)

    def update(self, result: fasthystrix.MetricResult) -> None:
        with self._lock:
            self.attempts += result.attempts
            for key in self.counts:
                self.counts[key] += getattr(result, key)

    def reset(self) -> None:
        pass


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_report_event_multi_threaded(isolation: str) -> None:
    """TestReportEventMultiThreaded: concurrent successes, failures, rejections and state checks.

    Max 1 ticket, threshold 1 %, volume 1, sleep window 10 ms; nothing unexpected is
    raised and every outcome a caller saw reaches the collectors exactly once (the
    rolling window itself is reset whenever a trial closes the circuit).
    """
    name = "multi"
    _configure(
        name,
        max_concurrent_requests=1,
        error_percent_threshold=1,
        request_volume_threshold=1,
        sleep_window=10,
        timeout=5000,
        isolation=isolation,
    )
    reported = _CountingCollector()
    fasthystrix.metric_collector.registry.register(lambda circuit_name: reported)
    circuit = _circuit(name)
    outcome_of = {
        RunError: "failures",
        MaxConcurrencyError: "rejects",
        CircuitOpenError: "short_circuits",
        CommandTimeoutError: "timeouts",
    }
    seen = dict.fromkeys(["successes", *outcome_of.values()], 0)
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()
    calls_per_thread = 250

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        local = dict.fromkeys(seen, 0)
        try:
            for _ in range(calls_per_thread):
                try:
                    fasthystrix.do(name, _ok if rng.random() < 0.6 else _fail)
                    local["successes"] += 1
                except tuple(outcome_of) as exc:
                    local[outcome_of[type(exc)]] += 1
        except BaseException as exc:
            with lock:
                unexpected.append(exc)
        with lock:
            for key, count in local.items():
                seen[key] += count

    def checker() -> None:
        try:
            while not stop.is_set():
                circuit.is_open()
                circuit.allow_request()
                circuit.state()
        except BaseException as exc:
            with lock:
                unexpected.append(exc)

    watcher = threading.Thread(target=checker)
    watcher.start()
    callers = [threading.Thread(target=caller, args=(seed,)) for seed in range(8)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(2 * WAIT)
    stop.set()
    watcher.join(WAIT)
    assert unexpected == []
    assert sum(seen.values()) == 8 * calls_per_thread
    assert reported.attempts == 8 * calls_per_thread
    assert reported.counts == seen
    # The window itself is emptied whenever a trial closes the circuit: only its consistency is known.
    metrics = circuit.metrics()
    assert metrics.errors <= metrics.requests
    assert metrics.error_percent == _percent(metrics.errors, metrics.requests)
    assert circuit.tickets_in_use == 0


def _percent(errors: int, requests: int) -> int:
    """hystrix-go's error percentage: errors / requests * 100, rounded half up (0 without requests)."""
    return int(Fraction(errors * 100, requests) + Fraction(1, 2)) if requests else 0


# -- hystrix/metrics_test.go -------------------------------------------------------------


def _fill(name: str, error_percent_threshold: int) -> Any:
    """100 executions, 40 of them failures, below the volume threshold until the last one."""
    _configure(
        name, isolation="semaphore", request_volume_threshold=100, error_percent_threshold=error_percent_threshold
    )
    for i in range(100):
        if i % 5 in (1, 3):
            assert fasthystrix.do(name, _fail, lambda err: "fallback") == "fallback"
        else:
            assert fasthystrix.do(name, _ok) == "ok"
    return _circuit(name)


def test_error_percent(clock: FakeClock) -> None:
    """TestErrorPercent: 40 failures in 100 executions is 40 %; a threshold of 39 trips, 41 does not."""
    circuit = _fill("forty", 41)
    metrics = circuit.metrics()
    assert (metrics.requests, metrics.errors, metrics.error_percent) == (100, 40, 40)
    assert not circuit.is_open()
    _configure("forty", isolation="semaphore", request_volume_threshold=100, error_percent_threshold=39)
    assert circuit.is_open()
    assert circuit.state() == "open"

    at_threshold = _fill("forty-at-threshold", 40)
    assert at_threshold.is_open()


# -- hystrix/pool_test.go ----------------------------------------------------------------


def test_return() -> None:
    """TestReturn: a command that took and returned a ticket counts as executed once."""
    assert fasthystrix.do("pool", _ok) == "ok"
    circuit = _circuit("pool")
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().executed == 1
    circuit.force_open = True
    with pytest.raises(CircuitOpenError):
        fasthystrix.do("pool", _ok)
    assert circuit.metrics().executed == 1


def test_active_count() -> None:
    """TestActiveCount: 3 tickets taken are 3 in use; after one returns the window max is 3."""
    _configure("pool", timeout=120_000)
    events = [threading.Event() for _ in range(3)]
    try:
        futures = [fasthystrix.go("pool", lambda event=event: event.wait(2 * WAIT)) for event in events]
        circuit = _circuit("pool")
        assert circuit.tickets_in_use == 3
        assert circuit.metrics().concurrent == 3
        events[0].set()
        assert futures[0].exception(timeout=WAIT) is None
        assert _wait_for(lambda: circuit.tickets_in_use == 2)
        metrics = circuit.metrics()
        assert metrics.max_concurrent == 3
        assert metrics.executed == 3
    finally:
        for event in events:
            event.set()


# -- hystrix/settings_test.go ------------------------------------------------------------


def test_configure_concurrency() -> None:
    """TestConfigureConcurrency."""
    _configure("", max_concurrent_requests=100)
    assert fasthystrix.get_circuit_settings()[""].max_concurrent_requests == 100


def test_configure_timeout() -> None:
    """TestConfigureTimeout: 10000 ms reads back as 10 s."""
    _configure("", timeout=10000)
    assert fasthystrix.get_circuit_settings()[""].timeout == timedelta(seconds=10)


def test_configure_rvt() -> None:
    """TestConfigureRVT."""
    _configure("", request_volume_threshold=30)
    assert fasthystrix.get_circuit_settings()[""].request_volume_threshold == 30


def test_sleep_window_default() -> None:
    """TestSleepWindowDefault: an empty config gets the 5 s default."""
    _configure("")
    assert fasthystrix.get_circuit_settings()[""].sleep_window == timedelta(seconds=5)


def test_get_circuit_settings() -> None:
    """TestGetCircuitSettings: the table holds the very settings object the command uses."""
    configured = _configure("test", timeout=30000)
    settings = fasthystrix.get_circuit_settings()["test"]
    assert settings is configured
    assert settings is _circuit("test").settings
    assert settings.timeout == timedelta(seconds=30)


# -- hystrix/rolling/rolling_test.go ------------------------------------------------------


def test_max() -> None:
    """TestMax: maxima 10, 11, 9 one second apart; the window's max is 11."""
    rolling = _impl.current().RollingMetrics()
    start = 1000 * NS_PER_SECOND
    for offset, active in enumerate((10, 11, 9)):
        rolling.record_executed(start + offset * NS_PER_SECOND, active)
    counts = rolling.counts(start + 2 * NS_PER_SECOND)
    assert counts[_rolling_py.MAX_ACTIVE] == 11
    assert counts[_rolling_py.EXECUTED] == 3


def test_max_through_commands(clock: FakeClock) -> None:
    """TestMax through a circuit: 10, 11 and 9 concurrent commands one second apart; max 11."""
    _configure("max", max_concurrent_requests=20, timeout=120_000)
    circuit = _circuit("max")
    for concurrent in (10, 11, 9):
        event = threading.Event()
        try:
            futures = [fasthystrix.go("max", lambda event=event: event.wait(2 * WAIT)) for _ in range(concurrent)]
            assert circuit.tickets_in_use == concurrent
        finally:
            event.set()
        assert all(f.exception(timeout=WAIT) is None for f in futures)
        assert _wait_for(lambda: circuit.tickets_in_use == 0)
        clock.advance(1)
    assert circuit.metrics().max_concurrent == 11
    clock.advance(7)
    assert circuit.metrics().max_concurrent == 11
    clock.advance(1)
    assert circuit.metrics().max_concurrent == 9
    clock.advance(1)
    assert circuit.metrics().max_concurrent == 0


def test_avg(clock: FakeClock) -> None:
    """TestAvg: 1, 2, 3, 4, 5 requests one second apart; the 10 s window averages 1.5 a second.

    Go increments float counters by 0.5 ... 4.5; fasthystrix counts commands, so the
    amounts are whole. The window then slides out exactly one bucket per second.
    """
    _configure("avg", isolation="semaphore")
    circuit = _circuit("avg")
    for calls in range(1, 6):
        for _ in range(calls):
            fasthystrix.do("avg", _ok)
        clock.advance(1)
    assert circuit.metrics().requests / 10 == 1.5
    clock.advance(5)
    assert circuit.metrics().requests == 14
    clock.advance(3)
    assert circuit.metrics().requests == 5
    clock.advance(1)
    assert circuit.metrics().requests == 0


# -- hystrix/rolling/rolling_timing_test.go -------------------------------------------------

ORDINALS = [
    (1, 0.0, 1),
    (2, 0.0, 1),
    (2, 50.0, 1),
    (2, 51.0, 2),
    (5, 30.0, 2),
    (5, 40.0, 2),
    (5, 50.0, 3),
    (11, 25.0, 3),
    (11, 50.0, 6),
    (11, 75.0, 9),
    (11, 100.0, 11),
]


def _run_for(clock: FakeClock, ms: float) -> Callable[[], None]:
    def run() -> None:
        clock.advance(ms=ms)

    return run


def _latency_close(actual: float, expected: float) -> bool:
    """Within the histogram's promise: 1 ms or 1 %, whichever is larger."""
    return abs(actual - expected) <= max(1.0, expected / 100)


def test_ordinal(clock: FakeClock) -> None:
    """TestOrdinal: empty mean 0, hystrix-go's nearest-rank table, mean 150, and the 33-sample percentiles."""
    empty = _impl.current().summarize([])
    assert empty.mean == 0
    assert set(empty.percentiles.values()) == {0}
    fresh = _metrics("fresh")
    assert fresh.run_latency_mean == 0
    assert set(fresh.run_latency_percentiles.values()) == {0}

    for n, p, rank in ORDINALS:
        assert _rolling_py._rank(p, n) == rank, (n, p)

    # The same ranks through a circuit: n runs of 1..n microseconds (exact histogram buckets).
    for n, p, rank in ORDINALS:
        if p not in _rolling_py.PERCENTILES:
            continue
        name = f"ordinal-{n}-{p}"
        _configure(name, isolation="semaphore")
        for us in range(1, n + 1):
            fasthystrix.do(name, _run_for(clock, us / 1000))
        assert _metrics(name).run_latency_percentiles[p] == pytest.approx(rank / 1000), (n, p)

    _configure("mean", isolation="semaphore")
    fasthystrix.do("mean", _run_for(clock, 100))
    clock.advance(2)
    fasthystrix.do("mean", _run_for(clock, 200))
    assert _metrics("mean").run_latency_mean == pytest.approx(150)

    _configure("percentiles", isolation="semaphore", timeout=2000)
    samples = [1] + [1004] * 9 + [1005] * 14 + [1006] * 4 + [1007] * 3 + [1008, 1015]
    assert len(samples) == 33
    for ms in samples:
        fasthystrix.do("percentiles", _run_for(clock, ms))
    percentiles = _metrics("percentiles").run_latency_percentiles
    for p, expected in ((0.0, 1), (75.0, 1006), (99.0, 1015), (100.0, 1015)):
        assert _latency_close(percentiles[p], expected), (p, percentiles[p])


def test_timing_mean_no_overflow(clock: FakeClock) -> None:
    """hystrix-go's Mean wrapped at 2**32 ns (a 5 s mean read 705 ms); fasthystrix's does not."""
    _configure("five-seconds", isolation="semaphore", timeout=10_000)
    fasthystrix.do("five-seconds", _run_for(clock, 5000))
    metrics = _metrics("five-seconds")
    assert metrics.run_latency_mean == pytest.approx(5000)
    assert _latency_close(metrics.run_latency_percentiles[100.0], 5000)


# -- hystrix-go bugs that must stay fixed (spec section 11) ---------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_sequential_do_never_rejected(isolation: str) -> None:
    """hystrix-go's Do returned before its ticket was back; 1000 sequential calls on 1 ticket all run."""
    name = f"sequential-{isolation}"
    _configure(name, max_concurrent_requests=1, isolation=isolation, error_percent_threshold=100)
    for i in range(1000):
        if i % 4 == 3:
            assert fasthystrix.do(name, _fail, lambda err: "fallback") == "fallback"
        else:
            assert fasthystrix.do(name, lambda value=i: value) == i
    metrics = _metrics(name)
    assert metrics.rejects == 0
    assert (metrics.successes, metrics.failures, metrics.fallback_successes) == (750, 250, 250)


def test_sequential_go_never_rejected() -> None:
    """The same for go(): once a future has resolved, its ticket is back."""
    name = "sequential-go"
    _configure(name, max_concurrent_requests=1)
    for i in range(1000):
        assert fasthystrix.go(name, lambda value=i: value).result(timeout=WAIT) == i
    metrics = _metrics(name)
    assert (metrics.rejects, metrics.successes) == (0, 1000)


def test_only_trial_success_closes_circuit(clock: FakeClock, release: threading.Event) -> None:
    """hystrix-go closed an open circuit on any success; a slow success from before the trip must not."""
    name = "stale-success"
    _configure(name, request_volume_threshold=5, timeout=10_000)
    circuit = _circuit(name)
    started = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(2 * WAIT)
        return "slow"

    stale = fasthystrix.go(name, slow)
    assert started.wait(WAIT)
    for _ in range(5):
        with pytest.raises(RunError):
            fasthystrix.do(name, _fail)
    with pytest.raises(CircuitOpenError):
        fasthystrix.do(name, _ok)
    assert circuit.state() == "open"

    release.set()
    assert stale.result(timeout=WAIT) == "slow"
    assert circuit.state() == "open"
    with pytest.raises(CircuitOpenError):
        fasthystrix.do(name, _ok)

    clock.advance(6)
    assert fasthystrix.do(name, lambda: "trial") == "trial"
    assert circuit.state() == "closed"


def test_failed_trial_keeps_circuit_open(clock: FakeClock) -> None:
    """A failed trial leaves the circuit open; the next trial comes one sleep window after it."""
    name = "failed-trial"
    _configure(name, request_volume_threshold=5, isolation="semaphore")
    circuit = _circuit(name)
    _trip(name, 5)
    clock.advance(6)
    with pytest.raises(RunError):
        fasthystrix.do(name, _fail)
    assert circuit.state() == "open"
    clock.advance(4.9)
    with pytest.raises(CircuitOpenError):
        fasthystrix.do(name, _ok)
    clock.advance(0.2)
    assert fasthystrix.do(name, _ok) == "ok"
    assert circuit.state() == "closed"


def test_errors_never_exceed_requests_across_rollover(clock: FakeClock) -> None:
    """hystrix-go summed 11 buckets but pruned only on write, so errors could exceed requests (#115).

    Failures at second 0 and one success 10 s later: the failures are gone from both
    counts. Then random traffic over 70 s of fake time must match a model of exactly 10
    one-second buckets after every step.
    """
    name = "rollover"
    _configure(name, isolation="semaphore", request_volume_threshold=1_000_000)
    circuit = _circuit(name)
    history: list[tuple[int, bool]] = []
    for _ in range(5):
        fasthystrix.do(name, _fail, lambda err: None)
        history.append((clock.now // NS_PER_SECOND, True))
    clock.advance(10)
    fasthystrix.do(name, _ok)
    history.append((clock.now // NS_PER_SECOND, False))
    metrics = circuit.metrics()
    assert (metrics.requests, metrics.errors, metrics.error_percent) == (1, 0, 0)

    rng = random.Random(115)
    for _ in range(200):
        clock.advance(ms=rng.randrange(0, 700))
        for _ in range(rng.randrange(0, 4)):
            failed = rng.random() < 0.3
            fasthystrix.do(name, _fail if failed else _ok, lambda err: None)
            history.append((clock.now // NS_PER_SECOND, failed))
        now_second = clock.now // NS_PER_SECOND
        window = [failed for second, failed in history if second > now_second - 10]
        metrics = circuit.metrics()
        assert metrics.requests == len(window)
        assert metrics.errors == sum(window)
        assert metrics.error_percent == _percent(sum(window), len(window))
