"""The gate of the pure twin's lock-free success path: what a call may assume without the lock.

A closed, healthy circuit's success path takes no lock. It reads the circuit's
current :class:`Gate`, an immutable object the circuit publishes (one attribute
store) whenever it holds its lock; a successful call then only appends to
lists (a ticket, an admission, a latency sample), which is atomic on GIL and
free-threaded CPython alike. The rolling window folds the appended samples
into its buckets and histograms later, under the lock: before anything reads
or changes the window, or when ``PENDING_LIMIT`` samples have piled up.

Why the health check stays exact. A success reported but not yet folded is
an entry of the window's ``_pending`` list; a folded one is in the window's
request total. The gate's ``budget`` is the number of unfolded successes below
which the totals it was computed from stay healthy (more successes only lower
the error percentage, so the first count that reaches the volume threshold
decides). A call reads ``len(pending)`` first and the gate second; a fold
(always under the lock) invalidates the gate first and removes the folded
entries from ``_pending`` last. So a call that still sees the old gate counted
the folded entries in its length, and one that sees the new gate has a budget
that already counts them (at worst twice, which only sends it to the locked
path). Every other change to the window (a failure, a new second, a reset)
invalidates the gate too, so every event reported before a call started is
either in the length the call reads or in the totals of the gate it reads.
"""

from __future__ import annotations

__all__ = ["CLOSED", "PENDING_LIMIT", "Gate"]

# Unfolded successes at most (plus those of calls running now), so memory per
# circuit stays bounded whatever the call rate: the two lists hold about 36 KiB
# at most. The fold's fixed cost (one locked call) is shared by this many calls;
# a larger limit saves little and costs memory (measured in benchmarks/callgrind_do.py).
PENDING_LIMIT = 2048


class Gate:
    """When the lock-free path may run a call; every field is checked against the call's own values.

    ``until_ns``: the end of the window's current second (a call starting or
    ending later takes the locked path, which moves the window). ``budget``:
    the call may run while fewer unfolded successes are pending. ``held_limit``:
    the ticket list's length the call may reach, the lower of the ticket limit
    and the most tickets in use yet seen this second (a new maximum is recorded
    under the lock). ``timeout_ns``: a success slower than this is a timeout.
    """

    __slots__ = ("budget", "held_limit", "timeout_ns", "until_ns")

    def __init__(self, until_ns: int, budget: int, held_limit: int, timeout_ns: int) -> None:
        self.until_ns = until_ns
        self.budget = budget
        self.held_limit = held_limit
        self.timeout_ns = timeout_ns

    def __repr__(self) -> str:
        return (
            f"Gate(until_ns={self.until_ns}, budget={self.budget}, "
            f"held_limit={self.held_limit}, timeout_ns={self.timeout_ns})"
        )


# The gate of a circuit that must take the locked path: no pending count is below -1.
CLOSED = Gate(0, -1, -1, 0)
