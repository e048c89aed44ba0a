"""Metric collectors: the plugin point every command reports to, as hystrix-go's ``metricCollector``.

``registry.register(factory)`` adds a factory; ``factory(name)`` is called once
per circuit when the circuit is created, and each finished command then calls
``update()`` on every collector exactly once with one :class:`MetricResult`
(``attempts == 1``) carrying both its outcome and its fallback outcome.
Collectors registered after a circuit was created do not apply to it (as in
hystrix-go; ``flush()`` recreates circuits). A collector that raises is
logged on the ``fasthystrix`` logger and never breaks the command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields as dataclass_fields
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from . import _impl
from ._core import _clock
from ._core._events import (
    BAD_REQUEST,
    BAD_REQUEST_NAME,
    EVENT_NAMES,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    NO_EVENT,
    REJECTED,
    SHORT_CIRCUIT,
    SLOW_CALL,
    SUCCESS,
    TIMEOUT,
)
from ._core._log import logger
from ._core._metrics import MetricsSnapshot, error_percent

__all__ = [
    "DefaultMetricCollector",
    "MetricCollector",
    "MetricCollectorRegistry",
    "MetricResult",
    "registry",
]

_EVENT_FIELDS = (
    "successes",
    "failures",
    "rejects",
    "short_circuits",
    "timeouts",
    "context_canceled",
    "context_deadline_exceeded",
)


@dataclass(frozen=True)
class MetricResult:
    """What one command reports: hystrix-go's ``MetricResult`` fields in snake_case."""

    attempts: int = 0
    errors: int = 0
    successes: int = 0
    failures: int = 0
    rejects: int = 0
    short_circuits: int = 0
    timeouts: int = 0
    fallback_successes: int = 0
    fallback_failures: int = 0
    context_canceled: int = 0
    context_deadline_exceeded: int = 0
    total_duration: timedelta = timedelta(0)
    run_duration: timedelta = timedelta(0)
    concurrency_in_use: float = 0.0
    #: 1 for an error the command's ``ignore`` accepted (neither success nor failure, not an attempt
    #: of the breaker's: ``attempts`` and ``errors`` are 0).
    bad_requests: int = 0

    @classmethod
    def from_event(
        cls, event: int, fallback_event: int, run_us: int, total_us: int, concurrency_in_use: float
    ) -> MetricResult:
        """Build from the event indices used internally (``-1``: no fallback / no sample)."""
        # This runs once per command for every circuit with a collector, so it skips the
        # dataclass __init__ (about 2 µs for 14 frozen fields): a copy of the precomputed
        # fields of this (event, fallback) pair goes straight into the instance's dict.
        result = object.__new__(cls)
        fields = _TEMPLATES[event][fallback_event].copy()
        fields["total_duration"] = _ONE_US * total_us if total_us > 0 else _ZERO
        fields["run_duration"] = _ONE_US * run_us if run_us > 0 else _ZERO
        fields["concurrency_in_use"] = concurrency_in_use
        result.__dict__.update(fields)
        return result

    @property
    def events(self) -> tuple[str, ...]:
        """The hystrix-go event strings of this result (outcome first, then the fallback's)."""
        names = []
        for index, field_name in enumerate(_EVENT_FIELDS):
            if getattr(self, field_name):
                names.append(EVENT_NAMES[index])
        if self.bad_requests:
            names.append(BAD_REQUEST_NAME)
        if self.fallback_successes:
            names.append("fallback-success")
        if self.fallback_failures:
            names.append("fallback-failure")
        return tuple(names)


_ONE_US = timedelta(microseconds=1)
_ZERO = timedelta(0)


def _template(event: int, fallback_event: int) -> dict[str, object]:
    fields: dict[str, object] = {f.name: f.default for f in dataclass_fields(MetricResult)}
    if event == BAD_REQUEST:
        fields["bad_requests"] = 1
        return fields
    fields["attempts"] = 1
    fields[_EVENT_FIELDS[event]] = 1
    if FAILURE <= event <= TIMEOUT:  # failure, rejected, short-circuit, timeout
        fields["errors"] = 1
    if fallback_event == FALLBACK_SUCCESS:
        fields["fallback_successes"] = 1
    elif fallback_event == FALLBACK_FAILURE:
        fields["fallback_failures"] = 1
    return fields


# _TEMPLATES[event][fallback_event]: every field of a result but the durations and concurrency.
_TEMPLATES = [
    {fallback: _template(event, fallback) for fallback in (NO_EVENT, FALLBACK_SUCCESS, FALLBACK_FAILURE)}
    for event in range(len(_EVENT_FIELDS))
]
_TEMPLATES += [{}] * (BAD_REQUEST - len(_TEMPLATES)) + [{NO_EVENT: _template(BAD_REQUEST, NO_EVENT)}]


@runtime_checkable
class MetricCollector(Protocol):
    """The whole plugin contract: two methods, as hystrix-go's ``MetricCollector``."""

    def update(self, result: MetricResult) -> None:
        """Record one finished command."""

    def reset(self) -> None:
        """Forget everything (called when the circuit closes and on ``flush()``)."""


