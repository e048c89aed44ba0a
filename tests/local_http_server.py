"""The real HTTP server on loopback that the HTTP client wrappers' tests talk to."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# -- the server -----------------------------------------------------------------------------------

GZIPPED = b"".join(b"line %d\n" % i for i in range(500))
_STATUS = {"/ok": 200, "/slow": 200, "/fail": 500, "/unavailable": 503, "/notfound": 404}
#: What ``/held`` answers once released.
HELD_BODY = b"held"
#: Milliseconds for ``/slow`` and ``/trickle`` to outlast any command timeout the tests set: the
#: server stops waiting when it shuts down, so no test waits this long unless it fails.
NEVER_MS = 60_000


class _Handler(BaseHTTPRequestHandler):
    """``/ok``, ``/fail`` (500), ``/unavailable`` (503), ``/notfound`` (404), ``/slow?ms=N`` (late
    headers), ``/trickle?chunks=N&ms=M`` (headers at once, then one byte every M ms), ``/held``
    (headers at once, the body once the test sets ``server.release``), ``/gzip`` (gzip-encoded,
    chunked)."""

    protocol_version = "HTTP/1.1"
    server: LocalServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        delay = int(query.get("ms", ["0"])[0]) / 1000
        self.server.hit(url.path)
        if url.path == "/slow" and self.server.stopping.wait(delay):
            self.close_connection = True
            return
        if url.path == "/trickle":
            chunks = int(query.get("chunks", ["5"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(chunks))
            self.end_headers()
            for _ in range(chunks):
                if self.server.stopping.wait(delay):
                    self.close_connection = True
                    return
                self.wfile.write(b"x")
            return
        if url.path == "/held":
            self.send_response(200)
            self.send_header("Content-Length", str(len(HELD_BODY)))
            self.end_headers()
            self.wfile.flush()
            while not self.server.release.wait(0.05):
                if self.server.stopping.is_set():
                    self.close_connection = True
                    return
            self.wfile.write(HELD_BODY)
            return
        if url.path == "/gzip":
            body = gzip.compress(GZIPPED)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 16):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i : i + 16]), body[i : i + 16]))
            self.wfile.write(b"0\r\n\r\n")
            return
        status = _STATUS.get(url.path, 404)
        body = f"{url.path} {status}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stopping = threading.Event()
        #: Lets every ``/held`` request (waiting or still to come) send its body.
        self.release = threading.Event()
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hit(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (reset, broken pipe): expected here

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        """The default command name of this server's requests."""
        return f"127.0.0.1:{self.port}"


def serving() -> Iterator[LocalServer]:
    """Run a :class:`LocalServer` for the duration of a fixture."""
    srv = LocalServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refusing_ports(count: int) -> Iterator[list[int]]:
    """``count`` loopback ports that refuse connections: bound and never listening, so that
    nothing else can take them while the block runs."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        yield [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
