"""ASGI middleware: every HTTP request runs as a command named after its route (Starlette, FastAPI, any ASGI app).

``CircuitBreakerMiddleware(app)`` runs each request under :func:`fasthystrix.do_async`,
as the command ``"<METHOD> <route template>"`` (``"GET /items/{item_id}"``), never the
raw URL: a client choosing URLs cannot create circuits without bound. Requests that
match no route share one command per method (``"GET <unmatched>"``).

The app's 5xx responses and exceptions are failures of the command, other answers are
successes; either way the client gets the app's own response. When the app is not run
(the circuit is open, every ticket is taken) or does not answer in time (the timeout:
the app is cancelled), the client gets a 503 with a small JSON body naming the reason,
or the response of ``fallback``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping
from typing import Any

from ._core import _errors
from ._core._config import CommandConfig
from ._integrations._middleware import (
    UNMATCHED,
    _excluded,
    _method,
    _Names,
    _rejection,
    _response_triple,
    _ServerError,
)
from ._isolation._asyncio import do_async

__all__ = ["UNMATCHED", "CircuitBreakerMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What a fallback may return: ``None`` (the default 503), ``(status, headers, body)``, or an ASGI app
#: (a Starlette ``Response`` is one).
FallbackResult = None | tuple[int, Any, bytes | str] | ASGIApp


class _Exchange:
    """One request's run of the app: the response status seen so far, and whether it is complete."""

    __slots__ = (
        "answered",
        "app",
        "complete",
        "disconnected",
        "raised",
        "receive_upstream",
        "scope",
        "send_downstream",
        "started",
        "status",
        "task",
        "trailers",
    )

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive_upstream = receive
        self.send_downstream = send
        self.status = 0
        self.started = False
        self.complete = False
        self.disconnected = False
        self.trailers = False
        self.raised: BaseException | None = None
        self.task: asyncio.Future[None] | None = None
        self.answered: asyncio.Future[None] | None = None

    async def receive(self) -> Message:
        message = await self.receive_upstream()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.started = True
            self.trailers = bool(message.get("trailers", False))
        try:
            await self.send_downstream(message)
        except OSError:
            # The client went away (ASGI 2.4 servers raise an OSError): not the app's failure.
            self.disconnected = True
            raise
        if (
            (kind == "http.response.body" and not message.get("more_body", False) and not self.trailers)
            or (kind == "http.response.trailers" and not message.get("more_trailers", False))
            or kind == "http.response.pathsend"
        ):
            self.complete = True
            self._wake()

    def _wake(self, task: object = None) -> None:
        answered = self.answered
        if answered is not None and not answered.done():
            answered.set_result(None)

    @staticmethod
    def _observe(task: asyncio.Future[None]) -> None:
        # The app's error is raised where it matters (run or finish); after a timeout it is
        # dropped on purpose, so asyncio must not log it as never retrieved.
        if not task.cancelled():
            task.exception()

    async def run(self) -> None:
        """The command: the app, in its own task, until its response is complete.

        The app runs in a task of its own so the command ends with the response:
        work the app does after it (Starlette's background tasks) is outside the
        command's timeout, latency and ticket, and is awaited by :meth:`finish`.
        """
        loop = asyncio.get_running_loop()
        self.answered = loop.create_future()
        task = self.task = asyncio.ensure_future(self.app(self.scope, self.receive, self.send), loop=loop)
        task.add_done_callback(self._observe)
        task.add_done_callback(self._wake)
        try:
            await self.answered
        except asyncio.CancelledError:
            # The timeout (or the server) cancelled the command: stop the app, and give the
            # ticket back only once it has unwound.
            task.cancel()
            await asyncio.wait((task,))
            raise
        if not self.complete:
            # The app returned (or raised) without finishing its response.
            exc = task.exception()
            if self.disconnected:
                # The client left: not the app's failure. Counted as context_canceled, not an error.
                raise _errors.ContextCanceledError() from exc
            if exc is not None:
                self.raised = exc
                raise exc
            if not self.started:
                raise _ServerError(500)  # the server answers 500 to an app that sent nothing
        if self.status >= 500:
            raise _ServerError(self.status)

    async def finish(self) -> None:
        """Wait for what the app does after its response; its errors propagate (the server logs them)."""
        task = self.task
        if task is None or task.cancelled():
            return
        if task.done():
            if task.exception() is not self.raised:
                task.result()
            return
        await task


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
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str | Callable[[Scope], str | None] | None = None,
        fallback: Callable[[Scope, _errors.CircuitError], FallbackResult | Awaitable[FallbackResult]] | None = None,
        config: CommandConfig | Mapping[str, Any] | None = None,
        exclude: Collection[str] = (),
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

    def route_template(self, scope: Scope) -> str:
        """The template of the route ``scope`` matches (``"/items/{item_id}"``), or ``"<unmatched>"``."""
        for source in (self.app, scope.get("app"), scope.get("router")):
            routes = getattr(source, "routes", None)
            if routes is not None:
                return _template(routes, scope, "") or UNMATCHED
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # websocket, lifespan: untouched
            return
        name = self.command_name(scope)
        if name is None:
            await self.app(scope, receive, send)
            return
        self._names.prepare(name)
        exchange = _Exchange(self.app, scope, receive, send)
        try:
            await do_async(name, exchange.run)
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
                if not exchange.complete:
                    # Timed out mid-response: no 503 can follow a started response. Raising makes
                    # the server close the connection, so the client sees it was cut short.
                    raise
                # Complete, but past its deadline: counted as a timeout; the client has it all.
            else:
                await self._answer(name, err, scope, receive, send)
                return
        await exchange.finish()

    async def _answer(self, name: str, err: _errors.CircuitError, scope: Scope, receive: Receive, send: Send) -> None:
        result: Any = None
        if self._fallback is not None:
            result = self._fallback(scope, err)
            if inspect.isawaitable(result):
                result = await result
        if result is not None and not isinstance(result, tuple) and callable(result):
            await result(scope, receive, send)
            return
        status, headers, body = _rejection(name, err) if result is None else _response_triple(result)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _template(routes: Iterable[Any], scope: Scope, prefix: str) -> str | None:
    """The template of the route Starlette's router would pick for ``scope``, or ``None``.

    As the router does: the first full match wins, else the first partial one (the
    path matches, the method does not: a 405, named after its route all the same).
    """
    partial: tuple[Any, Any] | None = None
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, child = matches(scope)
        kind = getattr(match, "name", "NONE")  # starlette.routing.Match, without importing starlette
        if kind == "FULL":
            return _route_template(route, {**scope, **child}, prefix)
        if kind == "PARTIAL" and partial is None:
            partial = (route, child)
    if partial is not None:
        return _route_template(partial[0], {**scope, **partial[1]}, prefix)
    return None


def _route_template(route: Any, scope: Scope, prefix: str) -> str | None:
    path_format = getattr(route, "path_format", None)  # convertors stripped: "/items/{item_id}"
    if not hasattr(route, "routes"):
        return prefix + (path_format or "")
    # A Mount ("/api/{path}") or a Host (no path): look inside it.
    mount_prefix = prefix + (path_format or "").removesuffix("/{path}")
    inner = route.routes
    if not inner:
        return prefix + (path_format or "/{path}")  # an app of its own: one template for all of it
    return _template(inner, scope, mount_prefix)
