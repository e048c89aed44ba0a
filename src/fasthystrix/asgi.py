"""ASGI middleware: every HTTP request runs as a command named after its route (Starlette, FastAPI, any ASGI app).

``CircuitBreakerMiddleware(app)`` runs each request under :func:`fasthystrix.do_async`,
as the command ``"<METHOD> <route template>"`` (``"GET /items/{item_id}"``), never the
raw URL: a client choosing URLs cannot create circuits without bound. Requests that
match no route share one command per method (``"GET <unmatched>"``).

**Shedding at the door.** A request the route's circuit would turn away now (it is open
and no trial is due, or every ticket is taken) is answered at once, before its body is
read and without a task: a 503 with ``Retry-After`` (what remains of the sleep window,
rounded up to whole seconds, at least 1; ``retry_after_rejected`` seconds, default 1, for
want of a ticket), or the ``fallback``'s answer. It is counted as the command would count it
(``short_circuits`` or ``rejects``).

The app's exceptions, and the statuses ``is_failure`` accepts (a 5xx by default), are
failures of the command, other answers are successes; either way the client gets the app's
own response. When the app is not run (the circuit is open, every ticket is taken) or does
not answer in time (the timeout: the app is cancelled), the client gets a 503 with a small
JSON body naming the reason, or the response of ``fallback``.

**What the command covers: the app, not the client.** The request body is read before
the command starts (at most ``max_body_size`` bytes; a larger one is answered 413 and the
app never runs; a request without one, HTTP/1.x with neither Content-Length nor
Transfer-Encoding, has nothing to read) and replayed to the app by its ``receive()``, so a client that sends its
body slowly, or never finishes it, holds no ticket and adds nothing to the route's
latency: only the server's own timeouts end it. The app's ``send()`` never waits for the
client while the command runs: a message the server cannot take at once (its buffers
are full: the client reads slowly) is buffered and sent by a task of its own, with the
ones after it. The command ends when the app's
response is complete, or as soon as more than ``response_buffer_size`` body bytes wait for
the client: it then counts as a success or a failure by its status, and the app's further
sends wait for the client, outside the command's timeout and ticket.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import types
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from . import _impl
from ._core import _errors
from ._core._config import CommandConfig
from ._integrations._asgi_core_py import ENDED, Resumed
from ._integrations._middleware import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_RETRY_AFTER_REJECTED,
    UNMATCHED,
    StatusRule,
    _content_length,
    _door,
    _door_error,
    _excluded,
    _method,
    _Names,
    _optional_size,
    _rejection,
    _response_triple,
    _retry_after,
    _retry_after_rejected,
    _server_error,
    _ServerError,
    _size,
    _status_rule,
    _too_large,
)
from ._isolation._asyncio import do_async

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_RESPONSE_BUFFER_SIZE",
    "DEFAULT_RETRY_AFTER_REJECTED",
    "UNMATCHED",
    "CircuitBreakerMiddleware",
]

_TEMPLATES = 4096  # route templates (and command names) remembered per middleware, by method and path
_UNSEEN: Any = object()  # a key not in the table of command names
# The per-request cores, compiled or pure (_integrations/_asgi_core), completed by the mixins below
# (which the type checker sees as subclasses of the pure cores, whose attributes they use).
if TYPE_CHECKING:
    from ._integrations._asgi_core_py import ExchangeCore as _ExchangeCore, OutboxCore as _OutboxCore

    _OutboxBase = _OutboxCore
    _ExchangeBase = _ExchangeCore
else:
    _OutboxCore = _impl.current().OutboxCore
    _ExchangeCore = _impl.current().ExchangeCore
    _OutboxBase = _ExchangeBase = object

#: The default ``response_buffer_size``: body bytes of a response held for a slow client while the
#: command runs (256 KiB).
DEFAULT_RESPONSE_BUFFER_SIZE = 256 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What a fallback may return: ``None`` (the default 503), ``(status, headers, body)``, or an ASGI app
#: (a Starlette ``Response`` is one).
FallbackResult = None | tuple[int, Any, bytes | str] | ASGIApp


class _OutboxPaths(_OutboxBase):
    """The outbox's paths off the common one: the pump, waiting for it, closing.

    Its core (``OutboxCore``, compiled or pure: ``_integrations/_asgi_core``) holds the state
    and :meth:`put`, which never waits for the client: a message the server cannot take at
    once is finished by :meth:`_pump`, a task of its own, with the ones put after it.
    """

    __slots__ = ()

    async def _pump(self, first: Resumed, size: int) -> None:
        queue = self._queue
        assert queue is not None, "put() makes the queue before it starts the pump"
        try:
            await first
            self.buffered -= size
            while queue:
                message = queue.popleft()
                await self._send(message)
                self.buffered -= len(message.get("body", b""))
        except Exception as exc:
            self.error = exc
            queue.clear()
            self.buffered = 0
        finally:
            self._task = None

    @property
    def idle(self) -> bool:
        """Everything put was handed to the server, without error: :meth:`close` has nothing to do."""
        return self._task is None and self.error is None

    async def drained(self) -> None:
        """Wait until everything put has been handed to the server, or sending failed."""
        task = self._task
        if task is not None:
            await asyncio.wait((task,))  # not `await task`: cancelling the caller must not cancel the pump

    async def close(self) -> None:
        """Hand over what is left, then stop.

        Raises the server's error if the app never saw it, unless it is an ``OSError``
        (the client went away: nobody to answer, nothing to log).
        """
        try:
            await self.drained()
        finally:
            self.abort()
        error = self.error
        if error is not None and not self._raised and not isinstance(error, OSError):
            self._raised = True
            raise error

    def abort(self) -> None:
        """Stop the pump now, whatever is left unsent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self._queue:
            self._queue.clear()


