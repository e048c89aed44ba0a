"""go() futures nobody calls result() on still run and resolve.

go() posts its run to an idle worker, which starts when result() nudges it or after a short
grace period; these are the callers that never nudge: fire-and-forget, done callbacks,
``concurrent.futures.wait``/``as_completed``, ``asyncio.wrap_future``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import fasthystrix
from fasthystrix import Context
from support import WAIT

NAME = "go-unwaited"


@pytest.fixture(autouse=True)
def _thread_command() -> Iterator[None]:
    # Tickets enough for every command the tests leave unwaited at once.
    config = fasthystrix.CommandConfig(isolation="thread", timeout=60_000, max_concurrent_requests=10_000)
    fasthystrix.configure_command(NAME, config)
    # An idle worker first, so the calls below take the posted path (a new thread starts at once).
    assert fasthystrix.go(NAME, lambda: 0).result(timeout=WAIT) == 0
    yield


def test_fire_and_forget_runs() -> None:
    for _ in range(50):
        ran = threading.Event()
        fasthystrix.go(NAME, ran.set)
        assert ran.wait(WAIT), "run never started"


def test_done_callbacks_fire() -> None:
    results: list[Any] = []
    done = threading.Semaphore(0)

    def on_done(future: concurrent.futures.Future[Any]) -> None:
        results.append(future.result(0))
        done.release()

    for i in range(50):
        fasthystrix.go(NAME, lambda i=i: i).add_done_callback(on_done)
        assert done.acquire(timeout=WAIT), "the future never resolved"
    assert results == list(range(50))


def test_concurrent_futures_wait_and_as_completed() -> None:
    for _ in range(10):
        futures = [fasthystrix.go(NAME, lambda i=i: i) for i in range(4)]
        finished, pending = concurrent.futures.wait(futures, timeout=WAIT)
        assert not pending
        assert sorted(f.result(0) for f in finished) == [0, 1, 2, 3]
        futures = [fasthystrix.go(NAME, lambda i=i: i) for i in range(4)]
        assert sorted(f.result(0) for f in concurrent.futures.as_completed(futures, timeout=WAIT)) == [0, 1, 2, 3]


def test_asyncio_wrap_future() -> None:
    async def main() -> list[int]:
        return [await asyncio.wrap_future(fasthystrix.go(NAME, lambda i=i: i)) for i in range(20)]

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == list(range(20))


def test_go_c_without_result_runs() -> None:
    for _ in range(20):
        ran = threading.Event()

        def run(ctx: Context, ran: threading.Event = ran) -> None:
            ran.set()

        future = fasthystrix.go_c(Context.background(), NAME, run)
        assert ran.wait(WAIT)
        assert future.exception(timeout=WAIT) is None


def test_errors_and_fallbacks_reach_unwaited_futures() -> None:
    def boom() -> None:
        raise ValueError("boom")

    future = fasthystrix.go(NAME, boom, lambda err: f"fallback for {err}")
    concurrent.futures.wait([future], timeout=WAIT)
    assert future.result(0) == "fallback for boom"
    future = fasthystrix.go(NAME, boom)
    concurrent.futures.wait([future], timeout=WAIT)
    assert isinstance(future.exception(0), ValueError)
    with pytest.raises(ValueError, match="boom"):
        future.result()


def test_result_of_an_old_future_does_not_disturb_the_worker() -> None:
    # result() nudges the worker the future was posted to; by now that worker may be idle or
    # running someone else's command: neither may be disturbed.
    old = [fasthystrix.go(NAME, lambda i=i: i) for i in range(4)]
    concurrent.futures.wait(old, timeout=WAIT)
    for _ in range(20):
        ran = threading.Event()
        fasthystrix.go(NAME, ran.set)
        assert [f.result(timeout=WAIT) for f in old] == [0, 1, 2, 3]
        assert ran.wait(WAIT)
    assert fasthystrix.go(NAME, lambda: 7).result(timeout=WAIT) == 7
    assert fasthystrix.do(NAME, lambda: 8) == 8


def test_unwaited_commands_under_threads_all_resolve() -> None:
    threads, per_thread = 4, 200
    resolved = threading.Semaphore(0)
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            for n in range(per_thread):
                mode = (n + i) % 4
                future = fasthystrix.go(NAME, lambda n=n: n)
                if mode == 0:
                    assert future.result(timeout=WAIT) == n
                    resolved.release()
                elif mode == 1:
                    future.add_done_callback(lambda _: resolved.release())
                elif mode == 2:
                    assert fasthystrix.do(NAME, lambda n=n: n) == n
                    future.add_done_callback(lambda _: resolved.release())
                else:
                    concurrent.futures.wait([future], timeout=WAIT)
                    assert future.done()
                    resolved.release()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(2 * WAIT)
    assert not errors, errors
    for _ in range(threads * per_thread):
        assert resolved.acquire(timeout=WAIT), "a future never resolved"
    circuit, _ = fasthystrix.get_circuit(NAME)
    m = circuit.metrics()
    # Every go(), the do() of one call in four, and the fixture's first go().
    assert m.successes == threads * per_thread + threads * per_thread // 4 + 1
    assert m.failures == m.timeouts == m.rejects == 0
