"""Event indices shared by every module (the compiled modules mirror them in ``_rolling.pxd``).

The names are hystrix-go's exact event strings, in index order.
"""

from __future__ import annotations

__all__ = [
    "CONTEXT_CANCELED",
    "CONTEXT_DEADLINE_EXCEEDED",
    "EVENT_NAMES",
    "FAILURE",
    "FALLBACK_FAILURE",
    "FALLBACK_SUCCESS",
    "NOT_STARTED",
    "NO_EVENT",
    "REJECTED",
    "SHORT_CIRCUIT",
    "SUCCESS",
    "TIMEOUT",
]

SUCCESS = 0
FAILURE = 1
REJECTED = 2
SHORT_CIRCUIT = 3
TIMEOUT = 4
CONTEXT_CANCELED = 5
CONTEXT_DEADLINE_EXCEEDED = 6
FALLBACK_SUCCESS = 7
FALLBACK_FAILURE = 8
NO_EVENT = -1  # no fallback ran / no event
NOT_STARTED = -1  # the "start" of a command that never ran (its context was already done)

EVENT_NAMES = (
    "success",
    "failure",
    "rejected",
    "short-circuit",
    "timeout",
    "context_canceled",
    "context_deadline_exceeded",
    "fallback-success",
    "fallback-failure",
)
