"""The rolling window and the latency histogram, driven directly: exactly 10 one-second counter buckets,
running totals equal to a brute-force sum, percentiles close to the exact nearest rank, an exact mean,
constant memory, a 60-second latency window and clamping of very long samples."""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections import Counter
from fractions import Fraction
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from fasthystrix import _impl
from fasthystrix._core._rolling_py import (
    BUCKET_WIDTH,
    CONTEXT_CANCELED,
    CONTEXT_DEADLINE_EXCEEDED,
    EXECUTED,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    LATENCY_BUCKETS,
    MAX_ACTIVE,
    NUM_EVENTS,
    PERCENTILES,
    REJECTED,
    SHORT_CIRCUIT,
    SUCCESS,
    TIMEOUT,
    latency_bucket_bounds,
    latency_bucket_index,
)

NS = 1_000_000_000
BASE = 1_000_000 * NS
SLOT_ALIGNED = 999_990 * NS  # 999_990 is a multiple of 15
ERROR_EVENTS = (FAILURE, REJECTED, SHORT_CIRCUIT, TIMEOUT)
REQUEST_EVENTS = (SUCCESS, FAILURE, REJECTED, SHORT_CIRCUIT, TIMEOUT, CONTEXT_CANCELED, CONTEXT_DEADLINE_EXCEEDED)
TOP_BUCKET_LOW = latency_bucket_bounds(LATENCY_BUCKETS - 1)[0]

# No deadline and no too-slow check: both time the examples, which a busy machine slows down.
fast = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _rolling() -> Any:
    return _impl.current().RollingMetrics()


def _summaries(rolling: Any, now: int) -> tuple[Any, Any]:
    run, total = rolling.latency_slots(now)
    summarize = _impl.current().summarize
    return summarize(run), summarize(total)


def _nearest_rank(sorted_samples: list[int], p: float) -> int:
    n = len(sorted_samples)
    rank = 1 if p == 0 else max(1, math.ceil(Fraction(str(p)) * n / 100))
    return sorted_samples[rank - 1]


# -- counters -----------------------------------------------------------------------------


@pytest.mark.parametrize("offset_ns", [0, 1, NS // 2, NS - 1])
def test_event_is_counted_for_exactly_ten_seconds(offset_ns: int) -> None:
    rolling = _rolling()
    t = BASE + offset_ns
    rolling.record(FAILURE, FALLBACK_SUCCESS, t, 5, 5)
    rolling.record_executed(t, 3)
    for k in range(10):
        for now in (BASE + k * NS + (offset_ns if k == 0 else 0), BASE + k * NS + NS - 1):
            counts = rolling.counts(now)
            assert counts[FAILURE] == counts[FALLBACK_SUCCESS] == counts[EXECUTED] == 1, (k, counts)
            assert counts[MAX_ACTIVE] == 3
            assert rolling.health(now) == (1, 1), k
    gone = BASE + 10 * NS
    assert rolling.health(gone) == (0, 0)
    assert rolling.counts(gone) == (0,) * BUCKET_WIDTH


def test_health_alone_expires_the_tenth_second() -> None:
    rolling = _rolling()
    rolling.record(TIMEOUT, -1, BASE, -1, 7)
    assert rolling.health(BASE + 9 * NS + NS - 1) == (1, 1)
    assert rolling.health(BASE + 10 * NS) == (0, 0)


def test_events_of_different_seconds_expire_separately() -> None:
    rolling = _rolling()
    rolling.record(SUCCESS, -1, BASE, 1, 1)
    rolling.record(FAILURE, -1, BASE + 4 * NS, 1, 1)
    rolling.record(REJECTED, -1, BASE + 9 * NS, -1, -1)
    assert rolling.health(BASE + 9 * NS) == (3, 2)
    assert rolling.health(BASE + 10 * NS) == (2, 2)
    assert rolling.health(BASE + 14 * NS) == (1, 1)
    assert rolling.health(BASE + 19 * NS - 1) == (1, 1)
    assert rolling.health(BASE + 19 * NS) == (0, 0)


def test_reset_forgets_everything() -> None:
    rolling = _rolling()
    for second in range(5):
        rolling.record(FAILURE, FALLBACK_FAILURE, BASE + second * NS, 10, 10)
        rolling.record_executed(BASE + second * NS, 2)
    rolling.reset()
    now = BASE + 5 * NS
    assert rolling.health(now) == (0, 0)
    assert rolling.counts(now) == (0,) * BUCKET_WIDTH
    run, total = _summaries(rolling, now)
    assert run.count == total.count == 0


operations = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.one_of(st.integers(0, NS), st.integers(0, 12 * NS))),
        st.tuples(
            st.just("record"),
            st.integers(0, NUM_EVENTS - 3),
            st.sampled_from([-1, -1, FALLBACK_SUCCESS, FALLBACK_FAILURE]),
        ),
        st.tuples(st.just("executed"), st.integers(1, 50)),
        st.tuples(st.just("check")),
    ),
    max_size=120,
)


