"""Concurrency tickets of one command (pure-Python twin).

A count, not a channel of tickets as in hystrix-go: the limit is read at
each take, so a new ``max_concurrent_requests`` applies to the next call
(hystrix-go fixed the pool size at circuit creation, issue #104).

The count is the length of a list: ``append``, ``pop`` and ``len`` are each
atomic on GIL and free-threaded CPython alike, so the circuit's success path
takes and returns tickets without the circuit's lock. A take appends first and
checks after, giving its ticket back if that went over the limit, so the count
never exceeds the limit while a taker holds its ticket. A take may count a
ticket that a racing take is about to give back; the circuit calls
:meth:`TicketPool.try_take` only under its lock, and a lock-free take that finds
the limit reached gives its ticket back and retries under the lock, so the last
ticket still goes to one of the racers, as with the compiled twin's
compare-and-swap.
"""

from __future__ import annotations

__all__ = ["TicketPool"]

# Entries the list always holds, so that taking the first ticket and giving the
# last back never reallocates it: ``[None] * 8`` grows to room for 16 on the
# first take and never shrinks below 8 entries (CPython shrinks a list only
# when it falls under half its allocation).
BASE = 8


class TicketPool:
    """How many tickets are taken; a take succeeds while fewer than the limit are."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        # One entry per ticket taken, after BASE entries that are no ticket.
        self._held: list[None] = [None] * BASE

    @property
    def in_use(self) -> int:
        """Tickets taken now."""
        return len(self._held) - BASE

    def try_take(self, limit: int) -> int:
        """Take a ticket if fewer than ``limit`` are taken: the new count, or ``-1``."""
        held = self._held
        held.append(None)
        in_use = len(held) - BASE
        if in_use > limit:
            held.pop()
            return -1
        return in_use

    def give_back(self) -> None:
        """Return a ticket."""
        held = self._held
        held.pop()
        # A give never takes the count below zero: see _after_fork_in_child. Popping first and
        # checking after, as the compiled twin adds first and checks the value it returned.
        if len(held) < BASE:
            held.append(None)

    def _after_fork_in_child(self) -> None:
        """In a forked child: hold no ticket (the commands that held them run on in the parent)."""
        # Why zero, and not the tickets of the forking thread's own commands in flight (a run
        # that forked, a do_async suspended on the forking event loop): knowing which tickets a
        # thread holds takes bookkeeping on every call (a thread-local push and pop around each
        # run, in C and in Python), on the success path, for the sake of a fork that takes
        # none. The other threads' commands do not exist in the child, so the only gives that
        # can come for a ticket taken before the fork are those of the forking thread, and
        # they are absorbed: the circuit's lock-free success path gives back to the list it
        # read when its command started (the old one, which nothing counts any more: hence a
        # new list, not the old one emptied), and every other give comes through give_back,
        # which never takes the count below zero. The compiled twin compares the value its
        # atomic add returns. The price: while such a command runs on in the child, the
        # child does not count its ticket.
        self._held = [None] * BASE
