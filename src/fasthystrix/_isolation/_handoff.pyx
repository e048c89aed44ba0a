# cython: language_level=3, freethreading_compatible=True
"""The signal a thread-isolated command's caller waits on (compiled twin of ``_handoff_py``).

Handing work to another thread and back costs two sleeps and two wake-ups with
``threading.Event``: about 20 us here, most of it in the kernel. When the other
side answers within microseconds (a fast run, a busy worker), spinning without
the GIL for a short while finds the answer without sleeping at all, and leaves
the GIL free for the thread that has to answer. Past the spin, the waiter sleeps
on a lock like ``threading.Event`` does.

When the other side usually answers late (a run that sleeps or does I/O), the
spin only burns CPU, the waiter's and the core's. A ``SpinBudget`` shared by the
waits of one kind (a pool's callers, its idle workers, its posted workers' graces)
learns from their recent waits whether spinning pays, and its waiters sleep (or
start) at once when it does not. Without a monotonic clock in C, waits always spin
as they did before budgets (all their samples read 0); graces still adapt.
"""

from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport (
    PY_LOCK_ACQUIRED,
    PY_LOCK_INTR,
    PyLockStatus,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
    WAIT_LOCK,
)
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport (
    fh_add_relaxed,
    fh_cas_acq_rel,
    fh_exchange_acq_rel,
    fh_load_acquire,
    fh_load_relaxed,
    fh_monotonic_ns,
    fh_pause,
    fh_store_relaxed,
    fh_yield,
)

__all__ = ["Completion", "SpinBudget"]

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                             int intr_flag) nogil

cdef enum:
    CLEAR = 0
    SET = 1
    SLEEPING = 2   # the waiter sleeps on the lock: set() must release it
    # Set lazily (post()): the waiter returns once nudged or set, or GRACE_NS after it
    # saw the post, whichever comes first. Never held by a waiter asleep on the lock.
    POSTED = 3
    # How long a waiter spins before sleeping: long enough for a worker thread to pick up
    # a task and run a fast call, short enough not to matter when the call does I/O.
    SPIN_NS = 50000
    BUSY_ITERATIONS = 200   # pause instructions before yielding (a few microseconds)
    # How long a posted waiter waits for its nudge: the poster usually nudges within a
    # few microseconds (go() then result()); one that never does (fire-and-forget, done
    # callbacks) only delays the waiter by this much.
    GRACE_NS = 30000
    # A budget's samples are capped at the spin: a wait of 50 us and one of 50 s say the same
    # (too long to spin for), and one very long wait must not outweigh many short ones.
    SAMPLE_CAP_NS = SPIN_NS
    # Waiters spin while the average sample is below this: while most recent waits ended
    # within the spin (with samples capped at the spin, an average of half of it needs at
    # least half of them short).
    SPIN_WHILE_BELOW_NS = SPIN_NS // 2
    # Each sample moves the average 1/AVERAGE_WEIGHT of the way: after a change from short
    # waits to long ones, six waits turn the spin off; the same the other way round.
    AVERAGE_WEIGHT = 8
    # A grace its budget advises against still runs once in PROBE_EVERY times, to notice
    # nudges coming in time again (a skipped grace sees no nudge, so it has nothing to learn).
    PROBE_EVERY = 16


