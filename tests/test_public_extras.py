"""Public helpers not covered elsewhere: the clock hook, the default collector on its own, the registry's factories."""

from __future__ import annotations

from datetime import timedelta

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix.metric_collector import DefaultMetricCollector, MetricResult, registry


def test_set_clock_drives_circuits_created_afterwards() -> None:
    fake = FakeClock()
    fasthystrix.set_clock(fake)
    try:
        assert fasthystrix.get_clock() is fake
        fasthystrix.flush()
        fasthystrix.configure_command("clocked", fasthystrix.CommandConfig(isolation="semaphore", timeout=100))

        def slow() -> str:
            fake.advance(ms=150)  # 150 ms pass on the fake clock, none on the real one
            return "late"

        assert fasthystrix.do("clocked", slow, lambda err: type(err).__name__) == "TimeoutError"
        assert fasthystrix.get_circuit("clocked")[0].metrics().timeouts == 1
        fake.advance(11)  # the whole window passes
        assert fasthystrix.get_circuit("clocked")[0].metrics().timeouts == 0
    finally:
        fasthystrix.set_clock(None)
    assert fasthystrix.get_clock() is not fake


def test_set_clock_rejects_a_non_callable() -> None:
    with pytest.raises(TypeError, match="clock must be callable"):
        fasthystrix.set_clock(42)  # type: ignore[arg-type]


def test_default_collector_on_its_own() -> None:
    collector = DefaultMetricCollector("standalone")
    collector.update(MetricResult.from_event(1, 7, run_us=2000, total_us=3000, concurrency_in_use=0.5))
    collector.update(MetricResult.from_event(0, -1, run_us=1000, total_us=1000, concurrency_in_use=0.5))
    collector.update(MetricResult.from_event(3, -1, run_us=-1, total_us=-1, concurrency_in_use=0.0))
    snapshot = collector.snapshot()
    assert (snapshot.requests, snapshot.errors, snapshot.successes, snapshot.failures) == (3, 2, 1, 1)
    assert (snapshot.short_circuits, snapshot.fallback_successes, snapshot.error_percent) == (1, 1, 67)
    assert snapshot.run_latency_percentiles[100.0] == 2.0
    assert snapshot.total_latency_percentiles[0.0] == 1.0
    collector.reset()
    assert collector.snapshot().requests == 0
    with pytest.raises(ValueError, match="no outcome"):
        collector.update(MetricResult())


def test_metric_result_events_and_durations() -> None:
    result = MetricResult.from_event(4, 8, run_us=-1, total_us=1500, concurrency_in_use=0.25)
    assert result.events == ("timeout", "fallback-failure")
    assert (result.attempts, result.errors, result.timeouts, result.fallback_failures) == (1, 1, 1, 1)
    assert result.total_duration == timedelta(microseconds=1500)
    assert result.run_duration == timedelta(0)


def test_registry_lists_the_default_factory_first() -> None:
    def factory(name: str) -> DefaultMetricCollector:
        return DefaultMetricCollector(name)

    registry.register(factory)
    assert registry.factories == (DefaultMetricCollector, factory)
    registry.unregister(factory)
    assert registry.factories == (DefaultMetricCollector,)
    with pytest.raises(ValueError, match="not registered"):
        registry.unregister(factory)
    with pytest.raises(TypeError, match="callable"):
        registry.register("not a factory")  # type: ignore[arg-type]
