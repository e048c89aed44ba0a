"""Bad arguments fail at the call; the error classes, their messages and identities; BaseException propagation."""

from __future__ import annotations

import builtins
import copy
import inspect
import pickle
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import fasthystrix
from fasthystrix import (
    CircuitError,
    CircuitOpenError,
    Context,
    ContextCanceledError,
    ContextDeadlineExceededError,
    FallbackError,
    MaxConcurrencyError,
    _registry,
)
from support import WAIT, wait_until


def _ok() -> str:
    return "ok"


def _ok_c(ctx: Context) -> str:
    return "ok"


# -- bad arguments -----------------------------------------------------------------------------

BAD_NAMES: list[object] = [None, 1, b"name", ["name"], ("n",), 1.5]
BAD_CALLABLES: list[object] = [1, "run", b"x", [], {}, object()]


@pytest.fixture
def existing() -> Any:
    """A live circuit with one success; bad calls must leave it and the table alone."""
    fasthystrix.configure_command("existing", {"isolation": "semaphore"})
    fasthystrix.do("existing", _ok)
    return fasthystrix.get_circuit("existing")[0]


def _assert_registry_unchanged(before: dict[str, Any], existing: Any) -> None:
    after = _registry.circuits()
    assert after.keys() == before.keys()
    assert all(after[name] is circuit for name, circuit in before.items())
    metrics = existing.metrics()
    assert (metrics.requests, metrics.successes, metrics.executed) == (1, 1, 1)
    assert list(fasthystrix.get_circuit_settings()) == ["existing"]


def _calls_with_name(name: object) -> list[Callable[[], object]]:
    ctx = Context.background()
    return [
        lambda: fasthystrix.do(name, _ok),
        lambda: fasthystrix.go(name, _ok),  # type: ignore[arg-type]
        lambda: fasthystrix.do_c(ctx, name, _ok_c),  # type: ignore[arg-type]
        lambda: fasthystrix.go_c(ctx, name, _ok_c),  # type: ignore[arg-type]
        lambda: fasthystrix.do(name, _ok, lambda err: None),
        lambda: fasthystrix.get_circuit(name),  # type: ignore[arg-type]
        lambda: fasthystrix.configure_command(name, {}),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_non_str_name_raises_type_error_before_any_circuit(name: object, existing: Any) -> None:
    before = _registry.circuits()
    for call in _calls_with_name(name):
        with pytest.raises(TypeError) as info:
            call()
        assert "name" in str(info.value)
    _assert_registry_unchanged(before, existing)


@pytest.mark.parametrize("run", [None, *BAD_CALLABLES], ids=repr)
def test_non_callable_run_raises_type_error_before_any_circuit(run: object, existing: Any) -> None:
    before = _registry.circuits()
    ctx = Context.background()
    calls: list[Callable[[], object]] = [
        lambda: fasthystrix.do("new", run),
        lambda: fasthystrix.go("new", run),  # type: ignore[arg-type]
        lambda: fasthystrix.do_c(ctx, "new", run),  # type: ignore[arg-type]
        lambda: fasthystrix.go_c(ctx, "new", run),  # type: ignore[arg-type]
        lambda: fasthystrix.do("existing", run),
    ]
    for call in calls:
        with pytest.raises(TypeError) as info:
            call()
        assert "run" in str(info.value)
    _assert_registry_unchanged(before, existing)


@pytest.mark.parametrize("fallback", BAD_CALLABLES, ids=repr)
def test_non_callable_fallback_raises_type_error_before_any_circuit(fallback: object, existing: Any) -> None:
    before = _registry.circuits()
    ctx = Context.background()
    calls: list[Callable[[], object]] = [
        lambda: fasthystrix.do("new", _ok, fallback),
        lambda: fasthystrix.go("new", _ok, fallback),  # type: ignore[arg-type]
        lambda: fasthystrix.do_c(ctx, "new", _ok_c, fallback),  # type: ignore[arg-type]
        lambda: fasthystrix.go_c(ctx, "new", _ok_c, fallback),  # type: ignore[arg-type]
        lambda: fasthystrix.do("existing", _ok, fallback),
    ]
    for call in calls:
        with pytest.raises(TypeError) as info:
            call()
        assert "fallback" in str(info.value)
    _assert_registry_unchanged(before, existing)


@pytest.mark.parametrize("ctx", [None, "ctx", 1, object(), threading.Event()], ids=repr)
def test_non_context_ctx_raises_type_error_before_any_circuit(ctx: object, existing: Any) -> None:
    before = _registry.circuits()
    ran: list[object] = []
    for call in (fasthystrix.do_c, fasthystrix.go_c):
        for name in ("new", "existing"):
            with pytest.raises(TypeError) as info:
                call(ctx, name, ran.append)  # type: ignore[arg-type]
            assert "ctx" in str(info.value)
    assert ran == []
    _assert_registry_unchanged(before, existing)


def test_go_raises_at_the_call_not_in_the_future(existing: Any) -> None:
    before = _registry.circuits()
    with pytest.raises(TypeError):
        fasthystrix.go("new", None)  # type: ignore[arg-type]
    _assert_registry_unchanged(before, existing)


# -- error classes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (fasthystrix.CircuitOpenError, "circuit open"),
        (fasthystrix.MaxConcurrencyError, "max concurrency"),
        (fasthystrix.TimeoutError, "timeout"),
    ],
)
def test_circuit_error_messages(cls: type[CircuitError], message: str) -> None:
    err = cls()
    assert err.message == message
    assert str(err) == "hystrix: " + message
    assert isinstance(err, CircuitError)
    assert isinstance(err, Exception)


