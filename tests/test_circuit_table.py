"""The circuit table's bound: eviction of the least used circuits, refusal when none can go,
flush() giving memory back, and the memory a circuit costs."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import tracemalloc
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS, FakeClock
from fasthystrix import _registry

pytestmark = pytest.mark.skipif(SHARED_TESTS, reason="the per-process table (shared circuits are bounded host-wide)")


def names() -> set[str]:
    return set(_registry.circuits())


def semaphore(name: str) -> None:
    fasthystrix.configure_command(name, {"isolation": "semaphore"})


# -- the setting ---------------------------------------------------------------------------


def test_default_bound_and_setting_it() -> None:
    assert fasthystrix.get_max_circuits() == fasthystrix.DEFAULT_MAX_CIRCUITS == 10_000
    assert fasthystrix.set_max_circuits(50) == 50
    assert fasthystrix.get_max_circuits() == 50
    assert fasthystrix.circuit_table_stats()["max_circuits"] == 50
    assert fasthystrix.set_max_circuits() == 10_000
    assert fasthystrix.get_max_circuits() == 10_000


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-5, ValueError), ("100", TypeError), (10.0, TypeError), (True, TypeError)],
)
def test_a_bad_bound_is_refused_and_changes_nothing(value: Any, error: type[Exception]) -> None:
    fasthystrix.set_max_circuits(77)
    with pytest.raises(error, match="max_circuits"):
        fasthystrix.set_max_circuits(value)
    assert fasthystrix.get_max_circuits() == 77


# -- eviction ------------------------------------------------------------------------------


def test_the_table_never_holds_more_than_the_bound() -> None:
    fasthystrix.set_max_circuits(32)
    for i in range(300):
        assert fasthystrix.do(f"name-{i}", lambda i=i: i, None) == i
        assert len(names()) <= 32
    stats = fasthystrix.circuit_table_stats()
    assert stats["circuits"] <= 32
    assert stats["evicted"] == 300 - stats["circuits"]
    assert stats["refused"] == 0
    assert "name-299" in names()


def test_idle_circuits_go_first_then_the_least_used() -> None:
    fasthystrix.set_max_circuits(16)
    for i in range(8):
        fasthystrix.get_circuit(f"idle-{i}")  # no call in its window
    for i in range(8):
        for _ in range(i + 1):
            fasthystrix.do(f"used-{i}", lambda: None, None)
    # One new name evicts one circuit (a sixteenth of 16): the 8 idle ones go first, oldest first.
    for n in range(8):
        fasthystrix.do(f"new-{n}", lambda: None, None)
        assert not {f"idle-{i}" for i in range(n + 1)} & names()
        assert {f"idle-{i}" for i in range(n + 1, 8)} <= names()
    assert {f"used-{i}" for i in range(8)} <= names()
    # Then the fewest calls in the window: used-0 (1 call) and the new ones (1 call each) tie,
    # and the oldest of them goes.
    fasthystrix.do("newer", lambda: None, None)
    assert "used-0" not in names()
    assert {f"used-{i}" for i in range(1, 8)} <= names()


def test_open_forced_configured_and_busy_circuits_are_never_evicted(clock: FakeClock) -> None:
    fasthystrix.set_max_circuits(5)
    # open: a failing circuit past its volume threshold
    fasthystrix.configure_command("open", {"isolation": "semaphore", "request_volume_threshold": 2})
    _registry._configured.discard("open")  # as if never configured: only its state keeps it
    for _ in range(3):
        fasthystrix.do("open", lambda: 1 / 0, lambda err: None)
    assert fasthystrix.get_circuit("open")[0].is_open()
    fasthystrix.get_circuit("forced-open")[0].force_open = True
    fasthystrix.get_circuit("forced-closed")[0].force_closed = True
    semaphore("configured")
    fasthystrix.do("configured", lambda: None)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        release.wait()

    busy = fasthystrix.go("busy", hold, None)
    assert inside.wait(10)
    kept = {
        name: fasthystrix.get_circuit(name)[0]
        for name in ("open", "forced-open", "forced-closed", "configured", "busy")
    }
    try:
        answers = [fasthystrix.do(f"flood-{i}", lambda: "ran", lambda err: type(err)) for i in range(50)]
        assert answers == [fasthystrix.CircuitOpenError] * 50  # nothing could be evicted
        for name, circuit in kept.items():
            assert fasthystrix.get_circuit(name)[0] is circuit
    finally:
        release.set()
        busy.result(10)
    stats = fasthystrix.circuit_table_stats()
    assert stats["refused"] == 50
    assert stats["evicted"] == 0


def test_a_refused_call_is_answered_by_its_fallback_and_counted(clock: FakeClock) -> None:
    fasthystrix.set_max_circuits(2)
    for name in ("a", "b"):
        semaphore(name)
        fasthystrix.do(name, lambda: None)
    ran: list[str] = []
    assert fasthystrix.do("c", lambda: ran.append("c"), lambda err: ("fallback", type(err))) == (
        "fallback",
        fasthystrix.CircuitOpenError,
    )
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("d", lambda: ran.append("d"))
    assert fasthystrix.go("e", lambda: ran.append("e"), lambda err: "go").result(10) == "go"
    ctx = fasthystrix.Context()
    assert fasthystrix.do_c(ctx, "f", lambda c: ran.append("f"), lambda c, err: "do_c") == "do_c"

    async def run_async() -> Any:
        async def work() -> None:
            ran.append("g")

        return await fasthystrix.do_async("g", work, lambda err: "async")

    assert asyncio.run(run_async()) == "async"

    @fasthystrix.command("h", fallback=lambda err: "decorated")
    def decorated() -> None:
        ran.append("h")

    assert decorated() == "decorated"
    assert ran == []
    with pytest.raises(fasthystrix.CircuitLimitError, match="max_circuits=2"):
        fasthystrix.get_circuit("i")
    assert names() == {"a", "b", _registry.REFUSED_NAME}
    refused = fasthystrix.get_circuit(_registry.REFUSED_NAME)[0]
    assert refused.force_open
    assert refused.metrics().short_circuits == 6
    assert fasthystrix.circuit_table_stats()["refused"] == 6


def test_room_made_later_is_used_again() -> None:
    fasthystrix.set_max_circuits(2)
    semaphore("a")
    semaphore("b")
    fasthystrix.do("a", lambda: None)
    fasthystrix.do("b", lambda: None)
    assert fasthystrix.do("c", lambda: "ran", lambda err: "refused") == "refused"
    fasthystrix.set_max_circuits(3)
    assert fasthystrix.do("c", lambda: "ran", lambda err: "refused") == "ran"


def test_an_evicted_name_starts_afresh_with_the_current_defaults() -> None:
    fasthystrix.set_max_circuits(1)
    fasthystrix.do("first", lambda: 1 / 0, lambda err: None)
    fasthystrix.set_defaults(fasthystrix.CommandConfig(max_concurrent_requests=3))
    try:
        fasthystrix.do("second", lambda: None, None)
        assert "first" not in fasthystrix.get_circuit_settings()
        fasthystrix.do("first", lambda: None, None)
        circuit = fasthystrix.get_circuit("first")[0]
        assert circuit.metrics().failures == 0
        assert circuit.settings.max_concurrent_requests == 3
    finally:
        fasthystrix.set_defaults()


def test_threads_racing_over_more_names_than_the_bound() -> None:
    """8 threads, 400 names, a bound of 40: every call answers, the table stays bounded and
    every ticket comes back (the conftest checks it after the test)."""
    fasthystrix.set_max_circuits(40)
    errors: list[BaseException] = []
    wrong: list[Any] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        try:
            for _ in range(500):
                n = rng.randrange(400)
                value = fasthystrix.do(f"race-{n}", lambda n=n: n, lambda err: "refused")
                if value not in (n, "refused"):
                    wrong.append(value)
                assert len(_registry._circuits) <= 41  # the bound, plus the refusal circuit
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wrong == []
    assert all(c.tickets_in_use == 0 for c in _registry.circuits().values())


# -- memory --------------------------------------------------------------------------------


def _traced(work: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_circuit_without_traffic_costs_at_most_4_kib() -> None:
    fasthystrix.do("warm-up", lambda: None, None)  # first-use caches, not a circuit's cost
    n = 2_000
    per_circuit = _traced(lambda: [fasthystrix.get_circuit(f"idle-{i}") for i in range(n)]) / n
    print(f"\n{fasthystrix.implementation}: {per_circuit:.0f} B per circuit without traffic")
    assert 0 < per_circuit <= 4096


def test_a_circuit_with_traffic_costs_at_most_64_kib(clock: FakeClock) -> None:
    """Traffic in every latency slot (a slot per 15 s of the last 60): the most histograms a
    circuit ever holds."""
    fasthystrix.do("warm-up", lambda: None, None)
    n = 200
    circuits = [f"busy-{i}" for i in range(n)]
    for name in circuits:
        semaphore(name)

    def traffic() -> None:
        for _ in range(5):
            for name in circuits:
                for us in (50, 900, 12_000, 250_000):
                    fasthystrix.do(name, lambda us=us: clock.advance_ns(us * 1000), None)
            clock.advance(15)

    per_circuit = _traced(traffic) / n
    print(f"\n{fasthystrix.implementation}: {per_circuit:.0f} B per circuit with traffic")
    assert 4096 < per_circuit <= 64 * 1024


def test_flush_gives_the_memory_back() -> None:
    # Semaphore isolation by default: Python's threading module keeps tables of the worker
    # threads it has seen (they do not shrink), which are not fasthystrix's memory.
    fasthystrix.set_defaults(fasthystrix.CommandConfig(isolation="semaphore"))
    fasthystrix.do("warm-up", lambda: None, None)
    fasthystrix.flush()

    def create_and_flush() -> None:
        for i in range(2_000):
            fasthystrix.do(f"flushed-{i}", lambda: None, None)
        fasthystrix.flush()

    try:
        left = _traced(create_and_flush)
    finally:
        fasthystrix.set_defaults()
    print(f"\n{fasthystrix.implementation}: {left} B left after creating 2 000 circuits and flushing")
    assert left < 2_000 * 100  # under 100 B a circuit: nothing of them is kept
    assert fasthystrix.get_circuit_settings() == {}


def test_flush_keeps_configured_settings_and_forgets_the_defaults_taken_at_first_use() -> None:
    semaphore("configured")
    fasthystrix.do("configured", lambda: None)
    fasthystrix.do("implicit", lambda: None, None)
    assert set(fasthystrix.get_circuit_settings()) == {"configured", "implicit"}
    fasthystrix.flush()
    assert set(fasthystrix.get_circuit_settings()) == {"configured"}
    assert fasthystrix.get_circuit_settings()["configured"].semaphore
