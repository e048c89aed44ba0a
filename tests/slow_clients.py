"""Slow and stalled HTTP clients over raw loopback sockets, for the middlewares' fairness tests."""

from __future__ import annotations

import socket
import threading
from collections import Counter

#: Bytes a slow upload announces: far more than it ever sends during a test.
ANNOUNCED = 1_000_000


class SlowUploads:
    """``connections`` clients that each send ``POST path`` with a large Content-Length, then its
    body one byte every ``every`` seconds (``trickle``) or nothing more (stalled). A client that is
    answered (or cut off) reconnects and starts over, as an attacker would; ``answers`` counts the
    status codes they got."""

    def __init__(self, port: int, path: str, connections: int = 10, *, trickle: bool = True, every: float = 0.05):
        self.port = port
        self.path = path
        self.trickle = trickle
        self.every = every
        self.answers: Counter[int] = Counter()
        self.connected = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def __enter__(self) -> SlowUploads:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {ANNOUNCED}\r\n\r\n"
        ).encode()
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(head + b"x")
                    with self._lock:
                        self.connected += 1
                    sock.settimeout(self.every)
                    self._until_answered(sock)
            except OSError:
                pass  # cut off mid-body: start over

    def _until_answered(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if self.trickle:
                    sock.sendall(b"x")
                continue
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
            with self._lock:
                self.answers[status] += 1
            return


class SlowReaders:
    """``connections`` clients that each send ``GET path`` and then never read the response."""

    def __init__(self, port: int, path: str, connections: int = 10) -> None:
        self.sockets: list[socket.socket] = []
        for _ in range(connections):
            sock = socket.socket()
            # A small receive window, so that the server's sends soon have to wait for this client.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            self.sockets.append(sock)

    def __enter__(self) -> SlowReaders:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in self.sockets:
            sock.close()