def test_circuit_error_base() -> None:
    err = CircuitError("metrics channel (x) is at capacity")
    assert err.message == "metrics channel (x) is at capacity"
    assert str(err) == "hystrix: metrics channel (x) is at capacity"


def test_aliases_are_the_classes() -> None:
    assert fasthystrix.ErrCircuitOpen is fasthystrix.CircuitOpenError
    assert fasthystrix.ErrMaxConcurrency is fasthystrix.MaxConcurrencyError
    assert fasthystrix.ErrTimeout is fasthystrix.TimeoutError


def test_timeout_error_is_a_builtin_timeout_error() -> None:
    assert issubclass(fasthystrix.TimeoutError, builtins.TimeoutError)
    assert fasthystrix.TimeoutError is not builtins.TimeoutError
    err = fasthystrix.TimeoutError()
    assert isinstance(err, builtins.TimeoutError)
    assert str(err) == "hystrix: timeout"


def test_timeout_raised_by_a_call_is_caught_as_builtin_timeout_error() -> None:
    fasthystrix.configure_command("to", {"timeout": 10})
    release = threading.Event()
    try:
        with pytest.raises(builtins.TimeoutError) as info:
            fasthystrix.do("to", lambda: release.wait(2 * WAIT))
    finally:
        release.set()
    assert isinstance(info.value, fasthystrix.ErrTimeout)
    assert str(info.value) == "hystrix: timeout"


def test_context_error_messages() -> None:
    assert str(ContextCanceledError()) == "context canceled"
    assert str(ContextDeadlineExceededError()) == "context deadline exceeded"


