"""A small cancellation/deadline context, the Python twin of Go's ``context.Context``."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from . import _clock
from ._config import MAX_DURATION_MS
from ._errors import ContextCanceledError, ContextDeadlineExceededError, safe_repr

__all__ = ["Context"]

_NO_DEADLINE = None

#: The longest finite ``with_timeout`` (365 days, as a command's timeout), so deadlines
#: stay far inside the 64-bit nanosecond clock.
MAX_TIMEOUT_SECONDS = MAX_DURATION_MS // 1000


class Context:
    """Carries a deadline and a cancellation signal to a command and its ``run``.

    ``Context()`` is a new cancellable root; :meth:`background` is the shared root
    that is never done. Children made with :meth:`with_timeout` or
    :meth:`with_cancel` are cancelled when their parent is, and their deadline is
    never later than their parent's. Cancelling a child detaches it from its parent.
    """

    __slots__ = ("__weakref__", "_callbacks", "_cancel_ns", "_deadline_ns", "_lock", "_parent")

    _background: Context | None = None

    def __init__(self, _parent: Context | None = None, _deadline_ns: int | None = None) -> None:
        self._parent: Context | None = _parent
        self._deadline_ns: int | None
        self._lock = threading.Lock()
        self._cancel_ns: int | None = None
        self._callbacks: list[Callable[[], object]] | None = None
        if _parent is not None:
            parent_deadline = _parent._deadline_ns
            if parent_deadline is not None and (_deadline_ns is None or parent_deadline < _deadline_ns):
                _deadline_ns = parent_deadline
        self._deadline_ns = _deadline_ns
        if _parent is not None and _parent is not Context._background:
            # Inherit an earlier cancellation, or get told about a later one.
            if not _parent._add_done_callback(self._parent_cancelled):
                self._cancel_ns = _parent._cancel_ns

    @classmethod
    def background(cls) -> Context:
        """The root context: never cancelled, no deadline."""
        bg = cls._background
        if bg is None:
            bg = cls._background = cls()
        return bg

    def with_timeout(self, seconds: float) -> Context:
        """A child whose deadline is ``seconds`` from now (or the parent's, if earlier).

        ``seconds`` is an int or float from 0 to :data:`MAX_TIMEOUT_SECONDS` (365 days),
        or ``math.inf`` for no deadline of its own.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"with_timeout: seconds must be an int or a float, not {safe_repr(seconds)}")
        # Compared, not converted: a huge int has no float, and NaN is not equal to itself.
        if seconds != seconds or seconds < 0:
            raise ValueError(f"with_timeout: seconds must not be negative or NaN, got {safe_repr(seconds)}")
        if seconds == math.inf:
            return Context(self)
        if seconds > MAX_TIMEOUT_SECONDS:
            raise ValueError(
                f"with_timeout: seconds must be at most {MAX_TIMEOUT_SECONDS} (365 days), "
                f"or math.inf for no deadline, got {safe_repr(seconds)}"
            )
        return Context(self, _clock.now_ns() + int(seconds * 1e9))

    def with_cancel(self) -> Context:
        """A child that can be cancelled on its own; it keeps the parent's deadline."""
        return Context(self)

    def cancel(self) -> None:
        """Cancel this context and its children; cancelling twice does nothing."""
        if self is Context._background:
            raise RuntimeError("the background context cannot be cancelled")
        with self._lock:
            if self._cancel_ns is not None:
                return
            self._cancel_ns = _clock.now_ns()
            callbacks, self._callbacks = self._callbacks, None
        parent = self._parent
        if parent is not None:
            parent._remove_done_callback(self._parent_cancelled)
        for callback in callbacks or ():
            callback()

    def done(self) -> bool:
        """Whether the context was cancelled or its deadline has passed."""
        return self._cancel_ns is not None or (self._deadline_ns is not None and _clock.now_ns() >= self._deadline_ns)

    def err(self) -> ContextCanceledError | ContextDeadlineExceededError | None:
        """``None`` while not done, else a fresh error saying why (whichever came first)."""
        kind = self._done_kind(_clock.now_ns())
        if kind is None:
            return None
        return ContextCanceledError() if kind == "canceled" else ContextDeadlineExceededError()

    def remaining(self) -> float | None:
        """Seconds until the deadline (``0.0`` once passed), or ``None`` without a deadline."""
        if self._deadline_ns is None:
            return None
        return max(0.0, (self._deadline_ns - _clock.now_ns()) / 1e9)

    @property
    def deadline_ns(self) -> int | None:
        """The deadline on the fasthystrix clock (monotonic nanoseconds), or ``None``."""
        return self._deadline_ns

    def __repr__(self) -> str:
        state = self._done_kind(_clock.now_ns()) or "active"
        return f"<Context {state} remaining={self.remaining()!r}>"

    # -- internals used by commands -------------------------------------------------

    def _done_kind(self, now_ns: int) -> str | None:
        """``"canceled"``/``"deadline"`` as of ``now_ns`` (the earlier cause wins), or ``None``."""
        cancel_ns = self._cancel_ns
        deadline = self._deadline_ns
        if deadline is not None and deadline <= now_ns and (cancel_ns is None or deadline <= cancel_ns):
            return "deadline"
        if cancel_ns is not None and cancel_ns <= now_ns:
            return "canceled"
        return None

    def _add_done_callback(self, callback: Callable[[], object]) -> bool:
        """Call ``callback()`` on cancellation; ``False`` (not added) if already cancelled."""
        if self is Context._background:
            return True
        with self._lock:
            if self._cancel_ns is not None:
                return False
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)
            return True

    def _remove_done_callback(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if self._callbacks:
                try:
                    self._callbacks.remove(callback)
                except ValueError:
                    pass

    def _parent_cancelled(self) -> None:
        parent = self._parent
        with self._lock:
            if self._cancel_ns is not None:
                return
            self._cancel_ns = parent._cancel_ns if parent is not None else _clock.now_ns()
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()
