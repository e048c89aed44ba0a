# cython: language_level=3, freethreading_compatible=True
"""Rolling event counters and latency histograms of one circuit (compiled twin of ``_rolling_py``).

Counters are atomic increments into the current one-second bucket plus two
running totals (requests, errors); a bucket is expired under a spinlock when
the window moves (at most once a second), and the totals are recounted from
the buckets then, so any drift from a concurrent increment heals within a
second. Latencies go into fixed log-linear histograms, allocated per 15-second
slot on first use, so memory does not grow with the call rate.

A bucket or slot can only be written with a stale stamp by a thread that
stalls for the whole window (10 s for counters, 60 s for latencies) between
reading the stamp and incrementing; such a straggler adds one event to the
wrong second, it never corrupts the structure.
"""

from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from fasthystrix._core._layout cimport FH_MAX_BUCKETS, fh_geometry, fh_window
from fasthystrix._core._atomic cimport (
    fh_add32_relaxed,
    fh_add_relaxed,
    fh_cas_acq_rel,
    fh_exchange32_relaxed,
    fh_exchange_acq_rel,
    fh_load32_relaxed,
    fh_load_acquire,
    fh_load_ptr_acquire,
    fh_load_relaxed,
    fh_pid_init,
    fh_spin_lock,
    fh_spin_unlock,
    fh_store32_relaxed,
    fh_store_ptr_release,
    fh_store_relaxed,
    fh_store_release,
)

from fasthystrix._core._rolling_py import (
    EVENT_NAMES,
    NS_PER_SECOND,
    PERCENTILES,
    LatencySummary,
    latency_bucket_bounds,
    latency_bucket_index,
)

__all__ = [
    "COUNTER_BUCKETS",
    "EVENT_NAMES",
    "LATENCY_BUCKETS",
    "LATENCY_SLOTS",
    "LATENCY_SLOT_SECONDS",
    "PERCENTILES",
    "LatencySummary",
    "RollingMetrics",
    "latency_bucket_bounds",
    "latency_bucket_index",
    "summarize",
]


# The C constants under their Python names, as the pure twin has them (a cdef enum
# member cannot be a module attribute of the same name, hence the update()).
globals().update(
    COUNTER_BUCKETS=COUNTER_BUCKETS,
    LATENCY_BUCKETS=LATENCY_BUCKETS,
    LATENCY_SLOTS=LATENCY_SLOTS,
    LATENCY_SLOT_SECONDS=LATENCY_SLOT_SECONDS,
)

fh_pid_init()


