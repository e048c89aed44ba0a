# cython: language_level=3
from libc.stdint cimport int64_t, uint32_t

from fasthystrix._core._layout cimport FH_MAX_BUCKETS, fh_geometry, fh_window
from fasthystrix._core._atomic cimport (
    fh_add32_relaxed,
    fh_add_relaxed,
    fh_cas_acq_rel,
    fh_load_acquire,
    fh_load_ptr_acquire,
    fh_load_relaxed,
)

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
    BAD_REQUEST = 11
    SLOW_CALL = 12
    BUCKET_WIDTH = 13
    REQUEST_EVENTS = 7
    COUNTER_BUCKETS = 10
    NS_PER_S = 1000000000
    LATENCY_SLOTS = 4
    LATENCY_SLOT_SECONDS = 15
    SUB_BITS = 7
    MAX_SHIFT = 20
    LATENCY_BUCKETS = (20 << 6) + 128
    # Per-slot statistics of each kind of sample: [RUN] the run latencies; [TOTAL] the total
    # latencies, whose sum is kept as a difference from the run latencies' (see _add_latency).
    RUN = 0
    TOTAL = 1
    STAT_SUM = 0
    STAT_MIN = 1
    STAT_MAX = 2
    # fh_window.retired: the 9 events, then these.
    RETIRED_RUN_COUNT = 9
    RETIRED_RUN_SUM = 10
    RETIRED_TOTAL_COUNT = 11
    RETIRED_TOTAL_SUM = 12
    RETIRED_BAD_REQUEST = 13
    RETIRED_SLOW_CALL = 14


# Bit length via count-leading-zeros (GCC and Clang builtin; MSVC builds map it in _atomic.h).
cdef extern from "_atomic.h":
    int __builtin_clzll(unsigned long long x) nogil


cdef inline int latency_index(int64_t us) noexcept nogil:
    cdef int shift
    if us < 128:
        return <int>us if us > 0 else 0
    # 64 - clz gives the bit length; the top 7 bits pick the sub-bucket.
    shift = (64 - __builtin_clzll(<unsigned long long>us)) - SUB_BITS
    if shift > MAX_SHIFT:
        return LATENCY_BUCKETS - 1
    return (shift << 6) + <int>(us >> shift)


cdef inline void atomic_min(int64_t *p, int64_t v) noexcept nogil:
    cdef int64_t seen = fh_load_relaxed(p)
    while v < seen and not fh_cas_acq_rel(p, &seen, v):
        pass


cdef inline void atomic_max(int64_t *p, int64_t v) noexcept nogil:
    cdef int64_t seen = fh_load_relaxed(p)
    while v > seen and not fh_cas_acq_rel(p, &seen, v):
        pass


# A window's geometry (fh_geometry, _layout.h): private, one allocation per geometry configured
# (its rows after the header), never changed once published and never freed before its
# RollingMetrics, so a reader holding a stale pointer writes into memory that is still owned (and
# still counted by cumulative()); shared, the file's GEOM region, changed in place under the lock.


