"""Several trials in half-open (``half_open_max_calls``) and a bound on them (``half_open_max_wait``),
through every entry point and both isolations, on private and host-wide circuits. The Hypothesis
state machine (test_circuit_state_machine.py) drives them against its model; here: the rules one
by one, the listeners' view, and threads racing for the trials."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix import CommandConfig
from fasthystrix._core import _shared
from support import WAIT, sharing, wait_until

SLEEP_NS = 1_000_000_000


def _fail() -> None:
    raise RuntimeError("down")


@pytest.fixture
def events() -> Iterator[list[tuple[str, str, str]]]:
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def listener(name: str, old: str, new: str) -> None:
        with lock:
            seen.append((name, old, new))

    remove = fasthystrix.on_state_change(listener)
    yield seen
    remove()


def _configure(name: str, isolation: str = "semaphore", **extra: Any) -> Any:
    fasthystrix.configure_command(
        name,
        CommandConfig(
            **{
                "isolation": isolation,
                "request_volume_threshold": 1,
                "error_percent_threshold": 50,
                "sleep_window": 1000,
                **extra,
            }
        ),
    )
    return fasthystrix.get_circuit(name)[0]


def _trip(name: str, clock: Any) -> None:
    """Open the circuit of ``name`` and let its sleep window pass."""
    fasthystrix.do(name, _fail, lambda err: None)
    assert isinstance(fasthystrix.do(name, lambda: "ran", lambda err: err), fasthystrix.CircuitOpenError)
    assert fasthystrix.get_circuit(name)[0].state() == "open"
    clock.advance_ns(SLEEP_NS + 1)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("half_open_max_calls", 0, ValueError),
        ("half_open_max_calls", -1, ValueError),
        ("half_open_max_calls", 1_000_001, ValueError),
        ("half_open_max_calls", 2.0, TypeError),
        ("half_open_max_calls", True, TypeError),
        ("half_open_max_calls", "3", TypeError),
        ("half_open_max_wait", 0, ValueError),
        ("half_open_max_wait", -5, ValueError),
        ("half_open_max_wait", timedelta(0), ValueError),
        ("half_open_max_wait", "1s", TypeError),
        ("half_open_max_wait", 1.5, TypeError),
    ],
)
def test_the_fields_are_validated(field: str, value: object, error: type[Exception]) -> None:
    before = fasthystrix.configure_command("half-open-bad", {"half_open_max_calls": 3})
    with pytest.raises(error, match=field):
        fasthystrix.configure_command("half-open-bad", {field: value})
    assert fasthystrix.get_circuit_settings()["half-open-bad"] is before
    assert before.half_open_max_calls == 3


def test_defaults_and_settings() -> None:
    defaults = fasthystrix.get_defaults()
    assert defaults.half_open_max_calls == 1 and defaults.half_open_max_wait is None
    settings = fasthystrix.configure_command("half-open-set", {"half_open_max_calls": 4, "half_open_max_wait": 250})
    assert fasthystrix.get_circuit_settings()["half-open-set"] is settings
    assert settings.half_open_max_calls == 4
    assert settings.half_open_max_wait == timedelta(milliseconds=250)
    again = fasthystrix.configure_command("half-open-set", {"half_open_max_wait": timedelta(seconds=2)})
    assert again.half_open_max_wait == timedelta(seconds=2)


@pytest.mark.parametrize(("failures", "closes"), [(0, True), (2, True), (3, False), (5, False)])
def test_the_trials_verdict_is_their_error_percentage(
    clock: Any, events: list[tuple[str, str, str]], failures: int, closes: bool
) -> None:
    name = f"verdict-{failures}"
    circuit = _configure(name, half_open_max_calls=5, sleep_window_multiplier=2.0)
    _trip(name, clock)
    outcomes = [True] * failures + [False] * (5 - failures)
    for i, fails in enumerate(outcomes):
        assert circuit.state() == "open"  # no verdict before the last trial has finished
        got = fasthystrix.do(name, _fail if fails else (lambda: "ok"), lambda err: err)
        assert isinstance(got, RuntimeError) if fails else got == "ok", (i, got)
    mine = [(old, new) for n, old, new in events if n == name]
    assert mine[:2] == [("closed", "open"), ("open", "half-open")]  # half-open once, for 5 trials
    if closes:
        # 40 % < 50 %: closed, with a new window (where the last trial's own success is counted).
        assert mine[2:] == [("half-open", "closed")]
        assert circuit.state() == "closed"
        assert (circuit.metrics().requests, circuit.metrics().successes) == (1, 1)
        assert fasthystrix.do(name, lambda: "ok") == "ok"
    else:
        # 60 % >= 50 %: open again, and the reopen counts in the backoff (the wait doubles).
        assert mine[2:] == [("half-open", "open")]
        assert circuit.state() == "open"
        assert circuit.sleep_window_now == timedelta(seconds=2)
        assert isinstance(fasthystrix.do(name, lambda: "ok", lambda err: err), fasthystrix.CircuitOpenError)
        clock.advance_ns(2 * SLEEP_NS + 1)
        assert fasthystrix.do(name, lambda: "ok") == "ok"  # the next phase's first trial


def test_a_percentage_at_the_threshold_opens_it_again(clock: Any) -> None:
    name = "at-threshold"
    circuit = _configure(name, half_open_max_calls=2)
    _trip(name, clock)
    assert fasthystrix.do(name, lambda: "ok") == "ok"
    assert isinstance(fasthystrix.do(name, _fail, lambda err: err), RuntimeError)
    assert circuit.state() == "open"  # 50 % of the trials failed, and 50 % is the threshold


def test_at_most_the_trials_run_and_the_others_are_short_circuited(clock: Any) -> None:
    name = "at-most"
    circuit = _configure(name, half_open_max_calls=3)
    _trip(name, clock)
    inner: list[Any] = []

    def outer() -> str:
        # Four more calls while the first trial runs: two are trials (they run), two are not.
        for _ in range(4):
            inner.append(fasthystrix.do(name, lambda: circuit.tickets_in_use, lambda err: err))
        return "outer"

    assert fasthystrix.do(name, outer) == "outer"
    assert inner[:2] == [2, 2]  # each ran beside the outer trial (two tickets taken)
    assert all(isinstance(x, fasthystrix.CircuitOpenError) for x in inner[2:])
    assert circuit.state() == "closed"  # three successes of three
    m = circuit.metrics()
    assert (m.requests, m.successes) == (1, 1)  # the close emptied the window; then the last trial


def test_max_wait_reopens_when_trials_are_unfinished(clock: Any, events: list[tuple[str, str, str]]) -> None:
    name = "max-wait"
    circuit = _configure(name, half_open_max_calls=2, half_open_max_wait=500)
    _trip(name, clock)
    late: list[Any] = []

    def slow_trial() -> str:
        clock.advance_ns(500_000_001)  # past the bound while this trial runs
        # A call now finds the phase past its bound: it opens the circuit again, short-circuited.
        late.append(fasthystrix.do(name, lambda: "ran", lambda err: err))
        return "slow"

    assert fasthystrix.do(name, slow_trial) == "slow"
    assert isinstance(late[0], fasthystrix.CircuitOpenError)
    assert circuit.state() == "open"  # the slow trial's late success does not close it
    mine = [(old, new) for n, old, new in events if n == name]
    assert mine == [("closed", "open"), ("open", "half-open"), ("half-open", "open")]
    # The new sleep window counts from the reopen; then a new phase, whose two trials close it.
    clock.advance_ns(SLEEP_NS)
    assert isinstance(fasthystrix.do(name, lambda: "ran", lambda err: err), fasthystrix.CircuitOpenError)
    clock.advance_ns(1)
    assert fasthystrix.do(name, lambda: "a") == "a"
    assert circuit.state() == "open"
    assert fasthystrix.do(name, lambda: "b") == "b"
    assert circuit.state() == "closed"


def test_max_wait_reached_by_the_last_report(clock: Any, events: list[tuple[str, str, str]]) -> None:
    """With no other call in between, the trial that reports after the bound takes the verdict: open."""
    name = "max-wait-report"
    circuit = _configure(name, half_open_max_wait=300)  # one trial, bounded
    _trip(name, clock)

    def slow() -> str:
        clock.advance_ns(300_000_001)
        return "slow"

    assert fasthystrix.do(name, slow) == "slow"
    assert circuit.state() == "open"
    assert [(o, n) for x, o, n in events if x == name][-1] == ("half-open", "open")
    # Within the bound a single bounded trial closes it, as hystrix-go's trial.
    clock.advance_ns(SLEEP_NS + 1)
    assert fasthystrix.do(name, lambda: "ok") == "ok"
    assert circuit.state() == "closed"


def test_allow_request_takes_no_trial_with_several(clock: Any) -> None:
    name = "allow"
    circuit = _configure(name, half_open_max_calls=2)
    _trip(name, clock)
    assert circuit.allow_request() is False  # a trial taken here would never report
    assert fasthystrix.do(name, lambda: "a") == "a"
    assert fasthystrix.do(name, lambda: "b") == "b"
    assert circuit.state() == "closed"


def _via_do(name: str, run: Callable[[], Any]) -> Any:
    return fasthystrix.do(name, run, lambda err: err)


def _via_go(name: str, run: Callable[[], Any]) -> Any:
    return fasthystrix.go(name, run, lambda err: err).result(WAIT)


def _via_do_c(name: str, run: Callable[[], Any]) -> Any:
    return fasthystrix.do_c(fasthystrix.Context(), name, lambda ctx: run(), lambda ctx, err: err)


def _via_do_async(name: str, run: Callable[[], Any]) -> Any:
    async def arun() -> Any:
        return run()

    return asyncio.run(fasthystrix.do_async(name, arun, lambda err: err))


def _via_decorator(name: str, run: Callable[[], Any]) -> Any:
    @fasthystrix.command(name, fallback=lambda *, err: err)
    def decorated() -> Any:
        return run()

    return decorated()


ENTRY_POINTS: dict[str, Callable[[str, Callable[[], Any]], Any]] = {
    "do": _via_do,
    "go": _via_go,
    "do_c": _via_do_c,
    "do_async": _via_do_async,
    "decorator": _via_decorator,
}


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_and_isolation(clock: Any, entry: str, isolation: str) -> None:
    name = f"probes-{entry}-{isolation}"
    circuit = _configure(name, isolation, half_open_max_calls=3)
    call = ENTRY_POINTS[entry]
    assert isinstance(call(name, _fail), RuntimeError)
    assert isinstance(call(name, lambda: "x"), fasthystrix.CircuitOpenError)
    clock.advance_ns(SLEEP_NS + 1)
    # Two failures of three trials: 67 % >= 50 %, open again.
    assert isinstance(call(name, _fail), RuntimeError)
    assert isinstance(call(name, _fail), RuntimeError)
    assert call(name, lambda: "ok") == "ok"
    assert circuit.state() == "open"
    clock.advance_ns(SLEEP_NS + 1)
    # One of three: 33 % < 50 %, closed.
    assert call(name, lambda: "ok") == "ok"
    assert isinstance(call(name, _fail), RuntimeError)
    assert circuit.state() == "open"
    assert call(name, lambda: "ok") == "ok"
    assert circuit.state() == "closed"


def test_the_default_is_one_trial_per_sleep_window(clock: Any, events: list[tuple[str, str, str]]) -> None:
    """half_open_max_calls=1 without a bound is hystrix-go's: a trial that has not reported does not
    hold the next sleep window's trial back, and the first success closes the circuit."""
    name = "default-trial"
    circuit = _configure(name, timeout=5000)
    _trip(name, clock)
    nested: list[Any] = []

    def hanging_trial() -> str:
        clock.advance_ns(SLEEP_NS + 1)  # another sleep window passes while it runs
        nested.append(fasthystrix.do(name, lambda: "second trial"))
        return "first trial"

    assert fasthystrix.do(name, hanging_trial) == "first trial"
    assert nested == ["second trial"]
    assert circuit.state() == "closed"
    mine = [(old, new) for n, old, new in events if n == name]
    assert mine == [("closed", "open"), ("open", "half-open"), ("open", "half-open"), ("half-open", "closed")]


