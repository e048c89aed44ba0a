# cython: language_level=3
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from fasthystrix._core._layout cimport fh_limits, fh_proc, fh_state
from fasthystrix._core._pool cimport TicketPool
from fasthystrix._core._rolling cimport RollingMetrics

cdef enum:
    # Bits of the circuit state word.
    STATE_OPEN = 1     # tripped by its error rate
    STATE_FORCED = 2   # forced open by the user
    STATE_FORCED_CLOSED = 4   # forced closed by the user: never opens (force_open wins)
    # Admission verdicts, as in _events.py (test_circuit_edges checks they agree); a positive verdict is
    # a trial request, numbered by the open episode.
    ADMITTED = 0
    REJECTED_VERDICT = -1
    SHORT_CIRCUITED = -2
    TRIPPED = -3
    EXPIRED = -4
    QUEUE_TIMEOUT = -5
    QUEUE_CANCELED = -6
    QUEUE_DEADLINE = -7


cdef extern from *:
    # A trial of a half-open phase with several trials (_events.PROBE, FIRST_PROBE, probe_phase).
    """
    #define FH_PROBE (((int64_t)1) << 61)
    #define FH_FIRST_PROBE (((int64_t)1) << 60)
    #define FH_PHASE_SHIFT 24
    #define FH_PROBE_BITS 21
    #define FH_PROBE_MASK ((((int64_t)1) << 21) - 1)
    """
    const int64_t FH_PROBE
    const int64_t FH_FIRST_PROBE
    const int FH_PHASE_SHIFT
    const int FH_PROBE_BITS
    const int64_t FH_PROBE_MASK


cdef class CircuitBreaker:
    cdef:
        readonly str name
        object _settings_obj
        # The settings' code-valued fields (per process, never in a shared file): read under
        # the object's critical section, as _settings_obj, and only off the success path.
        object ignores
        object is_failure
        # A success cannot take the inlined path: collectors to tell, or a result to check.
        bint slow_success
        # Every ending must go through report_c: collectors to tell, or a limiter to feed.
        bint slow_report
        # An adaptive limit: each ending feeds the limiter (under limiter_lock), which stores
        # the new limit in lim.max_concurrent, the word admission reads.
        bint adaptive
        object limiter
        object limiter_lock
        # max_queue_wait (ns; 0: a call with no ticket is rejected at once), read only by such a call.
        int64_t queue_wait_ns
        # C copies of the settings: written under the lock with atomic stores, read with atomic
        # loads (a call that races a reconfiguration may see some old and some new fields,
        # each of them valid). The state word (one atomic load on every call), when it opened,
        # its episode and the lock. Each points at the embedded struct of a private circuit,
        # or into the file of a shared one (_layout.h).
        fh_limits _own_limits
        fh_state _own_state
        fh_limits *lim
        fh_state *st
        # The half-open phase's trials: _own_probes, or the TICKETS region's word of a shared
        # circuit; and this process's slot there (NULL for a private circuit).
        int64_t _own_probes
        int64_t *probes
        fh_proc *proc
        int64_t settings_version
        int64_t slot
        public object _shared
        object _keep
        RollingMetrics metrics_c
        TicketPool tickets
        bint c_clock
        bint has_collectors
        public object _clock
        public object _default
        public object _lock
        public tuple _collectors
        public object _workers
        object __weakref__

    cdef refresh_settings(self)
    cdef object ignores_now(self)
    cdef object is_failure_now(self)
    cdef set_state_bit(self, str field, int64_t bit, object value)
    cdef int64_t now(self) except? -1
    cdef int is_open_c(self, int64_t now) noexcept nogil
    cdef bint unhealthy(self, int64_t now) noexcept nogil
    cdef bint allow_single_test_c(self, int64_t now) noexcept nogil
    cdef void first_wait_c(self, int64_t now, int64_t episode) noexcept nogil
    cdef void reopen_c(self, int64_t now) noexcept nogil
    cdef bint several_probes(self) noexcept nogil
    cdef int64_t probe_c(self, int64_t now, int64_t *in_use) noexcept nogil
    cdef void reopen_probes_c(self, int64_t now) noexcept nogil
    cdef int probe_ended_c(self, int64_t phase, bint failed, int64_t now) noexcept nogil
    cdef int64_t admit(self, int64_t now) noexcept nogil
    cdef int64_t acquire_c(self, int64_t now) except? -9
    cdef int trial_started(self, int64_t start, int64_t verdict) except -1
    cdef int64_t wait_for_ticket(self, int64_t start, object ctx) except? -99
    cdef int report_c(self, int event, int fallback_event, int64_t now, int64_t run_us, int64_t total_us,
                      int64_t trial, bint release) except -1
    cdef int feed_limiter(self, int event, int64_t run_us, int64_t total_us, int64_t inflight) except -1
    cdef int report_end(self, int event, int fallback_event, int64_t start, int64_t run_us, int64_t trial,
                        bint release) except -1
    cdef object finish_c(self, int event, object err, int64_t start, int64_t run_us, int64_t trial,
                         object fallback, object ctx, bint release, PyObject **raised)
    cdef object turned_away(self, int64_t verdict, int64_t start, object fallback, object ctx,
                            PyObject **raised)
    cdef int returned_coroutine(self, object coroutine, int64_t end, int64_t run_us, int64_t trial) except -1
    cdef object checked_success(self, object value, int64_t end, int64_t elapsed, int64_t verdict)
    cdef bint ignored_failure(self, object exc, int64_t end, int64_t elapsed, int64_t verdict) except -1
    cdef object run_command(self, object run, object fallback, tuple args, object kwargs, PyObject **raised)
    cdef object ended(self, object value, object error, int64_t start, int64_t end, int64_t timeout_at,
                      int64_t verdict, object fallback, object ctx, PyObject **raised)
    cdef object run_command_ctx(self, object ctx, object run, object fallback, PyObject **raised)
