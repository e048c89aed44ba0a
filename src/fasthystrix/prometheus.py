"""Prometheus metrics for every circuit: a ``prometheus_client`` collector read at scrape time.

Install with the ``prometheus`` extra (``pip install fasthystrix[prometheus]``)::

    from fasthystrix import prometheus

    prometheus.register()  # before the first command runs; REGISTRY by default

Exported, each with a ``command`` label (the circuit's name):

- ``fasthystrix_events_total{event}``: counter of every event since the circuit
  was created (hystrix-go's event names: ``success``, ``failure``, ``rejected``,
  ``short-circuit``, ``timeout``, ``context_canceled``,
  ``context_deadline_exceeded``, ``fallback-success``, ``fallback-failure``);
- ``fasthystrix_rolling_events{event}`` and ``fasthystrix_rolling_error_ratio``:
  gauges of the rolling window the breaker decides on (10 s unless ``rolling_window`` says otherwise);
- ``fasthystrix_circuit_open``, ``fasthystrix_circuit_forced_open``: 0 or 1;
- ``fasthystrix_concurrent_requests``, ``fasthystrix_max_concurrent_requests`` (the current
  concurrency limit: ``max_concurrent_requests``, or an ``AdaptiveLimit``'s value now);
- ``fasthystrix_run_duration_seconds``, ``fasthystrix_total_duration_seconds``:
  summaries whose quantiles are the rolling 60-second percentiles and whose
  ``_count``/``_sum`` are cumulative;
- ``fasthystrix_exporter_skipped_circuits`` (no labels): circuits left out of this
  scrape (see below); 0 but for names that are not valid UTF-8.

Any name can be scraped: the ``command`` label is the name as it is (the text
formats escape quotes, backslashes and newlines), except that a name with surrogate
code points (not encodable as UTF-8) is published with each one replaced by U+FFFD.
If that replaced name is another circuit's name too, the circuit is left out of the
scrape and counted in ``fasthystrix_exporter_skipped_circuits``: a scrape never
holds a series twice, and one circuit never fails the others or the application's
own metrics.

The ``_total`` counters (and the summaries' ``_count``/``_sum``) come from a
metric collector attached when a circuit is created: install this before the
first call of a command. Circuits created earlier are still exported, without
those series, until ``fasthystrix.flush()`` recreates them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from ._core._events import COUNTED_EVENT_NAMES
from ._observability import _cumulative
from ._observability._cumulative import PERCENTILES, CircuitReading, quantile_label
from ._observability._export_names import exportable

__all__ = ["FasthystrixCollector", "register"]

_QUANTILES = tuple((p, quantile_label(p)) for p in PERCENTILES)


class FasthystrixCollector:
    """A ``prometheus_client`` collector of every fasthystrix circuit; reads them only when scraped.

    Creating one starts cumulative counting (see the module docstring);
    :meth:`close` stops it and unregisters the collector from the registry
    :func:`register` added it to.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._registry: CollectorRegistry | None = None
        _cumulative.acquire()

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (so registering does not read every circuit)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """Read every circuit now."""
        if self._closed:
            return []
        families = self._families()
        readings, skipped = exportable(_cumulative.read_circuits())
        for reading in readings:
            _add(families, reading)
        families[-1].add_sample("fasthystrix_exporter_skipped_circuits", {}, skipped)
        return families

    def close(self) -> None:
        """Unregister from the registry (if :func:`register` registered it) and stop counting; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            registry, self._registry = self._registry, None
        if registry is not None:
            registry.unregister(self)
        _cumulative.release()

    def __enter__(self) -> FasthystrixCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _families() -> list[Metric]:
        command = ["command"]
        return [
            CounterMetricFamily(
                "fasthystrix_events",
                "Commands by event (hystrix-go's names) since the circuit was created.",
                labels=["command", "event"],
            ),
            GaugeMetricFamily(
                "fasthystrix_rolling_events",
                "Commands by event over the rolling window (10 s by default) the circuit breaker decides on.",
                labels=["command", "event"],
            ),
            GaugeMetricFamily(
                "fasthystrix_rolling_error_ratio",
                "Errors / requests over the rolling window (what error_percent_threshold is compared with).",
                labels=command,
            ),
            GaugeMetricFamily(
                "fasthystrix_circuit_open",
                "1 if the circuit is open or forced open (calls are short-circuited), else 0.",
                labels=command,
            ),
            GaugeMetricFamily(
                "fasthystrix_circuit_forced_open",
                "1 if the circuit is forced open, else 0.",
                labels=command,
            ),
            GaugeMetricFamily(
                "fasthystrix_concurrent_requests",
                "Commands holding a concurrency ticket now.",
                labels=command,
            ),
            GaugeMetricFamily(
                "fasthystrix_max_concurrent_requests",
                "The current concurrency limit (max_concurrent_requests, or an adaptive limit's value now).",
                labels=command,
            ),
            Metric(
                "fasthystrix_run_duration_seconds",
                "Duration of run() for successes and failures: rolling 60-second quantiles, cumulative count and sum.",
                "summary",
                unit="seconds",
            ),
            Metric(
                "fasthystrix_total_duration_seconds",
                "Duration of commands that ran, fallback included: rolling 60-second quantiles, cumulative count "
                "and sum.",
                "summary",
                unit="seconds",
            ),
            GaugeMetricFamily(
                "fasthystrix_exporter_skipped_circuits",
                "Circuits left out of this scrape: their name, made valid UTF-8, is another circuit's.",
            ),
        ]


def _add(families: list[Metric], reading: CircuitReading) -> None:
    events, rolling, error_ratio, is_open, forced, concurrent, maximum, run, total, _ = families
    name = reading.name
    cumulative = reading.cumulative
    if cumulative is not None:
        for event, count in zip(COUNTED_EVENT_NAMES, cumulative.events, strict=True):
            events.add_sample("fasthystrix_events_total", {"command": name, "event": event}, count)
    for event, count in zip(COUNTED_EVENT_NAMES, reading.rolling_events(), strict=True):
        rolling.add_sample("fasthystrix_rolling_events", {"command": name, "event": event}, count)
    snapshot = reading.rolling
    ratio = snapshot.errors / snapshot.requests if snapshot.requests else 0.0
    error_ratio.add_sample("fasthystrix_rolling_error_ratio", {"command": name}, ratio)
    is_open.add_sample("fasthystrix_circuit_open", {"command": name}, int(reading.open))
    forced.add_sample("fasthystrix_circuit_forced_open", {"command": name}, int(reading.forced_open))
    concurrent.add_sample("fasthystrix_concurrent_requests", {"command": name}, reading.concurrent)
    maximum.add_sample("fasthystrix_max_concurrent_requests", {"command": name}, reading.max_concurrent)
    run_totals = total_totals = None
    if cumulative is not None:
        run_totals = (cumulative.run_count, cumulative.run_seconds)
        total_totals = (cumulative.total_count, cumulative.total_seconds)
    _add_summary(run, name, snapshot.run_latency_percentiles, run_totals)
    _add_summary(total, name, snapshot.total_latency_percentiles, total_totals)


def _add_summary(
    summary: Metric, command: str, percentiles: dict[float, float], totals: tuple[int, float] | None
) -> None:
    for percentile, label in _QUANTILES:
        # The snapshot's percentiles are milliseconds; Prometheus wants base units.
        summary.add_sample(
            summary.name, {"command": command, "quantile": label}, percentiles.get(percentile, 0.0) / 1000
        )
    if totals is not None:
        summary.add_sample(summary.name + "_count", {"command": command}, totals[0])
        summary.add_sample(summary.name + "_sum", {"command": command}, totals[1])


def register(registry: CollectorRegistry = REGISTRY) -> FasthystrixCollector:
    """Create a :class:`FasthystrixCollector` and register it on ``registry``; ``close()`` undoes both."""
    collector = FasthystrixCollector()
    try:
        registry.register(collector)
    except BaseException:
        collector.close()
        raise
    collector._registry = registry
    return collector
