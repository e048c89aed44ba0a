"""Many threads on one circuit: every outcome the callers observe is counted exactly once in the rolling
window, every ticket comes back, and real concurrency never exceeds the limit."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix.metric_collector import registry as collector_registry

THREADS = 8
NEVER_TRIPS = 10**9

SUCCESS = "success"
FAILURE_WITH_FALLBACK = "failure+fallback"
FAILURE = "failure"
FALLBACK_FAILURE = "fallback-failure"
KINDS = (SUCCESS, FAILURE_WITH_FALLBACK, FAILURE, FALLBACK_FAILURE)


class RunFailed(Exception):
    """What run raises."""


class FallbackFailed(Exception):
    """What a failing fallback raises."""


class ConcurrencyProbe:
    """Counts the runs executing right now and the most seen at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.active += 1
            if self.active > self.peak:
                self.peak = self.active

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.active -= 1


def _configure(name: str, isolation: str, max_concurrent: int) -> None:
    fasthystrix.configure_command(
        name,
        fasthystrix.CommandConfig(
            timeout=10_000,
            max_concurrent_requests=max_concurrent,
            request_volume_threshold=NEVER_TRIPS,
            error_percent_threshold=100,
            isolation=isolation,
        ),
    )


def _command(kind: str, probe: ConcurrencyProbe, pause: Callable[[], None]) -> tuple[Any, Any]:
    """``(run, fallback)`` for one call of ``kind``; fallbacks return the type of the error they got."""

    def run() -> str:
        with probe:
            pause()
        if kind == SUCCESS:
            return SUCCESS
        raise RunFailed(kind)

    def fallback(err: BaseException) -> type[BaseException]:
        if kind == FALLBACK_FAILURE:
            raise FallbackFailed(kind)
        return type(err)

    return run, (fallback if kind in (FAILURE_WITH_FALLBACK, FALLBACK_FAILURE) else None)


def _observe(kind: str, produce: Callable[[], Any], seen: Counter[str]) -> None:
    """Classify what one call returned or raised into the window counters it should have moved."""
    try:
        value = produce()
    except RunFailed:
        seen["failures"] += 1
    except fasthystrix.MaxConcurrencyError:
        seen["rejects"] += 1
    except fasthystrix.FallbackError as exc:
        assert isinstance(exc.fallback_error, FallbackFailed)
        seen["fallback_failures"] += 1
        if isinstance(exc.run_error, RunFailed):
            seen["failures"] += 1
        elif isinstance(exc.run_error, fasthystrix.MaxConcurrencyError):
            seen["rejects"] += 1
        else:
            raise AssertionError(f"unexpected run error {exc.run_error!r}") from exc
    else:
        if value == SUCCESS:
            assert kind == SUCCESS
            seen["successes"] += 1
        elif value is RunFailed:
            seen["failures"] += 1
            seen["fallback_successes"] += 1
        elif value is fasthystrix.MaxConcurrencyError:
            seen["rejects"] += 1
            seen["fallback_successes"] += 1
        else:
            raise AssertionError(f"unexpected value {value!r} for a {kind} call")


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every few microseconds, so that unguarded read-modify-writes interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def _in_threads(worker: Callable[[int], Counter[str]], threads: int = THREADS) -> Counter[str]:
    """Run ``worker(i)`` on ``threads`` threads released together; the sum of what they saw."""
    barrier = threading.Barrier(threads)
    results: list[Counter[str] | BaseException] = [Counter() for _ in range(threads)]

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = worker(i)
        except BaseException as exc:
            results[i] = exc

    pool = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not any(t.is_alive() for t in pool), "a stress thread is stuck"
    total: Counter[str] = Counter()
    for r in results:
        if isinstance(r, BaseException):
            raise r
        total.update(r)
    return total


def _assert_window_matches(circuit: Any, seen: Counter[str], calls: int) -> None:
    m = circuit.metrics()
    counted = {
        "successes": m.successes,
        "failures": m.failures,
        "rejects": m.rejects,
        "fallback_successes": m.fallback_successes,
        "fallback_failures": m.fallback_failures,
    }
    assert counted == {k: seen[k] for k in counted}
    assert m.successes + m.failures + m.rejects == calls
    assert m.requests == calls
    assert m.errors == m.failures + m.rejects
    assert m.short_circuits == m.timeouts == m.context_canceled == m.context_deadline_exceeded == 0
    assert m.executed == m.successes + m.failures
    assert m.concurrent == 0
    assert circuit.tickets_in_use == 0
    assert circuit.state() == "closed"


