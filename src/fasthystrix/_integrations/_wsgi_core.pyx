# cython: language_level=3, boundscheck=True, wraparound=False, freethreading_compatible=True
"""The per-request hot path of the WSGI middleware in C (the compiled twin of ``_wsgi_core_py``).

The same :class:`Exchange` as the twin, whose docstring tells what it does, and
:func:`serve_wsgi`, which serves the common request in C: an environ that is a dict, its
command known, its circuit closed with a ticket free (the door, ``_door.pxd``), no body.
Any other request goes to the middleware's ``_serve``, in Python, the whole way.

Where the twin takes a lock (the exchange's result, published by ``run`` on a worker thread
in thread isolation, or abandoned by the server's thread at the timeout), this one settles
it with one atomic word: whichever of the two moves it first decides who closes the result.
"""

cimport cython
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport fh_cas_acq_rel, fh_load_acquire
from fasthystrix._core._circuit cimport CircuitBreaker
from fasthystrix._integrations._door cimport door_open

from fasthystrix._core import _errors
from fasthystrix._integrations._middleware import _ServerError
from fasthystrix._integrations._wsgi_core_py import _Body, _close

__all__ = ["Exchange", "request_key", "run_command", "serve_wsgi"]

# Exchange.state: who has the app's result.
cdef enum:
    _RUNNING = 0    # run() has not published it yet
    _PUBLISHED = 1  # run() has: the caller responds with it, or abandon() closes it
    _ABANDONED = 2  # the caller answered without it: run() closes what it gets

cdef object _CircuitError = _errors.CircuitError
cdef str _EMPTY = ""


@cython.final
cdef class Exchange:
    """One request's call of the app: its status, headers and body, captured until the command has ended.

    The compiled twin of ``_wsgi_core_py.Exchange``: the same fields, an atomic word for its lock.
    """

    cdef public object app
    cdef public object environ
    cdef public object is_failure
    cdef public object status_line
    cdef public object headers
    cdef public list head
    cdef public object rest
    cdef public object result
    cdef public object raised
    cdef public object downstream_start
    cdef int64_t state

    def __init__(self, app, environ, is_failure):
        self.app = app
        self.environ = environ
        self.is_failure = is_failure
        self.headers = []
        self.head = []

    @property
    def abandoned(self):
        """The caller answered without the app's response."""
        return fh_load_acquire(&self.state) == _ABANDONED

    def start_response(self, status, headers, exc_info=None):
        """The app's ``start_response``: the status and headers kept until the command has ended."""
        downstream = self.downstream_start
        if downstream is not None:
            # Called again while the body streams (an error with exc_info): the server decides.
            return downstream(status, headers, exc_info)
        if exc_info is None and self.status_line is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        self.status_line = status
        self.headers = list(headers)
        return self.head.append

    def run(self):
        """The command: call the app and pull its body until it has called ``start_response``."""
        cdef int64_t expected = _RUNNING
        try:
            result = self.app(self.environ, self.start_response)
        except BaseException as exc:
            self.raised = exc
            raise
        rest = None
        try:
            if self.status_line is None:
                # PEP 3333 lets an app call start_response as late as its first non-empty chunk.
                rest = iter(result)
                while self.status_line is None:
                    chunk = next(rest, None)
                    if chunk is None:
                        raise RuntimeError("the WSGI app returned without calling start_response()")
                    self.head.append(chunk)
        except BaseException as exc:
            self.raised = exc
            _close(result)
            raise
        # Stored before they are published: abandon() reads them only once it sees _PUBLISHED.
        self.result = result
        self.rest = rest
        if not fh_cas_acq_rel(&self.state, &expected, _PUBLISHED):
            self.result = None  # abandoned first: nobody else reads them
            self.rest = None
            _close(result)  # the caller answered without it (thread isolation, after the timeout)
            return None
        status = int(self.status_line[:3])
        if status >= 500 if self.is_failure is None else self.is_failure(status):
            raise _ServerError(status)
        return None

    def abandon(self):
        """The caller answers without the app's response: close it, now or when it arrives."""
        cdef int64_t expected = _RUNNING
        if fh_cas_acq_rel(&self.state, &expected, _ABANDONED):
            return None  # run() has not published it: run() closes it
        expected = _PUBLISHED
        if fh_cas_acq_rel(&self.state, &expected, _ABANDONED):
            result = self.result
            self.result = None
            _close(result)
        return None

    def respond(self, start_response):
        """Hand the app's status, headers and body to the server."""
        result = self.result
        assert result is not None and self.status_line is not None
        start_response(self.status_line, self.headers)
        self.downstream_start = start_response
        if not self.head and self.rest is None:
            return result  # untouched: keeps wsgi.file_wrapper and the app's close()
        return _Body(self.head, self.rest, result)


