# cython: language_level=3, freethreading_compatible=True
"""Concurrency tickets of one command (compiled twin of ``_pool_py``): one atomic counter.

The limit is read at each take, so a new ``max_concurrent_requests`` applies to the
next call (hystrix-go fixed the pool size at circuit creation, issue #104).
"""

from fasthystrix._core._atomic cimport fh_add_acq_rel, fh_add_relaxed, fh_load_relaxed, fh_store_relaxed

from threading import Lock

from fasthystrix._core._queue import TicketQueue

__all__ = ["TicketPool"]


cdef class TicketPool:
    """How many tickets are taken; a take succeeds while fewer than the limit are."""

    def __cinit__(self):
        self._own = 0
        self.count = &self._own
        self.mine = NULL
        self._keep = None
        self.waiting = 0
        self.queue = TicketQueue(Lock())
        self._no_limit = 0
        self.limit = &self._no_limit

    cdef void attach(self, int64_t *count, int64_t *mine, object keep):
        # Count in shared memory from now on (``keep`` holds the mapping alive); the pool must be unused.
        self._keep = keep
        self.mine = mine
        self.count = count

    @property
    def in_use(self):
        """Tickets taken now."""
        return fh_load_relaxed(self.count)

    cdef void hand_off(self) noexcept with gil:
        # A give-back while calls wait: take the free ticket(s) for the oldest (never raises: the
        # waiters re-check on their own, _queue.POLL_NS, should this fail).
        queue = self.queue
        try:
            with queue.lock:
                queue.drain_locked(self._take_for_waiter, self._untake)
                fh_store_relaxed(&self.waiting, len(queue.waiters))
        except BaseException:
            pass

    cdef void untake(self) noexcept nogil:
        # give() without the hand-off: for a ticket taken for a waiter that cannot use it.
        if self.mine is not NULL:
            if fh_add_acq_rel(self.mine, -1) <= 0:
                fh_add_relaxed(self.mine, 1)
                return
        if fh_add_acq_rel(self.count, -1) <= 0:
            fh_add_relaxed(self.count, 1)

    def _take_for_waiter(self):
        """Take a ticket for a waiting call (the queue's lock held): the new count, or ``-1``."""
        return self.take(fh_load_relaxed(self.limit))

    def _untake(self):
        """Give back a ticket taken for a waiter that cannot use it, waking no one (the queue's lock held)."""
        self.untake()

    def _publish(self, int64_t waiting):
        """The number of waiting calls (the queue's lock held)."""
        fh_store_relaxed(&self.waiting, waiting)

    def try_take(self, int64_t limit):
        """Take a ticket if fewer than ``limit`` are taken: the new count, or ``-1``."""
        return self.take(limit)

    def give_back(self):
        """Return a ticket."""
        self.give()

    def _after_fork_in_child(self):
        """In a forked child: hold no ticket (the commands that held them run on in the parent).

        A shared pool's count is the host's: the child gets a process slot of its own instead
        (``_shared``), whose count starts at zero. No call waits in the child (the waiting threads
        and event loops are the parent's): a new, empty queue, whose lock no parent thread holds."""
        self.queue = TicketQueue(Lock())
        fh_store_relaxed(&self.waiting, 0)
        if self.mine is NULL:
            fh_store_relaxed(self.count, 0)
