"""The rolling window of a shared circuit, in its file's mapping (pure-Python twin).

The same counters, totals and latency histograms as the compiled ``_rolling``
keeps in a shared file, at the same offsets (``_shared.WINDOW``, ``_shared.GEOM``
and ``_shared.HIST``) and with the same rules: buckets of the file's geometry
(default: ten of one second, changed by any process's ``configure_window``)
stamped by the window's bucket number, the request and error totals recounted
from the buckets when the window moves, 15-second latency slots restarted when stale, and each
slot's total-latency histogram kept as its difference from the run-latency one.

Every method expects the caller to hold the circuit's host lock (its threads'
lock, then the file's record lock: see ``_shared_circuit_py.HostLock``), so
the words are read and written plainly; the process holding the lock is the
only writer of the whole window.
"""

from __future__ import annotations

import mmap
from array import array

from . import _shared
from ._config import MAX_ROLLING_BUCKETS
from ._events import (
    BAD_REQUEST,
    CONTEXT_DEADLINE_EXCEEDED,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    REJECTED,
    SHORT_CIRCUIT,
    SLOW_CALL,
    SUCCESS,
    TIMEOUT,
)
from ._gate import CLOSED, Gate
from ._rolling_py import (
    BUCKET_WIDTH,
    COUNTER_BUCKETS,
    EXECUTED,
    LATENCY_BUCKETS,
    LATENCY_SLOT_SECONDS,
    LATENCY_SLOTS,
    MAX_ACTIVE,
    NS_PER_SECOND,
    NUM_EVENTS,
    _Histogram,
    latency_bucket_index,
)

__all__ = ["SharedRollingMetrics"]

_REQUEST_EVENTS = CONTEXT_DEADLINE_EXCEEDED + 1  # events below this index are requests

# The WINDOW region as int64 word indices into the whole file (fh_window in _layout.h):
# buckets[10][13] (unused: a shared window counts in GEOM's), requests, errors, second, lock,
# stats[4][2][3], stamp[4], retired[16].
_W = _shared.WINDOW // 8
_REQUESTS = _W + COUNTER_BUCKETS * BUCKET_WIDTH
_ERRORS = _REQUESTS + 1
_SECOND = _REQUESTS + 2
_STATS = _REQUESTS + 4
_STAMP = _STATS + LATENCY_SLOTS * 2 * 3
_RETIRED = _STAMP + LATENCY_SLOTS
# retired: what expired buckets and reused latency slots held (the 9 events, then these).
_RETIRED_RUN_COUNT = _RETIRED + 9
_RETIRED_RUN_SUM = _RETIRED + 10
_RETIRED_TOTAL_COUNT = _RETIRED + 11
_RETIRED_TOTAL_SUM = _RETIRED + 12
_RETIRED_BAD_REQUEST = _RETIRED + 13
_RETIRED_SLOW_CALL = _RETIRED + 14
# After retired[16]: rejections (kept by the compiled twin only), then the running slow-call total.
_SLOW = _RETIRED + 17
assert _SLOW < (_shared.WINDOW + _shared.WINDOW_SIZE) // 8
assert LATENCY_BUCKETS == _shared.LATENCY_BUCKETS
assert BUCKET_WIDTH == _shared.BUCKET_WORDS
# The GEOM region (fh_geometry): the bucket width in ns, the bucket count, then the buckets
# (room for MAX_ROLLING_BUCKETS: a bucket index is the bucket number modulo the count).
_WIDTH = _shared.GEOM // 8 + _shared.GEOM_WIDTH
_COUNT = _shared.GEOM // 8 + _shared.GEOM_BUCKETS
_ROWS = (_shared.GEOM + _shared.GEOM_HEADER) // 8
# Every write holds the host lock and uses the current count: the rows past it stay empty.