class DefaultMetricCollector:
    """The rolling-window collector every circuit has first; ``CircuitBreaker.metrics()`` reads it."""

    __slots__ = ("_lock", "_rolling", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._rolling = _impl.current().RollingMetrics()
        # The owning circuit shares this lock, so updates and health checks see one state.
        self._lock = threading.Lock()

    def update(self, result: MetricResult) -> None:
        """Record one result (the circuit's own commands record directly, without a ``MetricResult``)."""
        event = next((i for i, f in enumerate(_EVENT_FIELDS) if getattr(result, f)), None)
        if event is None and result.bad_requests:
            event = BAD_REQUEST
        if event is None:
            raise ValueError(f"MetricResult has no outcome: {result!r}")
        fallback_event = (
            FALLBACK_SUCCESS
            if result.fallback_successes
            else FALLBACK_FAILURE
            if result.fallback_failures
            else NO_EVENT
        )
        ran = event in (SUCCESS, FAILURE, BAD_REQUEST)
        run_us = result.run_duration // timedelta(microseconds=1) if ran else -1
        total_us = result.total_duration // timedelta(microseconds=1) if event not in (REJECTED, SHORT_CIRCUIT) else -1
        with self._lock:
            self._rolling.record(event, fallback_event, _clock.now_ns(), run_us, total_us)

    def reset(self) -> None:
        """Forget every event and latency sample."""
        with self._lock:
            self._rolling.reset()

    def reading(self, now_ns: int | None = None) -> tuple[tuple[int, ...], Any, Any]:
        """``(counts, run, total)``: the window's counts (the 9 events, executed, max tickets in
        use, bad requests...: ``RollingMetrics.counts``) and its two latency summaries, read
        together; what :meth:`snapshot` and the metrics stream are made of."""
        now = _clock.now_ns() if now_ns is None else now_ns
        with self._lock:
            counts = self._rolling.counts(now)
            run_slots, total_slots = self._rolling.latency_slots(now)
        summarize = _impl.current().summarize
        return counts, summarize(run_slots), summarize(total_slots)

    def snapshot(self, concurrent: int = 0, now_ns: int | None = None) -> MetricsSnapshot:
        """A consistent reading of the window (``concurrent``: tickets in use, from the circuit)."""
        counts, run, total = self.reading(now_ns)
        requests = sum(counts[:7])
        errors = counts[1] + counts[2] + counts[3] + counts[4]
        return MetricsSnapshot(
            requests=requests,
            errors=errors,
            successes=counts[0],
            failures=counts[1],
            rejects=counts[2],
            short_circuits=counts[3],
            timeouts=counts[4],
            context_canceled=counts[5],
            context_deadline_exceeded=counts[6],
            fallback_successes=counts[7],
            fallback_failures=counts[8],
            error_percent=error_percent(requests, errors),
            concurrent=concurrent,
            executed=counts[9],
            max_concurrent=counts[10],
            run_latency_percentiles=run.percentiles,
            run_latency_mean=run.mean,
            total_latency_percentiles=total.percentiles,
            total_latency_mean=total.mean,
            bad_requests=counts[BAD_REQUEST],
            slow_calls=counts[SLOW_CALL],
        )


MetricCollectorFactory = Callable[[str], MetricCollector]


class MetricCollectorRegistry:
    """The factories that make each new circuit's collectors; the default one always comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._factories: tuple[MetricCollectorFactory, ...] = ()

    def register(self, factory: MetricCollectorFactory) -> None:
        """Add ``factory``; circuits created from now on get ``factory(name)`` as a collector."""
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {factory!r}")
        with self._lock:
            self._factories = (*self._factories, factory)

    def unregister(self, factory: MetricCollectorFactory) -> None:
        """Remove a factory added with :meth:`register` (existing circuits keep their collectors)."""
        with self._lock:
            if factory not in self._factories:
                raise ValueError(f"{factory!r} is not registered")
            factories = list(self._factories)
            factories.remove(factory)
            self._factories = tuple(factories)

    @property
    def factories(self) -> tuple[Callable[[str], object], ...]:
        """Every factory in the order circuits call them, the default collector's first."""
        return (DefaultMetricCollector, *self._factories)

    def initialize_metric_collectors(self, name: str) -> list[MetricCollector]:
        """Call the registered (non-default) factories for a new circuit, checking what they return."""
        collectors = []
        for factory in self._factories:
            # A broken plugin must not stop the circuit from being created: log and skip it.
            try:
                collector = factory(name)
            except Exception:
                logger.exception("metric collector factory %r failed for circuit %r", factory, name)
                continue
            if not isinstance(collector, MetricCollector):
                logger.error(
                    "metric collector factory %r returned %r, which has no update() and reset(); skipped",
                    factory,
                    collector,
                )
                continue
            collectors.append(collector)
        return collectors


registry = MetricCollectorRegistry()
