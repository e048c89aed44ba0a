"""@command on sync functions: arguments, fallbacks, every outcome, methods, and both isolations."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS
from support import WAIT


def metrics(name: str) -> fasthystrix.MetricsSnapshot:
    return fasthystrix.get_circuit(name)[0].metrics()


@pytest.fixture(params=["semaphore", "thread"])
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_arguments_pass_through_to_function_and_fallback(isolation: str) -> None:
    seen: list[tuple[Any, ...]] = []

    def fallback(*args: Any, err: BaseException, **kwargs: Any) -> str:
        seen.append((args, kwargs, type(err)))
        return "fb"

    @fasthystrix.command("args", fallback=fallback, config=fasthystrix.CommandConfig(isolation=isolation))
    def f(a: int, b: int = 0, *rest: int, key: str = "k", **extra: Any) -> tuple[Any, ...]:
        if a < 0:
            raise ValueError(a)
        return (a, b, rest, key, extra)

    assert f(1) == (1, 0, (), "k", {})
    assert f(1, 2, 3, 4, key="x", z=9) == (1, 2, (3, 4), "x", {"z": 9})
    assert f(-1, 5, key="y") == "fb"
    assert f(-2) == "fb"
    assert seen == [((-1, 5), {"key": "y"}, ValueError), ((-2,), {}, ValueError)]
    m = metrics("args")
    assert (m.successes, m.failures, m.fallback_successes) == (2, 2, 2)


def test_without_fallback_the_functions_exception_propagates_unchanged(isolation: str) -> None:
    error = KeyError("missing")

    @fasthystrix.command("raw", config=fasthystrix.CommandConfig(isolation=isolation))
    def f(x: int) -> int:
        raise error

    with pytest.raises(KeyError) as info:
        f(1)
    assert info.value is error
    assert metrics("raw").failures == 1


def test_rejection_short_circuit_and_timeout_reach_the_fallback_with_the_arguments() -> None:
    got: list[tuple[int, str]] = []

    def fallback(x: int, *args: Any, err: BaseException, **kwargs: Any) -> int:
        got.append((x, type(err).__name__))
        return -x

    config = fasthystrix.CommandConfig(isolation="semaphore", max_concurrent_requests=1, timeout=20)

    @fasthystrix.command("outcomes", fallback=fallback, config=config)
    def f(x: int, hold: threading.Event | None = None, sleep: float = 0.0) -> int:
        if hold is not None:
            entered.set()
            hold.wait(2 * WAIT)
        time.sleep(sleep)
        return x

    entered = threading.Event()
    release = threading.Event()
    holder = threading.Thread(target=f, args=(1, release))
    holder.start()
    assert entered.wait(WAIT)
    assert f(2) == -2  # rejected: the only ticket is held
    release.set()
    holder.join(WAIT)
    assert f(3, sleep=0.05) == -3  # ran past its deadline: a timeout
    fasthystrix.get_circuit("outcomes")[0].force_open = True
    assert f(4) == -4  # short-circuited
    # (The held call, x=1, may itself have run past 20 ms: that one is not asserted.)
    assert [(x, name) for x, name in got if x != 1] == [
        (2, "MaxConcurrencyError"),
        (3, "TimeoutError"),
        (4, "CircuitOpenError"),
    ]
    m = metrics("outcomes")
    held_timed_out = (1, "TimeoutError") in got
    assert (m.rejects, m.timeouts - held_timed_out, m.short_circuits) == (1, 1, 1)


def test_fallback_failure_is_a_fallback_error() -> None:
    def fallback(x: int, *, err: BaseException) -> int:
        raise LookupError("no cache")

    @fasthystrix.command("fb-fails", fallback=fallback, config=fasthystrix.CommandConfig(isolation="semaphore"))
    def f(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(fasthystrix.FallbackError) as info:
        f(1)
    assert isinstance(info.value.__cause__, LookupError)
    assert metrics("fb-fails").fallback_failures == 1


def test_base_exception_propagates_after_the_ticket_is_back() -> None:
    @fasthystrix.command("interrupt", config=fasthystrix.CommandConfig(isolation="semaphore"))
    def f() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        f()
    circuit = fasthystrix.get_circuit("interrupt")[0]
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().failures == 1


def test_decorated_methods_bind_self() -> None:
    class Client:
        def __init__(self, base: int) -> None:
            self.base = base

        @fasthystrix.command("method", fallback=lambda self, x, err: self.base - x)
        def fetch(self, x: int) -> int:
            if x < 0:
                raise ValueError(x)
            return self.base + x

        @staticmethod
        @fasthystrix.command("static")
        def ping() -> str:
            return "pong"

    client = Client(100)
    assert client.fetch(1) == 101
    assert client.fetch(-1) == 101
    assert Client.fetch(client, 2) == 102
    assert Client.ping() == "pong"
    assert metrics("method").successes == 2


def test_wrapper_looks_like_the_function() -> None:
    def original(x: int, y: str = "a") -> str:
        """Doc of the original."""
        return y * x

    wrapped = fasthystrix.command()(original)
    assert wrapped.__name__ == "original"
    assert wrapped.__doc__ == "Doc of the original."
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
    assert wrapped.command_name == original.__qualname__  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert "original" in repr(wrapped)
    assert wrapped(2, y="b") == "bb"


def test_a_wrapper_keeps_working_across_flush() -> None:
    @fasthystrix.command("switch", config=fasthystrix.CommandConfig(isolation="semaphore"))
    def f(x: int) -> int:
        return x * 2

    assert f(1) == 2
    first = fasthystrix.get_circuit("switch")[0]
    fasthystrix.flush()
    assert f(2) == 4  # a new circuit after the flush
    second = fasthystrix.get_circuit("switch")[0]
    assert second is not first
    # A shared circuit's old object reads the file's window, as the new one does.
    assert (first.metrics().successes, second.metrics().successes) == (1 if SHARED_TESTS else 0, 1)


def test_threads_hammering_a_decorated_function_lose_no_event_and_no_ticket() -> None:
    config = fasthystrix.CommandConfig(isolation="semaphore", max_concurrent_requests=4, request_volume_threshold=10**6)

    @fasthystrix.command("hammer", fallback=lambda i, err: None, config=config)
    def f(i: int) -> int:
        if i % 3 == 0:
            raise ValueError(i)
        return i

    def worker() -> None:
        for i in range(2000):
            f(i)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = metrics("hammer")
    assert m.requests == 8000
    assert m.successes + m.failures + m.rejects == 8000
    assert m.fallback_successes == m.failures + m.rejects
    assert fasthystrix.get_circuit("hammer")[0].tickets_in_use == 0


# -- sync and async must match -------------------------------------------------------------------


async def _fetch(x: int) -> int:
    return x


def test_sync_function_returning_a_coroutine_is_a_type_error(impl: str, isolation: str) -> None:
    """A sync function that hands back a coroutine (a forgotten ``await``, a wrapper around an
    ``async def``) used to return it un-awaited and count a success."""
    made: list[Any] = []
    fallbacks: list[BaseException] = []

    def fallback(x: int, *, err: BaseException) -> str:
        fallbacks.append(err)
        return "fallback"

    @fasthystrix.command("returns-coro", fallback=fallback, config=fasthystrix.CommandConfig(isolation=isolation))
    def f(x: int) -> Any:
        made.append(_fetch(x))
        return made[-1]

    try:
        for x in range(3):
            with pytest.raises(TypeError, match=r"run returned a coroutine \(_fetch\).*do_async"):
                f(x)
        assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in made)
        assert fallbacks == []
        m = metrics("returns-coro")
        assert (m.requests, m.failures, m.successes, m.fallback_successes, m.concurrent) == (3, 3, 0, 0, 0)
    finally:
        for c in made:
            c.close()


def test_async_fallback_for_a_sync_function_is_refused_at_decoration() -> None:
    async def fallback(*, err: BaseException) -> str:
        return "never awaited"

    decorate = fasthystrix.command("mixed", fallback=fallback, config=fasthystrix.CommandConfig(timeout=5))
    with pytest.raises(TypeError, match=r"is async but .* is not"):

        @decorate
        def f() -> str:
            return "sync"

    assert "mixed" not in fasthystrix.get_circuit_settings()


def test_object_with_async_call_gets_the_async_wrapper() -> None:
    class Fetcher:
        async def __call__(self, x: int) -> int:
            return x * 2

    async def fallback(x: int, *, err: BaseException) -> int:
        return -1

    fetch = fasthystrix.command("fetcher", fallback=fallback)(Fetcher())
    assert inspect.iscoroutinefunction(fetch)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(fetch(21)) == 42
    finally:
        loop.close()
    assert metrics("fetcher").successes == 1


def test_callable_without_qualname_needs_a_name() -> None:
    class Plain:
        def __call__(self) -> str:
            return "ok"

    with pytest.raises(TypeError, match="needs a name"):
        fasthystrix.command()(Plain())
    named = fasthystrix.command("plain")(Plain())
    assert named() == "ok"
