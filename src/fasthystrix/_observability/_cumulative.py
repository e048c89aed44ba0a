"""Cumulative event counts per circuit, and the reading of a circuit the Prometheus and OpenTelemetry exporters share.

The rolling window (``CircuitBreaker.metrics()``) forgets after 10 seconds and
is reset when a circuit closes, so it cannot back a counter that only goes up.
:class:`CumulativeCollector` is a metric collector that adds every command's
outcome to integers that are never reset (its ``reset()`` is a no-op, as in
hystrix-go's plugins); it lives in the circuit's collector list, so a
circuit's counters start at zero when ``flush()`` recreates it (a counter
reset, which Prometheus and OpenTelemetry handle).

Collectors attach when a circuit is created: circuits created before
:func:`acquire` have no cumulative counts (their :class:`CircuitReading`
carries ``cumulative=None``), and :func:`acquire` logs their names.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .. import _registry
from .._core._events import COUNTED_EVENT_NAMES
from .._core._log import logger
from .._core._metrics import MetricsSnapshot
from .._core._rolling_py import PERCENTILES  # the rolling latency percentiles, in MetricsSnapshot's order
from ..metric_collector import MetricResult, registry

__all__ = [
    "PERCENTILES",
    "CircuitReading",
    "CumulativeCollector",
    "CumulativeCounts",
    "acquire",
    "cumulative_of",
    "quantile_label",
    "read_circuits",
    "release",
]

_ZERO = timedelta(0)


def quantile_label(percentile: float) -> str:
    """``99.5`` -> ``"0.995"``, ``100`` -> ``"1"``: Prometheus' quantile label for a percentile."""
    return format(percentile / 100, "g")


@dataclass(frozen=True)
class CumulativeCounts:
    """Totals since the circuit was created: ``events`` in ``COUNTED_EVENT_NAMES`` order (hystrix-go's
    events, then bad requests), durations in seconds.

    ``run_count``/``run_seconds`` cover the commands whose run finished (success,
    failure or bad request); ``total_count``/``total_seconds`` every command that was not
    rejected or short-circuited, as the rolling latency histograms.
    """

    events: tuple[int, ...]
    run_count: int
    run_seconds: float
    total_count: int
    total_seconds: float