def test_fallback_error_text_and_attributes() -> None:
    fallback_err = ValueError("fallback_error")
    run_err = RuntimeError("run_error")
    err = FallbackError(fallback_err, run_err)
    assert str(err) == "fallback failed with 'fallback_error'. run error was 'run_error'"
    assert err.fallback_error is fallback_err
    assert err.run_error is run_err


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_failed_fallback_raises_fallback_error(isolation: str) -> None:
    fasthystrix.configure_command("ff", {"isolation": isolation})
    run_err = RuntimeError("run_error")
    fallback_err = ValueError("fallback_error")
    seen: list[BaseException] = []

    def run() -> None:
        raise run_err

    def fallback(err: BaseException) -> None:
        seen.append(err)
        raise fallback_err

    with pytest.raises(FallbackError) as info:
        fasthystrix.do("ff", run, fallback)
    err = info.value
    assert str(err) == "fallback failed with 'fallback_error'. run error was 'run_error'"
    assert err.fallback_error is fallback_err
    assert err.run_error is run_err
    assert err.__cause__ is fallback_err
    assert seen == [run_err]
    assert seen[0] is run_err
    metrics = fasthystrix.get_circuit("ff")[0].metrics()
    assert (metrics.failures, metrics.fallback_failures) == (1, 1)


def test_failed_fallback_after_timeout_names_hystrix_timeout() -> None:
    fasthystrix.configure_command("fft", {"timeout": 10})
    release = threading.Event()

    def fallback(err: BaseException) -> None:
        raise ValueError("x")

    try:
        with pytest.raises(FallbackError) as info:
            fasthystrix.do("fft", lambda: release.wait(2 * WAIT), fallback)
    finally:
        release.set()
    assert str(info.value) == "fallback failed with 'x'. run error was 'hystrix: timeout'"
    assert isinstance(info.value.run_error, fasthystrix.TimeoutError)


def _tb_length(exc: BaseException) -> int:
    return len(traceback.extract_tb(exc.__traceback__))


