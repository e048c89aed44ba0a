"""Stub of the compiled ``_deadlines`` module; it mirrors its pure twin ``_deadlines_py``."""

import asyncio
from typing import Any

__all__ = ["DONE", "FIRED", "MAX_TIMER_DELAY", "PENDING", "SWEEP_SLACK", "Deadlines"]

PENDING: int
DONE: int
FIRED: int
MAX_TIMER_DELAY: float
SWEEP_SLACK: int

class Deadlines:
    """One timer per event loop for every ``do_async`` in flight on it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def heap(self) -> list[Any]: ...
    @property
    def handle(self) -> asyncio.TimerHandle | None: ...
    @property
    def armed_at(self) -> float: ...
    @property
    def live(self) -> int: ...
    @property
    def seq(self) -> int: ...
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def add(self, when: float, task: asyncio.Task[Any]) -> Any:
        """Cancel ``task`` at loop time ``when`` unless :meth:`done` comes first; the entry for :meth:`done`."""
    def done(self, entry: Any) -> bool:
        """The call of ``entry`` has ended; whether its deadline fired first."""
