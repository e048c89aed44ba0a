# cython: language_level=3, freethreading_compatible=True
"""Circuit state, concurrency tickets and the ``do()`` path (compiled twin of ``_circuit_py``).

The success path takes no lock and allocates no Python object of its own: one
atomic load of the state word, two atomic loads for the window's health, an
atomic ticket take and return, atomic increments into the current bucket and
the latency histograms. Opening and closing the circuit take a spinlock (rare).
User code (run, fallback, collectors, log handlers) never runs under it.

Every call owns a reference to its circuit for its whole duration (the table's
reference may go at any moment: ``flush()``), and run's exception is taken from
the thread state at once and handed back to the caller through an explicit
out-parameter (``raised``), never left set across C code.
"""

import dataclasses as _dataclasses
import threading
import time
from datetime import timedelta as _timedelta
from functools import partial
from types import MethodType

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

from fasthystrix._core._atomic cimport (
    fh_add_acq_rel,
    fh_cas_acq_rel,
    fh_exchange_acq_rel,
    fh_load_acquire,
    fh_load_relaxed,
    fh_monotonic_ns,
    fh_pid_init,
    fh_spin_lock,
    fh_spin_unlock,
    fh_store_relaxed,
    fh_store_release,
)
from fasthystrix._core._layout cimport fh_geometry, fh_limits, fh_proc, fh_state, fh_tickets, fh_window
from fasthystrix._core._pool cimport TicketPool
from fasthystrix._core._rolling cimport (
    BAD_REQUEST,
    CONTEXT_CANCELED,
    CONTEXT_DEADLINE_EXCEEDED,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    REJECTED,
    SHORT_CIRCUIT,
    SUCCESS,
    TIMEOUT,
    RollingMetrics,
)

from fasthystrix._core._context import Context
from fasthystrix._core._errors import CircuitOpenError, FailedResultError, FallbackError, MaxConcurrencyError
from fasthystrix._core._errors import ContextCanceledError as _ContextCanceledError
from fasthystrix._core._errors import ContextDeadlineExceededError as _ContextDeadlineExceededError
from fasthystrix._core._errors import TimeoutError as CommandTimeoutError
from fasthystrix._core import _backoff, _clock, _queue, _shared, _transitions
from fasthystrix._core._events import turned_away_event
from fasthystrix._core._outcomes import COROUTINE as _COROUTINE
from fasthystrix._core._outcomes import (
    check_arguments,
    coroutine_returned,
    error_for,
    notify_collectors,
    outcome,
)

__all__ = [
    "CircuitBreaker",
    "CommandFunction",
    "bind",
    "do",
]

fh_pid_init()

cdef int NO_EVENT = -1
cdef int64_t NOT_STARTED = -1
cdef object _monotonic_ns = time.monotonic_ns

# Set by the registry (bind): the circuits table, the creator, and the thread-mode executor.
cdef dict _circuits = {}
cdef object _get_or_create = None
cdef object _run_threaded = None


def bind(circuits, get_or_create, run_threaded):
    """Connect the fast path to the registry's table and to thread isolation (called once at import)."""
    global _circuits, _get_or_create, _run_threaded
    _circuits = circuits
    _get_or_create = get_or_create
    _run_threaded = run_threaded


# -- the clock ---------------------------------------------------------------------------

# The value a ManualClock froze the clock at, or -1 (production: the platform's monotonic clock).
# Tests drive time through this instead of through a Python callable, so the code they run is
# the code production runs, clock reads included.
cdef int64_t _frozen_ns = -1


cdef inline int64_t clock_ns() noexcept nogil:
    cdef int64_t frozen = fh_load_relaxed(&_frozen_ns)
    if frozen >= 0:
        return frozen
    return fh_monotonic_ns()


def _freeze_clock(int64_t ns):
    """Freeze the compiled circuits' clock at ``ns`` (``-1``: let it run); see ``_clock.ManualClock``."""
    fh_store_relaxed(&_frozen_ns, ns if ns >= 0 else -1)


def now_ns():
    """The compiled circuits' clock: ``time.monotonic_ns()``'s clock, or a ManualClock's value."""
    return clock_ns()


_clock.freeze_hooks.append(_freeze_clock)


def _layout():
    """Sizes and offsets of the C structs a shared circuit file holds (tests check them against
    ``_shared``'s layout)."""
    cdef fh_window w
    cdef fh_state st
    cdef fh_limits lim
    cdef fh_proc proc
    cdef fh_tickets tk
    cdef fh_geometry geom
    base = <char *>&w
    return {
        "geometry": sizeof(fh_geometry),
        "geometry.n": <char *>&geom.n - <char *>&geom,
        "geometry.buckets": <char *>&geom.buckets[0] - <char *>&geom,
        "limits.window_bucket_ns": <char *>&lim.window_bucket_ns - <char *>&lim,
        "limits.window_buckets": <char *>&lim.window_buckets - <char *>&lim,
        "limits": sizeof(fh_limits),
        "limits.version": <char *>&lim.version - <char *>&lim,
        "state": sizeof(fh_state),
        "state.lock": <char *>&st.lock - <char *>&st,
        "state.trial_slot": <char *>&st.trial_slot - <char *>&st,
        "state.sleep_ns": <char *>&st.sleep_ns - <char *>&st,
        "limits.sleep_jitter_ppm": <char *>&lim.sleep_jitter_ppm - <char *>&lim,
        "limits.half_open_wait_ns": <char *>&lim.half_open_wait_ns - <char *>&lim,
        "tickets.probes": <char *>&tk.probes - <char *>&tk,
        "proc.probes": <char *>&proc.probes - <char *>&proc,
        "window.rejections": <char *>&w.rejections - base,
        "window.slow": <char *>&w.slow - base,
        "limits.slow_us": <char *>&lim.slow_us - <char *>&lim,
        "limits.slow_rate": <char *>&lim.slow_rate - <char *>&lim,
        "tickets": sizeof(fh_tickets),
        "window": sizeof(fh_window),
        "window.requests": <char *>&w.requests - base,
        "window.stats": <char *>&w.stats[0][0][0] - base,
        "window.stamp": <char *>&w.stamp[0] - base,
        "window.retired": <char *>&w.retired[0] - base,
        "proc": sizeof(fh_proc),
        "proc.tickets": <char *>&proc.tickets - <char *>&proc,
    }


# -- run's exception, handed to the caller ---------------------------------------------------

cdef extern from "_capi.h":
    PyObject *fh_call0(object f)
    PyObject *fh_call(object f, object args, object kwargs)
    object fh_own(PyObject *o)
    object fh_fetch()
    int fh_reraise(PyObject *exc) except -1
    void fh_init(void *impl)
    object fh_new_error(object cls)
    object fh_make_do(object module_name)
    object fh_lookup(object table, object name)
    enum:
        FH_NOT_EXCEPTION
        FH_EXCEPTION
        FH_CONTEXT_CANCELED
        FH_CONTEXT_DEADLINE
    int fh_kind_of(object exc, object canceled, object deadline)


cdef extern from "Python.h":
    PyObject *PyObject_CallOneArg(object callable, object arg)
    int PyObject_IsTrue(PyObject *o)
    PyObject *Py_True
    PyObject *Py_False
    PyObject *Py_None


cdef object checked_result(object is_failure, object value):
    """``_outcomes.failed_result``'s rule for the call path: ``None`` (a success), a
    ``FailedResultError``, or what the predicate raised (any BaseException: returned, never
    raised). Through the C API: no exception handler to set up on the success path."""
    cdef PyObject *answer = PyObject_CallOneArg(is_failure, value)
    cdef int truth
    if answer is NULL:
        return fh_fetch()
    # The answer's reference is ours (fh_own): dropped when `verdict` goes.
    verdict = fh_own(answer)
    if answer == Py_False or answer == Py_None:
        return None
    if answer != Py_True:
        truth = PyObject_IsTrue(answer)
        if truth < 0:
            return fh_fetch()
        if truth == 0:
            return None
    return FailedResultError(value)


