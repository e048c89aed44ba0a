"""The per-request hot path of the ASGI middleware in Python (the pure twin of ``_asgi_core``).

Two cores, each completed by the middleware's mixins in ``asgi.py`` (``_OutboxPaths`` and
``_ExchangePaths``), which hold every path a trivial request does not take:

- :class:`OutboxCore`: the app's response messages on their way to the client;
  :meth:`~OutboxCore.put` hands one to the server's ``send()`` and, when the server
  has to wait for the client, leaves the rest to the pump (``self._pump``).
- :class:`ExchangeCore`: one request's run of the app: the ``receive()`` and ``send()``
  the app gets, and :meth:`~ExchangeCore.run`, the command, which steps the app once
  and hands it to ``self._run_from`` if it has to wait before its response is complete.

The compiled twin does the same in C, and returns ready awaitables where these are
coroutines; both are held to the middleware's tests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

from .._core._outcomes import COROUTINE as _COROUTINE, mark_coroutine_function

__all__ = ["ENDED", "ExchangeCore", "OutboxCore", "Resumed", "serve_asgi"]

#: Where an app's coroutine was left: it has ended.
ENDED: Any = object()

Message = MutableMapping[str, Any]


class Resumed:
    """The rest of an awaitable's iterator (``__await__()``) that was stepped once by hand and
    suspended on ``blocked_on``.

    Awaiting it does what an asyncio task does with any coroutine: it waits on what the
    iterator yielded (a future, or ``None`` for a bare yield), then resumes it with
    ``send(None)``, or throws into it what the waiting raised (cancellation), until it
    returns. Invariant: what it yielded reaches the task that awaits this unchanged, so
    the task waits on it exactly as it would have (tests/test_asgi_middleware.py,
    test_a_send_that_waits_is_finished_in_order_by_the_pump, fails otherwise).
    """

    __slots__ = ("_blocked_on", "_iterator")

    def __init__(self, iterator: Generator[Any, None, Any], blocked_on: Any) -> None:
        self._iterator = iterator
        self._blocked_on = blocked_on

    def __await__(self) -> Generator[Any, None, Any]:
        iterator = self._iterator
        yielded = self._blocked_on
        while True:
            try:
                yield yielded
            except BaseException as exc:  # cancelled while waiting: the send unwinds itself
                try:
                    yielded = iterator.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                yielded = iterator.send(None)
            except StopIteration as stop:
                return stop.value


class OutboxCore:
    """The app's response messages on their way to the client: :meth:`put` never waits for the client.

    A message is handed to the server's ``send()`` at once, and that is all when the
    server takes it without waiting (the common case: its buffers have room). When the
    server's ``send()`` has to wait for the client, the rest of it, and every message put
    meanwhile, are sent in order by a task of their own (the pump), and ``buffered``
    counts their body bytes. A send that fails stops the pump; the app's next
    :meth:`put` raises its error (an ``OSError``: the client went away).
    """

    __slots__ = ("_queue", "_raised", "_send", "_task", "buffered", "error")

    def __init__(self, send: Callable[[Message], Awaitable[None]]) -> None:
        self._send = send
        self._queue: deque[Message] | None = None  # made when the pump starts
        self._task: asyncio.Future[None] | None = None
        self._raised = False
        self.buffered = 0
        self.error: BaseException | None = None

    def put(self, message: Message) -> None:
        """Hand ``message`` to the server's ``send()``, or queue it behind the pump."""
        if self.error is not None:
            self._raised = True
            raise self.error
        if self._task is not None:
            # The pump is waiting for the client: queue behind it, to keep the order.
            self._queue.append(message)  # type: ignore[union-attr]
            self.buffered += len(message.get("body", b""))
            return
        # One step of the server's send(), on the caller's task, as awaiting it would take.
        awaitable = self._send(message)
        # A coroutine steps as its own iterator: one object less than its __await__().
        sending: Generator[Any, None, Any] = (
            awaitable if type(awaitable) is _COROUTINE else awaitable.__await__()  # type: ignore[assignment]
        )
        try:
            blocked_on = sending.send(None)
        except StopIteration:
            return  # taken without waiting
        except BaseException as exc:
            self._raised = True
            self.error = exc
            raise
        size = len(message.get("body", b""))
        self.buffered += size
        if self._queue is None:
            self._queue = deque()
        self._task = asyncio.ensure_future(self._pump(Resumed(sending, blocked_on), size))  # type: ignore[attr-defined]


