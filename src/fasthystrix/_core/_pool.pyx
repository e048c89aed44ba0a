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
        self._in_use = 0

    @property
    def in_use(self):
        """Tickets taken now."""
        return fh_load_relaxed(&self._in_use)

    def try_take(self, int64_t limit):
        """Take a ticket if fewer than ``limit`` are taken: the new count, or ``-1``."""
        return self.take(limit)

    def give_back(self):
        """Return a ticket."""
        self.give()

    def _after_fork_in_child(self):
        """In a forked child: hold no ticket (the commands that held them run on in the parent)."""
        fh_store_relaxed(&self._in_use, 0)
