"""The asyncio front (do_async, go_async) and @command, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra on CPython/POSIX
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


@pytest.fixture(params=LOOPS)
def run_async(request: pytest.FixtureRequest) -> Iterator[Callable[[Awaitable[Any]], Any]]:
    """Run a coroutine to completion on a fresh event loop of the kind under test."""

    def runner(coro: Awaitable[Any]) -> Any:
        loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    yield runner


def _semaphore(name: str, **fields: Any) -> None:
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(isolation="semaphore", **fields))


def _metrics(name: str) -> fasthystrix.MetricsSnapshot:
    return fasthystrix.get_circuit(name)[0].metrics()


async def answer() -> int:
    return 42


class Boom(Exception):
    """What run raises."""


async def boom() -> None:
    raise Boom("run failed")


def test_success(run_async: Any) -> None:
    assert run_async(fasthystrix.do_async("a-ok", answer)) == 42
    m = _metrics("a-ok")
    assert (m.successes, m.requests, m.concurrent) == (1, 1, 0)


def test_failure_without_fallback_raises_runs_own_error(run_async: Any) -> None:
    error = Boom("mine")

    async def fail() -> None:
        raise error

    with pytest.raises(Boom) as caught:
        run_async(fasthystrix.do_async("a-fail", fail))
    assert caught.value is error
    assert (_metrics("a-fail").failures, _metrics("a-fail").concurrent) == (1, 0)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fallback_gets_the_error(run_async: Any, kind: str) -> None:
    seen: list[BaseException] = []

    def sync_fallback(err: BaseException) -> str:
        seen.append(err)
        return "fallback"

    async def async_fallback(err: BaseException) -> str:
        seen.append(err)
        await asyncio.sleep(0)
        return "fallback"

    fallback = sync_fallback if kind == "sync" else async_fallback
    assert run_async(fasthystrix.do_async("a-fb", boom, fallback)) == "fallback"
    assert isinstance(seen[0], Boom)
    m = _metrics("a-fb")
    assert (m.failures, m.fallback_successes) == (1, 1)


def test_failing_fallback_raises_fallback_error(run_async: Any) -> None:
    async def bad_fallback(err: BaseException) -> None:
        raise ValueError("fallback broke")

    with pytest.raises(fasthystrix.FallbackError) as caught:
        run_async(fasthystrix.do_async("a-fbf", boom, bad_fallback))
    assert str(caught.value) == "fallback failed with 'fallback broke'. run error was 'run failed'"
    assert _metrics("a-fbf").fallback_failures == 1


@pytest.mark.parametrize("with_fallback", [False, True])
def test_timeout_stops_the_work(run_async: Any, with_fallback: bool) -> None:
    _semaphore("a-timeout", timeout=30)
    finished: list[bool] = []

    async def slow() -> None:
        await asyncio.sleep(0.5)
        finished.append(True)  # must never run: the timeout cancels the work

    async def scenario() -> Any:
        if with_fallback:
            result = await fasthystrix.do_async("a-timeout", slow, lambda err: type(err).__name__)
        else:
            with pytest.raises(fasthystrix.TimeoutError):
                await fasthystrix.do_async("a-timeout", slow)
            result = None
        await asyncio.sleep(0.6)  # long enough for slow() to have finished, had it not been cancelled
        return result

    result = run_async(scenario())
    assert result == ("TimeoutError" if with_fallback else None)
    assert finished == []
    m = _metrics("a-timeout")
    assert (m.timeouts, m.successes, m.concurrent) == (1, 0, 0)


def test_max_concurrency_over_a_thousand_tasks(run_async: Any) -> None:
    _semaphore("a-max", max_concurrent_requests=10, request_volume_threshold=10**9)
    in_flight = 0
    most = 0

    async def work() -> str:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return "ran"

    async def scenario() -> list[Any]:
        calls = [fasthystrix.do_async("a-max", work, lambda err: type(err).__name__) for _ in range(1000)]
        return await asyncio.gather(*calls)

    results = run_async(scenario())
    # The 1000 tasks start in one turn of the loop: the first 10 take the tickets, the rest find none.
    assert most == 10
    assert results.count("ran") == 10
    assert results.count("MaxConcurrencyError") == 990
    m = _metrics("a-max")
    assert (m.successes, m.rejects, m.concurrent) == (results.count("ran"), results.count("MaxConcurrencyError"), 0)


def test_forced_open_and_close_after_sleep_window(run_async: Any, clock: FakeClock) -> None:
    _semaphore("a-open", request_volume_threshold=1, sleep_window=5000)
    with pytest.raises(Boom):
        run_async(fasthystrix.do_async("a-open", boom))
    with pytest.raises(fasthystrix.CircuitOpenError):
        run_async(fasthystrix.do_async("a-open", answer))
    clock.advance(6)
    assert run_async(fasthystrix.do_async("a-open", answer)) == 42  # the trial closes it
    assert fasthystrix.get_circuit("a-open")[0].state() == "closed"
    fasthystrix.get_circuit("a-open")[0].force_open = True
    assert run_async(fasthystrix.do_async("a-open", answer, lambda err: "short")) == "short"


def test_caller_cancellation_propagates_and_is_recorded(run_async: Any) -> None:
    reached_end: list[bool] = []

    async def slow() -> None:
        await asyncio.sleep(5)
        reached_end.append(True)

    async def scenario() -> None:
        task = asyncio.ensure_future(fasthystrix.do_async("a-cancel", slow, lambda err: "no fallback expected"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(scenario())
    assert reached_end == []
    m = _metrics("a-cancel")
    assert (m.context_canceled, m.fallback_successes, m.concurrent) == (1, 0, 0)


def test_cancellation_storm_leaves_no_task_and_no_ticket(run_async: Any) -> None:
    _semaphore("a-storm", max_concurrent_requests=1000, request_volume_threshold=10**9)

    async def slow() -> None:
        await asyncio.sleep(5)

    async def scenario() -> set[asyncio.Task[Any]]:
        tasks = [asyncio.ensure_future(fasthystrix.do_async("a-storm", slow)) for _ in range(300)]
        await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    assert run_async(scenario()) == set()
    m = _metrics("a-storm")
    assert (m.context_canceled, m.concurrent) == (300, 0)


def test_go_async_returns_a_task(run_async: Any) -> None:
    async def scenario() -> Any:
        task = fasthystrix.go_async("a-go", answer)
        assert isinstance(task, asyncio.Task)
        return await task

    assert run_async(scenario()) == 42


def test_bad_arguments_raise_before_any_circuit(run_async: Any) -> None:
    from fasthystrix import _registry

    with pytest.raises(TypeError, match="run must be callable"):
        run_async(fasthystrix.do_async("a-bad", 42))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        run_async(fasthystrix.do_async(None, answer))  # type: ignore[arg-type]
    assert "a-bad" not in _registry.circuits()


def test_sync_and_async_share_one_circuit(run_async: Any) -> None:
    fasthystrix.do("shared", lambda: 1)
    run_async(fasthystrix.do_async("shared", answer))
    assert _metrics("shared").successes == 2


# -- a sync run given to do_async -------------------------------------------------------


@pytest.mark.parametrize("returned", [42, None, "text"], ids=repr)
@pytest.mark.parametrize("via", ["do_async", "go_async"])
def test_sync_run_is_a_type_error_not_a_fallback(run_async: Any, via: str, returned: object) -> None:
    """A sync run used to fail inside ``await`` and hide behind the fallback as a plain failure."""
    _semaphore("a-sync-run")
    ran: list[str] = []
    fallbacks: list[BaseException] = []

    def run() -> object:
        ran.append("ran")
        return returned

    async def call() -> Any:
        if via == "do_async":
            return await fasthystrix.do_async("a-sync-run", run, fallbacks.append)
        return await fasthystrix.go_async("a-sync-run", run, fallbacks.append)

    with pytest.raises(TypeError, match=r"run returned a \w+, not an awaitable: use fasthystrix.do / go") as info:
        run_async(call())
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert ran == ["ran"]
    assert fallbacks == []
    m = _metrics("a-sync-run")
    assert (m.requests, m.failures, m.successes, m.concurrent) == (1, 1, 0, 0)
    assert (m.fallback_successes, m.fallback_failures) == (0, 0)
    assert run_async(fasthystrix.do_async("a-sync-run", answer)) == 42


class _Ready:
    """An awaitable that is not a coroutine."""

    def __await__(self) -> Any:
        return answer().__await__()


def test_awaitables_that_are_not_coroutines_still_work(run_async: Any) -> None:
    async def with_future() -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_result("future")
        return await fasthystrix.do_async("a-awaitables", lambda: future)

    assert run_async(fasthystrix.do_async("a-awaitables", _Ready)) == 42
    assert run_async(with_future()) == "future"
    assert _metrics("a-awaitables").successes == 2


# -- @command ----------------------------------------------------------------------


def test_command_decorates_a_sync_function() -> None:
    calls: list[tuple[Any, ...]] = []

    def fallback(x: int, y: int = 0, *, err: BaseException) -> str:
        calls.append((x, y, type(err).__name__))
        return "fallback"

    @fasthystrix.command("deco-sync", fallback=fallback)
    def divide(x: int, y: int = 1) -> float:
        return x / y

    assert divide(6, y=3) == 2
    assert divide(1, y=0) == "fallback"
    assert calls == [(1, 0, "ZeroDivisionError")]
    assert divide.command_name == "deco-sync"  # type: ignore[attr-defined]
    assert divide.__name__ == "divide"
    m = _metrics("deco-sync")
    assert (m.successes, m.failures, m.fallback_successes) == (1, 1, 1)


def test_command_decorates_an_async_function(run_async: Any) -> None:
    async def fallback(item: str, delay: float = 0.0, *, err: BaseException) -> str:
        return f"cached {item}"

    # 300 ms: far longer than a call that does not sleep takes, even on a busy machine.
    @fasthystrix.command(fallback=fallback, config=fasthystrix.CommandConfig(timeout=300))
    async def fetch(item: str, delay: float = 0.0) -> str:
        await asyncio.sleep(delay)
        return f"fresh {item}"

    assert run_async(fetch("a")) == "fresh a"
    assert run_async(fetch("b", delay=0.5)) == "cached b"
    name = fetch.command_name  # type: ignore[attr-defined]
    assert name == fetch.__qualname__
    assert fasthystrix.get_circuit_settings()[name].timeout.total_seconds() == 0.3
    m = _metrics(name)
    assert (m.successes, m.timeouts, m.fallback_successes) == (1, 1, 1)


def test_command_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        fasthystrix.command(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback must be callable"):
        fasthystrix.command("x", fallback=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a CommandConfig"):
        fasthystrix.command("x", config={"timeout": 5})  # type: ignore[arg-type]


def test_idle_loop_holds_no_timer_of_ours(run_async: Any) -> None:
    from fasthystrix._isolation._do_async_py import deadlines_of

    _semaphore("a-idle", timeout=60_000, max_concurrent_requests=1000)

    async def suspending() -> int:
        await asyncio.sleep(0)  # a run that waits once: its deadline is armed
        return 42

    async def scenario() -> tuple[int, int, bool]:
        loop = asyncio.get_running_loop()
        deadlines = deadlines_of(loop)
        largest = 0
        for _ in range(3000):  # sequential calls with a minute left on each deadline
            await fasthystrix.do_async("a-idle", suspending)
            largest = max(largest, len(deadlines.heap))
        pending = [asyncio.ensure_future(fasthystrix.do_async("a-idle", suspending)) for _ in range(50)]
        await asyncio.gather(*pending)
        await asyncio.sleep(0.15)  # the timer stops within 100 ms of the loop going idle
        return largest, len(deadlines.heap), deadlines.handle is None

    largest, left, disarmed = run_async(scenario())
    assert largest <= 1  # each call finished before the next began: nothing piles up
    assert (left, disarmed) == (0, True)
    assert _metrics("a-idle").successes == 3050