# C globals, not module attributes: read on the call path without a dictionary lookup.
cdef object _CANCELED_TYPE = _ContextCanceledError
cdef object _DEADLINE_TYPE = _ContextDeadlineExceededError
cdef object _COROUTINE_TYPE = _COROUTINE


cdef inline object raise_later(object exc, PyObject **raised):
    """Hand ``exc`` to the caller to raise (a new reference in ``*raised``); returns None.

    The core's functions never raise run's exception themselves: Cython would add a
    traceback entry of its own at each function it passes through. Their caller raises
    it, the C entry point without adding any (``_capi.h``), the others with one.
    """
    Py_INCREF(exc)
    raised[0] = <PyObject *>exc
    return None


cdef inline object raise_if(object value, PyObject *raised):
    # For callers other than the C entry point: raise what the core handed back, or return its value.
    if raised is not NULL:
        fh_reraise(raised)
    return value


cdef object do_impl(object name, object run, object fallback, PyObject **raised):
    if type(name) is not str or not callable(run) or (fallback is not None and not callable(fallback)):
        check_arguments(name, run, fallback)
    return (<CircuitBreaker?>circuit_of(name)).run_command(run, fallback, None, None, raised)


cdef object circuit_of(str name):
    """The circuit of ``name`` from the registry's table (created if new), as a strong reference.

    The caller keeps it for the whole command, so a ``flush()`` (from another thread, or from
    inside run, a fallback, a collector or a listener) that drops the table's reference cannot
    free the circuit under the call.
    """
    circuit = fh_lookup(_circuits, name)
    if circuit is None:
        return _get_or_create(name)
    return circuit


cdef inline int event_of(int kind) noexcept nogil:
    # The event of an exception run raised, by its kind (fh_kind_of in _capi.h).
    if kind == FH_CONTEXT_CANCELED:
        return CONTEXT_CANCELED
    if kind == FH_CONTEXT_DEADLINE:
        return CONTEXT_DEADLINE_EXCEEDED
    return FAILURE


# -- the sleep window's backoff (_backoff.py is the pure twin of these, operation for operation) --

cdef int64_t MAX_SLEEP_NS = 31536000000000000  # 365 days, _config.MAX_DURATION_MS


cdef inline uint64_t splitmix64(uint64_t x) noexcept nogil:
    x += <uint64_t>0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EB
    return x ^ (x >> 31)


cdef inline uint64_t backoff_seed(int64_t now, int64_t episode, int64_t reopens) noexcept nogil:
    return <uint64_t>now ^ (<uint64_t>episode << 20) ^ <uint64_t>reopens


cdef inline int64_t jittered(int64_t raw, int64_t jitter_ppm, uint64_t seed) noexcept nogil:
    cdef int64_t r, v
    if jitter_ppm == 0 or raw <= 0:
        return raw
    r = <int64_t>(splitmix64(seed) % <uint64_t>2000001) - 1000000
    v = raw + <int64_t>(<double>raw * (<double>jitter_ppm / 1e6) * (<double>r / 1e6))
    return v if v > 1 else 1


cdef inline int64_t next_raw(int64_t previous, int64_t base, int64_t extra_ppm, int64_t max_ns) noexcept nogil:
    cdef int64_t raw = previous if previous > 0 else base
    cdef int64_t cap = max_ns if max_ns > 0 else MAX_SLEEP_NS
    cdef double v = <double>raw * (<double>(1000000 + extra_ppm) / 1000000.0)
    if v >= <double>cap:
        return cap
    return <int64_t>v


cdef inline int open_verdict(int64_t word) noexcept nogil:
    # A state word other than 0 (of an enabled breaker): whether calls are short-circuited (1) or
    # not (0). As in Hystrix, forced open beats forced closed, and forced closed beats open.
    if word & STATE_FORCED:
        return 1
    if word & STATE_FORCED_CLOSED:
        return 0
    return 1


cdef inline str state_name(int64_t word):
    if word == 0 or open_verdict(word) == 0:
        return "closed"
    return "forced-open" if word & STATE_FORCED else "open"


cdef object new_error(int event):
    # A fresh error for an outcome fasthystrix decided itself (error_for's twin, without the call).
    if event == SHORT_CIRCUIT:
        return fh_new_error(CircuitOpenError)
    if event == REJECTED:
        return fh_new_error(MaxConcurrencyError)
    if event == TIMEOUT:
        return fh_new_error(CommandTimeoutError)
    return error_for(event)


fh_init(<void *>do_impl)
do = fh_make_do(__name__)


