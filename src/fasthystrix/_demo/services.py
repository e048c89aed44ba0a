"""The demo's moving parts, all on loopback: a downstream whose behaviour can be switched, the API
that calls it through a fasthystrix command, and an open-loop load generator.

The serving, load and worker threads are daemons (a second Ctrl-C still ends the process); request
handler threads are not, so that ``server_close()`` waits for them. ``close()`` joins every thread,
so a normal end leaves nothing running and no socket open.
"""

from __future__ import annotations

import http.client
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fasthystrix

from .._core._events import EVENT_NAMES
from ..metric_collector import MetricResult

__all__ = [
    "HANG_SECONDS",
    "MODES",
    "SLOW_SECONDS",
    "Api",
    "Downstream",
    "DownstreamError",
    "EventCounter",
    "HttpService",
    "IgnoreEvents",
    "LoadGenerator",
    "fallback_reason",
]

#: What the downstream can do: answer at once, answer 500, answer after SLOW_SECONDS, or hang.
MODES = ("healthy", "failing", "slow", "down")
#: The slow downstream's latency range. At 50 calls/s it keeps about 25 calls in flight, well above
#: the command's 10 tickets, yet far enough below the 1 s timeout that slow calls still succeed.
SLOW_SECONDS = (0.4, 0.6)
#: How long a hanging ("down") downstream holds a request, unless its mode changes first.
HANG_SECONDS = 3.0
#: The API's own socket timeout for the downstream call: longer than any hang, so ``run`` always
#: ends with the downstream's answer; the command's 1 s timeout is what the caller sees.
DOWNSTREAM_SOCKET_TIMEOUT = HANG_SECONDS + 2.0
#: The load generator's socket timeout: far longer than the API can take (timeout + fallback).
CLIENT_SOCKET_TIMEOUT = 10.0


class DownstreamError(Exception):
    """The downstream answered something other than 200: a failure of the command."""

    def __init__(self, status: int) -> None:
        super().__init__(f"downstream answered {status}")
        self.status = status


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them: nothing outlives close().
    daemon_threads = False
    block_on_close = True
    # socketserver's default backlog is 5: a burst of connections on a busy machine would be
    # refused or delayed by a SYN retry (1 s), which is not what the demo is about.
    request_queue_size = 128
    owner: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (the load generator stopping) is no error worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status, body = self.server.owner.respond(self.path)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's parameter name
        pass


class HttpService:
    """A ``ThreadingHTTPServer`` on its own thread; ``close()`` stops it and joins every thread."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self._server = _Server((host, 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"demo-{name}", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (chosen by the OS)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/``."""
        return f"http://{self.host}:{self.port}/"

    def respond(self, path: str) -> tuple[int, bytes]:
        """Answer one GET: ``(status, body)``."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop serving, wait for the requests being handled, close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class Downstream(HttpService):
    """The dependency: its ``mode`` (one of :data:`MODES`) says how it answers right now."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._mode = "healthy"
        self._stopping = False
        super().__init__("downstream")

    @property
    def mode(self) -> str:
        """How it answers now."""
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch behaviour; requests hanging in ``"down"`` mode end when it changes."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._changed:
            self._mode = mode
            self._changed.notify_all()

    def release_all(self) -> None:
        """Answer every slow or hanging request now, and every later one at once (shutting down)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def respond(self, path: str) -> tuple[int, bytes]:
        mode = self._mode
        if mode == "down":
            with self._changed:
                self._changed.wait_for(lambda: self._stopping or self._mode != "down", timeout=HANG_SECONDS)
                mode = self._mode
            if mode == "down":
                return 504, b"downstream hung\n"
            # It came back while this request hung: answer as it does now.
        if self._stopping:
            return 503, b"downstream shutting down\n"
        if mode == "failing":
            return 500, b"downstream failing\n"
        if mode == "slow":
            with self._changed:
                if self._changed.wait_for(lambda: self._stopping, timeout=random.uniform(*SLOW_SECONDS)):
                    return 503, b"downstream shutting down\n"
        return 200, b"price: 42\n"


def fallback_reason(err: BaseException) -> tuple[bool, str]:
    """The API's fallback: no price, but the reason (``hystrix: circuit open``, ``downstream answered 500``...)."""
    return False, f"fallback: {err}\n"


