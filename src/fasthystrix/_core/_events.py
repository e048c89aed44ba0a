"""Event indices and admission verdicts shared by every module.

The compiled modules mirror them in ``_rolling.pxd`` (events) and ``_circuit.pxd`` (verdicts).
The event names are hystrix-go's exact event strings, in index order.
"""

from __future__ import annotations

__all__ = [
    "ADMITTED",
    "EXPIRED",
    "FIRST_PROBE",
    "PROBE",
    "QUEUE_CANCELED",
    "QUEUE_DEADLINE",
    "QUEUE_TIMEOUT",
    "BAD_REQUEST",
    "BAD_REQUEST_NAME",
    "SLOW_CALL",
    "COUNTED_EVENT_NAMES",
    "CONTEXT_CANCELED",
    "CONTEXT_DEADLINE_EXCEEDED",
    "EVENT_NAMES",
    "FAILURE",
    "FALLBACK_FAILURE",
    "FALLBACK_SUCCESS",
    "NOT_STARTED",
    "NO_EVENT",
    "REJECTED",
    "REJECTED_VERDICT",
    "SHORT_CIRCUIT",
    "SHORT_CIRCUITED",
    "SUCCESS",
    "TIMEOUT",
    "TRIPPED",
    "probe_phase",
    "turned_away_event",
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
# An error ``ignore`` accepts: neither success nor failure (Hystrix's BAD_REQUEST). Not one of
# hystrix-go's events: its index is its slot in a window bucket (after EXECUTED and MAX_ACTIVE).
BAD_REQUEST = 11
# A request whose run took longer than slow_call_duration (counted besides its event): the
# next slot of a window bucket.
SLOW_CALL = 12
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
#: The name bad requests are published under (Hystrix's ``BAD_REQUEST``, in hystrix-go's style).
BAD_REQUEST_NAME = "bad-request"
#: Every count the exporters publish per event: hystrix-go's events, then bad requests.
COUNTED_EVENT_NAMES = (*EVENT_NAMES, BAD_REQUEST_NAME)

# Admission verdicts: the circuit's answer to a call. A positive verdict admits the open
# circuit's trial request and is the number of the open episode it may close.
ADMITTED = 0
REJECTED_VERDICT = -1  # no ticket free
SHORT_CIRCUITED = -2  # the circuit is open
TRIPPED = -3  # short-circuited by the call that found the circuit unhealthy and opened it
EXPIRED = -4  # short-circuited by the call that found the half-open trials past half_open_max_wait
# The end of a wait for a ticket (max_queue_wait) other than a rejection: nothing ran, no ticket held.
QUEUE_TIMEOUT = -5  # the command's timeout ended the wait
QUEUE_CANCELED = -6  # the call's context was cancelled while it waited
QUEUE_DEADLINE = -7  # the call's context's deadline ended the wait

# With several trials (half_open_max_calls > 1, or a half_open_max_wait), a trial's verdict is
# PROBE | its half-open phase (probe_phase), and the phase's first trial also has FIRST_PROBE
# (the one that tells the listeners "half-open"; the report ignores that bit).
PROBE = 1 << 61
FIRST_PROBE = 1 << 60
_PHASE_SHIFT = 24  # the phase: the open episode, then its reopens so far (mod 2**24)


def probe_phase(episode: int, reopens: int) -> int:
    """The verdict of a trial of an open episode's half-open phase (``reopens`` failed ones before it)."""
    return PROBE | (episode << _PHASE_SHIFT) | (reopens & ((1 << _PHASE_SHIFT) - 1))


def turned_away_event(verdict: int) -> int:
    """The event of a call the circuit did not admit (``verdict < 0``)."""
    if verdict <= QUEUE_TIMEOUT:
        return _QUEUE_EVENTS[verdict]
    return REJECTED if verdict == REJECTED_VERDICT else SHORT_CIRCUIT


_QUEUE_EVENTS = {QUEUE_TIMEOUT: TIMEOUT, QUEUE_CANCELED: CONTEXT_CANCELED, QUEUE_DEADLINE: CONTEXT_DEADLINE_EXCEEDED}
