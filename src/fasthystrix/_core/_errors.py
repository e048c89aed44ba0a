"""The exceptions fasthystrix raises, with hystrix-go's messages.

Every failing call raises a *fresh* instance: a shared module-level exception
object would accumulate tracebacks (and keep frames alive) across calls.
The ``Err*`` aliases name the classes, so ``except ErrTimeout`` and
``isinstance(err, ErrTimeout)`` read like hystrix-go's ``err == ErrTimeout``.
"""

from __future__ import annotations

import builtins

__all__ = [
    "CircuitError",
    "CircuitOpenError",
    "ContextCanceledError",
    "ContextDeadlineExceededError",
    "ErrCircuitOpen",
    "ErrMaxConcurrency",
    "ErrTimeout",
    "FailedResultError",
    "FallbackError",
    "MaxConcurrencyError",
    "TimeoutError",
]


class CircuitError(Exception):
    """Base of the errors a command itself produces; ``str()`` is ``"hystrix: " + message``."""

    # No __init__: BaseException's own (in C) keeps creating one per failing call cheap.
    _default_message = "circuit error"

    @property
    def message(self) -> str:
        """hystrix-go's ``CircuitError.Message``: ``"circuit open"``, ``"max concurrency"``, ``"timeout"``."""
        args = self.args
        return str(args[0]) if args else self._default_message

    def __str__(self) -> str:
        return "hystrix: " + self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class CircuitOpenError(CircuitError):
    """The circuit is open (tripped or forced): the call was short-circuited."""

    _default_message = "circuit open"


class MaxConcurrencyError(CircuitError):
    """Every concurrency ticket of the command was taken: the call was rejected."""

    _default_message = "max concurrency"


class TimeoutError(CircuitError, builtins.TimeoutError):  # noqa: A001 - hystrix-go's name
    """The command did not finish within its timeout."""

    _default_message = "timeout"


class FailedResultError(CircuitError):
    """run returned a value the command's ``is_failure`` accepts: a failure without an exception.

    ``result`` is that value; the fallback gets this error, and so does the caller without one.
    """

    _default_message = "failed result"

    def __init__(self, result: object) -> None:
        super().__init__(result)  # args == (result,): pickles and copies with its result

    @property
    def result(self) -> object:
        """What run returned."""
        return self.args[0]

    @property
    def message(self) -> str:
        """``"failed result"`` (the result itself is :attr:`result`)."""
        return self._default_message


class ContextCanceledError(Exception):
    """The command's context was cancelled before the command finished."""

    def __str__(self) -> str:
        return "context canceled"


class ContextDeadlineExceededError(builtins.TimeoutError):
    """The command's context deadline passed before the command finished."""

    def __str__(self) -> str:
        return "context deadline exceeded"


class FallbackError(Exception):
    """The fallback failed; keeps both the fallback's and the run's error."""

    fallback_error: BaseException
    run_error: BaseException

    def __init__(self, fallback_error: BaseException, run_error: BaseException) -> None:
        self.fallback_error = fallback_error
        self.run_error = run_error
        super().__init__(f"fallback failed with '{_text(fallback_error)}'. run error was '{_text(run_error)}'")

    def __reduce__(self) -> tuple[type[FallbackError], tuple[BaseException, BaseException]]:
        return (type(self), (self.fallback_error, self.run_error))


def _text(error: BaseException) -> str:
    """``str(error)``, or what the traceback module shows when that fails: never raises an ``Exception``."""
    try:
        return str(error)
    except Exception:  # a __str__ that raises, returns a non-str, or recurses
        return f"<unprintable {type(error).__name__} object>"


def safe_repr(value: object) -> str:
    """``repr(value)`` for an error message, or a description when that fails (never raises an ``Exception``)."""
    try:
        return repr(value)
    except Exception:  # a __repr__ that raises, or an int past sys.get_int_max_str_digits()
        if isinstance(value, int):
            return f"<int of {value.bit_length()} bits>"
        return f"<unprintable {type(value).__name__} object>"


ErrCircuitOpen = CircuitOpenError
ErrMaxConcurrency = MaxConcurrencyError
ErrTimeout = TimeoutError
