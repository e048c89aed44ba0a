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
        # This process' count first: the reaper subtracts a dead process' count from the total,
        # so the total must never hold less than the live processes' counts.
        if self.mine is not NULL:
            fh_add_relaxed(self.mine, -1)
        fh_add_acq_rel(self.count, -1)

    cdef void attach(self, int64_t *count, int64_t *mine, object keep)