def _other_object(name: str) -> Any:
    """Another circuit object on the same file (what another worker process maps)."""
    circuit = fasthystrix.get_circuit(name)[0]
    other = fasthystrix.CircuitBreaker(
        name, fasthystrix.get_defaults(), type(circuit._default)(name), [], fasthystrix.get_clock()
    )
    other._attach(_shared.SharedCircuitFile(name, fasthystrix.implementation, fasthystrix.get_defaults()), None)
    return other


def test_host_wide_trials_count_together(tmp_path: Path, clock: Any) -> None:
    with sharing(tmp_path / "circuits"):
        name = "host-probes"
        circuit = _configure(name, half_open_max_calls=2, half_open_max_wait=700)
        other = _other_object(name)
        assert other.settings.half_open_max_calls == 2
        assert other.settings.half_open_max_wait == timedelta(milliseconds=700)
        _trip(name, clock)
        inner: list[Any] = []

        def outer() -> str:
            inner.append(other.execute(lambda: "other's trial", lambda err: err))
            inner.append(other.execute(lambda: "third", lambda err: err))
            return "mine"

        assert circuit.execute(outer, None) == "mine"
        assert inner[0] == "other's trial"
        assert isinstance(inner[1], fasthystrix.CircuitOpenError)  # two trials, host-wide
        assert circuit.state() == other.state() == "closed"


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
@pytest.mark.parametrize("shared", [False, True])
def test_threads_never_exceed_the_trials_and_one_verdict(
    tmp_path: Path, clock: Any, isolation: str, shared: bool
) -> None:
    """8 threads race for the trials of half-open phases with half_open_max_calls=5: at most 5 run
    per phase, and each phase ends in exactly one verdict."""
    if shared:
        with sharing(tmp_path / "circuits"):
            _race(isolation)
    else:
        _race(isolation)