class Api(HttpService):
    """The service under protection: each GET calls the downstream as fasthystrix command ``command``.

    It answers 200 with the downstream's answer, or 503 with the fallback's reason.
    """

    def __init__(self, command: str, downstream_port: int) -> None:
        self.command = command
        self.downstream_port = downstream_port
        super().__init__("api")

    def fetch(self) -> tuple[bool, str]:
        """The command's ``run``: one GET to the downstream; anything but 200 raises."""
        conn = http.client.HTTPConnection("127.0.0.1", self.downstream_port, timeout=DOWNSTREAM_SOCKET_TIMEOUT)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            response.close()
        finally:
            conn.close()
        if response.status != 200:
            raise DownstreamError(response.status)
        return True, body.decode()

    def respond(self, path: str) -> tuple[int, bytes]:
        # Looked up on each call: fasthystrix.do is the live implementation's fast path.
        ok, text = fasthystrix.do(self.command, self.fetch, fallback_reason)
        return (200 if ok else 503), text.encode()


class LoadGenerator:
    """Open-loop load on the API: one request every ``1/rate`` s, whatever the answers take.

    At most ``max_in_flight`` requests are outstanding (one worker thread each); a request due
    while all are busy is not sent and counted as ``skipped``. Answers are counted as ``200``,
    ``503`` and ``error`` (anything else, connection errors included).
    """

    def __init__(self, port: int, rate: float, max_in_flight: int = 32) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.port = port
        self.rate = rate
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "200": 0, "503": 0, "error": 0, "skipped": 0}
        self._in_flight = 0
        self._stop = threading.Event()
        self._queue: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the workers, then the clock that sends."""
        for number in range(self.max_in_flight):
            self._start_thread(self._work, f"demo-load-{number + 1}")
        self._start_thread(self._dispatch, "demo-load-clock")

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._in_flight

    def counts(self) -> dict[str, int]:
        """Totals so far: ``sent``, ``200``, ``503``, ``error``, ``skipped``."""
        with self._lock:
            return dict(self._counts)

    def _dispatch(self) -> None:
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < due:
                self._stop.wait(due - now)
                continue
            # After a stall (a busy machine), start again from now rather than send a burst.
            due = max(due + interval, now - 0.25)
            with self._lock:
                if self._in_flight >= self.max_in_flight:
                    self._counts["skipped"] += 1
                    continue
                self._in_flight += 1
                self._counts["sent"] += 1
            self._queue.put(True)

    def _work(self) -> None:
        while self._queue.get() is not None:
            status = self._request()
            key = str(status) if status in (200, 503) else "error"
            with self._lock:
                self._in_flight -= 1
                self._counts[key] += 1

    def _request(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_SOCKET_TIMEOUT)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            response.close()
            return response.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def close(self) -> None:
        """Stop sending, wait for every outstanding answer, join every thread."""
        self._stop.set()
        for _ in range(self.max_in_flight):
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


class EventCounter:
    """A metric collector counting every event of one command exactly, since it was created.

    The circuit calls ``reset()`` when it closes (to empty rolling windows); here that only
    counts a closing: the event counts are running totals over the whole demo.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(EVENT_NAMES, 0)
        self._closings = 0
        self._closed = False

    def update(self, result: MetricResult) -> None:
        """Count the outcome and the fallback outcome of one command."""
        names = result.events
        with self._lock:
            if self._closed:
                return
            for name in names:
                self._counts[name] += 1

    def reset(self) -> None:
        """The circuit closed: count it, and keep the event totals."""
        with self._lock:
            self._closings += 1

    def counts(self) -> dict[str, int]:
        """Totals so far, for every hystrix-go event name, and ``closings`` (times the circuit closed)."""
        with self._lock:
            return {**self._counts, "closings": self._closings}

    def close(self) -> None:
        """Stop counting (the circuit keeps its collectors; this one becomes inert)."""
        with self._lock:
            self._closed = True


class IgnoreEvents:
    """The collector other circuits get if they are created while the demo creates its own."""

    def update(self, result: MetricResult) -> None:
        """Ignore it."""

    def reset(self) -> None:
        """Nothing to forget."""
