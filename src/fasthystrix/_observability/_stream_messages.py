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
import operator
import time
from collections.abc import Callable
from typing import Any

from .._core._events import BAD_REQUEST, FALLBACK_FAILURE, FALLBACK_SUCCESS
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

# Each message's keys in emitted order, with the JSON kind of their value: "int",
# "bool", "str", or "lat" (a latency map: 9 integers, keyed as above). The dict
# messages and the rendered text are both built from these lists and from the rows
# below, so they cannot disagree.
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
    # Calls waiting for a ticket (max_queue_wait), as the pool message's currentQueueSize.
    ("currentQueueCount", "int"),
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


# Where each field's value comes from: a name of _CONSTANTS, _SETTINGS or _DYNAMIC, or "now".
_COMMAND_ROW = (
    "command_type", "name", "name", "now", "one",
    "requests", "errors", "error_percent", "open",
    "zero", "zero", "failures", "fallback_failures", "zero", "fallback_successes", "zero", "semaphore_rejects",
    "short_circuits", "successes", "pool_rejects", "timeouts", "concurrent",
    "run_mean", "run", "total_mean", "total",
    "volume", "sleep_ms", "error_threshold",
    "forced_open", "forced_closed", "enabled",
    "strategy", "timeout_ms", "false", "empty",
    "size", "zero", "window", "false", "false",
    "bad_requests", "zero", "zero", "zero", "max_active", "timeout_ms", "name",
    "canceled", "deadline", "queued",
)  # fmt: skip
_POOL_ROW = (
    "pool_type", "name", "one",
    "concurrent", "zero", "size", "size", "size", "size", "queued", "zero",
    "max_active", "executed", "window", "queue_bound",
    "now", "pool_rejects",
)  # fmt: skip

# The values read from the window, the state and the tickets, in the order _dynamic returns
# them: the order of their fields in the text, repeats included ("run" and "total" are
# latency maps, 9 values each). _segments() checks it against the rows.
_DYNAMIC = (
    # the command message, after its currentTime
    "requests", "errors", "error_percent", "open", "failures", "fallback_failures", "fallback_successes",
    "semaphore_rejects", "short_circuits", "successes", "pool_rejects", "timeouts", "concurrent",
    "run_mean", "run", "total_mean", "total", "forced_open", "forced_closed", "bad_requests", "max_active",
    "canceled", "deadline", "queued",
    # the pool message, before and after its currentTime
    "concurrent", "queued", "max_active", "executed",
    "pool_rejects",
)  # fmt: skip
# The values of the circuit's name and settings, in the order _settings returns them.
_SETTINGS = (
    "name", "volume", "sleep_ms", "error_threshold", "enabled", "strategy", "timeout_ms", "size", "queue_bound",
    "window",
)  # fmt: skip


def _positions(names: tuple[str, ...]) -> dict[str, int]:
    """Where each value first is in a tuple of ``names``' values (a latency map takes 9)."""
    at: dict[str, int] = {}
    n = 0
    for name in names:
        at.setdefault(name, n)
        n += 9 if name in ("run", "total") else 1
    return at


_DYNAMIC_AT = _positions(_DYNAMIC)
_SETTINGS_AT = _positions(_SETTINGS)


# The constants: as Python values for the dicts, as JSON text for the rendered text.
_PYTHON: tuple[Any, ...] = (True, False, "HystrixCommand", "HystrixThreadPool", "SEMAPHORE", "THREAD", "")
_JSON: tuple[Any, ...] = tuple(json.dumps(v) if isinstance(v, str) else str(v).lower() for v in _PYTHON)
# As bytes formatting wants them (its %s takes bytes).
_JSON_BYTES: tuple[Any, ...] = tuple(v.encode() for v in _JSON)


def _constants(constants: tuple[Any, ...]) -> dict[str, Any]:
    true, false, command_type, pool_type, _, _, empty = constants
    return {
        "command_type": command_type,
        "pool_type": pool_type,
        "zero": 0,
        "one": 1,
        "true": true,
        "false": false,
        "empty": empty,
    }


_CONSTANTS = _constants(_JSON)


