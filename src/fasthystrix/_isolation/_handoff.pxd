# cython: language_level=3
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport int64_t


cdef class SpinBudget:
    cdef:
        int64_t average   # moving average of recent samples, ns, within [0, SAMPLE_CAP_NS]
        int64_t spins     # waits that spun (counters for tests and diagnostics)
        int64_t skips     # waits that did not
        int64_t declines  # graces the average advised against (probes included): when to probe

    cdef bint favours_spinning(self) noexcept nogil
    cdef bint advise(self, bint probe) noexcept nogil
    cdef void count(self, bint spun) noexcept nogil
    cdef void add_sample(self, int64_t ns) noexcept nogil


cdef class Completion:
    cdef:
        int64_t state
        int64_t set_ns    # when the signal was last set or posted (monotonic ns), if timed
        int64_t woke_ns   # a worker's signal: when a wait on it last found it set or posted
        bint timed        # whether it has a budget (which reads the two stamps)
        SpinBudget budget
        bint graces_budgeted   # whether grace_budget is set: a worker's signal
        SpinBudget grace_budget
        PyThread_type_lock lock

    cdef void set_nogil(self) noexcept nogil
    cdef void post_nogil(self) noexcept nogil
    cdef void nudge_nogil(self) noexcept nogil
    cdef bint spin(self, int64_t limit_ns, bint posted) noexcept nogil
    cdef void grace(self) noexcept nogil
    cdef void stamp(self) noexcept nogil
    cdef void woke(self, int64_t now) noexcept nogil
    cdef bint sleep(self, int64_t spun_ns, long long micros) except -1
    cdef void learn(self, SpinBudget budget, Completion other, int64_t start, bint found) noexcept
    cdef bint _stop_sleeping(self) except -1
