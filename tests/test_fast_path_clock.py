"""How the semaphore fast path times ``run`` and finds its circuit.

The compiled twin times ``run`` with the CPU's time-stamp counter when the
kernel's clocksource is the TSC (``"tsc"``), else with ``CLOCK_MONOTONIC`` at
both ends (``"monotonic"``), and caches the circuit each thread used last.
Whatever the way, latencies, timeouts and counts are the same as the pure
twin's, which these tests check on both implementations and both clocks.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix import _impl, _registry
from support import WAIT

CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")


def _kernel_uses_tsc() -> bool:
    try:
        return CLOCKSOURCE.read_text().strip() == "tsc"
    except OSError:
        return False


def _compiled_circuit_module() -> Any:
    if "compiled" not in _impl.available():
        return None
    return importlib.import_module("fasthystrix._circuit")


@pytest.fixture(params=["tsc", "monotonic"])
def fast_clock(request: pytest.FixtureRequest, impl: str) -> Iterator[str]:
    """The compiled fast path's clock for this test (the pure twin always reads the circuit's clock)."""
    module = _compiled_circuit_module()
    if impl != "compiled" or module is None:
        if request.param == "tsc":
            pytest.skip("only the compiled twin has a TSC mode")
        yield "monotonic"
        return
    if request.param == "tsc" and not _kernel_uses_tsc():
        pytest.skip("the kernel's clocksource is not the TSC here")
    module._allow_tsc(request.param == "tsc")
    try:
        if request.param == "tsc":
            _calibrate(module)
        yield module._fast_clock()
    finally:
        module._allow_tsc(True)


def _calibrate(module: Any) -> None:
    fasthystrix.configure_command("calibrate", fasthystrix.CommandConfig(isolation="semaphore"))
    deadline = time.monotonic() + WAIT
    while module._fast_clock() != "tsc":
        assert time.monotonic() < deadline, "the TSC was never calibrated"
        time.sleep(0.05)
        fasthystrix.do("calibrate", lambda: None)


def test_fast_clock_mode(fast_clock: str, impl: str) -> None:
    module = _compiled_circuit_module()
    if impl == "compiled":
        assert module is not None
        assert fast_clock == module._fast_clock()
        assert fast_clock in ("tsc", "monotonic")
    else:
        assert fast_clock == "monotonic"


@pytest.mark.parametrize("sleep_ms", [2, 30])
def test_latency_of_a_run_is_its_duration(fast_clock: str, sleep_ms: int) -> None:
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


def test_a_slow_success_is_a_timeout(fast_clock: str) -> None:
    # A call that returns at once ends in time, with 200 ms to spare even on a busy machine.
    fasthystrix.configure_command("slow", fasthystrix.CommandConfig(isolation="semaphore", timeout=200))
    errors: list[BaseException] = []
    assert fasthystrix.do("slow", lambda: time.sleep(0.25) or "late", errors.append) is None
    assert fasthystrix.do("slow", lambda: "in time") == "in time"
    assert [type(e) for e in errors] == [fasthystrix.TimeoutError]
    m = fasthystrix.get_circuit("slow")[0].metrics()
    assert (m.timeouts, m.successes, m.fallback_successes) == (1, 1, 1)
    # The timeout's total latency covers the 250 ms run (no run latency: it timed out).
    assert m.total_latency_percentiles[100.0] >= 250


def test_a_slow_failure_with_a_fallback_counts_both_latencies(fast_clock: str) -> None:
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


def test_bucket_second_of_the_fast_path_is_now(fast_clock: str) -> None:
    fasthystrix.configure_command("now", fasthystrix.CommandConfig(isolation="semaphore"))
    for _ in range(100):
        fasthystrix.do("now", lambda: 1)
    circuit = fasthystrix.get_circuit("now")[0]
    # Read with the precise clock right after: every event is in the window.
    assert circuit.metrics().successes == 100


def test_flush_forgets_the_cached_circuit() -> None:
    name = "cached"
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(isolation="semaphore"))
    fasthystrix.do(name, lambda: 1)  # creates the circuit
    fasthystrix.do(name, lambda: 1)  # finds it in the table (and the compiled twin caches it)
    first = fasthystrix.get_circuit(name)[0]
    fasthystrix.flush()
    fasthystrix.do(name, lambda: 1)
    second = fasthystrix.get_circuit(name)[0]
    assert second is not first
    assert (first.metrics().successes, second.metrics().successes) == (0, 1)  # flush reset the first


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


def test_implementation_switch_forgets_the_cached_circuit(impl: str) -> None:
    other = "pure" if impl == "compiled" else "compiled"
    if other not in _impl.available():
        pytest.skip(f"{other} implementation not available")
    fasthystrix.configure_command("switch", fasthystrix.CommandConfig(isolation="semaphore"))
    fasthystrix.do("switch", lambda: 1)
    fasthystrix.do("switch", lambda: 1)
    _impl.select(other)
    fasthystrix.flush()
    fasthystrix.do("switch", lambda: 1)
    circuit = fasthystrix.get_circuit("switch")[0]
    assert type(circuit).__module__.endswith("_circuit_py" if other == "pure" else "_circuit")
    assert circuit.metrics().successes == 1


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