def _settings(name: str, s: Any, constants: tuple[Any, ...], limit: int) -> tuple[Any, ...]:
    """The values of the circuit's name and settings, in _SETTINGS's order; ``limit`` is the
    circuit's current concurrency limit (an adaptive limit's value now), reported as the
    semaphore maximum and the pool's sizes."""
    true, false = constants[:2]
    semaphore, thread = constants[4:6]
    return (
        name if constants is _PYTHON else _go_string(name).encode(),
        s.request_volume_threshold,
        s.sleep_window_ns // 1_000_000,
        s.error_percent_threshold,
        true if s.circuit_breaker_enabled else false,
        semaphore if s.semaphore else thread,
        s.timeout_ns // 1_000_000,
        limit,
        # Hystrix's queueSizeRejectionThreshold: at most the concurrency limit's calls wait.
        limit if s.max_queue_wait_ns else 0,
        s.rolling_bucket_ns * s.rolling_buckets // 1_000_000,  # the configured rolling window
    )


_LATENCIES = operator.itemgetter(*_PERCENTILES)


def _latencies(summary: Any) -> tuple[float, ...]:
    try:
        return _LATENCIES(summary.percentiles)  # type: ignore[no-any-return]
    except KeyError:
        return tuple(summary.percentiles.get(p, 0.0) for p in _PERCENTILES)


def _dynamic(
    counts: tuple[int, ...],
    run: tuple[Any, tuple[float, ...], Any, tuple[float, ...]],
    state: str,
    forced_closed: bool,
    concurrent: int,
    semaphore: bool,
    constants: tuple[Any, ...],
    queued: int = 0,
) -> tuple[Any, ...]:
    """The values read from the window, the state and the tickets, in _DYNAMIC's order.

    ``run``: the run and total latency summaries, each followed by its _latencies(). Latencies
    stay floats: ``%d`` and ``int()`` both truncate them to whole milliseconds.
    """
    true, false = constants[:2]
    run_summary, run_latencies, total_summary, total_latencies = run
    successes, failures, rejects, short_circuits, timeouts, canceled, deadline = counts[:7]
    requests = successes + failures + rejects + short_circuits + timeouts + canceled + deadline
    errors = failures + rejects + short_circuits + timeouts
    # A rejection is a full semaphore or a full thread pool, as the strategy says, in the one
    # field the Netflix dashboard shows for that strategy (hystrix-go put every rejection in
    # the thread-pool field). The pool message counts thread-pool rejections only, as Java's.
    pool_rejects = 0 if semaphore else rejects
    return (
        requests, errors, error_percent(requests, errors), false if state == "closed" else true,
        failures, counts[FALLBACK_FAILURE], counts[FALLBACK_SUCCESS],
        rejects if semaphore else 0, short_circuits, successes, pool_rejects, timeouts, concurrent,
        run_summary.mean, *run_latencies, total_summary.mean, *total_latencies,
        true if state == "forced-open" else false, true if forced_closed else false,
        counts[BAD_REQUEST], counts[MAX_ACTIVE], canceled, deadline, queued,
        concurrent, queued, counts[MAX_ACTIVE], counts[EXECUTED],
        pool_rejects,
    )  # fmt: skip


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
    s = circuit.settings
    counts, run, total = circuit._default.reading()
    latencies = (run, _latencies(run), total, _latencies(total))
    row = _dynamic(
        counts,
        latencies,
        circuit.state(),
        circuit.force_closed,
        circuit.tickets_in_use,
        s.semaphore,
        _PYTHON,
        circuit.queue_size,
    )
    values = _constants(_PYTHON)
    for name, at in _DYNAMIC_AT.items():
        values[name] = row[at : at + 9] if name in ("run", "total") else row[at]
    values.update(zip(_SETTINGS, _settings(circuit.name, s, _PYTHON, circuit.concurrency_limit), strict=True))
    values["now"] = now_ms
    return _to_dict(COMMAND_FIELDS, _COMMAND_ROW, values), _to_dict(POOL_FIELDS, _POOL_ROW, values)


