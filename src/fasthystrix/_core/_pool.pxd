# cython: language_level=3
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport fh_add_acq_rel, fh_add_relaxed


cdef class TicketPool:
    cdef:
        int64_t _in_use

    # Inline so the circuit's fast path takes and returns a ticket without a call.
    cdef inline int64_t take(self, int64_t limit) noexcept nogil:
        cdef int64_t n = fh_add_acq_rel(&self._in_use, 1) + 1
        if n > limit:
            # Over the limit: undo. Two racing takers at the limit may both back off; the
            # limit itself is never exceeded, which is the promise.
            fh_add_relaxed(&self._in_use, -1)
            return -1
        return n

    cdef inline void give(self) noexcept nogil:
        # A give never takes the count below zero. In a process that never forked no give
        # finds it at zero (every give follows its own take); in a forked child the count
        # restarts at zero, and a command the forking thread had in flight gives back a ticket
        # the child never counted: that give is absorbed here (why: _pool_py's
        # _after_fork_in_child). One compare of the value the atomic add returns anyway.
        if fh_add_acq_rel(&self._in_use, -1) <= 0:
            fh_add_relaxed(&self._in_use, 1)
