"""The OpenTelemetry instruments, collected by the SDK's InMemoryMetricReader."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

import fasthystrix
from conftest import SHARED_TESTS, FakeClock
from fasthystrix import otel
from fasthystrix._observability import _cumulative
from fasthystrix.metric_collector import registry as collector_registry
from support import HOSTILE_NAMES, KNOWN, drive_known_events, exported_label, semaphore_command


class Collected:
    """One collection: points by instrument name, keyed by their attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.data: dict[str, Any] = {}
        self.points: dict[str, dict[frozenset[tuple[str, Any]], float]] = {}
        metrics_data = reader.get_metrics_data()
        if metrics_data is None:
            return
        for resource in metrics_data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "fasthystrix"
                for metric in scope.metrics:
                    self.data[metric.name] = metric.data
                    self.points[metric.name] = {
                        frozenset(point.attributes.items()): point.value for point in metric.data.data_points
                    }

    def __call__(self, name: str, **attributes: str) -> float:
        return self.points[name][frozenset(attributes.items())]

    def has(self, name: str, **attributes: str) -> bool:
        return frozenset(attributes.items()) in self.points.get(name, {})


@pytest.fixture
def collect() -> Iterator[Callable[[], Collected]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentation = otel.instrument(provider)
    try:
        yield lambda: Collected(reader)
    finally:
        instrumentation.close()
        provider.shutdown()


def test_known_events(collect: Callable[[], Collected], clock: FakeClock) -> None:
    drive_known_events("svc", clock)
    got = collect()
    events = got.data["fasthystrix.events"]
    assert isinstance(events, Sum) and events.is_monotonic
    assert {event: got("fasthystrix.events", command="svc", event=event) for event in KNOWN} == KNOWN
    assert isinstance(got.data["fasthystrix.rolling.events"], Gauge)
    assert {event: got("fasthystrix.rolling.events", command="svc", event=event) for event in KNOWN} == KNOWN
    assert got("fasthystrix.rolling.error_ratio", command="svc") == pytest.approx(0.7)
    assert got("fasthystrix.circuit.open", command="svc") == 0
    assert got("fasthystrix.circuit.forced_open", command="svc") == 0
    assert got("fasthystrix.concurrent_requests", command="svc") == 0
    assert got("fasthystrix.max_concurrent_requests", command="svc") == 7


def test_latencies_in_seconds(collect: Callable[[], Collected], clock: FakeClock) -> None:
    drive_known_events("svc", clock)
    got = collect()
    assert got("fasthystrix.run.duration", command="svc", quantile="0") == pytest.approx(0.010, rel=0.01)
    assert got("fasthystrix.run.duration", command="svc", quantile="0.995") == pytest.approx(0.030, rel=0.01)
    assert len(got.points["fasthystrix.run.duration"]) == 9
    assert got("fasthystrix.run.duration.count", command="svc") == 8  # bad requests ran too
    assert got("fasthystrix.run.duration.sum", command="svc") == pytest.approx(0.14)
    assert got("fasthystrix.total.duration", command="svc", quantile="1") == pytest.approx(1.5, rel=0.01)
    assert got("fasthystrix.total.duration.count", command="svc") == 9
    assert got("fasthystrix.total.duration.sum", command="svc") == pytest.approx(1.64)
    assert isinstance(got.data["fasthystrix.run.duration.sum"], Sum)


def test_every_collection_reads_afresh(collect: Callable[[], Collected], clock: FakeClock) -> None:
    semaphore_command("fresh")
    fasthystrix.do("fresh", lambda: None)
    assert collect()("fasthystrix.events", command="fresh", event="success") == 1
    fasthystrix.do("fresh", lambda: None)
    got = collect()
    assert got("fasthystrix.events", command="fresh", event="success") == 2
    assert got("fasthystrix.rolling.events", command="fresh", event="success") == 2
    clock.advance(30)  # past the rolling window: the counter keeps its total
    got = collect()
    assert got("fasthystrix.events", command="fresh", event="success") == 2
    assert got("fasthystrix.rolling.events", command="fresh", event="success") == 0


def test_state_and_concurrency(collect: Callable[[], Collected]) -> None:
    semaphore_command("forced")
    semaphore_command("busy", max_concurrent_requests=3)
    fasthystrix.get_circuit("forced")[0].force_open = True
    inside: list[Collected] = []
    fasthystrix.do("busy", lambda: inside.append(collect()))
    assert inside[0]("fasthystrix.concurrent_requests", command="busy") == 1
    assert inside[0]("fasthystrix.circuit.open", command="forced") == 1
    assert inside[0]("fasthystrix.circuit.forced_open", command="forced") == 1
    assert inside[0]("fasthystrix.circuit.open", command="busy") == 0
    assert collect()("fasthystrix.concurrent_requests", command="busy") == 0


def test_circuit_created_before_instrumenting(clock: FakeClock) -> None:
    semaphore_command("early")
    fasthystrix.do("early", lambda: None)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with otel.instrument(provider):
        got = Collected(reader)
        # A shared circuit's totals are kept in its file whenever it was created.
        assert got.has("fasthystrix.events", command="early", event="success") is SHARED_TESTS
        assert got.has("fasthystrix.run.duration.count", command="early") is SHARED_TESTS
        assert got("fasthystrix.rolling.events", command="early", event="success") == 1
        assert got.has("fasthystrix.run.duration", command="early", quantile="0.5")
    provider.shutdown()


def test_close_and_instrument_again() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = otel.instrument(provider)
    assert "fasthystrix.events" in first.instruments
    with pytest.raises(ValueError, match="already instrumented"):
        otel.instrument(provider)
    semaphore_command("again")
    fasthystrix.do("again", lambda: None)
    assert Collected(reader)("fasthystrix.events", command="again", event="success") == 1
    first.close()
    first.close()  # idempotent
    assert first.instruments == {}
    assert _cumulative.CumulativeCollector not in collector_registry.factories
    assert not any(Collected(reader).points.values())
    # The SDK keeps the first instruments; instrumenting again switches them back on.
    with otel.instrument(provider):
        fasthystrix.do("again", lambda: None)
        assert Collected(reader)("fasthystrix.events", command="again", event="success") == 2
    provider.shutdown()


def test_global_provider_default() -> None:
    with otel.instrument() as instrumentation:
        assert len(instrumentation.instruments) == 14
        assert _cumulative.CumulativeCollector in collector_registry.factories


def test_shared_counting_with_prometheus(collect: Callable[[], Collected]) -> None:
    from prometheus_client import CollectorRegistry

    from fasthystrix import prometheus

    with prometheus.register(CollectorRegistry()):
        assert collector_registry.factories.count(_cumulative.CumulativeCollector) == 1
    # OpenTelemetry still holds it.
    assert _cumulative.CumulativeCollector in collector_registry.factories


def test_any_name_is_reported_with_attributes_any_exporter_can_encode(collect: Callable[[], Collected]) -> None:
    names = ["normal", *HOSTILE_NAMES, "dup \ufffd"]
    for name in names:
        semaphore_command(name)
        fasthystrix.do(name, lambda: None)
    got = collect()
    for name in names:
        assert got("fasthystrix.events", command=exported_label(name), event="success") == 1
        assert got("fasthystrix.circuit.open", command=exported_label(name)) == 0
    for points in got.points.values():
        for attributes in points:
            for value in dict(attributes).values():
                value.encode("utf-8")  # what OTLP and every other exporter must do
    assert got("fasthystrix.exporter.skipped_circuits") == 0
    # A second name that is "dup \ufffd" once exported: left out, and counted.
    semaphore_command("dup \ud800")
    fasthystrix.do("dup \ud800", lambda: None)
    fasthystrix.do("dup \ud800", lambda: None)
    got = collect()
    assert got("fasthystrix.events", command="dup \ufffd", event="success") == 1
    assert got("fasthystrix.exporter.skipped_circuits") == 1
    assert isinstance(got.data["fasthystrix.exporter.skipped_circuits"], Gauge)


def test_imports_only_the_api() -> None:
    code = "import sys, fasthystrix.otel; print(sorted({m for m in sys.modules if m.startswith('opentelemetry.sdk')}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
