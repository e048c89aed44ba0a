# cython: language_level=3
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport fh_add_acq_rel, fh_add_relaxed, fh_load_relaxed


cdef class TicketPool:
    cdef:
        int64_t _own
        # The count: _own for a private circuit, the TICKETS word of a shared circuit's file.
        int64_t *count
        # Shared circuits only: this process' own count (its slot in the file), so that the
        # tickets of a process that died can be given back; NULL for a private circuit.
        int64_t *mine
        object _keep
        # Calls of this process waiting for a ticket (max_queue_wait): how many (written under the
        # queue's lock, read by every give-back), the queue (_queue.TicketQueue) and the limit a
        # ticket taken for a waiter obeys (the circuit's max_concurrent word).
        int64_t waiting
        object queue
        int64_t _no_limit
        int64_t *limit

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
            return
        # Waiters: the ticket goes to the oldest (the only cost when none wait: this load). Relaxed
        # is enough with the add above: a waiter counts itself in `waiting` and then takes again
        # (under the queue's lock), so either it sees this ticket free or this give sees it
        # waiting; on weakly ordered CPUs a load could still pass the add, which the waiters'
        # periodic re-check (_queue.POLL_NS) covers.
        if fh_load_relaxed(&self.waiting) != 0:
            self.hand_off()

    cdef void hand_off(self) noexcept with gil
    cdef void untake(self) noexcept nogil
    cdef void attach(self, int64_t *count, int64_t *mine, object keep)