@cython.final  # direct calls between its methods, which the C compiler can inline
cdef class CircuitBreaker:
    """The circuit of one command name: state, tickets, rolling metrics and the fast path.

    Get one with :func:`fasthystrix.get_circuit`; circuits are created on first
    use and shared by every caller of that name.
    """

    def __cinit__(self):
        memset(&self._own_limits, 0, sizeof(self._own_limits))
        memset(&self._own_state, 0, sizeof(self._own_state))
        self.lim = &self._own_limits
        self.st = &self._own_state
        self._own_probes = 0
        self.probes = &self._own_probes
        self.proc = NULL
        self.slot = -1
        self._shared = None
        self._keep = None
        self.limiter = None
        self.limiter_lock = threading.Lock()

    def __init__(self, str name, settings, default_collector, collectors, clock):
        self.name = name
        self._default = default_collector
        self.metrics_c = <RollingMetrics?>default_collector._rolling
        self._lock = default_collector._lock
        self._collectors = tuple(collectors)
        self.has_collectors = len(self._collectors) > 0
        # The C clock (production's, or a ManualClock's value pushed into it); any other
        # callable is called from Python on every read.
        self.c_clock = clock is _monotonic_ns or isinstance(clock, _clock.ManualClock)
        self._clock = now_ns if self.c_clock else clock
        self.tickets = TicketPool()
        self.tickets.limit = &self.lim.max_concurrent
        self._workers = None
        self._settings = settings

    def __repr__(self):
        return f"<CircuitBreaker {self.name!r} {self.state()} tickets={self.tickets_in_use}>"

    # -- public API ----------------------------------------------------------------

    @property
    def _settings(self):
        if self._shared is not None and fh_load_acquire(&self.lim.version) != self.settings_version:
            self.refresh_settings()
        with cython.critical_section(self):
            return self._settings_obj

    @_settings.setter
    def _settings(self, settings):
        # Read every value before anything changes: a bad settings object changes nothing.
        cdef int64_t timeout_ns = settings.timeout_ns
        cdef int64_t sleep_window_ns = settings.sleep_window_ns
        cdef int64_t max_concurrent = settings.max_concurrent_requests
        cdef int64_t volume = settings.request_volume_threshold
        cdef int64_t threshold = settings.error_percent_threshold
        cdef int64_t semaphore = 1 if settings.semaphore else 0
        cdef int64_t disabled = 0 if settings.circuit_breaker_enabled else 1
        cdef int64_t rejections_not_errors = 0 if settings.rejections_count_as_errors else 1
        cdef int64_t sleep_extra_ppm = _backoff.ppm(settings.sleep_window_multiplier - 1.0)
        cdef int64_t max_sleep_ns = settings.max_sleep_window_ns
        cdef int64_t sleep_jitter_ppm = _backoff.ppm(settings.sleep_window_jitter)
        cdef int64_t half_open_calls = settings.half_open_max_calls
        cdef int64_t half_open_wait_ns = settings.half_open_max_wait_ns
        cdef int64_t slow_us = (settings.slow_call_duration_ns + 999) // 1000
        cdef int64_t slow_rate = settings.slow_call_rate_threshold
        cdef int64_t queue_wait_ns = settings.max_queue_wait_ns
        cdef int64_t window_bucket_ns = settings.rolling_bucket_ns
        cdef int64_t window_buckets = settings.rolling_buckets
        cdef int64_t version
        # First: it refuses a window the window cannot keep, before anything changes (a shared
        # window changes for every process, its counts emptied once, before the settings say so).
        self.metrics_c.configure_window(settings.rolling_bucket_ns, settings.rolling_buckets)
        adaptive_limit = settings.adaptive_limit
        limiter = None if adaptive_limit is None else adaptive_limit.limiter()
        # Under limiter_lock: a sample of the old limiter cannot store its limit after this.
        self.limiter_lock.acquire()
        fh_spin_lock(&self.st.lock)
        fh_store_relaxed(&self.lim.timeout_ns, timeout_ns)
        fh_store_relaxed(&self.lim.sleep_window_ns, sleep_window_ns)
        fh_store_relaxed(&self.lim.max_concurrent, max_concurrent)
        fh_store_relaxed(&self.lim.volume_threshold, volume)
        fh_store_relaxed(&self.lim.error_threshold, threshold)
        fh_store_relaxed(&self.lim.semaphore, semaphore)
        fh_store_relaxed(&self.lim.breaker_disabled, disabled)
        fh_store_relaxed(&self.lim.rejections_not_errors, rejections_not_errors)
        fh_store_relaxed(&self.lim.sleep_extra_ppm, sleep_extra_ppm)
        fh_store_relaxed(&self.lim.max_sleep_ns, max_sleep_ns)
        fh_store_relaxed(&self.lim.sleep_jitter_ppm, sleep_jitter_ppm)
        fh_store_relaxed(&self.lim.half_open_calls, half_open_calls)
        fh_store_relaxed(&self.lim.half_open_wait_ns, half_open_wait_ns)
        fh_store_relaxed(&self.lim.slow_us, slow_us)
        fh_store_relaxed(&self.lim.slow_rate, slow_rate)
        fh_store_relaxed(&self.lim.window_bucket_ns, window_bucket_ns)
        fh_store_relaxed(&self.lim.window_buckets, window_buckets)
        # Release: a process that sees the new version sees the values (shared circuits: the
        # last writer's settings are every worker's).
        version = self.lim.version + 1
        fh_store_release(&self.lim.version, version)
        fh_spin_unlock(&self.st.lock)
        self.limiter = limiter
        self.limiter_lock.release()
        ignores = settings.ignores
        is_failure = settings.is_failure
        with cython.critical_section(self):
            self._settings_obj = settings
            self.ignores = ignores
            self.is_failure = is_failure
            self.adaptive = limiter is not None
            self.slow_report = self.has_collectors or self.adaptive
            self.slow_success = self.slow_report or is_failure is not None
            self.settings_version = version
        fh_store_relaxed(&self.queue_wait_ns, queue_wait_ns)

    cdef refresh_settings(self):
        # Another process wrote this shared circuit's settings: rebuild the Settings object.
        cdef int64_t words[18]
        fh_spin_lock(&self.st.lock)
        words[0] = self.lim.timeout_ns
        words[1] = self.lim.sleep_window_ns
        words[2] = self.lim.max_concurrent
        words[3] = self.lim.volume_threshold
        words[4] = self.lim.error_threshold
        words[5] = self.lim.semaphore
        words[6] = self.lim.version
        words[7] = self.lim.breaker_disabled
        words[8] = self.lim.rejections_not_errors
        words[9] = self.lim.sleep_extra_ppm
        words[10] = self.lim.max_sleep_ns
        words[11] = self.lim.sleep_jitter_ppm
        words[12] = self.lim.half_open_calls
        words[13] = self.lim.half_open_wait_ns
        words[14] = self.lim.slow_us
        words[15] = self.lim.slow_rate
        words[16] = self.lim.window_bucket_ns
        words[17] = self.lim.window_buckets
        fh_spin_unlock(&self.st.lock)
        with cython.critical_section(self):
            local = self._settings_obj
        settings = _shared.settings_from_words(tuple([words[i] for i in range(18)]), local)
        ignores = settings.ignores
        is_failure = settings.is_failure
        with cython.critical_section(self):
            self._settings_obj = settings
            self.ignores = ignores
            self.is_failure = is_failure
            self.slow_success = self.slow_report or is_failure is not None
            self.settings_version = words[6]
        fh_store_relaxed(&self.queue_wait_ns, settings.max_queue_wait_ns)

    cdef object ignores_now(self):
        with cython.critical_section(self):
            return self.ignores

    cdef object is_failure_now(self):
        with cython.critical_section(self):
            return self.is_failure

    # -- shared circuits (see _shared.py) --------------------------------------------------

    def _attach(self, shared, configured):
        """Keep this new, unused circuit in ``shared``'s file from now on; ``configured`` (Settings or
        None) is written there, else the file's settings are adopted."""
        cdef unsigned char[::1] view = shared.map
        cdef Py_ssize_t slot = shared.slot
        if self._shared is not None:
            raise RuntimeError(f"circuit {self.name!r} is already shared")
        if not 0 <= slot < _shared.MAX_PROCESSES or view.shape[0] != _shared.SIZE:
            raise ValueError(f"not a mapped circuit file with a process slot: {shared!r}")
        self.metrics_c._attach(shared.map, _shared.WINDOW, _shared.HIST, _shared.GEOM)
        self._keep = view
        self.lim = <fh_limits *>&view[_shared.LIMITS]
        self.st = <fh_state *>&view[_shared.STATE]
        self.probes = &(<fh_tickets *>&view[_shared.TICKETS]).probes
        self.proc = &(<fh_proc *>&view[_shared.PROCS])[slot]
        self.tickets.attach(<int64_t *>&view[_shared.TICKETS], &(<fh_proc *>&view[_shared.PROCS])[slot].tickets, view)
        self.tickets.limit = &self.lim.max_concurrent
        self.slot = slot
        self._shared = shared
        if configured is not None:
            self._settings = configured
        else:
            self.refresh_settings()
        _shared.register(self)

    def _attach_slot(self):
        """In a forked child: count this process' tickets in its own slot (``_shared.slot``)."""
        cdef unsigned char[::1] view = self._keep
        cdef Py_ssize_t slot = self._shared.slot
        if not 0 <= slot < _shared.MAX_PROCESSES:
            raise ValueError(f"bad process slot {slot}")
        self.tickets.mine = &(<fh_proc *>&view[_shared.PROCS])[slot].tickets
        self.proc = &(<fh_proc *>&view[_shared.PROCS])[slot]
        self.slot = slot

    def _reclaim_slot(self, Py_ssize_t slot):
        """The process of ``slot`` died: give its tickets back, and free the trial it took."""
        cdef unsigned char[::1] view = self._keep
        cdef fh_proc *proc
        cdef int64_t held, lost, now = self.now()
        cdef int verdict = 0, ended
        if not 0 <= slot < _shared.MAX_PROCESSES:
            raise ValueError(f"bad process slot {slot}")
        proc = &(<fh_proc *>&view[_shared.PROCS])[slot]
        fh_spin_lock(&self.st.lock)
        held = fh_exchange_acq_rel(&proc.tickets, 0)
        fh_add_acq_rel(self.tickets.count, -held)
        if (self.st.state_word & STATE_OPEN) and self.st.trial_slot == slot + 1:
            # Its trial will never report: the next call may be the trial, now.
            fh_store_relaxed(&self.st.trial_slot, 0)
            fh_store_release(&self.st.opened_ns, now - fh_load_relaxed(&self.lim.sleep_window_ns) - 1)
        # Its trials of the half-open phase will never report: each counts as failed.
        lost = fh_exchange_acq_rel(&proc.probes, 0)
        while lost > 0:
            ended = self.probe_ended_c(proc.probe_phase, True, now)
            if ended != 0:
                verdict = ended
            lost -= 1
        fh_spin_unlock(&self.st.lock)
        if verdict == 1:
            _transitions.closed(self.name)
        elif verdict == 2:
            _transitions.reopened(self.name)
        return held

    def _reset_state(self):
        """Close the circuit, clear ``force_open`` and empty the window (host-wide when shared);
        tickets in use stay (their calls are running)."""
        cdef int64_t before
        fh_spin_lock(&self.st.lock)
        before = self.st.state_word
        self.metrics_c._reset()
        fh_store_relaxed(&self.st.opened_ns, 0)
        fh_store_relaxed(&self.st.trial_slot, 0)
        fh_store_relaxed(&self.st.reopens, 0)
        fh_store_relaxed(&self.st.sleep_raw_ns, 0)
        fh_store_relaxed(&self.st.sleep_ns, 0)
        fh_store_relaxed(self.probes, 0)
        fh_store_release(&self.st.state_word, 0)
        fh_spin_unlock(&self.st.lock)
        return state_name(before)

    @property
    def settings(self):
        """The settings new calls of this command use."""
        return self._settings

    @property
    def force_open(self):
        """When true every call is short-circuited (no trial request), until set back to false."""
        return (fh_load_acquire(&self.st.state_word) & STATE_FORCED) != 0

    @force_open.setter
    def force_open(self, value):
        self.set_state_bit("force_open", STATE_FORCED, value)

    @property
    def force_closed(self):
        """When true the circuit never opens (its health is still computed and reported);
        ``force_open`` wins over it, as in Hystrix."""
        return (fh_load_acquire(&self.st.state_word) & STATE_FORCED_CLOSED) != 0

    @force_closed.setter
    def force_closed(self, value):
        self.set_state_bit("force_closed", STATE_FORCED_CLOSED, value)

    cdef set_state_bit(self, str field, int64_t bit, object value):
        if not isinstance(value, bool):
            raise TypeError(f"{field} must be a bool, not {value!r}")
        cdef int64_t before, after
        fh_spin_lock(&self.st.lock)
        before = self.st.state_word
        after = (before | bit) if value else (before & ~bit)
        fh_store_release(&self.st.state_word, after)
        fh_spin_unlock(&self.st.lock)
        _transitions.forced(self.name, state_name(before), state_name(after))

    def is_open(self):
        """Whether calls are short-circuited now; like hystrix-go, may trip an unhealthy circuit."""
        cdef int opened = self.is_open_c(self.now())
        if opened < 0:
            _transitions.opened(self.name)
        return opened != 0

    def allow_request(self):
        """hystrix-go's ``AllowRequest``: closed, or open with this call taking the trial slot."""
        cdef int64_t now = self.now()
        cdef int opened = self.is_open_c(now)
        # With several trials only commands are trials (one taken here would never report).
        cdef bint trial = opened == 1 and not self.several_probes() and self.allow_single_test_c(now)
        if opened < 0:
            _transitions.opened(self.name)
        if trial:
            _transitions.trial(self.name)
        return opened == 0 or trial

    @property
    def sleep_window_now(self):
        """The wait before the next trial of this open episode (a ``timedelta``): the sleep window,
        or its backoff after failed trials."""
        cdef int64_t wait = fh_load_relaxed(&self.st.sleep_ns)
        if wait == 0:
            wait = fh_load_relaxed(&self.lim.sleep_window_ns)
        return _timedelta(microseconds=wait // 1000)

    def _shed_until(self):
        """The clock time until which this open circuit lets no trial through: when it opened (or
        let its last trial through) plus the sleep window or its backoff. ``0`` when a call may be
        admitted now or the wait is not the circuit's: closed, forced open or closed, disabled, or
        in a half-open phase of several trials. Read without the lock (the middlewares' door:
        advisory, the command decides); host-wide circuits read the file, so a circuit another
        process opened is seen too."""
        cdef int64_t wait
        if fh_load_relaxed(&self.lim.breaker_disabled) or fh_load_acquire(&self.st.state_word) != STATE_OPEN:
            return 0
        if self.several_probes() and fh_load_acquire(self.probes) != 0:
            return 0
        wait = fh_load_relaxed(&self.st.sleep_ns)
        if wait == 0:
            wait = fh_load_relaxed(&self.lim.sleep_window_ns)
        return fh_load_acquire(&self.st.opened_ns) + wait

    @property
    def concurrency_limit(self):
        """The ticket limit admission applies now: ``max_concurrent_requests``, or an adaptive
        limit's current value."""
        return fh_load_relaxed(&self.lim.max_concurrent)

    @property
    def tickets_in_use(self):
        """Concurrency tickets currently taken (commands whose run has not ended)."""
        return self.tickets.in_use

    def state(self):
        """``"closed"``, ``"open"`` or ``"forced-open"``, read without side effects (``"closed"``
        when forced closed, or when the breaker is disabled)."""
        if fh_load_relaxed(&self.lim.breaker_disabled):
            return "closed"
        return state_name(fh_load_acquire(&self.st.state_word))

    def metrics(self):
        """A snapshot of the rolling window: counts, error percent, tickets, latencies."""
        snapshot = self._default.snapshot(self.tickets.in_use, self.now())
        waiting = fh_load_relaxed(&self.tickets.waiting)
        return _dataclasses.replace(snapshot, queue_size=waiting) if waiting else snapshot

    # -- state machine ----------------------------------------------------------------

    cdef int64_t now(self) except? -1:
        if self.c_clock:
            return clock_ns()
        return self._clock()

    cdef int is_open_c(self, int64_t now) noexcept nogil:
        """1 if open, 0 if closed, -1 if this check just tripped it."""
        cdef bint tripped = False
        cdef int64_t word = fh_load_acquire(&self.st.state_word)
        if word != 0:
            # circuit_breaker_enabled=False: never open (read only off the healthy, closed path).
            if fh_load_relaxed(&self.lim.breaker_disabled):
                return 0
            return open_verdict(word)
        if not self.unhealthy(now) or fh_load_relaxed(&self.lim.breaker_disabled):
            return 0
        fh_spin_lock(&self.st.lock)
        # Again under the lock: a trial that closed the circuit meanwhile reset the window
        # under this lock, and totals read before that reset must not trip it again.
        if self.st.state_word == 0 and self.unhealthy(now):
            fh_store_relaxed(&self.st.opened_ns, now)
            fh_store_relaxed(&self.st.trial_slot, 0)  # a new episode: no trial yet
            fh_store_relaxed(&self.st.episode, self.st.episode + 1)
            fh_store_relaxed(&self.st.reopens, 0)
            fh_store_relaxed(self.probes, 0)
            self.first_wait_c(now, self.st.episode)
            fh_store_release(&self.st.state_word, STATE_OPEN)
            tripped = True
        fh_spin_unlock(&self.st.lock)
        return -1 if tripped else 1

    cdef bint unhealthy(self, int64_t now) noexcept nogil:
        cdef int64_t requests, errors, rejections, slow
        self.metrics_c.health_c(now, &requests, &errors)
        if fh_load_relaxed(&self.lim.rejections_not_errors):
            # Rejections are counted, but neither requests nor errors of the breaker's.
            rejections = fh_load_relaxed(&self.metrics_c.w.rejections)
            requests = requests - rejections if requests > rejections else 0
            errors = errors - rejections if errors > rejections else 0
        if requests == 0 or requests < fh_load_relaxed(&self.lim.volume_threshold):
            return False
        # errors / requests * 100 rounded half up >= threshold, in integers.
        if (errors * 200 + requests) // (2 * requests) >= fh_load_relaxed(&self.lim.error_threshold):
            return True
        if not fh_load_relaxed(&self.lim.slow_us):
            return False
        # Slow calls (slow_call_duration set): the same rule against slow_call_rate_threshold.
        slow = fh_load_relaxed(&self.metrics_c.w.slow)
        return slow > 0 and (slow * 200 + requests) // (2 * requests) >= fh_load_relaxed(&self.lim.slow_rate)

    cdef bint allow_single_test_c(self, int64_t now) noexcept nogil:
        # A forced-open circuit lets no trial through, even if it also tripped (hystrix-go did).
        cdef int64_t opened, wait
        if fh_load_acquire(&self.st.state_word) != STATE_OPEN:
            return False
        opened = fh_load_acquire(&self.st.opened_ns)
        wait = fh_load_relaxed(&self.st.sleep_ns)  # this episode's backoff, or 0: the sleep window
        if wait == 0:
            wait = fh_load_relaxed(&self.lim.sleep_window_ns)
        if now <= opened + wait:
            return False
        # One winner per sleep window: compare-and-swap the last test time, as hystrix-go.
        if not fh_cas_acq_rel(&self.st.opened_ns, &opened, now):
            return False
        # Which process took it (shared circuits): if it dies, the reaper frees the trial.
        fh_store_relaxed(&self.st.trial_slot, self.slot + 1)
        return True

    cdef void first_wait_c(self, int64_t now, int64_t episode) noexcept nogil:
        # The wait of a new open episode (lock held): 0 (the sleep window as set now) unless a
        # backoff is configured; see _backoff.py, whose arithmetic this is.
        cdef int64_t extra = fh_load_relaxed(&self.lim.sleep_extra_ppm)
        cdef int64_t jitter = fh_load_relaxed(&self.lim.sleep_jitter_ppm)
        cdef int64_t raw = 0
        if extra != 0 or jitter != 0:
            raw = fh_load_relaxed(&self.lim.sleep_window_ns)
        fh_store_relaxed(&self.st.sleep_raw_ns, raw)
        fh_store_relaxed(&self.st.sleep_ns, jittered(raw, jitter, backoff_seed(now, episode, 0)))

    cdef void reopen_c(self, int64_t now) noexcept nogil:
        # The current episode's trial failed (lock held): one more reopen, and its longer wait.
        cdef int64_t extra = fh_load_relaxed(&self.lim.sleep_extra_ppm)
        cdef int64_t jitter = fh_load_relaxed(&self.lim.sleep_jitter_ppm)
        cdef int64_t reopens = self.st.reopens + 1
        cdef int64_t raw = 0
        fh_store_relaxed(&self.st.reopens, reopens)
        fh_store_relaxed(self.probes, 0)  # a new half-open phase after this wait
        if extra != 0 or jitter != 0:
            raw = next_raw(self.st.sleep_raw_ns, fh_load_relaxed(&self.lim.sleep_window_ns), extra,
                           fh_load_relaxed(&self.lim.max_sleep_ns))
        fh_store_relaxed(&self.st.sleep_raw_ns, raw)
        fh_store_relaxed(&self.st.sleep_ns, jittered(raw, jitter, backoff_seed(now, self.st.episode, reopens)))

    cdef bint several_probes(self) noexcept nogil:
        # half_open_max_calls > 1 or a half_open_max_wait: the half-open phase of probe_c.
        return fh_load_relaxed(&self.lim.half_open_calls) > 1 or fh_load_relaxed(&self.lim.half_open_wait_ns) > 0

    cdef int64_t probe_c(self, int64_t now, int64_t *in_use) noexcept nogil:
        """An open circuit with several trials: admit one (a verdict with FH_PROBE, its ticket taken
        and the count in ``in_use``), or SHORT_CIRCUITED, or EXPIRED (this call found the trials
        past half_open_max_wait and opened the circuit again). _circuit_py._probe_locked's twin."""
        cdef int64_t word, admitted, opened, wait, n
        cdef int64_t verdict = SHORT_CIRCUITED
        cdef int64_t max_wait = fh_load_relaxed(&self.lim.half_open_wait_ns)
        cdef int64_t calls = fh_load_relaxed(&self.lim.half_open_calls)
        cdef bint admit = False
        if fh_load_acquire(&self.st.state_word) != STATE_OPEN:
            return SHORT_CIRCUITED  # forced open: no trial
        # Without the lock first: the answers of an open circuit's every call (still sleeping, or
        # every trial out). The lock decides everything else, and these again.
        word = fh_load_acquire(self.probes)
        opened = fh_load_acquire(&self.st.opened_ns)
        if word == 0:
            wait = fh_load_relaxed(&self.st.sleep_ns)
            if wait == 0:
                wait = fh_load_relaxed(&self.lim.sleep_window_ns)
            if now <= opened + wait:
                return SHORT_CIRCUITED
        elif (word & FH_PROBE_MASK) >= calls and (max_wait == 0 or now <= opened + max_wait):
            return SHORT_CIRCUITED
        fh_spin_lock(&self.st.lock)
        if self.st.state_word == STATE_OPEN:
            word = self.probes[0]
            admitted = word & FH_PROBE_MASK
            opened = self.st.opened_ns
            if admitted == 0:
                wait = self.st.sleep_ns
                if wait == 0:
                    wait = fh_load_relaxed(&self.lim.sleep_window_ns)
                admit = now > opened + wait
            elif max_wait > 0 and now > opened + max_wait:
                self.reopen_probes_c(now)
                verdict = EXPIRED
            else:
                admit = admitted < calls
            if admit:
                n = self.tickets.take(fh_load_relaxed(&self.lim.max_concurrent))
                if n >= 0:  # a trial only when it can run
                    in_use[0] = n
                    if admitted == 0:
                        # The half-open phase starts: half_open_max_wait counts from here.
                        fh_store_release(&self.st.opened_ns, now)
                    fh_store_release(self.probes, word + 1)
                    verdict = FH_PROBE | (self.st.episode << FH_PHASE_SHIFT) | (
                        self.st.reopens & ((<int64_t>1 << FH_PHASE_SHIFT) - 1))
                    if self.proc is not NULL:
                        # If this process dies before its trials report, the reaper counts them failed.
                        if self.proc.probe_phase != verdict:
                            fh_store_relaxed(&self.proc.probe_phase, verdict)
                            fh_store_relaxed(&self.proc.probes, 0)
                        fh_add_acq_rel(&self.proc.probes, 1)
                    if admitted == 0:
                        verdict |= FH_FIRST_PROBE
        fh_spin_unlock(&self.st.lock)
        return verdict

    cdef void reopen_probes_c(self, int64_t now) noexcept nogil:
        # The half-open phase failed or ran past its bound (lock held): open again, for a (backed
        # off) sleep window from now.
        fh_store_release(&self.st.opened_ns, now)
        self.reopen_c(now)

    cdef int probe_ended_c(self, int64_t phase, bint failed, int64_t now) noexcept nogil:
        """A trial of ``phase`` ended (lock held): 1 if this closed the circuit, 2 if it opened it
        again (the phase's one verdict), else 0. _circuit_py._probe_ended_locked's twin."""
        cdef int64_t word = self.probes[0]
        cdef int64_t admitted = word & FH_PROBE_MASK
        cdef int64_t done = (word >> FH_PROBE_BITS) & FH_PROBE_MASK
        cdef int64_t failures = (word >> (2 * FH_PROBE_BITS)) & FH_PROBE_MASK
        cdef int64_t max_wait = fh_load_relaxed(&self.lim.half_open_wait_ns)
        cdef int64_t current = FH_PROBE | (self.st.episode << FH_PHASE_SHIFT) | (
            self.st.reopens & ((<int64_t>1 << FH_PHASE_SHIFT) - 1))
        if not (self.st.state_word & STATE_OPEN) or admitted == 0 or phase != current:
            return 0  # a trial of a phase that has had its verdict
        if max_wait > 0 and now > self.st.opened_ns + max_wait:
            self.reopen_probes_c(now)
            return 2
        done += 1
        if failed:
            failures += 1
        if done < admitted or admitted < fh_load_relaxed(&self.lim.half_open_calls):
            fh_store_relaxed(self.probes, admitted | (done << FH_PROBE_BITS) | (failures << (2 * FH_PROBE_BITS)))
            return 0
        # errors / trials * 100 rounded half up < threshold, in integers (as the window's health).
        if (failures * 200 + done) // (2 * done) < fh_load_relaxed(&self.lim.error_threshold):
            # As a single trial's close: the window reset before the state word says closed.
            self.metrics_c._reset()
            fh_store_relaxed(&self.st.reopens, 0)
            fh_store_relaxed(&self.st.sleep_raw_ns, 0)
            fh_store_relaxed(&self.st.sleep_ns, 0)
            fh_store_relaxed(self.probes, 0)
            fh_store_release(&self.st.state_word, self.st.state_word & ~STATE_OPEN)
            return 1
        self.reopen_probes_c(now)
        return 2

    cdef int64_t admit(self, int64_t now) noexcept nogil:
        cdef int opened = self.is_open_c(now)
        cdef int64_t verdict = ADMITTED
        cdef int64_t in_use
        cdef int64_t limit = fh_load_relaxed(&self.lim.max_concurrent)
        if opened != 0:
            if opened < 0:
                return TRIPPED
            if self.several_probes():
                verdict = self.probe_c(now, &in_use)
                if verdict > 0:
                    self.metrics_c.record_executed_c(now, in_use)
                return verdict
            # Only take the trial slot if the trial can run (a ticket is free).
            if fh_load_relaxed(self.tickets.count) >= limit or not self.allow_single_test_c(now):
                return SHORT_CIRCUITED
            verdict = fh_load_acquire(&self.st.episode)
        elif fh_load_relaxed(&self.tickets.waiting) != 0:
            return REJECTED_VERDICT  # calls wait for a ticket: this one queues behind them
        in_use = self.tickets.take(limit)
        if in_use < 0:
            return REJECTED_VERDICT if verdict == ADMITTED else SHORT_CIRCUITED
        self.metrics_c.record_executed_c(now, in_use)
        return verdict

    # -- building blocks shared with thread isolation -----------------------------------

    cdef int64_t acquire_c(self, int64_t now) except? -9:
        cdef int64_t verdict = self.admit(now)
        if verdict == TRIPPED:
            _transitions.opened(self.name)
        elif verdict > 0:
            self.trial_started(now, verdict)
        elif verdict == EXPIRED:
            _transitions.reopened(self.name)
        return verdict

    cdef int trial_started(self, int64_t start, int64_t verdict) except -1:
        """Tell that an admitted trial (``verdict > 0``) starts: the log line and the listeners
        (once a half-open phase). Should that raise (an interrupt in a listener or a log handler,
        out of memory), the trial ends at once as failed, its ticket back: the caller never gets
        to run it, and nothing else would end it."""
        if verdict < FH_PROBE or verdict & FH_FIRST_PROBE:
            try:
                _transitions.trial(self.name)
            except BaseException:
                self.report_end(FAILURE, NO_EVENT, start, -1, verdict, True)
                raise
        return 0

    cdef int64_t wait_for_ticket(self, int64_t start, object ctx) except? -99:
        """A call admitted by the breaker found no ticket: wait up to ``max_queue_wait`` for one
        (a verdict: ``ADMITTED`` with the ticket taken and counted, or why not; see _queue)."""
        cdef int64_t verdict, in_use
        cdef int64_t end
        queue, ops = self._queue_ops()
        try:
            verdict, in_use = _queue.wait(queue, ops, start, self.now(), fh_load_relaxed(&self.queue_wait_ns),
                                          fh_load_relaxed(&self.lim.timeout_ns), ctx, self._clock)
        except BaseException:
            # Interrupted while it waited (KeyboardInterrupt): a failure, as an interrupted run;
            # it left the queue and holds no ticket.
            end = self.now()
            self.report_c(FAILURE, NO_EVENT, end, -1, (end - start) // 1000, 0, False)
            raise
        if verdict == ADMITTED:
            self.metrics_c.record_executed_c(self.now(), in_use)
        return verdict

    def _queue_ops(self):
        """The queue of calls waiting for a ticket, and what it needs of this circuit (see _queue)."""
        cdef TicketPool tickets = self.tickets
        ops = _queue._Ops(tickets.queue.lock, fh_load_relaxed(&self.lim.max_concurrent), tickets._take_for_waiter,
                          tickets._untake, tickets.give_back, tickets._publish)
        return tickets.queue, ops

    def _queue_admitted(self, int64_t in_use):
        """A call that waited got its ticket (``in_use`` tickets then): counted as executed."""
        self.metrics_c.record_executed_c(self.now(), in_use)

    @property
    def queue_size(self):
        """Calls of this process waiting for a ticket now (``max_queue_wait``)."""
        return fh_load_relaxed(&self.tickets.waiting)

    def _acquire(self, int64_t now, settings=None):
        """Check the circuit and take a ticket; a verdict (>= 0: admitted, > 0: trial)."""
        return self.acquire_c(now)

    def _release(self):
        """Give a ticket back."""
        self.tickets.give()

    cdef int report_c(self, int event, int fallback_event, int64_t now, int64_t run_us, int64_t total_us,
                      int64_t trial, bint release) except -1:
        cdef bint closed = False, reopened = False
        cdef int64_t slot_word
        cdef int64_t inflight = 0
        cdef int ended
        if self.adaptive:
            # The calls in flight as this one ends, itself included (its ticket may be back already).
            inflight = fh_load_relaxed(self.tickets.count) + (0 if release else 1)
        if release:
            self.tickets.give()
        # Only the trial of the current open episode closes the circuit (hystrix-go let any
        # success close it, even one that started before the circuit opened).
        if trial >= FH_PROBE:
            trial &= ~FH_FIRST_PROBE
            fh_spin_lock(&self.st.lock)
            if self.proc is not NULL and self.proc.probe_phase == trial and self.proc.probes > 0:
                fh_add_acq_rel(&self.proc.probes, -1)  # reported: no longer the reaper's to count
            ended = self.probe_ended_c(trial, event != SUCCESS, now)
            fh_spin_unlock(&self.st.lock)
            closed = ended == 1
            reopened = ended == 2
            trial = 0
        elif trial > 0 and event == SUCCESS:
            fh_spin_lock(&self.st.lock)
            if (self.st.state_word & STATE_OPEN) and trial == self.st.episode:
                # The window is reset before the state word says closed, both under the lock:
                # a caller that sees the circuit closed sees the empty window (acquire/release).
                self.metrics_c._reset()
                fh_store_relaxed(&self.st.reopens, 0)
                fh_store_relaxed(&self.st.sleep_raw_ns, 0)
                fh_store_relaxed(&self.st.sleep_ns, 0)
                fh_store_relaxed(self.probes, 0)
                fh_store_release(&self.st.state_word, self.st.state_word & ~STATE_OPEN)
                closed = True
            fh_spin_unlock(&self.st.lock)
        elif trial > 0 and (fh_load_acquire(&self.st.state_word) & STATE_OPEN) and trial == fh_load_acquire(&self.st.episode):
            fh_spin_lock(&self.st.lock)
            if (self.st.state_word & STATE_OPEN) and trial == self.st.episode:
                reopened = True
                self.reopen_c(now)
            fh_spin_unlock(&self.st.lock)
        if trial > 0 and self.slot >= 0:
            # The trial reported: nothing for the reaper to free (compare-and-swap: only our own).
            slot_word = self.slot + 1
            fh_cas_acq_rel(&self.st.trial_slot, &slot_word, 0)
        self.metrics_c.record_c(event, fallback_event, now, run_us, total_us, fh_load_relaxed(&self.lim.slow_us))
        if self.adaptive:
            self.feed_limiter(event, run_us, total_us, inflight)
        if closed:
            _transitions.closed(self.name)
        elif reopened:
            _transitions.reopened(self.name)
        if closed or self.has_collectors:
            notify_collectors(self.name, self._collectors, closed, event, fallback_event, run_us, total_us,
                              self.tickets.in_use, fh_load_relaxed(&self.lim.max_concurrent))
        return 0

    cdef int feed_limiter(self, int event, int64_t run_us, int64_t total_us, int64_t inflight) except -1:
        """One sample for the adaptive limiter (calls that ran: not rejected nor short-circuited, nor
        ended by their context); its new limit goes to the word admission reads."""
        cdef int64_t rtt_us = run_us if run_us >= 0 else total_us
        cdef int64_t limit
        if rtt_us < 0 or not (event == SUCCESS or event == FAILURE or event == TIMEOUT or event == BAD_REQUEST):
            return 0
        with self.limiter_lock:
            limiter = self.limiter
            if limiter is not None:  # reconfigured to a fixed limit meanwhile
                limit = limiter.on_sample(rtt_us * 1000, inflight, event == TIMEOUT)
                fh_store_relaxed(&self.lim.max_concurrent, limit)
        return 0

    def _report(self, int event, int fallback_event, int64_t now, int64_t run_us, int64_t total_us,
                int64_t trial, bint release):
        """Record one finished command (releasing its ticket if ``release``), then tell the collectors."""
        self.report_c(event, fallback_event, now, run_us, total_us, trial, release)

    cdef int report_end(self, int event, int fallback_event, int64_t start, int64_t run_us, int64_t trial,
                        bint release) except -1:
        """``report_c`` for a command ending now that started at ``start``."""
        cdef int64_t now
        if start == NOT_STARTED:
            return self.report_c(event, fallback_event, self.now(), run_us, -1, trial, release)
        if event == SHORT_CIRCUIT or event == REJECTED:
            # Never ran: counted at the second it was turned away, with no latency sample
            # (hystrix-go recorded zeros), and without reading the clock again.
            return self.report_c(event, fallback_event, start, run_us, -1, trial, release)
        now = self.now()
        return self.report_c(event, fallback_event, now, run_us, (now - start) // 1000, trial, release)

    cdef object finish_c(self, int event, object err, int64_t start, int64_t run_us, int64_t trial,
                         object fallback, object ctx, bint release, PyObject **raised):
        """Complete a command that did not succeed: fallback, report, then return or hand ``err`` back.

        The ticket (if ``release``) goes back before the fallback runs, as in hystrix-go:
        the fallback is not the dependency and must not hold its slot.
        """
        if fallback is None or event == BAD_REQUEST:
            self.report_end(event, NO_EVENT, start, run_us, trial, release)
            return raise_later(err, raised)
        if release:
            self.tickets.give()
        try:
            value = fallback(err) if ctx is None else fallback(ctx, err)
        except Exception as fallback_err:
            self.report_end(event, FALLBACK_FAILURE, start, run_us, trial, False)
            raise FallbackError(fallback_err, err) from fallback_err
        except BaseException:
            self.report_end(event, FALLBACK_FAILURE, start, run_us, trial, False)
            raise
        self.report_end(event, FALLBACK_SUCCESS, start, run_us, trial, False)
        return value

    def _finish(self, int event, err, int64_t start, int64_t run_us, int64_t trial, fallback, ctx, bint release):
        """Complete a command that did not succeed: fallback, report, then return or raise."""
        cdef PyObject *raised = NULL
        return raise_if(self.finish_c(event, err, start, run_us, trial, fallback, ctx, release, &raised), raised)

    cdef object turned_away(self, int64_t verdict, int64_t start, object fallback, object ctx,
                            PyObject **raised):
        """Complete a command the circuit did not admit (``verdict < 0``): nothing ran, no ticket taken."""
        cdef int event = REJECTED if verdict == REJECTED_VERDICT else SHORT_CIRCUIT
        if verdict <= QUEUE_TIMEOUT:
            event = turned_away_event(verdict)
        if verdict == TRIPPED:
            _transitions.opened(self.name)
        elif verdict == EXPIRED:
            _transitions.reopened(self.name)
        return self.finish_c(event, new_error(event), start, -1, 0, fallback, ctx, False, raised)

    cdef int returned_coroutine(self, object coroutine, int64_t end, int64_t run_us, int64_t trial) except -1:
        """A sync run returned a coroutine: close it, count a failure (no fallback), raise ``TypeError``."""
        err = coroutine_returned(coroutine)
        self.report_c(FAILURE, NO_EVENT, end, run_us, run_us, trial, True)
        raise err

    # -- one command ----------------------------------------------------------------------

    def execute(self, run, fallback):
        """Run one command (``do()``): on this thread in semaphore mode, else on a worker."""
        cdef PyObject *raised = NULL
        return raise_if(self.run_command(run, fallback, None, None, &raised), raised)

    def execute_args(self, function, tuple args, kwargs, fallback):
        """Run ``function(*args, **kwargs)`` as one command; ``fallback(*args, err=err, **kwargs)``."""
        cdef PyObject *raised = NULL
        return raise_if(self.run_command(function, fallback, args, kwargs, &raised), raised)

    # The outcome rules' slow branches, out of run_command: their locals would cost every call
    # (Cython initialises and releases a function's object locals on each call).

    cdef object checked_success(self, object value, int64_t end, int64_t elapsed, int64_t verdict):
        """A run that returned in time, on a circuit with ``is_failure``, collectors or a trial:
        ``None`` when it is a success (counted, ticket back), else the error ``is_failure``'s check
        gave (a ``FailedResultError`` or what the predicate raised; a ``BaseException`` that is not
        an ``Exception`` is counted as a failure here, with the ticket back)."""
        is_failure = self.is_failure_now()
        exc = None if is_failure is None else checked_result(is_failure, value)
        if exc is None:
            if verdict == ADMITTED and not self.slow_report:
                self.tickets.give()
                self.metrics_c.record_one_c(SUCCESS, end, elapsed // 1000, fh_load_relaxed(&self.lim.slow_us))
            else:
                self.report_c(SUCCESS, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
        elif not isinstance(exc, Exception):
            self.report_c(FAILURE, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
        return exc

    cdef bint ignored_failure(self, object exc, int64_t end, int64_t elapsed, int64_t verdict) except -1:
        """Whether ``ignore`` takes run's error ``exc``: then it is counted as a bad request (neither
        success nor failure, not a request of the window's), ticket back, and raised without the
        fallback. What the predicate raises is counted as a failure and propagated."""
        ignores = self.ignores_now()
        if ignores is None:
            return False
        try:
            ignored = ignores(exc)
        except BaseException:  # KeyboardInterrupt in the predicate: a failure, propagated
            self.report_c(FAILURE, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
            raise
        if ignored:
            self.report_c(BAD_REQUEST, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
            return True
        return False

    cdef object run_command(self, object run, object fallback, tuple args, object kwargs, PyObject **raised):
        # args is None for do(): run() and fallback(err). Otherwise (the @command
        # decorator) run(*args, **kwargs) and fallback(*args, err=err, **kwargs),
        # without building a closure per call.
        cdef int64_t start, end, elapsed, verdict, timeout
        cdef int event, kind
        cdef PyObject *result
        cdef object start_arg, verdict_arg, timeout_arg
        start = self.now()
        # Admission first, whatever the isolation: a call the circuit turns away costs the same
        # in thread and semaphore mode.
        verdict = self.admit(start)
        if verdict == REJECTED_VERDICT and fh_load_relaxed(&self.queue_wait_ns) != 0:
            verdict = self.wait_for_ticket(start, None)
        if verdict < 0:
            if args is not None:
                fallback = bind_fallback(fallback, args, kwargs)
            return self.turned_away(verdict, start, fallback, None, raised)
        if verdict > 0:
            self.trial_started(start, verdict)
        timeout = fh_load_relaxed(&self.lim.timeout_ns)
        if not fh_load_relaxed(&self.lim.semaphore):
            try:
                if args is not None:
                    fallback = bind_fallback(fallback, args, kwargs)
                    run = partial(run, *args, **(kwargs or {}))
                # run_threaded's arguments made here, where a failure (out of memory) still ends the
                # command: once called, run_threaded owns the ticket.
                start_arg, verdict_arg, timeout_arg = start, verdict, timeout
            except BaseException:
                self.report_end(FAILURE, NO_EVENT, start, -1, verdict, True)
                raise
            return _run_threaded(self, run, fallback, None, start_arg, verdict_arg, timeout_arg)
        result = fh_call0(run) if args is None else fh_call(run, args, kwargs)
        if result is NULL:
            # Taken from the thread state at once (through the C API: no traceback entry of ours),
            # before anything else runs: a clock that is a Python callable must not run with it set.
            exc = fh_fetch()
        end = self.now()
        elapsed = end - start
        # What follows is _outcomes.outcome's rule (timeout first, then run's own result), inlined
        # in C for the path every call takes; test_circuit_state_machine checks both twins against
        # one model of it.
        if result is not NULL:
            value = fh_own(result)
            if type(value) is _COROUTINE_TYPE:
                self.returned_coroutine(value, end, elapsed // 1000, verdict)
            if elapsed <= timeout:
                if verdict == ADMITTED and not self.slow_success:
                    # The common case, inlined: give the ticket back and count the success.
                    self.tickets.give()
                    self.metrics_c.record_one_c(SUCCESS, end, elapsed // 1000, fh_load_relaxed(&self.lim.slow_us))
                    return value
                exc = self.checked_success(value, end, elapsed, verdict)
                if exc is None:
                    return value
                if not isinstance(exc, Exception):
                    return raise_later(exc, raised)  # KeyboardInterrupt in the predicate, counted
                event = FAILURE  # a result is_failure accepts (exc: FailedResultError, or its own error)
            else:
                # It succeeded too late: a timeout, as if a timer had been watching.
                event = TIMEOUT
                exc = new_error(TIMEOUT)
        else:
            # The type's MRO, not isinstance(): no __instancecheck__ lookup on this path.
            kind = fh_kind_of(exc, _CANCELED_TYPE, _DEADLINE_TYPE)
            if kind == FH_NOT_EXCEPTION:
                # KeyboardInterrupt, SystemExit...: count a failure, give the ticket back, propagate.
                self.report_c(FAILURE, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
                return raise_later(exc, raised)
            if elapsed > timeout:
                event = TIMEOUT
                exc = new_error(TIMEOUT)
            else:
                event = event_of(kind)
                if event == FAILURE and self.ignored_failure(exc, end, elapsed, verdict):
                    return raise_later(exc, raised)
        if fallback is None:
            # finish_c's no-fallback branch, inlined: the path an outage hammers.
            if event == TIMEOUT:
                self.report_c(TIMEOUT, NO_EVENT, end, -1, elapsed // 1000, verdict, True)
            elif verdict == ADMITTED and not self.slow_report:
                self.tickets.give()
                self.metrics_c.record_one_c(event, end, elapsed // 1000, fh_load_relaxed(&self.lim.slow_us))
            else:
                self.report_c(event, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
            return raise_later(exc, raised)
        if args is not None:
            fallback = bind_fallback(fallback, args, kwargs)
        return self.finish_c(event, exc, start, -1 if event == TIMEOUT else elapsed // 1000, verdict,
                             fallback, None, True, raised)

    def execute_c(self, ctx, run, fallback):
        """Run one command with a context (``do_c()``): ``run(ctx)``, ``fallback(ctx, err)``."""
        cdef PyObject *raised = NULL
        return raise_if(self.run_command_ctx(ctx, run, fallback, &raised), raised)

    cdef object run_command_ctx(self, object ctx, object run, object fallback, PyObject **raised):
        cdef int64_t start, end, verdict, timeout_at, elapsed
        cdef int event
        cdef object start_arg, verdict_arg, timeout_arg
        start = self.now()
        kind = ctx._done_kind(start)
        if kind is not None:
            # Already done: nothing runs (hystrix-go raced its two goroutines here).
            event = CONTEXT_CANCELED if kind == "canceled" else CONTEXT_DEADLINE_EXCEEDED
            return self.finish_c(event, error_for(event), NOT_STARTED, -1, 0, fallback, ctx, False, raised)
        verdict = self.admit(start)
        if verdict == REJECTED_VERDICT and fh_load_relaxed(&self.queue_wait_ns) != 0:
            verdict = self.wait_for_ticket(start, ctx)
        if verdict < 0:
            return self.turned_away(verdict, start, fallback, ctx, raised)
        if verdict > 0:
            self.trial_started(start, verdict)
        if not fh_load_relaxed(&self.lim.semaphore):
            try:
                # As in run_command: run_threaded owns the ticket once called, not before.
                start_arg, verdict_arg, timeout_arg = start, verdict, fh_load_relaxed(&self.lim.timeout_ns)
            except BaseException:
                self.report_end(FAILURE, NO_EVENT, start, -1, verdict, True)
                raise
            return _run_threaded(self, run, fallback, ctx, start_arg, verdict_arg, timeout_arg)
        timeout_at = start + fh_load_relaxed(&self.lim.timeout_ns)
        try:
            child = Context(ctx, timeout_at)
        except BaseException:
            self.report_end(FAILURE, NO_EVENT, start, -1, verdict, True)
            raise
        try:
            value = run(child)
        except BaseException as exc:
            end = self.now()
            child.cancel()
            elapsed = (end - start) // 1000
            if not isinstance(exc, Exception):
                self.report_c(FAILURE, NO_EVENT, end, elapsed, elapsed, verdict, True)
                return raise_later(exc, raised)
            return self.ended(None, exc, start, end, timeout_at, verdict, fallback, ctx, raised)
        end = self.now()
        child.cancel()
        if type(value) is _COROUTINE_TYPE:
            self.returned_coroutine(value, end, (end - start) // 1000, verdict)
        return self.ended(value, None, start, end, timeout_at, verdict, fallback, ctx, raised)

    cdef object ended(self, object value, object error, int64_t start, int64_t end, int64_t timeout_at,
                      int64_t verdict, object fallback, object ctx, PyObject **raised):
        """Complete a command whose run ended at ``end``, returning ``value`` or raising ``error``, by
        ``_outcomes.outcome``'s rule (which ``run_command`` inlines in C)."""
        cdef int64_t run_us = (end - start) // 1000
        try:
            event, err = outcome(error, end, timeout_at, ctx, self.ignores_now(), self.is_failure_now(), value)
        except BaseException:  # KeyboardInterrupt in an ignore/is_failure predicate: a failure, propagated
            self.report_c(FAILURE, NO_EVENT, end, run_us, run_us, verdict, True)
            raise
        if err is None:
            self.report_c(SUCCESS, NO_EVENT, end, run_us, run_us, verdict, True)
            return value
        if not (event == FAILURE or err is error):
            run_us = -1  # timeouts and context events have no run latency
        return self.finish_c(event, err, start, run_us, verdict, fallback, ctx, True, raised)

    def _after_fork_in_child(self):
        """In a forked child, before any other thread runs: no ticket held, no spinlock held.

        The spinlocks are never held across a point where another thread can fork (their
        holders keep the GIL, or stay attached, and call no Python code), so clearing them only
        guards against what a signal handler might do; the forking thread holds none here.
        """
        # The limiter's lock may have been held by a thread that does not exist in the child.
        self.limiter_lock = threading.Lock()
        if self._shared is None:
            # A shared circuit's locks are in the file: the parent's threads still use them.
            fh_store_relaxed(&self.st.lock, 0)
            fh_store_relaxed(&self.metrics_c.w.lock, 0)
            if (self.st.state_word & STATE_OPEN) and self.probes[0] != 0:
                # The half-open phase's trials run on the parent's threads: none reports here.
                # Open again (a new phase after the sleep window), rather than wait for them forever.
                self.reopen_probes_c(self.now())
        self.tickets._after_fork_in_child()


cdef class BoundFallback:
    """``fallback(*args, err=err, **kwargs)`` as a one-argument fallback (made only when one is needed)."""

    cdef object fallback
    cdef tuple args
    cdef object kwargs

    def __call__(self, err):
        if self.kwargs:
            return self.fallback(*self.args, err=err, **self.kwargs)
        return self.fallback(*self.args, err=err)


cdef object bind_fallback(object fallback, tuple args, object kwargs):
    cdef BoundFallback bound
    if fallback is None:
        return None
    bound = BoundFallback.__new__(BoundFallback)
    bound.fallback = fallback
    bound.args = args
    bound.kwargs = kwargs
    return bound


cdef class CommandFunction:
    """A sync function decorated with ``@command``: each call runs as command ``command_name``.

    Compiled, so a decorated call costs about what ``do()`` does: the circuit is
    looked up and the function called with the call's arguments directly, with
    no closure built per call.
    """

    cdef readonly str command_name
    cdef object function
    cdef object fallback
    cdef dict __dict__
    cdef object __weakref__

    def __init__(self, str command_name, function, fallback=None):
        self.command_name = command_name
        self.function = function
        self.fallback = fallback

    def __call__(self, *args, **kwargs):
        cdef PyObject *raised = NULL
        return raise_if((<CircuitBreaker?>circuit_of(self.command_name)).run_command(
            self.function, self.fallback, args, kwargs or None, &raised), raised)

    def __get__(self, instance, owner):
        # Decorated methods bind like functions do.
        if instance is None:
            return self
        return MethodType(self, instance)

    def __repr__(self):
        return f"<command {self.command_name!r} of {self.function!r}>"
