"""do_async as an awaitable: values, the coroutine protocol and its lazily armed deadline, on the
live implementation (the compiled awaitable of _do_async, or the coroutine of _do_async_py).

Every test ends with the tickets given back (conftest checks it after each test).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import time
import types
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import fasthystrix
from fasthystrix._core import _events
from support import first_step_failing_allocation, hardened_against_failed_allocations


def _semaphore(name: str, **fields: Any) -> None:
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(isolation="semaphore", **fields))


def _metrics(name: str) -> fasthystrix.MetricsSnapshot:
    return fasthystrix.get_circuit(name)[0].metrics()


class Boom(Exception):
    """What run raises."""


RESULTS = [None, 0, "text", (), (1, 2), ((1,),), [3], {"k": 4}, ValueError("returned, not raised"), StopIteration(5)]


@pytest.mark.parametrize("suspend", [False, True], ids=["first-step", "after-waiting"])
@pytest.mark.parametrize("result", RESULTS, ids=repr)
def test_every_value_comes_back_unchanged(result: object, suspend: bool) -> None:
    # Tuples and exceptions are what a StopIteration would take for its arguments or for itself.
    async def run() -> object:
        if suspend:
            await asyncio.sleep(0)
        return result

    assert asyncio.run(fasthystrix.do_async("p-values", run)) is result
    assert _metrics("p-values").successes == 1


@pytest.mark.parametrize("result", [None, "value"], ids=repr)
def test_stepped_by_hand_it_ends_as_an_iterator_ends(result: object) -> None:
    # The compiled awaitable ends a None result without a StopIteration at all (an exhausted
    # tp_iternext): next() and `yield from` must still read it as a return of None.
    async def run() -> object:
        return result

    @types.coroutine
    def delegating() -> Generator[Any, None, object]:
        return (yield from fasthystrix.do_async("p-by-hand", run).__await__())

    async def main() -> list[object]:  # in a task, as do_async must be
        ends = []
        for steps in (fasthystrix.do_async("p-by-hand", run).__await__(), delegating()):
            with pytest.raises(StopIteration) as stop:
                next(steps)
            ends.append(stop.value.value)
        return ends

    _semaphore("p-by-hand")
    assert asyncio.run(main()) == [result, result]
    assert _metrics("p-by-hand").successes == 2


def test_the_event_codes_the_compiled_twin_uses() -> None:
    assert (_events.SUCCESS, _events.FAILURE, _events.NO_EVENT) == (0, 1, -1)


def test_a_run_that_never_waits_is_not_cancelled_but_late_is_a_timeout() -> None:
    _semaphore("p-late", timeout=5)

    async def blocks() -> str:
        time.sleep(0.03)  # no await: no timer can stop it, the elapsed time still counts
        return "late"

    assert asyncio.run(fasthystrix.do_async("p-late", blocks, lambda err: type(err).__name__)) == "TimeoutError"
    m = _metrics("p-late")
    assert (m.timeouts, m.successes, m.fallback_successes) == (1, 0, 1)


def test_a_run_that_waits_past_its_deadline_is_cancelled() -> None:
    _semaphore("p-waits", timeout=20)
    cancelled: list[bool] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(fasthystrix.TimeoutError):
        asyncio.run(fasthystrix.do_async("p-waits", waits))
    assert cancelled == [True]
    assert _metrics("p-waits").timeouts == 1


def test_tasks_asyncio_run_and_introspection_accept_it() -> None:
    assert asyncio.iscoroutinefunction(fasthystrix.do_async)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(fasthystrix.do_async)

    async def main() -> list[Any]:
        call = fasthystrix.do_async("p-task", _answer)
        assert asyncio.iscoroutine(call)
        task = asyncio.get_running_loop().create_task(call)
        assert "do_async" in repr(task)
        return [await task, await fasthystrix.go_async("p-task", _answer)]

    assert asyncio.run(main()) == [42, 42]
    assert asyncio.run(fasthystrix.do_async("p-task", _answer)) == 42


async def _answer() -> int:
    return 42


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


def test_awaiting_it_twice_raises() -> None:
    async def main() -> None:
        call = fasthystrix.do_async("p-twice", _answer)
        assert await call == 42
        with pytest.raises(RuntimeError):
            await call

    asyncio.run(main())
    assert _metrics("p-twice").successes == 1


def _started(call: Any) -> tuple[Generator[Any, None, Any], Any]:
    steps = call.__await__()
    return steps, steps.send(None)


@pytest.mark.parametrize("how", ["close", "collected"])
def test_stopped_while_waiting_counts_a_failure_and_gives_the_ticket_back(how: str) -> None:
    _semaphore("p-stop", max_concurrent_requests=1)
    seen: list[type[BaseException]] = []

    async def waits() -> None:
        try:
            await _forever()
        except BaseException as exc:
            seen.append(type(exc))
            raise

    async def main() -> None:
        steps, waiting_on = _started(fasthystrix.do_async("p-stop", waits))
        assert isinstance(waiting_on, asyncio.Future)
        assert _metrics("p-stop").concurrent == 1
        if how == "close":
            steps.close()
        else:
            del steps
            gc.collect()
        waiting_on.cancel()

    asyncio.run(main())
    assert seen == [GeneratorExit]
    m = _metrics("p-stop")
    assert (m.failures, m.concurrent) == (1, 0)


def test_thrown_in_while_waiting_reaches_run_and_the_fallback_answers() -> None:
    async def waits() -> None:
        await _forever()

    async def main() -> None:
        steps, waiting_on = _started(fasthystrix.do_async("p-throw", waits, lambda err: f"fallback: {err}"))
        with pytest.raises(StopIteration) as stop:
            steps.throw(Boom("thrown"))
        assert stop.value.value == "fallback: thrown"
        waiting_on.cancel()

    asyncio.run(main())
    m = _metrics("p-throw")
    assert (m.failures, m.fallback_successes, m.concurrent) == (1, 1, 0)


def test_thrown_in_before_it_starts_acquires_nothing() -> None:
    steps = fasthystrix.do_async("p-early", _answer).__await__()
    with pytest.raises(Boom):
        steps.throw(Boom("before"))
    circuit = fasthystrix.get_circuit("p-early")[0]
    assert circuit is None or circuit.metrics().requests == 0


def test_driven_outside_a_task_a_run_that_waits_fails_cleanly() -> None:
    # No running loop: a run that waits could not be timed out. A failure, the ticket back.
    async def waits() -> None:
        await asyncio.sleep(0)

    steps = fasthystrix.do_async("p-no-task", waits).__await__()
    with pytest.raises(RuntimeError, match="asyncio task"):
        steps.send(None)
    m = _metrics("p-no-task")
    assert (m.failures, m.concurrent) == (1, 0)


@hardened_against_failed_allocations
def test_a_failed_allocation_where_run_first_waits_keeps_no_ticket() -> None:
    # Out of memory while the command arms its deadline (the task, the loop's deadlines, the entry):
    # a failure, counted, and the ticket back, as when there is no task to arm it in.
    async def waits() -> str:
        await asyncio.sleep(0)
        return "done"

    async def sweep() -> list[str]:
        fasthystrix.configure_command("p-allocations", fasthystrix.CommandConfig(request_volume_threshold=10_000))

        def ended_at_once(outcome: str) -> None:
            # A command whose first step raised has ended: its ticket is back before its awaitable
            # is dropped (not when a finalizer collects it).
            assert fasthystrix.get_circuit("p-allocations")[0].tickets_in_use == 0, (number, outcome)

        outcomes = []
        for number in range(150):
            call = fasthystrix.do_async("p-allocations", waits)
            outcome = await first_step_failing_allocation(call, number, ended_at_once)
            del call
            assert fasthystrix.get_circuit("p-allocations")[0].tickets_in_use == 0, (number, outcome)
            outcomes.append(outcome)
        return outcomes

    outcomes = asyncio.run(sweep())
    m = _metrics("p-allocations")
    # A step that failed after the command was admitted is its failure (one before admits nothing).
    assert 0 < m.failures <= outcomes.count("raised")
    assert m.successes == outcomes.count("returned after waiting")
    assert outcomes[-10:] == ["returned after waiting"] * 10, outcomes  # past the first step's allocations


def test_awaiting_itself_is_an_error_not_a_second_run() -> None:
    calls: dict[str, Any] = {}

    async def run() -> Any:
        return await calls["self"]

    async def main() -> None:
        calls["self"] = fasthystrix.do_async("p-self", run)
        with pytest.raises((ValueError, RuntimeError)):
            await calls["self"]

    asyncio.run(main())
    m = _metrics("p-self")
    assert (m.failures, m.concurrent) == (1, 0)


@types.coroutine
def _generator_based() -> Generator[Any, None, str]:
    yield  # a bare yield: the task steps it again at once
    return "generator-based"


class _Awaitable:
    def __await__(self) -> Generator[Any, None, str]:
        yield
        return "custom"


@pytest.mark.parametrize(
    ("run", "expected"),
    [(_generator_based, "generator-based"), (_Awaitable, "custom")],
    ids=["types.coroutine", "__await__"],
)
def test_any_awaitable_run_returns(run: Any, expected: str) -> None:
    assert asyncio.run(fasthystrix.do_async("p-awaitables", run)) == expected


# A run is a script: wait some times, then return, raise an Exception or a BaseException.
_scripts = st.tuples(
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["return", "raise", "interrupt"]),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_scripts, min_size=1, max_size=6))
def test_scripted_runs_match_the_model(scripts: list[tuple[int, str, bool]]) -> None:
    """Whatever each run does, the caller sees what outcome()'s rules say and every ending is counted once."""
    fasthystrix.flush()
    _semaphore("p-model", timeout=60_000, request_volume_threshold=10**9)

    async def one(waits: int, ending: str, with_fallback: bool) -> Any:
        async def run() -> str:
            for _ in range(waits):
                await asyncio.sleep(0)
            if ending == "raise":
                raise Boom("failed")
            if ending == "interrupt":
                raise KeyboardInterrupt
            return "value"

        fallback = (lambda err: "fallback") if with_fallback else None
        try:
            return await fasthystrix.do_async("p-model", run, fallback)
        except BaseException as exc:
            return type(exc)

    async def main() -> list[Any]:
        return [await one(*script) for script in scripts]

    seen = asyncio.run(main())
    expected = [
        "value" if ending == "return" else KeyboardInterrupt if ending == "interrupt" else "fallback" if fb else Boom
        for _, ending, fb in scripts
    ]
    assert seen == expected
    m = _metrics("p-model")
    assert m.successes == sum(e == "return" for _, e, _ in scripts)
    assert m.failures == sum(e != "return" for _, e, _ in scripts)
    assert m.fallback_successes == sum(e == "raise" and fb for _, e, fb in scripts)
    assert m.concurrent == 0
