"""The Hystrix metrics stream (Server-Sent Events) and the server that also serves the dashboard.

:class:`StreamHandler` publishes every circuit's ``HystrixCommand`` and
``HystrixThreadPool`` messages (see :mod:`fasthystrix._observability._stream_messages`) once per
interval to every connected client. It is a WSGI app (:attr:`StreamHandler.wsgi_app`)
and an ASGI app (:attr:`StreamHandler.asgi_app`); :func:`serve_stream` runs it on
its own in a background thread.

What it does better than hystrix-go's ``StreamHandler``:

* one publisher thread builds each tick's bytes once for all clients, and only
  while somebody is connected;
* reading a circuit never changes it (hystrix-go's publisher can trip one);
* each client has a bounded buffer of ticks; a client that falls that far behind
  is dropped, so a stalled client never slows the others or grows memory;
* a ``: ping`` comment line keeps idle connections alive (Turbine expects one at
  least every 3 s), also when no circuit exists yet; each tick starts with a
  ``: tick N`` comment, so a consumer can tell it missed nothing. Both consumers
  of the format ignore comment lines.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import _registry
from ._core._errors import safe_repr
from ._core._log import logger
from ._observability import _http
from ._observability._stream_messages import render

__all__ = ["StreamHandler", "StreamServer", "serve_stream"]

#: The SSE comment sent when nothing else was sent for ``keepalive`` seconds.
PING = b": ping\n\n"

_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # tells nginx-style proxies not to hold the stream back
]


#: The longest ``interval`` and ``write_timeout`` (one hour, in seconds): longer waits mean
#: nothing to a dashboard, and far longer ones overflow the OS's timers when they are used.
MAX_SECONDS = 3600


def _positive(
    field: str, value: object, kind: type | tuple[type, ...] = (int, float), maximum: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{field} must be a number, not {safe_repr(value)}")
    if not value > 0:  # type: ignore[operator]
        raise ValueError(f"{field} must be greater than 0, got {safe_repr(value)}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise ValueError(f"{field} must be at most {maximum:g} seconds, got {safe_repr(value)}")


class _Client:
    """One connected consumer: a bounded queue of chunks, filled by the publisher."""

    __slots__ = ("_chunks", "_cond", "_limit", "_on_drop", "_on_ready", "closed", "counted", "dropped")

    def __init__(
        self, limit: int, on_drop: Callable[[], None] | None, on_ready: Callable[[], None] | None = None
    ) -> None:
        self._chunks: deque[bytes] = deque((PING,))  # sent at once, so headers reach the client now
        self._cond = threading.Condition(threading.Lock())
        self._limit = limit
        self._on_drop = on_drop
        self._on_ready = on_ready
        self.closed = False
        self.dropped = False
        self.counted = False

    def offer(self, chunk: bytes) -> bool:
        """Queue ``chunk``; ``False`` (and the client is dropped) when its buffer is full."""
        with self._cond:
            if self.closed:
                return False
            accepted = len(self._chunks) < self._limit
            if accepted:
                self._chunks.append(chunk)
            else:
                self.closed = self.dropped = True
                self._chunks.clear()
            self._cond.notify_all()
        callback = self._on_ready if accepted else self._on_drop
        if callback is not None:
            try:
                callback()
            except Exception:
                logger.exception("waking a metrics stream client failed")
        return accepted

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        if self._on_ready is not None:
            self._on_ready()  # an async consumer waits on its own event, not on the condition

    def take(self, timeout: float | None) -> bytes | None:
        """The next chunk, waiting up to ``timeout`` s; ``None`` once closed (or on timeout)."""
        with self._cond:
            if not self._chunks and not self.closed:
                self._cond.wait(timeout)
            if self._chunks:
                return self._chunks.popleft()
            return None

    def take_nowait(self) -> bytes | None:
        with self._cond:
            return self._chunks.popleft() if self._chunks else None


class StreamHandler:
    """Publishes the metrics stream to any number of clients; mount it as WSGI or ASGI.

    ``interval``: seconds between ticks (hystrix-go: 1; at most 3600). ``keepalive``: the longest
    silence, in seconds, before a ``: ping`` comment is sent (at most 3, what
    Turbine expects). ``max_pending``: ticks a client may fall behind before it
    is dropped. ``allow_origin``: when set (e.g. ``"https://ops.example.com"`` or
    ``"*"``), the stream answers with that ``Access-Control-Allow-Origin``, so a
    dashboard served from another origin may read it; unset, browsers let only
    same-origin pages read it.
    """

    def __init__(
        self, interval: float = 1.0, *, keepalive: float = 2.0, max_pending: int = 5, allow_origin: str | None = None
    ) -> None:
        _positive("interval", interval, maximum=MAX_SECONDS)
        _positive("keepalive", keepalive)
        if keepalive > 3:
            raise ValueError(f"keepalive must be at most 3 seconds (Turbine's expectation), got {keepalive!r}")
        _positive("max_pending", max_pending, int)
        if allow_origin is not None and (not isinstance(allow_origin, str) or not allow_origin.isprintable()):
            raise TypeError(f"allow_origin must be a str of printable characters or None, not {allow_origin!r}")
        self.interval = float(interval)
        self.keepalive = float(keepalive)
        self.max_pending = max_pending
        self.allow_origin = allow_origin
        self.stream_headers: list[tuple[str, str]] = list(_HEADERS)
        if allow_origin is not None:
            self.stream_headers.append(("Access-Control-Allow-Origin", allow_origin))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._clients: set[_Client] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ticks = 0
        self._dropped = 0
        # What the last tick rendered, per circuit (see _stream_messages.render).
        self._render_lock = threading.Lock()
        self._rendered: dict[str, object] = {}

    # -- state ----------------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Clients connected now."""
        with self._lock:
            return len(self._clients)

    @property
    def dropped_clients(self) -> int:
        """Clients dropped so far because they fell ``max_pending`` ticks behind."""
        return self._dropped

    @property
    def ticks(self) -> int:
        """Ticks published so far."""
        return self._ticks

    def render(self) -> bytes:
        """One tick's bytes for the circuits that exist now (what every client receives)."""
        circuits = sorted(_registry.circuits().values(), key=lambda c: c.name)
        with self._render_lock:
            return render(circuits, cache=self._rendered)

    def close(self) -> None:
        """Stop publishing and end every client's stream; the handler cannot be reused."""
        with self._lock:
            self._closed = True
            clients = list(self._clients)
            self._clients.clear()
            self._wake.notify_all()
            thread = self._thread
        for client in clients:
            client.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- clients --------------------------------------------------------------------

    def _subscribe(
        self, on_drop: Callable[[], None] | None = None, on_ready: Callable[[], None] | None = None
    ) -> _Client:
        client = _Client(self.max_pending, on_drop, on_ready)
        with self._lock:
            if self._closed:
                raise RuntimeError("this StreamHandler is closed")
            self._clients.add(client)
            if self._thread is None:
                self._thread = threading.Thread(target=self._publish, name="fasthystrix-stream", daemon=True)
                self._thread.start()
        return client

    def _unsubscribe(self, client: _Client) -> None:
        client.close()
        with self._lock:
            self._clients.discard(client)

    # -- the publisher --------------------------------------------------------------

    def _publish(self) -> None:
        """Tick while anybody listens; the thread ends when the last client leaves."""
        next_tick = time.monotonic()
        last_sent = next_tick
        while True:
            with self._lock:
                while True:
                    if self._closed or not self._clients:
                        self._thread = None
                        return
                    now = time.monotonic()
                    if now >= next_tick or now >= last_sent + self.keepalive:
                        break
                    self._wake.wait(min(next_tick, last_sent + self.keepalive) - now)
                clients = list(self._clients)
            if now >= next_tick:
                try:
                    data = self.render()
                except Exception:
                    logger.exception("building the metrics stream failed")
                    data = b""
                self._ticks += 1
                chunk = b": tick %d\n" % self._ticks + data if data else PING
                # A late tick is not made up for: the next one is an interval from now.
                next_tick = max(next_tick + self.interval, now)
            else:
                chunk = PING
            last_sent = now
            for client in clients:
                if client.offer(chunk):
                    continue
                with self._lock:
                    self._clients.discard(client)
                # Only this thread offers, so a client is seen being dropped exactly once.
                if client.dropped and not client.counted:
                    client.counted = True
                    self._dropped += 1
                    logger.warning("dropped a metrics stream client %d ticks behind", self.max_pending)

    # -- WSGI -----------------------------------------------------------------------

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI app: the stream at ``/hystrix.stream``, the dashboard at ``/`` and ``/hystrix-dashboard``.

        Needs a server that runs each request on its own thread (the stream
        never ends until the client goes).
        """
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        route = _route(path)
        if route is None:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found\n"]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        if route == "dashboard":
            body = _dashboard_page()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), *_PAGE_HEADERS])
            return [b""] if method == "HEAD" else [body]
        start_response("200 OK", list(self.stream_headers))
        if method == "HEAD":
            return [b""]
        return _WsgiStream(self)

    # -- ASGI -----------------------------------------------------------------------

    async def asgi_app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        """ASGI app with the routes of :meth:`wsgi_app` (mount it under any prefix)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path") or "/"
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        route = _route(path)
        method = scope.get("method", "GET")
        if route is None or method not in ("GET", "HEAD"):
            status, body = (404, b"not found\n") if route is None else (405, b"method not allowed\n")
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})
            return
        if route == "dashboard":
            page = _dashboard_page()
            headers = [(b"content-type", b"text/html; charset=utf-8")]
            headers += [(k.lower().encode(), v.encode()) for k, v in _PAGE_HEADERS]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else page})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in self.stream_headers],
            }
        )
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._asgi_stream(receive, send)

    async def _asgi_stream(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:  # called on the publisher's thread
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed, and the client with it
                pass

        client = self._subscribe(on_drop=wake, on_ready=wake)
        disconnected = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            while True:
                ready.clear()
                chunk = client.take_nowait()
                if chunk is not None:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                if client.closed or disconnected.done():
                    break
                waiter = asyncio.ensure_future(ready.wait())
                await asyncio.wait({waiter, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            self._unsubscribe(client)
            gone = disconnected.done()
            disconnected.cancel()
        if not gone:  # closed or dropped by us: end the response properly
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _WsgiStream:
    """The WSGI body iterator of one client; the server calls ``close()`` when the client goes."""

    def __init__(self, handler: StreamHandler) -> None:
        self._handler = handler
        self._client = handler._subscribe()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        while True:
            chunk = self._client.take(self._handler.keepalive)
            if chunk is not None:
                return chunk
            if self._client.closed:
                raise StopIteration

    def close(self) -> None:
        self._handler._unsubscribe(self._client)


def _route(path: str) -> str | None:
    if path in ("/", "", "/hystrix-dashboard", "/hystrix-dashboard/", "/index.html"):
        return "dashboard"
    if path.rstrip("/").endswith("/hystrix.stream"):
        # Also under /hystrix-dashboard/, where the page's relative URL points when
        # it is opened with a trailing slash.
        return "stream"
    return None


# The dashboard is self-contained (inlined CSS and JS): it may only talk to the
# streams it is pointed at, and never be framed by another site.
_PAGE_HEADERS = [
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


def _dashboard_page() -> bytes:
    from ._observability._dashboard import dashboard_page

    return dashboard_page()


# -- the standalone server -------------------------------------------------------------

#: What a stream client's socket may hold unsent (bytes) before the server stops handing it
#: chunks; the rest waits in the client's queue of at most ``max_pending`` ticks.
WRITE_BUFFER = 64 * 1024
#: Bytes a client may send after its request head; past that, it is cut off.
MAX_DISCARD = 64 * 1024
#: Seconds :meth:`StreamServer.close` lets the streams it ends send their last bytes.
CLOSE_GRACE = 1.0


class _Connection(asyncio.Protocol):
    """One client of the standalone server, from its request head to the end of its response.

    ``state``: ``"new"`` until connected (``"failed"`` if connecting did not end), ``"head"``
    while its request head arrives (for ``read_timeout`` seconds at most), ``"stream"`` while
    it gets the stream, ``"answered"`` once its whole answer is written (it then has
    ``read_timeout`` seconds to close its end), ``"gone"`` once closed.
    """

    def __init__(self, serving: _Serving) -> None:
        self.serving = serving
        self.transport: asyncio.Transport | None = None
        self.state = "new"
        self.head = bytearray()
        self.discarded = 0
        self.timer: asyncio.TimerHandle | None = None
        self.write_timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.client: _Client | None = None
        self.unsent = 0

    # -- asyncio's callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        serving = self.serving
        self.transport = transport
        if self.state != "new":  # _connect() gave up on it (the server is closing)
            transport.abort()
            return
        serving.starting -= 1
        self.state = "head"
        serving.connections.add(self)
        if serving.closing:
            transport.abort()
            return
        # High enough for a ping or a small tick; a larger tick goes out once the last one has.
        transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self._arm(serving.read_timeout, self._read_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.state == "head":
            searched = max(0, len(self.head) - 3)
            self.head += data
            if self.head.startswith((b"\r", b"\n")):  # empty lines before the request line
                del self.head[: len(self.head) - len(self.head.lstrip(b"\r\n"))]
            end = _http.head_end(self.head, searched)
            if end < 0 and len(self.head) <= _http.MAX_HEAD:
                return
            if end < 0 or end > _http.MAX_HEAD:
                self._refuse(_http.BadRequest(431, f"the request head is longer than {_http.MAX_HEAD} bytes"))
                return
            head = bytes(self.head[:end])
            self.discarded = len(self.head) - end
            self.head = bytearray()
            self._request(head)
        elif self.state != "stream":
            # What follows a head is not read as anything; past a bound, the client is cut off.
            self.discarded += len(data)
        if self.discarded > MAX_DISCARD and self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the client is done: close (a stream has nobody left to send to)

    def connection_lost(self, exc: Exception | None) -> None:
        serving = self.serving
        self.state = "gone"
        self._disarm()
        if self.write_timer is not None:
            self.write_timer.cancel()
        serving.connections.discard(self)
        if self.client is not None:
            serving.handler._unsubscribe(self.client)
            self.client = None
        serving.connection_closed()

    def pause_writing(self) -> None:
        self.paused = True
        if self.write_timer is None and self.transport is not None:
            # A client that stops reading is cut off after write_timeout.
            self.write_timer = self.serving.loop.call_later(self.serving.write_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        self.paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        self.pump()

    # -- the request ---------------------------------------------------------------------

    def _request(self, head: bytes) -> None:
        serving = self.serving
        transport = self.transport
        assert transport is not None
        self._disarm()
        try:
            request = _http.parse_head(head)
            _http.refuse_body(request)
            sockname = transport.get_extra_info("sockname")
            local = _http.local_names(sockname[0] if isinstance(sockname, tuple) else "")
            _http.host_allowed(request, serving.allowed_hosts, local)
        except _http.BadRequest as error:
            self._refuse(error)
            return
        route = _route(request.path)
        head_only = request.method == "HEAD"
        if route is None:
            self._refuse(_http.BadRequest(404, "not found"))
        elif request.method not in ("GET", "HEAD"):
            body = b"method not allowed\n"
            headers = [("Allow", "GET, HEAD"), ("Content-Type", "text/plain; charset=utf-8")]
            self._answer(_http.response(405, [*headers, ("Content-Length", str(len(body)))], body))
        elif route == "dashboard":
            page = _dashboard_page()
            headers = [("Content-Type", "text/html; charset=utf-8"), *_PAGE_HEADERS]
            headers.append(("Content-Length", str(len(page))))
            self._answer(_http.response(200, headers, page, send_body=not head_only))
        elif head_only:
            self._answer(_http.response(200, serving.handler.stream_headers, send_body=False))
        else:
            self._stream()

    def _refuse(self, error: _http.BadRequest) -> None:
        logger.debug("stream server: refused a request: %d %s", error.status, error.reason)
        self._answer(_http.error_response(error))

    def _answer(self, data: bytes) -> None:
        """Write a whole answer, end our side, and give the client ``read_timeout`` s to end its own."""
        transport = self.transport
        assert transport is not None
        self.state = "answered"
        transport.write(data)
        # Closing with unread bytes from the client would send a reset, which may destroy the
        # answer before the client reads it: half-close, and read (discarding) until it closes.
        if transport.can_write_eof():
            transport.write_eof()
        self.unsent = transport.get_write_buffer_size()
        self._arm(self.serving.read_timeout, self._linger_timed_out)

    def _stream(self) -> None:
        serving = self.serving
        transport = self.transport
        assert transport is not None
        try:
            self.client = serving.handler._subscribe(on_drop=self._notify, on_ready=self._notify)
        except RuntimeError:  # the handler is closed: the server is closing
            self._refuse(_http.BadRequest(503, "the stream is closed"))
            return
        self.state = "stream"
        transport.write(_http.response(200, serving.handler.stream_headers, send_body=False))
        self.pump()

    def _notify(self) -> None:
        self.serving.notify(self)

    def pump(self) -> None:
        """Hand the transport what the client's queue holds, until it pushes back."""
        client = self.client
        transport = self.transport
        if self.state != "stream" or client is None or transport is None:
            return
        while True:
            if client.dropped:  # fell max_pending ticks behind: cut off at once
                self.state = "answered"
                transport.abort()
                return
            chunk = None if self.paused else client.take_nowait()
            if chunk is not None:
                transport.write(chunk)  # may call pause_writing()
                continue
            if client.closed:  # the handler closed: end the response, bounded by write_timeout
                self.state = "answered"
                transport.close()
                self._arm(self.serving.write_timeout, transport.abort)
            return

    # -- timers --------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self.timer = self.serving.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _read_timed_out(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.head:  # a partial head: say why
            self._refuse(_http.BadRequest(408, "the request head took too long"))
        else:  # silence: nothing to answer
            self.transport.abort()

    def _linger_timed_out(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        unsent = self.transport.get_write_buffer_size()
        if unsent and unsent < self.unsent:  # still taking its answer: let it
            self.unsent = unsent
            self._arm(self.serving.read_timeout, self._linger_timed_out)
            return
        self.transport.abort()


class _Serving:
    """The standalone server's state on its event loop: the listening socket and the connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        handler: StreamHandler,
        *,
        write_timeout: float,
        read_timeout: float,
        max_clients: int,
        backlog: int,
        allowed_hosts: frozenset[str],
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.handler = handler
        self.write_timeout = write_timeout
        self.read_timeout = read_timeout
        self.max_clients = max_clients
        self.backlog = backlog
        self.allowed_hosts = allowed_hosts
        self.connections: set[_Connection] = set()
        self.starting = 0  # accepted, not yet connected to a protocol
        self.accepting = False
        self.closing = False
        self.tasks: set[asyncio.Future[Any]] = set()
        self._ready: list[_Connection] = []
        self._ready_lock = threading.Lock()
        self._wakeup_pending = False
        self._empty: asyncio.Event | None = None

    @property
    def open(self) -> int:
        return self.starting + len(self.connections)

    # -- accepting -----------------------------------------------------------------------

    def start_accepting(self) -> None:
        if not self.accepting and not self.closing:
            self.accepting = True
            self.loop.add_reader(self.listener, self._accept)

    def stop_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.listener)

    def _accept(self) -> None:
        # Take a burst of connections in one go, as asyncio's own servers do.
        for _ in range(self.backlog):
            if self.open >= self.max_clients:
                # Full: further clients wait in the listen backlog until a connection ends.
                self.stop_accepting()
                return
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors or memory: wait, then try again
                logger.warning("stream server: accepting a connection failed (%s); retrying in 1 s", exc)
                self.stop_accepting()
                self.loop.call_later(1.0, self.start_accepting)
                return
            sock.setblocking(False)
            self.starting += 1
            task = self.loop.create_task(self._connect(sock))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self, sock: socket.socket) -> None:
        protocol = _Connection(self)
        try:
            await self.loop.connect_accepted_socket(lambda: protocol, sock)
        except (OSError, asyncio.CancelledError) as exc:
            if protocol.state == "new":  # not connected yet: it never will be
                protocol.state = "failed"
                self.starting -= 1
                sock.close()
                self.connection_closed()
            if isinstance(exc, OSError):
                logger.debug("stream server: a connection failed at once: %s", exc)

    def connection_closed(self) -> None:
        if self.closing:
            if not self.connections and self._empty is not None:
                self._empty.set()
        elif not self.accepting and self.open < self.max_clients:
            self.start_accepting()

    # -- waking stream connections from the publisher's thread ----------------------------

    def notify(self, connection: _Connection) -> None:
        """``connection``'s queue changed (any thread): pump it on the loop, one wake-up for many."""
        with self._ready_lock:
            self._ready.append(connection)
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self.loop.call_soon_threadsafe(self._pump_ready)
        except RuntimeError:  # the loop is closed: so is every connection
            pass

    def _pump_ready(self) -> None:
        with self._ready_lock:
            ready, self._ready = self._ready, []
            self._wakeup_pending = False
        for connection in dict.fromkeys(ready):
            connection.pump()

    # -- closing -------------------------------------------------------------------------

    async def begin_close(self) -> None:
        self.closing = True
        self.stop_accepting()
        self.listener.close()

    async def finish_close(self) -> None:
        """End every connection: streams (ended by the handler) get ``CLOSE_GRACE`` s to flush, then all are cut."""
        self._empty = asyncio.Event()
        self._pump_ready()  # the ends of streams that the handler's close queued
        for connection in list(self.connections):
            # What is not a stream sending its last bytes goes at once.
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.abort()
        if self.connections:
            try:
                await asyncio.wait_for(self._empty.wait(), CLOSE_GRACE)
            except asyncio.TimeoutError:
                pass
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        # An aborted transport tells its protocol on the loop's next turns.
        for _ in range(100):
            if not self.connections and not self.starting:
                break
            await asyncio.sleep(0)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (IPv4 or IPv6, whichever ``host`` is)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":  # a restarted server may bind while old connections are in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _count(field: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, not {safe_repr(value)}")
    if not 1 <= value <= maximum:
        raise ValueError(f"{field} must be between 1 and {maximum}, got {safe_repr(value)}")
    return value


class StreamServer:
    """A running :func:`serve_stream` server: the stream and the dashboard, on one event-loop thread.

    Every connection is a socket on that thread's event loop (no thread per client). The bounds
    (see :func:`serve_stream`): ``max_clients`` connections at once (more wait in the ``backlog``),
    ``read_timeout`` seconds for a request head of at most 8 KiB, and per stream client
    ``max_pending`` queued ticks plus 64 KiB unsent in its socket.
    """

    def __init__(
        self,
        handler: StreamHandler,
        host: str,
        port: int,
        write_timeout: float = 10.0,
        *,
        read_timeout: float = 10.0,
        max_clients: int = 1024,
        backlog: int = 1024,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        if not isinstance(handler, StreamHandler):
            raise TypeError(f"handler must be a StreamHandler, not {safe_repr(handler)}")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {safe_repr(host)}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {safe_repr(port)}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {safe_repr(port)}")
        _positive("write_timeout", write_timeout, maximum=MAX_SECONDS)
        _positive("read_timeout", read_timeout, maximum=MAX_SECONDS)
        _count("max_clients", max_clients, 1_000_000)
        _count("backlog", backlog, 65535)
        hosts = _http.allowed_hosts("allowed_hosts", allowed_hosts, host)
        self.handler = handler
        self.host = host
        self.write_timeout = float(write_timeout)
        self.read_timeout = float(read_timeout)
        self.max_clients = max_clients
        self.backlog = backlog
        #: The names ``Host`` may carry besides the addresses served (normalised; ``"*"``: any).
        self.allowed_hosts: frozenset[str] = hosts
        listener = _listen(host, port, backlog)
        self.port: int = listener.getsockname()[1]
        # A selector loop of its own, whatever loop policy the application set.
        self._loop = asyncio.SelectorEventLoop()
        self._serving = _Serving(
            self._loop,
            listener,
            handler,
            write_timeout=self.write_timeout,
            read_timeout=self.read_timeout,
            max_clients=max_clients,
            backlog=backlog,
            allowed_hosts=hosts,
        )
        self._loop.set_exception_handler(_log_loop_error)
        self._serving.start_accepting()
        self._close_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="fasthystrix-stream-server", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._serving.stop_accepting()
            listener.close()
            self._loop.close()
            raise

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8181``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def stream_url(self) -> str:
        """Where the metrics stream is: ``<url>/hystrix.stream``."""
        return self.url + "/hystrix.stream"

    @property
    def dashboard_url(self) -> str:
        """Where the dashboard page is: ``<url>/hystrix-dashboard``."""
        return self.url + "/hystrix-dashboard"

    @property
    def connections(self) -> int:
        """Connections open now (at most ``max_clients``)."""
        return self._serving.open

    def close(self) -> None:
        """Stop serving, end every stream and connection, and wait for the server's threads to end.

        Afterwards the server holds no thread, socket or other descriptor. Streams get up to
        one second to send their last bytes.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("StreamServer.close() cannot be called from the server's own thread")
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        loop = self._loop
        asyncio.run_coroutine_threadsafe(self._serving.begin_close(), loop).result()
        self.handler.close()  # ends every stream; joins the publisher
        asyncio.run_coroutine_threadsafe(self._serving.finish_close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join()
        loop.close()

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StreamServer {self.url} clients={self.handler.clients}>"


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    logger.warning("stream server: %s", context.get("message"), exc_info=context.get("exception"))


def serve_stream(
    port: int = 8181,
    host: str = "127.0.0.1",
    *,
    interval: float = 1.0,
    keepalive: float = 2.0,
    max_pending: int = 5,
    write_timeout: float = 10.0,
    allow_origin: str | None = None,
    read_timeout: float = 10.0,
    max_clients: int = 1024,
    backlog: int = 1024,
    allowed_hosts: Iterable[str] = (),
) -> StreamServer:
    """Serve ``/hystrix.stream`` and the dashboard (``/``, ``/hystrix-dashboard``) on a background thread.

    Binds to loopback unless ``host`` says otherwise; ``port=0`` picks a free port (read it
    back from :attr:`StreamServer.port`). ``interval``, ``keepalive``, ``max_pending`` and
    ``allow_origin`` are :class:`StreamHandler`'s. The server's bounds:

    * ``write_timeout``: seconds (at most 3600) a client that stopped reading keeps its
      connection; each stream client holds at most ``max_pending`` ticks queued (the same
      bytes for every client) and 64 KiB unsent in its socket, and is dropped when it falls
      ``max_pending`` ticks behind.
    * ``read_timeout``: seconds (at most 3600) a client has to send its request head, of at
      most 8 KiB (longer: ``431``); a silent one is dropped, a slow one gets ``408``. After an
      answer other than the stream, it also has this long to close its end.
    * ``max_clients``: connections served at once (1 to 1 000 000); further clients wait in
      the listen ``backlog`` (1 to 65535; the OS may cap it, as Linux does at
      ``net.core.somaxconn``) until one ends. Each connection is a descriptor: keep
      ``max_clients`` under the process's limit (``ulimit -n``).
    * ``allowed_hosts``: host names (or IP addresses) the ``Host`` header may carry besides the
      address the client reached (and ``localhost`` on loopback); ``["*"]`` allows any. Any
      other ``Host`` gets ``400``, so a site whose name was pointed at this address (DNS
      rebinding) cannot read the stream. Add the names you serve it under.

    A request with a body (``Content-Length`` above 0, any ``Transfer-Encoding``) gets ``400``;
    every answer closes its connection, and none names a server version. Close the server (or
    use it as a context manager) to stop it.
    """
    handler = StreamHandler(interval, keepalive=keepalive, max_pending=max_pending, allow_origin=allow_origin)
    return StreamServer(
        handler,
        host,
        port,
        write_timeout,
        read_timeout=read_timeout,
        max_clients=max_clients,
        backlog=backlog,
        allowed_hosts=allowed_hosts,
    )
