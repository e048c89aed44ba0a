"""The signal a thread-isolated command's caller waits on (pure-Python twin of ``_handoff``).

A ``threading.Event`` underneath; the compiled twin spins briefly before sleeping.
"""

from __future__ import annotations

import threading

__all__ = ["Completion"]


class Completion:
    """A signal set by a worker and waited for by one caller (``threading.Event``'s API).

    Besides ``set()``, ``post()`` sets it lazily: the waiter returns as soon as the
    signal is nudged (``nudge()``, or ``wait(nudge=...)`` once the nudging thread has
    let go of the GIL) or set, and at the latest a short grace period after it saw the
    post, so a post nobody nudges still wakes the waiter.
    """

    __slots__ = ("_event", "clear", "is_set", "post", "set")

    def __init__(self) -> None:
        self._event = threading.Event()
        # Bound once: these are called on every thread-isolated command. Without spinning
        # there is no grace period to shorten: a post sets the signal at once.
        self.set = self._event.set
        self.post = self._event.set
        self.is_set = self._event.is_set
        self.clear = self._event.clear

    def nudge(self) -> None:
        """Make a posted signal set now; no effect on a signal that is not posted."""
        # A post already set the signal here; a nudge never sets one that nobody posted.

    def wait(
        self,
        timeout: float | None = None,
        kick: Completion | None = None,
        spin: bool = True,
        nudge: Completion | None = None,
    ) -> bool:
        """Wait until set or ``timeout`` seconds pass (forever if ``None``); whether it is set.

        ``kick`` is set first (the compiled twin sets it, and nudges ``nudge``, once the
        GIL is released); ``spin`` only matters to the compiled twin, which spins
        briefly before sleeping. A posted signal counts as set.
        """
        if kick is not None:
            kick.set()
        return self._event.wait(timeout)
