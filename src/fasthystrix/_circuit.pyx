# cython: language_level=3, freethreading_compatible=True
"""Circuit state, concurrency tickets and the semaphore-mode ``do()`` path (compiled twin of ``_circuit_py``).

The success path takes no lock and allocates no Python object of its own: one
atomic load of the state word, two atomic loads for the window's health, an
atomic ticket take and return, atomic increments into the current bucket and
the latency histograms. Opening and closing the circuit take a spinlock (rare).
User code (run, fallback, collectors, log handlers) never runs under it.
"""

import os
import sys
import time
from functools import partial
from types import MethodType

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from fasthystrix._atomic cimport (
    FH_HAVE_MONOTONIC_NS,
    fh_add_acq_rel,
    fh_cas_acq_rel,
    fh_load_acquire,
    fh_load_relaxed,
    fh_monotonic_ns,
    fh_spin_lock,
    fh_spin_unlock,
    fh_store_release,
)
from fasthystrix._fastclock cimport (
    fh_coarse_ns,
    fh_fastclock_allowed,
    fh_fastclock_calibrate,
    fh_fastclock_init,
    fh_fastclock_scale,
    fh_ticks,
    fh_ticks_to_ns,
)
from fasthystrix._pool cimport TicketPool
from fasthystrix._rolling cimport (
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

from fasthystrix._context import Context
from fasthystrix._errors import CircuitOpenError, FallbackError, MaxConcurrencyError
from fasthystrix._errors import ContextCanceledError as _ContextCanceledError
from fasthystrix._errors import ContextDeadlineExceededError as _ContextDeadlineExceededError
from fasthystrix._errors import TimeoutError as CommandTimeoutError
from fasthystrix import _transitions
from fasthystrix._outcomes import check_arguments, classify, context_outcome, error_for, notify_collectors

__all__ = [
    "CircuitBreaker",
    "CommandFunction",
    "bind",
    "check_arguments",
    "classify",
    "context_outcome",
    "do",
    "error_for",
]

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


cdef extern from "_capi.h":
    PyObject *fh_call0(object f)
    PyObject *fh_call(object f, object args, object kwargs)
    object fh_own(PyObject *o)
    object fh_fetch()
    object fh_stash(object exc)
    object fh_take_stash()
    void fh_init(object marker, object error_set_marker, void *impl)
    object fh_error_is_set()
    object fh_propagate()
    int fh_kind_of_error(object canceled, object deadline)
    object fh_new_error(object cls)
    object fh_make_do(object module_name)
    object fh_lookup(object table, object name)
    enum:
        FH_NOT_EXCEPTION
        FH_EXCEPTION
        FH_CONTEXT_CANCELED
        FH_CONTEXT_DEADLINE
    int fh_kind_of(object exc, object canceled, object deadline)


# What a path that must raise returns instead, once its exception is stashed (see _capi.h).
cdef object _RERAISE = object()
# What a path returns that left run()'s exception set (see _capi.h).
cdef object _ERROR_SET = object()
# C globals, not module attributes: read with run()'s exception set, they must not need a lookup.
cdef object _CANCELED_TYPE = _ContextCanceledError
cdef object _DEADLINE_TYPE = _ContextDeadlineExceededError


def _tsc_is_the_kernels_clock():
    # The kernel drives CLOCK_MONOTONIC with the TSC only if it found it invariant and in
    # step across CPUs; then timing with it directly measures what CLOCK_MONOTONIC would.
    if not sys.platform.startswith("linux") or os.environ.get("FASTHYSTRIX_NO_TSC", "") not in ("", "0"):
        return False
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip() == "tsc"
    except OSError:
        return False


fh_fastclock_init(_tsc_is_the_kernels_clock())


def _fast_clock():
    """How the semaphore fast path times ``run``: ``"tsc"``, ``"calibrating"`` or ``"monotonic"``.

    ``"tsc"``: the CPU's time-stamp counter for the duration and the kernel's
    coarse monotonic clock for the bucket second (see ``_fastclock.h``).
    ``"calibrating"``: the same, once the TSC's rate is measured (within a
    second of import). ``"monotonic"``: ``CLOCK_MONOTONIC`` at both ends.
    """
    if fh_fastclock_scale() != 0:
        return "tsc"
    return "calibrating" if fh_fastclock_allowed() else "monotonic"


def _allow_tsc(bint allowed):
    """Allow or forbid the TSC (tests cover both ways of timing).

    Forbidding it drops its calibration; allowing it again starts a new one.
    """
    fh_fastclock_init(allowed and _tsc_is_the_kernels_clock())


cdef object do_impl(object name, object run, object fallback):
    if type(name) is not str or not callable(run) or (fallback is not None and not callable(fallback)):
        check_arguments(name, run, fallback)
    return (<CircuitBreaker?>circuit_of(name)).execute_fast(run, fallback)


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


cdef inline str state_name(int64_t word):
    return "forced-open" if word & STATE_FORCED else "open" if word & STATE_OPEN else "closed"


cdef inline object raise_stashed(object result):
    # For callers other than the C entry point: turn the markers back into a raise.
    if result is _RERAISE:
        raise fh_take_stash()
    if result is _ERROR_SET:
        return fh_propagate()  # NULL with run()'s exception still set: Cython raises it
    return result


fh_init(_RERAISE, _ERROR_SET, <void *>do_impl)
do = fh_make_do(__name__)


@cython.final  # direct calls between its methods, which the C compiler can inline
cdef class CircuitBreaker:
    """The circuit of one command name: state, tickets, rolling metrics and the fast path.

    Get one with :func:`fasthystrix.get_circuit`; circuits are created on first
    use and shared by every caller of that name.
    """

    def __init__(self, str name, settings, default_collector, collectors, clock):
        self.name = name
        self._default = default_collector
        self.metrics_c = <RollingMetrics?>default_collector._rolling
        self._lock = default_collector._lock
        self._collectors = tuple(collectors)
        self.has_collectors = len(self._collectors) > 0
        self._clock = clock
        # CPython's time.monotonic_ns reads CLOCK_MONOTONIC on Linux: read it directly.
        self.c_clock = FH_HAVE_MONOTONIC_NS and clock is _monotonic_ns
        self.tickets = TicketPool()
        self._workers = None
        self.state_word = 0
        self.opened_ns = 0
        self.episode = 0
        self.lock = 0
        self._settings = settings

    def __repr__(self):
        return f"<CircuitBreaker {self.name!r} {self.state()} tickets={self.tickets_in_use}>"

    # -- public API ----------------------------------------------------------------

    @property
    def _settings(self):
        return self._settings_obj

    @_settings.setter
    def _settings(self, settings):
        timeout_ns = settings.timeout_ns
        sleep_window_ns = settings.sleep_window_ns
        max_concurrent = settings.max_concurrent_requests
        volume = settings.request_volume_threshold
        threshold = settings.error_percent_threshold
        semaphore = settings.semaphore
        self._settings_obj = settings
        self.timeout_ns = timeout_ns
        self.sleep_window_ns = sleep_window_ns
        self.max_concurrent = max_concurrent
        self.volume_threshold = volume
        self.error_threshold = threshold
        self.semaphore = semaphore

    @property
    def settings(self):
        """The settings new calls of this command use."""
        return self._settings_obj

    @property
    def force_open(self):
        """When true every call is short-circuited (no trial request), until set back to false."""
        return (fh_load_acquire(&self.state_word) & STATE_FORCED) != 0

    @force_open.setter
    def force_open(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"force_open must be a bool, not {value!r}")
        cdef int64_t before, after
        fh_spin_lock(&self.lock)
        before = self.state_word
        if value:
            after = before | STATE_FORCED
        else:
            after = before & ~STATE_FORCED
        fh_store_release(&self.state_word, after)
        fh_spin_unlock(&self.lock)
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
        cdef bint trial = opened == 1 and self.allow_single_test_c(now)
        if opened < 0:
            _transitions.opened(self.name)
        if trial:
            _transitions.trial(self.name)
        return opened == 0 or trial

    @property
    def tickets_in_use(self):
        """Concurrency tickets currently taken (commands whose run has not ended)."""
        return self.tickets.in_use

    def state(self):
        """``"closed"``, ``"open"`` or ``"forced-open"``, read without side effects."""
        return state_name(fh_load_acquire(&self.state_word))

    def metrics(self):
        """A snapshot of the rolling window: counts, error percent, tickets, latencies."""
        return self._default.snapshot(self.tickets.in_use, self.now())

    # -- state machine ----------------------------------------------------------------

    cdef int64_t now(self) except? -1:
        if self.c_clock:
            return fh_monotonic_ns()
        return self._clock()

    cdef int is_open_c(self, int64_t now) noexcept nogil:
        """1 if open, 0 if closed, -1 if this check just tripped it."""
        cdef int64_t requests, errors
        cdef bint tripped = False
        if fh_load_acquire(&self.state_word) != 0:
            return 1
        self.metrics_c.health_c(now, &requests, &errors)
        if requests == 0 or requests < self.volume_threshold:
            return 0
        # errors / requests * 100 rounded half up >= threshold, in integers.
        if (errors * 200 + requests) // (2 * requests) < self.error_threshold:
            return 0
        fh_spin_lock(&self.lock)
        if (self.state_word & STATE_OPEN) == 0:
            # now may be the coarse clock, a tick behind: what is stored is read precisely.
            self.opened_ns = fh_monotonic_ns() if self.c_clock else now
            self.episode += 1
            fh_store_release(&self.state_word, self.state_word | STATE_OPEN)
            tripped = True
        fh_spin_unlock(&self.lock)
        return -1 if tripped else 1

    cdef bint allow_single_test_c(self, int64_t now) noexcept nogil:
        # A forced-open circuit lets no trial through, even if it also tripped (hystrix-go did).
        cdef int64_t opened
        if fh_load_acquire(&self.state_word) != STATE_OPEN:
            return False
        opened = fh_load_acquire(&self.opened_ns)
        if now <= opened + self.sleep_window_ns:
            return False
        # One winner per sleep window: compare-and-swap the last test time, as hystrix-go
        # (read precisely: now may be the coarse clock, a tick behind).
        return fh_cas_acq_rel(&self.opened_ns, &opened, fh_monotonic_ns() if self.c_clock else now)

    cdef int64_t admit(self, int64_t now) noexcept nogil:
        cdef int opened = self.is_open_c(now)
        cdef int64_t verdict = ADMITTED
        cdef int64_t in_use
        if opened != 0:
            if opened < 0:
                return TRIPPED
            # Only take the trial slot if the trial can run (a ticket is free).
            if fh_load_relaxed(&self.tickets._in_use) >= self.max_concurrent or not self.allow_single_test_c(now):
                return SHORT_CIRCUITED
            verdict = fh_load_acquire(&self.episode)
        in_use = self.tickets.take(self.max_concurrent)
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
            _transitions.trial(self.name)
        return verdict

    def _acquire(self, int64_t now, settings=None):
        """Check the circuit and take a ticket; a verdict (>= 0: admitted, > 0: trial)."""
        return self.acquire_c(now)

    def _release(self):
        """Give a ticket back."""
        self.tickets.give()

    cdef int report_c(self, int event, int fallback_event, int64_t now, int64_t run_us, int64_t total_us,
                      int64_t trial, bint release) except -1:
        cdef bint closed = False, reopened = False
        if release:
            self.tickets.give()
        # Only the trial of the current open episode closes the circuit (hystrix-go let any
        # success close it, even one that started before the circuit opened).
        if trial > 0 and event == SUCCESS:
            fh_spin_lock(&self.lock)
            if (self.state_word & STATE_OPEN) and trial == self.episode:
                fh_store_release(&self.state_word, self.state_word & ~STATE_OPEN)
                closed = True
            fh_spin_unlock(&self.lock)
            if closed:
                self.metrics_c._reset()
        elif trial > 0 and (fh_load_acquire(&self.state_word) & STATE_OPEN) and trial == fh_load_acquire(&self.episode):
            reopened = True
        self.metrics_c.record_c(event, fallback_event, now, run_us, total_us)
        if closed:
            _transitions.closed(self.name)
        elif reopened:
            _transitions.reopened(self.name)
        if closed or self.has_collectors:
            notify_collectors(self.name, self._collectors, closed, event, fallback_event, run_us, total_us,
                              self.tickets.in_use, self.max_concurrent)
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
                         object fallback, object ctx, bint release):
        """Complete a command that did not succeed: fallback, report, then return or raise."""
        if fallback is None:
            self.report_end(event, NO_EVENT, start, run_us, trial, release)
            return fh_stash(err)
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
        return raise_stashed(self.finish_c(event, err, start, run_us, trial, fallback, ctx, release))

    # -- the semaphore-mode fast path ----------------------------------------------------

    def execute(self, run, fallback):
        """Run one command (``do()``): on this thread in semaphore mode, else on a worker."""
        return raise_stashed(self.execute_fast(run, fallback))

    cdef object execute_fast(self, object run, object fallback):
        return self.execute_args_c(run, fallback, None, None)

    def execute_args(self, function, tuple args, kwargs, fallback):
        """Run ``function(*args, **kwargs)`` as one command; ``fallback(*args, err=err, **kwargs)``."""
        return raise_stashed(self.execute_args_c(function, fallback, args, kwargs))

    cdef object execute_args_c(self, object run, object fallback, tuple args, object kwargs):
        # args is None for do(): run() and fallback(err). Otherwise (the @command
        # decorator) run(*args, **kwargs) and fallback(*args, err=err, **kwargs),
        # without building a closure per call.
        cdef int64_t start, end, elapsed, verdict, ticks = 0
        cdef int64_t scale = fh_fastclock_scale() if self.c_clock else 0
        cdef int event, kind
        cdef object exc = None  # run's exception once taken from the thread state
        if not self.semaphore:
            if args is not None:
                fallback = bind_fallback(fallback, args, kwargs)
                run = partial(run, *args, **(kwargs or {}))
            return _run_threaded(self, self._settings_obj, run, fallback, None)
        if scale != 0:
            # The coarse clock for the second and the circuit checks, the TSC for run's duration.
            start = fh_coarse_ns()
            ticks = fh_ticks()
        else:
            start = self.now()
            if self.c_clock:
                fh_fastclock_calibrate(start)
        verdict = self.admit(start)
        if verdict < 0:
            if args is not None:
                fallback = bind_fallback(fallback, args, kwargs)
            if verdict == TRIPPED:
                _transitions.opened(self.name)
            if verdict == REJECTED_VERDICT:
                return self.finish_c(REJECTED, fh_new_error(MaxConcurrencyError), start, -1, 0, fallback, None, False)
            return self.finish_c(SHORT_CIRCUIT, fh_new_error(CircuitOpenError), start, -1, 0, fallback, None, False)
        if verdict > 0:
            _transitions.trial(self.name)
        result = fh_call0(run) if args is None else fh_call(run, args, kwargs)
        if result is NULL and not self.c_clock:
            # Caught through the C API, so run's exception gains no traceback entry of ours; taken
            # before the clock is read, as a Python clock must not run with it set.
            exc = fh_fetch()
        if scale != 0:
            elapsed = fh_ticks_to_ns(fh_ticks() - ticks, scale)
            end = start + elapsed
        else:
            end = self.now()
            elapsed = end - start
        if result is NULL:
            # The type's MRO, not isinstance(): no __instancecheck__ lookup on this path.
            if exc is None:
                kind = fh_kind_of_error(_CANCELED_TYPE, _DEADLINE_TYPE)
            else:
                kind = fh_kind_of(exc, _CANCELED_TYPE, _DEADLINE_TYPE)
            event = event_of(kind)
            if (exc is None and kind != FH_NOT_EXCEPTION and fallback is None and verdict == ADMITTED
                    and not self.has_collectors and elapsed <= self.timeout_ns):
                # The path an outage hammers: count the failure with run's exception still set and
                # let the entry point return NULL. Only C runs until then: no Python API call.
                self.tickets.give()
                self.metrics_c.record_one_c(event, end, elapsed // 1000)
                return fh_error_is_set()
            if exc is None:
                exc = fh_fetch()
            if kind == FH_NOT_EXCEPTION:
                # KeyboardInterrupt, SystemExit...: count a failure, give the ticket back, propagate.
                self.report_c(FAILURE, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
                return fh_stash(exc)
            if args is not None:
                fallback = bind_fallback(fallback, args, kwargs)
            if elapsed > self.timeout_ns:
                # It would have timed out had a timer been watching: a timeout, whatever run did.
                return self.finish_c(TIMEOUT, fh_new_error(CommandTimeoutError), self.started(start, elapsed, scale), -1,
                                     verdict, fallback, None, True)
            if fallback is None:
                # finish_c's no-fallback branch, inlined.
                self.report_c(event, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
                return fh_stash(exc)
            return self.finish_c(event, exc, self.started(start, elapsed, scale), elapsed // 1000, verdict,
                                 fallback, None, True)
        value = fh_own(result)
        if elapsed > self.timeout_ns:
            if args is not None:
                fallback = bind_fallback(fallback, args, kwargs)
            return self.finish_c(TIMEOUT, fh_new_error(CommandTimeoutError), self.started(start, elapsed, scale), -1, verdict,
                                 fallback, None, True)
        if verdict == ADMITTED and not self.has_collectors:
            # The common case, inlined: give the ticket back and count the success.
            self.tickets.give()
            self.metrics_c.record_one_c(SUCCESS, end, elapsed // 1000)
            return value
        self.report_c(SUCCESS, NO_EVENT, end, elapsed // 1000, elapsed // 1000, verdict, True)
        return value

    cdef int64_t started(self, int64_t start, int64_t elapsed, int64_t scale) except? -1:
        # finish_c times the fallback with the precise clock (report_end): give it a start on that
        # clock, not the coarse one, so the total latency is not a tick too long.
        return self.now() - elapsed if scale != 0 else start

    def execute_c(self, ctx, run, fallback):
        """Run one command with a context (``do_c()``): ``run(ctx)``, ``fallback(ctx, err)``."""
        return raise_stashed(self.execute_c_stashed(ctx, run, fallback))

    cdef object execute_c_stashed(self, object ctx, object run, object fallback):
        cdef int64_t start, end, verdict, timeout_at, elapsed
        cdef int event
        if not self.semaphore:
            return _run_threaded(self, self._settings_obj, run, fallback, ctx)
        start = self.now()
        kind = ctx._done_kind(start)
        if kind is not None:
            # Already done: nothing runs (hystrix-go raced its two goroutines here).
            event = CONTEXT_CANCELED if kind == "canceled" else CONTEXT_DEADLINE_EXCEEDED
            return self.finish_c(event, error_for(event), NOT_STARTED, -1, 0, fallback, ctx, False)
        verdict = self.acquire_c(start)
        if verdict < 0:
            event = REJECTED if verdict == REJECTED_VERDICT else SHORT_CIRCUIT
            return self.finish_c(event, error_for(event), start, -1, 0, fallback, ctx, False)
        timeout_at = start + self.timeout_ns
        child = Context(ctx, timeout_at)
        try:
            value = run(child)
        except BaseException as exc:
            end = self.now()
            child.cancel()
            elapsed = (end - start) // 1000
            if not isinstance(exc, Exception):
                self.report_c(FAILURE, NO_EVENT, end, elapsed, elapsed, verdict, True)
                raise
            event = context_outcome(ctx, timeout_at, end)
            if event != NO_EVENT:
                return self.finish_c(event, error_for(event), start, -1, verdict, fallback, ctx, True)
            return self.finish_c(classify(exc), exc, start, elapsed, verdict, fallback, ctx, True)
        end = self.now()
        child.cancel()
        event = context_outcome(ctx, timeout_at, end)
        if event != NO_EVENT:
            return self.finish_c(event, error_for(event), start, -1, verdict, fallback, ctx, True)
        elapsed = (end - start) // 1000
        self.report_c(SUCCESS, NO_EVENT, end, elapsed, elapsed, verdict, True)
        return value



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
        circuit = circuit_of(self.command_name)
        if type(circuit) is CircuitBreaker:
            return raise_stashed((<CircuitBreaker>circuit).execute_args_c(
                self.function, self.fallback, args, kwargs or None))
        # A circuit of the other implementation (after a switch): its own method.
        return circuit.execute_args(self.function, args, kwargs or None, self.fallback)

    def __get__(self, instance, owner):
        # Decorated methods bind like functions do.
        if instance is None:
            return self
        return MethodType(self, instance)

    def __repr__(self):
        return f"<command {self.command_name!r} of {self.function!r}>"
