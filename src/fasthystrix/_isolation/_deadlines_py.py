"""The deadlines of the ``do_async`` calls in flight on one event loop (pure-Python twin of ``_deadlines``).

A ``TimerHandle`` per call (what ``asyncio.timeout`` does) costs more than the rest
of the command; here a call pushes its deadline on a heap, and a single timer
cancels the tasks whose deadline has passed. The timer fires at the earliest
deadline or 100 ms from when it was armed, whichever is sooner, and is not re-armed
once nothing is in flight: an idle loop holds nothing of fasthystrix's within
100 ms, and a busy one costs at most ten timer callbacks a second beyond the
deadlines themselves.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any

__all__ = ["DONE", "FIRED", "MAX_TIMER_DELAY", "PENDING", "SWEEP_SLACK", "Deadlines"]

PENDING, DONE, FIRED = 0, 1, 2  # an entry's state
MAX_TIMER_DELAY = 0.1  # seconds: the timer never sleeps longer, so it stops soon after the loop idles
SWEEP_SLACK = 64  # finished entries the heap may hold beyond twice the live ones


class Deadlines:
    """One timer per event loop for every ``do_async`` in flight on it."""

    __slots__ = ("__weakref__", "armed_at", "handle", "heap", "live", "loop", "seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[list[Any]] = []  # entries [when, seq, task, state], earliest first
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = 0.0
        self.live = 0
        self.seq = 0

    def add(self, when: float, task: asyncio.Task[Any]) -> list[Any]:
        """Cancel ``task`` at loop time ``when`` unless :meth:`done` comes first; the entry for :meth:`done`."""
        self.seq += 1
        entry = [when, self.seq, task, PENDING]
        heap = self.heap
        if len(heap) > 2 * self.live + SWEEP_SLACK:
            # Finished calls wait at their place in the heap; under steady load sweep them
            # out whenever they outnumber the live ones (amortised O(1) per call).
            heap[:] = [e for e in heap if e[3] == PENDING]
            heapq.heapify(heap)
        heapq.heappush(heap, entry)
        self.live += 1
        if self.handle is None or when < self.armed_at:
            try:
                self._arm(when)
            except BaseException:
                # The loop could not arm the timer (closed, out of memory): the call ends on this
                # error without its entry, which must not cancel its task later.
                self.done(entry)
                raise
        return entry

    def done(self, entry: list[Any]) -> bool:
        """The call of ``entry`` has ended; whether its deadline fired first."""
        fired: bool = entry[3] == FIRED
        entry[3] = DONE
        self.live -= 1
        if self.live == 0:
            # Keep the timer: cancelling and re-arming it around every call is what costs.
            self.heap.clear()
        return fired

    def _arm(self, when: float) -> None:
        when = min(when, self.loop.time() + MAX_TIMER_DELAY)
        handle = self.loop.call_at(when, self._fire)
        # The old timer goes once the new one is armed: should arming fail, it still serves.
        if self.handle is not None:
            self.handle.cancel()
        self.handle = handle
        self.armed_at = when

    def _fire(self) -> None:
        self.handle = None
        heap = self.heap
        now = self.loop.time()
        while heap and (heap[0][0] <= now or heap[0][3] != PENDING):
            entry = heapq.heappop(heap)
            if entry[3] == PENDING:
                entry[3] = FIRED
                entry[2].cancel()
        if self.live:
            self._arm(heap[0][0] if heap else now + MAX_TIMER_DELAY)