class CumulativeCollector:
    """A metric collector that counts every event of its circuit, forever; thread-safe."""

    __slots__ = ("_counts", "_lock", "_run_count", "_run_sum", "_total_count", "_total_sum", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._counts = [0] * len(COUNTED_EVENT_NAMES)
        self._run_count = 0
        self._total_count = 0
        # Durations are summed as timedelta (an addition is ~3x cheaper than converting each to an int).
        self._run_sum = _ZERO
        self._total_sum = _ZERO

    def update(self, result: MetricResult) -> None:
        """Add one command's outcome, its fallback's outcome and its durations."""
        # Successes first: the common case costs one attribute test.
        if result.successes:
            event = 0
        elif result.failures:
            event = 1
        elif result.rejects:
            event = 2
        elif result.short_circuits:
            event = 3
        elif result.timeouts:
            event = 4
        elif result.context_canceled:
            event = 5
        elif result.context_deadline_exceeded:
            event = 6
        elif result.bad_requests:
            event = 9  # its place in COUNTED_EVENT_NAMES
        else:
            return
        counts = self._counts
        lock = self._lock
        # acquire/release is about half the cost of ``with lock`` on CPython 3.11; nothing below can raise.
        lock.acquire()
        try:
            counts[event] += 1
            if result.fallback_successes:
                counts[7] += 1
            elif result.fallback_failures:
                counts[8] += 1
            if event <= 1 or event == 9:
                self._run_count += 1
                self._run_sum += result.run_duration
            if event != 2 and event != 3:
                self._total_count += 1
                self._total_sum += result.total_duration
        finally:
            lock.release()

    def _after_fork_in_child(self) -> None:
        """In a forked child: a new lock (a thread gone with the fork may have held the old one).

        The counts stay: they are the circuit's since its creation, as the child's window is.
        """
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Nothing: cumulative counts survive the circuit closing (hystrix-go's plugins ignore ``Reset`` too)."""

    def counts(self) -> CumulativeCounts:
        """A consistent copy of the totals."""
        with self._lock:
            events = tuple(self._counts)
            run_count, run_sum = self._run_count, self._run_sum
            total_count, total_sum = self._total_count, self._total_sum
        return CumulativeCounts(events, run_count, run_sum.total_seconds(), total_count, total_sum.total_seconds())


def shared_cumulative(circuit: Any) -> CumulativeCounts | None:
    """A shared circuit's host-wide totals, kept by its rolling window in the shared file
    (every process' commands, not only this one's); ``None`` for a private circuit."""
    if getattr(circuit, "_shared", None) is None:
        return None
    default = circuit._default
    with default._lock:  # the pure twin's shared window is read under its host lock
        events, run_count, run_us, total_count, total_us = default._rolling.cumulative()
    return CumulativeCounts(tuple(events), run_count, run_us / 1e6, total_count, total_us / 1e6)


def cumulative_of(circuit: Any) -> CumulativeCollector | None:
    """The cumulative collector attached to ``circuit``, if it was created while counting was on."""
    for collector in circuit._collectors:
        if type(collector) is CumulativeCollector:
            return collector
    return None


@dataclass(frozen=True)
class CircuitReading:
    """Everything the exporters publish about one circuit, read at once."""

    name: str
    state: str
    concurrent: int
    #: The concurrency limit now (``CircuitBreaker.concurrency_limit``: an adaptive limit's current value).
    max_concurrent: int
    rolling: MetricsSnapshot
    cumulative: CumulativeCounts | None

    @property
    def open(self) -> bool:
        """Open or forced open: calls are short-circuited (but for an open circuit's trial)."""
        return self.state != "closed"

    @property
    def forced_open(self) -> bool:
        """Forced open by configuration or ``force_open``."""
        return self.state == "forced-open"

    def rolling_events(self) -> tuple[int, ...]:
        """The rolling window's counts in ``COUNTED_EVENT_NAMES`` order."""
        r = self.rolling
        return (
            r.successes,
            r.failures,
            r.rejects,
            r.short_circuits,
            r.timeouts,
            r.context_canceled,
            r.context_deadline_exceeded,
            r.fallback_successes,
            r.fallback_failures,
            r.bad_requests,
        )


def read_circuits() -> list[CircuitReading]:
    """A reading of every live circuit, sorted by name (nothing on the command path is touched)."""
    readings = []
    for name, circuit in sorted(_registry.circuits().items()):
        counts = shared_cumulative(circuit)
        if counts is None:
            collector = cumulative_of(circuit)
            counts = None if collector is None else collector.counts()
        readings.append(
            CircuitReading(
                name=name,
                state=circuit.state(),
                concurrent=circuit.tickets_in_use,
                max_concurrent=circuit.concurrency_limit,
                rolling=circuit.metrics(),
                cumulative=counts,
            )
        )
    return readings


_lock = threading.Lock()
_users = 0


def acquire() -> None:
    """Start counting (once, however many exporters ask): circuits created from now on get a collector.

    Each call must be matched by one :func:`release`.
    """
    global _users
    with _lock:
        _users += 1
        # Checked against the registry itself, not a flag, so a registry cleared behind our back heals.
        if CumulativeCollector not in registry.factories:
            registry.register(CumulativeCollector)
    # A shared circuit's totals are its file's, kept whenever it was created: never uncounted.
    uncounted = sorted(
        name
        for name, circuit in _registry.circuits().items()
        if cumulative_of(circuit) is None and getattr(circuit, "_shared", None) is None
    )
    if uncounted:
        logger.warning(
            "circuits created before the metrics exporter have no cumulative counters until flush(): %s",
            ", ".join(uncounted),
        )


def release() -> None:
    """Undo one :func:`acquire`; the last one stops counting for circuits created afterwards."""
    global _users
    with _lock:
        _users = max(_users - 1, 0)
        if _users == 0 and CumulativeCollector in registry.factories:
            registry.unregister(CumulativeCollector)
