"""The Hystrix metrics stream's two messages, built from a circuit without changing it.

Key order, types and JSON details follow hystrix-go's ``eventstream.go`` (the
dashboard and Turbine read these): every hystrix-go key in its order, integers
as JSON integers, ``<``, ``>`` and ``&`` escaped as Go escapes them. The keys
Java Hystrix adds, which some dashboard builds require, follow hystrix-go's,
with real values; so do two fasthystrix events Java has no key for. Values
hystrix-go leaves as placeholders (current concurrency, the timeout, the
isolation strategy) are real here, and rejections are counted in the field of
the command's isolation strategy (semaphore or thread pool), as Java Hystrix does.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .._core._events import FALLBACK_FAILURE, FALLBACK_SUCCESS
from .._core._metrics import error_percent
from .._core._rolling_py import EXECUTED, MAX_ACTIVE, PERCENTILES as _PERCENTILES

__all__ = [
    "COMMAND_FIELDS",
    "LATENCY_PERCENTILE_KEYS",
    "POOL_FIELDS",
    "command_message",
    "messages",
    "render",
    "thread_pool_message",
]

#: The latency map's keys, in emitted order (hystrix-go's percentiles).
LATENCY_PERCENTILE_KEYS = ("0", "25", "50", "75", "90", "95", "99", "99.5", "100")
_WINDOW_MS = 10_000

# Each message's keys in emitted order, with the JSON kind of their value: "int",
# "bool", "str", or "lat" (a latency map: 9 integers, keyed as above). The dict
# messages and the rendered text are both built from these lists and from one
# row of values (_command_row / _pool_row), so they cannot disagree.
COMMAND_FIELDS: tuple[tuple[str, str], ...] = (
    ("type", "str"),
    ("name", "str"),
    ("group", "str"),
    ("currentTime", "int"),
    ("reportingHosts", "int"),
    ("requestCount", "int"),
    ("errorCount", "int"),
    ("errorPercentage", "int"),
    ("isCircuitBreakerOpen", "bool"),
    ("rollingCountCollapsedRequests", "int"),
    ("rollingCountExceptionsThrown", "int"),
    ("rollingCountFailure", "int"),
    ("rollingCountFallbackFailure", "int"),
    ("rollingCountFallbackRejection", "int"),
    ("rollingCountFallbackSuccess", "int"),
    ("rollingCountResponsesFromCache", "int"),
    ("rollingCountSemaphoreRejected", "int"),
    ("rollingCountShortCircuited", "int"),
    ("rollingCountSuccess", "int"),
    ("rollingCountThreadPoolRejected", "int"),
    ("rollingCountTimeout", "int"),
    ("currentConcurrentExecutionCount", "int"),
    ("latencyExecute_mean", "int"),
    ("latencyExecute", "lat"),
    ("latencyTotal_mean", "int"),
    ("latencyTotal", "lat"),
    ("propertyValue_circuitBreakerRequestVolumeThreshold", "int"),
    ("propertyValue_circuitBreakerSleepWindowInMilliseconds", "int"),
    ("propertyValue_circuitBreakerErrorThresholdPercentage", "int"),
    ("propertyValue_circuitBreakerForceOpen", "bool"),
    ("propertyValue_circuitBreakerForceClosed", "bool"),
    ("propertyValue_circuitBreakerEnabled", "bool"),
    ("propertyValue_executionIsolationStrategy", "str"),
    ("propertyValue_executionIsolationThreadTimeoutInMilliseconds", "int"),
    ("propertyValue_executionIsolationThreadInterruptOnTimeout", "bool"),
    ("propertyValue_executionIsolationThreadPoolKeyOverride", "str"),
    ("propertyValue_executionIsolationSemaphoreMaxConcurrentRequests", "int"),
    ("propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests", "int"),
    ("propertyValue_metricsRollingStatisticalWindowInMilliseconds", "int"),
    ("propertyValue_requestCacheEnabled", "bool"),
    ("propertyValue_requestLogEnabled", "bool"),
    # Java Hystrix's keys (some dashboard builds reject a message without them).
    ("rollingCountBadRequests", "int"),
    ("rollingCountEmit", "int"),
    ("rollingCountFallbackEmit", "int"),
    ("rollingCountFallbackMissing", "int"),
    ("rollingMaxConcurrentExecutionCount", "int"),
    ("propertyValue_executionTimeoutInMilliseconds", "int"),
    ("threadPool", "str"),
    # fasthystrix's context events, which neither hystrix-go nor Java stream.
    ("rollingCountContextCanceled", "int"),
    ("rollingCountContextDeadlineExceeded", "int"),
)
POOL_FIELDS: tuple[tuple[str, str], ...] = (
    ("type", "str"),
    ("name", "str"),
    ("reportingHosts", "int"),
    ("currentActiveCount", "int"),
    ("currentCompletedTaskCount", "int"),
    ("currentCorePoolSize", "int"),
    ("currentLargestPoolSize", "int"),
    ("currentMaximumPoolSize", "int"),
    ("currentPoolSize", "int"),
    ("currentQueueSize", "int"),
    ("currentTaskCount", "int"),
    ("rollingMaxActiveThreads", "int"),
    ("rollingCountThreadsExecuted", "int"),
    ("propertyValue_metricsRollingStatisticalWindowInMilliseconds", "int"),
    ("propertyValue_queueSizeRejectionThreshold", "int"),
    # Java Hystrix's keys.
    ("currentTime", "int"),
    ("rollingCountCommandRejections", "int"),
)


def _template(fields: tuple[tuple[str, str], ...]) -> str:
    latency = "{" + ",".join(f'"{key}":%d' for key in LATENCY_PERCENTILE_KEYS) + "}"
    slot = {"int": "%d", "bool": "%s", "str": "%s", "lat": latency}
    return "data:{" + ",".join(f'"{key}":{slot[kind]}' for key, kind in fields) + "}\n\n"


_TEMPLATE = _template(COMMAND_FIELDS) + _template(POOL_FIELDS)


def _to_dict(fields: tuple[tuple[str, str], ...], row: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    for key, kind in fields:
        if kind == "lat":
            out[key] = dict(zip(LATENCY_PERCENTILE_KEYS, row[i : i + 9], strict=True))
            i += 9
        else:
            out[key] = row[i]
            i += 1
    return out


def _go_string(value: str) -> str:
    # Go's encoding/json escapes <, > and & so the text is safe inside HTML.
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def command_message(circuit: Any, now_ms: int | None = None) -> dict[str, Any]:
    """The ``HystrixCommand`` message of ``circuit`` (a dict in emitted key order).

    Reads the circuit's metrics and state without side effects: unlike
    hystrix-go's publisher (which calls ``IsOpen()``), it never trips a circuit.
    """
    return messages(circuit, now_ms)[0]


def thread_pool_message(circuit: Any, now_ms: int | None = None) -> dict[str, Any]:
    """The ``HystrixThreadPool`` message of ``circuit`` (one pool per command, as hystrix-go)."""
    return messages(circuit, now_ms)[1]


def messages(circuit: Any, now_ms: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both messages of ``circuit`` from one metrics reading, so they agree with each other."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    command, pool = _rows(circuit, now_ms, _PYTHON)
    return _to_dict(COMMAND_FIELDS, command), _to_dict(POOL_FIELDS, pool)


# The constants of a row: as Python values for the dicts, as JSON text for the template.
_PYTHON: tuple[Any, ...] = (True, False, "HystrixCommand", "HystrixThreadPool", "SEMAPHORE", "THREAD", "")
_JSON: tuple[Any, ...] = tuple(json.dumps(v) if isinstance(v, str) else str(v).lower() for v in _PYTHON)


def _rows(
    circuit: Any, now_ms: int, constants: tuple[Any, ...], reading: tuple[Any, Any, Any] | None = None
) -> tuple[list[Any], list[Any]]:
    """The two messages' values in field order (latency maps flattened to their 9 values).

    ``constants`` is ``_PYTHON`` (for the dicts) or ``_JSON`` (for the template);
    ``reading`` is the circuit's window if already read.
    """
    true, false, command_type, pool_type, semaphore, thread, empty = constants
    # The raw reading, not circuit.metrics(): building a MetricsSnapshot per circuit per
    # tick was an eighth of the publisher's time with 1 000 circuits.
    counts, run_summary, total_summary = circuit._default.reading() if reading is None else reading
    successes, failures, rejects, short_circuits, timeouts, canceled, deadline = counts[:7]
    requests = successes + failures + rejects + short_circuits + timeouts + canceled + deadline
    errors = failures + rejects + short_circuits + timeouts
    concurrent = circuit.tickets_in_use
    s = circuit.settings
    state = circuit.state()
    name = circuit.name if constants is _PYTHON else _go_string(circuit.name)
    size = s.max_concurrent_requests
    timeout_ms = s.timeout_ns // 1_000_000
    # A rejection is a full semaphore or a full thread pool, as the strategy says, in the one
    # field the Netflix dashboard shows for that strategy (hystrix-go put every rejection in
    # the thread-pool field). The pool message counts thread-pool rejections only, as Java's.
    semaphore_rejects, pool_rejects = (rejects, 0) if s.semaphore else (0, rejects)
    run = run_summary.percentiles
    total = total_summary.percentiles
    command = [
        command_type, name, name, now_ms, 1,
        requests, errors, error_percent(requests, errors), false if state == "closed" else true,
        0, 0, failures, counts[FALLBACK_FAILURE], 0, counts[FALLBACK_SUCCESS], 0, semaphore_rejects,
        short_circuits, successes, pool_rejects, timeouts, concurrent,
        int(run_summary.mean), *[int(run.get(p, 0.0)) for p in _PERCENTILES],
        int(total_summary.mean), *[int(total.get(p, 0.0)) for p in _PERCENTILES],
        s.request_volume_threshold, s.sleep_window_ns // 1_000_000, s.error_percent_threshold,
        true if circuit.force_open else false, true if circuit.force_closed else false,
        true if s.circuit_breaker_enabled else false,
        semaphore if s.semaphore else thread, timeout_ms, false, empty,
        size, 0, _WINDOW_MS, false, false,
        0, 0, 0, 0, counts[MAX_ACTIVE], timeout_ms, name,
        canceled, deadline,
    ]  # fmt: skip
    pool = [
        pool_type, name, 1,
        concurrent, 0, size, size, size, size, 0, 0,
        counts[MAX_ACTIVE], counts[EXECUTED], _WINDOW_MS, 0,
        now_ms, pool_rejects,
    ]  # fmt: skip
    return command, pool


def render(circuits: list[Any], now_ms: int | None = None, cache: dict[str, Any] | None = None) -> bytes:
    """One tick of the stream: a command and a thread-pool message per circuit, SSE-framed.

    ``cache``: what the previous tick rendered (a dict this call updates to hold exactly
    the circuits given). A circuit whose window, state and settings read the same as then
    reuses its text with the new ``currentTime``, which is most circuits most of the time.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    previous = {} if cache is None else cache
    current: dict[str, Any] = {}
    parts: list[str] = []
    stamp = str(now_ms)
    for circuit in circuits:
        name = circuit.name
        counts, run, total = circuit._default.reading()
        key = (
            counts,
            run.mean,
            tuple(run.percentiles.values()),
            total.mean,
            tuple(total.percentiles.values()),
            circuit.state(),
            circuit.tickets_in_use,
        )
        entry = previous.get(name)
        if entry is None or entry[0] != key or entry[1] is not circuit.settings or entry[2] is not circuit:
            command, pool = _rows(circuit, now_ms, _JSON, (counts, run, total))
            text = _TEMPLATE % tuple(command + pool)
            # Split around the two currentTime values: the next unchanged tick only joins.
            # A name cannot fake the marker: its quotes are escaped in the JSON.
            pieces = text.split(f'"currentTime":{now_ms},')
            entry = (key, circuit.settings, circuit, pieces)
        current[name] = entry
        parts.append(f'"currentTime":{stamp},'.join(entry[3]))
    if cache is not None:
        cache.clear()
        cache.update(current)
    return "".join(parts).encode()
