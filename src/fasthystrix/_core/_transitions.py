"""Circuit state changes: the log line hystrix-go writes, and the listeners of ``on_state_change``.

Both implementations call these functions at each transition, after releasing
the circuit's lock (a listener may call back into fasthystrix). Transitions
are rare, so this is never on a call's fast path.

States: ``"closed"``, ``"open"``, ``"half-open"`` (an open circuit letting its
trial requests through) and ``"forced-open"``.

With one trial (``half_open_max_calls=1`` and no ``half_open_max_wait``, hystrix-go's breaker)
each trial is told as ``open -> half-open``, and its outcome as ``half-open -> closed`` or
``half-open -> open``. With several trials (or a bound on them), each half-open phase is told
once: ``open -> half-open`` when its first trial starts, then its one verdict, ``half-open ->
closed`` or ``half-open -> open`` (the trials failed, or were still unfinished after
``half_open_max_wait``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ._log import logger

__all__ = ["StateListener", "closed", "forced", "on_state_change", "opened", "reopened", "trial"]

#: ``listener(name, old_state, new_state)``.
StateListener = Callable[[str, str, str], object]

_lock = threading.Lock()
_listeners: tuple[StateListener, ...] = ()


def on_state_change(listener: StateListener) -> Callable[[], None]:
    """Call ``listener(name, old, new)`` on every circuit state change; returns a function that removes it.

    Called on the thread of the command that caused the change (or of the
    code that set ``force_open``), after the circuit's lock is released. An
    exception in a listener is logged on the ``fasthystrix`` logger, never
    raised into the command. A ``BaseException`` that is not an ``Exception``
    (``KeyboardInterrupt``) goes on to the caller; when it interrupts the
    start of a trial, the trial ends first, as failed, its ticket back.
    """
    global _listeners
    if not callable(listener):
        raise TypeError(f"listener must be callable, not {listener!r}")
    with _lock:
        _listeners = (*_listeners, listener)

    def remove() -> None:
        global _listeners
        with _lock:
            if listener in _listeners:
                index = _listeners.index(listener)
                _listeners = _listeners[:index] + _listeners[index + 1 :]

    return remove


def _notify(name: str, old: str, new: str) -> None:
    for listener in _listeners:
        try:
            listener(name, old, new)
        except Exception:
            logger.exception("state listener %r failed on %s: %s -> %s", listener, name, old, new)


def opened(name: str) -> None:
    """A closed circuit tripped."""
    logger.warning("opening circuit %s", name)
    if _listeners:
        _notify(name, "closed", "open")


def trial(name: str) -> None:
    """An open circuit let its trial request through (the first of a half-open phase's trials)."""
    logger.info("allowing single test to possibly close circuit %s", name)
    if _listeners:
        _notify(name, "open", "half-open")


def closed(name: str) -> None:
    """The trial succeeded (the half-open phase's trials mostly did): the circuit closed."""
    logger.info("closing circuit %s", name)
    if _listeners:
        _notify(name, "half-open", "closed")


def reopened(name: str) -> None:
    """The trial did not succeed (or the half-open phase's trials failed or ran past their bound):
    the circuit stays open for another sleep window."""
    if _listeners:
        _notify(name, "half-open", "open")


def forced(name: str, old: str, new: str) -> None:
    """``force_open`` was set (``new`` is ``"forced-open"``) or cleared (the state under it)."""
    if _listeners and old != new:
        _notify(name, old, new)
