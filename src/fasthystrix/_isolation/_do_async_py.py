"""``do_async`` in Python (the pure twin of ``_do_async``), and the paths both twins share.

``run`` is awaited in the caller's task, under a deadline that cancels it: at the
timeout the work really stops (hystrix-go could only abandon it) and its ticket
comes back once the cancelled ``run`` has finished unwinding. Cancelling the
caller cancels ``run`` too: that is recorded as ``context_canceled`` and the
``CancelledError`` propagates, never turned into a fallback result.

The compiled twin runs the common path in C (admission, ``run``'s steps, a success
in time) and hands every other ending to :func:`concluded` and :func:`not_admitted`
here, so both count and answer alike.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _impl
from .._core import _queue
from .._core._errors import FallbackError
from .._core._events import (
    ADMITTED,
    BAD_REQUEST,
    CONTEXT_CANCELED,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    NO_EVENT,
    REJECTED,
    REJECTED_VERDICT,
    SHORT_CIRCUIT,
    SUCCESS,
    TIMEOUT,
    turned_away_event,
)
from .._core._outcomes import COROUTINE as _COROUTINE, check_arguments, error_for, outcome
from .._registry import _circuits, get_or_create

# do_async is the twin's; the rest are the paths the compiled twin hands its uncommon endings to.
__all__ = ["do_async"]

# One timer per event loop for every do_async in flight on it (_deadlines_py tells how);
# the compiled twin when the compiled modules are in use.
_Deadlines = _impl.current().Deadlines

_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
# The loop seen last and its deadlines: a WeakKeyDictionary lookup makes a weakref per call.
_last_deadlines: tuple[weakref.ref[asyncio.AbstractEventLoop], Any] | None = None


def deadlines_of(loop: asyncio.AbstractEventLoop) -> Any:
    """The deadlines of ``loop``'s ``do_async`` calls (made on first use, gone with the loop)."""
    global _last_deadlines
    last = _last_deadlines
    if last is not None and last[0]() is loop:
        return last[1]
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines[loop] = _Deadlines(loop)
    _last_deadlines = (weakref.ref(loop), deadlines)
    return deadlines


_NS_PER_US = 1000


