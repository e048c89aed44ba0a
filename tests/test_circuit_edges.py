"""Edge settings of the circuit on the fast path, in both isolations."""

from __future__ import annotations

from typing import Any

import pytest

import fasthystrix
from fasthystrix import _impl, _registry
from fasthystrix._core import _events
from fasthystrix._isolation import _command


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_zero_volume_threshold_on_an_empty_window(isolation: str) -> None:
    """No request in the window and a volume threshold of 0: the call runs (no division by zero)."""
    fasthystrix.configure_command(
        "edge-volume-0", fasthystrix.CommandConfig(request_volume_threshold=0, isolation=isolation)
    )
    circuit = fasthystrix.get_circuit("edge-volume-0")[0]
    assert circuit.metrics().requests == 0  # reading the window moves it to this second
    assert fasthystrix.do("edge-volume-0", lambda: "ran") == "ran"
    metrics = fasthystrix.get_circuit("edge-volume-0")[0].metrics()
    assert (metrics.requests, metrics.successes, metrics.errors) == (1, 1, 0)


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_zero_volume_threshold_trips_on_the_first_error(isolation: str) -> None:
    name = "edge-volume-0-trip"
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(request_volume_threshold=0, isolation=isolation))
    with pytest.raises(ZeroDivisionError):
        fasthystrix.do(name, lambda: 1 // 0)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: "never")
    assert fasthystrix.get_circuit(name)[0].state() == "open"


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("turned_away", ["short-circuit", "rejected"])
def test_a_call_turned_away_never_reaches_thread_isolation(isolation: str, turned_away: str) -> None:
    """The circuit turns a call away before anything isolation-specific: no worker, no hand-off."""
    name = f"away-{isolation}-{turned_away}"
    fasthystrix.configure_command(
        name,
        fasthystrix.CommandConfig(isolation=isolation, max_concurrent_requests=0 if turned_away == "rejected" else 10),
    )
    circuit = fasthystrix.get_circuit(name)[0]
    if turned_away == "short-circuit":
        circuit.force_open = True
    ran: list[int] = []
    errors: list[BaseException] = []
    handed_off: list[str] = []

    def spy(circuit: object, *args: object) -> object:
        handed_off.append(name)
        return _command.run_threaded(circuit, *args)  # type: ignore[arg-type]

    implementation = _impl.current()
    implementation.bind(_registry._circuits, _registry.get_or_create, spy)
    try:
        for _ in range(20):
            assert fasthystrix.do(name, lambda: ran.append(1), lambda err: errors.append(err) or "fb") == "fb"
        assert not handed_off
        if isolation == "thread":  # the spy does see an admitted call
            assert fasthystrix.do("admitted", lambda: "ran") == "ran"
            assert handed_off == [name]
    finally:
        implementation.bind(_registry._circuits, _registry.get_or_create, _command.run_threaded)
    expected = fasthystrix.CircuitOpenError if turned_away == "short-circuit" else fasthystrix.MaxConcurrencyError
    assert not ran and len(errors) == 20 and all(type(e) is expected for e in errors)
    m = circuit.metrics()
    assert (m.short_circuits, m.rejects, m.fallback_successes) == (
        (20, 0, 20) if turned_away == "short-circuit" else (0, 20, 20)
    )


def test_admission_verdicts_are_the_named_ones(clock: Any) -> None:
    """Both twins answer admission with the verdicts named in ``_events`` (the compiled one mirrors them)."""
    fasthystrix.configure_command(
        "verdicts", fasthystrix.CommandConfig(request_volume_threshold=1, sleep_window=100, max_concurrent_requests=1)
    )
    circuit = fasthystrix.get_circuit("verdicts")[0]
    assert circuit._acquire(clock()) == _events.ADMITTED
    assert circuit._acquire(clock()) == _events.REJECTED_VERDICT  # the one ticket is taken
    circuit._report(_events.FAILURE, _events.NO_EVENT, clock(), 1, 1, _events.ADMITTED, True)
    assert circuit._acquire(clock()) == _events.TRIPPED  # the failure made it unhealthy: this call opens it
    assert circuit._acquire(clock()) == _events.SHORT_CIRCUITED
    clock.advance(ms=101)
    trial = circuit._acquire(clock())
    assert trial > 0  # the trial of the first open episode
    circuit._report(_events.SUCCESS, _events.NO_EVENT, clock(), 1, 1, trial, True)
    assert circuit.state() == "closed"
    assert _events.turned_away_event(_events.REJECTED_VERDICT) == _events.REJECTED
    assert _events.turned_away_event(_events.TRIPPED) == _events.SHORT_CIRCUIT
    # The ends of a wait for a ticket (max_queue_wait) other than a rejection.
    assert _events.turned_away_event(_events.QUEUE_TIMEOUT) == _events.TIMEOUT
    assert _events.turned_away_event(_events.QUEUE_CANCELED) == _events.CONTEXT_CANCELED
    assert _events.turned_away_event(_events.QUEUE_DEADLINE) == _events.CONTEXT_DEADLINE_EXCEEDED


def test_shed_until_is_when_the_next_trial_may_come(clock: Any) -> None:
    """``_shed_until`` (the middlewares' door) says what admission does: no trial up to it, one
    just after it; 0 whenever a call may be admitted or the wait is not the sleep window's."""
    fasthystrix.configure_command(
        "shed-until",
        fasthystrix.CommandConfig(request_volume_threshold=1, sleep_window=100, sleep_window_multiplier=2.0),
    )
    circuit = fasthystrix.get_circuit("shed-until")[0]
    assert circuit._shed_until() == 0  # closed
    circuit._report(_events.FAILURE, _events.NO_EVENT, clock(), 1, 1, circuit._acquire(clock()), True)
    opened = clock()
    assert circuit._acquire(opened) == _events.TRIPPED
    assert circuit._shed_until() == opened + 100_000_000
    clock.advance(ms=100)
    assert clock() == circuit._shed_until() and circuit._acquire(clock()) == _events.SHORT_CIRCUITED
    clock.advance_ns(1)
    trial = circuit._acquire(clock())
    assert trial > 0  # just past it: the trial, which restarts the window
    started = clock()
    assert circuit._shed_until() == started + 100_000_000
    circuit._report(_events.FAILURE, _events.NO_EVENT, clock(), 1, 1, trial, True)
    assert circuit._shed_until() == started + 200_000_000  # the failed trial doubled the wait
    circuit.force_open = True
    assert (circuit.state(), circuit._shed_until()) == ("forced-open", 0)
    circuit.force_open = False
    circuit.force_closed = True
    assert (circuit.state(), circuit._shed_until()) == ("closed", 0)


def test_shed_until_is_0_while_several_trials_may_be_admitted(clock: Any) -> None:
    fasthystrix.configure_command(
        "shed-until-probes",
        fasthystrix.CommandConfig(request_volume_threshold=1, sleep_window=100, half_open_max_calls=3),
    )
    circuit = fasthystrix.get_circuit("shed-until-probes")[0]
    circuit._report(_events.FAILURE, _events.NO_EVENT, clock(), 1, 1, circuit._acquire(clock()), True)
    assert circuit._acquire(clock()) == _events.TRIPPED
    assert circuit._shed_until() == clock() + 100_000_000
    clock.advance(ms=101)
    trial = circuit._acquire(clock())
    assert trial > 0  # the half-open phase's first trial
    assert circuit._shed_until() == 0  # two more trials may be admitted: nothing to shed
    circuit._report(_events.SUCCESS, _events.NO_EVENT, clock(), 1, 1, trial, True)
    assert circuit._shed_until() == 0
