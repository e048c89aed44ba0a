"""Thread isolation's one process-wide worker pool: bounded in threads whatever the number of
command names, idle threads retire, and a command that gets no thread is rejected (fallback,
counted) without losing its ticket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS, FakeClock, fasthystrix_threads
from fasthystrix import _registry
from fasthystrix._core import _clock
from fasthystrix._isolation import _workers
from support import WAIT, hardened_against_failed_allocations, wait_until

# A shared directory holds at most 1 024 circuits (_shared.MAX_CIRCUITS): fewer names there.
NAMES = 1_000 if SHARED_TESTS else 20_000
LONG_MS = 120_000  # a timeout no test reaches: a deadlock shows as a hung call, not a timeout


def worker_threads() -> list[threading.Thread]:
    return [t for t in fasthystrix_threads() if t.name.startswith("fasthystrix-worker-")]


@pytest.fixture(autouse=True)
def empty_pool() -> None:
    """Each test starts with no worker thread: flush() stopped the idle ones, and runs that earlier
    tests left running (each past its ticket's return) get a moment to end."""
    # Both: a worker leaves the pool's set just before its thread ends.
    wait_until(lambda: not _workers.workers._workers and not worker_threads(), "the pool empty")


@pytest.fixture
def long_timeouts() -> None:
    """Commands first used in the test never time out (the defaults are restored after it)."""
    fasthystrix.set_defaults(fasthystrix.CommandConfig(timeout=LONG_MS))


class Held:
    """Runs that wait until released, counting how many are running."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak_workers = 0

    def run(self) -> str:
        with self.lock:
            self.running += 1
        assert self.release.wait(WAIT), "never released"
        return "ran"

    def wait_running(self, count: int) -> None:
        wait_until(lambda: self.running == count, f"{count} runs running")


@pytest.fixture
def held() -> Iterator[Held]:
    holder = Held()
    yield holder
    holder.release.set()


def _rejection(err: BaseException) -> BaseException:
    return err


# -- the setting ---------------------------------------------------------------------------------


def test_max_threads_defaults_and_round_trips() -> None:
    assert fasthystrix.get_max_threads() == fasthystrix.DEFAULT_MAX_THREADS == 1000
    assert fasthystrix.set_max_threads(7) == 7
    assert fasthystrix.get_max_threads() == 7
    assert _workers.workers.max_threads == 7
    assert fasthystrix.set_max_threads() == fasthystrix.DEFAULT_MAX_THREADS
    assert fasthystrix.get_max_threads() == fasthystrix.DEFAULT_MAX_THREADS


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        ("10", TypeError, "max_threads must be an int, not '10'"),
        (2.0, TypeError, "max_threads must be an int, not 2.0"),
        (True, TypeError, "max_threads must be an int, not True"),
        (0, ValueError, "max_threads must be at least 1, got 0"),
        (-3, ValueError, "max_threads must not be negative, got -3"),
        (2**31, ValueError, "max_threads must be at most 2147483647"),
    ],
)
def test_bad_max_threads_is_refused_and_changes_nothing(value: object, error: type[Exception], text: str) -> None:
    fasthystrix.set_max_threads(5)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        fasthystrix.set_max_threads(value)  # type: ignore[arg-type]
    assert fasthystrix.get_max_threads() == 5


# -- bounded threads -----------------------------------------------------------------------------


def test_twenty_thousand_names_cost_at_most_the_maximum_in_threads(
    clock: FakeClock, long_timeouts: None, held: Held
) -> None:
    """Every run holds its thread: the first ``limit`` names get one each, every other is rejected.
    (The fake clock keeps every call in the rolling window however long the test takes.)"""
    limit = 16
    names = NAMES
    fasthystrix.set_max_threads(limit)
    fasthystrix.set_max_circuits(NAMES)  # every name keeps its circuit, to be counted afterwards
    before = set(threading.enumerate())
    futures = []
    peak = 0
    for i in range(names):
        futures.append(fasthystrix.go(f"many-{i}", held.run, _rejection))
        if i % 500 == 0:
            peak = max(peak, len(worker_threads()))
    held.wait_running(limit)
    peak = max(peak, len(worker_threads()))
    assert peak == limit
    # The pool's threads, and at most the deadline timer (and the shared circuits' reaper) besides.
    others = {t.name for t in set(threading.enumerate()) - before} - {t.name for t in worker_threads()}
    assert others <= {"fasthystrix-deadlines", "fasthystrix-reaper"}
    assert threading.active_count() - len(before) <= limit + len(others)
    rejected = [f for f in futures[limit:]]
    assert all(f.done() for f in rejected), "a command refused a thread is answered at once"
    for f in rejected[:: names // 100]:
        err = f.result(0)
        assert isinstance(err, fasthystrix.MaxConcurrencyError)
        assert str(err) == "hystrix: max concurrency: no worker thread free"
    circuits = _registry.circuits()
    for i in range(limit, names, names // 200):
        metrics = circuits[f"many-{i}"].metrics()
        assert (metrics.rejects, metrics.fallback_successes, metrics.successes) == (1, 1, 0)
        assert circuits[f"many-{i}"].tickets_in_use == 0
    held.release.set()
    assert [f.result(WAIT) for f in futures[:limit]] == ["ran"] * limit
    assert held.running == limit
    assert sum(c.metrics().rejects for c in circuits.values()) == names - limit
    assert len(worker_threads()) <= limit


def test_many_names_from_many_callers_never_exceed_the_maximum(clock: FakeClock, long_timeouts: None) -> None:
    """do() from 8 threads over 20 000 names, at most 3 worker threads: each call either ran or
    was rejected into its fallback, and the counts add up exactly."""
    limit, callers, per_caller = 3, 8, NAMES // 8
    fasthystrix.set_max_threads(limit)
    fasthystrix.set_max_circuits(NAMES)  # every name keeps its circuit, to be counted afterwards
    lock = threading.Lock()
    peak = [0]
    ran = [0]
    outcomes: list[list[str]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers)

    def run() -> str:
        alive = len(worker_threads())
        with lock:
            ran[0] += 1
            peak[0] = max(peak[0], alive)
        return "ran"

    def fallback(err: BaseException) -> str:
        assert isinstance(err, fasthystrix.MaxConcurrencyError), err
        return "rejected"

    def caller(k: int) -> None:
        start.wait(WAIT)
        for i in range(per_caller):
            outcomes[k].append(fasthystrix.do(f"caller-{k}-{i}", run, fallback))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 4)
        assert not thread.is_alive()
    flat = [o for each in outcomes for o in each]
    assert len(flat) == callers * per_caller
    assert flat.count("ran") == ran[0]
    assert flat.count("ran") + flat.count("rejected") == callers * per_caller
    circuits = _registry.circuits()
    assert sum(c.metrics().successes for c in circuits.values()) == flat.count("ran")
    assert sum(c.metrics().rejects for c in circuits.values()) == flat.count("rejected")
    assert all(c.tickets_in_use == 0 for c in circuits.values())
    assert 1 <= peak[0] <= limit
    assert len(worker_threads()) <= limit


def test_sequential_calls_on_many_names_reuse_one_thread() -> None:
    ran_on = set()
    for i in range(300):
        assert fasthystrix.do(f"sequential-{i}", lambda: ran_on.add(threading.current_thread())) is None
    assert len(ran_on) == 1
    assert worker_threads() == list(ran_on)


def test_idle_workers_stay_for_the_idle_time_then_retire(
    monkeypatch: pytest.MonkeyPatch, long_timeouts: None, held: Held
) -> None:
    pool = _workers.workers
    assert _workers.IDLE_TIMEOUT == pool.idle_timeout == 30.0
    futures = [fasthystrix.go(f"idle-{i}", held.run) for i in range(4)]
    held.wait_running(4)
    held.release.set()
    assert [f.result(WAIT) for f in futures] == ["ran"] * 4
    wait_until(lambda: len(pool._idle) == 4, "4 idle workers")
    assert len(worker_threads()) == 4, "idle workers wait for more work (30 s) before they exit"
    # Workers that go idle from now on wait briefly: give the 4 one more task each, then none.
    monkeypatch.setattr(pool, "idle_timeout", 0.01)
    again = Held()
    futures = [fasthystrix.go(f"idle-{i}", again.run) for i in range(4)]
    again.wait_running(4)
    assert len(worker_threads()) == 4, "the idle workers were reused, not new ones started"
    again.release.set()
    assert [f.result(WAIT) for f in futures] == ["ran"] * 4
    wait_until(lambda: not worker_threads(), "idle workers retired")
    assert pool._workers == set() and pool._idle == []
    assert fasthystrix.do("idle-after", lambda: "new thread") == "new thread"


def test_lowering_the_maximum_stops_idle_threads_beyond_it(long_timeouts: None, held: Held) -> None:
    futures = [fasthystrix.go(f"lower-{i}", held.run) for i in range(6)]
    held.wait_running(6)
    held.release.set()
    assert [f.result(WAIT) for f in futures] == ["ran"] * 6
    wait_until(lambda: len(_workers.workers._idle) == 6, "6 idle workers")
    fasthystrix.set_max_threads(2)
    wait_until(lambda: len(worker_threads()) == 2, "the 4 idle workers beyond the maximum gone")
    assert fasthystrix.do("lower-after", lambda: 1) == 1
    assert len(worker_threads()) <= 2


def test_lowering_the_maximum_stops_busy_threads_beyond_it_once_done(long_timeouts: None, held: Held) -> None:
    futures = [fasthystrix.go(f"lower-busy-{i}", held.run) for i in range(6)]
    held.wait_running(6)
    fasthystrix.set_max_threads(2)
    assert len(worker_threads()) == 6, "busy threads finish their run"
    held.release.set()
    assert [f.result(WAIT) for f in futures] == ["ran"] * 6
    # The pool was above its new maximum: its busy threads exit once done; new ones start on demand.
    wait_until(
        lambda: not _workers.workers._workers and not worker_threads(),
        "the threads busy when the maximum was lowered gone",
    )
    assert fasthystrix.do("lower-busy-after", lambda: 1) == 1
    assert len(worker_threads()) == 1


# -- a command that gets no thread ---------------------------------------------------------------


def test_pool_full_rejects_do_and_do_c_with_their_fallback(long_timeouts: None, held: Held) -> None:
    fasthystrix.set_max_threads(1)
    blocker = fasthystrix.go("holder", held.run)
    held.wait_running(1)
    ran = []
    assert isinstance(fasthystrix.do("full", lambda: ran.append(1), _rejection), fasthystrix.MaxConcurrencyError)
    ctx = fasthystrix.Context()
    assert fasthystrix.do_c(ctx, "full", lambda c: ran.append(1), lambda c, err: type(err).__name__) == (
        "MaxConcurrencyError"
    )
    with pytest.raises(fasthystrix.MaxConcurrencyError, match="no worker thread free"):
        fasthystrix.do("full", lambda: ran.append(1))
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.go("full", lambda: ran.append(1)).result(WAIT)
    assert ran == []
    circuit = fasthystrix.get_circuit("full")[0]
    metrics = circuit.metrics()
    assert (metrics.requests, metrics.rejects, metrics.fallback_successes) == (4, 4, 2)
    assert circuit.tickets_in_use == 0
    held.release.set()
    assert blocker.result(WAIT) == "ran"
    assert fasthystrix.do("full", lambda: "ran now") == "ran now"


def test_pool_full_rejections_reach_the_collectors(long_timeouts: None, held: Held) -> None:
    events: list[list[str]] = []

    class Collector(fasthystrix.MetricCollector):
        def update(self, result: fasthystrix.MetricResult) -> None:
            events.append(list(result.events))

        def reset(self) -> None:
            pass

    fasthystrix.metric_collector.registry.register(lambda name: Collector())
    fasthystrix.set_max_threads(1)
    blocker = fasthystrix.go("collected-holder", held.run)
    held.wait_running(1)
    assert fasthystrix.do("collected", lambda: 1, lambda err: 2) == 2
    held.release.set()
    assert blocker.result(WAIT) == "ran"
    wait_until(lambda: len(events) == 2, "both commands collected")
    assert ["rejected", "fallback-success"] in events


def test_a_thread_the_os_refuses_is_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    start = threading.Thread.start
    refused = []

    def refusing_start(self: threading.Thread) -> None:
        if self.name.startswith("fasthystrix-worker-"):
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refusing_start)
    ran = []
    err = fasthystrix.do("refused", lambda: ran.append(1), _rejection)
    assert isinstance(err, fasthystrix.MaxConcurrencyError)
    assert str(err) == "hystrix: max concurrency: no worker thread free"
    assert fasthystrix.go("refused", lambda: ran.append(1), lambda err: "go fallback").result(WAIT) == "go fallback"
    with pytest.raises(fasthystrix.MaxConcurrencyError) as raised:
        fasthystrix.do("refused", lambda: ran.append(1))
    assert raised.value.__suppress_context__, "the traceback shows the rejection alone"
    assert ran == [] and len(refused) == 3
    circuit = fasthystrix.get_circuit("refused")[0]
    assert circuit.metrics().rejects == 3
    assert circuit.tickets_in_use == 0
    assert _workers.workers._workers == set(), "no worker is left counted for a thread that never started"
    monkeypatch.undo()
    assert fasthystrix.do("refused", lambda: "ran") == "ran"


def test_a_rejected_trial_reopens_the_circuit(clock: FakeClock, long_timeouts: None, held: Held) -> None:
    fasthystrix.configure_command("trial", {"timeout": LONG_MS, "request_volume_threshold": 1, "sleep_window": 100})
    assert fasthystrix.do("trial", _raise, lambda err: "fb") == "fb"
    assert fasthystrix.do("trial", lambda: "ran", _rejection).__class__ is fasthystrix.CircuitOpenError
    assert fasthystrix.get_circuit("trial")[0].state() == "open"
    clock.advance(ms=200)
    fasthystrix.set_max_threads(1)
    blocker = fasthystrix.go("trial-holder", held.run)
    held.wait_running(1)
    assert isinstance(fasthystrix.do("trial", lambda: "ran", _rejection), fasthystrix.MaxConcurrencyError)
    circuit = fasthystrix.get_circuit("trial")[0]
    assert circuit.state() == "open"
    assert circuit.tickets_in_use == 0
    held.release.set()
    assert blocker.result(WAIT) == "ran"
    clock.advance(ms=200)
    assert fasthystrix.do("trial", lambda: "ran") == "ran"
    assert circuit.state() == "closed"


def _raise() -> None:
    raise ValueError("down")


def test_go_fallbacks_run_when_every_worker_is_busy(held: Held) -> None:
    """A go() turned away, or timed out, while the pool is full: its fallback runs on the thread
    that decided it (go()'s caller, the deadline timer) rather than waiting for a worker."""
    fasthystrix.configure_command("busy-holder", {"timeout": LONG_MS})
    fasthystrix.configure_command("busy-slow", {"timeout": 20})
    fasthystrix.configure_command("busy-open", {"timeout": LONG_MS})
    fasthystrix.set_max_threads(2)
    blocker = fasthystrix.go("busy-holder", held.run)
    slow = fasthystrix.go("busy-slow", held.run, lambda err: f"fallback after {type(err).__name__}")
    held.wait_running(2)
    assert slow.result(WAIT) == "fallback after TimeoutError"
    fasthystrix.get_circuit("busy-open")[0].force_open = True
    opened = fasthystrix.go("busy-open", lambda: "ran", lambda err: f"fallback after {type(err).__name__}")
    assert opened.result(WAIT) == "fallback after CircuitOpenError"
    held.release.set()
    assert blocker.result(WAIT) == "ran"
    assert fasthystrix.get_circuit("busy-slow")[0].metrics().timeouts == 1
    wait_until(lambda: fasthystrix.get_circuit("busy-slow")[0].tickets_in_use == 0, "the slow run's ticket back")


# -- nested commands -----------------------------------------------------------------------------


def _nested(depth: int, path: list[str]) -> Callable[[], str]:
    def run() -> str:
        path.append(f"ran {depth}")
        if depth == 1:
            return "bottom"
        inner = fasthystrix.do(f"nested-{depth - 1}", _nested(depth - 1, path), lambda err: type(err).__name__)
        return f"{depth}>{inner}"

    return run


def _in_thread(call: Callable[[], Any]) -> Any:
    """Call on a thread of its own, failing (not hanging) if it deadlocks."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "deadlocked"
    return result[0]


def test_nested_commands_at_the_maximum_do_not_deadlock(long_timeouts: None) -> None:
    fasthystrix.set_max_threads(2)
    path: list[str] = []
    # Level 4 and 3 take the two threads; level 2 finds none and falls back at once.
    assert _in_thread(lambda: fasthystrix.do("nested-4", _nested(4, path))) == "4>3>MaxConcurrencyError"
    assert path == ["ran 4", "ran 3"]
    assert fasthystrix.get_circuit("nested-2")[0].metrics().rejects == 1
    fasthystrix.set_max_threads()
    path.clear()
    assert _in_thread(lambda: fasthystrix.do("nested-4", _nested(4, path))) == "4>3>2>bottom"


def test_nested_commands_on_many_threads_at_the_maximum_do_not_deadlock(long_timeouts: None) -> None:
    """8 callers each nest 3 commands deep with 4 threads for all of them: every call ends, each
    level either ran or fell back, and no ticket is lost."""
    fasthystrix.set_max_threads(4)
    lock = threading.Lock()
    arrived = [0]
    all_four = threading.Event()

    def outer(k: int) -> str:
        def run() -> str:
            # The first 4 outer runs hold every thread at once before any nests; later ones go on.
            with lock:
                arrived[0] += 1
                if arrived[0] == 4:
                    all_four.set()
            assert all_four.wait(WAIT)
            return fasthystrix.do(f"nest-inner-{k}", _nested(2, []), lambda err: "inner rejected")

        return fasthystrix.do(f"nest-outer-{k}", run, lambda err: "outer rejected")

    results = _in_thread(lambda: _run_all([lambda k=k: outer(k) for k in range(8)]))
    assert len(results) == 8
    assert "inner rejected" in results
    assert all(r in ("inner rejected", "outer rejected", "2>bottom", "2>MaxConcurrencyError") for r in results)
    assert len(worker_threads()) <= 4


def _run_all(calls: list[Callable[[], str]]) -> list[str]:
    results: list[str] = []
    lock = threading.Lock()

    def call(f: Callable[[], str]) -> None:
        value = f()
        with lock:
            results.append(value)

    threads = [threading.Thread(target=call, args=(f,)) for f in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return results


def test_flush_keeps_the_pool_serving(long_timeouts: None) -> None:
    assert fasthystrix.do("flushed", lambda: 1) == 1
    fasthystrix.flush()
    wait_until(lambda: not worker_threads(), "flush stopped the idle worker")
    assert fasthystrix.do("flushed", threading.current_thread) in worker_threads()
    assert fasthystrix.go("flushed", lambda: 3).result(WAIT) == 3


def test_each_command_keeps_its_own_spin_budget_on_the_shared_pool(long_timeouts: None) -> None:
    """Whether a caller spins for its result is learnt from its own command's runs: slow runs of
    one command leave another's budget alone, though both run on the same threads."""
    slow = fasthystrix.get_circuit("budget-slow")[0]
    fast = fasthystrix.get_circuit("budget-fast")[0]
    assert slow._workers.pool is fast._workers.pool is _workers.workers
    assert slow._workers.result_waits is not fast._workers.result_waits
    threads = set()

    def one_idle_worker() -> None:
        # A call that finds no idle worker starts a thread, and its wait may not be counted (the
        # run can end before it); a worker is idle again only after the caller has its result.
        wait_until(lambda: len(_workers.workers._idle) == 1, "the worker idle")

    assert fasthystrix.do("budget-warm-up", lambda: None) is None
    for _ in range(8):
        one_idle_worker()
        assert (
            fasthystrix.do("budget-slow", lambda: threads.add(threading.current_thread()) or time.sleep(0.005)) is None
        )
    one_idle_worker()
    assert fasthystrix.do("budget-fast", lambda: threads.add(threading.current_thread())) is None
    assert len(threads) == 1, "both commands ran on the same worker"
    budget = fast._workers.result_waits
    assert budget.spun + budget.skipped == 1
    assert slow._workers.result_waits.spun + slow._workers.result_waits.skipped == 8


# -- interrupted and out of memory on the way: no ticket kept, no worker left waiting ------------


class InterruptingClock:
    """The monotonic clock, but its call number ``at`` (1: the first) raises ``KeyboardInterrupt``."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return time.monotonic_ns()


def wait_tickets_back(circuit: Any, when: str) -> None:
    wait_until(lambda: circuit.tickets_in_use == 0, f"the ticket back ({when})")


@pytest.mark.parametrize("with_context", [False, True], ids=["do", "do_c"])
def test_an_interrupt_at_any_clock_read_keeps_no_ticket_and_no_worker_waiting(with_context: bool) -> None:
    # The worker is posted and woken from inside the caller's first wait: an interrupt before that
    # wait (the clock read that sizes it) must still wake it, or it waits for ever with the ticket.
    # Every clock read of the call in turn; once past them all, the call just succeeds.
    outcomes = []
    for at in range(1, 40):
        clock = InterruptingClock(at)
        _clock.set_clock(clock)
        fasthystrix.flush()
        try:
            name = f"interrupted-{at}"
            fasthystrix.configure_command(name, fasthystrix.CommandConfig(timeout=LONG_MS))
            circuit = fasthystrix.get_circuit(name)[0]
            try:
                if with_context:
                    result = fasthystrix.do_c(fasthystrix.Context.background().with_cancel(), name, lambda ctx: None)
                else:
                    result = fasthystrix.do(name, lambda: None)
            except KeyboardInterrupt:
                outcomes.append("interrupted")
            else:
                assert result is None
                outcomes.append("done")
            wait_tickets_back(circuit, f"clock read {at}")
        finally:
            _clock.set_clock(None)
        if outcomes[-1] == "done" and clock.calls < at:
            break  # every clock read of a call was interrupted in turn
    else:
        pytest.fail(f"the call read the clock more than 40 times: {outcomes}")
    assert "interrupted" in outcomes
    # An interrupted call whose run had been handed to a worker still ran it (the worker owns the
    # ticket until its run ends), and the ticket came back: no interrupt left a worker posted.
    wait_until(lambda: len(_workers.workers._idle) == len(worker_threads()), "every worker idle")


@hardened_against_failed_allocations
@pytest.mark.parametrize("kind", ["do", "do_c"])
def test_a_failed_allocation_in_a_threaded_call_keeps_no_ticket(kind: str) -> None:
    # Out of memory at each allocation of a call in turn: on the way to the worker, in the caller's
    # wait, in the worker's bookkeeping after the run and in the pool's. Whatever the call raised,
    # its ticket comes back (in a process of its own: tests/threaded_allocations.py says why).
    pytest.importorskip("_testcapi")
    script = Path(__file__).with_name("threaded_allocations.py")
    done = subprocess.run(
        [sys.executable, str(script), kind, "300"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["kept"] == [], (report, done.stderr[-3000:])
    # Past the call's allocations on every CPython version: it also just succeeds.
    assert report["outcomes"].get("MemoryError", 0) > 0 and report["outcomes"].get("done", 0) > 0, report
