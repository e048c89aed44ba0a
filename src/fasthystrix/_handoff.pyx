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

from fasthystrix._atomic cimport (
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
    # How long a waiter spins before sleeping: long enough for a worker thread to pick up
    # a task and run a fast call, short enough not to matter when the call does I/O.
    SPIN_NS = 50000
    SPIN_ITERATIONS = 2000  # without a monotonic clock in C
    BUSY_ITERATIONS = 200   # pause instructions before yielding (a few microseconds)


cdef class Completion:
    """A signal set by a worker and waited for by one caller (``threading.Event``'s API)."""

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

    def is_set(self):
        """Whether the signal is set."""
        return fh_load_acquire(&self.state) == SET

    def clear(self):
        """Clear a set signal (a sleeping waiter is not affected)."""
        cdef int64_t expected = SET
        fh_cas_acq_rel(&self.state, &expected, CLEAR)

    cdef bint spin(self, int64_t limit_ns) noexcept nogil:
        # Busy-wait a little, then yield the CPU between checks: on a machine with more
        # runnable threads than cores, the thread that will set us may need this core.
        cdef int64_t start, i = 0
        if FH_HAVE_MONOTONIC_NS:
            start = fh_monotonic_ns()
            while True:
                if fh_load_acquire(&self.state) == SET:
                    return True
                if i < BUSY_ITERATIONS:
                    fh_pause()
                else:
                    fh_yield()
                i += 1
                if (i & 15) == 0 and fh_monotonic_ns() - start >= limit_ns:
                    return False
        while i < SPIN_ITERATIONS:
            if fh_load_acquire(&self.state) == SET:
                return True
            if i < BUSY_ITERATIONS:
                fh_pause()
            else:
                fh_yield()
            i += 1
        return False

    cdef void set_nogil(self) noexcept nogil:
        if fh_exchange_acq_rel(&self.state, SET) == SLEEPING:
            PyThread_release_lock(self.lock)

    def wait(self, timeout=None, Completion kick=None, bint spin=True):
        """Wait until set or ``timeout`` seconds pass (forever if ``None``); whether it is set.

        ``kick`` is set once this thread has let go of the GIL: the thread it wakes
        then finds the GIL free instead of sleeping until this one reaches its wait.
        ``spin=False`` sleeps at once (for waiters unlikely to be woken soon).
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
        if kick is None and fh_load_acquire(&self.state) == SET:
            return True
        with nogil:
            if kick is not None:
                kick.set_nogil()
            found = limit > 0 and self.spin(limit)
        if found:
            return True
        if timeout is not None:
            micros -= limit // 1000
            if micros <= 0:
                return fh_load_acquire(&self.state) == SET
        expected = CLEAR
        if not fh_cas_acq_rel(&self.state, &expected, SLEEPING):
            return expected == SET
        while True:
            with nogil:
                status = PyThread_acquire_lock_timed(self.lock, micros, 1)
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
        # Take the sleeping mark back; if set() got there first, consume its release.
        cdef int64_t expected = SLEEPING
        if fh_cas_acq_rel(&self.state, &expected, CLEAR):
            return False
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        return True