class _Outbox(_OutboxPaths, _OutboxCore):
    """The app's response messages on their way to the client: ``put()`` never waits for the client
    (the core's docstring tells how)."""

    __slots__ = ()


class _ExchangePaths(_OutboxPaths, _ExchangeBase):
    """The exchange's paths off the common one (its core, ``ExchangeCore``, compiled or pure, holds
    the state, the app's ``receive()`` and ``send()``, and the first step of :meth:`run`)."""

    __slots__ = ()

    async def _receive_upstream(self) -> Message:
        message = await self.receive_upstream()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def _at_client_pace(self) -> None:
        """The app's send() once the command is over (detached): it waits for the client."""
        await self.drained()
        if isinstance(self.error, OSError):
            self.disconnected = True
            raise self.error

    async def _run_from(self, yielded: Any) -> None:
        """The rest of the command, from the app's first wait (``yielded``) on."""
        try:
            await self._resumed(yielded)
        except BaseException as exc:
            self._failed(exc)
        self._check_response()

    def _failed(self, exc: BaseException) -> None:
        """The app raised ``exc``: propagate it, as the command's error, or keep it for :meth:`finish`."""
        if isinstance(exc, asyncio.CancelledError):
            # The timeout (or the server) cancelled the command: the app has unwound (the
            # cancellation went into it), so its ticket can come back.
            raise exc
        if self.complete or self.detached:
            self.late_error = exc  # raised after the response: finish() raises it (the server logs it)
            return
        self.raised = exc
        if self.disconnected and isinstance(exc, Exception):
            # The client left: not the app's failure. Counted as context_canceled, not an error.
            raise _errors.ContextCanceledError() from exc
        raise exc

    def _check_response(self) -> None:
        """The app has answered, or returned: raise if the command failed (the client keeps the app's response)."""
        if not self.complete and not self.detached:
            # The app returned without finishing its response.
            if self.disconnected:
                raise _errors.ContextCanceledError()
            if not self.started:
                raise _ServerError(500)  # the server answers 500 to an app that sent nothing
        status = self.status
        if status >= 500 if self.is_failure is None else self.is_failure(status):
            raise _ServerError(status)

    async def finish(self) -> None:
        """Drive what the app does after the command; its errors propagate (the server logs them)."""
        app_steps = self.app_steps
        if app_steps is None:
            return
        if self.waiting is not ENDED:
            await Resumed(app_steps, self.waiting)
        elif self.late_error is not None and self.late_error is not self.raised:
            raise self.late_error

    @types.coroutine
    def _resumed(self, yielded: Any) -> Generator[Any, None, None]:
        """The app's coroutine (``app_steps``), waiting on ``yielded``, driven step by step on the
        awaiting task until the response is complete (or detached), or the app ends.

        Each step is what a task would do: yield what the app yielded (a future, or ``None``)
        to the task, unchanged, then ``send(None)`` into the app's iterator, or ``throw`` what
        the waiting raised (the deadline's cancellation). When a step completes the response,
        this returns with the app suspended on ``waiting`` (``ENDED`` if it has ended);
        ``Resumed(app_steps, waiting)`` goes on from there. Invariant: the app's iterator is
        driven by one task, this one, at a time (tests/test_asgi_middleware.py,
        test_a_complete_stream_and_background_work_after_the_response, covers the hand-over).
        """
        app = self.app_steps
        assert app is not None, "run() sets the app's coroutine before its first step"
        # What the task threw in (a cancellation) goes into the app, as a task would: the app's
        # handling decides. A nested command's deadline cancels this task too, and the app's
        # do_async takes that cancellation back; the route's own deadline is do_async's to tell.
        throw: BaseException | None = None
        while True:
            if self.complete or self.detached:
                self.waiting = yielded
                return
            add_done_callback = getattr(yielded, "add_done_callback", None)
            if add_done_callback is None:  # a bare yield: the task steps again at once
                try:
                    yield yielded
                except BaseException as exc:
                    throw = exc
            else:
                # The task waits on a future of ours, done with the app's, or sooner when the app's
                # response completes in another task (a streaming response's): the command ends then.
                wake = self.wake = asyncio.get_running_loop().create_future()
                wake._asyncio_future_blocking = True  # what a future's __await__ sets before yielding itself
                add_done_callback(functools.partial(_wake_up, wake))
                try:
                    yield wake
                except BaseException as exc:  # cancelled: the app's future too, as a task would
                    yielded.cancel()
                    throw = exc
                finally:
                    self.wake = None
                if throw is None and not yielded.done():
                    # Woken by the response's end: the app still waits on its future.
                    self.waiting = yielded
                    return
            try:
                yielded = app.send(None) if throw is None else app.throw(throw)
            except StopIteration:
                self.waiting = ENDED
                return
            except BaseException:
                self.waiting = ENDED
                raise
            throw = None

    def response_ended(self) -> None:
        """The response is complete (or detached): wake the command if it waits on the app."""
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class _Exchange(_ExchangePaths, _ExchangeCore):
    """One request's run of the app: its body to replay, the response status seen so far, whether
    it is complete; the outbox of its response too (one object per request rather than two)."""

    __slots__ = ()


