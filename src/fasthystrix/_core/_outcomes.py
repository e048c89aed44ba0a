"""How a command's outcome is decided, shared by both implementations (all off the success path)."""

from __future__ import annotations

from collections.abc import Callable
from types import CoroutineType
from typing import Any

from ._context import Context
from ._errors import (
    CircuitOpenError,
    ContextCanceledError,
    ContextDeadlineExceededError,
    FailedResultError,
    MaxConcurrencyError,
    TimeoutError as CommandTimeoutError,
)
from ._events import (
    BAD_REQUEST,
    CONTEXT_CANCELED,
    CONTEXT_DEADLINE_EXCEEDED,
    FAILURE,
    NO_EVENT,
    REJECTED,
    SHORT_CIRCUIT,
    SUCCESS,
    TIMEOUT,
)
from ._log import logger

__all__ = [
    "COROUTINE",
    "check_arguments",
    "classify",
    "context_outcome",
    "coroutine_returned",
    "error_for",
    "failed_result",
    "mark_coroutine_function",
    "outcome",
    "notify_collectors",
]

#: The type of what calling an ``async def`` function returns: a sync command's run must not.
COROUTINE = CoroutineType


def mark_coroutine_function(func: Any) -> Any:
    """Mark ``func``, a function returning an awaitable that is not a coroutine function of its own
    (compiled, or a plain ``def``), as one: for ``asyncio.iscoroutinefunction`` and, from 3.12,
    ``inspect.iscoroutinefunction`` (uvicorn asks, to tell an ASGI 3 app). Returns what to use in
    its place: ``func`` itself, or on CPython 3.10, where a Cython function's ``_is_coroutine`` is
    read-only, a plain function that calls it and carries the marks (one more call)."""
    import asyncio.coroutines
    import functools
    import inspect

    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    try:
        if marker is not None:
            func._is_coroutine = marker
        if hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(func)
    except AttributeError:

        @functools.wraps(func)
        def marked(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        return mark_coroutine_function(marked)
    return func


def check_arguments(name: object, run: object, fallback: object) -> None:
    """Raise ``TypeError`` for a non-string name or a non-callable run/fallback."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {name!r}")
    if not callable(run):
        raise TypeError(f"run must be callable, not {run!r}")
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable or None, not {fallback!r}")


def coroutine_returned(coroutine: Any) -> TypeError:
    """Close a coroutine that a sync command's run returned; the error that says so.

    The command counts as a failure and no fallback runs: the coroutine is a
    programming error, not an outcome of the dependency. Closing it keeps Python
    from warning later that it was never awaited.
    """
    try:
        coroutine.close()
    except Exception:  # a coroutine already started may raise on close: the TypeError says more
        logger.exception("closing the coroutine %r returned by a sync run failed", coroutine)
    what = getattr(coroutine, "__qualname__", None) or type(coroutine).__name__
    return TypeError(
        f"run returned a coroutine ({what}) instead of a value: use fasthystrix.do_async / go_async for async functions"
    )


def outcome(
    error: BaseException | None,
    end: int,
    timeout_at: int,
    ctx: Context | None = None,
    ignores: Callable[[BaseException], bool] | None = None,
    is_failure: Callable[[Any], object] | None = None,
    value: Any = None,
) -> tuple[int, BaseException | None]:
    """The one rule for how a command that ran ended: ``(event, err)``, err being what the fallback gets.

    In order: a context cancelled or past its deadline before the command's timeout and
    before run ended gives that context event; run ending after its timeout gives
    ``TIMEOUT``, whatever run did (as if a timer had been watching); then run's own
    result: ``SUCCESS`` (``err`` is None), the context event of a context error it
    raised, ``BAD_REQUEST`` for an error ``ignores`` (the settings' ``ignores``)
    accepts, or ``FAILURE``; a ``value`` run returned that ``is_failure`` accepts is a
    ``FAILURE`` with a :class:`FailedResultError` (see :func:`failed_result`). Events
    fasthystrix decided come with a fresh error; run's own come with run's error. ``error``
    is None or an ``Exception``: a BaseException such as KeyboardInterrupt is always a
    failure that propagates, handled before.

    Every path uses it: the pure twin, thread isolation, asyncio and the compiled
    twin's context path; the compiled ``do()`` inlines the same rule in C.
    """
    late = context_outcome(ctx, timeout_at, end) if ctx is not None else (TIMEOUT if end > timeout_at else NO_EVENT)
    if late != NO_EVENT:
        return late, error_for(late)
    if error is None:
        if is_failure is not None:
            err = failed_result(is_failure, value)
            if err is not None:
                return FAILURE, err
        return SUCCESS, None
    event = classify(error)
    if event == FAILURE and ignores is not None and ignores(error):
        return BAD_REQUEST, error
    return event, error


def failed_result(is_failure: Callable[[Any], object], value: Any) -> BaseException | None:
    """The error of a ``value`` run returned: a :class:`FailedResultError` if ``is_failure``
    accepts it, the predicate's own exception if it raises one (the safe answer: a result that
    could not be checked is not trusted), ``None`` for a success."""
    try:
        if not is_failure(value):
            return None
    except Exception as exc:
        return exc
    return FailedResultError(value)


def classify(exc: BaseException) -> int:
    """The event of an error raised by ``run``: context errors are context events, all else failure."""
    if isinstance(exc, ContextCanceledError):
        return CONTEXT_CANCELED
    if isinstance(exc, ContextDeadlineExceededError):
        return CONTEXT_DEADLINE_EXCEEDED
    return FAILURE


def error_for(event: int) -> BaseException:
    """A fresh error instance for an outcome fasthystrix decided itself."""
    if event == SHORT_CIRCUIT:
        return CircuitOpenError()
    if event == REJECTED:
        return MaxConcurrencyError()
    if event == TIMEOUT:
        return CommandTimeoutError()
    if event == CONTEXT_CANCELED:
        return ContextCanceledError()
    return ContextDeadlineExceededError()


def context_outcome(ctx: Context, timeout_at: int, end: int) -> int:
    """Which deadline passed first by ``end``: ``TIMEOUT``, a context event, or ``NO_EVENT``.

    Both clocks are the same monotonic clock, so "first" is decided by the
    recorded instants rather than by which thread happened to wake up first.
    """
    cancel_at = ctx._cancel_ns
    deadline = ctx._deadline_ns
    ctx_at = None
    ctx_event = NO_EVENT
    if deadline is not None and deadline <= end:
        ctx_at, ctx_event = deadline, CONTEXT_DEADLINE_EXCEEDED
    if cancel_at is not None and cancel_at <= end and (ctx_at is None or cancel_at < ctx_at):
        ctx_at, ctx_event = cancel_at, CONTEXT_CANCELED
    if end > timeout_at and (ctx_at is None or timeout_at < ctx_at):
        return TIMEOUT
    return ctx_event


_MetricResult: Any = None


def notify_collectors(
    name: str,
    collectors: tuple[Any, ...],
    closed: bool,
    event: int,
    fallback_event: int,
    run_us: int,
    total_us: int,
    in_use: int,
    maximum: int,
) -> None:
    """Tell a circuit's extra collectors about one command (resetting them first if it closed).

    A collector that raises is logged and skipped: it never breaks the command.
    """
    global _MetricResult
    if _MetricResult is None:  # imported on first use: metric_collector imports this module's users
        from ..metric_collector import MetricResult

        _MetricResult = MetricResult
    result = None
    for collector in collectors:
        try:
            if closed:
                collector.reset()
            if result is None:
                result = _MetricResult.from_event(
                    event, fallback_event, run_us, total_us, in_use / maximum if maximum > 0 else 0.0
                )
            collector.update(result)
        except Exception:
            logger.exception("metric collector %r failed for circuit %s", collector, name)
