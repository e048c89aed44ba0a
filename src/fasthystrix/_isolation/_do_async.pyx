# cython: language_level=3, boundscheck=True, wraparound=False, freethreading_compatible=True
"""``do_async`` as a compiled awaitable (the compiled twin of ``_do_async_py``).

``do_async(name, run, fallback)`` returns a :class:`DoAsync`: an object with the
coroutine protocol (``send``, ``throw``, ``close``, ``__await__``) that runs the
command when awaited. Its common path is C: the circuit's admission, ``run``'s steps
(``PyIter_Send``, as a task steps a coroutine), and a success in time, counted by
the circuit's ``report_c``. Every other ending (a failure, a timeout, the caller's
cancellation, a result ``is_failure`` must judge, a call not admitted at once) is
handed to the coroutines of ``_do_async_py`` (:func:`concluded`, :func:`not_admitted`),
which both twins share, so both count and answer alike.

Why an object and not a coroutine: a coroutine of its own (a frame, its creation,
its ``try``) and a deadline per call were most of what ``do_async`` cost. The
deadline is armed only when ``run`` first waits (its first step yields to the event
loop): a ``run`` that finishes in its first step cannot be cancelled by a timer,
which only fires when the task yields, so it needs none. A late success is still
a timeout: the elapsed time is checked at the end, as ``do()`` checks it.
"""

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport fh_load_relaxed
from fasthystrix._core._circuit cimport ADMITTED, CircuitBreaker

import asyncio
import collections.abc
import inspect
import types

from fasthystrix._core._outcomes import COROUTINE as _COROUTINE, mark_coroutine_function

__all__ = ["do_async"]

cdef extern from "Python.h":
    PyObject *PyErr_Occurred()
    PySendResult PyIter_Send(object iterator, object arg, PyObject **presult)
    bint PyIter_Check(object o)

cdef extern from "_capi.h":
    object fh_own(PyObject *o)
    object fh_fetch()
    object fh_lookup(object table, object name)  # a strong reference: the command owns its circuit

cdef extern from "_awaitable.h":
    ctypedef PyObject *(*fh_step_t)(PyObject *self, int *finished)
    ctypedef PyObject *(*fh_send_t)(PyObject *self, PyObject *value, int *finished)
    ctypedef PyObject *(*iternextfunc)(PyObject *self)
    PyObject *fh_iternext(fh_step_t step, PyObject *self)
    PyObject *fh_await_iterator(object o)
    void fh_install_iternext(object type, iternextfunc next)

cdef extern from *:
    """
    /* co_flags bit of a generator-based coroutine (types.coroutine): awaitable as it is. */
    #define FH_CO_ITERABLE_COROUTINE 0x0100
    """
    const int FH_CO_ITERABLE_COROUTINE

# The event and "no fallback event" codes of _events (tests/test_do_async_awaitable.py checks them).
cdef enum:
    _SUCCESS = 0
    _FAILURE = 1
    _NO_EVENT = -1

cdef enum:
    _NEW = 0        # not started: nothing acquired
    _RUNNING = 1    # admitted, run's awaitable in progress (``iterator``), the ticket held
    _DELEGATED = 2  # a coroutine of _do_async_py finishes the command (``delegate``)
    _DONE = 3

cdef object _CancelledError = asyncio.CancelledError
cdef object _current_task = asyncio.current_task
cdef object _get_running_loop = asyncio.get_running_loop
cdef object _GeneratorType = types.GeneratorType
cdef object _isawaitable = inspect.isawaitable
cdef object _NOT_IN_TASK = "do_async() must be awaited in an asyncio task"

# The registry's table and creator, and the endings _do_async_py holds: imported at the first call
# (they import the registry, which imports _impl; this module must import without them, as
# _integrations/_asgi_core cimports it while _impl chooses the implementation).
cdef object _circuits = None
cdef object get_or_create = None
cdef object NotAwaitable = None
cdef object check = None
cdef object concluded = None
cdef object deadlines_of = None
cdef object not_admitted = None