def _catch(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError("no exception")


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("outcome", ["short-circuit", "rejected", "timeout"])
def test_each_failing_call_raises_a_fresh_exception(isolation: str, outcome: str) -> None:
    name = f"fresh-{outcome}"
    config: dict[str, object] = {"isolation": isolation}
    expected: type[BaseException]
    release = threading.Event()
    if outcome == "rejected":
        config["max_concurrent_requests"] = 0
        expected = MaxConcurrencyError
    elif outcome == "timeout":
        config["timeout"] = 0
        expected = fasthystrix.TimeoutError
    else:
        expected = CircuitOpenError
    fasthystrix.configure_command(name, config)
    if outcome == "short-circuit":
        fasthystrix.get_circuit(name)[0].force_open = True

    def run() -> str:
        if isolation == "semaphore":
            threading.Event().wait(0.002)
        else:
            release.wait(2 * WAIT)
        return "late"

    try:
        errors = [_catch(lambda: fasthystrix.do(name, run)) for _ in range(5)]
        futures = [fasthystrix.go(name, run) for _ in range(2)]
        errors += [f.exception(WAIT) for f in futures]  # type: ignore[misc]
    finally:
        release.set()
    assert all(type(e) is expected for e in errors)
    assert len({id(e) for e in errors}) == len(errors)
    lengths = [_tb_length(e) for e in errors[:5]]
    assert lengths[-1] == lengths[0], lengths
    assert all(e.__context__ is None for e in errors[:5])


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_run_exception_is_raised_unchanged_without_fallback(isolation: str) -> None:
    fasthystrix.configure_command("own", {"isolation": isolation})
    mine = KeyError("mine")

    def run() -> None:
        raise mine

    def run_c(ctx: Context) -> None:
        raise mine

    with pytest.raises(KeyError) as info:
        fasthystrix.do("own", run)
    assert info.value is mine
    with pytest.raises(KeyError) as info:
        fasthystrix.do_c(Context(), "own", run_c)
    assert info.value is mine
    assert fasthystrix.go("own", run).exception(WAIT) is mine
    assert fasthystrix.go_c(Context(), "own", run_c).exception(WAIT) is mine
    assert fasthystrix.get_circuit("own")[0].metrics().failures == 4


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_fallback_receives_run_exception_unchanged(isolation: str) -> None:
    fasthystrix.configure_command("own-fb", {"isolation": isolation})
    mine = KeyError("mine")
    seen: list[BaseException] = []

    def run() -> None:
        raise mine

    def fallback(err: BaseException) -> str:
        seen.append(err)
        return "fb"

    assert fasthystrix.do("own-fb", run, fallback) == "fb"
    assert fasthystrix.go("own-fb", run, fallback).result(WAIT) == "fb"
    assert len(seen) == 2
    assert all(err is mine for err in seen)


# -- BaseException in run or fallback ---------------------------------------------------------


class CustomBase(BaseException):
    """Neither an Exception nor one of the builtins: must propagate too."""


BASE_EXCEPTIONS: list[Callable[[], BaseException]] = [KeyboardInterrupt, lambda: SystemExit(3), CustomBase]


@pytest.mark.parametrize("make", BASE_EXCEPTIONS, ids=["KeyboardInterrupt", "SystemExit", "CustomBase"])
@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do", "go", "do_c", "go_c"])
@pytest.mark.parametrize("where", ["run", "fallback"])
def test_base_exception_propagates_after_ticket_and_event(
    make: Callable[[], BaseException], isolation: str, via: str, where: str
) -> None:
    name = "base"
    fasthystrix.configure_command(name, {"isolation": isolation})
    circuit, _ = fasthystrix.get_circuit(name)
    exc = make()
    tickets_seen: list[int] = []

    def run(*_: object) -> None:
        if where == "run":
            raise exc
        raise RuntimeError("plain failure")

    def fallback(*_: object) -> str:
        if where == "fallback":
            tickets_seen.append(circuit.tickets_in_use)
            raise exc
        return "swallowed"

    ctx = Context()
    if via == "do":
        with pytest.raises(BaseException) as info:
            fasthystrix.do(name, run, fallback)
        raised = info.value
    elif via == "do_c":
        with pytest.raises(BaseException) as info:
            fasthystrix.do_c(ctx, name, run, fallback)
        raised = info.value
    else:
        future = fasthystrix.go(name, run, fallback) if via == "go" else fasthystrix.go_c(ctx, name, run, fallback)
        raised = future.exception(WAIT)  # type: ignore[assignment]
        with pytest.raises(type(exc)):
            future.result(0)
    assert raised is exc
    assert circuit.tickets_in_use == 0
    metrics = circuit.metrics()
    assert metrics.requests == 1
    assert metrics.failures == 1
    assert metrics.concurrent == 0
    if where == "fallback":
        assert tickets_seen == [0]
        assert metrics.fallback_failures == 1
        assert metrics.fallback_successes == 0
    else:
        assert metrics.fallback_successes == 0
    assert fasthystrix.do(name, _ok) == "ok"


# -- errors survive pickling and copying (process pools, logging handlers, copy.copy) -------------


@pytest.mark.parametrize(
    "make",
    [
        CircuitOpenError,
        MaxConcurrencyError,
        fasthystrix.TimeoutError,
        lambda: CircuitError("custom"),
        ContextCanceledError,
        ContextDeadlineExceededError,
        lambda: FallbackError(ValueError("f"), fasthystrix.TimeoutError()),
    ],
    ids=["open", "max", "timeout", "base", "canceled", "deadline", "fallback"],
)
def test_errors_round_trip_through_pickle_and_copy(make: Callable[[], BaseException]) -> None:
    err = make()
    for clone in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert type(clone) is type(err)
        assert str(clone) == str(err)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do", "go"])
@pytest.mark.parametrize("outcome", ["short-circuit", "rejected", "timeout"])
def test_base_exception_in_fallback_after_circuit_outcome(isolation: str, via: str, outcome: str) -> None:
    name = "base-fb"
    config: dict[str, object] = {"isolation": isolation}
    if outcome == "rejected":
        config["max_concurrent_requests"] = 0
    if outcome == "timeout":
        config["timeout"] = 0
    fasthystrix.configure_command(name, config)
    circuit, _ = fasthystrix.get_circuit(name)
    if outcome == "short-circuit":
        circuit.force_open = True
    exc = KeyboardInterrupt()
    gate = threading.Event()

    def run() -> str:
        if isolation == "semaphore":
            threading.Event().wait(0.002)
        else:
            gate.wait(2 * WAIT)
        return "late"

    def fallback(err: BaseException) -> str:
        raise exc

    try:
        if via == "do":
            with pytest.raises(KeyboardInterrupt) as info:
                fasthystrix.do(name, run, fallback)
            raised = info.value
        else:
            raised = fasthystrix.go(name, run, fallback).exception(WAIT)  # type: ignore[assignment]
    finally:
        gate.set()
    assert raised is exc
    wait_until(lambda: circuit.tickets_in_use == 0, "the ticket back")
    metrics = circuit.metrics()
    assert metrics.requests == 1
    assert metrics.fallback_failures == 1
    field = {"short-circuit": "short_circuits", "rejected": "rejects", "timeout": "timeouts"}[outcome]
    assert getattr(metrics, field) == 1


def _raise_canceled() -> None:
    raise fasthystrix.ContextCanceledError()


def _raise_from_c() -> None:
    int("not a number")


@pytest.mark.parametrize("clock", ["real", "fake"])
@pytest.mark.parametrize(
    ("raiser", "event"),
    [(_raise_from_c, "failures"), (_raise_canceled, "context_canceled")],
)
def test_run_exception_traceback_has_no_frame_of_fasthystrix(
    clock: str, raiser: Callable[[], None], event: str, request: pytest.FixtureRequest, impl: str
) -> None:
    """Without a fallback, run's exception reaches the caller as run raised it: the compiled twin adds no frame."""
    if clock == "fake":
        request.getfixturevalue("clock")  # a ManualClock: the same path, with the clock frozen
    fasthystrix.configure_command("tb", {"isolation": "semaphore"})

    def run() -> None:
        raiser()

    for _ in range(3):
        exc = _catch(lambda: fasthystrix.do("tb", run))
        names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
        if impl == "compiled":
            assert names == ["_catch", "<lambda>", "run", raiser.__name__], names
        else:  # the pure twin's own frames are in between
            assert names[:2] == ["_catch", "<lambda>"] and names[-2:] == ["run", raiser.__name__], names
        assert exc.__context__ is None
    assert getattr(fasthystrix.get_circuit("tb")[0].metrics(), event) == 3


# -- a sync command whose run is async ---------------------------------------------------------


async def _fetch() -> str:
    return "never awaited"


def _call(via: str, name: str, run: Callable[..., Any], fallback: Callable[..., Any]) -> object:
    """Call ``name`` the way ``via`` says and return its value (or raise its error)."""
    ctx = Context()
    if via == "do":
        return fasthystrix.do(name, run, fallback)
    if via == "do_c":
        return fasthystrix.do_c(ctx, name, lambda _ctx: run(), lambda _ctx, err: fallback(err))
    if via == "go":
        return fasthystrix.go(name, run, fallback).result(WAIT)
    return fasthystrix.go_c(ctx, name, lambda _ctx: run(), lambda _ctx, err: fallback(err)).result(WAIT)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do", "do_c", "go", "go_c"])
def test_run_returning_a_coroutine_is_a_type_error_and_a_failure(impl: str, isolation: str, via: str) -> None:
    """``do(name, async_fn)`` used to hand back an un-awaited coroutine and count a success."""
    fasthystrix.configure_command("async-run", {"isolation": isolation})
    circuit = fasthystrix.get_circuit("async-run")[0]
    coroutines: list[Any] = []
    fallbacks: list[BaseException] = []

    def run() -> Any:
        coroutines.append(_fetch())
        return coroutines[-1]

    try:
        # Three calls: the first takes the pure twin's locked path, the next ones its lock-free path.
        for _ in range(3):
            with pytest.raises(TypeError, match=r"run returned a coroutine \(_fetch\).*do_async / go_async") as info:
                _call(via, "async-run", run, fallbacks.append)
            assert "do_async" in str(info.value)
        assert len(coroutines) == 3
        assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in coroutines)
        assert fallbacks == []
        assert circuit.tickets_in_use == 0
        metrics = circuit.metrics()
        assert (metrics.requests, metrics.failures, metrics.successes) == (3, 3, 0)
        assert (metrics.fallback_successes, metrics.fallback_failures) == (0, 0)
        assert _call(via, "async-run", _ok, fallbacks.append) == "ok"
    finally:
        for c in coroutines:
            c.close()  # on the implementation that does not check yet: no "never awaited" warning


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do", "do_c", "go", "go_c"])
def test_trial_returning_a_coroutine_reopens_the_circuit(impl: str, isolation: str, via: str, clock: Any) -> None:
    fasthystrix.configure_command(
        "async-trial", {"isolation": isolation, "request_volume_threshold": 1, "sleep_window": 100, "timeout": 60_000}
    )
    circuit = fasthystrix.get_circuit("async-trial")[0]
    fallbacks: list[BaseException] = []
    assert _call(via, "async-trial", _raise_runtime_error, fallbacks.append) is None
    assert circuit.is_open()
    clock.advance(ms=101)
    coroutine = _fetch()
    try:
        with pytest.raises(TypeError, match="do_async"):
            _call(via, "async-trial", lambda: coroutine, fallbacks.append)
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
        assert [type(err) for err in fallbacks] == [RuntimeError]
        assert circuit.state() == "open"
        assert _call(via, "async-trial", _ok, fallbacks.append) is None
        assert [type(err) for err in fallbacks] == [RuntimeError, CircuitOpenError]
        assert circuit.metrics().failures == 2
    finally:
        coroutine.close()


