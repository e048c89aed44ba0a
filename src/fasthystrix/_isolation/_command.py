"""Thread isolation and the asynchronous front (``go``/``go_c``), on top of a circuit's primitives.

A thread-mode command hands ``run`` to a thread of the process's worker pool and
waits for it until its deadline. Whoever decides the outcome first (the run
finishing, the deadline, the context) wins exactly once, under the command's
lock; the loser does nothing. The ticket stays taken until ``run`` really
ends (hystrix-go gave it back at the timeout, so real concurrency could exceed
the limit, hystrix-go issue #81).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import FINISHED as _FINISHED, RUNNING as _RUNNING
from typing import Any

from .. import _impl
from .._core import _queue
from .._core._context import Context
from .._core._events import (
    ADMITTED,
    CONTEXT_CANCELED,
    CONTEXT_DEADLINE_EXCEEDED,
    FAILURE,
    NO_EVENT,
    NOT_STARTED,
    QUEUE_CANCELED,
    REJECTED,
    REJECTED_VERDICT,
    SUCCESS,
    TIMEOUT,
    turned_away_event,
)
from .._core._log import logger
from .._core._outcomes import (
    COROUTINE,
    check_arguments,
    context_outcome,
    coroutine_returned,
    error_for,
    outcome,
)
from ._workers import NoWorkerThread, no_worker_error, timer

__all__ = ["do", "do_c", "go", "go_c", "run_threaded"]


PENDING = 0
DONE = 1
EXPIRED = 2

# The value of a run that returned a coroutine (closed on the worker; its error is the TypeError).
_RETURNED_COROUTINE = object()

_NS_PER_US = 1000


def _expired_outcome(ctx: Context | None, deadline: int, now: int) -> int:
    """The event that ended a command still running at ``now``, or ``NO_EVENT`` if none has yet."""
    if ctx is not None:
        event: int = context_outcome(ctx, deadline, now)
        if event != NO_EVENT:
            return event
    return TIMEOUT if now >= deadline else NO_EVENT


class _Execution:
    """One thread-mode command in flight: shared by the caller (or timer) and the worker."""

    __slots__ = (
        "circuit",
        "ctx",
        "deadline",
        "end",
        "error",
        "fallback",
        "future",
        "lock",
        "run",
        "start",
        "state",
        "value",
        "verdict",
        "wake",
    )

    def __init__(
        self,
        circuit: Any,
        run: Callable[..., Any],
        fallback: Callable[..., Any] | None,
        ctx: Context | None,
        start: int,
        deadline: int,
        verdict: int,
        future: CommandFuture | None,
        wake: Any,
    ) -> None:
        self.circuit = circuit
        self.run = run
        self.fallback = fallback
        self.ctx = ctx
        self.start = start
        self.deadline = deadline
        self.verdict = verdict
        self.future = future
        self.lock = threading.Lock()
        # The caller's signal, for do(); a go() command resolves its future instead.
        self.wake = wake
        self.state = PENDING
        self.value: Any = None
        self.error: BaseException | None = None
        self.end = 0

    def is_pending(self) -> bool:
        return self.state == PENDING

    def work(self) -> Any:
        """Worker side: run, give the ticket back, then claim the outcome if nobody else has.

        Returns the caller's ``Completion`` for the worker to set once it has let go
        of the GIL (``None`` when there is nobody to wake).
        """
        circuit = self.circuit
        value: Any = None
        error: BaseException | None = None
        ctx = self.ctx
        child = None
        end = self.start  # if reading the clock after the run fails: no latency
        try:
            try:
                if ctx is None:
                    value = self.run()
                else:
                    child = Context(ctx, self.deadline)
                    value = self.run(child)
            except BaseException as exc:
                error = exc
            end = circuit._clock()
            if child is not None:
                child.cancel()
            if type(value) is COROUTINE:
                # Closed here, whoever decides the outcome, so it never warns that it was not awaited.
                error = coroutine_returned(value)
                value = _RETURNED_COROUTINE
        except BaseException as exc:
            # Interrupted or out of memory after the run: the command's error, still handed to the
            # caller now (not at its deadline).
            value, error = None, exc
        finally:
            # The run has really ended: only now may another call have its ticket.
            circuit._release()
        with self.lock:
            won = self.state == PENDING
            if won:
                self.state = DONE
                self.value, self.error, self.end = value, error, end
        if not won:
            if error is not None and not isinstance(error, Exception):
                logger.error("run of %s raised %r after its command had ended", circuit.name, error)
            return None
        if self.future is None:
            return self.wake
        return _resolve(self.future, self.complete)

    def complete(self) -> Any:
        """Report a finished run and produce the command's result (fallback included)."""
        circuit = self.circuit
        error = self.error
        end = self.end
        if self.value is _RETURNED_COROUTINE:
            # A programming error, not an outcome of the dependency: a failure, and no fallback.
            run_us = (end - self.start) // _NS_PER_US
            circuit._report(FAILURE, NO_EVENT, end, run_us, run_us, self.verdict, False)
            assert error is not None
            raise error
        # KeyboardInterrupt, SystemExit...: a failure that propagates, unless a deadline came first.
        fatal = error is not None and not isinstance(error, Exception)
        run_us = (end - self.start) // _NS_PER_US
        try:
            settings = circuit._settings
            counted = None if fatal else error
            is_failure = None if fatal else settings.is_failure
            event, err = outcome(counted, end, self.deadline, self.ctx, settings.ignores, is_failure, self.value)
        except BaseException:  # KeyboardInterrupt in an ignore/is_failure predicate: a failure, propagated
            circuit._report(FAILURE, NO_EVENT, end, run_us, run_us, self.verdict, False)
            raise
        if err is None:
            circuit._report(FAILURE if fatal else SUCCESS, NO_EVENT, end, run_us, run_us, self.verdict, False)
            if fatal:
                raise error  # type: ignore[misc]
            return self.value
        run_us = run_us if event == FAILURE or err is error else -1  # timeouts and context events: none
        return circuit._finish(event, err, self.start, run_us, self.verdict, self.fallback, self.ctx, False)

    def expire(self) -> None:
        """Timer or context side (``go``): end the command if its deadline or context has passed."""
        now = self.circuit._clock()
        with self.lock:
            if self.state != PENDING:
                return
            event = _expired_outcome(self.ctx, self.deadline, now)
            if event == NO_EVENT:
                return
            self.state = EXPIRED
        future = self.future
        assert future is not None
        task = _expired_task(self.circuit, event, self.start, self.verdict, self.fallback, self.ctx, future)
        _run_fallback_task(self.circuit, task, self.fallback)


