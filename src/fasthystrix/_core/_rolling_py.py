"""Rolling event counters and latency histograms of one circuit (pure-Python twin).

Counters: exactly ``rolling_buckets`` buckets (by default 10 of one second;
hystrix-go sums 11 and prunes lazily, which let errors exceed requests, issue
#115) plus running totals, so the health check never sums buckets. Latencies: a fixed log-linear histogram per
slot (4 slots of 15 s, a 60 s window like hystrix-go's ``Timing``), in
microseconds, exact below 128 us and within 1/64 (midpoint within 0.8 %) above,
so memory does not grow with the call rate (hystrix-go keeps every sample).

Not thread-safe by itself: the owning circuit serialises access, except for
the lock-free success path, which only appends to ``_pending`` (latencies of
successes) and ``_admits`` (commands that took a ticket) and reads ``_gate``.
Every reading folds those lists in first, moving the window folds them into
the second that ends, and every change of the totals closes the gate (see
:mod:`fasthystrix._core._gate`).
"""

from __future__ import annotations

from array import array
from collections import Counter

from ._gate import CLOSED

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

# The event indices, importable from here too (the compiled twin has them in _rolling.pxd).
from ._events import (  # noqa: F401
    BAD_REQUEST,
    CONTEXT_CANCELED,
    CONTEXT_DEADLINE_EXCEEDED,
    EVENT_NAMES,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    REJECTED,
    SHORT_CIRCUIT,
    SLOW_CALL,
    SUCCESS,
    TIMEOUT,
)

NUM_EVENTS = 9
# More per-bucket slots: commands that took a ticket, the highest number of tickets
# in use seen in that second (a max, not a sum), then BAD_REQUEST (11, an event of
# _events: errors ``ignore`` accepted) and SLOW_CALL (12: runs longer than slow_call_duration).
EXECUTED = 9
MAX_ACTIVE = 10
BUCKET_WIDTH = 13

COUNTER_BUCKETS = 10
_REQUEST_EVENTS = CONTEXT_DEADLINE_EXCEEDED + 1  # events below this index are requests
_ZEROS = [0] * BUCKET_WIDTH
NS_PER_SECOND = 1_000_000_000

LATENCY_SLOTS = 4
LATENCY_SLOT_SECONDS = 15
_SUB_BITS = 7  # 128 exact values, then 64 sub-buckets per power of two
_MAX_SHIFT = 20  # top bucket starts at 2**27 us (134 s); longer samples are clamped into it
LATENCY_BUCKETS = (_MAX_SHIFT << 6) + 128
PERCENTILES = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 100.0)


def latency_bucket_index(us: int) -> int:
    """The histogram bucket of a latency in microseconds (clamped to the top bucket)."""
    if us < 128:
        return us if us > 0 else 0
    shift = us.bit_length() - _SUB_BITS
    if shift > _MAX_SHIFT:
        return LATENCY_BUCKETS - 1
    return (shift << 6) + (us >> shift)


def _tally(raw: bytearray) -> dict[int, int]:
    """How many times each latency (us) occurs in ``raw``, one sample per byte."""
    # Successes of a fast dependency take a few microseconds: counting each such value
    # is a C scan of the bytes, several times cheaper than hashing every sample.
    counts: dict[int, int] = {}
    left = len(raw)
    for us in range(_SCANNED_VALUES):
        n = raw.count(us)
        if n:
            counts[us] = n
            left -= n
            if not left:
                return counts
    return Counter(raw)


# Latencies _tally counts by scanning before it gives up and hashes every sample.
_SCANNED_VALUES = 8


def latency_bucket_bounds(index: int) -> tuple[int, int]:
    """``(lowest, width)`` in microseconds of the values bucket ``index`` holds."""
    if index < 128:
        return index, 1
    shift = (index >> 6) - 1
    return (index - (shift << 6)) << shift, 1 << shift


class LatencySummary:
    """Percentiles and mean (milliseconds) of the latency samples in the window."""

    __slots__ = ("count", "mean", "percentiles")

    def __init__(self, count: int, mean: float, percentiles: dict[float, float]) -> None:
        self.count = count
        self.mean = mean
        self.percentiles = percentiles

    def __repr__(self) -> str:
        return f"LatencySummary(count={self.count}, mean={self.mean}, percentiles={self.percentiles})"


