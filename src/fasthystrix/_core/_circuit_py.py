"""Circuit state, concurrency tickets and the semaphore-mode ``do()`` path (pure-Python twin).

One lock per circuit guards its state (open flag, rolling window); it is held
for a few attribute updates, never while user code (run, fallback, collectors,
log handlers) runs. Metrics are recorded before a command returns, so the next
call sees its outcome and its ticket is back.

The success path of a closed, healthy circuit takes no lock: it checks the
circuit's gate, takes a ticket, and records its admission and its latency by
appending to lists the rolling window folds in later (see :mod:`._gate`).
Everything else (trips, trials, failures, timeouts, a new second, a new
maximum of tickets in use, collectors, thread isolation) takes the locked path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from types import MethodType
from typing import Any, NoReturn

from . import _backoff, _transitions
from ._context import Context
from ._errors import FallbackError
from ._events import (
    ADMITTED,
    BAD_REQUEST,
    CONTEXT_CANCELED,
    CONTEXT_DEADLINE_EXCEEDED,
    EXPIRED,
    FAILURE,
    FALLBACK_FAILURE,
    FALLBACK_SUCCESS,
    FIRST_PROBE,
    NO_EVENT,
    NOT_STARTED,
    PROBE,
    REJECTED,
    REJECTED_VERDICT,
    SHORT_CIRCUIT,
    SHORT_CIRCUITED,
    SUCCESS,
    TIMEOUT,
    TRIPPED,
    probe_phase,
    turned_away_event,
)
from ._gate import CLOSED, PENDING_LIMIT, Gate
from ._metrics import MetricsSnapshot
from ._outcomes import (
    COROUTINE as _COROUTINE,
    check_arguments,
    coroutine_returned,
    error_for,
    failed_result,
    notify_collectors,
    outcome,
)
from ._pool_py import BASE as _HELD_BASE, TicketPool
from ._queue import TicketQueue, _Ops, wait as _wait_for_ticket
from ._rolling_py import MAX_ACTIVE

__all__ = [
    "CircuitBreaker",
    "CommandFunction",
    "bind",
    "do",
]

_NS_PER_US = 1000
# The endings an adaptive limiter learns from: the calls that ran (their ticket's whole life).
_SAMPLED_EVENTS = frozenset((SUCCESS, FAILURE, TIMEOUT, BAD_REQUEST))

# A half-open phase's trials in one int (as the compiled twin's word): admitted, finished, failed.
_PROBE_BITS = 21
_PROBE_MASK = (1 << _PROBE_BITS) - 1


def _unpack_probes(word: int) -> tuple[int, int, int]:
    return word & _PROBE_MASK, (word >> _PROBE_BITS) & _PROBE_MASK, (word >> 2 * _PROBE_BITS) & _PROBE_MASK


def _pack_probes(admitted: int, done: int, failed: int) -> int:
    return admitted | (done << _PROBE_BITS) | (failed << 2 * _PROBE_BITS)


# Set by the registry (bind): the circuits table, the creator, and the thread-mode executor.
_circuits: dict[str, CircuitBreaker] = {}
_get_or_create: Callable[[str], CircuitBreaker] | None = None
_run_threaded: Callable[..., Any] | None = None


def bind(
    circuits: dict[str, CircuitBreaker],
    get_or_create: Callable[[str], CircuitBreaker],
    run_threaded: Callable[..., Any],
) -> None:
    """Connect the fast path to the registry's table and to thread isolation (called once at import)."""
    global _circuits, _get_or_create, _run_threaded
    _circuits = circuits
    _get_or_create = get_or_create
    _run_threaded = run_threaded


