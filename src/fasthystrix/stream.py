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
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import _registry
from ._core._errors import safe_repr
from ._core._log import logger
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    handler: StreamHandler
    write_timeout: float


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "fasthystrix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it so)
        logger.debug("stream server: " + format, *args)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        route = _route(self.path.split("?", 1)[0])
        if route is None:
            self._plain(404, b"not found\n", head)
        elif route == "dashboard":
            body = _dashboard_page()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            for key, value in _PAGE_HEADERS:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
        else:
            self._stream(head)

    def _plain(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _stream(self, head: bool) -> None:
        self.send_response(200)
        for key, value in self.server.handler.stream_headers:
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if head:
            return
        connection = self.connection
        # A client that stops reading blocks our write at most this long...
        connection.settimeout(self.server.write_timeout)

        def shut() -> None:
            # ...and one dropped for falling behind is cut off at once.
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        handler = self.server.handler
        client = handler._subscribe(on_drop=shut)
        try:
            while True:
                chunk = client.take(handler.keepalive)
                if chunk is None:
                    if client.closed:
                        return
                    continue
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:  # the client went away (reset, broken pipe, timeout)
            return
        finally:
            handler._unsubscribe(client)


class StreamServer:
    """A running :func:`serve_stream` server: the stream and the dashboard, in a background thread."""

    def __init__(self, handler: StreamHandler, host: str, port: int, write_timeout: float) -> None:
        self.handler = handler
        self._server = _Server((host, port), _RequestHandler)
        self._server.handler = handler
        self._server.write_timeout = write_timeout
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="fasthystrix-stream-server"
        )
        self._thread.daemon = True
        self._thread.start()

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

    def close(self) -> None:
        """Stop serving, end every stream and wait for the server thread."""
        self._server.shutdown()
        self.handler.close()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StreamServer {self.url} clients={self.handler.clients}>"


def serve_stream(
    port: int = 8181,
    host: str = "127.0.0.1",
    *,
    interval: float = 1.0,
    keepalive: float = 2.0,
    max_pending: int = 5,
    write_timeout: float = 10.0,
    allow_origin: str | None = None,
) -> StreamServer:
    """Serve ``/hystrix.stream`` and the dashboard (``/``, ``/hystrix-dashboard``) in a background thread.

    Binds to loopback unless ``host`` says otherwise; ``port=0`` picks a free
    port (read it back from :attr:`StreamServer.port`). The other arguments are
    :class:`StreamHandler`'s, plus ``write_timeout``: the seconds (at most 3600) a write
    to a client that stopped reading may block before that client is disconnected.
    Close the server (or use it as a context manager) to stop it.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port!r}")
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {host!r}")
    _positive("write_timeout", write_timeout, maximum=MAX_SECONDS)
    handler = StreamHandler(interval, keepalive=keepalive, max_pending=max_pending, allow_origin=allow_origin)
    return StreamServer(handler, host, port, float(write_timeout))