def _race(isolation: str) -> None:
    name = "race"
    verdicts: list[tuple[str, str]] = []
    lock = threading.Lock()

    def listener(n: str, old: str, new: str) -> None:
        if n == name and old == "half-open":
            with lock:
                verdicts.append((old, new))

    remove = fasthystrix.on_state_change(listener)
    try:
        # A volume threshold above the 8 threads: the calls turned away while the trials ran, and
        # counted after a close emptied the window, cannot trip it again.
        circuit = _configure(
            name, isolation, half_open_max_calls=5, max_concurrent_requests=10, request_volume_threshold=10
        )
        for round_ in range(12):
            fail = round_ % 3 == 1  # some phases fail: open again; the others close
            for _ in range(40):
                if circuit.state() == "open":
                    break
                fasthystrix.do(name, _fail, lambda err: None)
            assert circuit.state() == "open"
            before = len(verdicts)
            _race_round(circuit, name, fail)
            wait_until(lambda: len(verdicts) > before, "the verdict")  # noqa: B023 (waited for here)
            assert verdicts[before:] == [("half-open", "open" if fail else "closed")]
            assert circuit.state() == ("open" if fail else "closed")
    finally:
        remove()


def _race_round(circuit: Any, name: str, fail: bool) -> None:
    """One half-open phase raced by 8 threads: exactly 5 trials, all running at once."""
    clock = fasthystrix.get_clock()
    clock.advance_ns(circuit.sleep_window_now // timedelta(microseconds=1) * 1000 + 1)  # type: ignore[attr-defined]
    running = trials = peak = 0
    release = threading.Event()
    count_lock = threading.Lock()
    start = threading.Barrier(8)

    def run() -> str:
        nonlocal running, trials, peak
        trial = circuit.state() == "open"  # a trial runs while the circuit is open
        with count_lock:
            running += 1
            trials += trial
            peak = max(peak, running)
        release.wait(WAIT)
        with count_lock:
            running -= 1
        if fail:
            raise RuntimeError("still down")
        return "ok"

    def prober() -> None:
        # Each thread keeps calling until the phase's trials are released.
        start.wait(WAIT)
        while not release.is_set():
            fasthystrix.do(name, run, lambda err: err)

    threads = [threading.Thread(target=prober) for _ in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: trials >= 5, "five trials running")
    # The other calls keep being short-circuited while the five run.
    turned_away = circuit.metrics().short_circuits
    wait_until(lambda: circuit.metrics().short_circuits > turned_away + 50, "more calls")
    assert (trials, peak) == (5, 5)
    release.set()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert trials == 5  # later calls (of a closed circuit) were no trials
