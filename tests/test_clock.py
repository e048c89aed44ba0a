"""The clock circuits read, and how the semaphore path times ``run`` and finds its circuit.

Both implementations read the platform's monotonic clock (the compiled one from C, the same
clock as ``time.monotonic_ns()``). A ``ManualClock`` installed by a test freezes that clock at
its value, so tests that drive time by hand run production's clock code. Latencies, timeouts
and counts are the same on both implementations.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS
from fasthystrix import _impl, _registry
from fasthystrix._core import _clock


def _compiled_circuit_module() -> Any:
    if "compiled" not in _impl.available():
        return None
    return importlib.import_module("fasthystrix._core._circuit")


def test_compiled_clock_is_time_monotonic_ns() -> None:
    module = _compiled_circuit_module()
    if module is None:
        pytest.skip("the compiled implementation is not built")
    for _ in range(100):
        before = time.monotonic_ns()
        now = module.now_ns()
        after = time.monotonic_ns()
        assert before <= now <= after


def test_manual_clock_freezes_the_compiled_clock(impl: str) -> None:
    module = _compiled_circuit_module()
    manual = _clock.ManualClock(5_000_000_000_000)
    _clock.set_clock(manual)
    try:
        fasthystrix.flush()
        circuit = fasthystrix.get_circuit("manual")[0]
        assert circuit._clock() == 5_000_000_000_000
        manual.advance(ms=1.5)
        assert circuit._clock() == 5_000_001_500_000
        manual.now = 6_000_000_000_000
        assert circuit._clock() == 6_000_000_000_000
        if impl == "compiled":
            # The compiled circuit reads the C clock, which the manual clock froze: not a Python call.
            assert circuit._clock is module.now_ns
            assert module.now_ns() == 6_000_000_000_000
    finally:
        _clock.set_clock(None)
    if module is not None:
        before = time.monotonic_ns()
        assert before <= module.now_ns() <= time.monotonic_ns()


def test_any_other_clock_is_called_from_python(impl: str) -> None:
    readings = iter(range(10**12, 10**12 + 10**9, 10**6))
    reads: list[int] = []

    def clock() -> int:
        reads.append(next(readings))
        return reads[-1]

    _clock.set_clock(clock)
    try:
        fasthystrix.flush()
        fasthystrix.configure_command("py-clock", fasthystrix.CommandConfig(isolation="semaphore"))
        assert fasthystrix.do("py-clock", lambda: 1) == 1
        assert len(reads) >= 2  # at least the start and the end of the call
        assert fasthystrix.get_circuit("py-clock")[0].metrics().successes == 1
    finally:
        _clock.set_clock(None)


def test_manual_clock_never_goes_back() -> None:
    manual = _clock.ManualClock(10)
    with pytest.raises(ValueError, match="cannot go back"):
        manual.now = 9
    with pytest.raises(ValueError, match="cannot go back"):
        manual.advance_ns(-1)
    with pytest.raises(ValueError, match="start_ns"):
        _clock.ManualClock(-5)
    assert manual() == 10


@pytest.mark.parametrize("sleep_ms", [2, 30])
def test_latency_of_a_run_is_its_duration(sleep_ms: int) -> None:
    fasthystrix.configure_command("timed", fasthystrix.CommandConfig(isolation="semaphore", timeout=1000))
    fasthystrix.do("timed", lambda: None)  # the circuit exists before the timing starts
    circuit = fasthystrix.get_circuit("timed")[0]
    circuit._default.reset()
    outer = []
    for _ in range(5):
        before = time.monotonic_ns()
        fasthystrix.do("timed", lambda: time.sleep(sleep_ms / 1000))
        outer.append((time.monotonic_ns() - before) / 1e6)
    m = circuit.metrics()
    assert m.successes == 5
    slowest = max(outer)
    # Every sample lies between the sleep and the longest call seen from outside (rounding: 1 us).
    assert sleep_ms <= m.run_latency_percentiles[0.0] <= m.run_latency_percentiles[100.0] <= slowest + 0.001
    assert m.total_latency_percentiles == m.run_latency_percentiles
    assert sleep_ms <= m.run_latency_mean <= slowest + 0.001


def test_a_slow_success_is_a_timeout() -> None:
    fasthystrix.configure_command("slow", fasthystrix.CommandConfig(isolation="semaphore", timeout=250))
    errors: list[BaseException] = []
    assert fasthystrix.do("slow", lambda: time.sleep(0.5) or "late", errors.append) is None
    # A generous margin below the timeout: a loaded machine may stall the call for a while.
    assert fasthystrix.do("slow", lambda: "in time") == "in time"
    assert [type(e) for e in errors] == [fasthystrix.TimeoutError]
    m = fasthystrix.get_circuit("slow")[0].metrics()
    assert (m.timeouts, m.successes, m.fallback_successes) == (1, 1, 1)
    # The timeout's total latency covers the 500 ms run (no run latency: it timed out).
    assert m.total_latency_percentiles[100.0] >= 500


def test_a_slow_failure_with_a_fallback_counts_both_latencies() -> None:
    fasthystrix.configure_command("failing", fasthystrix.CommandConfig(isolation="semaphore", timeout=1000))

    def run() -> None:
        time.sleep(0.01)
        raise RuntimeError("down")

    def fallback(err: BaseException) -> str:
        time.sleep(0.02)
        return "cached"

    before = time.monotonic_ns()
    assert fasthystrix.do("failing", run, fallback) == "cached"
    outer_ms = (time.monotonic_ns() - before) / 1e6
    m = fasthystrix.get_circuit("failing")[0].metrics()
    assert (m.failures, m.fallback_successes) == (1, 1)
    run_ms = m.run_latency_percentiles[100.0]
    total_ms = m.total_latency_percentiles[100.0]
    # The run's 10 ms sleep, ended before the fallback's 20 ms began; the total includes the
    # fallback, and lies within the call as timed from outside (rounding: 1 us), however long
    # a busy machine made it.
    assert 10 <= run_ms <= outer_ms - 20 + 0.001
    assert run_ms + 20 <= total_ms <= outer_ms + 0.001


def test_bucket_second_of_the_fast_path_is_now() -> None:
    fasthystrix.configure_command("now", fasthystrix.CommandConfig(isolation="semaphore"))
    for _ in range(100):
        fasthystrix.do("now", lambda: 1)
    circuit = fasthystrix.get_circuit("now")[0]
    # Read with the precise clock right after: every event is in the window.
    assert circuit.metrics().successes == 100


def test_flush_replaces_the_circuit() -> None:
    name = "replaced"
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(isolation="semaphore"))
    fasthystrix.do(name, lambda: 1)  # creates the circuit
    fasthystrix.do(name, lambda: 1)  # finds it in the table
    first = fasthystrix.get_circuit(name)[0]
    fasthystrix.flush()
    fasthystrix.do(name, lambda: 1)
    second = fasthystrix.get_circuit(name)[0]
    assert second is not first
    # flush reset the first; a shared one reads the file's window, as the second does.
    assert (first.metrics().successes, second.metrics().successes) == (1 if SHARED_TESTS else 0, 1)


def test_equal_names_of_different_objects_share_the_circuit() -> None:
    literal = "shared-name"
    built = "".join(["shared", "-", "name"])
    assert built == literal and built is not literal
    fasthystrix.configure_command(literal, fasthystrix.CommandConfig(isolation="semaphore"))
    for i in range(10):
        fasthystrix.do(literal if i % 2 else built, lambda: 1)
    assert fasthystrix.get_circuit(literal)[0].metrics().successes == 10
    assert len(_registry.circuits()) == 1


def test_alternating_names_use_their_own_circuits() -> None:
    for name in ("a", "b"):
        fasthystrix.configure_command(name, fasthystrix.CommandConfig(isolation="semaphore"))
    for name in ["a", "a", "b", "a", "b", "b", "a", "a"]:
        fasthystrix.do(name, lambda: 1)
    counts = {name: c.metrics().successes for name, c in _registry.circuits().items()}
    assert counts == {"a": 5, "b": 3}


def test_flush_while_threads_call_do() -> None:
    """Threads calling do() while another flushes: every call runs and counts in a live circuit."""
    names = [f"churn-{i}" for i in range(3)]
    for name in names:
        fasthystrix.configure_command(
            name, fasthystrix.CommandConfig(isolation="semaphore", max_concurrent_requests=100)
        )
    stop = threading.Event()
    calls = [0] * 4
    failures: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            while not stop.is_set():
                assert fasthystrix.do(names[calls[k] % len(names)], lambda: 7) == 7
                calls[k] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    flushed_circuits = []
    for _ in range(50):
        time.sleep(0.002)
        flushed_circuits.extend(_registry.circuits().values())
        fasthystrix.flush()
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert all(n > 0 for n in calls)
    # Circuits flushed while calls were in flight still give every ticket back.
    assert all(c.tickets_in_use == 0 for c in flushed_circuits)
