"""The signal a thread-isolated command's caller waits on (pure-Python twin of ``_handoff``).

A ``threading.Event`` underneath; the compiled twin spins briefly before sleeping,
when a ``SpinBudget`` finds that recent waits of the same kind ended within the spin.
"""

from __future__ import annotations

import threading

__all__ = ["Completion", "SpinBudget"]

# The compiled twin's constants (see _handoff.pyx): the spin, the cap on a sample, the
# average below which waiters spin, and the weight of the moving average.
SPIN_NS = 50_000
SAMPLE_CAP_NS = SPIN_NS
SPIN_WHILE_BELOW_NS = SPIN_NS // 2
AVERAGE_WEIGHT = 8


class SpinBudget:
    """Whether waiters of one kind of hand-off spin before sleeping, learnt from their recent waits.

    Each wait that may spin records how long its signal took, from timestamps taken by
    the threads involved, so that a waiter that slept does not count its own wake-up:
    from the start of the wait (or, waiting for a worker, from when the worker woke up
    to take the work) to when the signal was set. Samples are capped at the spin;
    ``average_ns`` is their moving average (each moves it 1/8 of the way). Waiters spin
    while it is below half the spin, and sleep at once otherwise. A posted worker's
    grace is budgeted the same way, from whether its nudge came within the grace; one
    in 16 graces the budget advises against runs anyway, to notice nudges coming in
    time again. ``spun`` and ``skipped`` count the waits that spun (or ran their grace)
    and those that did not. The pure twin never spins: it records nothing and counts
    every wait as skipped.
    """

    __slots__ = ("_average", "_skips", "_spins")

    def __init__(self) -> None:
        self._average = 0
        self._spins = 0
        self._skips = 0

    @property
    def average_ns(self) -> int:
        """The moving average of recent waits, in nanoseconds, each capped at the spin."""
        return self._average

    @property
    def spun(self) -> int:
        """How many waits spun before sleeping (graces: ran before starting)."""
        return self._spins

    @property
    def skipped(self) -> int:
        """How many waits slept at once (graces: started at once), as the budget advised."""
        return self._skips

    def spin_ns(self) -> int:
        """How long a waiter would spin now before sleeping: the full spin, or 0."""
        return SPIN_NS if self._average < SPIN_WHILE_BELOW_NS else 0

    def record(self, wait_ns: int) -> None:
        """Record a wait that took ``wait_ns`` nanoseconds until its signal was set."""
        sample = min(max(wait_ns, 0), SAMPLE_CAP_NS)
        self._average = (self._average * (AVERAGE_WEIGHT - 1) + sample) // AVERAGE_WEIGHT


class Completion:
    """A signal set by a worker and waited for by one caller (``threading.Event``'s API).

    Besides ``set()``, ``post()`` sets it lazily: the waiter returns as soon as the
    signal is nudged (``nudge()``, or ``wait(nudge=...)`` once the nudging thread has
    let go of the GIL) or set, and at the latest a short grace period after it saw the
    post, so a post nobody nudges still wakes the waiter. With a ``budget``, a wait
    that may spin asks it whether to, and records how long the signal took; with a
    ``grace_budget``, so does a posted waiter's grace, for how long its nudge took.
    """

    __slots__ = ("_budget", "_event", "clear", "is_set", "post", "set")

    def __init__(self, budget: SpinBudget | None = None, grace_budget: SpinBudget | None = None) -> None:
        self._event = threading.Event()
        self._budget = budget
        # grace_budget is unused: without a grace (a post sets at once) there is nothing to budget.
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
        briefly before sleeping if its budget advises it. A posted signal counts as set.
        """
        if kick is not None:
            kick.set()
        elif nudge is None and self._event.is_set():
            return True  # nothing handed off, nothing to wait for: not counted
        budget = self._budget
        if spin and budget is not None:
            # Nothing to learn without a spin to decide on: only counted, as the compiled
            # twin counts a wait its budget advised not to spin.
            budget._skips += 1
        return self._event.wait(timeout)