def _wake_up(wake: asyncio.Future[None], done: object) -> None:
    if not wake.done():
        wake.set_result(None)


class CircuitBreakerMiddleware:
    """Run each HTTP request of an ASGI app as a fasthystrix command (``do_async``).

    ``app``: the ASGI app to wrap; with Starlette or FastAPI, either
    ``app.add_middleware(CircuitBreakerMiddleware, ...)`` or
    ``CircuitBreakerMiddleware(app, ...)``.

    ``name``: the command of a request. By default ``"<METHOD> <route template>"``,
    the template of the Starlette route the request matches (``"GET /items/{item_id}"``,
    mounts included: ``"GET /api/v1/items/{item_id}"``; an app mounted without routes
    of its own is one template, ``"/ops/{path}"``); a request no route matches, or any
    request to an app without Starlette routes, is ``"<METHOD> <unmatched>"``. Methods
    outside the standard ones are ``OTHER``. A string names one command for every
    request; a callable ``name(scope)`` returns the name, or ``None`` to pass the
    request through without a command.

    ``exclude``: path prefixes passed through without a command (``("/ops", "/health")``),
    matched against ``scope["path"]`` on ``/`` boundaries; use it for streams and
    long polls, which would otherwise run under the timeout.

    ``config``: a :class:`~fasthystrix.CommandConfig` for every command this middleware
    runs, applied with ``configure_command`` the first time each name is seen, unless
    that name is configured already (so ``configure_command("GET /slow", ...)`` wins).
    Without it the commands get the defaults: 1 s timeout and 10 concurrent requests per route.

    ``fallback(scope, err)`` (sync or async) answers when the app was not run or timed
    out before responding (``err`` is a ``CircuitOpenError``, ``MaxConcurrencyError`` or
    ``TimeoutError``): it returns ``(status, headers, body)``, an ASGI app (a Starlette
    ``Response``), or ``None`` for the default 503.

    ``max_body_size``: the largest request body, in bytes, read before the command
    (default 1 MiB); a larger one (by its Content-Length, or once that many bytes have
    come) is answered 413 with a small JSON body, the connection closed, and counts
    nowhere. ``None`` reads bodies of any size (into memory). Exclude routes that stream
    large uploads.

    ``response_buffer_size``: the body bytes of a response that may wait for a slow
    client while the command runs (default 256 KiB); past them the command ends and the
    app waits for the client. ``0`` ends the command at the app's first body chunk
    that is not its last.

    ``is_failure``: which of the app's statuses are failures of the command (counted, and
    able to open the circuit; the client still gets the app's response): a predicate
    ``(status) -> bool`` or a collection of statuses (``{500, 502, 503, 504}``); default
    ``status >= 500``. A predicate that raises makes the request a failure. An app that
    sends nothing is a failure whatever it says (the server answers 500).

    ``retry_after_rejected``: the ``Retry-After`` (whole seconds, default 1) of a 503 for
    want of a ticket. A short-circuit's is what remains of the sleep window (at least 1).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str | Callable[[Scope], str | None] | None = None,
        fallback: Callable[[Scope, _errors.CircuitError], FallbackResult | Awaitable[FallbackResult]] | None = None,
        config: CommandConfig | Mapping[str, Any] | None = None,
        exclude: Collection[str] = (),
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
        response_buffer_size: int = DEFAULT_RESPONSE_BUFFER_SIZE,
        is_failure: StatusRule | None = None,
        retry_after_rejected: int = DEFAULT_RETRY_AFTER_REJECTED,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI app, not {app!r}")
        if name is not None and not isinstance(name, str) and not callable(name):
            raise TypeError(f"name must be a str, a callable or None, not {name!r}")
        if fallback is not None and not callable(fallback):
            raise TypeError(f"fallback must be callable or None, not {fallback!r}")
        self.app = app
        self._name = name
        self._fallback = fallback
        self._names = _Names(config)
        self._excluded = _excluded(exclude)
        self._templates: dict[tuple[str, str, str], str] = {}
        # The command of each (method, path, root_path) seen, when nothing else decides it.
        self._commands: dict[tuple[str, str, str], str | None] = {}
        self._max_body_size = _optional_size("max_body_size", max_body_size)
        # No buffer can hold more than sys.maxsize bytes: a larger bound is the same bound, and fits the
        # compiled exchange's C size.
        self._response_buffer_size = min(_size("response_buffer_size", response_buffer_size), sys.maxsize)
        self._is_failure = _status_rule(is_failure)
        # What the exchange checks a status with: None for the default rule (>= 500), inlined.
        self._exchange_rule = None if self._is_failure is _server_error else self._is_failure
        # What the compiled __call__ reads of this middleware per request (besides the app), in one attribute.
        self._fast = (self._commands, self._response_buffer_size, self._exchange_rule, _Exchange)
        self._retry_after_rejected = _retry_after_rejected(retry_after_rejected)

    def command_name(self, scope: Scope) -> str | None:
        """The command an HTTP request runs as, or ``None`` when it passes through."""
        if self._excluded(scope["path"]):
            return None
        name = self._name
        if name is None:
            return f"{_method(scope['method'])} {self.route_template(scope)}"
        if isinstance(name, str):
            return name
        return name(scope)

    def _command_of(self, scope: Scope, key: tuple[str, str, str]) -> str | None:
        """:meth:`command_name`, its ``config`` applied, remembered for ``key`` (a bounded table,
        emptied when full) unless it may change with more than the method and path: a callable
        ``name``, or a route matched by host."""
        name = self.command_name(scope)
        if name is not None:
            self._names.prepare(name)
        naming = self._name
        if not isinstance(naming, str) and (
            naming is not None or (name is not None and self._templates.get(key) is None)
        ):
            return name
        if len(self._commands) >= _TEMPLATES:
            self._commands.clear()
        self._commands[key] = name
        return name

    def route_template(self, scope: Scope) -> str:
        """The template of the route ``scope`` matches (``"/items/{item_id}"``), or ``"<unmatched>"``."""
        # The router matches each request again: remember the answer per method and path (a
        # bounded table, emptied when full), unless a Host route took part (it reads headers).
        key = (scope["method"], scope["path"], scope.get("root_path", ""))
        template = self._templates.get(key)
        if template is not None:
            return template
        for source in (self.app, scope.get("app"), scope.get("router")):
            routes = getattr(source, "routes", None)
            if routes is not None:
                by_host: list[bool] = []
                template = _template(routes, scope, "", by_host) or UNMATCHED
                if not by_host:
                    if len(self._templates) >= _TEMPLATES:
                        self._templates.clear()
                    self._templates[key] = template
                return template
        # No router anywhere (a bare ASGI app): every request is unmatched, and remembered so, so
        # that its command is known and the request takes the compiled path.
        if len(self._templates) >= _TEMPLATES:
            self._templates.clear()
        self._templates[key] = UNMATCHED
        return UNMATCHED

    #: An ASGI app: ``await middleware(scope, receive, send)``. In C for a request on the common
    #: path (an HTTP request whose command is known, its circuit closed with a ticket free, no body),
    #: else :meth:`_serve` (``_integrations/_asgi_core``: ``serve``). Marked as a coroutine function,
    #: so that servers which ask (uvicorn) see an ASGI 3 app.
    __call__ = _impl.current().serve_asgi

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request, the whole way: what ``__call__`` does, for any request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # websocket, lifespan: untouched
            return
        key = (scope["method"], scope["path"], scope.get("root_path", ""))
        name = self._commands.get(key, _UNSEEN)
        if name is _UNSEEN:
            name = self._command_of(scope, key)
        if name is None:
            await self.app(scope, receive, send)
            return
        shed = _door(name)
        if shed is not None:
            await self._answer(name, _door_error(shed[1]), scope, receive, send, _body_announced(scope))
            return
        body: bytes | None = None  # a request without a body: the app's receive() is the client's
        if not _bodiless(scope):
            body = await self._read_body(name, scope, receive, send)
            if body is None:
                return  # answered 413, or the client left before sending it all
        exchange = _Exchange(self.app, scope, body, receive, send, self._response_buffer_size, self._exchange_rule)
        try:
            await do_async(name, exchange.run)
        except BaseException as error:
            await self._ended(name, exchange, error, scope, body, receive, send)
            return
        if exchange.waiting is not ENDED or exchange.late_error is not None or not exchange.idle:
            await self._ended(name, exchange, None, scope, body, receive, send)

    async def _ended(
        self,
        name: str,
        exchange: _Exchange,
        error: BaseException | None,
        scope: Scope,
        body: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """The end of a request whose command raised ``error``, or left work behind it: the app's work
        after its response, or messages still on their way to a slow client."""
        try:
            if error is not None:
                try:
                    raise error
                except _ServerError:
                    pass  # counted as a failure; the client has the app's response
                except _errors.ContextCanceledError:
                    if not exchange.disconnected:
                        raise
                    return  # the client left mid-response: nobody to answer, nothing to log
                except _errors.CircuitError as err:
                    if err is exchange.raised:
                        raise  # the app's own (a nested command's) error: a plain failure, already counted
                    if exchange.started:
                        if not exchange.complete and not exchange.detached:
                            # Timed out mid-response: no 503 can follow a started response. What the app
                            # sent reaches the client, then raising makes the server close the
                            # connection, so the client sees it was cut short.
                            await exchange.close()
                            raise
                        # Complete (or detached), but past its deadline: counted as a timeout; the client
                        # gets it all.
                    else:
                        await self._answer(name, err, scope, _replaying(body or b"", receive), send)
                        return
            if exchange.waiting is not ENDED or exchange.late_error is not None:
                await exchange.finish()
            if exchange._task is not None or exchange.error is not None:
                await exchange.close()
        finally:
            if exchange._task is not None or exchange._queue:
                exchange.abort()

    async def _read_body(self, name: str, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, read before the command; ``None`` once answered 413 or the client has left."""
        limit = self._max_body_size
        if limit is not None:
            announced = None
            for key, value in scope.get("headers", ()):
                if key == b"content-length":
                    announced = _content_length(value)
                    break
            if announced is not None and announced > limit:
                await _send_response(send, *_too_large(name, limit))
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "http.disconnect":
                return None
            if kind != "http.request":
                continue
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if limit is not None and size > limit:
                    await _send_response(send, *_too_large(name, limit))
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _answer(
        self, name: str, err: _errors.CircuitError, scope: Scope, receive: Receive, send: Send, close: bool = False
    ) -> None:
        """The fallback's answer, or the 503; ``close``: the request's body is left unread."""
        result: Any = None
        if self._fallback is not None:
            result = self._fallback(scope, err)
            if inspect.isawaitable(result):
                result = await result
        if result is not None and not isinstance(result, tuple) and callable(result):
            await result(scope, receive, send)
            return
        if result is None:
            status, headers, body = _rejection(name, err, _retry_after(name, err, self._retry_after_rejected))
        else:
            status, headers, body = _response_triple(result)
        if close:
            headers.append(("connection", "close"))
        await _send_response(send, status, headers, body)