@pytest.mark.parametrize(
    ("max_concurrent", "calls"),
    [(64, 100_000), (2, 100_000)],
    ids=["no-rejections", "small-limit"],
)
def test_semaphore_counts_are_exact_under_threads(clock: FakeClock, max_concurrent: int, calls: int) -> None:
    name = f"stress-semaphore-{max_concurrent}"
    _configure(name, "semaphore", max_concurrent)
    circuit, _ = fasthystrix.get_circuit(name)
    probe = ConcurrencyProbe()
    # With a small limit, run gives up the GIL so that other threads find every ticket taken.
    pause: Callable[[], None] = (lambda: time.sleep(0)) if max_concurrent < THREADS else (lambda: None)
    per_thread = calls // THREADS

    def worker(i: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for n in range(per_thread):
            kind = KINDS[(n + i) % len(KINDS)]
            run, fallback = _command(kind, probe, pause)
            _observe(kind, lambda r=run, f=fallback: fasthystrix.do(name, r, f), seen)
        return seen

    seen = _in_threads(worker)
    _assert_window_matches(circuit, seen, per_thread * THREADS)
    m = circuit.metrics()
    assert probe.active == 0
    assert probe.peak <= m.max_concurrent <= max_concurrent
    if max_concurrent >= THREADS:
        assert m.rejects == 0
    else:
        assert m.rejects > 0, "the small limit never rejected: the test did not contend"
        assert m.max_concurrent == max_concurrent


@pytest.mark.parametrize("max_concurrent", [64, 3], ids=["no-rejections", "small-limit"])
def test_thread_isolation_go_and_do_counts_add_up(clock: FakeClock, max_concurrent: int) -> None:
    name = f"stress-thread-{max_concurrent}"
    _configure(name, "thread", max_concurrent)
    circuit, _ = fasthystrix.get_circuit(name)
    probe = ConcurrencyProbe()
    calls_per_thread = 500
    batch = 4

    def worker(i: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        n = 0
        while n < calls_per_thread:
            if (n // batch + i) % 2:
                pending: list[tuple[str, Future[Any]]] = []
                for k in range(batch):
                    kind = KINDS[(n + k + i) % len(KINDS)]
                    run, fallback = _command(kind, probe, lambda: time.sleep(0))
                    pending.append((kind, fasthystrix.go(name, run, fallback)))
                for kind, future in pending:
                    _observe(kind, lambda f=future: f.result(timeout=30), seen)
            else:
                for k in range(batch):
                    kind = KINDS[(n + k + i) % len(KINDS)]
                    run, fallback = _command(kind, probe, lambda: time.sleep(0))
                    _observe(kind, lambda r=run, f=fallback: fasthystrix.do(name, r, f), seen)
            n += batch
        return seen

    seen = _in_threads(worker)
    _assert_window_matches(circuit, seen, calls_per_thread * THREADS)
    m = circuit.metrics()
    assert probe.active == 0
    assert probe.peak <= m.max_concurrent <= max_concurrent
    if max_concurrent >= THREADS * batch:
        assert m.rejects == 0
    else:
        assert m.rejects > 0, "the small limit never rejected: the test did not contend"


def test_get_circuit_race_creates_exactly_one() -> None:
    threads = 100
    made: list[str] = []
    made_lock = threading.Lock()

    class Collector:
        def update(self, result: object) -> None:
            pass

        def reset(self) -> None:
            pass

    def factory(name: str) -> Collector:
        with made_lock:
            made.append(name)
        return Collector()

    collector_registry.register(factory)
    got_lock = threading.Lock()
    for round_ in range(5):
        name = f"race-{round_}"
        got: list[tuple[Any, bool]] = []

        def worker(_: int, name: str = name, got: list[tuple[Any, bool]] = got) -> Counter[str]:
            result = fasthystrix.get_circuit(name)
            with got_lock:
                got.append(result)
            return Counter()

        _in_threads(worker, threads)
        assert len(got) == threads
        assert sum(created for _, created in got) == 1
        first = got[0][0]
        assert all(circuit is first for circuit, _ in got)
        assert fasthystrix.get_circuit(name) == (first, False)
        assert made.count(name) == 1, f"collector factory ran {made.count(name)} times for {name}"


def test_successes_are_counted_while_snapshots_fold_them(clock: FakeClock) -> None:
    """Snapshots taken while threads succeed (the pure twin folds its lock-free records then) lose nothing."""
    name = "stress-snapshots"
    _configure(name, "semaphore", 64)
    circuit, _ = fasthystrix.get_circuit(name)
    per_thread = 5_000
    done = threading.Event()
    readings: list[int] = []

    def read() -> None:
        while not done.is_set():
            readings.append(circuit.metrics().successes)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        _in_threads(lambda i: Counter(ok=sum(fasthystrix.do(name, lambda: 1) for _ in range(per_thread))))
    finally:
        done.set()
        reader.join(60)
    assert len(readings) > 1, "the reader never ran while the workers did"
    assert readings == sorted(readings)
    m = circuit.metrics()
    assert m.successes == m.requests == m.executed == per_thread * THREADS
    # The fake clock stands still: every run took no time at all, and the latencies say so.
    assert m.run_latency_mean == m.total_latency_mean == 0
    assert set(m.run_latency_percentiles.values()) == set(m.total_latency_percentiles.values()) == {0}


def test_circuit_trips_on_the_exact_failure_after_threaded_successes(clock: FakeClock) -> None:
    """Every success reported by other threads counts in the health check: with 50 %, the circuit opens
    on exactly the failure that brings errors to half the window (a lost success would open it sooner)."""
    name = "stress-trip"
    fasthystrix.configure_command(
        name,
        fasthystrix.CommandConfig(
            timeout=10_000,
            max_concurrent_requests=64,
            request_volume_threshold=10,
            error_percent_threshold=50,
            isolation="semaphore",
        ),
    )
    circuit, _ = fasthystrix.get_circuit(name)
    per_thread = 2_000
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            circuit.is_open()  # reads the window's health under the lock, as admissions do

    reader = threading.Thread(target=read)
    reader.start()
    try:
        _in_threads(lambda i: Counter(ok=sum(fasthystrix.do(name, lambda: 1) for _ in range(per_thread))))
    finally:
        done.set()
        reader.join(60)
    successes = per_thread * THREADS
    # The first failure count at which (errors * 100 / requests), rounded half up, reaches 50.
    expected = next(f for f in range(successes * 2) if (f * 200 + successes + f) // (2 * (successes + f)) >= 50)

    def fail() -> None:
        raise RunFailed("down")

    while circuit.state() == "closed":  # the call that finds the window unhealthy opens it (short-circuited)
        assert fasthystrix.do(name, fail, lambda err: "fallback") == "fallback"
    m = circuit.metrics()
    assert (m.successes, m.failures, m.short_circuits) == (successes, expected, 1)
