"""Per-command configuration: :class:`CommandConfig` in, :class:`Settings` out.

Times are milliseconds (an ``int``) or a :class:`datetime.timedelta`, as in
hystrix-go's ``CommandConfig``; ``None`` means "the default at configure time".
Unlike hystrix-go, ``0`` is a real value (e.g. ``max_concurrent_requests=0``
rejects every call) and negative values are refused instead of wrapping or
panicking later. Every number has an upper bound (:data:`MAX_DURATION_MS`,
:data:`MAX_COUNT`), so the compiled circuit's 64-bit copies of the settings and
the deadlines computed from them cannot overflow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ._errors import safe_repr
from ._limits import AdaptiveLimit
from ._log import logger

__all__ = [
    "DEFAULT_ERROR_PERCENT_THRESHOLD",
    "DEFAULT_ISOLATION",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_REQUEST_VOLUME_THRESHOLD",
    "DEFAULT_SLEEP_WINDOW",
    "DEFAULT_TIMEOUT",
    "MAX_COUNT",
    "MAX_DURATION_MS",
    "MAX_ROLLING_BUCKETS",
    "MAX_ROLLING_WINDOW_MS",
    "MIN_ROLLING_BUCKET_MS",
    "CommandConfig",
    "Isolation",
    "Settings",
    "get_defaults",
    "set_defaults",
]

Isolation = Literal["thread", "semaphore"]
Duration = int | timedelta
#: What ``ignore`` accepts: an exception type, a tuple of them, or a predicate of the error.
Ignore = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

#: hystrix-go's defaults (milliseconds, counts, percent).
DEFAULT_TIMEOUT = 1000
DEFAULT_MAX_CONCURRENT_REQUESTS = 10
DEFAULT_REQUEST_VOLUME_THRESHOLD = 20
DEFAULT_SLEEP_WINDOW = 5000
DEFAULT_ERROR_PERCENT_THRESHOLD = 50
DEFAULT_ISOLATION: Isolation = "thread"

#: The longest timeout or sleep window (365 days): longer waits overflow the OS's timers.
MAX_DURATION_MS = 365 * 24 * 3600 * 1000
#: The largest ``max_concurrent_requests`` and ``request_volume_threshold`` (2**31 - 1):
#: far beyond any real limit, and far inside the compiled circuit's 64-bit counters.
MAX_COUNT = 2**31 - 1

_ISOLATIONS = ("thread", "semaphore")
_NS_PER_MS = 1_000_000
_ONE_US = timedelta(microseconds=1)


def _duration_ns(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, timedelta)):
        raise TypeError(f"{field_name} must be an int (milliseconds) or a datetime.timedelta, not {safe_repr(value)}")
    if isinstance(value, timedelta):
        ns = (value // _ONE_US) * 1000
    else:
        ns = value * _NS_PER_MS
    if ns < 0:
        raise ValueError(f"{field_name} must not be negative, got {safe_repr(value)}")
    if ns > MAX_DURATION_MS * _NS_PER_MS:
        raise ValueError(f"{field_name} must be at most {MAX_DURATION_MS} ms (365 days), got {safe_repr(value)}")
    return ns


def _count(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int, not {safe_repr(value)}")
    if value < 0:
        raise ValueError(f"{field_name} must not be negative, got {safe_repr(value)}")
    if value > MAX_COUNT:
        raise ValueError(f"{field_name} must be at most {MAX_COUNT} (2**31 - 1), got {safe_repr(value)}")
    return value


def _limit(field_name: str, value: object) -> int | AdaptiveLimit:
    if isinstance(value, AdaptiveLimit):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int or an AdaptiveLimit, not {safe_repr(value)}")
    return _count(field_name, value)


def _percent(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int, not {safe_repr(value)}")
    if not 1 <= value <= 100:
        raise ValueError(f"{field_name} must be between 1 and 100, got {safe_repr(value)}")
    return value


#: The largest ``sleep_window_multiplier``.
MAX_SLEEP_WINDOW_MULTIPLIER = 1000.0


def _multiplier(field_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field_name} must be a number, not {safe_repr(value)}")
    if not 1.0 <= value <= MAX_SLEEP_WINDOW_MULTIPLIER:  # NaN fails this too
        raise ValueError(f"{field_name} must be between 1 and {MAX_SLEEP_WINDOW_MULTIPLIER:g}, got {safe_repr(value)}")
    return float(value)


def _fraction(field_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field_name} must be a number, not {safe_repr(value)}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{field_name} must be between 0 and 1, got {safe_repr(value)}")
    return float(value)


#: The largest ``half_open_max_calls`` (the compiled circuit counts a half-open phase's trials
#: in 21-bit fields of one word).
MAX_HALF_OPEN_CALLS = 1_000_000


def _probes(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int, not {safe_repr(value)}")
    if not 1 <= value <= MAX_HALF_OPEN_CALLS:
        raise ValueError(f"{field_name} must be between 1 and {MAX_HALF_OPEN_CALLS}, got {safe_repr(value)}")
    return value


def _slow_rate(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int, not {safe_repr(value)}")
    if not 1 <= value <= 100:
        raise ValueError(f"{field_name} must be between 1 and 100, got {safe_repr(value)}")
    return value


#: The rolling window's bounds: at most 80 buckets (each costs a private circuit 104 bytes; a shared
#: circuit's file has room for 80, which keeps it within 64 KiB), each at least 10 ms wide, and a
#: window of at most 24 hours.
MAX_ROLLING_BUCKETS = 80
MIN_ROLLING_BUCKET_MS = 10
MAX_ROLLING_WINDOW_MS = 24 * 3600 * 1000
DEFAULT_ROLLING_WINDOW = 10_000
DEFAULT_ROLLING_BUCKETS = 10


def _rolling_window_ms(field_name: str, value: object) -> int:
    ns = _duration_ns(field_name, value)
    if ns % _NS_PER_MS:
        raise ValueError(f"{field_name} must be a whole number of milliseconds, got {safe_repr(value)}")
    ms = ns // _NS_PER_MS
    if not MIN_ROLLING_BUCKET_MS <= ms <= MAX_ROLLING_WINDOW_MS:
        raise ValueError(
            f"{field_name} must be between {MIN_ROLLING_BUCKET_MS} and {MAX_ROLLING_WINDOW_MS} ms (24 hours), "
            f"got {safe_repr(value)}"
        )
    return ms


def _rolling_buckets(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field_name} must be an int, not {safe_repr(value)}")
    if not 1 <= value <= MAX_ROLLING_BUCKETS:
        raise ValueError(f"{field_name} must be between 1 and {MAX_ROLLING_BUCKETS}, got {safe_repr(value)}")
    return value


def _rolling_geometry(window: object, buckets: object) -> int:
    """The bucket width in ms of ``rolling_window`` split into ``rolling_buckets``, checked."""
    ms = _rolling_window_ms("rolling_window", window)
    n = _rolling_buckets("rolling_buckets", buckets)
    if ms % n:
        raise ValueError(
            f"rolling_window must divide evenly into rolling_buckets (whole milliseconds per bucket), "
            f"got rolling_window={ms} ms and rolling_buckets={n}"
        )
    if ms // n < MIN_ROLLING_BUCKET_MS:
        raise ValueError(
            f"rolling_window / rolling_buckets must be at least {MIN_ROLLING_BUCKET_MS} ms per bucket, "
            f"got rolling_window={ms} ms and rolling_buckets={n}"
        )
    return ms // n


def _positive_duration_ns(field_name: str, value: object) -> int:
    ns = _duration_ns(field_name, value)
    if ns == 0:
        raise ValueError(f"{field_name} must be positive (None for no bound), got {safe_repr(value)}")
    return ns


def _flag(field_name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field_name} must be a bool, not {safe_repr(value)}")
    return value


def _is_error_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _ignore(field_name: str, value: object) -> Callable[[BaseException], bool]:
    """The test an ``ignore`` value stands for: an exception type, a tuple of them, or a predicate."""
    if _is_error_type(value) or (isinstance(value, tuple) and all(_is_error_type(t) for t in value)):
        types: Any = value
        return lambda exc: isinstance(exc, types)
    if callable(value) and not isinstance(value, type):
        predicate: Any = value
        return lambda exc: _ask(field_name, predicate, exc)
    raise TypeError(
        f"{field_name} must be an exception type, a tuple of exception types or a predicate "
        f"(exc) -> bool, not {safe_repr(value)}"
    )


def _ask(field_name: str, predicate: Callable[[Any], object], value: object) -> bool:
    # A predicate that raises says nothing: the answer that keeps the breaker protective is
    # "no" (for ignore: the error stays a failure), and the predicate's error is logged.
    try:
        return bool(predicate(value))
    except Exception:
        logger.exception("%s predicate %r raised for %s; taken as False", field_name, predicate, safe_repr(value))
        return False


def _predicate(field_name: str, value: object) -> Callable[[Any], object]:
    if not callable(value):
        raise TypeError(f"{field_name} must be a predicate (result) -> bool, not {safe_repr(value)}")
    return value


def _isolation(field_name: str, value: object) -> Isolation:
    if not isinstance(value, str):
        raise TypeError(f"{field_name} must be 'thread' or 'semaphore', not {safe_repr(value)}")
    if value not in _ISOLATIONS:
        raise ValueError(f"{field_name} must be 'thread' or 'semaphore', got {safe_repr(value)}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class CommandConfig:
    """What a command's settings should be; ``None`` fields take the current defaults.

    Values are validated here, so a bad config raises ``TypeError``/``ValueError``
    (naming the field and the value) before anything is changed. Times are
    0 to :data:`MAX_DURATION_MS` (365 days), counts 0 to :data:`MAX_COUNT`
    (2**31 - 1), ``error_percent_threshold`` 1 to 100.
    """

    timeout: Duration | None = None
    #: Tickets: an int (a fixed limit), or an :class:`AdaptiveLimit` (a limit each circuit moves
    #: with its latencies, from ``initial`` within ``min_limit`` .. ``max_limit``).
    max_concurrent_requests: int | AdaptiveLimit | None = None
    request_volume_threshold: int | None = None
    sleep_window: Duration | None = None
    error_percent_threshold: int | None = None
    isolation: Isolation | None = None
    #: Hystrix's ``circuitBreaker.enabled``: when ``False`` the circuit never opens and never
    #: short-circuits (``force_open`` included); tickets, timeouts and metrics work as before.
    circuit_breaker_enabled: bool | None = None
    #: ``False``: rejections (no ticket free) are counted and reported but left out of the error
    #: percentage and the volume, so a burst beyond the concurrency limit cannot trip the breaker.
    rejections_count_as_errors: bool | None = None
    #: Each reopen of the circuit (a failed trial) without a close in between multiplies the
    #: sleep window by this (1 to 1000; 1: hystrix-go's fixed window), up to ``max_sleep_window``.
    sleep_window_multiplier: float | None = None
    #: The longest sleep window the multiplier leads to (ms or timedelta; ``None``: 365 days).
    max_sleep_window: Duration | None = None
    #: Each sleep window is moved by up to this fraction of itself, either way (0 to 1), so that
    #: clients of one dependency do not all send their trial at the same moment.
    sleep_window_jitter: float | None = None
    #: Trial calls an open circuit admits once its sleep window has passed (1 to 1,000,000; the
    #: others are short-circuited). When all have finished, the circuit closes if their error
    #: percentage is below ``error_percent_threshold``, else opens again. 1: hystrix-go's one trial.
    half_open_max_calls: int | None = None
    #: How long (ms or timedelta) the trials may take: if they have not all finished by then after
    #: the first was admitted, the circuit opens again (``None``: no bound).
    half_open_max_wait: Duration | None = None
    #: A call whose run takes longer than this (ms or timedelta; ``None``: off) is slow, whether it
    #: succeeds or fails (as in resilience4j; a timeout has no run time and is not slow).
    slow_call_duration: Duration | None = None
    #: The circuit also opens when slow calls reach this percentage (1 to 100) of the window's
    #: requests, ``request_volume_threshold`` applying, even when the calls succeed.
    slow_call_rate_threshold: int | None = None
    #: Errors that are neither success nor failure (Hystrix's bad requests): an exception type, a
    #: tuple of them, or a predicate ``(exc) -> bool``. Such an error reaches the caller without
    #: the fallback, is counted as ``bad_request`` and leaves the breaker's health alone (an open
    #: circuit's trial that ends with one is not a success: the circuit stays open, as in Hystrix).
    #: A predicate that raises is taken as ``False`` (logged). ``()`` ignores nothing.
    ignore: Ignore | None = None
    #: A predicate ``(result) -> bool``: a value run returns that it accepts is a failure without an
    #: exception; the fallback (or, without one, the caller) gets a ``FailedResultError`` carrying
    #: it. A predicate that raises makes the call a failure with the predicate's exception.
    is_failure: Callable[[Any], object] | None = None
    #: How long (ms or timedelta) a call that finds no free ticket waits for one, first come first
    #: served, before it is rejected (0: rejected at once, hystrix-go's behaviour). The wait counts
    #: in the command's timeout. At most ``max_concurrent_requests`` calls wait at once.
    max_queue_wait: Duration | None = None
    #: Hystrix's ``metrics.rollingStats.timeInMilliseconds``: the window (ms or timedelta, whole
    #: milliseconds, 10 ms to 24 h; default 10 s) whose counts the breaker decides on and
    #: ``metrics()`` reports. The latency percentiles keep their own 60-second window.
    rolling_window: Duration | None = None
    #: Hystrix's ``metrics.rollingStats.numBuckets``: the buckets (1 to 80; default 10) the window
    #: expires by. ``rolling_window`` must divide evenly into them, at least 10 ms each.
    rolling_buckets: int | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None:
            _duration_ns("timeout", self.timeout)
        if self.max_concurrent_requests is not None:
            _limit("max_concurrent_requests", self.max_concurrent_requests)
        if self.request_volume_threshold is not None:
            _count("request_volume_threshold", self.request_volume_threshold)
        if self.sleep_window is not None:
            _duration_ns("sleep_window", self.sleep_window)
        if self.error_percent_threshold is not None:
            _percent("error_percent_threshold", self.error_percent_threshold)
        if self.isolation is not None:
            _isolation("isolation", self.isolation)
        for name in ("circuit_breaker_enabled", "rejections_count_as_errors"):
            if getattr(self, name) is not None:
                _flag(name, getattr(self, name))
        if self.sleep_window_multiplier is not None:
            _multiplier("sleep_window_multiplier", self.sleep_window_multiplier)
        if self.max_sleep_window is not None:
            _duration_ns("max_sleep_window", self.max_sleep_window)
        if self.sleep_window_jitter is not None:
            _fraction("sleep_window_jitter", self.sleep_window_jitter)
        if self.half_open_max_calls is not None:
            _probes("half_open_max_calls", self.half_open_max_calls)
        if self.half_open_max_wait is not None:
            _positive_duration_ns("half_open_max_wait", self.half_open_max_wait)
        if self.slow_call_duration is not None:
            _positive_duration_ns("slow_call_duration", self.slow_call_duration)
        if self.slow_call_rate_threshold is not None:
            _slow_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)
        if self.ignore is not None:
            _ignore("ignore", self.ignore)
        if self.is_failure is not None:
            _predicate("is_failure", self.is_failure)
        if self.max_queue_wait is not None:
            _duration_ns("max_queue_wait", self.max_queue_wait)
        if self.rolling_window is not None:
            _rolling_window_ms("rolling_window", self.rolling_window)
        if self.rolling_buckets is not None:
            _rolling_buckets("rolling_buckets", self.rolling_buckets)
        if self.rolling_window is not None and self.rolling_buckets is not None:
            _rolling_geometry(self.rolling_window, self.rolling_buckets)

    @classmethod
    def from_mapping(cls, mapping: object) -> CommandConfig:
        """Build from a ``CommandConfig`` or a mapping of its field names (e.g. parsed JSON)."""
        if isinstance(mapping, CommandConfig):
            return mapping
        if not isinstance(mapping, Mapping):
            raise TypeError(f"config must be a CommandConfig or a mapping, not {safe_repr(mapping)}")
        unknown = set(mapping) - _FIELDS
        if unknown:
            raise ValueError(f"unknown CommandConfig field(s): {sorted(map(str, unknown))}")
        return cls(**mapping)


_FIELDS = frozenset(CommandConfig.__dataclass_fields__)


class _WeakReferable:
    """A base that gives a slotted class a ``__weakref__`` slot (``weakref_slot=`` is 3.11+)."""

    __slots__ = ("__weakref__",)


# Slots: with more than 30 attributes an instance dict no longer shares its keys (CPython's
# limit) and costs 1.5 KB per name; a slotted Settings is a tenth of that (tests/test_circuit_table.py).
@dataclass(frozen=True, slots=True)
class Settings(_WeakReferable):
    """A command's effective settings; times are ``timedelta`` like hystrix-go's ``time.Duration``.

    With an adaptive limit, ``max_concurrent_requests`` is its ``initial`` value (the int every
    reader of a fixed limit gets) and ``adaptive_limit`` the :class:`AdaptiveLimit`; the limit a
    circuit admits with now is ``CircuitBreaker.concurrency_limit``.
    """

    timeout: timedelta
    max_concurrent_requests: int
    request_volume_threshold: int
    sleep_window: timedelta
    error_percent_threshold: int
    isolation: Isolation
    circuit_breaker_enabled: bool = True
    rejections_count_as_errors: bool = True
    sleep_window_multiplier: float = 1.0
    max_sleep_window: timedelta | None = None
    sleep_window_jitter: float = 0.0
    half_open_max_calls: int = 1
    half_open_max_wait: timedelta | None = None
    slow_call_duration: timedelta | None = None
    slow_call_rate_threshold: int = 100
    #: As in :class:`CommandConfig`; ``None``: no error is ignored. Code, not data: with shared
    #: circuits each process uses its own (never written to the shared file).
    ignore: Ignore | None = None
    #: As in :class:`CommandConfig`; ``None``: every value run returns is a success. Code, as ``ignore``.
    is_failure: Callable[[Any], object] | None = None
    #: The :class:`AdaptiveLimit` of ``max_concurrent_requests``, or ``None`` for a fixed limit.
    adaptive_limit: AdaptiveLimit | None = None
    #: As in :class:`CommandConfig`. Each process keeps its own (its calls wait in its own queue),
    #: even for shared circuits.
    max_queue_wait: timedelta = timedelta(0)
    rolling_window: timedelta = timedelta(milliseconds=DEFAULT_ROLLING_WINDOW)
    rolling_buckets: int = DEFAULT_ROLLING_BUCKETS
    # Integer copies read on the hot path, so a call never converts a timedelta.
    timeout_ns: int = field(init=False, repr=False, compare=False)
    sleep_window_ns: int = field(init=False, repr=False, compare=False)
    semaphore: bool = field(init=False, repr=False, compare=False)
    max_sleep_window_ns: int = field(init=False, repr=False, compare=False)  # 0: no maximum
    half_open_max_wait_ns: int = field(init=False, repr=False, compare=False)  # 0: no bound
    slow_call_duration_ns: int = field(init=False, repr=False, compare=False)  # 0: off
    max_queue_wait_ns: int = field(init=False, repr=False, compare=False)  # 0: no waiting
    # Several trials, or a bound on them: the half-open phase of _circuit_py._probe_locked.
    probes: bool = field(init=False, repr=False, compare=False)
    #: ``ignore`` as a test of an error (``None``: nothing is ignored).
    ignores: Callable[[BaseException], bool] | None = field(init=False, repr=False, compare=False)
    #: The width of one bucket of the rolling window, in nanoseconds.
    rolling_bucket_ns: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Checked again here, as CommandConfig does, because circuits take any Settings as
        # given: a value out of range would fail half way through applying it.
        for name in ("timeout", "sleep_window"):
            if not isinstance(getattr(self, name), timedelta):
                raise TypeError(f"{name} must be a datetime.timedelta, not {safe_repr(getattr(self, name))}")
        object.__setattr__(self, "timeout_ns", _duration_ns("timeout", self.timeout))
        object.__setattr__(self, "sleep_window_ns", _duration_ns("sleep_window", self.sleep_window))
        _count("max_concurrent_requests", self.max_concurrent_requests)
        _count("request_volume_threshold", self.request_volume_threshold)
        _percent("error_percent_threshold", self.error_percent_threshold)
        object.__setattr__(self, "semaphore", _isolation("isolation", self.isolation) == "semaphore")
        _flag("circuit_breaker_enabled", self.circuit_breaker_enabled)
        _flag("rejections_count_as_errors", self.rejections_count_as_errors)
        object.__setattr__(
            self, "sleep_window_multiplier", _multiplier("sleep_window_multiplier", self.sleep_window_multiplier)
        )
        object.__setattr__(self, "sleep_window_jitter", _fraction("sleep_window_jitter", self.sleep_window_jitter))
        if self.max_sleep_window is not None and not isinstance(self.max_sleep_window, timedelta):
            raise TypeError(
                f"max_sleep_window must be a datetime.timedelta or None, not {safe_repr(self.max_sleep_window)}"
            )
        object.__setattr__(
            self,
            "max_sleep_window_ns",
            0 if self.max_sleep_window is None else _duration_ns("max_sleep_window", self.max_sleep_window),
        )
        _probes("half_open_max_calls", self.half_open_max_calls)
        if self.half_open_max_wait is not None and not isinstance(self.half_open_max_wait, timedelta):
            raise TypeError(
                f"half_open_max_wait must be a datetime.timedelta or None, not {safe_repr(self.half_open_max_wait)}"
            )
        wait_ns = 0
        if self.half_open_max_wait is not None:
            wait_ns = _positive_duration_ns("half_open_max_wait", self.half_open_max_wait)
        object.__setattr__(self, "half_open_max_wait_ns", wait_ns)
        object.__setattr__(self, "probes", self.half_open_max_calls > 1 or wait_ns > 0)
        if self.slow_call_duration is not None and not isinstance(self.slow_call_duration, timedelta):
            raise TypeError(
                f"slow_call_duration must be a datetime.timedelta or None, not {safe_repr(self.slow_call_duration)}"
            )
        slow_ns = 0
        if self.slow_call_duration is not None:
            slow_ns = _positive_duration_ns("slow_call_duration", self.slow_call_duration)
        _slow_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)
        object.__setattr__(self, "slow_call_duration_ns", slow_ns)
        object.__setattr__(self, "ignores", None if self.ignore is None else _ignore("ignore", self.ignore))
        if self.is_failure is not None:
            _predicate("is_failure", self.is_failure)
        if self.adaptive_limit is not None and not isinstance(self.adaptive_limit, AdaptiveLimit):
            raise TypeError(f"adaptive_limit must be an AdaptiveLimit or None, not {safe_repr(self.adaptive_limit)}")
        if not isinstance(self.max_queue_wait, timedelta):
            raise TypeError(f"max_queue_wait must be a datetime.timedelta, not {safe_repr(self.max_queue_wait)}")
        object.__setattr__(self, "max_queue_wait_ns", _duration_ns("max_queue_wait", self.max_queue_wait))
        if not isinstance(self.rolling_window, timedelta):
            raise TypeError(f"rolling_window must be a datetime.timedelta, not {safe_repr(self.rolling_window)}")
        width_ms = _rolling_geometry(self.rolling_window, self.rolling_buckets)
        object.__setattr__(self, "rolling_bucket_ns", width_ms * _NS_PER_MS)

    @property
    def default_window(self) -> bool:
        """Whether the rolling window is the default one (10 buckets of one second)."""
        return self.rolling_bucket_ns == 1_000_000_000 and self.rolling_buckets == DEFAULT_ROLLING_BUCKETS

    @classmethod
    def from_config(cls, config: CommandConfig, defaults: Settings) -> Settings:
        """Resolve ``config`` against ``defaults`` (``None`` fields take the default)."""

        def pick(value: object, default: object) -> object:
            return default if value is None else value

        timeout = pick(config.timeout, defaults.timeout)
        sleep_window = pick(config.sleep_window, defaults.sleep_window)
        # An adaptive limit keeps its initial value as the int everything else reads.
        limit: int
        adaptive: AdaptiveLimit | None
        if config.max_concurrent_requests is None:
            limit, adaptive = defaults.max_concurrent_requests, defaults.adaptive_limit
        elif isinstance(config.max_concurrent_requests, AdaptiveLimit):
            limit, adaptive = config.max_concurrent_requests.initial, config.max_concurrent_requests
        else:
            limit, adaptive = config.max_concurrent_requests, None
        return cls(
            timeout=timeout if isinstance(timeout, timedelta) else timedelta(milliseconds=timeout),  # type: ignore[arg-type]
            max_concurrent_requests=limit,
            request_volume_threshold=pick(config.request_volume_threshold, defaults.request_volume_threshold),  # type: ignore[arg-type]
            sleep_window=sleep_window if isinstance(sleep_window, timedelta) else timedelta(milliseconds=sleep_window),  # type: ignore[arg-type]
            error_percent_threshold=pick(config.error_percent_threshold, defaults.error_percent_threshold),  # type: ignore[arg-type]
            isolation=pick(config.isolation, defaults.isolation),  # type: ignore[arg-type]
            circuit_breaker_enabled=pick(config.circuit_breaker_enabled, defaults.circuit_breaker_enabled),  # type: ignore[arg-type]
            rejections_count_as_errors=pick(config.rejections_count_as_errors, defaults.rejections_count_as_errors),  # type: ignore[arg-type]
            sleep_window_multiplier=pick(config.sleep_window_multiplier, defaults.sleep_window_multiplier),  # type: ignore[arg-type]
            max_sleep_window=_optional_duration(pick(config.max_sleep_window, defaults.max_sleep_window)),
            sleep_window_jitter=pick(config.sleep_window_jitter, defaults.sleep_window_jitter),  # type: ignore[arg-type]
            half_open_max_calls=pick(config.half_open_max_calls, defaults.half_open_max_calls),  # type: ignore[arg-type]
            half_open_max_wait=_optional_duration(pick(config.half_open_max_wait, defaults.half_open_max_wait)),
            slow_call_duration=_optional_duration(pick(config.slow_call_duration, defaults.slow_call_duration)),
            slow_call_rate_threshold=pick(config.slow_call_rate_threshold, defaults.slow_call_rate_threshold),  # type: ignore[arg-type]
            ignore=pick(config.ignore, defaults.ignore),  # type: ignore[arg-type]
            is_failure=pick(config.is_failure, defaults.is_failure),  # type: ignore[arg-type]
            adaptive_limit=adaptive,
            max_queue_wait=_optional_duration(pick(config.max_queue_wait, defaults.max_queue_wait)),  # type: ignore[arg-type]
            rolling_window=_optional_duration(pick(config.rolling_window, defaults.rolling_window)),  # type: ignore[arg-type]
            rolling_buckets=pick(config.rolling_buckets, defaults.rolling_buckets),  # type: ignore[arg-type]
        )


def _optional_duration(value: object) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(milliseconds=value)  # type: ignore[arg-type]


_HYSTRIX_DEFAULTS = Settings(
    timeout=timedelta(milliseconds=DEFAULT_TIMEOUT),
    max_concurrent_requests=DEFAULT_MAX_CONCURRENT_REQUESTS,
    request_volume_threshold=DEFAULT_REQUEST_VOLUME_THRESHOLD,
    sleep_window=timedelta(milliseconds=DEFAULT_SLEEP_WINDOW),
    error_percent_threshold=DEFAULT_ERROR_PERCENT_THRESHOLD,
    isolation=DEFAULT_ISOLATION,
)
_defaults = _HYSTRIX_DEFAULTS
_defaults_lock = threading.Lock()


def get_defaults() -> Settings:
    """The settings a command gets for every field its config leaves ``None``."""
    return _defaults


def set_defaults(config: CommandConfig | None = None) -> Settings:
    """Change the defaults for commands configured (or first used) from now on.

    Fields left ``None`` keep their current default; ``set_defaults()`` with no
    argument restores hystrix-go's defaults. Already configured commands keep
    their settings, as in hystrix-go. Returns the new defaults.
    """
    global _defaults
    with _defaults_lock:
        if config is None:
            _defaults = _HYSTRIX_DEFAULTS
        else:
            if not isinstance(config, CommandConfig):
                raise TypeError(f"config must be a CommandConfig, not {safe_repr(config)}")
            _defaults = Settings.from_config(config, _defaults)
        return _defaults