cdef int _import_the_python_side() except -1:
    global _circuits, get_or_create, NotAwaitable, check, concluded, deadlines_of, not_admitted
    from fasthystrix._isolation import _do_async_py
    from fasthystrix import _registry
    NotAwaitable = _do_async_py.NotAwaitable
    check = _do_async_py.check
    concluded = _do_async_py.concluded
    deadlines_of = _do_async_py.deadlines_of
    not_admitted = _do_async_py.not_admitted
    get_or_create = _registry.get_or_create
    _circuits = _registry._circuits
    return 0


cdef class Awaitable:
    """The coroutine protocol (``__await__``, ``send``, ``throw``, ``close``) over one C method,
    :meth:`step`: what the compiled awaitables have in common. ``await`` steps it through its
    ``tp_iternext`` (:func:`awaitable_next`, installed on each concrete type)."""

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        cdef bint finished = False
        result = self.step(None, None, &finished)
        if finished:
            raise StopIteration(result)
        return result

    def send(self, value):
        """Resume with ``value`` (``None`` to start): what it waits on next, or ``StopIteration``."""
        cdef bint finished = False
        result = self.step(value, None, &finished)
        if finished:
            raise StopIteration(result)
        return result

    def throw(self, typ, val=None, tb=None):
        """Raise an exception where it waits (a cancellation goes into what it awaits)."""
        cdef bint finished = False
        if val is None:
            exc = typ() if isinstance(typ, type) else typ
        elif isinstance(val, BaseException):
            exc = val
        else:
            exc = typ(val)
        if tb is not None:
            exc = exc.with_traceback(tb)
        result = self.step(None, exc, &finished)
        if finished:
            raise StopIteration(result)
        return result

    def close(self):
        """Stop it where it waits: what it awaits sees ``GeneratorExit``."""
        try:
            self.throw(GeneratorExit)
        except (GeneratorExit, StopIteration):
            return
        raise RuntimeError(f"{type(self).__name__} ignored GeneratorExit")

    cdef object step(self, object value, object exc, bint *finished):
        """One step: what it waits on, or (``finished`` set) its result. ``exc``: thrown in."""
        raise NotImplementedError


cdef object _awaitable_send(object awaitable, object value, int *finished):
    return (<Awaitable>awaitable).step(value, None, <bint *>finished)


cdef object send_into(object iterator, object value, object exc, PySendResult *sent):
    """One step of ``iterator`` (``send(value)``, or ``throw(exc)``): what it yielded, returned or
    raised, and which in ``sent``. Never raises: an error is returned."""
    cdef PyObject *result = NULL
    cdef int finished = 0
    if exc is None:
        if isinstance(iterator, Awaitable):
            # A compiled awaitable (the middleware's command and its run): its step itself, rather
            # than through its tp_iternext and back, with the result in a StopIteration.
            result = (<fh_send_t>_awaitable_send)(<PyObject *>iterator, <PyObject *>value, &finished)
            if result is NULL:
                sent[0] = PYGEN_ERROR
                return fh_fetch()
            sent[0] = PYGEN_RETURN if finished else PYGEN_NEXT
            return fh_own(result)
        sent[0] = PyIter_Send(iterator, value, &result)
        # A new reference, or NULL with the exception set (taken at once: no traceback entry of ours).
        return fh_own(result) if sent[0] != PYGEN_ERROR else fh_fetch()
    try:
        yielded = iterator.throw(exc)
    except StopIteration as stop:
        sent[0] = PYGEN_RETURN
        return stop.value
    except BaseException as error:
        sent[0] = PYGEN_ERROR
        return error
    sent[0] = PYGEN_NEXT
    return yielded


cdef object _awaitable_step(object awaitable, int *finished):
    return (<Awaitable>awaitable).step(None, None, <bint *>finished)


