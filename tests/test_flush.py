"""flush(): resets metrics, forgets circuits, keeps settings, and leaves no fasthystrix thread behind."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import fasthystrix
from conftest import SHARED_TESTS, FakeClock, fasthystrix_threads
from fasthystrix import Context, _registry
from support import WAIT, wait_until


def _wait_no_threads(timeout: float = WAIT) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [t.name for t in fasthystrix_threads() if t.is_alive()]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


# What flush() forgets of a private circuit, a shared one keeps in its file: circuits() and
# get_circuit_settings() list the host's (docs/deployment.md).
_HOST_WIDE = "the host's circuits and settings outlive a flush() in their files"


def _wait_tickets(name: str) -> None:
    circuit = fasthystrix.get_circuit(name)[0]
    wait_until(lambda: circuit.tickets_in_use == 0, f"every ticket of {name} back")


@pytest.mark.skipif(SHARED_TESTS, reason=_HOST_WIDE)
def test_flush_forgets_circuits_and_resets_metrics() -> None:
    fasthystrix.do("a", lambda: None)
    with pytest.raises(ZeroDivisionError):
        fasthystrix.do("b", lambda: 1 / 0)
    old_a = fasthystrix.get_circuit("a")[0]
    assert old_a.metrics().successes == 1
    fasthystrix.flush()
    assert _registry.circuits() == {}
    assert old_a.metrics().requests == 0
    new_a, created = fasthystrix.get_circuit("a")
    assert created
    assert new_a is not old_a
    assert new_a.metrics().requests == 0
    new_b, created = fasthystrix.get_circuit("b")
    assert created
    assert new_b.metrics().failures == 0
    assert fasthystrix.get_circuit("a") == (new_a, False)


@pytest.mark.skipif(SHARED_TESTS, reason=_HOST_WIDE)
def test_flush_keeps_configured_settings() -> None:
    settings = fasthystrix.configure_command("kept", {"timeout": 42, "max_concurrent_requests": 3})
    fasthystrix.do("auto", lambda: None)
    auto = fasthystrix.get_circuit_settings()["auto"]
    fasthystrix.get_circuit("kept")
    fasthystrix.flush()
    table = fasthystrix.get_circuit_settings()
    assert table["kept"] is settings
    # Unlike hystrix-go, the defaults a name took at first use are forgotten with its circuit
    # (so flush() gives their memory back); used again, it takes the defaults again.
    assert "auto" not in table
    fasthystrix.do("auto", lambda: None)
    assert fasthystrix.get_circuit_settings()["auto"] == auto
    circuit, created = fasthystrix.get_circuit("kept")
    assert created
    assert circuit.settings is settings
    assert circuit.settings.timeout == timedelta(milliseconds=42)


def test_flush_forgets_open_and_forced_open_state(clock: FakeClock) -> None:
    fasthystrix.configure_command(
        "tripped", {"isolation": "semaphore", "request_volume_threshold": 1, "error_percent_threshold": 1}
    )
    with pytest.raises(ZeroDivisionError):
        fasthystrix.do("tripped", lambda: 1 / 0)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("tripped", lambda: None)
    fasthystrix.get_circuit("forced")[0].force_open = True
    fasthystrix.flush()
    assert fasthystrix.do("tripped", lambda: "closed again") == "closed again"
    assert fasthystrix.do("forced", lambda: "closed again") == "closed again"
    assert fasthystrix.get_circuit("forced")[0].state() == "closed"


def test_flush_with_nothing_to_flush() -> None:
    fasthystrix.flush()
    fasthystrix.flush()
    assert _registry.circuits() == {}
    assert _wait_no_threads() == []


def test_flush_leaves_no_threads_after_thread_isolation_calls() -> None:
    gate = threading.Event()
    fasthystrix.configure_command("slow", {"timeout": 20})
    fasthystrix.configure_command("limited", {"max_concurrent_requests": 1, "timeout": 120_000})
    try:
        assert fasthystrix.do("t", lambda: 1) == 1
        assert fasthystrix.go("t", lambda: 2).result(WAIT) == 2
        assert fasthystrix.do_c(Context(), "t", lambda ctx: 3) == 3
        assert fasthystrix.go_c(Context().with_timeout(5), "t", lambda ctx: 4).result(WAIT) == 4
        with pytest.raises(fasthystrix.TimeoutError):
            fasthystrix.do("slow", lambda: gate.wait(2 * WAIT))
        assert fasthystrix.go("slow", lambda: gate.wait(2 * WAIT), lambda err: "fb").result(WAIT) == "fb"
        assert isinstance(fasthystrix.go("slow", lambda: gate.wait(2 * WAIT)).exception(WAIT), fasthystrix.TimeoutError)
        blocker = fasthystrix.go("limited", lambda: gate.wait(2 * WAIT))
        assert fasthystrix.go("limited", lambda: None, lambda err: "rejected").result(WAIT) == "rejected"
    finally:
        gate.set()
    assert blocker.result(WAIT) is True
    _wait_tickets("slow")
    _wait_tickets("limited")
    assert fasthystrix_threads(), "thread isolation should have used fasthystrix worker threads"
    fasthystrix.flush()
    assert _wait_no_threads() == []


def test_flush_then_more_calls_then_flush_again() -> None:
    assert fasthystrix.go("again", lambda: 1).result(WAIT) == 1
    fasthystrix.flush()
    assert _wait_no_threads() == []
    assert fasthystrix.do("again", lambda: 2) == 2
    assert fasthystrix.go("again", lambda: 3).result(WAIT) == 3
    assert fasthystrix.get_circuit("again")[0].metrics().successes == 2
    fasthystrix.flush()
    assert _wait_no_threads() == []


def test_flush_while_run_in_flight_lets_it_finish_and_leaves_no_thread() -> None:
    gate = threading.Event()
    future = fasthystrix.go("inflight", lambda: gate.wait(2 * WAIT) and "finished")
    old = fasthystrix.get_circuit("inflight")[0]
    flusher = threading.Thread(target=fasthystrix.flush)
    flusher.start()
    time.sleep(0.02)
    gate.set()
    flusher.join(WAIT)
    assert not flusher.is_alive()
    assert future.result(WAIT) == "finished"
    assert old.tickets_in_use == 0
    assert _wait_no_threads() == []


def test_go_whose_run_flushes_is_not_held_up_by_the_flush() -> None:
    """A flush() inside a go() run waits for fasthystrix's idle threads to stop, but not for the
    deadline timer once other commands have given it work again: those runs ran late and timed out."""
    fasthystrix.configure_command("flushing-go", fasthystrix.CommandConfig(timeout=1500))
    futures = [fasthystrix.go("flushing-go", lambda: fasthystrix.flush() or 1) for _ in range(10)]
    assert [f.result(WAIT) for f in futures] == [1] * 10