class NotAwaitable(Exception):
    """Run returned something that cannot be awaited (raised and caught inside do_async only)."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value_type = type(value)


def _uncancel(task: asyncio.Task[Any]) -> int:
    """Withdraw one cancellation request (3.11+); the requests still pending (0 before 3.11)."""
    if sys.version_info >= (3, 11):
        return task.uncancel()
    return 0


def check(name: object, run: object, fallback: object) -> Any:
    """The circuit of ``name``, after the arguments are checked (raising as ``do()`` does)."""
    check_arguments(name, run, fallback)
    return get_or_create(name)  # type: ignore[arg-type]


async def do_async(
    name: str,
    run: Callable[[], Awaitable[Any]],
    fallback: Callable[[BaseException], Any] | None = None,
) -> Any:
    """Await ``run()`` as command ``name``; the asyncio twin of :func:`fasthystrix.do`.

    ``run`` is an async function (or any callable returning an awaitable) taking no
    arguments; ``fallback(err)`` may be sync or async. At the timeout ``run`` is
    cancelled and the command answers with ``TimeoutError`` or the fallback.

    A sync ``run`` (one that returns something not awaitable) raises ``TypeError``
    pointing to :func:`fasthystrix.do`: it has run by the time its value shows it, so
    the command counts as a failure, its ticket comes back, and no fallback runs.
    """
    # check() inlined for the common case: a call costs a few hundred ns less.
    if type(name) is str and callable(run) and (fallback is None or callable(fallback)):
        circuit = _circuits.get(name)
        if circuit is None:
            circuit = get_or_create(name)
    else:
        circuit = check(name, run, fallback)
    start = circuit._clock()
    verdict = circuit._acquire(start, circuit._settings)
    if verdict < 0:
        return await not_admitted(circuit, start, verdict, run, fallback)
    return await _admitted(circuit, start, verdict, circuit._settings.timeout_ns / 1e9, run, fallback)


async def not_admitted(
    circuit: Any, start: int, verdict: int, run: Callable[[], Awaitable[Any]], fallback: Callable[..., Any] | None
) -> Any:
    """A call the circuit did not admit at once (``verdict < 0``): it waits for a ticket
    (``max_queue_wait``) and runs, or is turned away (the fallback, or the error)."""
    settings = circuit._settings
    if verdict == REJECTED_VERDICT and settings.max_queue_wait_ns:
        verdict = await _wait_for_ticket(circuit, settings, start)
        if verdict >= 0:
            # The wait counts in the timeout.
            return await _admitted(
                circuit, start, verdict, (start + settings.timeout_ns - circuit._clock()) / 1e9, run, fallback
            )
    event = turned_away_event(verdict)
    return await _finish(circuit, event, error_for(event), start, -1, 0, fallback, False)


async def _admitted(
    circuit: Any,
    start: int,
    verdict: int,
    timeout_s: float,
    run: Callable[[], Awaitable[Any]],
    fallback: Callable[..., Any] | None,
) -> Any:
    """Await ``run()`` under a deadline ``timeout_s`` seconds away, holding the ticket ``verdict`` admitted."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: driven by hand
        task = None
    if task is None:
        circuit._report(FAILURE, NO_EVENT, start, -1, -1, verdict, True)
        raise RuntimeError("do_async() must be awaited in an asyncio task")
    loop = asyncio.get_running_loop()
    deadlines = deadlines_of(loop)
    entry = deadlines.add(loop.time() + timeout_s, task)
    try:
        try:
            awaitable = run()
            if type(awaitable) is not _COROUTINE and not inspect.isawaitable(awaitable):
                raise NotAwaitable(awaitable)
            value = await awaitable
        finally:
            timed_out = deadlines.done(entry)
    except BaseException as exc:
        return await concluded(circuit, start, circuit._clock(), verdict, None, exc, timed_out, task, fallback)
    end = circuit._clock()
    settings = circuit._settings
    if not timed_out and settings.is_failure is None and end - start <= settings.timeout_ns:
        # outcome()'s rule for a value in time with no is_failure, without a coroutine for
        # concluded(): SUCCESS (test_outcome_options and the parity tests hold both paths to it).
        run_us = (end - start) // _NS_PER_US
        circuit._report(SUCCESS, NO_EVENT, end, run_us, run_us, verdict, True)
        return value
    return await concluded(circuit, start, end, verdict, value, None, timed_out, task, fallback)


async def concluded(
    circuit: Any,
    start: int,
    end: int,
    verdict: int,
    value: Any,
    error: BaseException | None,
    timed_out: bool,
    task: asyncio.Task[Any] | None,
    fallback: Callable[..., Any] | None,
) -> Any:
    """The end of an admitted command whose ``run`` ended at ``end`` with ``value`` or ``error``,
    other than a plain success in time: what it counts as, the fallback, what the caller sees.

    ``timed_out``: the deadline fired (it cancelled ``task``). Both twins end here.
    """
    settings = circuit._settings
    if error is None:
        if timed_out:
            _uncancel(task)  # type: ignore[arg-type]  # run swallowed our cancellation: take the request back
        return await _ended(circuit, value, None, start, end, start + settings.timeout_ns, verdict, fallback)
    elapsed_us = (end - start) // _NS_PER_US
    if isinstance(error, NotAwaitable):
        # A programming error, not an outcome of the dependency: a failure, and no fallback.
        circuit._report(FAILURE, NO_EVENT, end, elapsed_us, elapsed_us, verdict, True)
        raise TypeError(
            f"run returned a {error.value_type.__qualname__}, not an awaitable: "
            "use fasthystrix.do / go for sync functions"
        ) from None
    if isinstance(error, asyncio.CancelledError):
        if not (timed_out and _uncancel(task) == 0):  # type: ignore[arg-type]
            # The caller was cancelled: so was run. Record it, give the ticket back, propagate.
            circuit._report(CONTEXT_CANCELED, NO_EVENT, end, -1, elapsed_us, verdict, True)
            raise error
        return await _finish(circuit, TIMEOUT, error_for(TIMEOUT), start, -1, verdict, fallback, True)
    if isinstance(error, Exception):
        if timed_out:
            _uncancel(task)  # type: ignore[arg-type]  # run turned our cancellation into another error
        return await _ended(circuit, None, error, start, end, start + settings.timeout_ns, verdict, fallback)
    circuit._report(FAILURE, NO_EVENT, end, elapsed_us, elapsed_us, verdict, True)
    raise error