cdef PyObject *awaitable_next(PyObject *awaitable) noexcept:
    """The ``tp_iternext`` of a compiled awaitable: the slot `await` steps (the SEND opcode calls it
    when sending None), ending as a coroutine ends (_awaitable.h)."""
    return fh_iternext(<fh_step_t>_awaitable_step, awaitable)


# No @cython.freelist: an object taken from a freelist keeps the "finalized" mark of the one
# before it, so its __del__ would never run (test_stopped_while_waiting..., "collected", fails).
@cython.final
cdef class DoAsync(Awaitable):
    """One ``do_async`` call, run when awaited (``await``, a task, ``asyncio.run``).

    Like a coroutine it runs once: awaiting it again raises ``RuntimeError``. Nothing is
    acquired before its first step; dropped while ``run`` waits, it is closed (``run``
    sees ``GeneratorExit``, the command counts a failure and its ticket comes back), as a
    coroutine is.
    """

    cdef object name
    cdef object run
    cdef object fallback
    cdef CircuitBreaker circuit
    cdef object iterator   # run's awaitable, stepped while _RUNNING
    cdef object delegate   # the coroutine that finishes the command while _DELEGATED
    cdef object task       # the task the deadline cancels, once armed
    cdef object deadlines
    cdef object entry      # the armed deadline, or None
    cdef int64_t start
    cdef int64_t verdict
    cdef int state
    cdef bint executing    # a step is in progress: a re-entrant one would step run twice at once

    def __del__(self):
        if self.state == _RUNNING or self.state == _DELEGATED:
            self.close()

    @property
    def __name__(self):
        return "do_async"

    @property
    def __qualname__(self):
        return "do_async"

    @property
    def cr_running(self):
        return False

    def __repr__(self):
        return f"<do_async {self.name!r} at {id(self):#x}>"

    cdef object step(self, object value, object exc, bint *finished):
        if self.executing:
            raise ValueError("do_async() already executing")
        self.executing = True
        try:
            return self.step_once(value, exc, finished)
        finally:
            self.executing = False

    cdef object step_once(self, object value, object exc, bint *finished):
        if self.state == _RUNNING:
            return self.resume(value, exc, finished)
        if self.state == _NEW:
            if exc is not None:
                self.state = _DONE  # thrown in before it started: nothing acquired, nothing to count
                raise exc
            if value is not None:
                raise TypeError("can't send non-None value to a just-started do_async()")
            return self.begin(finished)
        if self.state == _DELEGATED:
            return self.step_delegate(value, exc, finished)
        if exc is not None:
            raise exc
        raise RuntimeError("cannot reuse already awaited do_async()")

    cdef object begin(self, bint *finished):
        """Admission, then run's first step (check() inlined for the common case, as in the twin)."""
        cdef CircuitBreaker circuit
        cdef int64_t start, verdict
        cdef PyObject *found_iterator
        name, run, fallback = self.name, self.run, self.fallback
        self.state = _DONE  # until admitted: an error below leaves nothing to finish
        if _circuits is None:
            _import_the_python_side()
        if type(name) is str and callable(run) and (fallback is None or callable(fallback)):
            found = fh_lookup(_circuits, name)
            if found is None:
                found = get_or_create(name)
        else:
            found = check(name, run, fallback)
        circuit = <CircuitBreaker?>found
        self.circuit = circuit
        start = circuit.now()
        verdict = circuit.acquire_c(start)
        self.start = start
        self.verdict = verdict
        if verdict < 0:
            return self.hand_over(not_admitted(circuit, start, verdict, run, fallback), finished)
        self.state = _RUNNING  # from here the ticket is held: every way out goes through end()
        try:
            awaitable = run()
            if type(awaitable) is _COROUTINE:
                iterator = awaitable
            elif type(awaitable) is _GeneratorType and awaitable.gi_code.co_flags & FH_CO_ITERABLE_COROUTINE:
                iterator = awaitable
            else:
                # What `await` takes (the type's am_await: a class with __await__), as the twin's
                # inspect.isawaitable() does without its ABC check.
                found_iterator = fh_await_iterator(awaitable)
                if found_iterator is NULL:
                    if PyErr_Occurred():
                        raise fh_fetch()
                    if not _isawaitable(awaitable):
                        raise NotAwaitable(awaitable)
                    iterator = awaitable.__await__()  # an Awaitable by registration alone
                else:
                    iterator = fh_own(found_iterator)
                if not PyIter_Check(iterator):
                    raise TypeError(f"__await__() returned non-iterator of type '{type(iterator).__name__}'")
        except BaseException as error:
            return self.end(PYGEN_ERROR, None, error, finished)
        self.iterator = iterator
        return self.resume(None, None, finished)

    cdef object resume(self, object value, object exc, bint *finished):
        """One step of run's awaitable: what it waits on, or the command's end."""
        cdef PySendResult sent
        outcome = send_into(self.iterator, value, exc, &sent)
        if sent == PYGEN_NEXT:
            if self.entry is None:
                self.arm()
            return outcome
        if sent == PYGEN_RETURN:
            return self.end(PYGEN_RETURN, outcome, None, finished)
        return self.end(PYGEN_ERROR, None, outcome, finished)

    cdef arm(self):
        """run waits for the first time: the deadline, what is left of the timeout from ``start``."""
        cdef CircuitBreaker circuit = self.circuit
        try:
            try:
                task = _current_task()
            except RuntimeError:  # no running loop: driven by hand
                task = None
            if task is None:
                raise RuntimeError(_NOT_IN_TASK)
            loop = _get_running_loop()
            deadlines = deadlines_of(loop)
            left_ns = self.start + fh_load_relaxed(&circuit.lim.timeout_ns) - circuit.now()
            entry = deadlines.add(loop.time() + left_ns / 1e9, task)
        except BaseException:
            # Not in a task (driven by hand: nothing could enforce the timeout), or out of memory
            # on the way: the command ends here, a failure, its ticket back.
            iterator = self.iterator
            self.iterator = None
            self.state = _DONE
            stop_admitted(circuit, self.start, self.verdict, iterator)
            raise
        self.entry = entry
        self.deadlines = deadlines
        self.task = task

    cdef object end(self, PySendResult sent, object value, object error, bint *finished):
        """run's awaitable has ended (returned ``value`` or raised ``error``): count it and answer."""
        cdef bint timed_out = False
        self.iterator = None
        if self.entry is not None:
            timed_out = self.deadlines.done(self.entry)
            self.entry = None
        self.state = _DONE
        rest = conclusion(self.circuit, self.start, self.verdict, sent, value, error, timed_out, self.task, self.fallback)
        if rest is None:
            finished[0] = True
            return value
        return self.hand_over(rest, finished)

    cdef object hand_over(self, object coroutine, bint *finished):
        self.delegate = coroutine
        self.state = _DELEGATED
        return self.step_delegate(None, None, finished)

    cdef object step_delegate(self, object value, object exc, bint *finished):
        cdef PySendResult sent
        outcome = send_into(self.delegate, value, exc, &sent)
        if sent == PYGEN_NEXT:
            return outcome
        self.delegate = None
        self.state = _DONE
        if sent == PYGEN_RETURN:
            finished[0] = True
            return outcome
        raise outcome


