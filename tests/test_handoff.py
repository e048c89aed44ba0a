"""The handoff signal (``Completion``) of each implementation, and the worker pool's posted submit.

``post()`` sets the signal lazily: its waiter returns when nudged or at the latest after a short
grace period, so nobody has to nudge. ``nudge()`` only ever affects a posted signal: a late nudge
must not wake a waiter that nobody posted (a worker would take it for a task that is not there).

Spin budgets (``SpinBudget``) decide whether a wait spins before sleeping. Their tests assert what
the budget chose (its counters and its advice), never how long anything took: the waits they set up
are made long (milliseconds) or short on purpose, far from the 25 us line either way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import fasthystrix
from fasthystrix import _impl
from fasthystrix._isolation._workers import WorkerPool
from support import WAIT

SPIN_NS = 50_000  # the spin a budget advises, when it advises one
SLOW = 0.005  # a wait of this many seconds is 100 spins long: always too long to spin for


def _completion() -> Any:
    return _impl.current().Completion()


def _waiter(completion: Any, **kwargs: Any) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(completion.wait(**kwargs)), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("kwargs", [{}, {"spin": False}, {"timeout": WAIT}, {"timeout": WAIT, "spin": False}], ids=repr)
def test_a_post_nobody_nudges_still_wakes_the_waiter(kwargs: dict[str, Any]) -> None:
    completion = _completion()
    thread, result = _waiter(completion, **kwargs)
    time.sleep(0.05)  # let the waiter spin out and sleep (or not, for the spinning kinds)
    completion.post()
    thread.join(WAIT)
    assert result == [True]
    assert completion.is_set()


def test_a_post_before_the_wait_counts_as_set() -> None:
    completion = _completion()
    completion.post()
    assert completion.is_set()
    assert completion.wait(0) is True
    assert completion.wait(WAIT) is True
    assert completion.wait() is True
    assert completion.wait(spin=False) is True


def test_nudge_sets_a_posted_signal_and_leaves_a_clear_one_alone() -> None:
    completion = _completion()
    completion.nudge()
    assert not completion.is_set()
    assert completion.wait(0.01) is False
    completion.post()
    completion.nudge()
    assert completion.is_set()
    completion.clear()
    assert not completion.is_set()
    # A late nudge (its post already consumed) leaves the cleared signal clear.
    completion.nudge()
    assert not completion.is_set()
    assert completion.wait(0.01) is False


def test_clear_clears_a_posted_signal() -> None:
    completion = _completion()
    completion.post()
    completion.clear()
    assert not completion.is_set()
    assert completion.wait(0.01) is False


def test_wait_nudges_and_kicks_the_other_signals() -> None:
    mine, posted, unposted, kicked = _completion(), _completion(), _completion(), _completion()
    posted.post()
    mine.set()
    assert mine.wait(WAIT, kicked, True, posted) is True
    assert kicked.is_set()
    assert posted.is_set()
    mine.clear()
    mine.set()
    assert mine.wait(WAIT, None, True, unposted) is True
    assert not unposted.is_set()


def test_a_nudged_waiter_returns() -> None:
    completion = _completion()
    thread, result = _waiter(completion)
    completion.post()
    completion.nudge()
    thread.join(WAIT)
    assert result == [True]


def test_set_after_post_wakes_a_sleeping_waiter_once() -> None:
    completion = _completion()
    for _ in range(50):
        thread, result = _waiter(completion, spin=False)
        completion.post()
        completion.set()
        thread.join(WAIT)
        assert result == [True]
        completion.clear()
    # Still a working signal: a timed wait with nothing posted times out, a set wakes it.
    assert completion.wait(0.01) is False
    thread, result = _waiter(completion, timeout=WAIT)
    completion.set()
    thread.join(WAIT)
    assert result == [True]


def _ran(pool: WorkerPool, submit: Callable[[Callable[[], object]], Any]) -> Any:
    ran = threading.Event()
    returned = submit(ran.set)
    assert ran.wait(WAIT), "the task never ran"
    return returned


def _until_idle(pool: WorkerPool, count: int = 1) -> None:
    deadline = time.monotonic() + WAIT
    while len(pool._idle) < count:
        assert time.monotonic() < deadline, "the worker never went idle"
        time.sleep(0.001)


def test_a_posted_task_runs_without_a_nudge() -> None:
    pool = WorkerPool("posted", idle_timeout=WAIT)
    try:
        _ran(pool, pool.submit)  # a first task starts the thread
        for _ in range(20):
            _until_idle(pool)
            assert _ran(pool, lambda task: pool.submit(task, post=True)) is not None
        assert len(pool.threads()) == 1
    finally:
        pool.shutdown()


def test_posted_tasks_reach_a_sleeping_worker() -> None:
    pool = WorkerPool("posted-sleeping", idle_timeout=WAIT)
    try:
        release = threading.Event()

        def block() -> None:  # a task returns None or the Completion to set
            release.wait(WAIT)

        for _ in range(2):
            pool.submit(block)
        release.set()
        _until_idle(pool, 2)
        time.sleep(0.05)  # both have spun out by now: the kernel has to wake them
        events = [threading.Event(), threading.Event()]
        for event in events:
            pool.submit(event.set, post=True)  # Event.set returns None
        assert all(event.wait(WAIT) for event in events)
    finally:
        pool.shutdown()


def test_a_late_nudge_does_not_wake_an_idle_worker() -> None:
    pool = WorkerPool("late-nudge", idle_timeout=WAIT)
    try:
        _ran(pool, pool.submit)
        _until_idle(pool)
        wake = _ran(pool, lambda task: pool.submit(task, post=True))
        _until_idle(pool)
        # The nudge of a task that already ran: were it a set(), the idle worker would take
        # it for a task, find none and exit, and the next task would never run.
        wake.nudge()
        time.sleep(0.05)
        assert len(pool.threads()) == 1
        _ran(pool, pool.submit)
        _until_idle(pool)  # the worker is idle again only once its task has returned, after _ran sees it run
        _ran(pool, lambda task: pool.submit(task, post=True))
        assert len(pool.threads()) == 1
    finally:
        pool.shutdown()


def test_a_post_racing_a_timed_out_wait_is_not_lost() -> None:
    # The pool's pattern: a wait times out just as a post comes; a second wait must see it.
    for i in range(300):
        completion = _completion()
        result: list[bool] = []

        def waiter(completion: Any = completion, result: list[bool] = result) -> None:
            result.append(completion.wait(0.0002, None, False) or completion.wait(WAIT))

        thread = threading.Thread(target=waiter)
        thread.start()
        if i % 3:
            time.sleep(0.0002 * (i % 3))
        completion.post()
        thread.join(WAIT + 1)
        assert result == [True], f"round {i}: the post was lost"


def test_posted_tasks_reach_workers_retiring_at_their_idle_timeout() -> None:
    pool = WorkerPool("retiring", idle_timeout=0.0003)
    try:
        for i in range(200):
            ran = threading.Event()
            pool.submit(ran.set, post=True)
            assert ran.wait(WAIT), f"round {i}: the posted task never ran"
            if i % 2:
                time.sleep(0.0003)
    finally:
        pool.shutdown()


# -- spin budgets --------------------------------------------------------------------------------


def _budget() -> Any:
    return _impl.current().SpinBudget()


def test_a_budget_turns_the_spin_off_after_six_long_waits_and_on_after_six_short_ones() -> None:
    budget = _budget()
    assert (budget.average_ns, budget.spin_ns(), budget.spun, budget.skipped) == (0, SPIN_NS, 0, 0)
    for i in range(6):
        assert budget.spin_ns() == SPIN_NS, f"off after {i} long waits"
        budget.record(10**9)
    assert budget.spin_ns() == 0
    for _ in range(30):
        budget.record(10**9)
    for i in range(6):
        assert budget.spin_ns() == 0, f"on after {i} short waits"
        budget.record(1_000)
    assert budget.spin_ns() == SPIN_NS
    assert (budget.spun, budget.skipped) == (0, 0)  # recording is not waiting


def test_a_budget_caps_its_samples() -> None:
    # One very long wait weighs as much as any wait past the spin; a negative one (set before the
    # wait began) as a wait of 0: the average stays within [0, the spin] whatever it is fed.
    budget = _budget()
    budget.record(-(10**12))
    assert budget.average_ns == 0
    budget.record(10**18)
    assert budget.average_ns == SPIN_NS // 8
    for _ in range(200):
        budget.record(10**18)
    assert SPIN_NS // 2 <= budget.average_ns <= SPIN_NS


def _thread_circuit(name: str) -> Any:
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(isolation="thread", timeout=60_000))
    return fasthystrix.get_circuit(name)[0]


def test_a_caller_of_slow_runs_sleeps_at_once_and_spins_again_once_they_are_fast(impl: str) -> None:
    circuit = _thread_circuit("budget-caller")
    budget = circuit._workers.result_waits

    def slow() -> int:
        time.sleep(SLOW)
        return 1

    for _ in range(8):
        assert fasthystrix.do("budget-caller", slow) == 1
    assert fasthystrix.go("budget-caller", slow).result() == 1
    spun, skipped = budget.spun, budget.skipped
    for _ in range(4):
        assert fasthystrix.do("budget-caller", slow) == 1
        assert fasthystrix.go("budget-caller", slow).result() == 1
    assert (budget.spun, budget.skipped) == (spun, skipped + 8), "a caller spun for a run of 5 ms"
    if impl == "compiled":
        assert budget.spin_ns() == 0
    # Fast runs again: the samples keep coming while the caller sleeps, and the spin comes back.
    # (A sample times the run from when the worker woke up to take it: the worker's own wake-up,
    # slow on a loaded machine, does not count.)
    for _ in range(2000):
        assert fasthystrix.do("budget-caller", lambda: 1) == 1
        if budget.spun > spun:
            break
    if impl == "compiled":
        assert budget.spun > spun, "the caller never spun again for a trivial run"
    else:
        assert budget.spun == 0  # the pure twin never spins


def test_a_caller_times_the_work_from_when_the_worker_woke_up() -> None:
    # A worker that looks at its signal 5 ms after the caller kicked it (as a worker the kernel
    # wakes up late), then sets the caller at once: the caller's samples must be the instant
    # work, not the 5 ms. Were they the 5 ms, a caller and a worker that both sleep would see
    # each other's wake-ups and never spin again, even for trivial runs.
    results = _budget()
    wake = _impl.current().Completion(_budget(), _budget())  # a worker's signal (it can be posted)
    handed: queue.Queue[Any] = queue.Queue()

    def worker() -> None:
        for _ in range(8):
            caller_signal = handed.get(timeout=WAIT)
            time.sleep(SLOW)
            assert wake.wait(WAIT)  # set long ago: returns at once, noting when it woke up
            wake.clear()
            caller_signal.set()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    for _ in range(8):
        done = _impl.current().Completion(results)
        handed.put(done)
        assert done.wait(WAIT, wake)
    thread.join(WAIT)
    assert results.spin_ns() == SPIN_NS, f"average {results.average_ns} ns: the worker's wake-up was counted"


def test_an_idle_worker_times_its_wait_in_full(impl: str) -> None:
    # The other way round: a caller slow to come back with the next task (it looks at its result
    # 5 ms late, then hands the next task over at once). The worker's wait for a task does last
    # 5 ms, whatever made it so: its spin must turn off.
    tasks = _budget()
    wake = _impl.current().Completion(tasks, _budget())
    handed: queue.Queue[Any] = queue.Queue()
    rounds = 12

    def worker() -> None:
        kick = None
        for _ in range(rounds):
            assert wake.wait(WAIT, kick)  # sets the previous caller's signal, then waits for a task
            wake.clear()
            kick = handed.get_nowait()
        kick.set()

    done = _impl.current().Completion(_budget())
    handed.put(done)
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    wake.set()
    for _ in range(rounds - 1):
        time.sleep(SLOW)
        assert done.wait(WAIT)
        done = _impl.current().Completion(_budget())
        handed.put(done)
        wake.set()
    assert done.wait(WAIT)
    thread.join(WAIT)
    if impl == "compiled":
        assert tasks.spin_ns() == 0, f"average {tasks.average_ns} ns: the worker spins for tasks 5 ms apart"
        assert tasks.skipped > 0
    else:
        assert tasks.spun == 0


def test_posts_nobody_nudges_turn_the_grace_off_and_one_in_16_probes(impl: str) -> None:
    pool = WorkerPool("graces", idle_timeout=WAIT)
    try:
        _ran(pool, pool.submit)  # a first task starts the thread (not posted)
        for _ in range(6 + 32):
            _until_idle(pool)
            _ran(pool, lambda task: pool.submit(task, post=True))  # and nobody nudges
        _until_idle(pool)
        graces = pool.nudge_waits
        if impl == "compiled":
            # Six graces run out, then the budget skips them, but for the 16th and the 32nd skip.
            assert (graces.spun, graces.skipped) == (6 + 2, 32 - 2)
            assert graces.spin_ns() == 0
        else:
            assert (graces.spun, graces.skipped) == (0, 0)  # no grace: a post starts the worker at once
    finally:
        pool.shutdown()
