"""on_state_change: every transition of both implementations reaches the listeners, once."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix._core import _transitions


def boom() -> None:
    raise RuntimeError("boom")


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []
        self.threads: list[str] = []

    def __call__(self, name: str, old: str, new: str) -> None:
        self.changes.append((name, old, new))
        self.threads.append(threading.current_thread().name)


@pytest.fixture
def recorder() -> Recorder:
    rec = Recorder()
    fasthystrix.on_state_change(rec)
    return rec


def configure(name: str, isolation: str = "semaphore", **extra: Any) -> None:
    fasthystrix.configure_command(
        name,
        fasthystrix.CommandConfig(
            isolation=isolation, request_volume_threshold=2, error_percent_threshold=50, sleep_window=1000, **extra
        ),
    )


def trip(name: str) -> None:
    for _ in range(2):
        fasthystrix.do(name, boom, lambda err: None)
    fasthystrix.do(name, lambda: 1, lambda err: None)  # this call finds the window unhealthy


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_trip_trial_and_close(recorder: Recorder, clock: FakeClock, isolation: str) -> None:
    configure("life", isolation)
    trip("life")
    assert recorder.changes == [("life", "closed", "open")]
    fasthystrix.do("life", lambda: 1, lambda err: None)  # still open: no change
    assert len(recorder.changes) == 1
    clock.advance(1.5)
    assert fasthystrix.do("life", lambda: "ok") == "ok"  # the trial, and it succeeds
    assert recorder.changes[1:] == [("life", "open", "half-open"), ("life", "half-open", "closed")]
    assert fasthystrix.get_circuit("life")[0].state() == "closed"


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_a_failed_trial_reopens(recorder: Recorder, clock: FakeClock, isolation: str) -> None:
    configure("retrial", isolation)
    trip("retrial")
    clock.advance(1.5)
    fasthystrix.do("retrial", boom, lambda err: None)
    assert recorder.changes == [
        ("retrial", "closed", "open"),
        ("retrial", "open", "half-open"),
        ("retrial", "half-open", "open"),
    ]
    clock.advance(1.5)
    fasthystrix.do("retrial", lambda: 1)
    assert recorder.changes[3:] == [("retrial", "open", "half-open"), ("retrial", "half-open", "closed")]


def test_force_open_and_back(recorder: Recorder) -> None:
    fasthystrix.do("forced", lambda: 1)
    circuit = fasthystrix.get_circuit("forced")[0]
    circuit.force_open = True
    circuit.force_open = True  # no change, no call
    circuit.force_open = False
    assert recorder.changes == [("forced", "closed", "forced-open"), ("forced", "forced-open", "closed")]


def test_unforcing_a_tripped_circuit_reports_it_open(recorder: Recorder, clock: FakeClock) -> None:
    configure("forced-tripped")
    trip("forced-tripped")
    circuit = fasthystrix.get_circuit("forced-tripped")[0]
    circuit.force_open = True
    circuit.force_open = False
    assert recorder.changes[1:] == [
        ("forced-tripped", "open", "forced-open"),
        ("forced-tripped", "forced-open", "open"),
    ]


def test_is_open_and_allow_request_report_what_they_change(recorder: Recorder, clock: FakeClock) -> None:
    configure("checks")
    for _ in range(2):
        fasthystrix.do("checks", boom, lambda err: None)
    circuit = fasthystrix.get_circuit("checks")[0]
    assert circuit.is_open() is True
    clock.advance(1.5)
    assert circuit.allow_request() is True
    assert recorder.changes == [("checks", "closed", "open"), ("checks", "open", "half-open")]


def test_do_async_transitions_are_reported(recorder: Recorder, clock: FakeClock) -> None:
    configure("async-life")

    async def fail() -> None:
        raise RuntimeError

    async def ok() -> int:
        return 1

    async def scenario() -> None:
        for _ in range(3):
            await fasthystrix.do_async("async-life", fail, lambda err: None)
        clock.advance(1.5)
        await fasthystrix.do_async("async-life", ok)

    asyncio.run(scenario())
    assert [change[1:] for change in recorder.changes] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


def test_a_failing_listener_is_logged_and_never_reaches_the_command(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str, old: str, new: str) -> None:
        raise ValueError("listener bug")

    fasthystrix.on_state_change(broken)
    fasthystrix.on_state_change(recorder)  # registered twice (the fixture did it first): called twice
    configure("noisy")
    with caplog.at_level(logging.ERROR, logger="fasthystrix"):
        trip("noisy")
    assert recorder.changes == [("noisy", "closed", "open")] * 2
    assert any("state listener" in r.getMessage() and r.exc_info for r in caplog.records)


def test_listeners_may_call_back_into_fasthystrix(clock: FakeClock) -> None:
    seen: list[str] = []

    def inspect(name: str, old: str, new: str) -> None:
        circuit = fasthystrix.get_circuit(name)[0]
        seen.append(f"{new}:{circuit.state()}:{circuit.metrics().failures}")

    fasthystrix.on_state_change(inspect)
    configure("reentrant")
    trip("reentrant")
    circuit = fasthystrix.get_circuit("reentrant")[0]
    circuit.force_open = True
    assert seen == ["open:open:2", "forced-open:forced-open:2"]


def test_remove_stops_the_calls(recorder: Recorder) -> None:
    other = Recorder()
    remove = fasthystrix.on_state_change(other)
    remove()
    remove()  # a second removal is harmless
    fasthystrix.do("removed", lambda: 1)
    fasthystrix.get_circuit("removed")[0].force_open = True
    assert other.changes == []
    assert recorder.changes == [("removed", "closed", "forced-open")]


def test_rejects_a_listener_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="listener must be callable"):
        fasthystrix.on_state_change("print")  # type: ignore[arg-type]
    assert _transitions._listeners == ()


def test_threads_tripping_together_report_one_opening(recorder: Recorder) -> None:
    fasthystrix.configure_command(
        "race",
        fasthystrix.CommandConfig(
            isolation="semaphore",
            request_volume_threshold=50,
            error_percent_threshold=50,
            sleep_window=60_000,
            max_concurrent_requests=100,
        ),
    )
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        for _ in range(200):
            fasthystrix.do("race", boom, lambda err: None)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.changes == [("race", "closed", "open")]


class Interrupt(BaseException):
    """What a listener may raise past the logging of its errors (as ``KeyboardInterrupt`` does)."""


def _interrupting(name: str, old: str, new: str) -> None:
    if new == "half-open":
        raise Interrupt(f"{name}: {old} -> {new}")


async def _ok_async() -> str:
    return "ok"


def _trial_by(entry: str, name: str) -> Any:
    """One call of ``name`` through ``entry``, which the open circuit takes as its trial."""
    if entry == "do":
        return fasthystrix.do(name, lambda: "ok")
    if entry == "do_c":
        return fasthystrix.do_c(fasthystrix.Context(), name, lambda ctx: "ok")
    if entry == "command":
        return fasthystrix.command(name)(lambda value: value)("ok")
    if entry == "go":
        return fasthystrix.go(name, lambda: "ok").result()
    if entry == "do_async":
        return asyncio.run(fasthystrix.do_async(name, _ok_async))
    raise AssertionError(entry)


@pytest.mark.parametrize("probes", [None, 3], ids=["one-trial", "three-trials"])
@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
@pytest.mark.parametrize("entry", ["do", "do_c", "command", "go", "do_async"])
def test_an_interrupted_trial_announcement_keeps_no_ticket(
    clock: FakeClock, entry: str, isolation: str, probes: int | None
) -> None:
    """A listener (or the log) that raises past its error handling as a trial starts: the trial
    ends as failed, its ticket comes back, and the next sleep window's trial can close the circuit."""
    name = f"interrupted-{entry}-{isolation}-{probes}"
    configure(name, isolation, half_open_max_calls=probes)
    trip(name)
    circuit = fasthystrix.get_circuit(name)[0]
    remove = fasthystrix.on_state_change(_interrupting)
    clock.advance(1.5)
    with pytest.raises(Interrupt):
        _trial_by(entry, name)
    assert circuit.tickets_in_use == 0
    assert circuit.state() == "open"  # the trial counts as failed: another sleep window
    assert circuit.metrics().failures >= 3
    remove()
    clock.advance(1.5)
    for _ in range(probes or 1):
        assert _trial_by(entry, name) == "ok"
    assert circuit.state() == "closed"
    assert circuit.tickets_in_use == 0
