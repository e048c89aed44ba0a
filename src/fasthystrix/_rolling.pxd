# cython: language_level=3
from libc.stdint cimport int64_t, uint32_t

cdef enum:
    SUCCESS = 0
    FAILURE = 1
    REJECTED = 2
    SHORT_CIRCUIT = 3
    TIMEOUT = 4
    CONTEXT_CANCELED = 5
    CONTEXT_DEADLINE_EXCEEDED = 6
    FALLBACK_SUCCESS = 7
    FALLBACK_FAILURE = 8
    NUM_EVENTS = 9
    EXECUTED = 9
    MAX_ACTIVE = 10
    BUCKET_WIDTH = 11
    REQUEST_EVENTS = 7
    COUNTER_BUCKETS = 10
    LATENCY_SLOTS = 4
    LATENCY_SLOT_SECONDS = 15
    SUB_BITS = 7
    MAX_SHIFT = 20
    LATENCY_BUCKETS = (20 << 6) + 128
    # Per-histogram statistics, after the bucket counts.
    STAT_COUNT = 0
    STAT_TOTAL = 1
    STAT_MIN = 2
    STAT_MAX = 3


cdef class RollingMetrics:
    cdef:
        int64_t buckets[COUNTER_BUCKETS][BUCKET_WIDTH]
        # Running totals of the window: the health check reads two words, never a sum.
        int64_t requests
        int64_t errors
        int64_t second
        # Latency histograms, allocated on first use: [slot][0 = run, 1 = total].
        uint32_t *hist[LATENCY_SLOTS][2]
        int64_t stats[LATENCY_SLOTS][2][4]
        int64_t stamp[LATENCY_SLOTS]
        # Spinlock for expiring buckets and reusing slots (at most once a second).
        int64_t lock

    cdef int64_t *_bucket(self, int64_t second) noexcept nogil
    cdef void _advance(self, int64_t second) noexcept nogil
    cdef void _reset(self) noexcept nogil
    cdef void health_c(self, int64_t now_ns, int64_t *requests, int64_t *errors) noexcept nogil
    cdef void record_c(self, int event, int fallback_event, int64_t now_ns, int64_t run_us,
                       int64_t total_us) noexcept nogil
    cdef void record_executed_c(self, int64_t now_ns, int64_t active) noexcept nogil
    cdef void _add_latency(self, int64_t second, int64_t run_us, int64_t total_us) noexcept nogil


cdef class Histogram:
    cdef:
        uint32_t counts[LATENCY_BUCKETS]
        readonly int64_t count
        readonly int64_t total
        readonly int64_t min
        readonly int64_t max
