# cython: language_level=3, boundscheck=True, wraparound=False, freethreading_compatible=True
"""The per-request hot path of the ASGI middleware in C (the compiled twin of ``_asgi_core_py``).

The same two cores as the twin, whose docstring tells what each does, completed by the
same mixins of ``asgi.py``. What C changes: the app's ``send()`` and ``receive()`` return
ready awaitables (:class:`Ready`) instead of coroutines, the server's ``send()`` is stepped
with ``PyIter_Send`` (no ``StopIteration`` to raise and catch when it takes a message at
once), and :meth:`ExchangeCore.run` is an awaitable (:class:`_Run`) that steps the app
once in C and hands it to the mixin's ``_run_from`` coroutine if it has to wait.

One request's task touches its exchange (the pump is a task of the same loop), so nothing
here needs a lock.
"""

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from fasthystrix._core._circuit cimport CircuitBreaker
from fasthystrix._integrations._door cimport door_open

import asyncio
from collections import deque

from fasthystrix._core._outcomes import COROUTINE as _COROUTINE, mark_coroutine_function
from fasthystrix._integrations._asgi_core_py import ENDED, Resumed

# The twin's sentinel, held in C: the hot path compares with it several times a request.
cdef object _ENDED = ENDED

__all__ = ["ENDED", "ExchangeCore", "OutboxCore", "Resumed", "serve_asgi"]

from fasthystrix._isolation._do_async cimport (
    PYGEN_ERROR,
    PYGEN_NEXT,
    PYGEN_RETURN,
    Awaitable,
    PySendResult,
    awaitable_next,
    command_running,
    conclusion,
    send_into,
    turned_away,
)

cdef extern from "Python.h":
    PySendResult PyIter_Send(object iterator, object arg, PyObject **presult)

cdef extern from "_capi.h":
    object fh_own(PyObject *o)
    object fh_fetch()

cdef extern from *:
    """
    /* a == b for `b` an exact str: 1 or 0, or -1 when `a` is not an exact str (then ask `==`).
     * Cython's own str == str calls PyUnicode_Compare, which orders the two and so reads their
     * common prefix ("http.response." in every message type); equal strings have equal lengths
     * and kinds, which this compares first, as str's own == does. */
    static inline int fh_str_eq(PyObject *a, PyObject *b) {
        Py_ssize_t length;
        if (a == b)
            return 1;
        if (!PyUnicode_CheckExact(a))
            return -1;
        length = PyUnicode_GET_LENGTH(a);
        if (length != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b))
            return 0;
        return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)length * PyUnicode_KIND(a)) == 0;
    }

    /* An instance of `type` as type_call() makes it, without __init__ (the caller sets the fields). */
    static PyObject *fh_type_new(PyObject *type, PyObject *no_args) {
        return ((PyTypeObject *)type)->tp_new((PyTypeObject *)type, no_args, NULL);
    }
    """
    object fh_type_new(object type, tuple no_args)
    int fh_str_eq(object a, str b)

cdef extern from "_awaitable.h":
    ctypedef PyObject *(*iternextfunc)(PyObject *self)
    void fh_install_iternext(object type, iternextfunc next)

cdef object _ensure_future = asyncio.ensure_future
cdef object _EMPTY = b""
cdef str _TYPE = "type"
cdef str _BODY = "body"
cdef str _MORE_BODY = "more_body"
cdef str _START = "http.response.start"
cdef str _RESPONSE_BODY = "http.response.body"
cdef str _TRAILERS = "http.response.trailers"
cdef str _PATHSEND = "http.response.pathsend"


cdef inline bint _is(object value, str constant) except -1:
    """``value == constant``: a message's type, a scope's, an HTTP version (see fh_str_eq)."""
    cdef int equal = fh_str_eq(value, constant)
    if equal < 0:
        return value == constant
    return equal


cdef inline object _get(object mapping, object key, object default):
    """``mapping.get(key, default)``, without the method call when it is a dict (servers' scopes,
    apps' messages)."""
    if type(mapping) is dict:
        return (<dict>mapping).get(key, default)
    return mapping.get(key, default)