cdef class RollingMetrics:
    """Counters of every event over the rolling window (default: 10 one-second buckets) and
    latencies over the last 60 seconds."""

    def __cinit__(self):
        cdef int slot
        memset(&self._own, 0, sizeof(self._own))
        self.w = &self._own
        for slot in range(LATENCY_SLOTS):
            self.hist[slot][0] = NULL
            self.hist[slot][1] = NULL
            self.w.stamp[slot] = -1
        self.shared = False
        self._keep = None
        self.geom = NULL
        self.geoms = NULL

    def __dealloc__(self):
        cdef int slot
        cdef fh_geometry *g = self.geoms
        cdef fh_geometry *prev
        while g != NULL:
            prev = g.prev
            PyMem_RawFree(g)
            g = prev
        if self.shared:
            return  # the histograms are in the file's mapping
        for slot in range(LATENCY_SLOTS):
            PyMem_RawFree(self.hist[slot][0])
            PyMem_RawFree(self.hist[slot][1])

    def _attach(self, mapping, Py_ssize_t window, Py_ssize_t hist, Py_ssize_t geometry):
        """Keep the window in ``mapping`` (a shared circuit's file) from now on: its WINDOW region at
        byte ``window``, its histograms at ``hist``, its geometry and buckets at ``geometry`` (the
        file's geometry, whatever this window had). Only on a new, unused window."""
        cdef unsigned char[::1] view = mapping
        cdef int slot, kind
        cdef fh_geometry *g
        if self.shared or fh_load_relaxed(&self._own.second) != 0:
            raise RuntimeError("a rolling window is attached once, before its first use")
        if window < 0 or hist < 0 or geometry < 0 or window + <Py_ssize_t>sizeof(fh_window) > view.shape[0] or (
                hist + LATENCY_SLOTS * 2 * LATENCY_BUCKETS * 4 > view.shape[0]) or (
                geometry + <Py_ssize_t>(sizeof(fh_geometry) + FH_MAX_BUCKETS * BUCKET_WIDTH * 8) > view.shape[0]):
            raise ValueError("window, histograms or geometry outside the mapping")
        g = <fh_geometry *>&view[geometry]
        if fh_load_relaxed(&g.width_ns) <= 0 or not 1 <= fh_load_relaxed(&g.n) <= FH_MAX_BUCKETS:
            raise ValueError(f"bad shared rolling window: {g.n!r} buckets of {g.width_ns!r} ns")
        for slot in range(LATENCY_SLOTS):
            for kind in range(2):
                PyMem_RawFree(self.hist[slot][kind])
                self.hist[slot][kind] = <uint32_t *>&view[hist + (slot * 2 + kind) * LATENCY_BUCKETS * 4]
        self._keep = view  # an exported buffer: the mapping cannot be closed under us
        self.shared = True
        self.w = <fh_window *>&view[window]
        # (A private geometry configured before stays in geoms, unused and empty, until dealloc.)
        fh_store_ptr_release(<void **>&self.geom, g)

    cdef void _reset(self) noexcept nogil:
        # Atomic exchanges, not memset: other threads (other processes, for a shared window) may
        # be incrementing these words right now. An increment that races the reset is either
        # moved to the retired counts or stays in the window, never lost nor torn.
        cdef int slot, i
        fh_spin_lock(&self.w.lock)
        self._retire_buckets()
        for slot in range(LATENCY_SLOTS):
            if fh_load_relaxed(&self.w.stamp[slot]) >= 0:
                self._retire_slot(slot)
            fh_store_release(&self.w.stamp[slot], -1)
        fh_store_relaxed(&self.w.requests, 0)
        fh_store_relaxed(&self.w.errors, 0)
        fh_store_relaxed(&self.w.rejections, 0)
        fh_store_relaxed(&self.w.slow, 0)
        # The next call moves the window to its own second from nothing (every bucket is empty):
        # a window reset by flush() then used with an earlier clock (a test's manual clock, a
        # file from before a reboot) counts in the right buckets.
        fh_store_release(&self.w.second, 0)
        fh_spin_unlock(&self.w.lock)

    cdef void _retire_buckets(self) noexcept nogil:
        # Every bucket of every geometry (lock held): a writer holding a stale geometry may have
        # counted into one that is not the current one (shared: into any row of the file's).
        cdef int i
        cdef fh_geometry *g = self.geoms
        for i in range(COUNTER_BUCKETS):
            self._retire_bucket(self.w.buckets[i])
        if self.shared:
            for i in range(FH_MAX_BUCKETS):
                self._retire_bucket(self.geom.buckets + i * BUCKET_WIDTH)
        while g != NULL:
            for i in range(g.n):
                self._retire_bucket(g.buckets + i * BUCKET_WIDTH)
            g = g.prev

    def configure_window(self, int64_t bucket_ns, int64_t buckets):
        """Use ``buckets`` buckets of ``bucket_ns`` each from now on. A change empties the window
        (its counts go to the retired totals); the same geometry again changes nothing."""
        cdef fh_geometry *g
        cdef fh_geometry *cur
        cdef int64_t cur_width, cur_n
        if bucket_ns <= 0 or not 1 <= buckets <= 1_000_000 or (self.shared and buckets > FH_MAX_BUCKETS):
            raise ValueError(f"bad rolling window: {buckets!r} buckets of {bucket_ns!r} ns")
        fh_spin_lock(&self.w.lock)
        if self.shared:
            # The file's geometry, changed in place: every process counts with it from its next call.
            g = self.geom
            if fh_load_relaxed(&g.width_ns) == bucket_ns and fh_load_relaxed(&g.n) == buckets:
                fh_spin_unlock(&self.w.lock)
                return
            fh_store_relaxed(&g.width_ns, bucket_ns)
            fh_store_relaxed(&g.n, buckets)
            self._empty_window()
            fh_spin_unlock(&self.w.lock)
            return
        cur = self.geom
        cur_width = NS_PER_S if cur == NULL else cur.width_ns
        cur_n = COUNTER_BUCKETS if cur == NULL else cur.n
        if cur_width == bucket_ns and cur_n == buckets:
            fh_spin_unlock(&self.w.lock)
            return
        g = NULL
        if not (bucket_ns == NS_PER_S and buckets == COUNTER_BUCKETS):
            g = self.geoms
            while g != NULL and not (g.width_ns == bucket_ns and g.n == buckets):
                g = g.prev
            if g == NULL:
                g = <fh_geometry *>PyMem_RawCalloc(1, sizeof(fh_geometry) + buckets * BUCKET_WIDTH * sizeof(int64_t))
                if g == NULL:
                    fh_spin_unlock(&self.w.lock)
                    raise MemoryError()
                g.width_ns = bucket_ns
                g.n = buckets
                g.prev = self.geoms
                self.geoms = g
        # Publish first, then empty every bucket: a writer that still counts into the old
        # geometry's buckets after this is counted by cumulative() and retired by the next reset.
        fh_store_ptr_release(<void **>&self.geom, g)
        self._empty_window()
        fh_spin_unlock(&self.w.lock)

    cdef void _empty_window(self) noexcept nogil:
        # A new geometry (lock held): every bucket to the retired counts, the totals to zero, and
        # the next call moves the window on from nothing.
        self._retire_buckets()
        fh_store_relaxed(&self.w.requests, 0)
        fh_store_relaxed(&self.w.errors, 0)
        fh_store_relaxed(&self.w.rejections, 0)
        fh_store_relaxed(&self.w.slow, 0)
        fh_store_release(&self.w.second, 0)

    def window(self):
        """``(bucket_ns, buckets)``: the rolling window's geometry."""
        cdef fh_geometry *g = <fh_geometry *>fh_load_ptr_acquire(<void **>&self.geom)
        if g == NULL:
            return NS_PER_S, COUNTER_BUCKETS
        return fh_load_relaxed(&g.width_ns), fh_load_relaxed(&g.n)

    cdef void _retire_bucket(self, int64_t *bucket) noexcept nogil:
        # Empty a bucket into the retired counts (lock held).
        cdef int event
        for event in range(NUM_EVENTS):
            fh_add_relaxed(&self.w.retired[event], fh_exchange_acq_rel(&bucket[event], 0))
        fh_add_relaxed(&self.w.retired[RETIRED_BAD_REQUEST], fh_exchange_acq_rel(&bucket[BAD_REQUEST], 0))
        fh_add_relaxed(&self.w.retired[RETIRED_SLOW_CALL], fh_exchange_acq_rel(&bucket[SLOW_CALL], 0))
        fh_store_relaxed(&bucket[EXECUTED], 0)
        fh_store_relaxed(&bucket[MAX_ACTIVE], 0)

    cdef void _retire_slot(self, int slot) noexcept nogil:
        # Empty a latency slot into the retired counts and sums, min and max reset (lock held).
        cdef uint32_t *runs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][RUN])
        cdef uint32_t *diffs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][TOTAL])
        cdef int64_t run_count = 0, diff_count = 0, run_sum
        cdef int i, kind
        if runs != NULL:
            for i in range(LATENCY_BUCKETS):
                run_count += fh_exchange32_relaxed(&runs[i], 0)
        if diffs != NULL:
            for i in range(LATENCY_BUCKETS):
                diff_count += <int32_t>fh_exchange32_relaxed(&diffs[i], 0)
        run_sum = fh_exchange_acq_rel(&self.w.stats[slot][RUN][STAT_SUM], 0)
        fh_add_relaxed(&self.w.retired[RETIRED_RUN_COUNT], run_count)
        fh_add_relaxed(&self.w.retired[RETIRED_RUN_SUM], run_sum)
        fh_add_relaxed(&self.w.retired[RETIRED_TOTAL_COUNT], run_count + diff_count)
        fh_add_relaxed(&self.w.retired[RETIRED_TOTAL_SUM],
                       run_sum + fh_exchange_acq_rel(&self.w.stats[slot][TOTAL][STAT_SUM], 0))
        for kind in range(2):
            fh_store_relaxed(&self.w.stats[slot][kind][STAT_MIN], INT64_MAX)
            fh_store_relaxed(&self.w.stats[slot][kind][STAT_MAX], -1)

    def cumulative(self):
        """Every count since the window was created, resets included: ``(events, run_count,
        run_sum_us, total_count, total_sum_us)``, ``events`` the 9 event counts then bad requests
        (``COUNTED_EVENT_NAMES``' order). Never decreases."""
        cdef int64_t events[NUM_EVENTS + 1]
        cdef int64_t run_count, run_sum, total_count, total_sum, n
        cdef int i, event, slot
        cdef uint32_t *runs
        cdef uint32_t *diffs
        cdef fh_geometry *g
        # Under the lock, nothing moves between the window and the retired counts; increments
        # only add, so the sum read is one that existed.
        fh_spin_lock(&self.w.lock)
        for event in range(NUM_EVENTS):
            events[event] = fh_load_relaxed(&self.w.retired[event])
            for i in range(COUNTER_BUCKETS):
                events[event] += fh_load_relaxed(&self.w.buckets[i][event])
        events[NUM_EVENTS] = fh_load_relaxed(&self.w.retired[RETIRED_BAD_REQUEST])
        for i in range(COUNTER_BUCKETS):
            events[NUM_EVENTS] += fh_load_relaxed(&self.w.buckets[i][BAD_REQUEST])
        g = self.geoms
        while g != NULL:
            self._sum_rows(g, g.n, events)
            g = g.prev
        if self.shared:
            self._sum_rows(self.geom, FH_MAX_BUCKETS, events)
        run_count = fh_load_relaxed(&self.w.retired[RETIRED_RUN_COUNT])
        run_sum = fh_load_relaxed(&self.w.retired[RETIRED_RUN_SUM])
        total_count = fh_load_relaxed(&self.w.retired[RETIRED_TOTAL_COUNT])
        total_sum = fh_load_relaxed(&self.w.retired[RETIRED_TOTAL_SUM])
        for slot in range(LATENCY_SLOTS):
            if fh_load_relaxed(&self.w.stamp[slot]) < 0:
                continue
            runs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][RUN])
            diffs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][TOTAL])
            n = 0
            if runs != NULL:
                for i in range(LATENCY_BUCKETS):
                    n += fh_load32_relaxed(&runs[i])
            run_count += n
            total_count += n
            if diffs != NULL:
                for i in range(LATENCY_BUCKETS):
                    total_count += <int32_t>fh_load32_relaxed(&diffs[i])
            n = fh_load_relaxed(&self.w.stats[slot][RUN][STAT_SUM])
            run_sum += n
            total_sum += n + fh_load_relaxed(&self.w.stats[slot][TOTAL][STAT_SUM])
        fh_spin_unlock(&self.w.lock)
        return tuple([events[i] for i in range(NUM_EVENTS + 1)]), run_count, run_sum, total_count, total_sum

    cdef void _sum_rows(self, fh_geometry *g, int64_t n, int64_t *events) noexcept nogil:
        # Add the 9 events and bad requests of ``n`` rows of ``g`` to ``events`` (cumulative()).
        cdef int64_t i
        cdef int event
        for i in range(n):
            for event in range(NUM_EVENTS):
                events[event] += fh_load_relaxed(&g.buckets[i * BUCKET_WIDTH + event])
            events[NUM_EVENTS] += fh_load_relaxed(&g.buckets[i * BUCKET_WIDTH + BAD_REQUEST])

    def reset(self):
        """Forget every event and sample."""
        self._reset()

    cdef bint _advance(self, int64_t second, fh_geometry *g, int64_t width) noexcept nogil:
        # Move the window to bucket number ``second`` of geometry ``g`` (NULL: the default one),
        # buckets of ``width`` ns; false if the geometry changed meanwhile (the caller starts
        # again with the new one: a shared window's changes in place).
        cdef int64_t last, s, start, n, requests = 0, errors = 0, rejections = 0, slow = 0
        cdef int64_t i
        cdef int64_t *b
        cdef int64_t *rows
        fh_spin_lock(&self.w.lock)
        if self.geom != g or (g != NULL and fh_load_relaxed(&g.width_ns) != width):
            fh_spin_unlock(&self.w.lock)
            return False
        if g == NULL:
            n = COUNTER_BUCKETS
            rows = self.w.buckets[0]
        else:
            n = fh_load_relaxed(&g.n)
            rows = g.buckets
        last = fh_load_relaxed(&self.w.second)
        if second > last:
            start = last + 1
            if second - n + 1 > start:
                start = second - n + 1
            s = start
            while s <= second:
                self._retire_bucket(rows + (s % n) * BUCKET_WIDTH)
                s += 1
            for i in range(n):
                b = rows + i * BUCKET_WIDTH
                requests += (fh_load_relaxed(&b[0]) + fh_load_relaxed(&b[1]) + fh_load_relaxed(&b[2])
                             + fh_load_relaxed(&b[3]) + fh_load_relaxed(&b[4]) + fh_load_relaxed(&b[5])
                             + fh_load_relaxed(&b[6]))
                errors += (fh_load_relaxed(&b[FAILURE]) + fh_load_relaxed(&b[REJECTED])
                           + fh_load_relaxed(&b[SHORT_CIRCUIT]) + fh_load_relaxed(&b[TIMEOUT]))
                rejections += fh_load_relaxed(&b[REJECTED])
                slow += fh_load_relaxed(&b[SLOW_CALL])
            fh_store_relaxed(&self.w.requests, requests)
            fh_store_relaxed(&self.w.slow, slow)
            fh_store_relaxed(&self.w.errors, errors)
            fh_store_relaxed(&self.w.rejections, rejections)
            # Release: whoever reads the new second sees the zeroed buckets.
            fh_store_release(&self.w.second, second)
        fh_spin_unlock(&self.w.lock)
        return True

    cdef int64_t *_bucket(self, int64_t now_ns) noexcept nogil:
        # The bucket of ``now_ns``, moving the window on first if it ends before it.
        cdef fh_geometry *g
        cdef int64_t second, last, width
        while True:
            g = <fh_geometry *>fh_load_ptr_acquire(<void **>&self.geom)
            width = NS_PER_S if g == NULL else fh_load_relaxed(&g.width_ns)
            second = now_ns // width
            last = fh_load_acquire(&self.w.second)
            if second > last:
                if not self._advance(second, g, width):
                    continue
            elif second < last:
                # Stamped a moment before another thread moved the window on: count it now.
                second = last
            if g == NULL:
                return self.w.buckets[second % COUNTER_BUCKETS]
            # (A shared window's count may change meanwhile: any row of the file's is counted.)
            return g.buckets + (second % fh_load_relaxed(&g.n)) * BUCKET_WIDTH

    cdef void _health_custom(self, fh_geometry *g, int64_t now_ns, int64_t *requests,
                             int64_t *errors) noexcept nogil:
        # health_c for a configured window: its bucket width is not a constant.
        cdef int64_t width = fh_load_relaxed(&g.width_ns)
        cdef int64_t second = now_ns // width
        if second > fh_load_acquire(&self.w.second):
            self._advance(second, g, width)
        requests[0] = fh_load_relaxed(&self.w.requests)
        errors[0] = fh_load_relaxed(&self.w.errors)

    def rejections(self):
        """Rejections in the window as of its last :meth:`health` (which moves it on)."""
        return fh_load_relaxed(&self.w.rejections)

    def slow_calls(self):
        """Slow calls in the window as of its last :meth:`health` (which moves it on)."""
        return fh_load_relaxed(&self.w.slow)

    def health(self, int64_t now_ns):
        """``(requests, errors)`` in the window ending at ``now_ns``."""
        cdef int64_t requests, errors
        self.health_c(now_ns, &requests, &errors)
        return requests, errors

    cdef void record_c(self, int event, int fallback_event, int64_t now_ns, int64_t run_us,
                       int64_t total_us, int64_t slow_us) noexcept nogil:
        cdef int64_t second = now_ns // NS_PER_S
        cdef int64_t *bucket = self._bucket(now_ns)
        fh_add_relaxed(&bucket[event], 1)
        if event < REQUEST_EVENTS:
            fh_add_relaxed(&self.w.requests, 1)
            if FAILURE <= event <= TIMEOUT:
                fh_add_relaxed(&self.w.errors, 1)
                if event == REJECTED:
                    fh_add_relaxed(&self.w.rejections, 1)
            if slow_us and run_us > slow_us:
                fh_add_relaxed(&bucket[SLOW_CALL], 1)
                fh_add_relaxed(&self.w.slow, 1)
        if fallback_event >= 0:
            fh_add_relaxed(&bucket[fallback_event], 1)
        if run_us >= 0 or total_us >= 0:
            self._add_latency(second, run_us, total_us)

    def record(self, int event, int fallback_event, int64_t now_ns, int64_t run_us, int64_t total_us,
               int64_t slow_us=0):
        """Count one command: its event, its fallback event (or -1) and its latencies in us (or -1);
        a request whose run took longer than ``slow_us`` (0: off) is also a slow call."""
        if not (0 <= event < NUM_EVENTS or event == BAD_REQUEST) or not (fallback_event == -1 or FALLBACK_SUCCESS <= fallback_event
                                                  <= FALLBACK_FAILURE):
            raise ValueError(f"bad event {event!r} / fallback event {fallback_event!r}")
        if slow_us < 0:
            raise ValueError(f"bad slow_us {slow_us!r}")
        self.record_c(event, fallback_event, now_ns, run_us, total_us, slow_us)

    def record_success(self, int64_t now_ns, int64_t us):
        """``record(SUCCESS, -1, now_ns, us, us)``, specialised for the hot path."""
        self.record_one_c(SUCCESS, now_ns, us, 0)

    def record_executed(self, int64_t now_ns, int64_t active):
        """Count a command that took a ticket, with the tickets in use after it did."""
        self.record_executed_c(now_ns, active)

    cdef void _add_latency(self, int64_t second, int64_t run_us, int64_t total_us) noexcept nogil:
        # Most commands' run and total latencies are the same sample (no fallback ran), so the
        # total histogram is kept as a difference from the run histogram: such a command costs
        # one histogram increment and one sum, not two of each. A command whose latencies
        # differ adds its run latency to RUN, and to TOTAL its total latency, minus its run latency.
        cdef int64_t stamp = second // LATENCY_SLOT_SECONDS
        cdef int slot = stamp % LATENCY_SLOTS
        cdef int64_t seen = fh_load_acquire(&self.w.stamp[slot])
        cdef int64_t *st
        cdef uint32_t *runs = NULL
        cdef uint32_t *diffs = NULL
        if seen != stamp:
            if seen > stamp:
                return  # stamped before the slot was reused for a later minute: no sample
            fh_spin_lock(&self.w.lock)
            if fh_load_relaxed(&self.w.stamp[slot]) < stamp:
                # The slot held samples from a minute ago (or none): retire them, start afresh.
                self._retire_slot(slot)
                fh_store_release(&self.w.stamp[slot], stamp)
            fh_spin_unlock(&self.w.lock)
        if run_us >= 0:
            runs = self._histogram(slot, RUN)
            if runs == NULL:
                return  # out of memory: lose this sample, never the command
        if total_us != run_us:
            diffs = self._histogram(slot, TOTAL)
            if diffs == NULL:
                return
        if run_us >= 0:
            fh_add32_relaxed(&runs[latency_index(run_us)], 1)
            st = self.w.stats[slot][RUN]
            fh_add_relaxed(&st[STAT_SUM], run_us)
            atomic_min(&st[STAT_MIN], run_us)
            atomic_max(&st[STAT_MAX], run_us)
        if total_us != run_us:
            st = self.w.stats[slot][TOTAL]
            if run_us >= 0:
                fh_add32_relaxed(&diffs[latency_index(run_us)], <uint32_t>-1)
                fh_add_relaxed(&st[STAT_SUM], -run_us)
            if total_us >= 0:
                fh_add32_relaxed(&diffs[latency_index(total_us)], 1)
                fh_add_relaxed(&st[STAT_SUM], total_us)
        if total_us >= 0:
            st = self.w.stats[slot][TOTAL]
            atomic_min(&st[STAT_MIN], total_us)
            atomic_max(&st[STAT_MAX], total_us)

    cdef uint32_t *_histogram(self, int slot, int kind) noexcept nogil:
        # Allocated once, published with a release store: a reader that sees the pointer sees
        # the zeroed memory behind it.
        cdef uint32_t *h = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][kind])
        if h == NULL:
            fh_spin_lock(&self.w.lock)
            h = self.hist[slot][kind]
            if h == NULL:
                h = <uint32_t *>PyMem_RawCalloc(LATENCY_BUCKETS, sizeof(uint32_t))
                fh_store_ptr_release(<void **>&self.hist[slot][kind], h)
            fh_spin_unlock(&self.w.lock)
        return h

    def counts(self, int64_t now_ns):
        """Window totals of every bucket slot (``BUCKET_WIDTH``): the 9 events, executed, the window's
        max tickets in use (at ``MAX_ACTIVE``), bad requests (at ``BAD_REQUEST``), slow calls (at
        ``SLOW_CALL``)."""
        cdef int64_t sums[BUCKET_WIDTH]
        cdef int event
        cdef int64_t v, i, n
        cdef int64_t *rows
        cdef fh_geometry *g
        self._bucket(now_ns)
        g = <fh_geometry *>fh_load_ptr_acquire(<void **>&self.geom)
        if g == NULL:
            n = COUNTER_BUCKETS
            rows = self.w.buckets[0]
        else:
            n = fh_load_relaxed(&g.n)
            rows = g.buckets
        memset(sums, 0, sizeof(sums))
        for i in range(n):
            for event in range(BUCKET_WIDTH):
                if event != MAX_ACTIVE:
                    sums[event] += fh_load_relaxed(&rows[i * BUCKET_WIDTH + event])
            v = fh_load_relaxed(&rows[i * BUCKET_WIDTH + MAX_ACTIVE])
            if v > sums[MAX_ACTIVE]:
                sums[MAX_ACTIVE] = v
        return tuple([sums[i] for i in range(BUCKET_WIDTH)])

    def latency_slots(self, int64_t now_ns):
        """Copies of the ``(run, total)`` histograms of the last 60 seconds, for :func:`summarize`."""
        cdef int64_t stamp = (now_ns // NS_PER_S) // LATENCY_SLOT_SECONDS
        cdef int slot, i
        cdef int64_t n, run_count, total_count
        cdef uint32_t *runs
        cdef uint32_t *diffs
        cdef Histogram run_h, total_h
        run = []
        total = []
        for slot in range(LATENCY_SLOTS):
            seen = fh_load_acquire(&self.w.stamp[slot])
            if not (stamp - LATENCY_SLOTS < seen <= stamp):
                continue
            runs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][RUN])
            diffs = <uint32_t *>fh_load_ptr_acquire(<void **>&self.hist[slot][TOTAL])
            run_h = Histogram.__new__(Histogram)
            total_h = Histogram.__new__(Histogram)
            run_count = total_count = 0
            for i in range(LATENCY_BUCKETS):
                n = fh_load32_relaxed(&runs[i]) if runs != NULL else 0
                run_h.counts[i] = <uint32_t>n
                run_count += n
                if diffs != NULL:
                    n += <int32_t>fh_load32_relaxed(&diffs[i])
                    # A sample read half-recorded can leave a difference not yet matched: never below 0.
                    if n < 0:
                        n = 0
                total_h.counts[i] = <uint32_t>n
                total_count += n
            run_h.count = run_count
            run_h.total = fh_load_relaxed(&self.w.stats[slot][RUN][STAT_SUM])
            run_h.min = fh_load_relaxed(&self.w.stats[slot][RUN][STAT_MIN])
            run_h.max = fh_load_relaxed(&self.w.stats[slot][RUN][STAT_MAX])
            total_h.count = total_count
            total_h.total = run_h.total + fh_load_relaxed(&self.w.stats[slot][TOTAL][STAT_SUM])
            total_h.min = fh_load_relaxed(&self.w.stats[slot][TOTAL][STAT_MIN])
            total_h.max = fh_load_relaxed(&self.w.stats[slot][TOTAL][STAT_MAX])
            if run_count > 0:
                run.append(run_h)
            if total_count > 0:
                total.append(total_h)
        return run, total

    def memory_bytes(self):
        """Bytes held by the histogram arrays (the part that could grow)."""
        cdef int slot, kind, n = 0
        if self.shared:
            return 0  # in the shared file's mapping, a fixed size
        for slot in range(LATENCY_SLOTS):
            for kind in range(2):
                if fh_load_ptr_acquire(<void **>&self.hist[slot][kind]) != NULL:
                    n += 1
        return n * 4 * LATENCY_BUCKETS


