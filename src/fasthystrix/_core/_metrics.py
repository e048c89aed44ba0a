"""The snapshot of a circuit's rolling window that ``CircuitBreaker.metrics()`` returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MetricsSnapshot", "error_percent"]


def error_percent(requests: int, errors: int) -> int:
    """hystrix-go's ``int(errors / requests * 100 + 0.5)`` in exact integer arithmetic (0 when idle)."""
    if requests <= 0:
        return 0
    return (errors * 200 + requests) // (2 * requests)


@dataclass(frozen=True)
class MetricsSnapshot:
    """One consistent reading of a circuit: counts over the last 10 s, latencies over the last 60 s.

    ``requests`` counts every command (success, failure, rejected, short-circuit,
    timeout, context_*); ``errors`` counts failure, rejected, short-circuit and
    timeout, as hystrix-go. ``bad_requests`` (errors ``ignore`` accepted) are
    neither requests nor errors, as Hystrix's. ``slow_calls`` counts the requests whose run took
    longer than ``slow_call_duration`` (successes and failures; 0 when it is off). Latencies are
    milliseconds; the percentile dicts are keyed 0, 25, 50, 75, 90, 95, 99, 99.5 and 100.
    """

    requests: int
    errors: int
    successes: int
    failures: int
    rejects: int
    short_circuits: int
    timeouts: int
    context_canceled: int
    context_deadline_exceeded: int
    fallback_successes: int
    fallback_failures: int
    error_percent: int
    concurrent: int
    executed: int
    max_concurrent: int
    run_latency_percentiles: dict[float, float]
    run_latency_mean: float
    total_latency_percentiles: dict[float, float]
    total_latency_mean: float
    bad_requests: int = 0
    slow_calls: int = 0
    #: Calls of this process waiting for a ticket now (``max_queue_wait``).
    queue_size: int = 0