@cython.final
cdef class Ready(Awaitable):
    """An awaitable that is done: awaiting it returns ``value``, or raises ``error``.

    What the app's ``send()`` returns when the message is handed over (``READY``: one for
    all), and its ``receive()`` when it replays the body read before the command.
    """

    cdef readonly object value
    cdef readonly object error

    cdef object step(self, object value, object exc, bint *finished):
        if exc is not None:
            raise exc
        if self.error is not None:
            raise self.error
        finished[0] = True
        return self.value


cdef Ready _ready(object value, object error):
    cdef Ready ready = Ready.__new__(Ready)
    ready.value = value
    ready.error = error
    return ready


cdef Ready READY = _ready(None, None)


fh_install_iternext(Ready, awaitable_next)


cdef class OutboxCore:
    """The app's response messages on their way to the client: :meth:`put` never waits for the client.

    The compiled twin of ``_asgi_core_py.OutboxCore``, whose docstring tells how: ``put`` in C.
    """

    cdef public object _send
    cdef public object _queue
    cdef public object _task
    cdef public bint _raised
    cdef public Py_ssize_t buffered
    cdef public object error

    def __init__(self, send):
        self._send = send

    cpdef put(self, message):
        """Hand ``message`` to the server's ``send()``, or queue it behind the pump."""
        cdef PyObject *result = NULL
        cdef PySendResult sent
        cdef Py_ssize_t size
        if self.error is not None:
            self._raised = True
            raise self.error
        if self._task is not None:
            # The pump is waiting for the client: queue behind it, to keep the order.
            self._queue.append(message)
            self.buffered += len(_get(message, _BODY, _EMPTY))
            return None
        # One step of the server's send(), on the caller's task, as awaiting it would take.
        awaitable = self._send(message)
        sending = awaitable if type(awaitable) is _COROUTINE else awaitable.__await__()
        sent = PyIter_Send(sending, None, &result)
        if sent == PYGEN_RETURN:
            fh_own(result)  # the send's return value, dropped
            return None  # taken without waiting
        if sent == PYGEN_ERROR:
            error = fh_fetch()
            self._raised = True
            self.error = error
            raise error
        blocked_on = fh_own(result)
        size = len(_get(message, _BODY, _EMPTY))
        self.buffered += size
        if self._queue is None:
            self._queue = deque()
        self._task = _ensure_future(self._pump(Resumed(sending, blocked_on), size))
        return None


cdef class ExchangeCore(OutboxCore):
    """One request's run of the app: its body to replay, the response status seen so far, whether it is complete.

    The compiled twin of ``_asgi_core_py.ExchangeCore``: ``send``, ``receive`` and ``run``'s
    first step in C.
    """

    cdef public object app
    cdef public object app_steps
    cdef public object body
    cdef public Py_ssize_t buffer_size
    cdef public bint complete
    cdef public bint detached
    cdef public bint disconnected
    cdef public object is_failure
    cdef public object late_error
    cdef public object raised
    cdef public object receive_upstream
    cdef public object scope
    cdef public bint started
    cdef public object status
    cdef public bint trailers
    cdef public object waiting
    cdef public object wake

    def __init__(self, app, scope, body, receive, send, Py_ssize_t buffer_size, is_failure):
        _fill_exchange(self, app, scope, body, receive, send, buffer_size, is_failure)

    @cython.always_allow_keywords(False)  # METH_NOARGS / METH_O: no keyword parsing
    def receive(self):
        """The app's ``receive()``: the body read before the command, whole; then the client's messages."""
        body = self.body
        if body is not None:
            self.body = None
            return _ready({"type": "http.request", "body": body, "more_body": False}, None)
        return self._receive_upstream()

    @cython.always_allow_keywords(False)  # METH_NOARGS / METH_O: no keyword parsing
    def send(self, message):
        """The app's ``send()``: never waits for the client while the command runs."""
        cdef bint ended
        try:
            kind = message[_TYPE]
            if _is(kind, _START):
                self.status = int(message["status"])
                self.started = True
                self.trailers = bool(_get(message, "trailers", False))
            OutboxCore.put(self, message)  # no subclass overrides it: the C function, not a lookup
        except BaseException as error:
            if isinstance(error, OSError):
                # The client went away (ASGI 2.4 servers raise an OSError): not the app's failure.
                self.disconnected = True
            return _ready(None, error)  # raised where the app awaits, as a coroutine would raise it
        if _is(kind, _RESPONSE_BODY):
            ended = not _get(message, _MORE_BODY, False) and not self.trailers
        elif _is(kind, _START):
            ended = False
        else:
            ended = (_is(kind, _TRAILERS) and not _get(message, "more_trailers", False)) or _is(kind, _PATHSEND)
        if ended:
            self.complete = True
            if self.wake is not None:
                self.response_ended()
            return READY
        if not self.detached:
            if self.buffered <= self.buffer_size:
                return READY  # the command goes on, the client's pace aside
            self.detached = True
            self.response_ended()
        return self._at_client_pace()

    def run(self):
        """The command (see the twin): an awaitable that steps the app once, then hands it to
        ``_run_from`` if it has to wait before its response is complete."""
        return _run_of(self)


