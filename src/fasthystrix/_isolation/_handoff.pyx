# cython: language_level=3, freethreading_compatible=True
"""The signal a thread-isolated command's caller waits on (compiled twin of ``_handoff_py``).

Handing work to another thread and back costs two sleeps and two wake-ups with
``threading.Event``: about 20 us here, most of it in the kernel. When the other
side answers within microseconds (a fast run, a busy worker), spinning without
the GIL for a short while finds the answer without sleeping at all, and leaves
the GIL free for the thread that has to answer. Past the spin, the waiter sleeps
on a lock like ``threading.Event`` does.
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
    FH_HAVE_MONOTONIC_NS,
    fh_cas_acq_rel,
    fh_exchange_acq_rel,
    fh_load_acquire,
    fh_monotonic_ns,
    fh_pause,
    fh_store_release,
    fh_yield,
)

__all__ = ["Completion"]

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
    # Without a monotonic clock in C, a spin of N ns is N / NS_PER_ITERATION checks.
    NS_PER_ITERATION = 25


cdef class Completion:
    """A signal set by a worker and waited for by one caller (``threading.Event``'s API).

    Besides ``set()``, ``post()`` sets it lazily: the waiter returns as soon as the
    signal is nudged (``nudge()``, or ``wait(nudge=...)`` once the nudging thread has
    let go of the GIL) or set, and at the latest a short grace period after it saw the
    post, so a post nobody nudges still wakes the waiter.
    """

    def __cinit__(self):
        self.state = CLEAR
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
        cdef int64_t start, i = 0, state
        if FH_HAVE_MONOTONIC_NS:
            start = fh_monotonic_ns()
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
        while i < limit_ns // NS_PER_ITERATION:
            state = fh_load_acquire(&self.state)
            if state == SET or (posted and state == POSTED):
                return True
            if i < BUSY_ITERATIONS:
                fh_pause()
            else:
                fh_yield()
            i += 1
        return False

    cdef void grace(self) noexcept nogil:
        # A posted waiter gives its nudge a moment to come, so that the nudging thread
        # has let go of the GIL by the time this one takes it.
        if fh_load_acquire(&self.state) == POSTED:
            self.spin(GRACE_NS, False)

    cdef void set_nogil(self) noexcept nogil:
        # From POSTED no release: the post already released a sleeping waiter.
        if fh_exchange_acq_rel(&self.state, SET) == SLEEPING:
            PyThread_release_lock(self.lock)

    cdef void post_nogil(self) noexcept nogil:
        # Already SET or POSTED: nothing to do. A sleeping waiter is woken (it then waits
        # out its grace without the GIL). Retry with what a failed CAS saw: a waiter whose
        # sleep times out turns SLEEPING back into CLEAR under us, and must still be posted.
        cdef int64_t seen = fh_load_acquire(&self.state)
        while seen == CLEAR or seen == SLEEPING:
            if fh_cas_acq_rel(&self.state, &seen, POSTED):
                if seen == SLEEPING:
                    PyThread_release_lock(self.lock)
                return

    cdef void nudge_nogil(self) noexcept nogil:
        # Only a posted signal: a late nudge (its waiter already left, maybe to wait for
        # something else) must not set a signal that nobody posted.
        cdef int64_t expected = POSTED
        fh_cas_acq_rel(&self.state, &expected, SET)

    def wait(self, timeout=None, Completion kick=None, bint spin=True, Completion nudge=None):
        """Wait until set or ``timeout`` seconds pass (forever if ``None``); whether it is set.

        ``kick`` is set and ``nudge`` nudged once this thread has let go of the GIL: the
        thread they wake then finds the GIL free instead of sleeping until this one
        reaches its wait. ``spin=False`` sleeps at once (for waiters unlikely to be
        woken soon). A posted signal counts as set, after its grace period or nudge.
        """
        cdef long long micros = -1
        cdef int64_t limit = SPIN_NS if spin else 0
        cdef int64_t expected
        cdef PyLockStatus status
        cdef bint found
        if timeout is not None:
            micros = <long long>(max(float(timeout), 0.0) * 1e6)
            if micros * 1000 < limit:
                limit = micros * 1000
        if kick is None and nudge is None and fh_load_acquire(&self.state) == SET:
            return True
        with nogil:
            if kick is not None:
                kick.set_nogil()
            if nudge is not None:
                nudge.nudge_nogil()
            found = limit > 0 and self.spin(limit, True)
            if found:
                self.grace()
        if found:
            return True
        if timeout is not None:
            micros -= limit // 1000
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