def _bodiless(scope: Scope) -> bool:
    """The request has no body: a Content-Length of 0, or HTTP/1.x with neither Content-Length nor
    Transfer-Encoding (RFC 9112, 6.3). An HTTP/2 request without either may still have one."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return bool(value.strip() == b"0")
        if key == b"transfer-encoding":
            return False
    return scope.get("http_version") in ("1.0", "1.1")


def _body_announced(scope: Scope) -> bool:
    """The request comes with a body (a Content-Length above 0, or chunked)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return value.strip() not in (b"0", b"")
        if key == b"transfer-encoding":
            return True
    return False


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive()`` that returns the body read before the command, whole, then the client's messages."""
    pending: bytes | None = body

    async def replay() -> Message:
        nonlocal pending
        if pending is not None:
            message = {"type": "http.request", "body": pending, "more_body": False}
            pending = None
            return message
        return await receive()

    return replay


async def _send_response(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _template(routes: Iterable[Any], scope: Scope, prefix: str, by_host: list[bool]) -> str | None:
    """The template of the route Starlette's router would pick for ``scope``, or ``None``.

    As the router does: the first full match wins, else the first partial one (the
    path matches, the method does not: a 405, named after its route all the same).
    """
    partial: tuple[Any, Any] | None = None
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        if hasattr(route, "host"):
            by_host.append(True)  # starlette.routing.Host: the answer depends on the Host header
        match, child = matches(scope)
        kind = getattr(match, "name", "NONE")  # starlette.routing.Match, without importing starlette
        if kind == "FULL":
            return _route_template(route, {**scope, **child}, prefix, by_host)
        if kind == "PARTIAL" and partial is None:
            partial = (route, child)
    if partial is not None:
        return _route_template(partial[0], {**scope, **partial[1]}, prefix, by_host)
    return None


def _route_template(route: Any, scope: Scope, prefix: str, by_host: list[bool]) -> str | None:
    path_format = getattr(route, "path_format", None)  # convertors stripped: "/items/{item_id}"
    if not hasattr(route, "routes"):
        return prefix + (path_format or "")
    # A Mount ("/api/{path}") or a Host (no path): look inside it.
    mount_prefix = prefix + (path_format or "").removesuffix("/{path}")
    inner = route.routes
    if not inner:
        return prefix + (path_format or "/{path}")  # an app of its own: one template for all of it
    return _template(inner, scope, mount_prefix, by_host)