def _raise_runtime_error() -> None:
    raise RuntimeError("down")


# -- errors whose text cannot be had -------------------------------------------------------------


class _StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _StrNotAString(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class _StrRecurses(Exception):
    def __str__(self) -> str:
        return str(self)


UNPRINTABLE: list[type[Exception]] = [_StrRaises, _StrNotAString, _StrRecurses]


@pytest.mark.parametrize("cls", UNPRINTABLE, ids=lambda c: c.__name__)
def test_fallback_error_survives_errors_without_text(cls: type[Exception]) -> None:
    """``FallbackError`` called ``str()`` on both errors, so it raised RuntimeError, TypeError or RecursionError."""
    bad = cls()
    err = FallbackError(bad, ValueError("run"))
    assert str(err) == f"fallback failed with '<unprintable {cls.__name__} object>'. run error was 'run'"
    assert err.fallback_error is bad
    err = FallbackError(ValueError("fallback"), bad)
    assert str(err) == f"fallback failed with 'fallback'. run error was '<unprintable {cls.__name__} object>'"
    assert err.run_error is bad
    assert "".join(traceback.format_exception(err))  # and it prints


@pytest.mark.parametrize("cls", UNPRINTABLE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_failing_fallback_with_unprintable_errors_is_a_fallback_error(cls: type[Exception], isolation: str) -> None:
    fasthystrix.configure_command("unprintable", {"isolation": isolation})
    run_error, fallback_error = cls(), cls()

    def run() -> None:
        raise run_error

    def fallback(err: BaseException) -> None:
        raise fallback_error

    with pytest.raises(FallbackError) as info:
        fasthystrix.do("unprintable", run, fallback)
    assert info.value.run_error is run_error
    assert info.value.fallback_error is fallback_error
    assert info.value.__cause__ is fallback_error
    metrics = fasthystrix.get_circuit("unprintable")[0].metrics()
    assert (metrics.failures, metrics.fallback_failures) == (1, 1)
