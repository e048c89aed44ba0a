"""The standalone stream server's rules and bounds: Host, bodies, banners, head size, connections,
timeouts, slow clients, and what close() leaves behind (nothing)."""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS
from fasthystrix import stream
from fasthystrix._observability import _http
from support import BEYOND_SHARED_BOUNDS, WAIT, wait_until


def fds() -> set[str]:
    """This process's open descriptors (Linux), by number and what each is."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{name} {os.readlink(f'/proc/self/fd/{name}')}")
        except FileNotFoundError:  # the one listdir itself used
            pass
    return out


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fasthystrix-stream")]


def connect(server: fasthystrix.StreamServer, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family)
    sock.settimeout(WAIT)
    sock.connect((server.host, server.port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the server did not close the connection within {timeout:g} s; it sent {data[:300]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return data
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk


def exchange(server: fasthystrix.StreamServer, request: bytes, family: int = socket.AF_INET) -> bytes:
    """Send ``request`` raw and return the whole answer (the server closes every connection after one)."""
    with connect(server, family) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def head_of(answer: bytes) -> dict[str, str]:
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {key.lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}


def get(path: str, host: str | None, *extra: str, version: str = "HTTP/1.1", method: str = "HEAD") -> bytes:
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture
def server() -> Iterator[fasthystrix.StreamServer]:
    with fasthystrix.serve_stream(port=0, interval=0.05, keepalive=0.3) as srv:
        yield srv
    assert not server_threads()


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"read_timeout": 0}, ValueError, "read_timeout must be greater than 0, got 0"),
        ({"read_timeout": "5"}, TypeError, "read_timeout must be a number, not '5'"),
        ({"read_timeout": float("inf")}, ValueError, "read_timeout must be at most 3600 seconds, got inf"),
        ({"read_timeout": float("nan")}, ValueError, "read_timeout"),
        ({"max_clients": 0}, ValueError, "max_clients must be between 1 and 1000000, got 0"),
        ({"max_clients": 1.5}, TypeError, "max_clients must be an int, not 1.5"),
        ({"max_clients": True}, TypeError, "max_clients must be an int, not True"),
        ({"backlog": 0}, ValueError, "backlog must be between 1 and 65535, got 0"),
        ({"backlog": 65536}, ValueError, "backlog must be between 1 and 65535, got 65536"),
        ({"backlog": "128"}, TypeError, "backlog must be an int, not '128'"),
        ({"allowed_hosts": "example.com"}, TypeError, "allowed_hosts must be a list of host names, not 'example.com'"),
        ({"allowed_hosts": 5}, TypeError, "allowed_hosts must be a list of host names, not 5"),
        ({"allowed_hosts": [b"a.example"]}, TypeError, "allowed_hosts must hold host names as str, not b'a.example'"),
        ({"allowed_hosts": ["example.com:80"]}, ValueError, "without a port, got 'example.com:80'"),
        ({"allowed_hosts": ["[::1]:80"]}, ValueError, "without a port, got '\\[::1\\]:80'"),
        ({"allowed_hosts": ["a b"]}, ValueError, "without a port, got 'a b'"),
        ({"allowed_hosts": [""]}, ValueError, "without a port, got ''"),
    ],
)
def test_serve_stream_rejects_bad_bounds(kwargs: dict[str, Any], error: type[Exception], text: str) -> None:
    before = fds()
    with pytest.raises(error, match=text):
        fasthystrix.serve_stream(port=0, **kwargs)
    assert not server_threads()
    assert fds() == before


def test_bounds_are_kept_and_have_documented_defaults() -> None:
    with fasthystrix.serve_stream(port=0) as srv:
        assert (srv.read_timeout, srv.write_timeout, srv.max_clients, srv.backlog) == (10.0, 10.0, 1024, 1024)
        assert srv.allowed_hosts == frozenset({"127.0.0.1"})
        assert srv.host == "127.0.0.1"  # loopback unless told otherwise
    names = ["Dash.Example.", "::1", "[fe80::1]", "10.1.2.3", "*"]
    with fasthystrix.serve_stream(port=0, allowed_hosts=names, read_timeout=3600, max_clients=1, backlog=1) as srv:
        assert srv.allowed_hosts == frozenset({"dash.example", "::1", "fe80::1", "10.1.2.3", "*", "127.0.0.1"})
    assert _http.MAX_HEAD == 8192
    assert stream.WRITE_BUFFER == 64 * 1024


# -- Host, bodies, banners ------------------------------------------------------------------


def test_host_must_name_the_address_served(server: fasthystrix.StreamServer) -> None:
    port = server.port
    good = ["127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}", "LocalHost.", "127.0.0.1:"]
    for host in good:
        assert status(exchange(server, get("/hystrix-dashboard", host))) == 200, host
    # A name pointed at this address (DNS rebinding), another address, and malformed values.
    bad = [
        "evil.example",
        f"evil.example:{port}",
        "localhost.evil.example",
        "127.0.0.2",
        f"[::1]:{port}",
        "",
        "127.0.0.1:99999",
        "127.0.0.1:80x",
        "evil example",
        "[::1",
        "::1",
    ]
    for host in bad:
        answer = exchange(server, get("/hystrix.stream", host, method="GET"))
        assert status(answer) == 400, host
        assert b"data:" not in answer and b": ping" not in answer
    assert status(exchange(server, get("/hystrix.stream", None))) == 400  # HTTP/1.1 must name its host
    assert status(exchange(server, get("/", None, version="HTTP/1.0"))) == 200  # HTTP/1.0 may not
    twice = get("/", "127.0.0.1", "Host: evil.example")
    assert status(exchange(server, twice)) == 400


def test_configured_names_and_the_wildcard() -> None:
    with fasthystrix.serve_stream(port=0, allowed_hosts=["dash.example", "10.9.8.7"]) as srv:
        for host in ("dash.example", f"DASH.example:{srv.port}", "10.9.8.7:1", "127.0.0.1", "localhost"):
            assert status(exchange(srv, get("/", host))) == 200, host
        assert status(exchange(srv, get("/", "other.example"))) == 400
    with fasthystrix.serve_stream(port=0, allowed_hosts=["*"]) as srv:
        assert status(exchange(srv, get("/", "anything.example:8080"))) == 200
        assert status(exchange(srv, get("/", "bad host"))) == 400  # still well-formed


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_host_on_ipv6_loopback() -> None:
    if not _ipv6_loopback():
        pytest.fail("this machine has no IPv6 loopback (::1)")
    with fasthystrix.serve_stream(port=0, host="::1") as srv:
        assert srv.url == f"http://[::1]:{srv.port}"
        for host in ("[::1]", f"[::1]:{srv.port}", "[0:0:0:0:0:0:0:1]", "localhost", f"localhost:{srv.port}"):
            assert status(exchange(srv, get("/", host), socket.AF_INET6)) == 200, host
        for host in ("::1", "[::2]", "127.0.0.1", f"[::1]:{srv.port}x", "evil.example"):
            assert status(exchange(srv, get("/", host), socket.AF_INET6)) == 400, host


def test_request_bodies_are_refused_and_never_read_as_a_request(server: fasthystrix.StreamServer) -> None:
    smuggled = get("/hystrix.stream", "127.0.0.1", method="GET")
    with_length = get("/", "127.0.0.1", f"Content-Length: {len(smuggled)}", method="GET") + smuggled
    answer = exchange(server, with_length)
    assert status(answer) == 400
    assert answer.count(b"HTTP/1.1 ") == 1 and b"text/event-stream" not in answer  # one answer, then closed
    chunked = get("/hystrix.stream", "127.0.0.1", "Transfer-Encoding: chunked", method="GET") + b"0\r\n\r\n"
    assert status(exchange(server, chunked)) == 400
    for length in ("1", "-1", "abc", "0x0", "1, 1"):
        assert status(exchange(server, get("/", "127.0.0.1", f"Content-Length: {length}"))) == 400, length
    assert status(exchange(server, get("/", "127.0.0.1", "Content-Length: 0"))) == 200
    post = get("/", "127.0.0.1", "Content-Length: 5", method="POST") + b"hello"
    assert status(exchange(server, post)) == 400
    assert status(exchange(server, get("/", "127.0.0.1", method="POST"))) == 405


def test_no_server_banner_and_every_answer_closes(server: fasthystrix.StreamServer) -> None:
    for request in (
        get("/hystrix-dashboard", "127.0.0.1", method="GET"),
        get("/hystrix.stream", "127.0.0.1"),
        get("/nope", "127.0.0.1", method="GET"),
        get("/", "evil.example"),
        b"NONSENSE\r\n\r\n",
    ):
        answer = exchange(server, request)
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert b"python" not in head.lower(), head
        assert "server" not in head_of(answer)
        assert head_of(answer)["connection"] == "close"
        assert "date" in head_of(answer)
    with connect(server) as sock:
        sock.sendall(get("/hystrix.stream", "127.0.0.1", method="GET"))
        first = sock.recv(1 << 16)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"python" not in first.lower() and b"\r\nserver:" not in first.lower()


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
        (b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n continued\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"\r\n\r\nGET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200),  # empty lines first are allowed
        (b"GET / HTTP/1.1\nHost: 127.0.0.1\n\n", 200),  # so are bare LFs
        (b"GET /hystrix.stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", None),  # the stream: checked below
    ],
)
def test_malformed_requests(server: fasthystrix.StreamServer, request_bytes: bytes, code: int | None) -> None:
    if code is None:
        with connect(server) as sock:
            sock.sendall(request_bytes)
            assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200 OK\r\n")
        return
    assert status(exchange(server, request_bytes)) == code


# -- bounds -------------------------------------------------------------------------------


def test_request_head_is_bounded_at_8_kib(server: fasthystrix.StreamServer) -> None:
    def head_of_size(size: int) -> bytes:
        base = get("/", "127.0.0.1", "X-Pad: ")
        pad = size - len(base)
        return get("/", "127.0.0.1", "X-Pad: " + "p" * pad)

    at_bound = head_of_size(_http.MAX_HEAD)
    assert len(at_bound) == 8192
    assert status(exchange(server, at_bound)) == 200
    over = head_of_size(_http.MAX_HEAD + 1)
    assert status(exchange(server, over)) == 431
    # Also when it arrives in pieces, and when it never ends.
    with connect(server) as sock:
        for i in range(0, len(over), 1000):
            sock.sendall(over[i : i + 1000])
        assert status(read_until_closed(sock)) == 431
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: " + b"x" * (2 * _http.MAX_HEAD))
        assert status(read_until_closed(sock)) == 431


def test_max_clients_is_a_hard_bound_and_the_next_client_waits_its_turn() -> None:
    with fasthystrix.serve_stream(port=0, max_clients=3, read_timeout=60) as srv:
        held = [connect(srv) for _ in range(3)]
        try:
            wait_until(lambda: srv.connections == 3, "three connections")
            waiting = connect(srv)  # completes in the kernel's backlog, but is not served yet
            waiting.sendall(get("/", "127.0.0.1"))
            with selectors.DefaultSelector() as sel:
                sel.register(waiting, selectors.EVENT_READ)
                assert sel.select(0.3) == []  # nothing is answered while the server is full
            assert srv.connections == 3
            held.pop().close()  # a slot frees: the waiting client is served
            assert status(read_until_closed(waiting)) == 200
            waiting.close()
            assert srv.connections <= 3
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: srv.connections == 0, "every connection to end")


def test_silent_and_slow_heads_are_dropped_after_the_read_timeout() -> None:
    with fasthystrix.serve_stream(port=0, read_timeout=0.5) as srv:
        start = time.monotonic()
        silent = connect(srv)
        slow = connect(srv)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        assert read_until_closed(silent) == b""  # dropped without a word
        assert status(read_until_closed(slow)) == 408
        assert time.monotonic() - start >= 0.45
        silent.close()
        slow.close()
        wait_until(lambda: srv.connections == 0, "the dropped connections to be gone")


def test_an_answered_client_that_never_closes_is_dropped_after_the_read_timeout() -> None:
    with fasthystrix.serve_stream(port=0, read_timeout=0.5) as srv:
        with connect(srv) as sock:
            sock.sendall(get("/", "127.0.0.1"))
            assert status(read_until_closed(sock)) == 200  # the server ends its side (FIN)...
            # ...and waits for ours, which never comes: the connection is dropped all the same.
            wait_until(lambda: srv.connections == 0, "the lingering connection to be dropped")


def test_what_follows_a_head_is_discarded_up_to_64_kib() -> None:
    with fasthystrix.serve_stream(port=0, read_timeout=60) as srv:
        with connect(srv) as sock:
            sock.sendall(get("/", "127.0.0.1") + b"x" * stream.MAX_DISCARD)  # at the bound: kept
            assert status(read_until_closed(sock)) == 200
            assert srv.connections == 1  # waits for the client's end (read_timeout)
            sock.sendall(b"x")  # past it: cut off at once, not after read_timeout
            wait_until(lambda: srv.connections == 0, "the connection to be cut")


def test_a_stream_client_queues_at_most_max_pending_ticks() -> None:
    """At the bound: max_pending chunks queued are kept, one more drops the client."""
    dropped = []
    client = stream._Client(3, lambda: dropped.append(True))
    assert client.take_nowait() == stream.PING  # what a new client gets first
    assert [client.offer(b"tick %d" % i) for i in range(3)] == [True, True, True]
    assert not dropped
    assert client.offer(b"tick 3") is False
    assert dropped == [True] and client.dropped and client.take_nowait() is None


@pytest.mark.skipif(SHARED_TESTS, reason=BEYOND_SHARED_BOUNDS)
def test_a_stalled_stream_client_holds_bounded_bytes_and_is_dropped() -> None:
    for i in range(20):
        fasthystrix.do(f"{'y' * 4000}-{i}", lambda: 1)
    tick = len(stream.StreamHandler().render())
    with fasthystrix.serve_stream(port=0, interval=0.05, max_pending=20, write_timeout=60) as srv:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", srv.port))
        stalled.sendall(get("/hystrix.stream", "127.0.0.1", method="GET"))  # and never reads
        try:
            most = 0
            deadline = time.monotonic() + WAIT
            while srv.handler.dropped_clients == 0 and time.monotonic() < deadline:
                for connection in list(srv._serving.connections):
                    transport = connection.transport
                    if transport is not None and not transport.is_closing():
                        most = max(most, transport.get_write_buffer_size())
                    client = connection.client
                    if client is not None:
                        assert len(client._chunks) <= srv.handler.max_pending
                time.sleep(0.005)
            assert srv.handler.dropped_clients == 1
            assert 0 < most <= stream.WRITE_BUFFER + tick + 64  # + the headers of the stream
            wait_until(lambda: srv.connections == 0, "the dropped client's connection to be cut")
        finally:
            stalled.close()


# -- close() ------------------------------------------------------------------------------


def test_close_leaves_no_thread_and_no_descriptor() -> None:
    threads_before = set(threading.enumerate())
    fds_before = fds()
    srv = fasthystrix.serve_stream(port=0, interval=0.05, read_timeout=60)
    clients = [connect(srv) for _ in range(20)]  # silent
    streams = [connect(srv) for _ in range(5)]
    for sock in streams:
        sock.sendall(get("/hystrix.stream", "127.0.0.1", method="GET"))
        assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200 OK")
    answered = connect(srv)  # got its page, keeps its end open
    answered.sendall(get("/", "127.0.0.1"))
    assert status(answered.recv(1 << 16)) == 200
    wait_until(lambda: srv.connections == 26, "every connection to be accepted")
    srv.close()
    srv.close()  # twice is fine
    assert not server_threads()
    assert set(threading.enumerate()) <= threads_before
    for sock in [*clients, *streams, answered]:
        read_until_closed(sock)  # each was ended by the server
        sock.close()
    assert fds() == fds_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT).close()
