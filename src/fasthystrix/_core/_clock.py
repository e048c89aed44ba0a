"""The monotonic clock every circuit and context reads, and the manual clock tests drive it with.

Circuits bind the clock when they are created (one attribute read per call instead of a
module lookup), so a replacement applies to circuits created after :func:`set_clock`;
tests call ``flush()`` right after swapping clocks.

A :class:`ManualClock` is not called through by the compiled circuits: its value is
pushed into the C clock they read anyway (see ``freeze_hooks``), so a test that drives
time by hand runs the same compiled code as production. Any other callable is called
from Python on every read, by both implementations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ManualClock", "get_clock", "now_ns", "set_clock"]

_clock: Callable[[], int] = time.monotonic_ns

#: Functions that freeze a compiled clock at a value (``-1`` lets it run); the compiled
#: circuit module adds its own at import.
freeze_hooks: list[Callable[[int], None]] = []


class ManualClock:
    """A monotonic clock that moves only when told to (for tests and simulations).

    Installed with :func:`set_clock`, it is what every circuit of either
    implementation reads; the compiled one reads it from C through its production
    clock code.
    """

    def __init__(self, start_ns: int = 1_000_000_000_000) -> None:
        if not isinstance(start_ns, int) or start_ns < 0:
            raise ValueError(f"start_ns must be a non-negative int, not {start_ns!r}")
        self._now = start_ns
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now

    @property
    def now(self) -> int:
        """The clock's value in nanoseconds; assigning it moves the clock (never backwards)."""
        return self._now

    @now.setter
    def now(self, value: int) -> None:
        with self._lock:
            if value < self._now:
                raise ValueError(f"a monotonic clock cannot go back from {self._now} to {value}")
            self._now = value
            _publish(self)

    def advance(self, seconds: float = 0.0, *, ms: float = 0.0) -> None:
        """Move the clock forward by ``seconds`` plus ``ms`` milliseconds."""
        self.advance_ns(int(seconds * 1e9) + int(ms * 1e6))

    def advance_ns(self, ns: int) -> None:
        """Move the clock forward by ``ns`` nanoseconds."""
        with self._lock:
            if ns < 0:
                raise ValueError(f"a monotonic clock cannot go back by {-ns} ns")
            self._now += ns
            _publish(self)


def _publish(clock: ManualClock) -> None:
    if _clock is clock:
        for hook in freeze_hooks:
            hook(clock._now)


def get_clock() -> Callable[[], int]:
    """Return the current clock: a function giving monotonic nanoseconds."""
    return _clock


def set_clock(clock: Callable[[], int] | None) -> None:
    """Replace the clock (``None`` restores ``time.monotonic_ns``)."""
    global _clock
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable or None, not {clock!r}")
    _clock = time.monotonic_ns if clock is None else clock
    frozen = clock._now if isinstance(clock, ManualClock) else -1
    for hook in freeze_hooks:
        hook(frozen)


def now_ns() -> int:
    """Monotonic nanoseconds from the current clock."""
    return _clock()
