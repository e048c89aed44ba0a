"""@command on sync functions: arguments, fallbacks, every outcome, methods, and both isolations."""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

import pytest

import fasthystrix
from fasthystrix import _impl
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


def test_a_wrapper_keeps_working_across_flush_and_implementation_switch() -> None:
    @fasthystrix.command("switch", config=fasthystrix.CommandConfig(isolation="semaphore"))
    def f(x: int) -> int:
        return x * 2

    assert f(1) == 2
    fasthystrix.flush()
    assert f(2) == 4  # a new circuit after the flush
    other = "pure" if _impl.current().name == "compiled" else "compiled"
    if other not in _impl.available():
        pytest.skip("only one implementation is available")
    _impl.select(other)
    try:
        fasthystrix.flush()
        assert f(3) == 6  # the circuit is the other implementation's now
        assert fasthystrix.get_circuit("switch")[0].metrics().successes == 1
    finally:
        fasthystrix.flush()
        _impl.select("compiled" if other == "pure" else "pure")


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
