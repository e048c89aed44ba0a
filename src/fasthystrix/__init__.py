"""fasthystrix: latency and fault tolerance for Python services, with hystrix-go's semantics.

Wrap each call to a dependency in a command: ``fasthystrix.do(name, run, fallback)``
runs ``run`` under that name's circuit breaker, concurrency limit, timeout and
rolling metrics, and answers with ``fallback(err)`` when it fails, times out,
is rejected or short-circuited.
"""

from __future__ import annotations

from . import _impl, metric_collector, stream
from ._core._clock import get_clock, set_clock
from ._core._config import (
    DEFAULT_ERROR_PERCENT_THRESHOLD,
    DEFAULT_ISOLATION,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_REQUEST_VOLUME_THRESHOLD,
    DEFAULT_SLEEP_WINDOW,
    DEFAULT_TIMEOUT,
    CommandConfig,
    Settings,
    get_defaults,
    set_defaults,
)
from ._core._context import Context
from ._core._errors import (
    CircuitError,
    CircuitOpenError,
    ContextCanceledError,
    ContextDeadlineExceededError,
    ErrCircuitOpen,
    ErrMaxConcurrency,
    ErrTimeout,
    FailedResultError,
    FallbackError,
    MaxConcurrencyError,
    TimeoutError,  # noqa: A004 - hystrix-go's name; also a builtin TimeoutError subclass
)
from ._core._limits import AdaptiveLimit
from ._core._metrics import MetricsSnapshot
from ._core._shared import SharedStateError, shared_dir
from ._core._transitions import on_state_change
from ._isolation._asyncio import do_async, go_async
from ._isolation._command import do_c, go, go_c
from ._isolation._decorator import command
from ._isolation._workers import DEFAULT_MAX_THREADS, get_max_threads, set_max_threads
from ._registry import (
    DEFAULT_MAX_CIRCUITS,
    CircuitLimitError,
    circuit_table_stats,
    configure,
    configure_command,
    flush,
    get_circuit,
    get_circuit_settings,
    get_max_circuits,
    set_max_circuits,
    share_circuits,
)
from .metric_collector import MetricCollector, MetricResult
from .stream import StreamHandler, StreamServer, serve_stream

__version__ = "0.1.0"

#: The live hot-path implementation: ``"compiled"`` or ``"pure"``.
implementation: str = _impl.current().name

#: Run ``run()`` as command ``name``; see docs/concepts.md. Bound to the live implementation's fast path.
do = _impl.current().do

CircuitBreaker = _impl.current().CircuitBreaker

__all__ = [
    "DEFAULT_ERROR_PERCENT_THRESHOLD",
    "DEFAULT_ISOLATION",
    "DEFAULT_MAX_CIRCUITS",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_MAX_THREADS",
    "DEFAULT_REQUEST_VOLUME_THRESHOLD",
    "DEFAULT_SLEEP_WINDOW",
    "DEFAULT_TIMEOUT",
    "AdaptiveLimit",
    "CircuitBreaker",
    "CircuitError",
    "CircuitLimitError",
    "CircuitOpenError",
    "CommandConfig",
    "Context",
    "ContextCanceledError",
    "ContextDeadlineExceededError",
    "ErrCircuitOpen",
    "ErrMaxConcurrency",
    "ErrTimeout",
    "FailedResultError",
    "FallbackError",
    "MaxConcurrencyError",
    "MetricCollector",
    "MetricResult",
    "MetricsSnapshot",
    "Settings",
    "SharedStateError",
    "StreamHandler",
    "StreamServer",
    "TimeoutError",
    "__version__",
    "circuit_table_stats",
    "command",
    "configure",
    "configure_command",
    "do",
    "do_async",
    "do_c",
    "flush",
    "get_circuit",
    "get_circuit_settings",
    "get_clock",
    "get_defaults",
    "get_max_circuits",
    "get_max_threads",
    "go",
    "go_async",
    "go_c",
    "implementation",
    "metric_collector",
    "on_state_change",
    "set_clock",
    "serve_stream",
    "set_defaults",
    "set_max_circuits",
    "set_max_threads",
    "share_circuits",
    "shared_dir",
    "stream",
]
