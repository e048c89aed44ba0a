"""The Prometheus exporter, scraped over a real prometheus_client HTTP endpoint on loopback."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest, make_wsgi_app
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

import fasthystrix
from conftest import SHARED_TESTS, FakeClock
from fasthystrix import prometheus
from fasthystrix._observability import _cumulative
from fasthystrix.metric_collector import registry as collector_registry
from support import HOSTILE_NAMES, KNOWN, boom, drive_known_events, exported_label, semaphore_command

EVENTS = (
    "success",
    "failure",
    "rejected",
    "short-circuit",
    "timeout",
    "context_canceled",
    "context_deadline_exceeded",
    "fallback-success",
    "fallback-failure",
    "bad-request",
)


class Scrape:
    """One parsed scrape (by prometheus_client's own parser of the format): families by name and
    sample values by (name, labels); a series twice is an error."""

    def __init__(self, text: str, openmetrics: bool = False) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        parse = openmetrics_families if openmetrics else text_string_to_metric_families
        for family in parse(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"series twice in a scrape: {key}"
                self.samples[key] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[name, frozenset(labels.items())]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def events(self, name: str, command: str) -> dict[str, float]:
        return {event: self(name, command=command, event=event) for event in EVENTS}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@contextlib.contextmanager
def serving(registry: CollectorRegistry) -> Iterator[Callable[..., Scrape]]:
    """Serve ``registry`` over HTTP on loopback; yield ``scrape(openmetrics=False)``."""
    # prometheus_client's own WSGI app (what start_http_server serves), on a loopback wsgiref server
    # polled often so that shutdown() is quick.
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def scrape(openmetrics: bool = False) -> Scrape:
        request = urllib.request.Request(url, headers={"Accept": _OPENMETRICS} if openmetrics else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(
                "application/openmetrics-text" if openmetrics else "text/plain"
            )
            return Scrape(response.read().decode("utf-8"), openmetrics)

    try:
        yield scrape
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def endpoint() -> Iterator[tuple[prometheus.FasthystrixCollector, Callable[..., Scrape]]]:
    """A fresh registry with the collector, served by prometheus_client's own HTTP server on loopback."""
    registry = CollectorRegistry()
    collector = prometheus.register(registry)
    try:
        with serving(registry) as scrape:
            yield collector, scrape
    finally:
        collector.close()


def test_scrape_counts_every_event(endpoint: Any, clock: FakeClock) -> None:
    _, scrape = endpoint
    drive_known_events("svc", clock)
    got = scrape()
    assert got.types["fasthystrix_events"] == "counter"
    assert got.events("fasthystrix_events_total", "svc") == KNOWN
    assert got.types["fasthystrix_rolling_events"] == "gauge"
    assert got.events("fasthystrix_rolling_events", "svc") == KNOWN
    assert got("fasthystrix_rolling_error_ratio", command="svc") == pytest.approx(0.7)
    assert got("fasthystrix_circuit_open", command="svc") == 0
    assert got("fasthystrix_circuit_forced_open", command="svc") == 0
    assert got("fasthystrix_concurrent_requests", command="svc") == 0
    assert got("fasthystrix_max_concurrent_requests", command="svc") == 7


def test_latency_summaries_in_seconds(endpoint: Any, clock: FakeClock) -> None:
    _, scrape = endpoint
    drive_known_events("svc", clock)
    got = scrape()
    for family in ("fasthystrix_run_duration_seconds", "fasthystrix_total_duration_seconds"):
        assert got.types[family] == "summary"
    run = "fasthystrix_run_duration_seconds"
    # run() finished for 3 successes (30 ms), 3 failures and 2 bad requests (10 ms); the histogram
    # is within 0.8 %.
    assert got(run, command="svc", quantile="0") == pytest.approx(0.010, rel=0.01)
    assert got(run, command="svc", quantile="0.99") == pytest.approx(0.030, rel=0.01)
    assert got(run, command="svc", quantile="1") == pytest.approx(0.030, rel=0.01)
    assert got(run + "_count", command="svc") == 8
    assert got(run + "_sum", command="svc") == pytest.approx(0.140)
    total = "fasthystrix_total_duration_seconds"
    # Every command that ran (not rejected, not short-circuited): the timeout's 1.5 s included.
    assert got(total, command="svc", quantile="1") == pytest.approx(1.5, rel=0.01)
    assert got(total + "_count", command="svc") == 9
    assert got(total + "_sum", command="svc") == pytest.approx(0.09 + 0.05 + 1.5)
    quantiles = {labels for name, labels in got.samples if name == run}
    assert {dict(labels)["quantile"] for labels in quantiles} == {
        "0",
        "0.25",
        "0.5",
        "0.75",
        "0.9",
        "0.95",
        "0.99",
        "0.995",
        "1",
    }


def test_forced_open_and_tripped_state(endpoint: Any, clock: FakeClock) -> None:
    _, scrape = endpoint
    semaphore_command("forced")
    semaphore_command("tripped", request_volume_threshold=2, error_percent_threshold=50, sleep_window=1000)
    fasthystrix.get_circuit("forced")[0].force_open = True
    for _ in range(2):
        with pytest.raises(ValueError):
            fasthystrix.do("tripped", boom)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("tripped", lambda: None)
    got = scrape()
    assert got("fasthystrix_circuit_open", command="forced") == 1
    assert got("fasthystrix_circuit_forced_open", command="forced") == 1
    assert got("fasthystrix_circuit_open", command="tripped") == 1
    assert got("fasthystrix_circuit_forced_open", command="tripped") == 0

    # The trial succeeds: the circuit closes and its rolling window starts over, the counters do not.
    clock.advance(1.1)
    assert fasthystrix.do("tripped", lambda: "ok") == "ok"
    got = scrape()
    assert got("fasthystrix_circuit_open", command="tripped") == 0
    assert got("fasthystrix_rolling_events", command="tripped", event="failure") == 0
    assert got("fasthystrix_events_total", command="tripped", event="failure") == 2
    assert got("fasthystrix_events_total", command="tripped", event="short-circuit") == 1
    assert got("fasthystrix_events_total", command="tripped", event="success") == 1


def test_concurrent_requests_while_running(endpoint: Any) -> None:
    _, scrape = endpoint
    semaphore_command("busy", max_concurrent_requests=3)
    inside: list[Scrape] = []
    fasthystrix.do("busy", lambda: fasthystrix.do("busy", lambda: inside.append(scrape())))
    assert inside[0]("fasthystrix_concurrent_requests", command="busy") == 2
    assert inside[0]("fasthystrix_max_concurrent_requests", command="busy") == 3
    assert scrape()("fasthystrix_concurrent_requests", command="busy") == 0


def test_counters_only_go_up_across_scrapes(endpoint: Any, clock: FakeClock) -> None:
    _, scrape = endpoint
    semaphore_command("up")
    fasthystrix.do("up", lambda: None)
    first = scrape()("fasthystrix_events_total", command="up", event="success")
    clock.advance(30)  # far past the rolling window
    fasthystrix.do("up", lambda: None)
    got = scrape()
    assert (first, got("fasthystrix_events_total", command="up", event="success")) == (1, 2)
    assert got("fasthystrix_rolling_events", command="up", event="success") == 1


def test_circuit_created_before_the_exporter(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    semaphore_command("early")
    fasthystrix.do("early", lambda: None)
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="fasthystrix"):
        collector = prometheus.register(registry)
    try:
        # A shared circuit's totals are kept in its file whenever it was created: all of them, no warning.
        assert ("early" in caplog.text and "no cumulative counters" in caplog.text) is not SHARED_TESTS
        fasthystrix.do("early", lambda: None)
        got = Scrape(_exposition(registry))
        if SHARED_TESTS:
            assert got("fasthystrix_events_total", command="early", event="success") == 2
            assert got("fasthystrix_run_duration_seconds_count", command="early") == 2
        else:
            # No counter series for it (never a counter that misses events), but every gauge.
            assert not got.has("fasthystrix_events_total", command="early", event="success")
            assert not got.has("fasthystrix_run_duration_seconds_count", command="early")
        assert got("fasthystrix_rolling_events", command="early", event="success") == 2
        assert got("fasthystrix_circuit_open", command="early") == 0
        # flush() recreates the circuit: from then on it is counted. A shared circuit's totals are
        # its file's, and outlive the flush (a counter never goes back).
        fasthystrix.flush()
        fasthystrix.do("early", lambda: None)
        got = Scrape(_exposition(registry))
        assert got("fasthystrix_events_total", command="early", event="success") == (3 if SHARED_TESTS else 1)
    finally:
        collector.close()


def _exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_close_unregisters_and_stops_counting() -> None:
    registry = CollectorRegistry()
    first = prometheus.register(registry)
    second = prometheus.register(CollectorRegistry())
    # Two exporters share one counting collector.
    assert collector_registry.factories.count(_cumulative.CumulativeCollector) == 1
    with pytest.raises(ValueError, match="Duplicated"):
        prometheus.register(registry)
    first.close()
    first.close()  # idempotent
    assert "fasthystrix" not in _exposition(registry)
    assert _cumulative.CumulativeCollector in collector_registry.factories
    second.close()
    assert _cumulative.CumulativeCollector not in collector_registry.factories
    semaphore_command("after")
    fasthystrix.do("after", lambda: None)
    assert _cumulative.cumulative_of(fasthystrix.get_circuit("after")[0]) is None


def test_context_manager_without_registry() -> None:
    registry = CollectorRegistry()
    with prometheus.FasthystrixCollector() as collector:
        registry.register(collector)
        semaphore_command("ctx")
        fasthystrix.do("ctx", lambda: None)
        assert Scrape(_exposition(registry))("fasthystrix_events_total", command="ctx", event="success") == 1
    assert collector.collect() == []
    registry.unregister(collector)


def test_exact_totals_under_threads(endpoint: Any) -> None:
    _, scrape = endpoint
    name = "hammered"
    semaphore_command(name, max_concurrent_requests=1000, request_volume_threshold=10**9)
    threads, calls = 8, 2000
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for n in range(calls):
            if n % 4 == 0:
                fasthystrix.do(name, boom, lambda err: None)
            else:
                fasthystrix.do(name, lambda: None)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, mid-increment included
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    got = scrape()
    total = threads * calls
    assert got("fasthystrix_events_total", command=name, event="success") == total * 3 // 4
    assert got("fasthystrix_events_total", command=name, event="failure") == total // 4
    assert got("fasthystrix_events_total", command=name, event="fallback-success") == total // 4
    assert got("fasthystrix_run_duration_seconds_count", command=name) == total
    assert got("fasthystrix_total_duration_seconds_count", command=name) == total


def test_any_name_gives_a_valid_scrape_and_leaves_the_apps_metrics_intact() -> None:
    registry = CollectorRegistry()
    requests = Counter("app_requests", "The application's own metric.", ["path"], registry=registry)
    requests.labels(path="/home").inc(5)
    names = ["normal", *HOSTILE_NAMES]
    with prometheus.register(registry), serving(registry) as scrape:
        for name in names:
            semaphore_command(name)
            fasthystrix.do(name, lambda: None)
        fasthystrix.do("normal", boom, lambda err: None)
        for got in (scrape(), scrape(openmetrics=True)):
            assert got("app_requests_total", path="/home") == 5
            assert got("fasthystrix_events_total", command="normal", event="success") == 1
            assert got("fasthystrix_events_total", command="normal", event="failure") == 1
            for name in names:
                # Label values as they are (the format escapes them), surrogates replaced by U+FFFD.
                assert got("fasthystrix_events_total", command=exported_label(name), event="success") == 1
                assert got("fasthystrix_circuit_open", command=exported_label(name)) == 0
            assert got("fasthystrix_exporter_skipped_circuits") == 0
            assert got.types["fasthystrix_exporter_skipped_circuits"] == "gauge"


def test_names_that_collide_once_exported_are_skipped_and_counted(endpoint: Any) -> None:
    _, scrape = endpoint
    for name in ("dup \ud800", "dup \udfff", "dup \ufffd", "other"):
        semaphore_command(name)
        fasthystrix.do(name, lambda: None)
    fasthystrix.do("dup \ufffd", lambda: None)
    for got in (scrape(), scrape(openmetrics=True)):
        # The name that needed no replacement keeps its series; the other two would repeat it.
        assert got("fasthystrix_events_total", command="dup \ufffd", event="success") == 2
        assert got("fasthystrix_events_total", command="other", event="success") == 1
        assert got("fasthystrix_exporter_skipped_circuits") == 2
    fasthystrix.flush()
    # The host's circuits outlive a flush() in their files: the two are still there, still skipped.
    assert scrape()("fasthystrix_exporter_skipped_circuits") == (2 if SHARED_TESTS else 0)