cdef class Histogram:
    """A copy of one slot's latency histogram (what :func:`summarize` merges)."""


cdef inline int64_t rank(double p, int64_t n) noexcept nogil:
    # hystrix-go's ordinal: 1 for p == 0, else ceil(p / 100 * n), in exact integers (p has one decimal).
    cdef int64_t tenths, r
    if p <= 0:
        return 1
    tenths = <int64_t>(p * 10 + 0.5)
    r = (tenths * n + 999) // 1000
    return r if r > 1 else 1


def summarize(slots):
    """Merge slot histograms into percentiles (nearest rank, as hystrix-go) and a mean."""
    cdef uint64_t merged[LATENCY_BUCKETS]
    cdef int64_t count = 0, total = 0, lo = INT64_MAX, hi = -1, r, seen, low, width
    cdef int i, shift
    cdef double value
    cdef Histogram h
    memset(merged, 0, sizeof(merged))
    for obj in slots:
        h = <Histogram?>obj
        if h.count == 0:
            continue
        count += h.count
        total += h.total
        if h.min < lo:
            lo = h.min
        if h.max > hi:
            hi = h.max
        for i in range(LATENCY_BUCKETS):
            merged[i] += h.counts[i]
    if count == 0:
        return LatencySummary(0, 0.0, {p: 0.0 for p in PERCENTILES})
    percentiles = {}
    for p in PERCENTILES:
        if p <= 0 or p >= 100:
            # Rank 1 and rank n are the smallest and largest samples, which are kept exactly.
            percentiles[p] = (lo if p <= 0 else hi) / 1000.0
            continue
        r = rank(p, count)
        seen = 0
        value = 0.0
        for i in range(LATENCY_BUCKETS):
            seen += merged[i]
            if seen >= r:
                if i < 128:
                    low, width = i, 1
                else:
                    shift = (i >> 6) - 1
                    low, width = (<int64_t>(i - (shift << 6))) << shift, (<int64_t>1) << shift
                value = low + (width - 1) / 2.0
                if value < lo:
                    value = lo
                if value > hi:
                    value = hi
                break
        percentiles[p] = value / 1000.0
    return LatencySummary(count, total / <double>count / 1000.0, percentiles)