collections.abc.Coroutine.register(DoAsync)


def do_async(name, run, fallback=None):
    """Await ``run()`` as command ``name``; the asyncio twin of :func:`fasthystrix.do`.

    ``run`` is an async function (or any callable returning an awaitable) taking no
    arguments; ``fallback(err)`` may be sync or async. At the timeout ``run`` is
    cancelled and the command answers with ``TimeoutError`` or the fallback.

    A sync ``run`` (one that returns something not awaitable) raises ``TypeError``
    pointing to :func:`fasthystrix.do`: it has run by the time its value shows it, so
    the command counts as a failure, its ticket comes back, and no fallback runs.
    """
    cdef DoAsync call = DoAsync.__new__(DoAsync)  # state _NEW: zeroed memory
    call.name = name
    call.run = run
    call.fallback = fallback
    return call


cdef object conclusion(
    CircuitBreaker circuit,
    int64_t start,
    int64_t verdict,
    PySendResult sent,
    object value,
    object error,
    bint timed_out,
    object task,
    object fallback,
):
    """The end of an admitted command (admitted at ``start`` with ticket ``verdict``) whose ``run``
    has just returned ``value`` (``sent`` is ``PYGEN_RETURN``) or raised ``error``: ``None`` when it
    was a success in time, counted here; else the coroutine (``concluded``) that counts it and
    answers. ``DoAsync`` ends here, and the ASGI middleware's request that its first step served."""
    cdef int64_t end, elapsed_us
    end = circuit.now()
    if (
        sent == PYGEN_RETURN
        and not timed_out
        and not circuit.slow_success
        and end - start <= fh_load_relaxed(&circuit.lim.timeout_ns)
    ):
        # A success in time with nothing to judge it: outcome()'s rule, as do() inlines it.
        elapsed_us = (end - start) // 1000
        circuit.report_c(_SUCCESS, _NO_EVENT, end, elapsed_us, elapsed_us, verdict, True)
        return None
    if concluded is None:
        _import_the_python_side()
    return concluded(circuit, start, end, verdict, value, error, timed_out, task, fallback)