def _expired_task(
    circuit: Any, event: int, start: int, verdict: int, fallback: Any, ctx: Context | None, future: CommandFuture
) -> Callable[[], Any]:
    def task() -> Any:
        return _resolve(
            future,
            lambda: circuit._finish(event, error_for(event), start, -1, verdict, fallback, ctx, False),
        )

    return task


def _run_fallback_task(circuit: Any, task: Callable[[], Any], fallback: Any) -> None:
    """Run a ``go()`` command's ending on a worker if it has a fallback, else right here.

    With every worker busy, the fallback runs on this thread: waiting for a worker could
    wait for the very commands this thread serves (the timer's deadlines, go()'s caller).
    """
    if fallback is not None:
        try:
            circuit._workers.submit(task)
            return
        except NoWorkerThread:
            pass
    task().set()


def _resolve(future: CommandFuture, produce: Callable[[], Any]) -> Any:
    """Resolve ``future`` with what ``produce()`` returns or raises; returns the signal to set after."""
    try:
        value = produce()
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(value)
    return future._resolved


class CommandFuture(Future):  # type: ignore[type-arg]
    """The future ``go()`` returns: a ``concurrent.futures.Future`` whose ``result()`` waits faster.

    ``result()`` and ``exception()`` first wait on the implementation's
    ``Completion`` (which the worker sets after letting go of the GIL, and which
    spins briefly in the compiled implementation) instead of the future's condition
    variable, and nudge the command's worker into starting once this thread has let
    go of the GIL; everything else (``done()``, callbacks, ``concurrent.futures.wait``)
    is the standard ``Future``. It is running from the start: ``cancel()`` returns false.
    """

    def __init__(self, resolved: Any) -> None:
        super().__init__()
        # What set_running_or_notify_cancel() would do, without taking the condition:
        # nobody else has this future yet, so there is nobody to notify.
        self._state = _RUNNING
        self._resolved = resolved  # a Completion from the circuit's WorkerPool.completion()
        # The posted worker's Completion (see WorkerPool.submit(post=True)); None if none.
        self._nudge: Any = None

    def result(self, timeout: float | None = None) -> Any:
        """The command's value, or raise its error; ``TimeoutError`` if not done within ``timeout`` seconds."""
        if self._state != _FINISHED:
            timeout = self._wait(timeout)
            if self._state != _FINISHED:
                return super().result(timeout)
        # Read without the condition: set_result() wrote the value before the state.
        if self._exception is None:
            return self._result
        return super().result(0)  # raises as Future does

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The command's error, or ``None``; ``TimeoutError`` if not done within ``timeout`` seconds."""
        if self._state != _FINISHED:
            timeout = self._wait(timeout)
        return super().exception(timeout)

    def _wait(self, timeout: float | None) -> float | None:
        # The Completion serves one waiter; a second concurrent waiter returns early from it
        # and waits on the future's condition for the time left, which stays authoritative.
        # A nudge that comes late is harmless: it only affects a worker that is posted.
        nudge, self._nudge = self._nudge, None
        if timeout is None:
            self._resolved.wait(None, None, True, nudge)
            return None
        deadline = time.monotonic() + timeout
        self._resolved.wait(timeout, None, True, nudge)
        return max(0.0, deadline - time.monotonic())


