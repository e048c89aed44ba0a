"""The monotonic clock every circuit and context reads, replaceable for tests.

Circuits bind the clock function when they are created (one attribute read per
call instead of a module lookup), so a replacement applies to circuits created
after :func:`set_clock`; tests call ``flush()`` right after swapping clocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["get_clock", "now_ns", "set_clock"]

_clock: Callable[[], int] = time.monotonic_ns


def get_clock() -> Callable[[], int]:
    """Return the current clock: a function giving monotonic nanoseconds."""
    return _clock


def set_clock(clock: Callable[[], int] | None) -> None:
    """Replace the clock (``None`` restores ``time.monotonic_ns``)."""
    global _clock
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable or None, not {clock!r}")
    _clock = time.monotonic_ns if clock is None else clock


def now_ns() -> int:
    """Monotonic nanoseconds from the current clock."""
    return _clock()