cdef class RollingMetrics:
    cdef:
        # The counters, totals, latency statistics and the spinlock (for expiring buckets and
        # reusing slots, at most once a second): _own for a private circuit, the WINDOW region
        # of a shared circuit's file. The health check reads two words, never a sum.
        fh_window _own
        fh_window *w
        # Latency histograms: [slot][RUN] counts the run latencies, [slot][TOTAL] holds total
        # minus run counts (int32 differences, mostly zero). Private: allocated on first use;
        # shared: the HIST region of the file.
        uint32_t *hist[LATENCY_SLOTS][2]
        bint shared
        object _keep
        # NULL for the default window of a private circuit (w.buckets, one-second buckets:
        # constant arithmetic on the hot path); else the configured one (a division by its width
        # on the fast paths). A shared window's is the file's, never NULL, whatever its geometry.
        fh_geometry *geom
        # Every geometry ever configured (a list through prev), reused when configured again.
        fh_geometry *geoms

    cdef int64_t *_bucket(self, int64_t now_ns) noexcept nogil
    cdef bint _advance(self, int64_t tick, fh_geometry *g, int64_t width) noexcept nogil
    cdef void _health_custom(self, fh_geometry *g, int64_t now_ns, int64_t *requests, int64_t *errors) noexcept nogil
    cdef void _reset(self) noexcept nogil
    cdef void _empty_window(self) noexcept nogil
    cdef void _sum_rows(self, fh_geometry *g, int64_t n, int64_t *events) noexcept nogil
    cdef void _retire_buckets(self) noexcept nogil
    cdef void _retire_bucket(self, int64_t *bucket) noexcept nogil
    cdef void _retire_slot(self, int slot) noexcept nogil
    cdef void record_c(self, int event, int fallback_event, int64_t now_ns, int64_t run_us,
                       int64_t total_us, int64_t slow_us) noexcept nogil
    cdef void _add_latency(self, int64_t second, int64_t run_us, int64_t total_us) noexcept nogil
    cdef uint32_t *_histogram(self, int slot, int kind) noexcept nogil

    # The calls of every command, defined here so that the circuit's fast path
    # (another module) compiles them inline instead of calling through the vtable.

    cdef inline void health_c(self, int64_t now_ns, int64_t *requests, int64_t *errors) noexcept nogil:
        # (The window's slow calls, w.slow, are a running total moved on with these two.)
        cdef fh_geometry *g = <fh_geometry *>fh_load_ptr_acquire(<void **>&self.geom)
        cdef int64_t second
        if g != NULL:
            self._health_custom(g, now_ns, requests, errors)
            return
        second = now_ns // NS_PER_S
        if second > fh_load_acquire(&self.w.second):
            self._advance(second, NULL, NS_PER_S)
        requests[0] = fh_load_relaxed(&self.w.requests)
        errors[0] = fh_load_relaxed(&self.w.errors)

    cdef inline void record_executed_c(self, int64_t now_ns, int64_t active) noexcept nogil:
        cdef fh_geometry *g = <fh_geometry *>fh_load_ptr_acquire(<void **>&self.geom)
        cdef int64_t second
        cdef int64_t *bucket
        # _bucket's common case, inline: the window is at the current bucket.
        if g == NULL:
            second = now_ns // NS_PER_S
            if second == fh_load_acquire(&self.w.second):
                bucket = self.w.buckets[second % COUNTER_BUCKETS]
            else:
                bucket = self._bucket(now_ns)
        else:
            second = now_ns // fh_load_relaxed(&g.width_ns)
            if second == fh_load_acquire(&self.w.second):
                bucket = g.buckets + (second % fh_load_relaxed(&g.n)) * BUCKET_WIDTH
            else:
                bucket = self._bucket(now_ns)
        fh_add_relaxed(&bucket[EXECUTED], 1)
        atomic_max(&bucket[MAX_ACTIVE], active)

    cdef inline void record_one_c(self, int event, int64_t now_ns, int64_t us, int64_t slow_us) noexcept nogil:
        """record_c(event, -1, now_ns, us, us, slow_us) for a request event (no fallback ran), fastest
        when the window and the latency slot are current. ``slow_us``: slow_call_duration (0: off)."""
        cdef int64_t second = now_ns // NS_PER_S
        cdef int64_t stamp = second // LATENCY_SLOT_SECONDS
        cdef int slot = stamp % LATENCY_SLOTS
        cdef uint32_t *runs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][RUN])
        cdef fh_geometry *g = <fh_geometry *>fh_load_ptr_acquire(<void **>&self.geom)
        cdef int64_t *st
        cdef int64_t *bucket
        cdef int64_t tick
        if runs == NULL or fh_load_acquire(&self.w.stamp[slot]) != stamp:
            self.record_c(event, -1, now_ns, us, us, slow_us)
            return
        if g == NULL:
            # The default window: constant width and count.
            if second != fh_load_acquire(&self.w.second):
                self.record_c(event, -1, now_ns, us, us, slow_us)
                return
            bucket = self.w.buckets[second % COUNTER_BUCKETS]
        else:
            tick = now_ns // fh_load_relaxed(&g.width_ns)
            if tick != fh_load_acquire(&self.w.second):
                self.record_c(event, -1, now_ns, us, us, slow_us)
                return
            bucket = g.buckets + (tick % fh_load_relaxed(&g.n)) * BUCKET_WIDTH
        fh_add_relaxed(&bucket[event], 1)
        fh_add_relaxed(&self.w.requests, 1)
        if FAILURE <= event <= TIMEOUT:
            fh_add_relaxed(&self.w.errors, 1)
        if slow_us and us > slow_us:
            fh_add_relaxed(&bucket[SLOW_CALL], 1)
            fh_add_relaxed(&self.w.slow, 1)
        # Run and total latency are the same sample: only the RUN histogram changes (see _add_latency).
        fh_add32_relaxed(&runs[latency_index(us)], 1)
        st = self.w.stats[slot][RUN]
        fh_add_relaxed(&st[STAT_SUM], us)
        atomic_min(&st[STAT_MIN], us)
        atomic_max(&st[STAT_MAX], us)
        st = self.w.stats[slot][TOTAL]
        atomic_min(&st[STAT_MIN], us)
        atomic_max(&st[STAT_MAX], us)


cdef class Histogram:
    cdef:
        uint32_t counts[LATENCY_BUCKETS]
        readonly int64_t count
        readonly int64_t total
        readonly int64_t min
        readonly int64_t max
