# cython: language_level=3, freethreading_compatible=True
"""Concurrency tickets of one command (compiled twin of ``_pool_py``): one atomic counter.

The limit is read at each take, so a new ``max_concurrent_requests`` applies to the
next call (hystrix-go fixed the pool size at circuit creation, issue #104).
"""

from fasthystrix._core._atomic cimport fh_load_relaxed, fh_store_relaxed

__all__ = ["TicketPool"]


cdef class TicketPool:
    """How many tickets are taken; a take succeeds while fewer than the limit are."""

    def __cinit__(self):
        self._own = 0
        self.count = &self._own
        self.mine = NULL
        self._keep = None

    cdef void attach(self, int64_t *count, int64_t *mine, object keep):
        # Count in shared memory from now on (``keep`` holds the mapping alive); the pool must be unused.
        self._keep = keep
        self.mine = mine
        self.count = count

    @property
    def in_use(self):
        """Tickets taken now."""
        return fh_load_relaxed(self.count)

    def try_take(self, int64_t limit):
        """Take a ticket if fewer than ``limit`` are taken: the new count, or ``-1``."""
        return self.take(limit)

    def give_back(self):
        """Return a ticket."""
        self.give()

    def _after_fork_in_child(self):
        """In a forked child: hold no ticket (the commands that held them run on in the parent).

        A shared pool's count is the host's: the child gets a process slot of its own instead
        (``_shared``), whose count starts at zero."""
        if self.mine is NULL:
            fh_store_relaxed(self.count, 0)