@fast
@given(start=st.integers(0, 10**13), ops=operations)
def test_running_totals_equal_brute_force_sums(start: int, ops: list[tuple[Any, ...]]) -> None:
    rolling = _rolling()
    now = start
    events: list[tuple[int, int]] = []  # (second, event index)
    peaks: dict[int, int] = {}

    def check() -> None:
        second = now // NS
        in_window = Counter(e for s, e in events if second - 10 < s <= second)
        requests = sum(in_window[e] for e in REQUEST_EVENTS)
        errors = sum(in_window[e] for e in ERROR_EVENTS)
        assert rolling.health(now) == (requests, errors)
        counts = rolling.counts(now)
        assert list(counts[: NUM_EVENTS + 1]) == [in_window[i] for i in range(NUM_EVENTS + 1)]
        assert counts[MAX_ACTIVE] == max((n for s, n in peaks.items() if second - 10 < s <= second), default=0)
        assert errors <= requests

    for op in ops:
        if op[0] == "advance":
            now += op[1]
        elif op[0] == "record":
            rolling.record(op[1], op[2], now, -1, -1)
            events.append((now // NS, op[1]))
            if op[2] >= 0:
                events.append((now // NS, op[2]))
        elif op[0] == "executed":
            rolling.record_executed(now, op[1])
            events.append((now // NS, EXECUTED))
            peaks[now // NS] = max(peaks.get(now // NS, 0), op[1])
        else:
            check()
    check()


# -- latency histogram ------------------------------------------------------------------------


def test_bucket_bounds_tile_the_range() -> None:
    expected_low = 0
    for index in range(LATENCY_BUCKETS):
        low, width = latency_bucket_bounds(index)
        assert low == expected_low, index
        assert latency_bucket_index(low) == index
        assert latency_bucket_index(low + width - 1) == index
        assert (width == 1) if index < 128 else (width * 64 <= low)
        expected_low = low + width
    assert latency_bucket_index(0) == 0
    assert latency_bucket_index(-5) == 0


@pytest.mark.parametrize("us", [TOP_BUCKET_LOW, 2**27, 2**27 + 1, 10**9, 2**40, 2**62])
def test_values_above_the_top_bucket_are_clamped(us: int) -> None:
    assert latency_bucket_index(us) == LATENCY_BUCKETS - 1


samples_us = st.one_of(st.integers(1, 1_000), st.integers(1, 1_000_000), st.integers(1, 100_000_000))


@fast
@given(
    samples=st.lists(st.tuples(samples_us, st.integers(0, 59_999)), min_size=1, max_size=300),
)
def test_percentiles_are_within_one_percent_of_nearest_rank(samples: list[tuple[int, int]]) -> None:
    rolling = _rolling()
    # All samples within one minute starting at a slot boundary: all four slots are in the window.
    for us, at_ms in sorted(samples, key=lambda s: s[1]):
        rolling.record(SUCCESS, -1, SLOT_ALIGNED + at_ms * 1_000_000, us, us)
    now = SLOT_ALIGNED + 59_999 * 1_000_000
    values = sorted(us for us, _ in samples)
    for summary in _summaries(rolling, now):
        assert summary.count == len(values)
        assert set(summary.percentiles) == set(PERCENTILES)
        for p in PERCENTILES:
            exact_ms = _nearest_rank(values, p) / 1000
            got = summary.percentiles[p]
            assert abs(got - exact_ms) <= max(1.0, 0.01 * exact_ms), (p, got, exact_ms)
        assert math.isclose(summary.mean, sum(values) / len(values) / 1000, rel_tol=1e-12), summary.mean


@fast
@given(samples=st.lists(st.integers(0, 127), min_size=1, max_size=200))
def test_percentiles_below_128_us_are_exact(samples: list[int]) -> None:
    rolling = _rolling()
    for us in samples:
        rolling.record(FAILURE, -1, BASE, us, us)
    run, _ = _summaries(rolling, BASE)
    values = sorted(samples)
    assert run.percentiles == {p: _nearest_rank(values, p) / 1000 for p in PERCENTILES}


def test_mean_is_exact() -> None:
    rolling = _rolling()
    samples = [1, 2, 127, 128, 1_000, 65_537, 99_999_999, 3]
    for us in samples:
        rolling.record(SUCCESS, -1, BASE, us, us + 1)
    run, total = _summaries(rolling, BASE)
    assert run.mean == sum(samples) / len(samples) / 1000
    assert total.mean == sum(s + 1 for s in samples) / len(samples) / 1000


def test_run_and_total_latency_are_kept_apart() -> None:
    rolling = _rolling()
    rolling.record(SUCCESS, -1, BASE, 10, 20)
    rolling.record(TIMEOUT, FALLBACK_SUCCESS, BASE, -1, 30_000)
    rolling.record(SHORT_CIRCUIT, FALLBACK_SUCCESS, BASE, -1, -1)
    run, total = _summaries(rolling, BASE)
    assert run.count == 1 and run.percentiles[100.0] == 0.010
    assert total.count == 2 and total.percentiles[0.0] == 0.020 and total.percentiles[100.0] == 30.0


def test_empty_summary_is_zero() -> None:
    run, total = _summaries(_rolling(), BASE)
    for summary in (run, total):
        assert summary.count == 0 and summary.mean == 0.0
        assert summary.percentiles == {p: 0.0 for p in PERCENTILES}


def test_histogram_memory_is_constant_after_a_million_samples() -> None:
    # 1000 instants 0.1 s apart (100 s: every latency slot is used, and reused) x 1000 latencies,
    # prepared before tracing so that only the window's own allocations are counted.
    instants = [BASE + k * 100_000_000 for k in range(1000)]
    latencies = [(i * 7919) % 100_000_000 + 1 for i in range(1000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rolling = _rolling()
        record = rolling.record
        for now in instants:
            for us in latencies:
                record(SUCCESS, -1, now, us, us)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert rolling.memory_bytes() < 64 * 1024
    assert held < 64 * 1024, f"{held} bytes held after 1 000 000 samples"
    run, total = _summaries(rolling, instants[-1])
    assert run.count == total.count
    assert 450_000 <= run.count < 600_000  # the last 45 to 60 seconds


@fast
@given(at_ms=st.integers(0, 10**9), age_ms=st.integers(0, 200_000))
def test_latency_window_is_sixty_seconds(at_ms: int, age_ms: int) -> None:
    rolling = _rolling()
    at = BASE + at_ms * 1_000_000
    rolling.record(SUCCESS, -1, at, 1234, 1234)
    run, total = _summaries(rolling, at + age_ms * 1_000_000)
    if age_ms >= 60_000:
        assert run.count == total.count == 0, "a sample older than 60 s is still in the window"
    elif age_ms < 45_000:
        # The window moves in 15 s slots: a sample stays at least 45 s and less than 60 s.
        assert run.count == total.count == 1
        assert run.percentiles[50.0] == 1.234


def test_latency_samples_leave_the_window_slot_by_slot() -> None:
    rolling = _rolling()
    rolling.record(SUCCESS, -1, SLOT_ALIGNED, 1_000, 1_000)
    rolling.record(SUCCESS, -1, SLOT_ALIGNED + 30 * NS, 3_000, 3_000)
    assert _summaries(rolling, SLOT_ALIGNED + 59 * NS)[0].count == 2
    run, _ = _summaries(rolling, SLOT_ALIGNED + 60 * NS)
    assert run.count == 1 and run.percentiles[0.0] == 3.0
    assert _summaries(rolling, SLOT_ALIGNED + 90 * NS)[0].count == 0


def test_single_clamped_sample_reports_its_exact_value() -> None:
    rolling = _rolling()
    rolling.record(SUCCESS, -1, BASE, 10**9, 10**9)
    run, _ = _summaries(rolling, BASE)
    assert run.percentiles[100.0] == run.percentiles[0.0] == 1_000_000.0
    assert run.mean == 1_000_000.0


def test_max_is_exact_when_samples_are_clamped() -> None:
    """Samples above the top bucket (~133 s) share one bucket; the maximum must still be the real one."""
    rolling = _rolling()
    samples = [1_000, 200_000_000, 500_000_000]
    for us in samples:
        rolling.record(SUCCESS, -1, BASE, us, us)
    run, total = _summaries(rolling, BASE)
    for summary in (run, total):
        assert summary.mean == sum(samples) / 3 / 1000
        assert summary.percentiles[100.0] == 500_000.0, summary.percentiles


def test_min_and_max_are_exact_within_range() -> None:
    """p0 and p100 are hystrix-go's minimum and maximum; the histogram keeps both exactly."""
    rolling = _rolling()
    for us in (5_000, 5_119):  # neither is the midpoint of its 64 us wide bucket
        rolling.record(SUCCESS, -1, BASE, us, us)
    run, _ = _summaries(rolling, BASE)
    assert (run.percentiles[0.0], run.percentiles[100.0]) == (5.0, 5.119), run.percentiles