class _Histogram:
    """One slot's histogram: counts per bucket plus exact count, sum, min and max."""

    __slots__ = ("buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.buckets = array("I", bytes(4 * LATENCY_BUCKETS))
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def add_counts(self, counts: dict[int, int]) -> None:
        """Add many samples at once: how many times each latency (us) occurred."""
        buckets = self.buckets
        total = n = 0
        for us, times in counts.items():
            buckets[latency_bucket_index(us)] += times
            total += us * times
            n += times
        lo = min(counts)
        if self.count == 0 or lo < self.min:
            self.min = lo
        hi = max(counts)
        if hi > self.max:
            self.max = hi
        self.count += n
        self.total += total

    def add(self, us: int) -> None:
        if us < 128:
            index = us if us > 0 else 0
        else:
            shift = us.bit_length() - _SUB_BITS
            index = LATENCY_BUCKETS - 1 if shift > _MAX_SHIFT else (shift << 6) + (us >> shift)
        self.buckets[index] += 1
        if self.count == 0 or us < self.min:
            self.min = us
        if us > self.max:
            self.max = us
        self.count += 1
        self.total += us

    def clear(self) -> None:
        self.buckets = array("I", bytes(4 * LATENCY_BUCKETS))
        self.count = self.total = self.min = self.max = 0

    def copy(self) -> _Histogram:
        twin = _Histogram.__new__(_Histogram)
        twin.buckets = array("I", self.buckets)
        twin.count = self.count
        twin.total = self.total
        twin.min = self.min
        twin.max = self.max
        return twin


def summarize(slots: list[_Histogram]) -> LatencySummary:
    """Merge slot histograms into percentiles (nearest rank, as hystrix-go) and a mean."""
    count = sum(h.count for h in slots)
    if count == 0:
        return LatencySummary(0, 0.0, {p: 0.0 for p in PERCENTILES})
    merged = [0] * LATENCY_BUCKETS
    for h in slots:
        if h.count:
            for i, c in enumerate(h.buckets):
                if c:
                    merged[i] += c
    lo = min(h.min for h in slots if h.count)
    hi = max(h.max for h in slots if h.count)
    total = sum(h.total for h in slots)
    percentiles: dict[float, float] = {}
    for p in PERCENTILES:
        if p <= 0 or p >= 100:
            # Rank 1 and rank n are the smallest and largest samples, which are kept exactly.
            percentiles[p] = (lo if p <= 0 else hi) / 1000.0
            continue
        rank = _rank(p, count)
        value = 0.0
        seen = 0
        for i, c in enumerate(merged):
            seen += c
            if seen >= rank:
                low, width = latency_bucket_bounds(i)
                value = low + (width - 1) / 2
                value = min(max(value, lo), hi)
                break
        percentiles[p] = value / 1000.0
    return LatencySummary(count, total / count / 1000.0, percentiles)


def _rank(p: float, n: int) -> int:
    """hystrix-go's ordinal: 1 for p == 0, else ceil(p / 100 * n)."""
    if p <= 0:
        return 1
    # p has at most one decimal (99.5), so exact integer arithmetic avoids float ceil errors.
    tenths = round(p * 10)
    return max(1, -(-tenths * n // 1000))


class RollingMetrics:
    """Counters of every event over the rolling window (default: 10 one-second buckets) and
    latencies over the last 60 seconds."""

    __slots__ = (
        "_admits",
        "_buckets",
        "_errors",
        "_gate",
        "_latency_run",
        "_latency_stamp",
        "_latency_total",
        "_nb",
        "_pending",
        "_requests",
        "_second",
        "_slow",
        "_width_ns",
    )

    def __init__(self) -> None:
        self._buckets = [[0] * BUCKET_WIDTH for _ in range(COUNTER_BUCKETS)]
        # The window's geometry: ``_nb`` buckets of ``_width_ns``; ``_second`` numbers the buckets.
        self._nb = COUNTER_BUCKETS
        self._width_ns = NS_PER_SECOND
        # Running totals of the window, so the health check never sums buckets.
        self._requests = 0
        self._errors = 0
        self._slow = 0
        self._second = 0
        self._latency_run: list[_Histogram | None] = [None] * LATENCY_SLOTS
        self._latency_total: list[_Histogram | None] = [None] * LATENCY_SLOTS
        self._latency_stamp = [-1] * LATENCY_SLOTS
        # Appended to by the circuit's lock-free success path, folded in under the lock.
        # The lists are never replaced: the circuit keeps references to them.
        self._pending: list[int] = []  # latency in us of each success not yet counted
        self._admits: list[None] = []  # one entry per command that took a ticket, not yet counted
        # Published by the circuit; set to CLOSED here whenever the totals change.
        self._gate = CLOSED

    def _fold(self) -> None:
        """Count what the lock-free path appended, in the window's current second."""
        admits = self._admits
        executed = len(admits)
        if executed:
            del admits[:executed]
            self._buckets[self._second % self._nb][EXECUTED] += executed
        pending = self._pending
        succeeded = len(pending)
        if succeeded:
            # Close the gate before the totals change and drop the entries only after
            # they are counted: a lock-free reader never misses them (see _gate).
            self._gate = CLOSED
            counts: dict[int, int]
            try:
                # Every sample below 256 us: one byte each. Successes appended meanwhile are
                # copied too, and counted with the others (only the fold removes entries).
                raw = bytearray(pending)
            except ValueError:
                counts = Counter(pending[:succeeded])
            else:
                succeeded = len(raw)
                counts = _tally(raw)
            self._buckets[self._second % self._nb][SUCCESS] += succeeded
            self._requests += succeeded
            # The latency slot of the window's current bucket (its start, in seconds).
            slot = self._fresh_slot(self._second * self._width_ns // NS_PER_SECOND)
            if slot >= 0:
                for histograms in (self._latency_run, self._latency_total):
                    h = histograms[slot]
                    if h is None:
                        h = histograms[slot] = _Histogram()
                    h.add_counts(counts)
            del pending[:succeeded]

    def _unadmit(self) -> None:
        """Take back one admission the lock-free path appended (its command did not run after all)."""
        try:
            self._admits.pop()
        except IndexError:  # folded already, into the window's current second
            bucket = self._buckets[self._second % self._nb]
            if bucket[EXECUTED] > 0:
                bucket[EXECUTED] -= 1

    def reset(self) -> None:
        """Forget every event and sample."""
        self._gate = CLOSED
        del self._pending[:]
        del self._admits[:]
        for bucket in self._buckets:
            bucket[:] = _ZEROS
        self._requests = 0
        self._errors = 0
        self._slow = 0
        # Histograms stay allocated (a stamp of -1 marks them stale), as in the compiled twin.
        self._latency_stamp = [-1] * LATENCY_SLOTS

    def configure_window(self, bucket_ns: int, buckets: int) -> None:
        """Use ``buckets`` buckets of ``bucket_ns`` each from now on. A change empties the window;
        the same geometry again changes nothing."""
        if bucket_ns <= 0 or not 1 <= buckets <= 1_000_000:
            raise ValueError(f"bad rolling window: {buckets!r} buckets of {bucket_ns!r} ns")
        if bucket_ns == self._width_ns and buckets == self._nb:
            return
        self._fold()
        self._gate = CLOSED
        self._buckets = [[0] * BUCKET_WIDTH for _ in range(buckets)]
        self._nb = buckets
        self._width_ns = bucket_ns
        self._requests = self._errors = self._slow = 0
        self._second = 0

    def window(self) -> tuple[int, int]:
        """``(bucket_ns, buckets)``: the rolling window's geometry."""
        return self._width_ns, self._nb

    def _bucket(self, second: int) -> list[int]:
        """The bucket numbered ``second`` (``now_ns // bucket_ns``), expiring the buckets the window
        has moved past."""
        last = self._second
        n = self._nb
        if second > last:
            self._fold()  # what the lock-free path appended belongs to the bucket ending now
            self._gate = CLOSED
            for s in range(max(last + 1, second - n + 1), second + 1):
                self._buckets[s % n][:] = _ZEROS
            # Recount the totals from the buckets (once a second at most): the compiled twin
            # relies on this to heal any drift between its lock-free totals and buckets.
            requests = errors = slow = 0
            for bucket in self._buckets:
                requests += sum(bucket[:_REQUEST_EVENTS])
                errors += bucket[FAILURE] + bucket[REJECTED] + bucket[SHORT_CIRCUIT] + bucket[TIMEOUT]
                slow += bucket[SLOW_CALL]
            self._requests = requests
            self._errors = errors
            self._slow = slow
            self._second = second
        elif second < last:
            # A report stamped a moment before another thread moved the window on: count it now.
            second = last
        return self._buckets[second % n]

    def rejections(self) -> int:
        """Rejections in the window as of its last :meth:`health` (which moves it on)."""
        return sum(bucket[REJECTED] for bucket in self._buckets)

    def slow_calls(self) -> int:
        """Slow calls in the window as of its last :meth:`health` (which moves it on)."""
        return self._slow

    def health(self, now_ns: int) -> tuple[int, int]:
        """``(requests, errors)`` in the window ending at ``now_ns``."""
        self._fold()
        second = now_ns // self._width_ns
        if second != self._second:
            self._bucket(second)
        return self._requests, self._errors

    def record(
        self, event: int, fallback_event: int, now_ns: int, run_us: int, total_us: int, slow_us: int = 0
    ) -> None:
        """Count one command: its event, its fallback event (or -1) and its latencies in us (or -1);
        a request whose run took longer than ``slow_us`` (0: off) is also a slow call."""
        tick = now_ns // self._width_ns
        bucket = self._buckets[tick % self._nb] if tick == self._second else self._bucket(tick)
        bucket[event] += 1
        if event < _REQUEST_EVENTS:
            self._gate = CLOSED
            self._requests += 1
            if FAILURE <= event <= TIMEOUT:
                self._errors += 1
            if slow_us and run_us > slow_us:
                bucket[SLOW_CALL] += 1
                self._slow += 1
        if fallback_event >= 0:
            bucket[fallback_event] += 1
        if run_us >= 0 or total_us >= 0:
            slot = self._fresh_slot(now_ns // NS_PER_SECOND)
            if slot < 0:
                return
            if run_us >= 0:
                h = self._latency_run[slot]
                if h is None:
                    h = self._latency_run[slot] = _Histogram()
                h.add(run_us)
            if total_us >= 0:
                h = self._latency_total[slot]
                if h is None:
                    h = self._latency_total[slot] = _Histogram()
                h.add(total_us)

    def _fresh_slot(self, second: int) -> int:
        """The latency slot of ``second``, cleared if it held an older minute; -1 if it holds a later one."""
        stamp = second // LATENCY_SLOT_SECONDS
        slot = stamp % LATENCY_SLOTS
        if self._latency_stamp[slot] != stamp:
            if self._latency_stamp[slot] > stamp:
                return -1  # stamped before the slot was reused for a later minute: no sample
            # The slot held samples from a minute ago (or none): start it afresh.
            self._latency_stamp[slot] = stamp
            for h in (self._latency_run[slot], self._latency_total[slot]):
                if h is not None:
                    h.clear()
        return slot

    def record_success(self, now_ns: int, us: int) -> None:
        """``record(SUCCESS, -1, now_ns, us, us)``, specialised for the hot path."""
        tick = now_ns // self._width_ns
        stamp = now_ns // NS_PER_SECOND // LATENCY_SLOT_SECONDS
        slot = stamp % LATENCY_SLOTS
        run = self._latency_run[slot]
        total = self._latency_total[slot]
        if tick != self._second or self._latency_stamp[slot] != stamp or run is None or total is None:
            self.record(SUCCESS, -1, now_ns, us, us)
            return
        self._buckets[tick % self._nb][SUCCESS] += 1
        self._gate = CLOSED
        self._requests += 1
        if us < 128:
            index = us if us > 0 else 0
        else:
            shift = us.bit_length() - _SUB_BITS
            index = LATENCY_BUCKETS - 1 if shift > _MAX_SHIFT else (shift << 6) + (us >> shift)
        for h in (run, total):
            h.buckets[index] += 1
            if h.count == 0 or us < h.min:
                h.min = us
            if us > h.max:
                h.max = us
            h.count += 1
            h.total += us

    def record_executed(self, now_ns: int, active: int) -> None:
        """Count a command that took a ticket, with the tickets in use after it did."""
        tick = now_ns // self._width_ns
        bucket = self._buckets[tick % self._nb] if tick == self._second else self._bucket(tick)
        bucket[EXECUTED] += 1
        if active > bucket[MAX_ACTIVE]:
            bucket[MAX_ACTIVE] = active

    def counts(self, now_ns: int) -> tuple[int, ...]:
        """Window totals of every bucket slot (``BUCKET_WIDTH``): the 9 events, executed, the window's
        max tickets in use (at ``MAX_ACTIVE``), bad requests (at ``BAD_REQUEST``)..."""
        self._fold()
        self._bucket(now_ns // self._width_ns)
        buckets = self._buckets
        sums = [sum(bucket[i] for bucket in buckets) for i in range(BUCKET_WIDTH)]
        sums[MAX_ACTIVE] = max(bucket[MAX_ACTIVE] for bucket in buckets)
        return tuple(sums)

    def latency_slots(self, now_ns: int) -> tuple[list[_Histogram], list[_Histogram]]:
        """Copies of the ``(run, total)`` histograms of the last 60 seconds, for :func:`summarize`.

        Copying is cheap (one memcpy per slot), so the owner can hold its lock
        for the copy and merge afterwards without blocking commands.
        """
        self._fold()
        stamp = (now_ns // NS_PER_SECOND) // LATENCY_SLOT_SECONDS
        run: list[_Histogram] = []
        total: list[_Histogram] = []
        for i in range(LATENCY_SLOTS):
            if stamp - LATENCY_SLOTS < self._latency_stamp[i] <= stamp:
                h = self._latency_run[i]
                if h is not None and h.count:
                    run.append(h.copy())
                h = self._latency_total[i]
                if h is not None and h.count:
                    total.append(h.copy())
        return run, total

    def memory_bytes(self) -> int:
        """Bytes held by the histogram arrays (the part that could grow)."""
        n = sum(1 for h in (*self._latency_run, *self._latency_total) if h is not None)
        return n * 4 * LATENCY_BUCKETS
