"""The signal a thread-isolated command's caller waits on (pure-Python twin of ``_handoff``).

A ``threading.Event`` underneath; the compiled twin spins briefly before sleeping.
"""

from __future__ import annotations

import threading

__all__ = ["Completion"]


class Completion:
    """A signal set by a worker and waited for by one caller (``threading.Event``'s API)."""

    __slots__ = ("_event", "clear", "is_set", "set")

    def __init__(self) -> None:
        self._event = threading.Event()
        # Bound once: these are called on every thread-isolated command.
        self.set = self._event.set
        self.is_set = self._event.is_set
        self.clear = self._event.clear

    def wait(self, timeout: float | None = None, kick: Completion | None = None, spin: bool = True) -> bool:
        """Wait until set or ``timeout`` seconds pass (forever if ``None``); whether it is set.

        ``kick`` is set first (the compiled twin sets it once the GIL is released);
        ``spin`` only matters to the compiled twin, which spins briefly before sleeping.
        """
        if kick is not None:
            kick.set()
        return self._event.wait(timeout)
