"""Stub of the compiled ``_circuit`` module; it mirrors its pure twin ``_circuit_py``."""

from collections.abc import Callable
from typing import Any

from ._context import Context
from ._metrics import MetricsSnapshot

def bind(
    circuits: dict[str, CircuitBreaker],
    get_or_create: Callable[[str], CircuitBreaker],
    run_threaded: Callable[..., Any],
) -> None: ...
def do(name: str, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None = None) -> Any: ...
def now_ns() -> int:
    """The compiled circuits' clock: ``time.monotonic_ns()``'s clock, or a ManualClock's value."""

def _freeze_clock(ns: int) -> None:
    """Freeze the compiled circuits' clock at ``ns`` (``-1``: let it run); see ``_clock.ManualClock``."""

class CircuitBreaker:
    """The circuit of one command name: state, tickets, rolling metrics and the fast path."""

    name: str
    _clock: Callable[[], int]
    _default: Any
    _lock: Any
    _collectors: tuple[Any, ...]
    _workers: Any
    _settings: Any
    def __init__(
        self, name: str, settings: Any, default_collector: Any, collectors: list[Any], clock: Callable[[], int]
    ) -> None: ...
    @property
    def settings(self) -> Any: ...
    @property
    def force_open(self) -> bool: ...
    @force_open.setter
    def force_open(self, value: bool) -> None: ...
    def is_open(self) -> bool: ...
    def allow_request(self) -> bool: ...
    @property
    def tickets_in_use(self) -> int: ...
    def state(self) -> str: ...
    def metrics(self) -> MetricsSnapshot: ...
    def _acquire(self, now: int, settings: Any = None) -> int: ...
    def _release(self) -> None: ...
    def _report(
        self, event: int, fallback_event: int, now: int, run_us: int, total_us: int, trial: int, release: bool
    ) -> None: ...
    def _finish(
        self,
        event: int,
        err: BaseException,
        start: int,
        run_us: int,
        trial: int,
        fallback: Callable[..., Any] | None,
        ctx: Context | None,
        release: bool,
    ) -> Any: ...
    def execute_args(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        fallback: Callable[..., Any] | None,
    ) -> Any: ...
    def execute(self, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None) -> Any: ...
    def execute_c(
        self, ctx: Context, run: Callable[[Context], Any], fallback: Callable[[Context, BaseException], Any] | None
    ) -> Any: ...
    def _after_fork_in_child(self) -> None: ...

class CommandFunction:
    """A sync function decorated with ``@command``: each call runs as command ``command_name``."""

    @property
    def command_name(self) -> str: ...
    def __init__(
        self, command_name: str, function: Callable[..., Any], fallback: Callable[..., Any] | None = None
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None) -> Any: ...