class ExchangeCore(OutboxCore):
    """One request's run of the app: its body to replay, the response status seen so far, whether it is complete.

    It is the outbox of the app's response too (one object per request rather than two).
    """

    __slots__ = (
        "app",
        "app_steps",
        "body",
        "buffer_size",
        "complete",
        "detached",
        "disconnected",
        "is_failure",
        "late_error",
        "raised",
        "receive_upstream",
        "scope",
        "started",
        "status",
        "trailers",
        "waiting",
        "wake",
    )

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        scope: MutableMapping[str, Any],
        body: bytes | None,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        buffer_size: int,
        is_failure: Callable[[int], bool] | None,
    ) -> None:
        OutboxCore.__init__(self, send)
        self.app = app
        # None: a status of 500 or more is a failure.
        self.is_failure = is_failure
        self.scope = scope
        # The body read before the command, replayed by receive(); None: receive() is the client's.
        self.body = body
        self.receive_upstream = receive
        self.buffer_size = buffer_size
        self.status = 0
        self.started = False
        self.complete = False
        # The command ended before the response did: more than buffer_size bytes wait for the client.
        self.detached = False
        self.disconnected = False
        self.trailers = False
        self.raised: BaseException | None = None
        # The app's coroutine, while run() steps it, and where it was left.
        self.app_steps: Generator[Any, None, Any] | None = None
        self.waiting: Any = ENDED
        self.late_error: BaseException | None = None  # raised by the app after its response
        self.wake: asyncio.Future[None] | None = None

    async def receive(self) -> Message:
        """The app's ``receive()``: the body read before the command, whole; then the client's messages."""
        body = self.body
        if body is not None:
            self.body = None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive_upstream()  # type: ignore[attr-defined,no-any-return]

    async def send(self, message: Message, /) -> None:
        """The app's ``send()``: never waits for the client while the command runs."""
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.started = True
            self.trailers = bool(message.get("trailers", False))
        try:
            self.put(message)
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
            if self.wake is not None:
                self.response_ended()  # type: ignore[attr-defined]
            return
        if not self.detached:
            if self.buffered <= self.buffer_size:
                return  # the command goes on, the client's pace aside
            self.detached = True
            self.response_ended()  # type: ignore[attr-defined]
        await self._at_client_pace()  # type: ignore[attr-defined]

    async def run(self) -> None:
        """The command: the app, stepped on the request's own task, until its response is complete
        (or detached).

        The command ends with the response, not with the app: the app's coroutine is driven
        as a task would drive it, and no longer after the step that completed the response,
        leaving it suspended. What the app does after that (Starlette's background tasks, or
        the rest of a response larger than the buffer) is outside the command's timeout,
        latency and ticket: ``finish()`` drives it to its end. Here the first step; if the
        app waits before its response is complete, ``_run_from`` goes on.
        """
        app_steps: Any = self.app(self.scope, self.receive, self.send)
        if type(app_steps) is not _COROUTINE:
            app_steps = app_steps.__await__()
        self.app_steps = app_steps
        try:
            yielded = app_steps.send(None)
        except StopIteration:
            self.waiting = ENDED
        except BaseException as exc:
            self.waiting = ENDED
            self._failed(exc)  # type: ignore[attr-defined]
        else:
            if not self.complete and not self.detached:
                await self._run_from(yielded)  # type: ignore[attr-defined]
                return
            self.waiting = yielded
        self._check_response()  # type: ignore[attr-defined]


@mark_coroutine_function
def serve_asgi(self: Any, scope: MutableMapping[str, Any], receive: Any, send: Any) -> Awaitable[None]:
    """``CircuitBreakerMiddleware.__call__``: the request, as the middleware's ``_serve`` runs it."""
    return self._serve(scope, receive, send)  # type: ignore[no-any-return]