cdef _Run _run_of(ExchangeCore exchange):
    cdef _Run run = _Run.__new__(_Run)
    run.exchange = exchange
    return run


cdef int _fill_exchange(
    ExchangeCore exchange, app, scope, body, receive, send, Py_ssize_t buffer_size, is_failure
) except -1:
    """``ExchangeCore.__init__``'s fields (``_new_exchange`` sets them without the call)."""
    exchange._send = send
    exchange.app = app
    exchange.is_failure = is_failure
    exchange.scope = scope
    exchange.body = body
    exchange.receive_upstream = receive
    exchange.buffer_size = buffer_size
    exchange.status = 0
    exchange.waiting = _ENDED
    return 0


cdef ExchangeCore _new_exchange(
    object exchange_type, object app, object scope, object receive, object send, Py_ssize_t buffer_size, object is_failure
):
    """``exchange_type(app, scope, None, receive, send, buffer_size, is_failure)`` without the
    call's argument parsing: ``__init__``'s fields, set here. ``exchange_type`` is ExchangeCore
    completed by mixins that add no ``__init__`` (``asgi._Exchange``; a test checks it)."""
    cdef ExchangeCore exchange = <ExchangeCore?>fh_type_new(exchange_type, ())
    _fill_exchange(exchange, app, scope, None, receive, send, buffer_size, is_failure)
    return exchange


@cython.final
cdef class _Run(Awaitable):
    """``ExchangeCore.run()`` awaited: its first step in C, the rest (if any) the mixin's coroutine."""

    cdef ExchangeCore exchange
    cdef object delegate
    cdef int state  # 0: not started, 1: delegated, 2: done

    def __call__(self):
        """Itself: the ``run`` of the command that awaits it, should it wait for a ticket."""
        return self

    cdef object step(self, object value, object exc, bint *finished):
        cdef PySendResult sent
        if self.state == 1:
            outcome = send_into(self.delegate, value, exc, &sent)
            if sent == PYGEN_NEXT:
                return outcome
            self.delegate = None
            self.state = 2
            if sent == PYGEN_ERROR:
                raise outcome
            finished[0] = True
            return outcome
        if self.state == 2:
            if exc is not None:
                raise exc
            raise RuntimeError("cannot reuse an exchange's finished run()")
        self.state = 2
        if exc is not None:
            raise exc  # thrown in before it started: the app never ran
        return self.first_step(finished)

    cdef object first_step(self, bint *finished):
        cdef PySendResult sent
        outcome = _app_first_step(self.exchange, &sent)
        if sent == PYGEN_NEXT:
            return _waits(self, outcome).step(None, None, finished)
        if sent == PYGEN_ERROR:
            raise outcome
        finished[0] = True
        return None


cdef _Run _waits(_Run run, object yielded):
    """``run`` once its app has waited (``yielded``) before its response is complete: the rest is
    the mixin's ``_run_from``, which ``run`` steps from now on."""
    run.delegate = run.exchange._run_from(yielded)
    run.state = 1
    return run


