"""Concurrency tickets of one command (pure-Python twin).

A counter, not a channel of tickets as in hystrix-go: the limit is read at
each take, so a new ``max_concurrent_requests`` applies to the next call
(hystrix-go fixed the pool size at circuit creation, issue #104).

Not thread-safe by itself: the owning circuit serialises access.
"""

from __future__ import annotations

__all__ = ["TicketPool"]


class TicketPool:
    """How many tickets are taken; a take succeeds while fewer than the limit are."""

    __slots__ = ("in_use",)

    def __init__(self) -> None:
        self.in_use = 0

    def try_take(self, limit: int) -> int:
        """Take a ticket if fewer than ``limit`` are taken: the new count, or ``-1``."""
        if self.in_use >= limit:
            return -1
        self.in_use += 1
        return self.in_use

    def give_back(self) -> None:
        """Return a ticket."""
        self.in_use -= 1
