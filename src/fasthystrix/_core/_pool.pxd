# cython: language_level=3
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport fh_add_acq_rel, fh_add_relaxed


cdef class TicketPool:
    cdef:
        int64_t _own
        # The count: _own for a private circuit, the TICKETS word of a shared circuit's file.
        int64_t *count
        # Shared circuits only: this process' own count (its slot in the file), so that the
        # tickets of a process that died can be given back; NULL for a private circuit.
        int64_t *mine
        object _keep

    # Inline so the circuit's fast path takes and returns a ticket without a call.
    cdef inline int64_t take(self, int64_t limit) noexcept nogil:
        cdef int64_t n = fh_add_acq_rel(self.count, 1) + 1
        if n > limit:
            # Over the limit: undo. Two racing takers at the limit may both back off; the
            # limit itself is never exceeded, which is the promise.
            fh_add_relaxed(self.count, -1)
            return -1
        if self.mine is not NULL:
            fh_add_relaxed(self.mine, 1)
        return n

    cdef inline void give(self) noexcept nogil:
        # Shared circuits: this process' own count first (the reaper subtracts a dead process'
        # count from the total, so the total never holds less than the live processes' counts).
        # A give never takes a count below zero. In a process that never forked no give finds it
        # at zero (every give follows its own take); in a forked child the count restarts at zero
        # (a shared circuit's child counts in a slot of its own), and a command the forking
        # thread had in flight gives back a ticket the child never counted: that give is
        # absorbed here (why: _pool_py's _after_fork_in_child). One compare of the value the
        # atomic add returns anyway.
        if self.mine is not NULL:
            if fh_add_acq_rel(self.mine, -1) <= 0:
                fh_add_relaxed(self.mine, 1)
                return
        if fh_add_acq_rel(self.count, -1) <= 0:
            fh_add_relaxed(self.count, 1)

    cdef void attach(self, int64_t *count, int64_t *mine, object keep)
