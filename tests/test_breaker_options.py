"""The breaker options beyond hystrix-go's: ``circuit_breaker_enabled`` (Hystrix's
``circuitBreaker.enabled``), ``CircuitBreaker.force_closed`` (Hystrix's ``forceClosed``) and
``rejections_count_as_errors`` (resilience4j keeps the bulkhead out of the breaker), through
every entry point and both isolations. The Hypothesis state machine
(test_circuit_state_machine.py) drives them together against its model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix import CommandConfig
from fasthystrix._core import _shared
from support import WAIT, sharing


def _fail() -> None:
    raise RuntimeError("down")


async def _afail() -> None:
    raise RuntimeError("down")


def _via_do(name: str) -> Any:
    return fasthystrix.do(name, _fail, lambda err: err)


def _via_go(name: str) -> Any:
    return fasthystrix.go(name, _fail, lambda err: err).result(WAIT)


def _via_do_c(name: str) -> Any:
    return fasthystrix.do_c(fasthystrix.Context(), name, lambda ctx: _fail(), lambda ctx, err: err)


def _via_do_async(name: str) -> Any:
    return asyncio.run(fasthystrix.do_async(name, _afail, lambda err: err))


def _via_decorator(name: str) -> Any:
    @fasthystrix.command(name, fallback=lambda *, err: err)
    def decorated() -> None:
        _fail()

    return decorated()


ENTRY_POINTS: dict[str, Callable[[str], Any]] = {
    "do": _via_do,
    "go": _via_go,
    "do_c": _via_do_c,
    "do_async": _via_do_async,
    "decorator": _via_decorator,
}


@pytest.mark.parametrize("field", ["circuit_breaker_enabled", "rejections_count_as_errors"])
@pytest.mark.parametrize("value", [1, 0, "yes", None.__class__])
def test_the_flags_take_bools_only(field: str, value: object) -> None:
    before = fasthystrix.configure_command("flags", {field: False})
    with pytest.raises(TypeError, match=field):
        fasthystrix.configure_command("flags", {field: value})
    assert fasthystrix.get_circuit_settings()["flags"] is before
    assert getattr(before, field) is False
    assert getattr(fasthystrix.get_defaults(), field) is True


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_disabled_breaker_never_opens(entry: str, isolation: str) -> None:
    name = f"disabled-{entry}-{isolation}"
    fasthystrix.configure_command(
        name, {"circuit_breaker_enabled": False, "request_volume_threshold": 5, "isolation": isolation}
    )
    circuit = fasthystrix.get_circuit(name)[0]
    circuit.force_open = True  # ignored while disabled, as Hystrix's NoOpCircuitBreaker
    for _ in range(20):
        err = ENTRY_POINTS[entry](name)
        assert isinstance(err, RuntimeError), err  # run ran and failed: never short-circuited
    assert circuit.state() == "closed"
    assert not circuit.is_open()
    assert circuit.allow_request()
    m = circuit.metrics()
    assert (m.failures, m.short_circuits, m.error_percent) == (20, 0, 100)
    # Enabled again: force_open applies, and without it the unhealthy window trips at once.
    fasthystrix.configure_command(name, {"request_volume_threshold": 5, "isolation": isolation})
    assert circuit.state() == "forced-open"
    circuit.force_open = False
    assert isinstance(ENTRY_POINTS[entry](name), fasthystrix.CircuitOpenError)
    assert circuit.state() == "open"


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_force_closed_keeps_it_closed_and_force_open_wins(isolation: str) -> None:
    name = f"forced-closed-{isolation}"
    fasthystrix.configure_command(name, {"request_volume_threshold": 5, "isolation": isolation})
    circuit = fasthystrix.get_circuit(name)[0]
    with pytest.raises(TypeError, match="force_closed"):
        circuit.force_closed = 1  # type: ignore[assignment]
    circuit.force_closed = True
    for entry in ENTRY_POINTS.values():
        for _ in range(4):
            assert isinstance(entry(name), RuntimeError)
    assert circuit.state() == "closed" and not circuit.is_open()
    assert circuit.metrics().error_percent == 100  # health is still computed: "metrics-only"
    circuit.force_open = True
    assert circuit.state() == "forced-open"
    assert isinstance(_via_do(name), fasthystrix.CircuitOpenError)
    circuit.force_open = False
    circuit.force_closed = False
    assert isinstance(_via_do(name), fasthystrix.CircuitOpenError)  # the unhealthy window trips it
    assert circuit.state() == "open"


def test_force_closed_over_an_open_circuit_lets_calls_run_until_cleared() -> None:
    fasthystrix.configure_command("reopen", {"request_volume_threshold": 2, "isolation": "semaphore"})
    circuit = fasthystrix.get_circuit("reopen")[0]
    for _ in range(3):
        _via_do("reopen")
    assert circuit.state() == "open"
    circuit.force_closed = True
    assert fasthystrix.do("reopen", lambda: "ran") == "ran"
    circuit.force_closed = False
    assert circuit.state() == "open"  # it was open, and nothing has closed it


@pytest.mark.parametrize("counted", [True, False])
def test_rejections_count_as_errors_or_not(counted: bool) -> None:
    name = f"bulkhead-{counted}"
    fasthystrix.configure_command(
        name,
        {
            "max_concurrent_requests": 1,
            "request_volume_threshold": 10,
            "isolation": "semaphore",
            "rejections_count_as_errors": counted,
        },
    )
    circuit = fasthystrix.get_circuit(name)[0]
    holding = threading.Event()
    release = threading.Event()

    def hold() -> str:
        holding.set()
        release.wait(WAIT)
        return "held"

    holder = threading.Thread(target=fasthystrix.do, args=(name, hold))
    holder.start()
    try:
        assert holding.wait(WAIT)
        outcomes = [type(fasthystrix.do(name, lambda: "ran", lambda err: err)).__name__ for _ in range(30)]
    finally:
        release.set()
        holder.join(WAIT)
    m = circuit.metrics()
    if counted:
        # hystrix: 10 rejections at 100 % trip the circuit; the rest are short-circuited.
        assert outcomes == ["MaxConcurrencyError"] * 10 + ["CircuitOpenError"] * 20
        assert circuit.state() == "open"
    else:
        # Counted and reported, but the breaker does not see them: it stays closed.
        assert outcomes == ["MaxConcurrencyError"] * 30
        assert (m.rejects, m.short_circuits) == (30, 0)
        assert circuit.state() == "closed"
        assert fasthystrix.do(name, lambda: "ran") == "ran"


def test_the_stream_reports_the_options() -> None:
    from fasthystrix._observability._stream_messages import command_message

    fasthystrix.configure_command("props", {"circuit_breaker_enabled": False})
    circuit = fasthystrix.get_circuit("props")[0]
    circuit.force_closed = True
    message = command_message(circuit)
    assert message["propertyValue_circuitBreakerEnabled"] is False
    assert message["propertyValue_circuitBreakerForceClosed"] is True
    assert message["propertyValue_circuitBreakerForceOpen"] is False


def test_the_options_are_host_wide(tmp_path: Path) -> None:
    with sharing(tmp_path / "circuits"):
        fasthystrix.configure_command("host", {"circuit_breaker_enabled": False, "rejections_count_as_errors": False})
        circuit = fasthystrix.get_circuit("host")[0]
        circuit.force_closed = True
        # Another circuit object on the same file (what another worker maps) reads them back.
        other = fasthystrix.CircuitBreaker(
            "host", fasthystrix.get_defaults(), type(circuit._default)("host"), [], fasthystrix.get_clock()
        )
        other._attach(_shared.SharedCircuitFile("host", fasthystrix.implementation, fasthystrix.get_defaults()), None)
        assert other.settings.circuit_breaker_enabled is False
        assert other.settings.rejections_count_as_errors is False
        assert other.force_closed is True
        assert CommandConfig(circuit_breaker_enabled=True).circuit_breaker_enabled is True


def test_backoff_multiplies_caps_and_jitters_the_wait(clock: Any) -> None:
    from fasthystrix._core import _backoff

    fasthystrix.configure_command(
        "backoff",
        CommandConfig(
            isolation="semaphore",
            request_volume_threshold=1,
            sleep_window=1000,
            sleep_window_multiplier=2.0,
            max_sleep_window=5000,
            sleep_window_jitter=0.2,
        ),
    )
    circuit = fasthystrix.get_circuit("backoff")[0]
    _via_do("backoff")
    tripped_at = clock.now
    assert isinstance(_via_do("backoff"), fasthystrix.CircuitOpenError)  # this call trips it
    raw = 1_000_000_000
    expected = _backoff.jittered(raw, 200_000, _backoff.seed(tripped_at, 1, 0))
    waits = []
    for reopens in range(1, 6):
        wait = circuit.sleep_window_now // timedelta(microseconds=1) * 1000
        assert wait == expected // 1000 * 1000  # both twins: _backoff's arithmetic, to the microsecond
        assert abs(wait - raw) <= raw * 0.2 + 1000
        waits.append(wait)
        clock.advance_ns(wait - 1_000)  # not yet
        assert isinstance(_via_do("backoff"), fasthystrix.CircuitOpenError)
        clock.advance_ns(2_000)
        assert isinstance(_via_do("backoff"), RuntimeError)  # the trial runs, and fails: a reopen
        raw = min(raw * 2, 5_000_000_000)
        expected = _backoff.jittered(raw, 200_000, _backoff.seed(clock.now, 1, reopens))
    assert waits == sorted(waits) or max(waits) > 4_000_000_000  # grows until the cap
    # A trial that succeeds closes it, and the next opening starts from the sleep window again.
    clock.advance_ns(circuit.sleep_window_now // timedelta(microseconds=1) * 1000 + 1_000)
    assert fasthystrix.do("backoff", lambda: "ok") == "ok"
    assert circuit.state() == "closed"
    assert circuit.sleep_window_now == timedelta(seconds=1)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("sleep_window_multiplier", 0.5, ValueError),
        ("sleep_window_multiplier", float("nan"), ValueError),
        ("sleep_window_multiplier", 1001, ValueError),
        ("sleep_window_multiplier", "2", TypeError),
        ("sleep_window_jitter", -0.1, ValueError),
        ("sleep_window_jitter", 1.5, ValueError),
        ("sleep_window_jitter", True, TypeError),
        ("max_sleep_window", -1, ValueError),
        ("max_sleep_window", "1s", TypeError),
    ],
)
def test_backoff_fields_are_validated(field: str, value: object, error: type[Exception]) -> None:
    before = fasthystrix.configure_command("backoff-bad", {})
    with pytest.raises(error, match=field):
        fasthystrix.configure_command("backoff-bad", {field: value})
    assert fasthystrix.get_circuit_settings()["backoff-bad"] is before