def do(name: str, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None = None) -> Any:
    """Run ``run()`` as command ``name``; see :func:`fasthystrix.do`."""
    # The compiled twin checks the arguments first; here that would cost the success path
    # about two bare calls, so they are checked where they cost nothing, with the same
    # outcome: a name that is not a str is not a key of the table (only an object equal to
    # a str key, which no built-in type is, would pass), and a run that is not callable
    # raises when called, before anything ran; its admission is then undone.
    if fallback is not None and not callable(fallback):
        check_arguments(name, run, fallback)
    try:
        circuit = _circuits[name]
    except (KeyError, TypeError):  # a new name, or no str at all (perhaps unhashable)
        check_arguments(name, run, fallback)
        circuit = _get_or_create(name)  # type: ignore[misc]
    # CircuitBreaker.execute's lock-free path, inlined (one Python call less); keep the two in step.
    pending = circuit._pending
    clock = circuit._clock
    start = clock()
    waiting = len(pending)  # before the gate: see _gate
    gate = circuit._metrics._gate
    held = circuit._held
    held.append(None)  # take a ticket
    if start >= (until := gate.until_ns) or waiting >= gate.budget or len(held) > gate.held_limit:
        held.pop()
        if not callable(run):
            check_arguments(name, run, fallback)
        return circuit._execute_locked(start, run, fallback)
    circuit._admits.append(None)
    try:
        value = run()
    except BaseException as exc:
        held.pop()
        if not callable(run):
            circuit._not_callable(run)
        return circuit._failed(exc, start, 0, fallback, False)
    end = clock()
    held.pop()
    elapsed = end - start
    if end >= until or elapsed > gate.timeout_ns or type(value) is _COROUTINE:
        return circuit._succeeded_late(value, start, end, until, fallback)
    pending.append(elapsed // 1000)  # microseconds (a constant is faster than a global)
    return value


class CircuitBreaker:
    """The circuit of one command name: state, tickets, rolling metrics and the fast path.

    Get one with :func:`fasthystrix.get_circuit`; circuits are created on first
    use and shared by every caller of that name.
    """

    __slots__ = (
        "__weakref__",
        "_admits",
        "_clock",
        "_collectors",
        "_default",
        "_episode",
        "_force_closed",
        "_force_open",
        "_held",
        "_host",
        "_limit",
        "_limiter",
        "_lock",
        "_metrics",
        "_open",
        "_opened_ns",
        "_pending",
        "_probes",
        "_queue",
        "_reopens",
        "_settings_obj",
        "_shared",
        "_sleep_ns",
        "_sleep_raw_ns",
        "_tickets",
        "_workers",
        "name",
    )

    def __init__(
        self,
        name: str,
        settings: Any,
        default_collector: Any,
        collectors: list[Any],
        clock: Callable[[], int],
    ) -> None:
        self.name = name
        self._default = default_collector
        self._metrics = default_collector._rolling
        self._metrics.configure_window(settings.rolling_bucket_ns, settings.rolling_buckets)
        self._lock = default_collector._lock
        self._collectors = tuple(collectors)
        self._clock = clock
        self._open = False
        self._force_open = False
        self._force_closed = False
        self._opened_ns = 0
        self._episode = 0
        self._reopens = 0  # failed trials since the circuit opened, and this episode's wait (_backoff)
        self._sleep_raw_ns = 0
        self._sleep_ns = 0
        self._probes = 0  # the half-open phase's trials (_pack_probes), 0 outside one
        self._tickets = TicketPool()
        # Calls waiting for a ticket (max_queue_wait), under the circuit's lock.
        self._queue = TicketQueue()
        self._workers: Any = None
        # The shared circuit file this circuit lives in (see _attach), and its view of that file.
        self._shared: Any = None
        self._host: Any = None
        # The lists the lock-free path appends to, loaded from here with one attribute read.
        self._held = self._tickets._held
        self._pending = self._metrics._pending
        self._admits = self._metrics._admits
        self._settings_obj = settings
        self._use_limit_of(settings)

    def _use_limit_of(self, settings: Any) -> None:
        # The limit admission reads (the compiled twin's lim.max_concurrent word), and the limiter
        # that moves it with an adaptive limit (fed in _report, under the lock).
        self._limiter = None if settings.adaptive_limit is None else settings.adaptive_limit.limiter()
        self._limit = settings.max_concurrent_requests

    def __repr__(self) -> str:
        state = "forced open" if self._force_open else "open" if self._open else "closed"
        return f"<CircuitBreaker {self.name!r} {state} tickets={self._tickets.in_use}>"

    # -- public API ----------------------------------------------------------------

    @property
    def _settings(self) -> Any:
        return self._settings_obj

    @_settings.setter
    def _settings(self, settings: Any) -> None:
        # The registry assigns new settings here; the gate holds a copy of some of them.
        with self._lock:
            self._metrics.configure_window(settings.rolling_bucket_ns, settings.rolling_buckets)
            self._settings_obj = settings
            self._use_limit_of(settings)
            self._metrics._gate = CLOSED
            self._open_gate_locked()

    @property
    def settings(self) -> Any:
        """The settings new calls of this command use."""
        return self._settings_obj

    @property
    def force_open(self) -> bool:
        """When true every call is short-circuited (no trial request), until set back to false."""
        return self._force_open

    @force_open.setter
    def force_open(self, value: bool) -> None:
        self._set_forced("force_open", value)

    @property
    def force_closed(self) -> bool:
        """When true the circuit never opens (its health is still computed and reported);
        ``force_open`` wins over it, as in Hystrix."""
        return self._force_closed

    @force_closed.setter
    def force_closed(self, value: bool) -> None:
        self._set_forced("force_closed", value)

    def _set_forced(self, field: str, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{field} must be a bool, not {value!r}")
        with self._lock:
            old = self.state()
            setattr(self, "_" + field, value)
            self._metrics._gate = CLOSED
            self._open_gate_locked()
            new = self.state()
        _transitions.forced(self.name, old, new)

    def is_open(self) -> bool:
        """Whether calls are short-circuited now; like hystrix-go, may trip an unhealthy circuit."""
        with self._lock:
            opened = self._is_open_locked(self._clock(), self._settings_obj)
            tripped = opened is None
            self._open_gate_locked()
        if tripped:
            _transitions.opened(self.name)
        return opened is not False

    def allow_request(self) -> bool:
        """hystrix-go's ``AllowRequest``: closed, or open with this call taking the trial slot."""
        now = self._clock()
        with self._lock:
            settings = self._settings_obj
            opened = self._is_open_locked(now, settings)
            # With several trials only commands are trials (one taken here would never report).
            trial = opened is True and not settings.probes and self._allow_single_test_locked(now, settings)
            self._open_gate_locked()
        if opened is None:
            _transitions.opened(self.name)
        if trial:
            _transitions.trial(self.name)
        return opened is False or trial

    @property
    def sleep_window_now(self) -> timedelta:
        """The wait before the next trial of this open episode (a ``timedelta``): the sleep window,
        or its backoff after failed trials."""
        return timedelta(microseconds=(self._sleep_ns or self._settings_obj.sleep_window_ns) // 1000)

    def _shed_until(self) -> int:
        """The clock time until which this open circuit lets no trial through: when it opened (or
        let its last trial through) plus the sleep window or its backoff. ``0`` when a call may be
        admitted now or the wait is not the circuit's: closed, forced open or closed, disabled, or
        in a half-open phase of several trials. Read without the lock (the middlewares' door:
        advisory, the command decides); host-wide circuits read the file, so a circuit another
        process opened is seen too."""
        settings = self._settings_obj
        if not settings.circuit_breaker_enabled or not self._open or self._force_open or self._force_closed:
            return 0
        if settings.probes and self._probes:
            return 0
        until: int = self._opened_ns + (self._sleep_ns or settings.sleep_window_ns)
        return until

    @property
    def concurrency_limit(self) -> int:
        """The ticket limit admission applies now: ``max_concurrent_requests``, or an adaptive
        limit's current value."""
        limit: int = self._limit
        return limit

    @property
    def tickets_in_use(self) -> int:
        """Concurrency tickets currently taken (commands whose run has not ended)."""
        return self._tickets.in_use

    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"forced-open"``, read without side effects (``"closed"``
        when forced closed, or when the breaker is disabled)."""
        if not self._settings_obj.circuit_breaker_enabled:
            return "closed"
        if self._force_open:
            return "forced-open"
        return "open" if self._open and not self._force_closed else "closed"

    def metrics(self) -> MetricsSnapshot:
        """A snapshot of the rolling window: counts, error percent, tickets, latencies."""
        snapshot: MetricsSnapshot = self._default.snapshot(self._tickets.in_use, self._clock())
        waiting = len(self._queue.waiters)
        return dataclasses.replace(snapshot, queue_size=waiting) if waiting else snapshot

    # -- host-wide circuits (see _shared and _shared_circuit_py) ----------------------------

    def _attach(self, shared: Any, configured: Any) -> None:
        """Keep this new, unused circuit in ``shared`` (a ``_shared.SharedCircuitFile``) from now on.

        Its settings, state, tickets and rolling window then live in the file, one
        circuit for every process that maps it. ``configured`` settings (if not
        ``None``) are written to the file, else the file's are adopted.
        """
        from ._shared_circuit_py import attach

        attach(self, shared, configured)

    def _attach_slot(self) -> None:
        """In a forked child: count this process's tickets in its own slot of the shared file."""
        if self._host is not None:
            self._host.attach_slot(self)

    def _reclaim_slot(self, slot: int) -> None:
        """The process of ``slot`` died: give its tickets back and free its trial (file lock held)."""
        if self._host is not None:
            self._host.reclaim_slot(self, slot)

    def _reset_state(self) -> None:
        """Close the circuit, clear ``force_open`` and empty the window (host-wide when shared).

        Tickets in use are left alone: their commands still run and give them back.
        """
        with self._lock:
            self._open = False
            self._force_open = False
            self._force_closed = False
            self._reopens = self._sleep_raw_ns = self._sleep_ns = 0
            self._probes = 0
            self._metrics.reset()
            self._open_gate_locked()

    # -- state machine (lock held) ----------------------------------------------------

    def _is_open_locked(self, now: int, settings: Any) -> bool | None:
        """``True`` if open, ``False`` if closed, ``None`` if this check just tripped it."""
        # As in Hystrix: a disabled breaker never opens, forced open beats forced closed, and
        # forced closed beats open (health is still computed, for the metrics).
        if not settings.circuit_breaker_enabled:
            return False
        if self._force_open:
            return True
        if self._force_closed:
            return False
        if self._open:
            return True
        requests, errors = self._metrics.health(now)
        if not settings.rejections_count_as_errors:
            # Rejections are counted, but neither requests nor errors of the breaker's.
            rejections = self._metrics.rejections()
            requests = max(requests - rejections, 0)
            errors = max(errors - rejections, 0)
        if requests == 0 or requests < settings.request_volume_threshold:
            return False
        # errors / requests * 100 rounded half up >= threshold, in integers; then slow calls
        # (slow_call_duration set) by the same rule against slow_call_rate_threshold.
        if (errors * 200 + requests) // (2 * requests) < settings.error_percent_threshold and not (
            settings.slow_call_duration_ns
            and (slow := self._metrics.slow_calls()) > 0
            and (slow * 200 + requests) // (2 * requests) >= settings.slow_call_rate_threshold
        ):
            return False
        self._open = True
        self._metrics._gate = CLOSED
        self._opened_ns = now
        self._episode += 1
        self._reopens = 0
        self._probes = 0
        extra, jitter = _backoff.ppm(settings.sleep_window_multiplier - 1.0), _backoff.ppm(settings.sleep_window_jitter)
        raw = settings.sleep_window_ns if extra or jitter else 0
        self._sleep_raw_ns = raw
        self._sleep_ns = _backoff.jittered(raw, jitter, _backoff.seed(now, self._episode, 0))
        return None

    def _reopen_locked(self, now: int, settings: Any) -> None:
        """The current episode's trial failed: one more reopen, and its longer wait (see _backoff)."""
        self._reopens += 1
        self._probes = 0  # a new half-open phase after this wait
        extra, jitter = _backoff.ppm(settings.sleep_window_multiplier - 1.0), _backoff.ppm(settings.sleep_window_jitter)
        raw = 0
        if extra or jitter:
            raw = _backoff.next_raw(self._sleep_raw_ns, settings.sleep_window_ns, extra, settings.max_sleep_window_ns)
        self._sleep_raw_ns = raw
        self._sleep_ns = _backoff.jittered(raw, jitter, _backoff.seed(now, self._episode, self._reopens))

    def _open_gate_locked(self) -> None:
        """Publish the gate that lets calls take the lock-free path, if they may (see _gate).

        Called with the lock held after anything that may have closed the gate.
        """
        settings = self._settings_obj
        if (
            self._open
            or self._force_open
            or not settings.semaphore
            or self._collectors
            or self._limiter is not None
            or self._queue.waiters
        ):
            return  # every call takes the locked path (the gate was closed when this became so)
        metrics = self._metrics
        requests = metrics._requests
        errors = metrics._errors
        if not settings.rejections_count_as_errors:
            rejections = metrics.rejections()
            requests = max(requests - rejections, 0)
            errors = max(errors - rejections, 0)
        # The fewest more successes that bring the window to the volume threshold: the
        # circuit is healthy below that, and beyond it successes only lower the error
        # percentage, so if it is healthy there it stays healthy (up to the memory bound).
        reach = max(settings.request_volume_threshold - requests, 1 - requests, 0)
        total = requests + reach
        budget = PENDING_LIMIT
        slow_ns = settings.slow_call_duration_ns
        if reach < budget and (
            (errors * 200 + total) // (2 * total) >= settings.error_percent_threshold
            or (slow_ns and (metrics._slow * 200 + total) // (2 * total) >= settings.slow_call_rate_threshold)
        ):
            budget = reach
        # With is_failure, no success is "on time" for the gate: each goes to _succeeded_late,
        # which checks its result and, if it is a success, still counts it lock-free. With
        # slow_call_duration, a success slower than it takes that path too (counted slow under the
        # lock): pending successes are all fast, so they only lower the slow percentage.
        on_time_ns = settings.timeout_ns if not slow_ns else min(settings.timeout_ns, slow_ns)
        second = metrics._second
        peak = metrics._buckets[second % metrics._nb][MAX_ACTIVE]
        metrics._gate = Gate(
            (second + 1) * metrics._width_ns,
            budget,
            _HELD_BASE + min(peak, self._limit),
            # With is_failure, no success is "on time" for the gate: each goes to _succeeded_late,
            # which checks its result and, if it is a success, still counts it lock-free.
            on_time_ns if settings.is_failure is None else -1,
        )

    def _allow_single_test_locked(self, now: int, settings: Any) -> bool:
        # A forced-open circuit lets no trial through, even if it also tripped (hystrix-go did,
        # and a trial's success then "closed" a circuit that stayed forced open).
        if self._open and not self._force_open and now > self._opened_ns + (self._sleep_ns or settings.sleep_window_ns):
            self._opened_ns = now
            return True
        return False

    def _probe_locked(self, now: int, settings: Any) -> int:
        """An open circuit with several trials (``settings.probes``): admit one (a verdict with
        ``PROBE``, ticket taken), or ``SHORT_CIRCUITED``, or ``EXPIRED`` (this call found the trials
        past ``half_open_max_wait`` and opened the circuit again)."""
        if self._force_open:
            return SHORT_CIRCUITED
        admitted, done, failed = _unpack_probes(self._probes)
        first = admitted == 0
        if first:
            # Open: the first trial once the sleep window (or its backoff) has passed.
            if now <= self._opened_ns + (self._sleep_ns or settings.sleep_window_ns):
                return SHORT_CIRCUITED
        elif settings.half_open_max_wait_ns and now > self._opened_ns + settings.half_open_max_wait_ns:
            self._reopen_probes_locked(now, settings)
            return EXPIRED
        elif admitted >= settings.half_open_max_calls:
            return SHORT_CIRCUITED
        in_use = self._tickets.try_take(self._limit)
        if in_use < 0:
            return SHORT_CIRCUITED  # a trial only when it can run
        if first:
            self._opened_ns = now  # the half-open phase starts: half_open_max_wait counts from here
        self._probes = _pack_probes(admitted + 1, done, failed)
        self._probe_admitted_locked()
        self._metrics.record_executed(now, in_use)
        verdict = probe_phase(self._episode, self._reopens)
        return verdict | FIRST_PROBE if first else verdict

    def _probe_admitted_locked(self) -> None:
        """A trial of the half-open phase was admitted (shared circuits note which process has it)."""

    def _reopen_probes_locked(self, now: int, settings: Any) -> None:
        """The half-open phase failed (or ran past its bound): open again, for a (backed off) sleep window."""
        self._opened_ns = now
        self._reopen_locked(now, settings)

    def _probe_ended_locked(self, phase: int, failed: bool, now: int, settings: Any) -> str | None:
        """A trial of ``phase`` ended (``failed`` or not): ``"closed"`` or ``"reopened"`` if this
        takes the phase's verdict, else ``None``. Exactly one verdict per phase: it ends the phase."""
        admitted, done, failures = _unpack_probes(self._probes)
        if not self._open or admitted == 0 or phase != probe_phase(self._episode, self._reopens):
            return None  # a trial of a phase that has had its verdict
        if settings.half_open_max_wait_ns and now > self._opened_ns + settings.half_open_max_wait_ns:
            self._reopen_probes_locked(now, settings)
            return "reopened"
        done += 1
        failures += failed
        if done < admitted or admitted < settings.half_open_max_calls:
            self._probes = _pack_probes(admitted, done, failures)
            return None
        # errors / trials * 100 rounded half up < threshold, in integers (as the window's health).
        if (failures * 200 + done) // (2 * done) < settings.error_percent_threshold:
            self._open = False
            self._reopens = self._sleep_raw_ns = self._sleep_ns = 0
            self._probes = 0
            self._metrics.reset()
            return "closed"
        self._reopen_probes_locked(now, settings)
        return "reopened"

    def _admit_locked(self, now: int, settings: Any) -> int:
        opened = self._is_open_locked(now, settings)
        verdict = ADMITTED
        if opened is not False:
            if opened is None:
                return TRIPPED
            if settings.probes:
                return self._probe_locked(now, settings)
            # Only take the trial slot if the trial can run (a ticket is free).
            if self._tickets.in_use >= self._limit or not self._allow_single_test_locked(now, settings):
                return SHORT_CIRCUITED
            verdict = self._episode
        elif self._queue.waiters:
            return REJECTED_VERDICT  # calls wait for a ticket: this one queues behind them
        in_use = self._tickets.try_take(self._limit)
        if in_use < 0:
            return REJECTED_VERDICT
        self._metrics.record_executed(now, in_use)
        return verdict

    # -- building blocks shared with thread isolation -----------------------------------

    def _acquire(self, now: int, settings: Any = None) -> int:
        """Check the circuit and take a ticket; a verdict (>= 0: admitted, > 0: trial)."""
        if settings is None:
            settings = self._settings_obj
        with self._lock:
            verdict = self._admit_locked(now, settings)
            self._open_gate_locked()
        if verdict == TRIPPED:
            _transitions.opened(self.name)
        elif verdict > 0 and (not verdict & PROBE or verdict & FIRST_PROBE):
            try:
                _transitions.trial(self.name)
            except BaseException:
                # An interrupt in a listener or a log handler (or out of memory) as the trial
                # starts: the caller never gets to run it, and nothing else would end it.
                self._report_end(FAILURE, NO_EVENT, now, -1, verdict, True)
                raise
        elif verdict == EXPIRED:
            _transitions.reopened(self.name)
        return verdict

    def _probe_reported_locked(self, phase: int) -> None:
        """A trial of ``phase`` reports (shared circuits: no longer the reaper's to count)."""

    def _release(self) -> None:
        """Give a ticket back (to the oldest call waiting for one, if any)."""
        self._tickets.give_back()
        if self._queue.waiters:
            with self._lock:
                self._queue.drain_locked(self._take_for_waiter, self._tickets.give_back)
                self._queue_changed_locked(len(self._queue.waiters))

    # -- waiting for a ticket (max_queue_wait; see _queue) ------------------------------------

    def _take_for_waiter(self) -> int:
        return self._tickets.try_take(self._limit)

    def _queue_changed_locked(self, waiting: int) -> None:
        if waiting:
            self._metrics._gate = CLOSED  # newcomers take the locked path, and queue behind

    def _queue_ops(self) -> tuple[TicketQueue, _Ops]:
        """The queue of calls waiting for a ticket, and what it needs of this circuit (see _queue)."""
        ops = _Ops(
            self._lock,
            self._limit,
            self._take_for_waiter,
            self._tickets.give_back,
            self._release,
            self._queue_changed_locked,
        )
        return self._queue, ops

    def _queue_admitted(self, in_use: int) -> None:
        """A call that waited got its ticket (``in_use`` tickets then): counted as executed."""
        with self._lock:
            self._metrics.record_executed(self._clock(), in_use)

    def _wait_for_ticket(self, start: int, settings: Any, ctx: Context | None) -> int:
        """A call admitted by the breaker found no ticket: wait up to ``max_queue_wait`` for one
        (a verdict: ``ADMITTED`` with the ticket taken and counted, or why not)."""
        clock = self._clock
        queue, ops = self._queue_ops()
        try:
            verdict, in_use = _wait_for_ticket(
                queue, ops, start, clock(), settings.max_queue_wait_ns, settings.timeout_ns, ctx, clock
            )
        except BaseException:
            # Interrupted while it waited (KeyboardInterrupt): a failure, as an interrupted run;
            # it left the queue and holds no ticket.
            end = clock()
            self._report(FAILURE, NO_EVENT, end, -1, (end - start) // _NS_PER_US, 0, False)
            raise
        if verdict == ADMITTED:
            self._queue_admitted(in_use)
        return verdict

    @property
    def queue_size(self) -> int:
        """Calls of this process waiting for a ticket now (``max_queue_wait``)."""
        return len(self._queue.waiters)

    def _report(
        self, event: int, fallback_event: int, now: int, run_us: int, total_us: int, trial: int, release: bool
    ) -> None:
        """Record one finished command (releasing its ticket if ``release``), then tell the collectors."""
        closed = reopened = False
        with self._lock:
            # The calls in flight as this one ends, itself included (its ticket may be back already).
            inflight = self._tickets.in_use + (0 if release else 1)
            if release:
                self._tickets.give_back()
                if self._queue.waiters:
                    self._queue.drain_locked(self._take_for_waiter, self._tickets.give_back)
                    self._queue_changed_locked(len(self._queue.waiters))
            # Only the trial of the current open episode closes the circuit (hystrix-go let any
            # success close it, even one that started before the circuit opened).
            if trial >= PROBE:
                self._probe_reported_locked(trial & ~FIRST_PROBE)
                verdict = self._probe_ended_locked(trial & ~FIRST_PROBE, event != SUCCESS, now, self._settings_obj)
                closed = verdict == "closed"
                reopened = verdict == "reopened"
            elif trial > 0 and self._open and trial == self._episode:
                if event == SUCCESS:
                    self._open = False
                    self._reopens = self._sleep_raw_ns = self._sleep_ns = 0
                    self._probes = 0
                    self._metrics.reset()
                    closed = True
                else:
                    reopened = True
                    self._reopen_locked(now, self._settings_obj)
            self._metrics.record(
                event, fallback_event, now, run_us, total_us, (self._settings_obj.slow_call_duration_ns + 999) // 1000
            )
            if self._limiter is not None:
                self._feed_limiter_locked(event, run_us, total_us, inflight)
            in_use = self._tickets.in_use
            self._open_gate_locked()
        if closed:
            _transitions.closed(self.name)
        elif reopened:
            _transitions.reopened(self.name)
        if closed or self._collectors:
            notify_collectors(
                self.name,
                self._collectors,
                closed,
                event,
                fallback_event,
                run_us,
                total_us,
                in_use,
                self._limit,
            )

    def _feed_limiter_locked(self, event: int, run_us: int, total_us: int, inflight: int) -> None:
        """One sample for the adaptive limiter (calls that ran: not rejected nor short-circuited, nor
        ended by their context); its new limit is the one admission reads."""
        rtt_us = run_us if run_us >= 0 else total_us
        limiter = self._limiter
        if limiter is not None and rtt_us >= 0 and event in _SAMPLED_EVENTS:
            self._limit = limiter.on_sample(rtt_us * 1000, inflight, event == TIMEOUT)

    def _finish(
        self,
        event: int,
        err: BaseException,
        start: int,
        run_us: int,
        trial: int,
        fallback: Callable[..., Any] | None,
        ctx: Context | None,
        release: bool,
    ) -> Any:
        """Complete a command that did not succeed: fallback, report, then return or raise.

        The ticket (if ``release``) goes back before the fallback runs, as in
        hystrix-go: the fallback is not the dependency and must not hold its slot.
        Must be called from the ``except`` clause that caught ``err`` when ``err``
        is run's own exception, so that a bare ``raise`` keeps its traceback. A bad request
        (an error ``ignore`` accepts) is raised without the fallback.
        """
        if fallback is None or event == BAD_REQUEST:
            self._report_end(event, NO_EVENT, start, run_us, trial, release)
            raise err
        if release:
            self._release()
        try:
            value = fallback(err) if ctx is None else fallback(ctx, err)
        except Exception as fallback_err:
            self._report_end(event, FALLBACK_FAILURE, start, run_us, trial, False)
            raise FallbackError(fallback_err, err) from fallback_err
        except BaseException:
            self._report_end(event, FALLBACK_FAILURE, start, run_us, trial, False)
            raise
        self._report_end(event, FALLBACK_SUCCESS, start, run_us, trial, False)
        return value

    def _report_end(self, event: int, fallback_event: int, start: int, run_us: int, trial: int, release: bool) -> None:
        """``_report`` for a command ending now that started at ``start``."""
        if start == NOT_STARTED:
            self._report(event, fallback_event, self._clock(), run_us, -1, trial, release)
        elif event == SHORT_CIRCUIT or event == REJECTED:
            # Never ran: counted at the second it was turned away, with no latency sample
            # (hystrix-go recorded zeros), and without reading the clock again.
            self._report(event, fallback_event, start, run_us, -1, trial, release)
        else:
            now = self._clock()
            self._report(event, fallback_event, now, run_us, (now - start) // _NS_PER_US, trial, release)

    # -- the semaphore-mode fast path ----------------------------------------------------

    def execute_args(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        fallback: Callable[..., Any] | None,
    ) -> Any:
        """Run ``function(*args, **kwargs)`` as one command; ``fallback(*args, err=err, **kwargs)``."""
        kw = kwargs or {}
        bound = None if fallback is None else lambda err: fallback(*args, err=err, **kw)
        if not args and not kw:
            return self.execute(function, bound)  # no arguments: no closure around the function
        return self.execute(lambda: function(*args, **kw), bound)

    def execute(self, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None) -> Any:
        """Run one command (``do()``): on this thread in semaphore mode, else on a worker."""
        # The lock-free path (see _gate); do() has a copy inlined: keep the two in step.
        pending = self._pending
        clock = self._clock
        start = clock()
        waiting = len(pending)  # before the gate: see _gate
        gate = self._metrics._gate
        held = self._held
        held.append(None)  # take a ticket
        if start >= (until := gate.until_ns) or waiting >= gate.budget or len(held) > gate.held_limit:
            held.pop()
            return self._execute_locked(start, run, fallback)
        self._admits.append(None)
        try:
            value = run()
        except BaseException as exc:
            held.pop()
            return self._failed(exc, start, 0, fallback, False)
        end = clock()
        held.pop()
        elapsed = end - start
        if end >= until or elapsed > gate.timeout_ns or type(value) is _COROUTINE:
            return self._succeeded_late(value, start, end, until, fallback)
        pending.append(elapsed // 1000)  # microseconds (a constant is faster than a global)
        return value

    def _execute_locked(
        self, start: int, run: Callable[[], Any], fallback: Callable[[BaseException], Any] | None
    ) -> Any:
        """``execute`` for a call the gate turned away: admission and outcome under the lock."""
        settings = self._settings_obj
        # Admission first, whatever the isolation: a call the circuit turns away costs the same
        # in thread and semaphore mode.
        verdict = self._acquire(start, settings)
        if verdict == REJECTED_VERDICT and settings.max_queue_wait_ns:
            verdict = self._wait_for_ticket(start, settings, None)
        if verdict < 0:
            event = turned_away_event(verdict)
            return self._finish(event, error_for(event), start, -1, 0, fallback, None, False)
        if not settings.semaphore:
            return _run_threaded(self, run, fallback, None, start, verdict, settings.timeout_ns)  # type: ignore[misc]
        try:
            value = run()
        except BaseException as exc:
            return self._failed(exc, start, verdict, fallback, True)
        end = self._clock()
        if type(value) is _COROUTINE:
            self._returned_coroutine(value, end, (end - start) // _NS_PER_US, verdict, True)
        return self._ended(value, None, start, end, start + settings.timeout_ns, verdict, fallback, None, True)

    def _ended(
        self,
        value: Any,
        error: Exception | None,
        start: int,
        end: int,
        timeout_at: int,
        verdict: int,
        fallback: Callable[..., Any] | None,
        ctx: Context | None,
        release: bool,
    ) -> Any:
        """Complete a command whose run ended at ``end``, returning ``value`` or raising ``error``, by
        :func:`outcome`'s rule (called from the ``except`` clause that caught ``error``, if any)."""
        run_us = (end - start) // _NS_PER_US
        settings = self._settings_obj
        try:
            event, err = outcome(error, end, timeout_at, ctx, settings.ignores, settings.is_failure, value)
        except BaseException:  # KeyboardInterrupt in an ignore/is_failure predicate: a failure, propagated
            self._report(FAILURE, NO_EVENT, end, run_us, run_us, verdict, release)
            raise
        if err is None:
            self._report(SUCCESS, NO_EVENT, end, run_us, run_us, verdict, release)
            return value
        # Only the events fasthystrix decided (timeout, context) have no run latency.
        run_us = run_us if event == FAILURE or err is error else -1
        return self._finish(event, err, start, run_us, verdict, fallback, ctx, release)

    def _failed(
        self,
        exc: BaseException,
        start: int,
        verdict: int,
        fallback: Callable[[BaseException], Any] | None,
        release: bool,
    ) -> Any:
        """Complete a command whose run raised ``exc`` (called from the ``except`` clause that caught it)."""
        end = self._clock()
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit...: count a failure, give the ticket back, propagate.
            self._report(
                FAILURE, NO_EVENT, end, (end - start) // _NS_PER_US, (end - start) // _NS_PER_US, verdict, release
            )
            raise  # exc: this runs inside the except clause that is handling it
        timeout_at = start + self._settings_obj.timeout_ns
        return self._ended(None, exc, start, end, timeout_at, verdict, fallback, None, release)

    def _returned_coroutine(self, coroutine: Any, end: int, run_us: int, trial: int, release: bool) -> NoReturn:
        """A sync run returned a coroutine: close it, count a failure (no fallback), raise ``TypeError``."""
        err = coroutine_returned(coroutine)
        self._report(FAILURE, NO_EVENT, end, run_us, run_us, trial, release)
        raise err

    def _not_callable(self, run: object) -> NoReturn:
        """Undo the lock-free admission of a ``do()`` whose run is not callable, then say so."""
        with self._lock:
            self._metrics._unadmit()
        try:
            check_arguments(self.name, run, None)
        except TypeError as err:
            raise err from None  # not "during handling of" calling run: it never ran
        raise AssertionError(f"{run!r} is callable")  # pragma: no cover - only called when it is not

    def _succeeded_late(
        self, value: Any, start: int, end: int, until: int, fallback: Callable[[BaseException], Any] | None
    ) -> Any:
        """Complete a lock-free success that ended in a later second (``until``: the end of the
        gate's), after the timeout, with a coroutine, or whose result ``is_failure`` must check
        (ticket given back)."""
        if type(value) is _COROUTINE:
            self._returned_coroutine(value, end, (end - start) // _NS_PER_US, 0, False)
        settings = self._settings_obj
        is_failure = settings.is_failure
        slow_ns = settings.slow_call_duration_ns
        if (
            is_failure is not None
            and end < until
            and end - start <= settings.timeout_ns
            and not (slow_ns and (end - start) // 1000 > (slow_ns + 999) // 1000)
        ):
            # On time, in the gate's second, not slow: only the result is left to check.
            try:
                err = failed_result(is_failure, value)
            except BaseException:  # KeyboardInterrupt in the predicate: a failure, propagated
                run_us = (end - start) // _NS_PER_US
                self._report(FAILURE, NO_EVENT, end, run_us, run_us, 0, False)
                raise
            if err is None:
                self._pending.append((end - start) // 1000)  # counted lock-free, as in execute()
                return value
            return self._finish(FAILURE, err, start, (end - start) // _NS_PER_US, 0, fallback, None, False)
        timeout_at = start + settings.timeout_ns
        return self._ended(value, None, start, end, timeout_at, 0, fallback, None, False)

    def execute_c(
        self, ctx: Context, run: Callable[[Context], Any], fallback: Callable[[Context, BaseException], Any] | None
    ) -> Any:
        """Run one command with a context (``do_c()``): ``run(ctx)``, ``fallback(ctx, err)``."""
        settings = self._settings_obj
        clock = self._clock
        start = clock()
        kind = ctx._done_kind(start)
        if kind is not None:
            # Already done: nothing runs (hystrix-go raced its two goroutines here).
            event = CONTEXT_CANCELED if kind == "canceled" else CONTEXT_DEADLINE_EXCEEDED
            return self._finish(event, error_for(event), NOT_STARTED, -1, 0, fallback, ctx, False)
        verdict = self._acquire(start, settings)
        if verdict == REJECTED_VERDICT and settings.max_queue_wait_ns:
            verdict = self._wait_for_ticket(start, settings, ctx)
        if verdict < 0:
            event = turned_away_event(verdict)
            return self._finish(event, error_for(event), start, -1, 0, fallback, ctx, False)
        if not settings.semaphore:
            return _run_threaded(self, run, fallback, ctx, start, verdict, settings.timeout_ns)  # type: ignore[misc]
        timeout_at = start + settings.timeout_ns
        child = Context(ctx, timeout_at)
        try:
            value = run(child)
        except BaseException as exc:
            end = clock()
            child.cancel()
            if not isinstance(exc, Exception):
                self._report(
                    FAILURE, NO_EVENT, end, (end - start) // _NS_PER_US, (end - start) // _NS_PER_US, verdict, True
                )
                raise
            return self._ended(None, exc, start, end, timeout_at, verdict, fallback, ctx, True)
        end = clock()
        child.cancel()
        if type(value) is _COROUTINE:
            self._returned_coroutine(value, end, (end - start) // _NS_PER_US, verdict, True)
        return self._ended(value, None, start, end, timeout_at, verdict, fallback, ctx, True)

    def _after_fork_in_child(self) -> None:
        """In a forked child, before any other thread runs: no ticket held (see the pool's).

        A shared circuit's tickets are the host's: ``_shared``'s fork handler gives the child a
        process slot of its own instead (``_attach_slot``). No call waits in the child (the waiting
        threads and event loops are the parent's): a new, empty queue."""
        self._queue = TicketQueue()
        if self._shared is not None:
            return
        self._tickets._after_fork_in_child()
        self._held = self._tickets._held
        if self._open and self._probes:
            # The half-open phase's trials run on the parent's threads: none reports here. Open
            # again (a new phase after the sleep window), rather than wait for them forever.
            self._reopen_probes_locked(self._clock(), self._settings_obj)


class CommandFunction:
    """A sync function decorated with ``@command``: each call runs as command ``command_name``."""

    def __init__(self, command_name: str, function: Callable[..., Any], fallback: Callable[..., Any] | None = None):
        self._command_name = command_name
        self._function = function
        self._fallback = fallback

    @property
    def command_name(self) -> str:
        """The command (circuit) every call of this function runs as."""
        return self._command_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        circuit = _circuits.get(self._command_name)
        if circuit is None:
            circuit = _get_or_create(self._command_name)  # type: ignore[misc]
        return circuit.execute_args(self._function, args, kwargs or None, self._fallback)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorated methods bind like functions do.
        if instance is None:
            return self
        return MethodType(self, instance)

    def __repr__(self) -> str:
        return f"<command {self._command_name!r} of {self._function!r}>"
