"""The adaptive limit algorithms on simulated downstreams: the limit moves in the documented
direction and never leaves its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fasthystrix._core._limits import ALGORITHMS, AdaptiveLimit, Limiter

MS = 1_000_000


def saturating(limiter: Limiter, capacity: int, samples: int, timeout_ms: int = 100, demand: int = 1000) -> list[int]:
    """A downstream that answers in 20 ms up to ``capacity`` calls at once and queues beyond
    (latency grows with concurrency); a call over ``timeout_ms`` is dropped. Demand is always
    above the limit. Returns the limit after each sample."""
    limits = []
    for _ in range(samples):
        inflight = min(limiter.limit, demand)
        rtt = 20 * MS if inflight <= capacity else 20 * MS * inflight // capacity
        limits.append(limiter.on_sample(rtt, inflight, rtt > timeout_ms * MS))
    return limits


def test_the_configuration_is_validated() -> None:
    assert AdaptiveLimit() == AdaptiveLimit("gradient2", 20, 1, 1000)
    with pytest.raises(ValueError, match="algorithm"):
        AdaptiveLimit("cubic")
    with pytest.raises(TypeError, match="algorithm"):
        AdaptiveLimit(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initial"):
        AdaptiveLimit(initial=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_limit"):
        AdaptiveLimit(max_limit=True)
    with pytest.raises(ValueError, match="min_limit"):
        AdaptiveLimit(min_limit=0)
    with pytest.raises(ValueError, match="min_limit 50 is above max_limit 10"):
        AdaptiveLimit(initial=10, min_limit=50, max_limit=10)
    with pytest.raises(ValueError, match="initial 5 is outside"):
        AdaptiveLimit(initial=5, min_limit=10, max_limit=20)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_limiter_starts_at_initial(algorithm: str) -> None:
    assert AdaptiveLimit(algorithm, initial=33).limiter().limit == 33


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_up_when_there_is_headroom(algorithm: str) -> None:
    """A downstream far from saturation, with demand above the limit: the limit grows."""
    limiter = AdaptiveLimit(algorithm, initial=10, max_limit=200).limiter()
    limits = saturating(limiter, capacity=10_000, samples=2_000)
    assert limits[-1] > 100


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_not_up_when_the_limit_is_not_used(algorithm: str) -> None:
    """Application-limited: 2 calls in flight say nothing about a limit of 50."""
    limiter = AdaptiveLimit(algorithm, initial=50).limiter()
    for _ in range(1_000):
        limiter.on_sample(20 * MS, 2, False)
    assert limiter.limit <= 50


@pytest.mark.parametrize("algorithm", ["vegas", "aimd"])
def test_down_to_near_capacity_on_a_saturating_downstream(algorithm: str) -> None:
    """From far above the capacity (10), the limit comes down and stays near it."""
    limiter = AdaptiveLimit(algorithm, initial=200, max_limit=500).limiter()
    limits = saturating(limiter, capacity=10, samples=3_000)
    assert max(limits[-500:]) <= 60
    assert min(limits[-500:]) >= 5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_down_when_latency_rises(algorithm: str) -> None:
    """The downstream's latency goes from 20 ms to 150 ms (over the 100 ms timeout: AIMD sees
    drops) while the limit is in use: the limit falls."""
    limiter = AdaptiveLimit(algorithm, initial=100, max_limit=100).limiter()
    for _ in range(300):
        limiter.on_sample(20 * MS, limiter.limit, False)
    before = limiter.limit
    for _ in range(100):
        limiter.on_sample(150 * MS, limiter.limit, True)
    assert limiter.limit < before / 2


def test_gradient2_recovers_when_latency_returns_to_normal() -> None:
    limiter = AdaptiveLimit("gradient2", initial=100, max_limit=100).limiter()
    for _ in range(300):
        limiter.on_sample(20 * MS, limiter.limit, False)
    for _ in range(100):
        limiter.on_sample(150 * MS, limiter.limit, False)
    low = limiter.limit
    for _ in range(2_000):
        limiter.on_sample(20 * MS, limiter.limit, False)
    assert limiter.limit > 2 * low


@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    bounds=st.tuples(st.integers(1, 300), st.integers(1, 300)).map(sorted),
    initial_at=st.floats(0, 1),
    samples=st.lists(
        st.tuples(st.integers(0, 10_000 * MS), st.integers(0, 2_000), st.booleans()), min_size=1, max_size=300
    ),
)
def test_never_outside_its_bounds(
    algorithm: str, bounds: list[int], initial_at: float, samples: list[tuple[int, int, bool]]
) -> None:
    low, high = bounds
    initial = low + int((high - low) * initial_at)
    limiter = AdaptiveLimit(algorithm, initial=initial, min_limit=low, max_limit=high).limiter()
    for rtt, inflight, dropped in samples:
        limit = limiter.on_sample(rtt, inflight, dropped)
        assert low <= limit <= high
        assert limit == limiter.limit


def test_vegas_probes_are_reproducible() -> None:
    runs = [saturating(AdaptiveLimit("vegas", initial=50).limiter(), capacity=20, samples=3_000) for _ in range(2)]
    assert runs[0] == runs[1]