def run_threaded(
    circuit: Any,
    run: Callable[..., Any],
    fallback: Any,
    ctx: Context | None,
    start: int,
    verdict: int,
    timeout_ns: int,
) -> Any:
    """``do``/``do_c`` in thread isolation, for a call the circuit admitted at ``start`` (``verdict``
    >= 0, its ticket taken): run on a worker, wait here until done or the deadline."""
    clock = circuit._clock
    watch = False
    # Everything up to the hand-off to a worker is in the try: the ticket is this thread's until
    # the worker has the execution, and an error on the way (out of memory making the execution)
    # ends the command here rather than keeping the ticket.
    try:
        deadline = start + timeout_ns
        execution = _Execution(
            circuit, run, fallback, ctx, start, deadline, verdict, None, circuit._workers.completion()
        )
        if ctx is not None and ctx is not Context.background():
            ctx._add_done_callback(execution.wake.set)
            watch = True
        kick = circuit._workers.submit(execution.work, defer=True)
    except BaseException as exc:
        if watch:
            assert ctx is not None
            ctx._remove_done_callback(execution.wake.set)
        if isinstance(exc, NoWorkerThread):
            # Every worker busy at the pool's maximum (or no thread from the OS): rejected, as when
            # the command's own tickets are all taken; its ticket goes back before the fallback.
            return circuit._finish(REJECTED, no_worker_error(), start, -1, verdict, fallback, ctx, True)
        # Interrupted or out of memory on the way to a worker: a failure, and the ticket goes back.
        circuit._report(FAILURE, NO_EVENT, clock(), -1, (clock() - start) // _NS_PER_US, verdict, True)
        raise
    try:
        # The worker is posted, not woken (``kick``): until this thread has passed it on, waking the
        # worker is its duty, even when it is interrupted (or out of memory) first.
        wait_until = deadline
        if ctx is not None and ctx._deadline_ns is not None and ctx._deadline_ns < wait_until:
            wait_until = ctx._deadline_ns
        wake = execution.wake
        while True:
            remaining = wait_until - clock()
            if remaining > 0:
                seconds = remaining / 1e9
                # Handed to the wait, which wakes the worker once this thread has let go of the GIL;
                # nothing can raise between the two (no call, no allocation).
                first, kick = kick, None
                wake.wait(seconds, first)
            elif kick is not None:
                kick.set()
                kick = None
            with execution.lock:
                if execution.state == DONE:
                    break
                event = _expired_outcome(ctx, deadline, clock())
                if event != NO_EVENT:
                    execution.state = EXPIRED
                    break
                wake.clear()
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt): count a failure, as for a BaseException
        # out of run; the worker still owns the ticket and returns it when run ends.
        if kick is not None:
            # Interrupted before the first wait: the worker, posted, would wait for its kick for
            # ever, with the ticket.
            kick.set()
        with execution.lock:
            interrupted = execution.state == PENDING
            if interrupted:
                execution.state = EXPIRED
        if interrupted:
            circuit._report(FAILURE, NO_EVENT, clock(), -1, (clock() - start) // _NS_PER_US, verdict, False)
        raise
    finally:
        if watch:
            assert ctx is not None
            ctx._remove_done_callback(execution.wake.set)
    if execution.state == EXPIRED:
        return circuit._finish(event, error_for(event), start, -1, verdict, fallback, ctx, False)
    return execution.complete()


def _go(circuit: Any, run: Callable[..., Any], fallback: Any, ctx: Context | None) -> Future[Any]:
    future = CommandFuture(circuit._workers.completion())
    settings = circuit._settings
    clock = circuit._clock
    start = clock()
    event = NO_EVENT
    verdict = 0
    if ctx is not None:
        kind = ctx._done_kind(start)
        if kind is not None:
            event = CONTEXT_CANCELED if kind == "canceled" else CONTEXT_DEADLINE_EXCEEDED
            start = NOT_STARTED
    if event == NO_EVENT:
        verdict = circuit._acquire(start, settings)
        if verdict == REJECTED_VERDICT and settings.max_queue_wait_ns:
            _go_queued(circuit, run, fallback, ctx, future, settings, start)
            return future
        if verdict < 0:
            event = turned_away_event(verdict)
    if event != NO_EVENT:
        _run_fallback_task(circuit, _expired_task(circuit, event, start, 0, fallback, ctx, future), fallback)
        return future
    _go_submit(circuit, run, fallback, ctx, future, settings, start, verdict)
    return future


def _go_queued(
    circuit: Any,
    run: Callable[..., Any],
    fallback: Any,
    ctx: Context | None,
    future: CommandFuture,
    settings: Any,
    start: int,
) -> None:
    """``go()`` of a call that found no ticket: it waits in the queue (see _queue) without a thread.

    Its ending is decided once (``settle``, under the queue's lock): on the timer's thread
    soon after a ticket is granted to it, at the end of its wait (the timer), or when its
    context is cancelled. Meanwhile the timer re-checks every ``_queue.POLL_NS`` for a ticket
    no give-back announced."""
    clock = circuit._clock
    queue, ops = circuit._queue_ops()
    now = clock()
    limit_ns, expired_verdict = _queue.wait_limits(start, now, settings.max_queue_wait_ns, settings.timeout_ns, ctx)
    settled = False

    def pending() -> bool:
        return not settled

    def settle(kind: str) -> None:
        nonlocal settled
        with ops.lock:
            if settled:
                return
            settled = True
            granted = queue.leave_locked(waiter, ops.publish)
        if watch:
            ctx._remove_done_callback(cancelled)  # type: ignore[union-attr]
        if granted:
            verdict = _queue.end_of_wait(start, clock(), settings.timeout_ns, ctx)
            if verdict == ADMITTED:
                circuit._queue_admitted(waiter.in_use)
                _go_submit(circuit, run, fallback, ctx, future, settings, start, ADMITTED)
                return
            ops.give()  # its time ran out as the ticket came: passed on
        elif kind == "canceled":
            verdict = QUEUE_CANCELED
        else:
            verdict = expired_verdict
        event = turned_away_event(verdict)
        _run_fallback_task(circuit, _expired_task(circuit, event, start, 0, fallback, ctx, future), fallback)

    def granted() -> None:  # the queue's lock is held: only hand the work to the timer's thread
        timer.schedule(0, lambda: settle("granted"), pending)

    def cancelled() -> None:
        settle("canceled")

    def poll() -> None:
        with ops.lock:
            if settled:
                return
            queue.drain_locked(ops.take, ops.untake)
            ops.publish(len(queue.waiters))
        timer.schedule(clock() + _queue.POLL_NS, poll, pending)

    waiter = _queue.Waiter(callback=granted)
    watch = ctx is not None and ctx is not Context.background()
    with ops.lock:
        if not queue.enqueue_locked(waiter, ops.bound, ops.take, ops.untake, ops.publish):
            settled = True
    if settled:
        _run_fallback_task(circuit, _expired_task(circuit, REJECTED, start, 0, fallback, ctx, future), fallback)
        return
    if watch and not ctx._add_done_callback(cancelled):  # type: ignore[union-attr]
        watch = False
        settle("canceled")
        return
    timer.schedule(now + limit_ns, lambda: settle("expired"), pending)
    timer.schedule(now + _queue.POLL_NS, poll, pending)


def _go_submit(
    circuit: Any,
    run: Callable[..., Any],
    fallback: Any,
    ctx: Context | None,
    future: CommandFuture,
    settings: Any,
    start: int,
    verdict: int,
) -> None:
    """Hand an admitted ``go()`` call (its ticket taken) to a worker, and watch its deadline."""
    deadline = start + settings.timeout_ns
    execution = _Execution(circuit, run, fallback, ctx, start, deadline, verdict, future, None)
    try:
        # Posted, not woken: the worker waits (without the GIL, briefly) for result() to
        # nudge it once this thread has let go of the GIL, so it does not sleep on the GIL
        # meanwhile; a caller that never waits only delays it by the grace period.
        future._nudge = circuit._workers.submit(execution.work, post=True)
    except NoWorkerThread:
        # Rejected (see run_threaded); with every worker busy, the fallback runs on this thread.
        err = no_worker_error()
        _resolve(future, lambda: circuit._finish(REJECTED, err, start, -1, verdict, fallback, ctx, True)).set()
        return
    except BaseException:
        circuit._release()
        raise
    wait_until = deadline
    if ctx is not None and ctx is not Context.background():
        if ctx._deadline_ns is not None and ctx._deadline_ns < wait_until:
            wait_until = ctx._deadline_ns
        if not ctx._add_done_callback(execution.expire):
            execution.expire()
        future.add_done_callback(lambda _: ctx._remove_done_callback(execution.expire))
    timer.schedule(wait_until, execution.expire, execution.is_pending)


def _after_fork_in_child() -> None:
    """In a forked child, before any other thread runs: free the commands this process may still
    end from locks that threads gone with the fork may have held.

    Two kinds of command started before the fork can still end in the child: a ``go()`` whose
    deadline the timer keeps (its worker is gone; the deadline resolves its future), and a run
    on the forking thread itself (a worker whose run forked). The other side of each (a caller
    or worker thread, the timer thread, a thread waiting for the future) may have held the
    command's lock, its future's condition or the lock inside a pure signal at the fork, so
    they are all replaced: nobody in the child holds or waits on them yet.
    """
    executions = [getattr(callback, "__self__", None) for callback in timer.callbacks()]
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _WORK_CODE:
            executions.append(frame.f_locals.get("self"))
        frame = frame.f_back  # type: ignore[assignment]
    for execution in executions:
        if isinstance(execution, _Execution):
            execution.lock = threading.Lock()
            workers = execution.circuit._workers
            if execution.future is None:
                execution.wake = workers.completion()
            elif execution.future._state != _FINISHED:  # not done(): it takes the condition
                execution.future._condition = threading.Condition()
                execution.future._resolved = workers.completion()


_WORK_CODE = _Execution.work.__code__


def _unbound(name: str) -> Any:
    raise RuntimeError("fasthystrix._registry binds fasthystrix._isolation._command at import")


# The registry's circuits and its creator (bind() is called by the registry, which imports
# this module): go() looks its circuit up in the table directly, as the compiled do() does.
_circuits: dict[str, Any] = {}
_get_or_create: Callable[[str], Any] = _unbound


def bind(circuits: dict[str, Any], get_or_create: Callable[[str], Any]) -> None:
    """Connect ``go``/``do_c`` to the registry's table of circuits (called once, at import)."""
    global _circuits, _get_or_create
    _circuits = circuits
    _get_or_create = get_or_create


def _check(name: object, run: object, fallback: object) -> Any:
    check_arguments(name, run, fallback)
    return _get_or_create(name)  # type: ignore[arg-type]


def _check_ctx(ctx: object) -> None:
    if not isinstance(ctx, Context):
        raise TypeError(f"ctx must be a fasthystrix.Context, not {ctx!r}")


def do(name: str, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None = None) -> Any:
    """Run ``run()`` as command ``name`` under its circuit, tickets, timeout and metrics.

    Returns run's value; when run fails, times out, is rejected or
    short-circuited, returns ``fallback(err)`` (or raises ``err`` without a
    fallback). A failing fallback raises :class:`FallbackError`.
    """
    return _impl.current().do(name, run, fallback)


def do_c(
    ctx: Context,
    name: str,
    run: Callable[[Context], Any],
    fallback: Callable[[Context, BaseException], Any] | None = None,
) -> Any:
    """Like :func:`do` with a context: ``run(ctx)`` and ``fallback(ctx, err)``.

    ``run`` receives a child of ``ctx`` whose deadline is the command's timeout
    (or ``ctx``'s deadline if earlier), so it can hand ``ctx.remaining()`` to its I/O.
    """
    _check_ctx(ctx)
    circuit = _check(name, run, fallback)
    return circuit.execute_c(ctx, run, fallback)


def go(name: str, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None = None) -> Future[Any]:
    """Start command ``name`` and return a future of what :func:`do` would return or raise.

    ``run`` always executes on a worker thread; the future resolves when the
    command finishes or at its timeout, whichever comes first.
    """
    # _check inlined for the common case: a call costs a few hundred ns less.
    if type(name) is str and callable(run) and (fallback is None or callable(fallback)):
        circuit = _circuits.get(name)
        if circuit is None:
            circuit = _get_or_create(name)
    else:
        circuit = _check(name, run, fallback)
    return _go(circuit, run, fallback, None)


def go_c(
    ctx: Context,
    name: str,
    run: Callable[[Context], Any],
    fallback: Callable[[Context, BaseException], Any] | None = None,
) -> Future[Any]:
    """Like :func:`go` with a context: ``run(ctx)`` and ``fallback(ctx, err)``; cancelling ``ctx`` ends it."""
    _check_ctx(ctx)
    circuit = _check(name, run, fallback)
    return _go(circuit, run, fallback, ctx)
