"""What a command's outcome is, beyond hystrix-go's rule: ``ignore`` (errors that are neither success
nor failure, Hystrix's bad requests), through every entry point, both isolations and host-wide."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix import CommandConfig
from fasthystrix._core import _shared
from fasthystrix._core._config import Settings, get_defaults
from support import WAIT, FakeClock, sharing


class BadArgument(ValueError):
    pass


def _raiser(exc: BaseException) -> Callable[[], Any]:
    def run() -> Any:
        raise exc

    return run


def _via_do(name: str, run: Callable[[], Any], fallback: Any) -> Any:
    return fasthystrix.do(name, run, fallback)


def _via_go(name: str, run: Callable[[], Any], fallback: Any) -> Any:
    return fasthystrix.go(name, run, fallback).result(WAIT)


def _via_do_c(name: str, run: Callable[[], Any], fallback: Any) -> Any:
    ctx_fallback = None if fallback is None else (lambda ctx, err: fallback(err))
    return fasthystrix.do_c(fasthystrix.Context(), name, lambda ctx: run(), ctx_fallback)


def _via_go_c(name: str, run: Callable[[], Any], fallback: Any) -> Any:
    ctx_fallback = None if fallback is None else (lambda ctx, err: fallback(err))
    return fasthystrix.go_c(fasthystrix.Context(), name, lambda ctx: run(), ctx_fallback).result(WAIT)


def _via_do_async(name: str, run: Callable[[], Any], fallback: Any) -> Any:
    async def arun() -> Any:
        return run()

    return asyncio.run(fasthystrix.do_async(name, arun, fallback))


def _via_decorator(name: str, run: Callable[[], Any], fallback: Any) -> Any:
    decorated_fallback = None if fallback is None else (lambda *, err: fallback(err))

    @fasthystrix.command(name, fallback=decorated_fallback)
    def decorated() -> Any:
        return run()

    return decorated()


ENTRY_POINTS: dict[str, Callable[[str, Callable[[], Any], Any], Any]] = {
    "do": _via_do,
    "go": _via_go,
    "do_c": _via_do_c,
    "go_c": _via_go_c,
    "do_async": _via_do_async,
    "decorator": _via_decorator,
}

IGNORE_FORMS: dict[str, Any] = {
    "type": BadArgument,
    "tuple": (KeyError, BadArgument),
    "predicate": lambda exc: isinstance(exc, BadArgument) and "bad" in str(exc),
}


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, "ValueError", int, (ValueError, 1), [ValueError], (ValueError, (KeyError,))])
def test_ignore_takes_error_types_or_a_predicate(value: object) -> None:
    before = fasthystrix.configure_command("ignore-bad", {"ignore": KeyError})
    with pytest.raises(TypeError, match="ignore"):
        fasthystrix.configure_command("ignore-bad", {"ignore": value})
    with pytest.raises(TypeError, match="ignore"):
        CommandConfig(ignore=value)  # type: ignore[arg-type]
    assert fasthystrix.get_circuit_settings()["ignore-bad"] is before
    assert before.ignore is KeyError
    assert fasthystrix.get_defaults().ignore is None


def test_ignore_is_in_the_settings_and_the_defaults() -> None:
    settings = fasthystrix.configure_command("ignore-settings", CommandConfig(ignore=(KeyError, BadArgument)))
    assert fasthystrix.get_circuit_settings()["ignore-settings"].ignore == (KeyError, BadArgument)
    fasthystrix.set_defaults(CommandConfig(ignore=KeyError))
    assert fasthystrix.configure_command("ignore-default", {}).ignore is KeyError
    # () ignores nothing, and overrides a default.
    nothing = fasthystrix.configure_command("ignore-nothing", {"ignore": ()})
    assert nothing.ignore == ()
    assert settings.ignore == (KeyError, BadArgument)


# -- behaviour ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", IGNORE_FORMS)
@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_ignored_error_reaches_the_caller_without_the_fallback(entry: str, isolation: str, form: str) -> None:
    name = f"ignore-{entry}-{isolation}-{form}"
    fasthystrix.configure_command(
        name, CommandConfig(ignore=IGNORE_FORMS[form], isolation=isolation, request_volume_threshold=1)
    )
    call = ENTRY_POINTS[entry]
    fallbacks: list[BaseException] = []

    def fallback(err: BaseException) -> str:
        fallbacks.append(err)
        return "fallback"

    bad = BadArgument("bad argument")
    for _ in range(3):
        with pytest.raises(BadArgument) as raised:
            call(name, _raiser(bad), fallback)
        assert raised.value is bad
    with pytest.raises(BadArgument):
        call(name, _raiser(bad), None)
    assert fallbacks == []
    circuit = fasthystrix.get_circuit(name)[0]
    m = circuit.metrics()
    # Neither success nor failure: not a request, not an error, so no trip at a volume of 1.
    assert (m.bad_requests, m.requests, m.errors, m.failures, m.error_percent) == (4, 0, 0, 0, 0)
    assert circuit.state() == "closed"
    assert call(name, lambda: "ok", fallback) == "ok"
    # An error ignore does not accept is a failure, as always: the fallback gets it.
    other = RuntimeError("down")
    assert call(name, _raiser(other), fallback) == "fallback"
    assert fallbacks == [other]
    m = circuit.metrics()
    assert (m.bad_requests, m.requests, m.successes, m.failures, m.fallback_successes) == (4, 2, 1, 1, 1)


def test_a_timeout_comes_before_ignore(clock: FakeClock) -> None:
    fasthystrix.configure_command("ignore-late", CommandConfig(ignore=BadArgument, isolation="semaphore", timeout=100))

    def late() -> None:
        clock.advance(ms=150)
        raise BadArgument("bad, and late")

    err = fasthystrix.do("ignore-late", late, lambda err: err)
    assert isinstance(err, fasthystrix.TimeoutError)
    m = fasthystrix.get_circuit("ignore-late")[0].metrics()
    assert (m.timeouts, m.bad_requests) == (1, 0)


def test_context_errors_stay_context_events_even_if_ignored() -> None:
    fasthystrix.configure_command("ignore-ctx", CommandConfig(ignore=Exception, isolation="semaphore"))
    err = fasthystrix.do("ignore-ctx", _raiser(fasthystrix.ContextCanceledError()), lambda err: err)
    assert isinstance(err, fasthystrix.ContextCanceledError)
    m = fasthystrix.get_circuit("ignore-ctx")[0].metrics()
    assert (m.context_canceled, m.bad_requests) == (1, 0)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_a_bad_request_on_the_trial_keeps_the_circuit_open(clock: FakeClock, isolation: str) -> None:
    # Hystrix (AbstractCommand's handleFallback) marks every error "non-success" before it tells a
    # bad request apart: half-open goes back to open. So here: the trial ends, the circuit stays open.
    changes: list[tuple[str, str]] = []
    fasthystrix.on_state_change(lambda name, old, new: changes.append((old, new)))
    fasthystrix.configure_command(
        "ignore-trial",
        CommandConfig(ignore=BadArgument, isolation=isolation, request_volume_threshold=2, sleep_window=1000),
    )
    circuit = fasthystrix.get_circuit("ignore-trial")[0]
    for _ in range(3):
        fasthystrix.do("ignore-trial", _raiser(RuntimeError("down")), lambda err: None)
    assert circuit.state() == "open"
    clock.advance(1.5)
    with pytest.raises(BadArgument):
        fasthystrix.do("ignore-trial", _raiser(BadArgument("bad")), lambda err: None)
    assert circuit.state() == "open"
    assert ("open", "half-open") in changes and changes[-1] == ("half-open", "open")
    assert isinstance(fasthystrix.do("ignore-trial", lambda: "ran", lambda err: err), fasthystrix.CircuitOpenError)
    clock.advance(1.5)
    assert fasthystrix.do("ignore-trial", lambda: "ran") == "ran"  # the next trial succeeds: closed
    assert circuit.state() == "closed"
    assert circuit.tickets_in_use == 0


def test_a_predicate_that_raises_leaves_the_error_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    def predicate(exc: BaseException) -> bool:
        raise LookupError("predicate bug")

    fasthystrix.configure_command("ignore-buggy", CommandConfig(ignore=predicate, isolation="semaphore"))
    down = RuntimeError("down")
    with caplog.at_level(logging.ERROR, logger="fasthystrix"):
        assert fasthystrix.do("ignore-buggy", _raiser(down), lambda err: err) is down
    assert any("ignore predicate" in r.getMessage() and r.exc_info for r in caplog.records)
    m = fasthystrix.get_circuit("ignore-buggy")[0].metrics()
    assert (m.failures, m.bad_requests, m.fallback_successes) == (1, 0, 1)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ["do", "do_c", "do_async", "decorator"])
def test_a_keyboard_interrupt_in_the_predicate_propagates_and_the_ticket_comes_back(entry: str, isolation: str) -> None:
    def predicate(exc: BaseException) -> bool:
        raise KeyboardInterrupt

    name = f"ignore-interrupt-{entry}-{isolation}"
    fasthystrix.configure_command(name, CommandConfig(ignore=predicate, isolation=isolation))
    with pytest.raises(KeyboardInterrupt):
        ENTRY_POINTS[entry](name, _raiser(RuntimeError("down")), lambda err: err)
    circuit = fasthystrix.get_circuit(name)[0]
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().failures == 1


# -- reporting ----------------------------------------------------------------------------------


def test_bad_requests_in_the_stream_and_the_collectors(clock: FakeClock) -> None:
    from fasthystrix._observability._stream_messages import command_message, render
    from fasthystrix.metric_collector import MetricResult, registry

    results: list[MetricResult] = []

    class Keep:
        def __init__(self, name: str) -> None:
            pass

        def update(self, result: MetricResult) -> None:
            results.append(result)

        def reset(self) -> None:
            pass

    registry.register(Keep)
    fasthystrix.configure_command("ignore-stream", CommandConfig(ignore=KeyError, isolation="semaphore"))
    circuit = fasthystrix.get_circuit("ignore-stream")[0]
    cache: dict[str, Any] = {}
    before = render([circuit], 1, cache)
    assert b'"rollingCountBadRequests":0' in before
    for _ in range(2):
        with pytest.raises(KeyError):
            fasthystrix.do("ignore-stream", _raiser(KeyError("k")))
    message = command_message(circuit)
    assert message["rollingCountBadRequests"] == 2
    assert (message["requestCount"], message["errorCount"]) == (0, 0)
    # The renderer's cache sees the change (its key holds every count of the window).
    assert b'"rollingCountBadRequests":2' in render([circuit], 1, cache)
    assert [(r.bad_requests, r.attempts, r.errors, r.events) for r in results] == [(1, 0, 0, ("bad-request",))] * 2


def test_bad_requests_survive_the_window_in_the_cumulative_counts(clock: FakeClock) -> None:
    from fasthystrix._observability import _cumulative

    _cumulative.acquire()
    try:
        fasthystrix.configure_command("ignore-total", CommandConfig(ignore=KeyError, isolation="semaphore"))
        for _ in range(3):
            with pytest.raises(KeyError):
                fasthystrix.do("ignore-total", _raiser(KeyError("k")))
        clock.advance(30)  # the window retires them
        with pytest.raises(KeyError):
            fasthystrix.do("ignore-total", _raiser(KeyError("k")))
        (reading,) = [r for r in _cumulative.read_circuits() if r.name == "ignore-total"]
        assert reading.rolling.bad_requests == 1
        assert reading.cumulative is not None
        assert reading.cumulative.events[-1] == 4  # "bad-request", last of COUNTED_EVENT_NAMES
        assert reading.rolling_events()[-1] == 1
    finally:
        _cumulative.release()


def test_bad_requests_are_counted_host_wide(tmp_path: Path) -> None:
    with sharing(tmp_path / "circuits"):
        fasthystrix.configure_command("ignore-host", CommandConfig(ignore=KeyError, isolation="semaphore"))
        circuit = fasthystrix.get_circuit("ignore-host")[0]
        for _ in range(3):
            with pytest.raises(KeyError):
                fasthystrix.do("ignore-host", _raiser(KeyError("k")))
        # Another circuit object on the same file (what another worker maps): it reads the counts
        # back, but not the ignore rule, which is code: each process keeps its own.
        other = fasthystrix.CircuitBreaker(
            "ignore-host",
            fasthystrix.get_defaults(),
            type(circuit._default)("ignore-host"),
            [],
            fasthystrix.get_clock(),
        )
        other._attach(
            _shared.SharedCircuitFile("ignore-host", fasthystrix.implementation, fasthystrix.get_defaults()), None
        )
        assert other.metrics().bad_requests == 3
        assert other.settings.ignore is None
        assert circuit.settings.ignore is KeyError
        events, *_ = circuit._default._rolling.cumulative()
        assert events[-1] == 3
        # Settings written by another process: this process reads them, and keeps its own rule.
        other._settings = Settings.from_config(CommandConfig(isolation="semaphore", timeout=500), get_defaults())
        assert circuit.settings.timeout == timedelta(milliseconds=500)
        assert circuit.settings.ignore is KeyError
        with pytest.raises(KeyError):
            fasthystrix.do("ignore-host", _raiser(KeyError("k")))
        assert other.metrics().bad_requests == 4


def test_threads_count_every_outcome_exactly() -> None:
    fasthystrix.configure_command(
        "ignore-stress",
        CommandConfig(
            ignore=KeyError, isolation="semaphore", max_concurrent_requests=100, request_volume_threshold=10**6
        ),
    )
    per_thread = 300
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(per_thread):
                kind = (i + seed) % 3
                if kind == 0:
                    assert fasthystrix.do("ignore-stress", lambda: 1) == 1
                elif kind == 1:
                    with pytest.raises(KeyError):
                        fasthystrix.do("ignore-stress", _raiser(KeyError("k")), lambda err: "no")
                else:
                    assert fasthystrix.do("ignore-stress", _raiser(RuntimeError("x")), lambda err: "fb") == "fb"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    m = fasthystrix.get_circuit("ignore-stress")[0].metrics()
    assert (m.successes, m.bad_requests, m.failures) == (800, 800, 800)
    assert (m.requests, m.fallback_successes) == (1600, 800)


# -- is_failure ---------------------------------------------------------------------------------


def _status(code: int) -> Callable[[], int]:
    return lambda: code


def _server_error(result: object) -> bool:
    return isinstance(result, int) and result >= 500


@pytest.mark.parametrize("value", [1, "x", None.__class__.__name__, (lambda: 1,)])
def test_is_failure_takes_a_predicate(value: object) -> None:
    before = fasthystrix.configure_command("failure-bad", {"is_failure": _server_error})
    with pytest.raises(TypeError, match="is_failure"):
        fasthystrix.configure_command("failure-bad", {"is_failure": value})
    assert fasthystrix.get_circuit_settings()["failure-bad"] is before
    assert before.is_failure is _server_error
    assert fasthystrix.get_defaults().is_failure is None


def test_failed_result_error_is_public_and_carries_the_result() -> None:
    import copy
    import pickle

    err = fasthystrix.FailedResultError({"status": 503})
    assert isinstance(err, fasthystrix.CircuitError)
    assert err.result == {"status": 503}
    assert str(err) == "hystrix: failed result" and err.message == "failed result"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is fasthystrix.FailedResultError and again.result == {"status": 503}
    assert copy.copy(err).result == {"status": 503}
    assert "FailedResultError" in fasthystrix.__all__


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_result_is_failure_accepts_is_a_failure(entry: str, isolation: str) -> None:
    name = f"failure-{entry}-{isolation}"
    fasthystrix.configure_command(
        name, CommandConfig(is_failure=_server_error, isolation=isolation, request_volume_threshold=3)
    )
    call = ENTRY_POINTS[entry]
    got: list[BaseException] = []

    def fallback(err: BaseException) -> str:
        got.append(err)
        return "fallback"

    assert call(name, _status(200), fallback) == 200
    assert call(name, _status(503), fallback) == "fallback"
    (err,) = got
    assert type(err) is fasthystrix.FailedResultError and err.result == 503
    with pytest.raises(fasthystrix.FailedResultError) as raised:
        call(name, _status(500), None)
    assert raised.value.result == 500
    circuit = fasthystrix.get_circuit(name)[0]
    m = circuit.metrics()
    assert (m.successes, m.failures, m.errors, m.fallback_successes) == (1, 2, 2, 1)
    assert m.run_latency_percentiles[100] >= 0 and circuit.state() == "closed"
    # Failures like any other: with 3 requests at 67 % errors the next call trips the circuit.
    assert isinstance(call(name, _status(200), lambda err: err), fasthystrix.CircuitOpenError)
    assert circuit.state() == "open"


def test_a_predicate_that_raises_makes_the_call_a_failure_with_its_error() -> None:
    def predicate(result: object) -> bool:
        raise LookupError(f"cannot read {result!r}")

    fasthystrix.configure_command("failure-buggy", CommandConfig(is_failure=predicate, isolation="semaphore"))
    err = fasthystrix.do("failure-buggy", _status(200), lambda err: err)
    assert isinstance(err, LookupError) and "200" in str(err)
    with pytest.raises(LookupError):
        fasthystrix.do("failure-buggy", _status(200))
    m = fasthystrix.get_circuit("failure-buggy")[0].metrics()
    assert (m.successes, m.failures) == (0, 2)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ["do", "do_c", "do_async", "decorator"])
def test_a_keyboard_interrupt_in_is_failure_propagates_and_the_ticket_comes_back(entry: str, isolation: str) -> None:
    def predicate(result: object) -> bool:
        raise KeyboardInterrupt

    name = f"failure-interrupt-{entry}-{isolation}"
    fasthystrix.configure_command(name, CommandConfig(is_failure=predicate, isolation=isolation))
    with pytest.raises(KeyboardInterrupt):
        ENTRY_POINTS[entry](name, _status(200), lambda err: err)
    circuit = fasthystrix.get_circuit(name)[0]
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().failures == 1


def test_a_timeout_comes_before_is_failure(clock: FakeClock) -> None:
    fasthystrix.configure_command(
        "failure-late", CommandConfig(is_failure=_server_error, isolation="semaphore", timeout=100)
    )

    def late() -> int:
        clock.advance(ms=150)
        return 500

    assert isinstance(fasthystrix.do("failure-late", late, lambda err: err), fasthystrix.TimeoutError)
    m = fasthystrix.get_circuit("failure-late")[0].metrics()
    assert (m.timeouts, m.failures) == (1, 0)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_a_failed_result_on_the_trial_reopens_and_a_good_one_closes(clock: FakeClock, isolation: str) -> None:
    fasthystrix.configure_command(
        "failure-trial",
        CommandConfig(is_failure=_server_error, isolation=isolation, request_volume_threshold=2, sleep_window=1000),
    )
    circuit = fasthystrix.get_circuit("failure-trial")[0]
    for _ in range(3):
        fasthystrix.do("failure-trial", _status(502), lambda err: None)
    assert circuit.state() == "open"
    clock.advance(1.5)
    assert isinstance(fasthystrix.do("failure-trial", _status(502), lambda err: err), fasthystrix.FailedResultError)
    assert circuit.state() == "open"
    clock.advance(1.5)
    assert fasthystrix.do("failure-trial", _status(204)) == 204
    assert circuit.state() == "closed"


def test_is_failure_is_per_process_with_shared_circuits(tmp_path: Path) -> None:
    with sharing(tmp_path / "circuits"):
        fasthystrix.configure_command("failure-host", CommandConfig(is_failure=_server_error, isolation="semaphore"))
        circuit = fasthystrix.get_circuit("failure-host")[0]
        assert isinstance(fasthystrix.do("failure-host", _status(500), lambda err: err), fasthystrix.FailedResultError)
        other = fasthystrix.CircuitBreaker(
            "failure-host",
            fasthystrix.get_defaults(),
            type(circuit._default)("failure-host"),
            [],
            fasthystrix.get_clock(),
        )
        other._attach(
            _shared.SharedCircuitFile("failure-host", fasthystrix.implementation, fasthystrix.get_defaults()), None
        )
        assert other.metrics().failures == 1  # the count is host-wide, the predicate is not
        assert other.settings.is_failure is None
        other._settings = Settings.from_config(CommandConfig(isolation="semaphore", timeout=500), get_defaults())
        assert circuit.settings.timeout == timedelta(milliseconds=500)
        assert circuit.settings.is_failure is _server_error
        assert isinstance(fasthystrix.do("failure-host", _status(500), lambda err: err), fasthystrix.FailedResultError)
        assert other.metrics().failures == 2


def test_threads_count_failed_results_exactly() -> None:
    fasthystrix.configure_command(
        "failure-stress",
        CommandConfig(
            is_failure=_server_error,
            ignore=KeyError,
            isolation="semaphore",
            max_concurrent_requests=100,
            request_volume_threshold=10**6,
        ),
    )
    per_thread = 300
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        try:
            start.wait(WAIT)
            for i in range(per_thread):
                kind = (i + seed) % 3
                if kind == 0:
                    assert fasthystrix.do("failure-stress", _status(200)) == 200
                elif kind == 1:
                    assert fasthystrix.do("failure-stress", _status(500), lambda err: "fb") == "fb"
                else:
                    with pytest.raises(KeyError):
                        fasthystrix.do("failure-stress", _raiser(KeyError("k")), lambda err: "no")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    m = fasthystrix.get_circuit("failure-stress")[0].metrics()
    assert (m.successes, m.failures, m.bad_requests, m.fallback_successes) == (800, 800, 800, 800)