cdef int stop_admitted(CircuitBreaker circuit, int64_t start, int64_t verdict, object iterator) except -1:
    """An admitted command that cannot go on (see ``arm``, ``command_running``): a failure counted
    and its ticket back first, whatever fails after (the clock, stopping ``iterator``), then
    ``iterator`` (``run``'s awaitable, waiting) stopped."""
    cdef int64_t end = start
    try:
        end = circuit.now()
    finally:
        try:
            circuit.report_c(_FAILURE, _NO_EVENT, end, -1, (end - start) // 1000, verdict, True)
        finally:
            iterator.close()
    return 0


cdef object turned_away(CircuitBreaker circuit, int64_t start, int64_t verdict, object run):
    """The coroutine that finishes a call without fallback that ``circuit.acquire_c`` did not admit
    at once (``verdict < 0``): ``not_admitted``, as ``DoAsync`` hands it over."""
    if not_admitted is None:
        _import_the_python_side()
    return not_admitted(circuit, start, verdict, run, None)


cdef object command_running(object name, CircuitBreaker circuit, object iterator, int64_t start, int64_t verdict):
    """``do_async(name, run)`` taken over after its first step, for a caller in C that admitted the
    call itself (``circuit.acquire_c(start)`` gave ``verdict``) and stepped ``run``'s awaitable
    ``iterator`` once, which now waits: the rest as ``DoAsync`` would do it (the deadline armed
    now, as it is when ``run`` first waits). The ticket is the command's from here, even when this
    raises (out of memory, or no task to arm a deadline in: the command has counted a failure
    and stopped ``run``)."""
    cdef DoAsync call
    try:
        call = DoAsync.__new__(DoAsync)
        if deadlines_of is None:
            _import_the_python_side()
    except BaseException:
        # No DoAsync to take it over (out of memory): the command ends here, its ticket back.
        stop_admitted(circuit, start, verdict, iterator)
        raise
    call.name = name
    call.run = iterator
    call.circuit = circuit
    call.iterator = iterator
    call.start = start
    call.verdict = verdict
    call.state = _RUNNING
    call.arm()
    return call


fh_install_iternext(DoAsync, awaitable_next)

do_async = mark_coroutine_function(do_async)  # awaited like an async function