cdef object _app_first_step(ExchangeCore exchange, PySendResult *sent):
    """The app's first step, which a request's command takes (``_Run``'s, or the request's own, which
    makes a ``_Run`` only when the app waits): ``PYGEN_RETURN`` when the command is over (the app
    returned, or completed its response and waits for what comes after it), ``PYGEN_NEXT`` and
    what the app yielded when it waits before its response is complete (then ``_run_from`` goes
    on), ``PYGEN_ERROR`` and the command's error. Never raises: an error is returned."""
    cdef PyObject *result = NULL
    cdef PySendResult app_sent
    try:
        app_steps = exchange.app(exchange.scope, exchange.receive, exchange.send)
        if type(app_steps) is not _COROUTINE:
            app_steps = app_steps.__await__()
        exchange.app_steps = app_steps
        app_sent = PyIter_Send(app_steps, None, &result)
        if app_sent == PYGEN_RETURN:
            fh_own(result)  # the app's return value, dropped
            exchange.waiting = _ENDED
        elif app_sent == PYGEN_ERROR:
            exchange.waiting = _ENDED
            exchange._failed(fh_fetch())  # raises, or keeps an error raised after the response
        else:
            yielded = fh_own(result)
            if not exchange.complete and not exchange.detached:
                sent[0] = PYGEN_NEXT
                return yielded
            exchange.waiting = yielded
        # _check_response's common case inlined: a complete response whose status is no failure.
        if not ((exchange.complete or exchange.detached) and exchange.is_failure is None and exchange.status < 500):
            exchange._check_response()
    except BaseException as error:
        sent[0] = PYGEN_ERROR
        return error
    sent[0] = PYGEN_RETURN
    return None


fh_install_iternext(_Run, awaitable_next)


# -- the request ---------------------------------------------------------------------------

# The registry's table: imported at the first request (the registry imports _impl, which imports
# this module).
cdef object _circuits = None
cdef bytes _CONTENT_LENGTH = b"content-length"
cdef bytes _TRANSFER_ENCODING = b"transfer-encoding"


@mark_coroutine_function
def serve_asgi(self, scope, receive, send):
    """``CircuitBreakerMiddleware.__call__``: the request, as an awaitable that serves the common case
    in C (an HTTP request whose command is known, its circuit closed with a ticket free, no body)
    and hands any other to the middleware's ``_serve`` (and a command that did not simply succeed
    to its ``_ended``)."""
    cdef _Serve serve = _Serve.__new__(_Serve)
    serve.middleware = self
    serve.scope = scope
    serve.server_receive = receive
    serve.server_send = send
    return serve


cdef bint _bodiless(object scope) except -1:
    """``asgi._bodiless``: HTTP/1.x without Content-Length or Transfer-Encoding, or a Content-Length of 0."""
    cdef object key
    for key, value in _get(scope, "headers", ()):
        if type(key) is bytes:
            if <bytes>key == _CONTENT_LENGTH:
                return value.strip() == b"0"
            if <bytes>key == _TRANSFER_ENCODING:
                return False
        elif key == _CONTENT_LENGTH or key == _TRANSFER_ENCODING:
            return False  # not bytes: _serve's own reading decides
    version = _get(scope, "http_version", None)
    return _is(version, "1.1") or _is(version, "1.0")


