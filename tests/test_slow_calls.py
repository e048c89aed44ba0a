"""Slow calls (``slow_call_duration``, ``slow_call_rate_threshold``): a call whose run takes longer
than the duration is counted slow, success or failure, and the circuit opens when slow calls reach
the rate threshold of the window's requests (the volume threshold applying), on a fake clock,
through both isolations, on private and host-wide circuits."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix import CommandConfig
from fasthystrix._core import _shared
from support import FakeClock, sharing


def _configure(name: str, isolation: str = "semaphore", **extra: Any) -> Any:
    fasthystrix.configure_command(
        name,
        CommandConfig(
            **{
                "isolation": isolation,
                "request_volume_threshold": 4,
                "error_percent_threshold": 50,
                "sleep_window": 1000,
                "timeout": 1000,
                "slow_call_duration": 100,
                **extra,
            }
        ),
    )
    return fasthystrix.get_circuit(name)[0]


def _call(name: str, clock: FakeClock, ms: int, fails: bool = False, entry: str = "do") -> Any:
    """One command whose run takes ``ms`` on the fake clock, succeeding or failing."""

    def run() -> str:
        clock.advance(ms=ms)
        if fails:
            raise RuntimeError("down")
        return "ok"

    if entry == "do":
        return fasthystrix.do(name, run, lambda err: err)
    if entry == "go":
        return fasthystrix.go(name, run, lambda err: err).result()

    async def run_async() -> str:
        return run()

    async def fallback_async(err: BaseException) -> BaseException:
        return err

    return asyncio.run(fasthystrix.do_async(name, run_async, fallback_async))


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("slow_call_duration", 0, ValueError),
        ("slow_call_duration", -1, ValueError),
        ("slow_call_duration", timedelta(0), ValueError),
        ("slow_call_duration", "1s", TypeError),
        ("slow_call_duration", 1.5, TypeError),
        ("slow_call_rate_threshold", 0, ValueError),
        ("slow_call_rate_threshold", 101, ValueError),
        ("slow_call_rate_threshold", 50.0, TypeError),
        ("slow_call_rate_threshold", True, TypeError),
        ("slow_call_rate_threshold", "50", TypeError),
    ],
)
def test_the_fields_are_validated(field: str, value: object, error: type[Exception]) -> None:
    before = fasthystrix.configure_command("slow-bad", {"slow_call_duration": 250, "slow_call_rate_threshold": 40})
    with pytest.raises(error, match=field):
        fasthystrix.configure_command("slow-bad", {field: value})
    assert fasthystrix.get_circuit_settings()["slow-bad"] is before
    assert (before.slow_call_duration, before.slow_call_rate_threshold) == (timedelta(milliseconds=250), 40)


def test_defaults_and_settings() -> None:
    defaults = fasthystrix.get_defaults()
    assert defaults.slow_call_duration is None and defaults.slow_call_rate_threshold == 100
    settings = fasthystrix.configure_command("slow-set", {"slow_call_duration": 250, "slow_call_rate_threshold": 60})
    assert fasthystrix.get_circuit_settings()["slow-set"] is settings
    assert settings.slow_call_duration == timedelta(milliseconds=250)
    assert settings.slow_call_rate_threshold == 60
    again = fasthystrix.configure_command("slow-set", {"slow_call_duration": timedelta(seconds=2)})
    assert again.slow_call_duration == timedelta(seconds=2)


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
@pytest.mark.parametrize(("slow", "opens"), [(2, False), (3, True), (4, True)])
def test_slow_successes_trip_at_the_rate_threshold(clock: FakeClock, isolation: str, slow: int, opens: bool) -> None:
    # 4 requests (the volume threshold), 75 %: 3 slow calls open the circuit, 2 (50 %) do not.
    name = f"slow-rate-{isolation}-{slow}"
    circuit = _configure(name, isolation, slow_call_rate_threshold=75)
    for i in range(4):
        assert _call(name, clock, 150 if i < slow else 10) == "ok"
    m = circuit.metrics()
    assert (m.successes, m.slow_calls, m.errors) == (4, slow, 0)
    got = _call(name, clock, 10)
    if opens:
        assert isinstance(got, fasthystrix.CircuitOpenError)
        assert circuit.state() == "open"
    else:
        assert got == "ok" and circuit.state() == "closed"


def test_the_duration_is_exclusive_and_off_by_default(clock: FakeClock) -> None:
    name = "slow-edge"
    circuit = _configure(name, slow_call_rate_threshold=1)
    for _ in range(5):
        assert _call(name, clock, 100) == "ok"  # exactly the duration: not slow
    assert circuit.metrics().slow_calls == 0 and circuit.state() == "closed"
    _configure("slow-off", slow_call_duration=None, slow_call_rate_threshold=1)
    for _ in range(5):
        assert _call("slow-off", clock, 900) == "ok"
    off = fasthystrix.get_circuit("slow-off")[0]
    assert off.metrics().slow_calls == 0 and off.state() == "closed"


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_the_volume_threshold_applies(clock: FakeClock, isolation: str) -> None:
    name = f"slow-volume-{isolation}"
    circuit = _configure(name, isolation, request_volume_threshold=5, slow_call_rate_threshold=50)
    for _ in range(4):
        assert _call(name, clock, 500) == "ok"  # 100 % slow, but 4 < 5 requests
    assert circuit.state() == "closed" and circuit.metrics().slow_calls == 4
    assert _call(name, clock, 500) == "ok"
    assert isinstance(_call(name, clock, 10), fasthystrix.CircuitOpenError)


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_slow_failures_count_as_slow_and_timeouts_do_not(clock: FakeClock, isolation: str) -> None:
    name = f"slow-failures-{isolation}"
    circuit = _configure(name, isolation, request_volume_threshold=100)
    assert isinstance(_call(name, clock, 150, fails=True), RuntimeError)
    assert isinstance(_call(name, clock, 50, fails=True), RuntimeError)
    assert isinstance(_call(name, clock, 1500), fasthystrix.TimeoutError)  # a timeout: no run time
    m = circuit.metrics()
    assert (m.failures, m.timeouts, m.slow_calls) == (2, 1, 1)


def test_slow_failures_trip_by_the_slow_rate_below_the_error_threshold(clock: FakeClock) -> None:
    # Errors at 25 % (below 50 %), slow calls at 50 %: the slow rule opens it.
    name = "slow-mixed"
    circuit = _configure(name, slow_call_rate_threshold=50)
    assert isinstance(_call(name, clock, 150, fails=True), RuntimeError)
    assert _call(name, clock, 150) == "ok"
    assert _call(name, clock, 10) == "ok"
    assert _call(name, clock, 10) == "ok"
    assert isinstance(_call(name, clock, 10), fasthystrix.CircuitOpenError)
    assert circuit.metrics().slow_calls == 2


@pytest.mark.parametrize("entry", ["do", "go", "do_async"])
def test_every_entry_point_counts_slow_calls(clock: FakeClock, entry: str) -> None:
    name = f"slow-entry-{entry}"
    circuit = _configure(name, "thread" if entry == "go" else "semaphore", request_volume_threshold=100)
    assert _call(name, clock, 150, entry=entry) == "ok"
    assert _call(name, clock, 10, entry=entry) == "ok"
    assert circuit.metrics().slow_calls == 1


def test_slow_calls_leave_the_window_with_it(clock: FakeClock) -> None:
    name = "slow-window"
    circuit = _configure(name, request_volume_threshold=2, slow_call_rate_threshold=100)
    assert _call(name, clock, 500) == "ok"
    clock.advance(ms=11_000)  # the slow call is out of the 10 s window
    assert _call(name, clock, 10) == "ok"
    assert _call(name, clock, 10) == "ok"
    assert circuit.state() == "closed" and circuit.metrics().slow_calls == 0


def test_the_trial_closes_and_the_new_window_counts_afresh(clock: FakeClock) -> None:
    name = "slow-trial"
    circuit = _configure(name, request_volume_threshold=2, slow_call_rate_threshold=100)
    assert _call(name, clock, 500) == "ok"
    assert _call(name, clock, 500) == "ok"
    assert isinstance(_call(name, clock, 10), fasthystrix.CircuitOpenError)
    clock.advance(ms=1001)
    assert _call(name, clock, 10) == "ok"  # the trial: a success closes, as in hystrix-go
    assert circuit.state() == "closed"
    assert circuit.metrics().slow_calls == 0


def test_slow_calls_are_counted_host_wide(tmp_path: Path, clock: FakeClock) -> None:
    with sharing(tmp_path / "circuits"):
        circuit = _configure("slow-host", request_volume_threshold=3, slow_call_rate_threshold=60)
        other = fasthystrix.CircuitBreaker(
            "slow-host",
            fasthystrix.get_defaults(),
            type(circuit._default)("slow-host"),
            [],
            fasthystrix.get_clock(),
        )
        other._attach(
            _shared.SharedCircuitFile("slow-host", fasthystrix.implementation, fasthystrix.get_defaults()), None
        )
        # The settings are the host's: the other circuit object reads them back from the file.
        assert other.settings.slow_call_duration == timedelta(milliseconds=100)
        assert other.settings.slow_call_rate_threshold == 60
        assert _call("slow-host", clock, 150) == "ok"
        assert _call("slow-host", clock, 150) == "ok"
        assert other.metrics().slow_calls == 2
        assert _call("slow-host", clock, 10) == "ok"  # 2 of 3: 67 % >= 60 %
        assert other.is_open()
        assert fasthystrix.get_circuit_settings()["slow-host"].slow_call_rate_threshold == 60