# The registry's table and the command function: imported at the first request (like the ASGI core).
cdef object _circuits = None
cdef object _do = None


cdef inline object _environ_get(object environ, str key):
    """``environ.get(key, "")``, without the method call for a dict (what servers pass)."""
    if type(environ) is dict:
        return (<dict>environ).get(key, _EMPTY)
    return environ.get(key, _EMPTY)


cpdef tuple request_key(environ):
    """What a request's rule and command name depend on: its method, path, script name, host and scheme."""
    return (
        _environ_get(environ, "REQUEST_METHOD"),
        _environ_get(environ, "PATH_INFO"),
        _environ_get(environ, "SCRIPT_NAME"),
        _environ_get(environ, "HTTP_HOST"),
        _environ_get(environ, "wsgi.url_scheme"),
    )


cdef inline bint _bodiless(dict environ):
    """``_read_body``'s own test for a request without a body: nothing to read first."""
    length = environ.get("CONTENT_LENGTH")
    if length and length != "0":
        return False
    if environ.get("HTTP_TRANSFER_ENCODING"):
        return False
    protocol = environ.get("SERVER_PROTOCOL")
    return protocol == "HTTP/1.1" or protocol == "HTTP/1.0"


cdef int _import_the_python_side() except -1:
    global _circuits, _do
    from fasthystrix import _impl, _registry
    _circuits = _registry._circuits
    _do = _impl.current().do
    return 0


def serve_wsgi(self, environ, start_response):
    """``CircuitBreakerMiddleware.__call__``: the common request (its command known, its circuit
    closed with a ticket free, no body) in C; any other through the middleware's ``_serve``."""
    cdef CircuitBreaker circuit = None
    cdef Exchange exchange
    if _do is None:
        _import_the_python_side()
    commands, is_failure = self._fast
    if type(environ) is dict:
        name = (<dict?>commands).get(request_key(environ))
        if name is not None and _bodiless(<dict>environ):
            circuit = door_open(_circuits, name)
    if circuit is None:
        return self._serve(environ, start_response)
    exchange = Exchange.__new__(Exchange)
    exchange.app = self.app
    exchange.environ = environ
    exchange.is_failure = is_failure
    exchange.headers = []
    exchange.head = []
    return _run_command(self, name, exchange, environ, start_response)


cdef object _run_command(middleware, name, Exchange exchange, environ, start_response):
    try:
        _do(name, exchange.run)
    except _ServerError:
        pass  # counted as a failure; the client gets the app's response
    except _CircuitError as err:
        exchange.abandon()
        if err is exchange.raised:
            raise  # the app's own (a nested command's) error: a plain failure, already counted
        return middleware._answer(name, err, environ, start_response)
    except BaseException:
        exchange.abandon()
        raise
    return exchange.respond(start_response)


def run_command(middleware, name, Exchange exchange, environ, start_response):
    """Run ``exchange.run`` as command ``name`` and answer: the app's response, or the
    middleware's own answer (``_answer``: its fallback, or the 503) when the command did not run
    the app or not in time. The exchange is abandoned on every way out but the app's response."""
    if _do is None:
        _import_the_python_side()
    return _run_command(middleware, name, exchange, environ, start_response)