@cython.final
cdef class _Serve(Awaitable):
    """One request through the middleware (see :func:`serve_asgi`)."""

    cdef object middleware
    cdef object scope
    cdef object server_receive
    cdef object server_send
    cdef object name
    cdef object exchange
    cdef object delegate  # the command (a DoAsync, or a coroutine of _do_async_py), or one of the middleware's
    cdef int state  # 0: not started, 1: the command runs, 2: a coroutine of the middleware's, 3: done

    @property
    def __qualname__(self):
        return "CircuitBreakerMiddleware.__call__"

    cdef object step(self, object value, object exc, bint *finished):
        cdef PySendResult sent
        if self.state == 1 or self.state == 2:
            outcome = send_into(self.delegate, value, exc, &sent)
            if sent == PYGEN_NEXT:
                return outcome
            if self.state == 1:
                return self.command_ended(sent, outcome, finished)
            self.delegate = None
            self.state = 3
            if sent == PYGEN_ERROR:
                raise outcome
            finished[0] = True
            return outcome
        if self.state == 0:
            self.state = 3
            if exc is not None:
                raise exc  # thrown in before it started: nothing happened
            return self.begin(finished)
        if exc is not None:
            raise exc
        raise RuntimeError("cannot reuse an awaited CircuitBreakerMiddleware call")

    cdef object hand_over(self, object coroutine, bint *finished):
        self.delegate = coroutine
        self.state = 2
        return self.step(None, None, finished)

    cdef object begin(self, bint *finished):
        global _circuits
        cdef CircuitBreaker circuit = None
        cdef ExchangeCore exchange
        middleware = self.middleware
        scope = self.scope
        commands, buffer_size, rule, exchange_type = middleware._fast
        if _circuits is None:
            from fasthystrix._registry import _circuits as circuits
            _circuits = circuits
        name = None
        if _is(scope["type"], "http"):
            name = (<dict?>commands).get((scope["method"], scope["path"], _get(scope, "root_path", "")))
            if name is not None:
                circuit = door_open(_circuits, name)
        # Not HTTP, not seen yet, passed through, possibly shed, or with a body: the whole way in Python.
        if circuit is None or not _bodiless(scope):
            return self.hand_over(middleware._serve(scope, self.server_receive, self.server_send), finished)
        exchange = _new_exchange(
            exchange_type, middleware.app, scope, self.server_receive, self.server_send, buffer_size, rule
        )
        self.name = name
        self.exchange = exchange
        return self.command(circuit, exchange, finished)

    cdef object command(self, CircuitBreaker circuit, ExchangeCore exchange, bint *finished):
        """``await do_async(self.name, run)``, its first step here: the request whose app answers
        in its first step (the common case) makes no ``DoAsync`` (an allocation, a finalizer, a
        layer of steps, and their code in the CPU's caches); one whose app waits is handed to one
        (``command_running``), and one not admitted at once to ``not_admitted``, as ``DoAsync``
        hands them. The success is counted by ``conclusion``, ``DoAsync``'s own ending."""
        cdef int64_t start, verdict
        cdef PySendResult sent
        try:
            start = circuit.now()
            verdict = circuit.acquire_c(start)
            if verdict < 0:
                rest = turned_away(circuit, start, verdict, _run_of(exchange))
            else:
                # Admitted: the ticket is held, and every way out ends the command (conclusion, or
                # the DoAsync that takes it over).
                outcome = _app_first_step(exchange, &sent)
                if sent == PYGEN_NEXT:
                    # The app waits: its run goes on as the command's (_Run.first_step's way on),
                    # and what fails on the way is the command's error, as it is there.
                    try:
                        run = _waits(_run_of(exchange), outcome)
                    except BaseException as error:
                        outcome = error
                        sent = PYGEN_ERROR
                    else:
                        outcome = send_into(run, None, None, &sent)
                if sent == PYGEN_NEXT:
                    self.delegate = command_running(self.name, circuit, run, start, verdict)
                    self.state = 1
                    return outcome
                if sent == PYGEN_RETURN:
                    rest = conclusion(circuit, start, verdict, sent, outcome, None, False, None, None)
                else:
                    rest = conclusion(circuit, start, verdict, sent, None, outcome, False, None, None)
        except BaseException as error:
            # What DoAsync would raise from its first step (it ends the command first).
            return self.command_ended(PYGEN_ERROR, error, finished)
        if rest is None:
            return self.command_ended(PYGEN_RETURN, None, finished)  # a success, counted
        self.delegate = rest
        self.state = 1
        return self.step(None, None, finished)

    cdef object command_ended(self, PySendResult sent, object outcome, bint *finished):
        cdef ExchangeCore exchange = <ExchangeCore?>self.exchange
        if (
            sent == PYGEN_RETURN
            and exchange.waiting is _ENDED
            and exchange.late_error is None
            and exchange._task is None
            and exchange.error is None
        ):
            # A success that left nothing behind: no work after the response, nothing still to send.
            self.delegate = None
            self.state = 3
            finished[0] = True
            return None
        error = outcome if sent == PYGEN_ERROR else None
        return self.hand_over(
            self.middleware._ended(self.name, exchange, error, self.scope, None, self.server_receive, self.server_send), finished
        )


fh_install_iternext(_Serve, awaitable_next)
