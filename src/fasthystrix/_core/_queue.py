"""Calls waiting for a concurrency ticket (``max_queue_wait``): one FIFO per circuit and process.

Both twins use this module; it runs only on the slow path of a call that found
no free ticket. The circuit supplies the lock the queue is read and changed
under (the pure twin: the circuit's lock; the compiled twin: the queue's own
``lock``) and, for each operation, ``take`` (take a ticket for a waiter: the new
count or ``-1``, with that lock held), ``untake`` (give back a ticket taken for
a waiter that can no longer use it, without waking anyone: the lock is held)
and ``publish`` (the number of waiters, for the give-back's check and the
metrics).

Hand-off, not barging: a ticket given back while calls wait is taken for the
oldest waiter (``drain_locked``) and marked granted before that waiter is
woken, so a newcomer cannot take it; newcomers that see waiters queue behind
them. A waiter decides under the lock whether it was granted a ticket: one
whose wait ended (time, cancellation, interruption) at the moment a ticket was
granted to it passes that ticket on (``give``, which hands it to the next
waiter) rather than losing it.

Every waiter also re-checks every :data:`POLL_NS` while it waits. That is how
a waiter sees a ticket that no give-back told the queue about: one given back
by another process (host-wide circuits), or by the pure twin's lock-free
success path (which, to cost nothing, does not look at the queue).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from ._context import Context
from ._events import (
    ADMITTED,
    QUEUE_CANCELED,
    QUEUE_DEADLINE,
    QUEUE_TIMEOUT,
    REJECTED_VERDICT,
)

__all__ = ["POLL_NS", "TicketQueue", "Waiter"]

#: How often a waiting call re-checks for a free ticket (5 ms), whatever woke it or not.
POLL_NS = 5_000_000

Lock = Any  # a context manager: threading.Lock, or a shared circuit's host lock


class Waiter:
    """One call waiting for a ticket: woken by an event (threads), a future (asyncio) or a
    callback (``go``: called with the queue's lock held, so it must only hand the work on)."""

    __slots__ = ("callback", "event", "future", "granted", "in_use", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, callback: Callable[[], object] | None = None
    ) -> None:
        self.granted = False  # a ticket was taken for this waiter (read and written under the lock)
        self.in_use = 0  # the tickets in use once it was
        self.loop = loop
        self.callback = callback
        self.event: threading.Event | None = None
        self.future: asyncio.Future[None] | None = None
        if loop is not None:
            self.future = loop.create_future()
        elif callback is None:
            self.event = threading.Event()

    def wake(self) -> None:
        """Wake the waiting call (any thread; raises ``RuntimeError`` if its event loop is closed)."""
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        elif self.callback is not None:
            self.callback()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TicketQueue:
    """The calls of one circuit (in this process) waiting for a ticket, oldest first."""

    __slots__ = ("lock", "waiters")

    def __init__(self, lock: Lock = None) -> None:
        # The compiled twin's own lock; the pure twin passes none and uses the circuit's.
        self.lock = lock
        # A list, not a deque: every circuit has a queue, nearly always empty (an empty list is a
        # tenth of an empty deque), and at most the concurrency limit's calls wait (max_concurrent_requests,
        # or an adaptive limit's value when the call queued).
        self.waiters: list[Waiter] = []

    def __len__(self) -> int:
        return len(self.waiters)

    def drain_locked(self, take: Callable[[], int], untake: Callable[[], None]) -> None:
        """Take a ticket for each of the oldest waiters while one is free (lock held)."""
        waiters = self.waiters
        while waiters:
            in_use = take()
            if in_use < 0:
                return
            waiter = waiters.pop(0)
            waiter.granted = True
            waiter.in_use = in_use
            try:
                waiter.wake()
            except BaseException:
                # Its event loop is closed: the call will never resume. The ticket goes back,
                # for the next waiter.
                waiter.granted = False
                untake()

    def enqueue_locked(
        self,
        waiter: Waiter,
        bound: int,
        take: Callable[[], int],
        untake: Callable[[], None],
        publish: Callable[[int], None],
    ) -> bool:
        """Queue ``waiter`` unless ``bound`` calls already wait (lock held); ``False``: the queue is full.

        A ticket given back between the call's failed take and now is taken for the oldest
        waiter here, so no give-back is missed.
        """
        if len(self.waiters) >= bound:
            return False
        self.waiters.append(waiter)
        publish(len(self.waiters))
        self.drain_locked(take, untake)
        publish(len(self.waiters))
        return True

    def leave_locked(self, waiter: Waiter, publish: Callable[[int], None]) -> bool:
        """The wait of ``waiter`` ended (lock held): ``True`` if it holds a ticket, else it leaves the queue."""
        if waiter.granted:
            return True
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass
        publish(len(self.waiters))
        return False


def wait_limits(start: int, now: int, wait_ns: int, timeout_ns: int, ctx: Context | None) -> tuple[int, int]:
    """How long a call that started at ``start`` may wait from ``now``, and the verdict when that runs out.

    The wait is part of the command's timeout: a wait that the timeout cuts short ends as
    a timeout (``QUEUE_TIMEOUT``), as a Hystrix command that sat in its thread pool's queue
    past its timeout does. Else it is a rejection (``REJECTED_VERDICT``), or, when the
    context's deadline comes first, ``QUEUE_DEADLINE``.
    """
    left = start + timeout_ns - now
    verdict = REJECTED_VERDICT
    if wait_ns >= left:
        wait_ns, verdict = left, QUEUE_TIMEOUT
    if ctx is not None and ctx.deadline_ns is not None and ctx.deadline_ns - now <= wait_ns:
        wait_ns, verdict = ctx.deadline_ns - now, QUEUE_DEADLINE
    return max(wait_ns, 0), verdict


def end_of_wait(start: int, now: int, timeout_ns: int, ctx: Context | None) -> int:
    """The verdict of a call granted a ticket as its wait ended: ``ADMITTED``, or why it must pass
    the ticket on (its context is done, or its timeout passed)."""
    if ctx is not None:
        kind = ctx._done_kind(now)
        if kind is not None:
            return QUEUE_CANCELED if kind == "canceled" else QUEUE_DEADLINE
    if now >= start + timeout_ns:
        return QUEUE_TIMEOUT
    return ADMITTED


class _Ops:
    """What the queue needs of a circuit, for one wait."""

    __slots__ = ("bound", "give", "lock", "publish", "take", "untake")

    def __init__(
        self,
        lock: Lock,
        bound: int,
        take: Callable[[], int],
        untake: Callable[[], None],
        give: Callable[[], None],
        publish: Callable[[int], None],
    ) -> None:
        self.lock = lock
        self.bound = bound
        self.take = take
        self.untake = untake
        self.give = give  # give a ticket back and hand it to the next waiter (lock not held)
        self.publish = publish


def wait(
    queue: TicketQueue,
    ops: _Ops,
    start: int,
    now: int,
    wait_ns: int,
    timeout_ns: int,
    ctx: Context | None,
    clock: Callable[[], int],
) -> tuple[int, int]:
    """Wait on this thread for a ticket: ``(ADMITTED, tickets in use)`` or ``(verdict, 0)``.

    ``verdict`` is ``REJECTED_VERDICT`` (the queue was full, or ``wait_ns`` ran out),
    ``QUEUE_TIMEOUT``, ``QUEUE_CANCELED`` or ``QUEUE_DEADLINE``.
    """
    waiter = Waiter()
    with ops.lock:
        if not queue.enqueue_locked(waiter, ops.bound, ops.take, ops.untake, ops.publish):
            return REJECTED_VERDICT, 0
    event = waiter.event
    assert event is not None
    limit_ns, verdict = wait_limits(start, now, wait_ns, timeout_ns, ctx)
    cancellable = ctx is not None and ctx is not Context.background()
    if cancellable and not ctx._add_done_callback(event.set):  # type: ignore[union-attr]
        verdict, limit_ns = QUEUE_CANCELED, 0
    granted = False
    done = False
    try:
        # Real time: the circuit's clock may be a test's, which only moves when told.
        end = time.monotonic_ns() + limit_ns
        while not waiter.granted:
            left = end - time.monotonic_ns()
            if left <= 0:
                break
            if event.wait(min(left, POLL_NS) / 1e9) or waiter.granted:
                if waiter.granted:
                    break
                verdict = QUEUE_CANCELED  # only the context sets the event without a grant
                break
            with ops.lock:
                queue.drain_locked(ops.take, ops.untake)
                ops.publish(len(queue.waiters))
        done = True
    finally:
        with ops.lock:
            granted = queue.leave_locked(waiter, ops.publish)
        if cancellable:
            ctx._remove_done_callback(event.set)  # type: ignore[union-attr]
        if granted and not done:
            ops.give()  # interrupted (KeyboardInterrupt...) as the ticket came: pass it on
    if not granted:
        return verdict, 0
    verdict = end_of_wait(start, clock(), timeout_ns, ctx)
    if verdict != ADMITTED:
        ops.give()
        return verdict, 0
    return ADMITTED, waiter.in_use


async def wait_async(
    queue: TicketQueue,
    ops: _Ops,
    start: int,
    now: int,
    wait_ns: int,
    timeout_ns: int,
    clock: Callable[[], int],
) -> tuple[int, int]:
    """:func:`wait` for a coroutine: the event loop runs while it waits; a cancelled task leaves
    the queue (passing on a ticket granted to it meanwhile) and sees ``CancelledError``."""
    waiter = Waiter(asyncio.get_running_loop())
    with ops.lock:
        if not queue.enqueue_locked(waiter, ops.bound, ops.take, ops.untake, ops.publish):
            return REJECTED_VERDICT, 0
    future = waiter.future
    assert future is not None
    limit_ns, verdict = wait_limits(start, now, wait_ns, timeout_ns, None)
    granted = False
    done = False
    try:
        end = time.monotonic_ns() + limit_ns
        while not waiter.granted:
            left = end - time.monotonic_ns()
            if left <= 0:
                break
            await asyncio.wait((future,), timeout=min(left, POLL_NS) / 1e9)
            if waiter.granted:
                break
            with ops.lock:
                queue.drain_locked(ops.take, ops.untake)
                ops.publish(len(queue.waiters))
        done = True
    finally:
        with ops.lock:
            granted = queue.leave_locked(waiter, ops.publish)
        if granted and not done:
            ops.give()  # cancelled as the ticket came: pass it on
    if not granted:
        return verdict, 0
    verdict = end_of_wait(start, clock(), timeout_ns, None)
    if verdict != ADMITTED:
        ops.give()
        return verdict, 0
    return ADMITTED, waiter.in_use