# stats[slot][kind][stat]: kind RUN counts run latencies, TOTAL the total latencies as a
# difference from them (see _add_latency); stat is their sum, min and max.
_RUN = 0
_TOTAL = 1
_SUM = 0
_MIN = 1
_MAX = 2
_INT64_MAX = (1 << 63) - 1
_U32 = 0xFFFFFFFF

_HIST_BYTES = 4 * LATENCY_BUCKETS  # one histogram: [slot][kind] at HIST + (slot * 2 + kind) * this
_ZERO_HIST = bytes(_HIST_BYTES)
_ZERO_BUCKETS = bytes(8 * BUCKET_WIDTH)


def _stat(slot: int, kind: int, stat: int) -> int:
    return _STATS + (slot * 2 + kind) * 3 + stat


class SharedRollingMetrics:
    """Counters of every event over the rolling window and latencies over the last 60 s, host-wide.

    What a shared circuit and its default collector use in place of a
    ``RollingMetrics``, with the same methods; every call must hold the circuit's
    host lock.
    """

    __slots__ = ("_admits", "_diffs", "_hist", "_map", "_pending", "_words")

    def __init__(self, mapping: mmap.mmap) -> None:
        self._map = mapping
        self._words = memoryview(mapping).cast("q")
        self._hist = memoryview(mapping).cast("I")
        self._diffs = memoryview(mapping).cast("i")  # the TOTAL histograms' signed differences
        # What a private window's lock-free path appends to. A shared circuit never takes that
        # path (its gate stays closed), so these stay empty; the circuit holds references to them.
        self._pending: list[int] = []
        self._admits: list[None] = []

    @property
    def _gate(self) -> Gate:
        """Always closed: every call of a shared circuit takes the locked path (the lock is the file's)."""
        return CLOSED

    @_gate.setter
    def _gate(self, gate: Gate) -> None:
        pass  # the circuit closes the gate after changes; it is closed already

    def configure_window(self, bucket_ns: int, buckets: int) -> None:
        """Use ``buckets`` buckets of ``bucket_ns`` each from now on, in every process. A change
        empties the window (its counts go to the retired totals); the same geometry again changes
        nothing."""
        if bucket_ns <= 0 or not 1 <= buckets <= MAX_ROLLING_BUCKETS:
            raise ValueError(f"bad rolling window: {buckets!r} buckets of {bucket_ns!r} ns")
        words = self._words
        if words[_WIDTH] == bucket_ns and words[_COUNT] == buckets:
            return
        for b in self._rows():
            self._retire_bucket(b)
        words[_WIDTH] = bucket_ns
        words[_COUNT] = buckets
        words[_REQUESTS] = 0
        words[_ERRORS] = 0
        words[_SLOW] = 0
        words[_SECOND] = 0  # the next call moves the window on from nothing, as the compiled twin

    def window(self) -> tuple[int, int]:
        """``(bucket_ns, buckets)``: the rolling window's geometry (the file's)."""
        return self._words[_WIDTH], self._words[_COUNT]

    def _rows(self) -> range:
        """The first word of each bucket of the current geometry."""
        return range(_ROWS, _ROWS + self._words[_COUNT] * BUCKET_WIDTH, BUCKET_WIDTH)

    def _unadmit(self) -> None:
        """Take back one admission counted in the window's current bucket."""
        words = self._words
        index = _ROWS + (words[_SECOND] % words[_COUNT]) * BUCKET_WIDTH + EXECUTED
        if words[index] > 0:
            words[index] -= 1

    def reset(self) -> None:
        """Forget every event and sample (moved to the retired counts, see :meth:`cumulative`)."""
        words = self._words
        for b in self._rows():
            self._retire_bucket(b)
        for slot in range(LATENCY_SLOTS):
            if words[_STAMP + slot] >= 0:
                self._retire_slot(slot)
            words[_STAMP + slot] = -1
        words[_REQUESTS] = 0
        words[_ERRORS] = 0
        words[_SLOW] = 0
        words[_SECOND] = 0  # the next call moves the window on from nothing, as the compiled twin

    def _retire_bucket(self, b: int) -> None:
        words = self._words
        for event in range(NUM_EVENTS):
            words[_RETIRED + event] += words[b + event]
        words[_RETIRED_BAD_REQUEST] += words[b + BAD_REQUEST]
        words[_RETIRED_SLOW_CALL] += words[b + SLOW_CALL]
        self._map[8 * b : 8 * (b + BUCKET_WIDTH)] = _ZERO_BUCKETS

    def _retire_slot(self, slot: int) -> None:
        words = self._words
        runs = _shared.HIST // 4 + slot * 2 * LATENCY_BUCKETS
        run_count = sum(self._hist[runs : runs + LATENCY_BUCKETS])
        diff_count = sum(self._diffs[runs + LATENCY_BUCKETS : runs + 2 * LATENCY_BUCKETS])
        run_sum = words[_stat(slot, _RUN, _SUM)]
        words[_RETIRED_RUN_COUNT] += run_count
        words[_RETIRED_RUN_SUM] += run_sum
        words[_RETIRED_TOTAL_COUNT] += run_count + diff_count
        words[_RETIRED_TOTAL_SUM] += run_sum + words[_stat(slot, _TOTAL, _SUM)]
        start = _shared.HIST + slot * 2 * _HIST_BYTES
        self._map[start : start + 2 * _HIST_BYTES] = _ZERO_HIST * 2
        for kind in (_RUN, _TOTAL):
            words[_stat(slot, kind, _SUM)] = 0
            words[_stat(slot, kind, _MIN)] = _INT64_MAX
            words[_stat(slot, kind, _MAX)] = -1

    def cumulative(self) -> tuple[tuple[int, ...], int, int, int, int]:
        """Every count since the window was created, resets included: ``(events, run_count,
        run_sum_us, total_count, total_sum_us)``, ``events`` the 9 event counts then bad requests
        (``COUNTED_EVENT_NAMES``' order). Never decreases."""
        words = self._words
        events = [words[_RETIRED + e] for e in range(NUM_EVENTS)]
        events.append(words[_RETIRED_BAD_REQUEST])
        for b in self._rows():
            for e in range(NUM_EVENTS):
                events[e] += words[b + e]
            events[NUM_EVENTS] += words[b + BAD_REQUEST]
        run_count, run_sum = words[_RETIRED_RUN_COUNT], words[_RETIRED_RUN_SUM]
        total_count, total_sum = words[_RETIRED_TOTAL_COUNT], words[_RETIRED_TOTAL_SUM]
        for slot in range(LATENCY_SLOTS):
            if words[_STAMP + slot] < 0:
                continue
            runs = _shared.HIST // 4 + slot * 2 * LATENCY_BUCKETS
            n = sum(self._hist[runs : runs + LATENCY_BUCKETS])
            run_count += n
            total_count += n + sum(self._diffs[runs + LATENCY_BUCKETS : runs + 2 * LATENCY_BUCKETS])
            run_sum += words[_stat(slot, _RUN, _SUM)]
            total_sum += words[_stat(slot, _RUN, _SUM)] + words[_stat(slot, _TOTAL, _SUM)]
        return tuple(events), run_count, run_sum, total_count, total_sum

    def _advance(self, second: int) -> None:
        # ``second``: a bucket number (the time over the bucket width), as the window's second word.
        words = self._words
        last = words[_SECOND]
        if second <= last:
            return
        n = words[_COUNT]
        for s in range(max(last + 1, second - n + 1), second + 1):
            self._retire_bucket(_ROWS + (s % n) * BUCKET_WIDTH)
        # Recount the totals from the buckets, as the compiled twin does when the window moves.
        requests = errors = slow = 0
        for b in self._rows():
            requests += sum(words[b : b + _REQUEST_EVENTS])
            errors += words[b + FAILURE] + words[b + REJECTED] + words[b + SHORT_CIRCUIT] + words[b + TIMEOUT]
            slow += words[b + SLOW_CALL]
        words[_REQUESTS] = requests
        words[_ERRORS] = errors
        words[_SLOW] = slow
        words[_SECOND] = second

    def _bucket(self, now_ns: int) -> int:
        """The first word of the bucket of ``now_ns``, moving the window on if that bucket is new."""
        words = self._words
        second = now_ns // words[_WIDTH]
        last = words[_SECOND]
        if second > last:
            self._advance(second)
        elif second < last:
            # Stamped a moment before another caller moved the window on: count it now.
            second = last
        return _ROWS + (second % words[_COUNT]) * BUCKET_WIDTH

    def rejections(self) -> int:
        """Rejections in the window as of its last :meth:`health` (which moves it on)."""
        words = self._words
        return sum(words[b + REJECTED] for b in self._rows())

    def slow_calls(self) -> int:
        """Slow calls in the window as of its last :meth:`health` (which moves it on)."""
        return self._words[_SLOW]

    def health(self, now_ns: int) -> tuple[int, int]:
        """``(requests, errors)`` in the window ending at ``now_ns``."""
        words = self._words
        second = now_ns // words[_WIDTH]
        if second > words[_SECOND]:
            self._advance(second)
        return words[_REQUESTS], words[_ERRORS]

    def record(
        self, event: int, fallback_event: int, now_ns: int, run_us: int, total_us: int, slow_us: int = 0
    ) -> None:
        """Count one command: its event, its fallback event (or -1) and its latencies in us (or -1);
        a request whose run took longer than ``slow_us`` (0: off) is also a slow call."""
        if not (0 <= event < NUM_EVENTS or event == BAD_REQUEST) or not (
            fallback_event == -1 or FALLBACK_SUCCESS <= fallback_event <= FALLBACK_FAILURE
        ):
            raise ValueError(f"bad event {event!r} / fallback event {fallback_event!r}")
        words = self._words
        second = now_ns // NS_PER_SECOND
        bucket = self._bucket(now_ns)
        words[bucket + event] += 1
        if event < _REQUEST_EVENTS:
            words[_REQUESTS] += 1
            if FAILURE <= event <= TIMEOUT:
                words[_ERRORS] += 1
            if slow_us and run_us > slow_us:
                words[bucket + SLOW_CALL] += 1
                words[_SLOW] += 1
        if fallback_event >= 0:
            words[bucket + fallback_event] += 1
        if run_us >= 0 or total_us >= 0:
            self._add_latency(second, run_us, total_us)

    def record_success(self, now_ns: int, us: int) -> None:
        """``record(SUCCESS, -1, now_ns, us, us)``, specialised for the hot path."""
        self.record(SUCCESS, -1, now_ns, us, us)

    def record_executed(self, now_ns: int, active: int) -> None:
        """Count a command that took a ticket, with the tickets in use after it did."""
        words = self._words
        bucket = self._bucket(now_ns)
        words[bucket + EXECUTED] += 1
        if active > words[bucket + MAX_ACTIVE]:
            words[bucket + MAX_ACTIVE] = active

    def _add_latency(self, second: int, run_us: int, total_us: int) -> None:
        # As the compiled twin: the TOTAL histogram holds total minus run counts, so a command
        # whose two latencies are one sample (no fallback ran) changes the RUN histogram only.
        words = self._words
        hist = self._hist
        stamp = second // LATENCY_SLOT_SECONDS
        slot = stamp % LATENCY_SLOTS
        seen = words[_STAMP + slot]
        if seen != stamp:
            if seen > stamp:
                return  # stamped before the slot was reused for a later minute: no sample
            # The slot held samples from a minute ago (or none): retire them, start afresh.
            self._retire_slot(slot)
            words[_STAMP + slot] = stamp
        runs = _shared.HIST // 4 + slot * 2 * LATENCY_BUCKETS
        diffs = runs + LATENCY_BUCKETS
        if run_us >= 0:
            i = runs + latency_bucket_index(run_us)
            hist[i] = (hist[i] + 1) & _U32
            words[_stat(slot, _RUN, _SUM)] += run_us
            if run_us < words[_stat(slot, _RUN, _MIN)]:
                words[_stat(slot, _RUN, _MIN)] = run_us
            if run_us > words[_stat(slot, _RUN, _MAX)]:
                words[_stat(slot, _RUN, _MAX)] = run_us
        if total_us != run_us:
            if run_us >= 0:
                i = diffs + latency_bucket_index(run_us)
                hist[i] = (hist[i] - 1) & _U32
                words[_stat(slot, _TOTAL, _SUM)] -= run_us
            if total_us >= 0:
                i = diffs + latency_bucket_index(total_us)
                hist[i] = (hist[i] + 1) & _U32
                words[_stat(slot, _TOTAL, _SUM)] += total_us
        if total_us >= 0:
            if total_us < words[_stat(slot, _TOTAL, _MIN)]:
                words[_stat(slot, _TOTAL, _MIN)] = total_us
            if total_us > words[_stat(slot, _TOTAL, _MAX)]:
                words[_stat(slot, _TOTAL, _MAX)] = total_us

    def counts(self, now_ns: int) -> tuple[int, ...]:
        """Window totals of every bucket slot, as ``RollingMetrics.counts`` (``MAX_ACTIVE``: the max)."""
        self._bucket(now_ns)
        words = self._words
        sums = [0] * BUCKET_WIDTH
        peak = 0
        for b in self._rows():
            for event in range(BUCKET_WIDTH):
                sums[event] += words[b + event]
            peak = max(peak, words[b + MAX_ACTIVE])
        sums[MAX_ACTIVE] = peak
        return tuple(sums)

    def latency_slots(self, now_ns: int) -> tuple[list[_Histogram], list[_Histogram]]:
        """Copies of the ``(run, total)`` histograms of the last 60 seconds, for :func:`summarize`."""
        words = self._words
        m = self._map
        stamp = (now_ns // NS_PER_SECOND) // LATENCY_SLOT_SECONDS
        run: list[_Histogram] = []
        total: list[_Histogram] = []
        for slot in range(LATENCY_SLOTS):
            if not stamp - LATENCY_SLOTS < words[_STAMP + slot] <= stamp:
                continue
            start = _shared.HIST + slot * 2 * _HIST_BYTES
            runs = array("I")
            runs.frombytes(m[start : start + _HIST_BYTES])
            diff_bytes = m[start + _HIST_BYTES : start + 2 * _HIST_BYTES]
            if diff_bytes == _ZERO_HIST:
                totals = array("I", runs)
            else:
                diffs = array("i")
                diffs.frombytes(diff_bytes)
                # Under the lock every difference is matched by its run sample: never below 0.
                totals = array("I", [max(r + d, 0) for r, d in zip(runs, diffs, strict=True)])
            run_total = words[_stat(slot, _RUN, _SUM)]
            run_h = _histogram(runs, run_total, words[_stat(slot, _RUN, _MIN)], words[_stat(slot, _RUN, _MAX)])
            total_h = _histogram(
                totals,
                run_total + words[_stat(slot, _TOTAL, _SUM)],
                words[_stat(slot, _TOTAL, _MIN)],
                words[_stat(slot, _TOTAL, _MAX)],
            )
            if run_h.count > 0:
                run.append(run_h)
            if total_h.count > 0:
                total.append(total_h)
        return run, total

    def memory_bytes(self) -> int:
        """Bytes held by the histogram arrays (the part that could grow): the file's, all of them."""
        return _shared.HIST_SIZE


def _histogram(buckets: array[int], total: int, lo: int, hi: int) -> _Histogram:
    h = _Histogram.__new__(_Histogram)
    h.buckets = buckets
    h.count = sum(buckets)
    h.total = total
    h.min = lo
    h.max = hi
    return h
