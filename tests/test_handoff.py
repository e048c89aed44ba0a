"""The handoff signal (``Completion``) of each implementation, and the worker pool's posted submit.

``post()`` sets the signal lazily: its waiter returns when nudged or at the latest after a short
grace period, so nobody has to nudge. ``nudge()`` only ever affects a posted signal: a late nudge
must not wake a waiter that nobody posted (a worker would take it for a task that is not there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fasthystrix import _impl
from fasthystrix._isolation._workers import WorkerPool
from support import WAIT


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