cdef class SpinBudget:
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

    @property
    def average_ns(self):
        """The moving average of recent waits, in nanoseconds, each capped at the spin."""
        return fh_load_relaxed(&self.average)

    @property
    def spun(self):
        """How many waits spun before sleeping (graces: ran before starting)."""
        return fh_load_relaxed(&self.spins)

    @property
    def skipped(self):
        """How many waits slept at once (graces: started at once), as the budget advised."""
        return fh_load_relaxed(&self.skips)

    def spin_ns(self):
        """How long a waiter would spin now before sleeping: the full spin, or 0."""
        return SPIN_NS if self.favours_spinning() else 0

    def record(self, wait_ns):
        """Record a wait that took ``wait_ns`` nanoseconds until its signal was set."""
        self.add_sample(wait_ns)

    cdef inline bint favours_spinning(self) noexcept nogil:
        return fh_load_relaxed(&self.average) < SPIN_WHILE_BELOW_NS

    cdef bint advise(self, bint probe) noexcept nogil:
        # Whether a waiter spins now; with ``probe``, once in PROBE_EVERY times the average
        # advises against it, it spins anyway. Turning a spin off is safe at any time: a
        # waiter that does not spin sleeps on the lock, which every set() and post()
        # releases (the spin only shortcuts that sleep); a grace not run only lets the
        # waiter start before its nudge, as a grace that runs out does.
        if self.favours_spinning():
            return True
        return probe and fh_add_relaxed(&self.declines, 1) % PROBE_EVERY == PROBE_EVERY - 1

    cdef inline void count(self, bint spun) noexcept nogil:
        # Called where the spin happens (or would have), so the counters say what waiters did.
        fh_add_relaxed(&self.spins if spun else &self.skips, 1)

    cdef void add_sample(self, int64_t ns) noexcept nogil:
        # Every wait that may spin records, whether it spun or slept: samples come from
        # stamps, not from the spin's success, so a budget that turned the spin off still
        # sees the waits get short again and turns it back on. Two waiters recording at once may lose one
        # sample (a relaxed load, then a store), never corrupt the average: both stores
        # are averages of values within [0, SAMPLE_CAP_NS], so the average stays in it.
        cdef int64_t average
        if ns < 0:
            ns = 0  # set before the wait started
        elif ns > SAMPLE_CAP_NS:
            ns = SAMPLE_CAP_NS
        average = fh_load_relaxed(&self.average)
        # Non-negative operands: C's division and Python's floor division agree (the pure twin).
        fh_store_relaxed(&self.average, (average * (AVERAGE_WEIGHT - 1) + ns) // AVERAGE_WEIGHT)


cdef class Completion:
    """A signal set by a worker and waited for by one caller (``threading.Event``'s API).

    Besides ``set()``, ``post()`` sets it lazily: the waiter returns as soon as the
    signal is nudged (``nudge()``, or ``wait(nudge=...)`` once the nudging thread has
    let go of the GIL) or set, and at the latest a short grace period after it saw the
    post, so a post nobody nudges still wakes the waiter. With a ``budget``, a wait
    that may spin asks it whether to, and records how long the signal took; with a
    ``grace_budget``, so does a posted waiter's grace, for how long its nudge took.
    """

    def __cinit__(self, SpinBudget budget=None, SpinBudget grace_budget=None):
        self.state = CLEAR
        self.budget = budget
        self.timed = budget is not None
        self.set_ns = 0
        self.woke_ns = 0
        self.grace_budget = grace_budget
        self.graces_budgeted = grace_budget is not None
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError("cannot allocate a lock")
        # Held from the start: a sleeping waiter blocks on it until set() releases it.
        PyThread_acquire_lock(self.lock, WAIT_LOCK)

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    def set(self):
        """Set the signal and wake the waiter."""
        self.set_nogil()

    def post(self):
        """Set the signal lazily: the waiter returns when nudged or set, or after a short grace period."""
        self.post_nogil()

    def nudge(self):
        """Make a posted signal set now; no effect on a signal that is not posted."""
        self.nudge_nogil()

    def is_set(self):
        """Whether the signal is set (or posted)."""
        cdef int64_t state = fh_load_acquire(&self.state)
        return state == SET or state == POSTED

    def clear(self):
        """Clear a set or posted signal (a sleeping waiter is not affected)."""
        cdef int64_t expected = fh_load_acquire(&self.state)
        # A nudge may turn POSTED into SET under us: retry with what the CAS saw.
        while expected == SET or expected == POSTED:
            if fh_cas_acq_rel(&self.state, &expected, CLEAR):
                return

    cdef bint spin(self, int64_t limit_ns, bint posted) noexcept nogil:
        # Busy-wait a little, then yield the CPU between checks: on a machine with more
        # runnable threads than cores, the thread that will set us may need this core.
        # Stops at SET, or also at POSTED if ``posted``.
        cdef int64_t start = fh_monotonic_ns(), i = 0, state
        while True:
            state = fh_load_acquire(&self.state)
            if state == SET or (posted and state == POSTED):
                return True
            if i < BUSY_ITERATIONS:
                fh_pause()
            else:
                fh_yield()
            i += 1
            if (i & 15) == 0 and fh_monotonic_ns() - start >= limit_ns:
                return False

    cdef void grace(self) noexcept nogil:
        # A posted waiter gives its nudge a moment to come, so that the nudging thread
        # has let go of the GIL by the time this one takes it. When nudges come late or
        # never (futures collected later, or only given callbacks), the grace only burns
        # CPU: its budget then skips it, and the waiter goes on to wait for the GIL asleep.
        cdef int64_t start
        cdef bint nudged
        if fh_load_acquire(&self.state) != POSTED:
            return
        if not self.graces_budgeted:
            self.spin(GRACE_NS, False)
            return
        if not self.grace_budget.advise(True):
            self.grace_budget.count(False)
            return
        # The waiter times its own grace: it spins throughout, so what it sees is exact. A
        # grace that runs out says the nudge comes too late to wait for: the longest sample.
        self.grace_budget.count(True)
        start = fh_monotonic_ns()
        nudged = self.spin(GRACE_NS, False)
        self.grace_budget.add_sample(fh_monotonic_ns() - start if nudged else SAMPLE_CAP_NS)

    cdef inline void stamp(self) noexcept nogil:
        # When the signal was set, for the waiter's budget. Stored before the state change
        # that publishes it (whose release the waiter's acquire pairs with, or the lock
        # hand-off for a sleeping waiter). Without a budget nobody reads it.
        if self.timed:
            fh_store_relaxed(&self.set_ns, fh_monotonic_ns())

    cdef void set_nogil(self) noexcept nogil:
        # From POSTED no release: the post already released a sleeping waiter.
        self.stamp()
        if fh_exchange_acq_rel(&self.state, SET) == SLEEPING:
            PyThread_release_lock(self.lock)

    cdef void post_nogil(self) noexcept nogil:
        # Already SET or POSTED: nothing to do. A sleeping waiter is woken (it then waits
        # out its grace without the GIL). Retry with what a failed CAS saw: a waiter whose
        # sleep times out turns SLEEPING back into CLEAR under us, and must still be posted.
        cdef int64_t seen = fh_load_acquire(&self.state)
        while seen == CLEAR or seen == SLEEPING:
            self.stamp()
            if fh_cas_acq_rel(&self.state, &seen, POSTED):
                if seen == SLEEPING:
                    PyThread_release_lock(self.lock)
                return

    cdef void nudge_nogil(self) noexcept nogil:
        # Only a posted signal: a late nudge (its waiter already left, maybe to wait for
        # something else) must not set a signal that nobody posted. No stamp: for the
        # budget, the post was the hand-off.
        cdef int64_t expected = POSTED
        fh_cas_acq_rel(&self.state, &expected, SET)

    def wait(self, timeout=None, Completion kick=None, bint spin=True, Completion nudge=None):
        """Wait until set or ``timeout`` seconds pass (forever if ``None``); whether it is set.

        ``kick`` is set and ``nudge`` nudged once this thread has let go of the GIL: the
        thread they wake then finds the GIL free instead of sleeping until this one
        reaches its wait. ``spin=False`` sleeps at once (for waiters unlikely to be
        woken soon); otherwise the wait spins briefly first, if the budget (when there
        is one) advises it. A posted signal counts as set, after its grace period or nudge.
        """
        cdef long long micros = -1
        cdef int64_t limit = 0
        cdef int64_t start = 0
        cdef bint found
        cdef SpinBudget budget = self.budget if spin else None
        if kick is None and nudge is None and fh_load_acquire(&self.state) == SET:
            self.woke(fh_monotonic_ns())
            return True  # nothing handed off, nothing waited for: not a sample
        if spin and (budget is None or budget.advise(False)):
            limit = SPIN_NS
        if timeout is not None:
            micros = <long long>(max(float(timeout), 0.0) * 1e6)
            if micros * 1000 < limit:
                limit = micros * 1000
        with nogil:
            if kick is not None:
                kick.set_nogil()
            if nudge is not None:
                nudge.nudge_nogil()
            # After the kick, so as not to delay it: a thread that takes the kick and answers
            # before this clock read gives a sample of 0 (it is clamped), which is what it was.
            if self.timed:
                start = fh_monotonic_ns()
            if budget is not None:
                budget.count(limit > 0)
            found = limit > 0 and self.spin(limit, True)
            if found:
                self.grace()
        if not found:
            found = self.sleep(limit, micros)
        if self.timed:
            self.learn(budget, kick if kick is not None else nudge, start, found)
        return found

    cdef inline void woke(self, int64_t now) noexcept nogil:
        # A worker's signal (only those are posted, so only those have a grace budget) notes
        # when a wait on it found it: when the worker woke up to take its task, for the
        # waits of the threads it works for (see learn()). No other signal does.
        if self.graces_budgeted:
            fh_store_relaxed(&self.woke_ns, now)

    cdef void learn(self, SpinBudget budget, Completion other, int64_t start, bint found) noexcept:
        # After a wait that began at ``start``, in which this thread kicked or nudged ``other``
        # (None if neither): note when this one woke up, and give ``budget`` its sample.
        cdef int64_t now = fh_monotonic_ns(), set_ns, began, picked_up
        if found:
            self.woke(now)
        if budget is None:
            return
        if not found:
            # Timed out: the signal takes longer than this wait, so the sample is the cap if
            # the wait reached it; a shorter timed-out wait tells nothing.
            if now - start >= SAMPLE_CAP_NS:
                budget.add_sample(SAMPLE_CAP_NS)
            return
        # set_ns is read after this thread saw the state change (or took the lock) that
        # published it. A thread waiting for a worker's result times the work from when the
        # worker woke up to take it, if that was during this wait: the run, not the worker's
        # wake-up. Otherwise a caller and a worker that both sleep would each find the
        # other's wake-up in their samples and keep each other from ever spinning again;
        # this way the caller's choice depends on the runs alone, and the worker's (timed
        # in full: its wait does include how fast the caller comes back) on the caller's.
        # A woke_ns outside [start, set_ns] is another wait's (the worker was already busy,
        # or has been woken again since it set this signal), or the worker took the kick
        # before this wait read the clock: then from ``start``.
        set_ns = fh_load_relaxed(&self.set_ns)
        began = start
        if other is not None:
            picked_up = fh_load_relaxed(&other.woke_ns)
            if start <= picked_up <= set_ns:
                began = picked_up
        budget.add_sample(set_ns - began)

    cdef bint sleep(self, int64_t spun_ns, long long micros) except -1:
        # The rest of wait() after an unsuccessful spin of ``spun_ns``: sleep on the lock
        # for what is left of ``micros`` (forever if negative).
        cdef int64_t expected
        cdef PyLockStatus status
        if micros >= 0:
            micros -= spun_ns // 1000
            if micros <= 0:
                expected = fh_load_acquire(&self.state)
                if expected == POSTED:
                    with nogil:
                        self.grace()
                return expected == SET or expected == POSTED
        expected = CLEAR
        if not fh_cas_acq_rel(&self.state, &expected, SLEEPING):
            if expected == POSTED:
                with nogil:
                    self.grace()
            # SLEEPING: a second waiter (this signal serves one); it returns early.
            return expected == SET or expected == POSTED
        while True:
            with nogil:
                status = PyThread_acquire_lock_timed(self.lock, micros, 1)
                if status == PY_LOCK_ACQUIRED:
                    self.grace()
            if status == PY_LOCK_ACQUIRED:
                return True
            if status == PY_LOCK_INTR:
                # A signal arrived (Ctrl-C): let its handler run, as threading.Event.wait does.
                try:
                    PyErr_CheckSignals()
                except BaseException:
                    self._stop_sleeping()
                    raise
                continue
            return self._stop_sleeping()

    cdef bint _stop_sleeping(self) except -1:
        # Take the sleeping mark back; if set() or post() got there first, consume its release.
        cdef int64_t expected = SLEEPING
        if fh_cas_acq_rel(&self.state, &expected, CLEAR):
            return False
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        return True