async def _wait_for_ticket(circuit: Any, settings: Any, start: int) -> int:
    """Wait (the event loop runs meanwhile) up to ``max_queue_wait`` for a ticket: a verdict.

    A task cancelled while it waits leaves the queue (a ticket granted to it meanwhile goes to
    the next waiter), is counted as ``context_canceled``, and sees its ``CancelledError``."""
    clock = circuit._clock
    queue, ops = circuit._queue_ops()
    try:
        verdict, in_use = await _queue.wait_async(
            queue, ops, start, clock(), settings.max_queue_wait_ns, settings.timeout_ns, clock
        )
    except asyncio.CancelledError:
        end = clock()
        circuit._report(CONTEXT_CANCELED, NO_EVENT, end, -1, (end - start) // _NS_PER_US, 0, False)
        raise
    except BaseException:  # KeyboardInterrupt while it waited: a failure, as an interrupted run
        end = clock()
        circuit._report(FAILURE, NO_EVENT, end, -1, (end - start) // _NS_PER_US, 0, False)
        raise
    if verdict == ADMITTED:
        circuit._queue_admitted(in_use)
    return verdict


async def _ended(
    circuit: Any,
    value: Any,
    error: Exception | None,
    start: int,
    end: int,
    timeout_at: int,
    verdict: int,
    fallback: Callable[[BaseException], Any] | None,
) -> Any:
    """Complete a command whose run ended at ``end``, returning ``value`` or raising ``error``, by
    :func:`outcome`'s rule (the one every path uses)."""
    run_us = (end - start) // _NS_PER_US
    settings = circuit._settings
    try:
        event, err = outcome(error, end, timeout_at, None, settings.ignores, settings.is_failure, value)
    except BaseException:  # KeyboardInterrupt in an ignore/is_failure predicate: a failure, propagated
        circuit._report(FAILURE, NO_EVENT, end, run_us, run_us, verdict, True)
        raise
    if err is None:
        circuit._report(SUCCESS, NO_EVENT, end, run_us, run_us, verdict, True)
        return value
    run_us = run_us if event == FAILURE or err is error else -1  # timeouts and context events: none
    return await _finish(circuit, event, err, start, run_us, verdict, fallback, True)


async def _finish(
    circuit: Any,
    event: int,
    err: BaseException,
    start: int,
    run_us: int,
    trial: int,
    fallback: Callable[[BaseException], Any] | None,
    release: bool,
) -> Any:
    """The async twin of ``CircuitBreaker._finish``: the fallback may be a coroutine function."""

    def report(fallback_event: int, give_back: bool) -> None:
        now = circuit._clock()
        never_ran = event == SHORT_CIRCUIT or event == REJECTED
        total_us = -1 if never_ran else (now - start) // _NS_PER_US
        circuit._report(event, fallback_event, start if never_ran else now, run_us, total_us, trial, give_back)

    if fallback is None or event == BAD_REQUEST:  # a bad request never gets the fallback
        report(NO_EVENT, release)
        raise err
    if release:
        circuit._release()
    try:
        value = fallback(err)
        if inspect.isawaitable(value):
            value = await value
    except Exception as fallback_err:
        report(FALLBACK_FAILURE, False)
        raise FallbackError(fallback_err, err) from fallback_err
    except BaseException:
        report(FALLBACK_FAILURE, False)
        raise
    report(FALLBACK_SUCCESS, False)
    return value