def _to_dict(fields: tuple[tuple[str, str], ...], row: tuple[str, ...], values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (key, kind), source in zip(fields, row, strict=True):
        value = values[source]
        if kind == "lat":
            out[key] = {k: int(v) for k, v in zip(LATENCY_PERCENTILE_KEYS, value, strict=True)}
        else:
            out[key] = int(value) if kind == "int" else value
    return out


# -- the rendered text ------------------------------------------------------------------

_Picker = Callable[[tuple[Any, ...]], tuple[Any, ...]]


def _picker(positions: list[int]) -> _Picker:
    if not positions:
        return lambda values: ()
    if len(positions) == 1:  # itemgetter of one position returns the item, not a tuple
        at = positions[0]
        return lambda values: (values[at],)
    return operator.itemgetter(*positions)


def _segments() -> tuple[list[tuple[bytes, _Picker]], int]:
    """The text of a circuit's two messages around their ``currentTime`` values, and where the
    second segment's dynamic values end in ``_dynamic()``'s tuple.

    Each segment is a bytes format with the constants written in, for two passes: the first
    (``% picker(_settings(...))``, once per circuit and settings) writes the name and settings
    in and turns each ``%%d`` into the ``%d`` slot of a dynamic value; the second
    (``% dynamic[start:stop]``) fills those. Bytes formatting copies the text between slots
    whole, where str formatting goes character by character.
    """
    segments: list[list[str]] = [[]]
    settings: list[list[int]] = [[]]
    dynamic: list[list[str]] = [[]]
    pending = ""
    for fields, row in ((COMMAND_FIELDS, _COMMAND_ROW), (POOL_FIELDS, _POOL_ROW)):
        pending += "data:{"
        for n, ((key, kind), source) in enumerate(zip(fields, row, strict=True)):
            pending += ("," if n else "") + f'"{key}":'
            spec = "%d" if kind in ("int", "lat") else "%s"
            if source == "now":
                segments[-1].append(pending)
                segments.append([])
                settings.append([])
                dynamic.append([])
                pending = ""
            elif source in _CONSTANTS:
                pending += spec % _CONSTANTS[source]  # no constant holds a "%"
            elif source in _SETTINGS_AT:
                segments[-1].append(pending + spec)
                settings[-1].append(_SETTINGS_AT[source])
                pending = ""
            elif kind == "lat":
                latency = ",".join(f'"{percentile}":%{spec}' for percentile in LATENCY_PERCENTILE_KEYS)
                segments[-1].append(pending + "{" + latency)
                dynamic[-1].append(source)
                pending = "}"
            else:
                segments[-1].append(pending + "%" + spec)
                dynamic[-1].append(source)
                pending = ""
        pending += "}\n\n"
    segments[-1].append(pending)
    # render() relies on this shape: a command's and a pool's currentTime, so three segments,
    # the first without dynamic values, the others with _DYNAMIC's values in its order.
    if len(segments) != 3 or dynamic[0] or tuple(dynamic[1] + dynamic[2]) != _DYNAMIC:
        raise RuntimeError("the message rows and _DYNAMIC disagree")
    split = sum(9 if name in ("run", "total") else 1 for name in dynamic[1])
    return [("".join(segment).encode(), _picker(at)) for segment, at in zip(segments, settings, strict=True)], split


_SEGMENTS, _SPLIT = _segments()


def _compile(name: str, s: Any, limit: int) -> tuple[bytes, bytes, bytes]:
    """A circuit's first segment, and the formats of the other two, for these settings and limit."""
    values = _settings(name, s, _JSON_BYTES, limit)
    # In a format of the second pass, the name's "%" must read as text.
    escaped = (values[0].replace(b"%", b"%%"), *values[1:])
    (first, pick_first), (second, pick_second), (third, pick_third) = _SEGMENTS
    return first % pick_first(values), second % pick_second(escaped), third % pick_third(escaped)


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
    parts: list[tuple[bytes, bytes, bytes]] = []
    latencies, dynamic, constants, split = _latencies, _dynamic, _JSON_BYTES, _SPLIT
    for circuit in circuits:
        name = circuit.name
        counts, run, total = circuit._default.reading()
        state = circuit.state()
        forced_closed = circuit.force_closed
        concurrent = circuit.tickets_in_use
        queued = circuit.queue_size
        s = circuit.settings
        limit = circuit.concurrency_limit
        summaries = (run, latencies(run), total, latencies(total))
        key = (counts, run.mean, summaries[1], total.mean, summaries[3], state, forced_closed, concurrent, queued)
        # entry: [key, settings, circuit, its _compile()d segments, the text around currentTime,
        # the concurrency limit they were compiled with (an adaptive one moves)]
        entry = previous.get(name)
        if entry is None or entry[2] is not circuit or entry[1] is not s or entry[5] != limit:
            entry = [None, s, circuit, _compile(name, s, limit), None, limit]
        elif entry[0] == key:
            current[name] = entry
            parts.append(entry[4])
            continue
        first, second, third = entry[3]
        values = dynamic(counts, summaries, state, forced_closed, concurrent, s.semaphore, constants, queued)
        entry[0] = key
        entry[4] = pieces = (first, second % values[:split], third % values[split:])
        current[name] = entry
        parts.append(pieces)
    if cache is not None:
        cache.clear()
        cache.update(current)
    stamp = b"%d" % now_ms
    out: list[bytes] = []
    add = out.extend
    for first, between, last in parts:  # one join: the tick is copied once
        add((first, stamp, between, stamp, last))
    return b"".join(out)
