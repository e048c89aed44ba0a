"""The Hystrix metrics stream: message format (spec section 9), the publisher, and real servers."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import fasthystrix
from conftest import SHARED_TESTS, FakeClock
from fasthystrix import _registry, stream
from fasthystrix._observability import _stream_messages
from support import BEYOND_SHARED_BOUNDS, WAIT, wait_until

# hystrix-go's keys, in emitted order (spec 9.2 and 9.3).
HYSTRIX_GO_COMMAND_KEYS = [
    "type",
    "name",
    "group",
    "currentTime",
    "reportingHosts",
    "requestCount",
    "errorCount",
    "errorPercentage",
    "isCircuitBreakerOpen",
    "rollingCountCollapsedRequests",
    "rollingCountExceptionsThrown",
    "rollingCountFailure",
    "rollingCountFallbackFailure",
    "rollingCountFallbackRejection",
    "rollingCountFallbackSuccess",
    "rollingCountResponsesFromCache",
    "rollingCountSemaphoreRejected",
    "rollingCountShortCircuited",
    "rollingCountSuccess",
    "rollingCountThreadPoolRejected",
    "rollingCountTimeout",
    "currentConcurrentExecutionCount",
    "latencyExecute_mean",
    "latencyExecute",
    "latencyTotal_mean",
    "latencyTotal",
    "propertyValue_circuitBreakerRequestVolumeThreshold",
    "propertyValue_circuitBreakerSleepWindowInMilliseconds",
    "propertyValue_circuitBreakerErrorThresholdPercentage",
    "propertyValue_circuitBreakerForceOpen",
    "propertyValue_circuitBreakerForceClosed",
    "propertyValue_circuitBreakerEnabled",
    "propertyValue_executionIsolationStrategy",
    "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
    "propertyValue_executionIsolationThreadInterruptOnTimeout",
    "propertyValue_executionIsolationThreadPoolKeyOverride",
    "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
    "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests",
    "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
    "propertyValue_requestCacheEnabled",
    "propertyValue_requestLogEnabled",
]
JAVA_COMMAND_KEYS = [
    "rollingCountBadRequests",
    "rollingCountEmit",
    "rollingCountFallbackEmit",
    "rollingCountFallbackMissing",
    "rollingMaxConcurrentExecutionCount",
    "propertyValue_executionTimeoutInMilliseconds",
    "threadPool",
]
HYSTRIX_GO_POOL_KEYS = [
    "type",
    "name",
    "reportingHosts",
    "currentActiveCount",
    "currentCompletedTaskCount",
    "currentCorePoolSize",
    "currentLargestPoolSize",
    "currentMaximumPoolSize",
    "currentPoolSize",
    "currentQueueSize",
    "currentTaskCount",
    "rollingMaxActiveThreads",
    "rollingCountThreadsExecuted",
    "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
    "propertyValue_queueSizeRejectionThreshold",
]
# What the Netflix dashboard rejects a message without (spec 9.4).
DASHBOARD_REQUIRED_COMMAND_KEYS = {
    "reportingHosts", "type", "name", "group", "isCircuitBreakerOpen", "errorPercentage", "errorCount",
    "requestCount", "rollingCountCollapsedRequests", "rollingCountExceptionsThrown", "rollingCountFailure",
    "rollingCountFallbackFailure", "rollingCountFallbackRejection", "rollingCountFallbackSuccess",
    "rollingCountResponsesFromCache", "rollingCountSemaphoreRejected", "rollingCountShortCircuited",
    "rollingCountSuccess", "rollingCountThreadPoolRejected", "rollingCountTimeout", "rollingCountBadRequests",
    "currentConcurrentExecutionCount", "latencyExecute_mean", "latencyExecute", "latencyTotal_mean", "latencyTotal",
    "propertyValue_circuitBreakerRequestVolumeThreshold", "propertyValue_circuitBreakerSleepWindowInMilliseconds",
    "propertyValue_circuitBreakerErrorThresholdPercentage", "propertyValue_circuitBreakerForceOpen",
    "propertyValue_circuitBreakerForceClosed", "propertyValue_executionIsolationStrategy",
    "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
    "propertyValue_executionIsolationThreadInterruptOnTimeout",
    "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
    "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests", "propertyValue_requestCacheEnabled",
    "propertyValue_requestLogEnabled", "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
}  # fmt: skip
LATENCY_KEYS = ["0", "25", "50", "75", "90", "95", "99", "99.5", "100"]

SEMAPHORE = {"isolation": "semaphore"}


def boom() -> None:
    raise RuntimeError("boom")


def parse(chunk: bytes) -> list[dict[str, Any]]:
    """Turbine's reading: data lines only, JSON from the first brace."""
    out = []
    for line in chunk.decode().splitlines():
        line = line.strip()
        if line.startswith("data:"):
            out.append(json.loads(line[line.index("{") :]))
    return out


def message(name: str, kind: str = "HystrixCommand") -> dict[str, Any]:
    handler = stream.StreamHandler()
    found = [m for m in parse(handler.render()) if m["name"] == name and m["type"] == kind]
    assert len(found) == 1
    return found[0]


# -- the messages ---------------------------------------------------------------------


def test_command_message_has_hystrix_go_keys_in_order_then_the_java_keys() -> None:
    fasthystrix.configure_command("keys", SEMAPHORE)
    fasthystrix.do("keys", lambda: 1)
    msg = message("keys")
    keys = list(msg)
    assert keys[: len(HYSTRIX_GO_COMMAND_KEYS)] == HYSTRIX_GO_COMMAND_KEYS
    extra = keys[len(HYSTRIX_GO_COMMAND_KEYS) :]
    assert extra[: len(JAVA_COMMAND_KEYS)] == JAVA_COMMAND_KEYS
    assert extra[len(JAVA_COMMAND_KEYS) :] == [
        "rollingCountContextCanceled",
        "rollingCountContextDeadlineExceeded",
        "currentQueueCount",  # calls waiting for a ticket (max_queue_wait)
    ]
    assert DASHBOARD_REQUIRED_COMMAND_KEYS <= set(keys)
    assert list(msg["latencyExecute"]) == LATENCY_KEYS
    assert list(msg["latencyTotal"]) == LATENCY_KEYS


def test_thread_pool_message_has_hystrix_go_keys_in_order_then_the_java_keys() -> None:
    fasthystrix.configure_command("pool-keys", SEMAPHORE)
    fasthystrix.do("pool-keys", lambda: 1)
    keys = list(message("pool-keys", "HystrixThreadPool"))
    assert keys == [*HYSTRIX_GO_POOL_KEYS, "currentTime", "rollingCountCommandRejections"]


def test_values_after_one_success_and_two_failures() -> None:
    fasthystrix.configure_command("mixed", {**SEMAPHORE, "max_concurrent_requests": 7, "timeout": 250})
    fasthystrix.do("mixed", lambda: 1)
    for _ in range(2):
        fasthystrix.do("mixed", boom, lambda err: "fallback")
    msg = message("mixed")
    assert msg["requestCount"] == 3
    assert msg["errorCount"] == 2
    assert msg["errorPercentage"] == 67
    assert msg["rollingCountSuccess"] == 1
    assert msg["rollingCountFailure"] == 2
    assert msg["rollingCountFallbackSuccess"] == 2
    assert msg["rollingCountFallbackFailure"] == 0
    assert msg["isCircuitBreakerOpen"] is False
    assert msg["reportingHosts"] == 1
    assert msg["group"] == "mixed"
    # The placeholders hystrix-go leaves at zero or "THREAD" are real values here.
    assert msg["propertyValue_executionIsolationStrategy"] == "SEMAPHORE"
    assert msg["propertyValue_executionIsolationThreadTimeoutInMilliseconds"] == 250
    assert msg["propertyValue_executionTimeoutInMilliseconds"] == 250
    assert msg["propertyValue_executionIsolationSemaphoreMaxConcurrentRequests"] == 7
    assert msg["rollingMaxConcurrentExecutionCount"] == 1
    assert abs(msg["currentTime"] - time.time() * 1000) < 5000
    pool = message("mixed", "HystrixThreadPool")
    assert pool["currentMaximumPoolSize"] == 7
    assert pool["rollingCountThreadsExecuted"] == 3
    assert pool["rollingMaxActiveThreads"] == 1
    assert pool["currentActiveCount"] == 0


def test_rejections_short_circuits_and_timeouts_are_counted() -> None:
    fasthystrix.configure_command("events", {**SEMAPHORE, "timeout": 20, "max_concurrent_requests": 1})
    fasthystrix.do("events", lambda: time.sleep(0.05), lambda err: None)  # runs past its deadline
    # The held call must not time out too, however long the test takes to release it.
    fasthystrix.configure_command("events", {**SEMAPHORE, "timeout": 120_000, "max_concurrent_requests": 1})
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(2 * WAIT)

    holder = threading.Thread(target=fasthystrix.do, args=("events", hold, lambda err: None))
    holder.start()
    assert inside.wait(WAIT)
    msg = message("events")
    assert msg["currentConcurrentExecutionCount"] == 1
    assert message("events", "HystrixThreadPool")["currentActiveCount"] == 1
    fasthystrix.do("events", lambda: 1, lambda err: None)  # rejected: the only ticket is taken
    release.set()
    holder.join(WAIT)
    fasthystrix.get_circuit("events")[0].force_open = True
    fasthystrix.do("events", lambda: 1, lambda err: None)
    msg = message("events")
    assert msg["rollingCountTimeout"] == 1
    # A semaphore command's rejection is a semaphore rejection (see the test below).
    assert msg["rollingCountSemaphoreRejected"] == 1
    assert msg["rollingCountThreadPoolRejected"] == 0
    assert msg["rollingCountShortCircuited"] == 1
    assert msg["isCircuitBreakerOpen"] is True
    assert msg["propertyValue_circuitBreakerForceOpen"] is True
    assert message("events", "HystrixThreadPool")["rollingCountCommandRejections"] == 0


def test_latency_is_reported_in_whole_milliseconds() -> None:
    fasthystrix.configure_command("slowish", SEMAPHORE)
    before = time.monotonic()
    fasthystrix.do("slowish", lambda: time.sleep(0.03))
    called_ms = (time.monotonic() - before) * 1000
    msg = message("slowish")
    # The 30 ms sleep, and no more than the call took as timed from outside (a whole millisecond up).
    assert 25 <= msg["latencyExecute"]["100"] <= called_ms + 1
    assert 25 <= msg["latencyExecute_mean"] <= called_ms + 1
    assert msg["latencyTotal"]["100"] >= msg["latencyExecute"]["100"]
    assert all(isinstance(v, int) for v in msg["latencyExecute"].values())


def test_numbers_are_json_integers_and_html_characters_are_escaped_like_go() -> None:
    name = "<svc & co>"
    fasthystrix.configure_command(name, SEMAPHORE)
    fasthystrix.do(name, lambda: time.sleep(0.002))
    raw = stream.StreamHandler().render().decode()
    assert re.search(r"\d\.\d", raw.replace('"99.5"', "")) is None  # no float anywhere
    assert "<" not in raw and ">" not in raw and "&" not in raw
    assert "\\u003csvc \\u0026 co\\u003e" in raw
    assert parse(raw.encode())[0]["name"] == name


def test_every_circuit_gets_both_messages_sorted_by_name() -> None:
    names = [f"svc-{i:02d}" for i in range(12)]
    for name in reversed(names):
        fasthystrix.do(name, lambda: 1)
    msgs = parse(stream.StreamHandler().render())
    assert [m["name"] for m in msgs] == [n for n in names for _ in range(2)]
    assert [m["type"] for m in msgs[:2]] == ["HystrixCommand", "HystrixThreadPool"]
    assert [m["propertyValue_executionIsolationStrategy"] for m in msgs[::2]] == ["THREAD"] * 12


def test_publishing_never_trips_a_circuit() -> None:
    fasthystrix.configure_command("sick", {**SEMAPHORE, "request_volume_threshold": 1000})
    for _ in range(10):
        fasthystrix.do("sick", boom, lambda err: None)
    circuit = fasthystrix.get_circuit("sick")[0]
    # Now the window is over the new thresholds: hystrix-go's publisher (IsOpen) would trip it.
    fasthystrix.configure_command("sick", {**SEMAPHORE, "request_volume_threshold": 5})
    handler = stream.StreamHandler()
    for _ in range(3):
        assert message("sick")["isCircuitBreakerOpen"] is False
        handler.render()
    assert circuit.state() == "closed"
    assert circuit.is_open() is True  # the check that does trip it shows the window was unhealthy


def test_rendered_text_is_byte_for_byte_the_established_format(clock: FakeClock) -> None:
    """The text the dashboard and Turbine read, frozen: tests/data/stream_tick.txt was written by
    the renderer before it was rebuilt for speed, and both implementations must still match it."""

    def slow(ms: float) -> Callable[[], str]:
        def run() -> str:
            clock.advance(ms=ms)
            return "ok"

        return run

    def failing() -> None:
        clock.advance(ms=10)
        raise ValueError("down")

    name = 'a "50%" <b&c>'  # JSON and HTML escapes, and a "%" that must not be read as a format
    fasthystrix.configure_command(name, {**SEMAPHORE, "max_concurrent_requests": 7, "timeout": 250})
    for ms in (30, 31.5, 2):
        fasthystrix.do(name, slow(ms))
    fasthystrix.do(name, failing, lambda err: "fb")
    fasthystrix.configure_command("pool", {"isolation": "thread", "max_concurrent_requests": 0})
    fasthystrix.do("pool", lambda: 1, lambda err: None)
    fasthystrix.do("forced", slow(1))
    fasthystrix.get_circuit("forced")[0].force_open = True
    circuits = sorted(_registry.circuits().values(), key=lambda c: c.name)
    expected = (Path(__file__).parent / "data" / "stream_tick.txt").read_bytes()
    cache: dict[str, Any] = {}
    assert _stream_messages.render(circuits, 1700000000123) == expected
    assert _stream_messages.render(circuits, 1700000000123, cache) == expected
    later = expected.replace(b":1700000000123,", b":1700000000124,")
    assert _stream_messages.render(circuits, 1700000000124, cache) == later


def test_message_functions_agree_with_render() -> None:
    fasthystrix.do("fn", lambda: 1)
    circuit = fasthystrix.get_circuit("fn")[0]
    command = _stream_messages.command_message(circuit, now_ms=123)
    pool = _stream_messages.thread_pool_message(circuit, now_ms=123)
    assert command["currentTime"] == pool["currentTime"] == 123
    assert parse(_stream_messages.render([circuit], now_ms=123)) == [command, pool]


def test_a_tick_reuses_unchanged_circuits_and_matches_a_fresh_render(clock: FakeClock) -> None:
    """The per-circuit cache of the publisher: byte for byte what rendering afresh gives."""
    for name in ("idle", "busy", "gone"):
        fasthystrix.configure_command(name, SEMAPHORE)
        fasthystrix.do(name, lambda: clock.advance(ms=3))
    cache: dict[str, Any] = {}

    def check(now_ms: int) -> list[dict[str, Any]]:
        circuits = sorted(_registry.circuits().values(), key=lambda c: c.name)
        cached = _stream_messages.render(circuits, now_ms, cache)
        assert cached == _stream_messages.render(circuits, now_ms)
        assert set(cache) == {c.name for c in circuits}  # bounded by the circuits that exist
        return parse(cached)

    first = check(1000)
    assert {m["currentTime"] for m in first} == {1000}
    again = check(2000)  # nothing changed: reused, with the new time
    assert {m["currentTime"] for m in again} == {2000}
    assert [{**m, "currentTime": 0} for m in again] == [{**m, "currentTime": 0} for m in first]
    fasthystrix.do("busy", boom, lambda err: None)  # an event
    fasthystrix.get_circuit("idle")[0].force_open = True  # a state change
    fasthystrix.configure_command("gone", {**SEMAPHORE, "timeout": 77})  # new settings
    third = {(m["name"], m["type"]): m for m in check(3000)}
    assert third["busy", "HystrixCommand"]["rollingCountFailure"] == 1
    assert third["idle", "HystrixCommand"]["isCircuitBreakerOpen"] is True
    assert third["gone", "HystrixCommand"]["propertyValue_executionTimeoutInMilliseconds"] == 77
    clock.advance(11)  # the window's buckets expire: the counts change without any event
    fourth = {(m["name"], m["type"]): m for m in check(4000)}
    assert fourth["busy", "HystrixCommand"]["requestCount"] == 0
    with _registry._lock:
        del _registry._circuits["gone"]
    check(5000)  # a forgotten circuit leaves the cache


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"interval": 0}, ValueError, "interval"),
        ({"interval": "1"}, TypeError, "interval"),
        ({"interval": True}, TypeError, "interval"),
        ({"keepalive": 4}, ValueError, "keepalive"),
        ({"keepalive": -1}, ValueError, "keepalive"),
        ({"max_pending": 0}, ValueError, "max_pending"),
        ({"max_pending": 1.5}, TypeError, "max_pending"),
        ({"allow_origin": 1}, TypeError, "allow_origin"),
        ({"allow_origin": "a\r\nX-Injected: 1"}, TypeError, "allow_origin"),
        ({"interval": 3601}, ValueError, "interval must be at most 3600 seconds, got 3601"),
        ({"interval": float("inf")}, ValueError, "interval must be at most 3600 seconds, got inf"),
        ({"interval": 10**400}, ValueError, "interval must be at most 3600 seconds"),  # was OverflowError
        ({"interval": float("nan")}, ValueError, "interval"),
    ],
)
def test_handler_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        stream.StreamHandler(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"port": -1}, ValueError, "port"),
        ({"port": 70000}, ValueError, "port"),
        ({"port": "80"}, TypeError, "port"),
        ({"host": 1}, TypeError, "host"),
        ({"interval": 0}, ValueError, "interval"),
        ({"write_timeout": 0}, ValueError, "write_timeout"),
        # Accepted before, then every connection failed in socket.settimeout() with OverflowError.
        ({"write_timeout": float("inf")}, ValueError, "write_timeout must be at most 3600 seconds, got inf"),
        ({"write_timeout": 1e300}, ValueError, "write_timeout must be at most 3600 seconds, got 1e\\+300"),
        ({"write_timeout": 3600.5}, ValueError, "write_timeout must be at most 3600 seconds"),
        ({"interval": float("inf")}, ValueError, "interval"),
    ],
)
def test_serve_stream_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        fasthystrix.serve_stream(**{"port": 0, **kwargs})
    assert not [t for t in threading.enumerate() if t.name.startswith("fasthystrix-stream")]


def test_largest_interval_and_write_timeout_serve_clients() -> None:
    with fasthystrix.serve_stream(port=0, interval=3600, keepalive=0.2, write_timeout=3600) as srv:
        assert (srv.handler.interval, srv.handler.keepalive) == (3600.0, 0.2)
        reader = Reader(srv.stream_url)
        try:
            assert reader.status.startswith(b"HTTP/1.")
            assert b" 200 " in reader.status
            assert b": ping\n" in reader.lines(1.0)
        finally:
            reader.close()


# -- the standalone server ------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[fasthystrix.StreamServer]:
    srv = fasthystrix.serve_stream(port=0, interval=0.05, keepalive=0.3)
    try:
        yield srv
    finally:
        srv.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fasthystrix-stream")]


class Reader:
    """A Turbine-style consumer on a raw socket: lines, ticks and data messages.

    It reads with ``recv`` into its own buffer: a socket file object is unusable
    after one read timeout, and these reads time out on purpose.
    """

    def __init__(self, url: str, rcvbuf: int | None = None) -> None:
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        path = "/" + url.split("//")[1].split("/", 1)[1]
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        self.buffer = b""
        self.eof = False
        self.sock.settimeout(WAIT)
        self.status = self.readline()
        self.headers: dict[str, str] = {}
        while (line := self.readline().strip()) != b"":
            key, value = line.decode().split(":", 1)
            self.headers[key.lower()] = value.strip()

    def _fill(self) -> bool:
        """Read what arrives (blocking up to the socket's timeout); ``False`` at the end or on timeout."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except OSError:  # reset: the end, as far as a consumer can tell
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def readline(self) -> bytes:
        """The next whole line; what is left (possibly ``b""``) at the end or on timeout."""
        while b"\n" not in self.buffer:
            if not self._fill():
                rest, self.buffer = self.buffer, b""
                return rest
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read_all(self, timeout: float) -> bytes:
        """Everything until the server closes the connection (or ``timeout`` passes)."""
        self.sock.settimeout(timeout)
        while self._fill():
            pass
        rest, self.buffer = self.buffer, b""
        return rest

    def lines(self, seconds: float) -> list[bytes]:
        """The whole lines that arrive within ``seconds``."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                out.append(line + b"\n")
                continue
            self.sock.settimeout(left)
            if not self._fill():
                if self.eof:
                    break
        return out

    def lines_until(self, done: Callable[[list[bytes]], bool], what: str) -> list[bytes]:
        """The whole lines that arrive until ``done(lines)`` holds; fails after ``WAIT`` s or at the end."""
        out: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while not done(out):
            if self.eof or time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {WAIT:g} s (the stream {'ended' if self.eof else 'went on'})")
            out.extend(self.lines(0.05))
        return out

    def messages_until(self, done: Callable[[list[dict[str, Any]]], bool], what: str) -> list[dict[str, Any]]:
        """The data messages that arrive until ``done(messages)`` holds; fails after ``WAIT`` s."""
        messages: list[dict[str, Any]] = []

        def enough(lines: list[bytes]) -> bool:
            messages[:] = parse(b"".join(lines))
            return done(messages)

        self.lines_until(enough, what)
        return messages

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Callable[[], object]) -> None:
    wait_until(predicate, "the stream's state")


def test_server_binds_loopback_and_serves_sse_headers(server: fasthystrix.StreamServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.stream_url.endswith("/hystrix.stream")
    reader = Reader(server.stream_url)
    try:
        assert reader.status.startswith(b"HTTP/1.1 200")
        assert reader.headers["content-type"].startswith("text/event-stream")
        assert reader.headers["cache-control"] == "no-cache"
        # Something arrives at once, so a consumer knows the stream is up even with no circuit.
        assert reader.readline() == b": ping\n"
    finally:
        reader.close()


def test_cross_origin_reading_is_off_unless_allowed(server: fasthystrix.StreamServer) -> None:
    reader = Reader(server.stream_url)
    try:
        assert "access-control-allow-origin" not in reader.headers
    finally:
        reader.close()
    with fasthystrix.serve_stream(port=0, allow_origin="https://ops.example") as srv:
        reader = Reader(srv.stream_url)
        try:
            assert reader.headers["access-control-allow-origin"] == "https://ops.example"
        finally:
            reader.close()


def test_the_stream_is_also_found_relative_to_a_trailing_slash_dashboard_url(server: fasthystrix.StreamServer) -> None:
    reader = Reader(server.dashboard_url + "/hystrix.stream")
    try:
        assert reader.status.startswith(b"HTTP/1.1 200")
        assert reader.headers["content-type"].startswith("text/event-stream")
    finally:
        reader.close()


def test_turbine_style_consumer_sees_every_circuit(server: fasthystrix.StreamServer) -> None:
    names = {f"turbine-{i}" for i in range(40)}
    for name in names:
        fasthystrix.do(name, lambda: 1)
    reader = Reader(server.stream_url)
    try:
        seen: dict[str, set[str]] = {}

        def every_circuit(lines: list[bytes]) -> bool:
            seen.clear()
            for line in lines:
                if line.strip().startswith(b"data:"):
                    msg = json.loads(line[line.index(b"{") :])
                    assert isinstance(msg["type"], str) and isinstance(msg["name"], str)
                    seen.setdefault(msg["type"], set()).add(msg["name"])
            return seen == {"HystrixCommand": names, "HystrixThreadPool": names}

        reader.lines_until(every_circuit, "both messages of every circuit")
    finally:
        reader.close()


def test_keepalive_arrives_with_no_circuits() -> None:
    with fasthystrix.serve_stream(port=0, interval=10, keepalive=0.2) as srv:
        reader = Reader(srv.stream_url)
        try:
            lines = reader.lines_until(lambda lines: lines.count(b": ping\n") >= 4, "four pings")
        finally:
            reader.close()
    assert not [line for line in lines if line.startswith(b"data:")]


def test_default_keepalive_is_within_turbines_three_seconds() -> None:
    handler = stream.StreamHandler()
    assert handler.interval == 1.0
    assert handler.keepalive <= 3


def test_ticks_arrive_every_interval_and_updates_show(server: fasthystrix.StreamServer) -> None:
    fasthystrix.configure_command("live", SEMAPHORE)
    reader = Reader(server.stream_url)

    def successes(messages: list[dict[str, Any]]) -> list[int]:
        return [m["rollingCountSuccess"] for m in messages if m["type"] == "HystrixCommand"]

    try:
        fasthystrix.do("live", lambda: 1)
        # Ticks keep coming, each with the counts of its moment: an update shows, and stays.
        first = successes(reader.messages_until(lambda m: successes(m)[-2:] == [1, 1], "two ticks showing 1"))
        for _ in range(4):
            fasthystrix.do("live", lambda: 1)
        later = successes(reader.messages_until(lambda m: successes(m)[-2:] == [5, 5], "two ticks showing 5"))
    finally:
        reader.close()
    assert first == sorted(first) and set(first) <= {0, 1}
    assert later == sorted(later) and set(later) <= {1, 2, 3, 4, 5}


@pytest.mark.skipif(SHARED_TESTS, reason=BEYOND_SHARED_BOUNDS)
def test_stalled_client_is_dropped_and_others_get_every_tick() -> None:
    # Big ticks (long names) fill a stalled client's socket buffers within a few ticks.
    for i in range(60):
        fasthystrix.do(f"{'x' * 2000}-{i}", lambda: 1)
    # Six seconds of slack (60 ticks of 100 ms) for the healthy reader, which
    # shares this process and a loaded machine with the server.
    with fasthystrix.serve_stream(port=0, interval=0.1, max_pending=60, write_timeout=30) as srv:
        stalled = Reader(srv.stream_url, rcvbuf=4096)
        healthy = Reader(srv.stream_url)
        try:
            ticks: list[int] = []
            deadline = time.monotonic() + 2 * WAIT
            while srv.handler.dropped_clients == 0 and time.monotonic() < deadline:
                for line in healthy.lines(0.1):
                    if line.startswith(b": tick "):
                        ticks.append(int(line.split()[2]))
            assert srv.handler.dropped_clients == 1
            for line in healthy.lines(0.3):
                if line.startswith(b": tick "):
                    ticks.append(int(line.split()[2]))
            assert len(ticks) > 5
            assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # no tick missed
            assert srv.handler.clients == 1
            # The dropped client's connection is cut, not left hanging.
            stalled.sock.settimeout(WAIT)
            with pytest.raises((ConnectionError, OSError)):
                while stalled.sock.recv(1 << 20):
                    pass
                raise ConnectionResetError("closed")
        finally:
            stalled.close()
            healthy.close()


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_rejections_are_reported_in_the_field_of_the_isolation_strategy(
    server: fasthystrix.StreamServer, isolation: str
) -> None:
    """The Netflix dashboard shows rollingCountSemaphoreRejected for a SEMAPHORE command and
    rollingCountThreadPoolRejected for a THREAD one; Java's thread-pool message counts only
    thread-pool rejections. hystrix-go put every rejection in the thread-pool fields, so a
    semaphore command showed 0 rejected beside its error rate."""
    other = "thread" if isolation == "semaphore" else "semaphore"
    fasthystrix.configure_command("bulkhead", {"isolation": isolation, "max_concurrent_requests": 0})
    for _ in range(4):  # no ticket to take: every call is rejected
        assert fasthystrix.do("bulkhead", lambda: 1, lambda err: "fallback") == "fallback"
    reader = Reader(server.stream_url)

    def latest(messages: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
        found = [m for m in messages if m["type"] == kind and m["name"] == "bulkhead"]
        return found[-1] if found else None

    def both(strategy: str) -> Callable[[list[dict[str, Any]]], bool]:
        def done(messages: list[dict[str, Any]]) -> bool:
            command = latest(messages, "HystrixCommand")
            pool = latest(messages, "HystrixThreadPool")
            return (
                command is not None
                and pool is not None
                and command["propertyValue_executionIsolationStrategy"] == strategy
                and pool["currentTime"] == command["currentTime"]  # the same tick
            )

        return done

    try:
        for strategy in (isolation, other):
            if strategy != isolation:
                # The window's rejections are reported under the strategy the command has now:
                # a tick after the change must not reuse the text rendered before it.
                fasthystrix.configure_command("bulkhead", {"isolation": strategy, "max_concurrent_requests": 0})
            messages = reader.messages_until(both(strategy.upper()), f"a tick of the {strategy} command")
            command = latest(messages, "HystrixCommand")
            pool = latest(messages, "HystrixThreadPool")
            assert command is not None and pool is not None
            semaphore = strategy == "semaphore"
            assert command["rollingCountSemaphoreRejected"] == (4 if semaphore else 0)
            assert command["rollingCountThreadPoolRejected"] == (0 if semaphore else 4)
            assert pool["rollingCountCommandRejections"] == (0 if semaphore else 4)
            # Whichever field shows them, rejections are errors of the command.
            assert (command["requestCount"], command["errorCount"], command["errorPercentage"]) == (4, 4, 100)
            assert command["rollingCountFallbackSuccess"] == 4
    finally:
        reader.close()


def test_disconnects_are_cleaned_up_and_the_publisher_stops(server: fasthystrix.StreamServer) -> None:
    fasthystrix.do("gone", lambda: 1)
    readers = [Reader(server.stream_url) for _ in range(5)]
    wait_for(lambda: server.handler.clients == 5)
    assert [t for t in threading.enumerate() if t.name == "fasthystrix-stream"]
    for reader in readers:
        reader.close()
    wait_for(lambda: server.handler.clients == 0)
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "fasthystrix-stream"])


def test_close_ends_open_streams() -> None:
    srv = fasthystrix.serve_stream(port=0, interval=0.05)
    reader = Reader(srv.stream_url)
    try:
        wait_for(lambda: srv.handler.clients == 1)
        srv.close()
        assert reader.read_all(WAIT) != b""  # got data, then the end of the stream
        assert reader.eof
        with pytest.raises(RuntimeError, match="closed"):
            srv.handler._subscribe()
    finally:
        reader.close()


def test_dashboard_and_unknown_paths(server: fasthystrix.StreamServer) -> None:
    for url in (server.url + "/", server.dashboard_url):
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.headers["X-Frame-Options"] == "DENY"
            assert b"<html" in response.read().lower()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "/nope", timeout=WAIT)
    assert info.value.code == 404
    info.value.close()


# -- WSGI and ASGI mounts ---------------------------------------------------------------


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it so)
        pass


def test_wsgi_app_on_a_real_wsgi_server() -> None:
    fasthystrix.do("wsgi-cmd", lambda: 1)
    handler = stream.StreamHandler(interval=0.05)
    httpd = make_server("127.0.0.1", 0, handler.wsgi_app, _ThreadingWSGIServer, _QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        reader = Reader(base + "/hystrix.stream")
        try:
            assert reader.headers["content-type"].startswith("text/event-stream")
            msgs = reader.messages_until(lambda msgs: len(msgs) >= 2, "a tick")
            assert {m["name"] for m in msgs} == {"wsgi-cmd"}
        finally:
            reader.close()
        with urllib.request.urlopen(base + "/hystrix-dashboard", timeout=WAIT) as response:
            assert b"<html" in response.read().lower()
        request = urllib.request.Request(base + "/hystrix.stream", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=WAIT)
        assert info.value.code == 405
        info.value.close()
        wait_for(lambda: handler.clients == 0)
    finally:
        handler.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(WAIT)


@pytest.fixture
def uvicorn_server() -> Iterator[tuple[str, stream.StreamHandler]]:
    uvicorn = pytest.importorskip("uvicorn")
    starlette_routing = pytest.importorskip("starlette.routing")
    starlette_apps = pytest.importorskip("starlette.applications")
    handler = stream.StreamHandler(interval=0.05)
    app = starlette_apps.Starlette(routes=[starlette_routing.Mount("/ops", app=handler.asgi_app)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]})
    thread.start()
    wait_for(lambda: srv.started)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", handler
    finally:
        handler.close()
        srv.should_exit = True
        thread.join(WAIT)
        sock.close()


def test_asgi_app_mounted_under_a_prefix_on_uvicorn(uvicorn_server: tuple[str, stream.StreamHandler]) -> None:
    base, handler = uvicorn_server
    fasthystrix.configure_command("asgi-cmd", SEMAPHORE)
    fasthystrix.do("asgi-cmd", lambda: 1)
    reader = Reader(base + "/ops/hystrix.stream")
    try:
        assert reader.headers["content-type"].startswith("text/event-stream")
        fasthystrix.do("asgi-cmd", lambda: 1)

        def successes(messages: list[dict[str, Any]]) -> list[int]:
            return [m["rollingCountSuccess"] for m in messages if m["type"] == "HystrixCommand"]

        msgs = reader.messages_until(lambda m: successes(m)[-1:] == [2], "a tick showing 2")
        assert {m["name"] for m in msgs} == {"asgi-cmd"}
        assert handler.clients == 1
    finally:
        reader.close()
    wait_for(lambda: handler.clients == 0)  # the disconnect is noticed
    with urllib.request.urlopen(base + "/ops/hystrix-dashboard", timeout=WAIT) as response:
        assert b"<html" in response.read().lower()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/ops/elsewhere", timeout=WAIT)
    assert info.value.code == 404
    info.value.close()


def test_asgi_stream_ends_when_the_handler_closes(uvicorn_server: tuple[str, stream.StreamHandler]) -> None:
    base, handler = uvicorn_server
    reader = Reader(base + "/ops/hystrix.stream")
    try:
        wait_for(lambda: handler.clients == 1)
        handler.close()
        rest = reader.read_all(WAIT)  # returns once the server ends the chunked body
        assert rest.endswith(b"0\r\n\r\n")
    finally:
        reader.close()


def test_asgi_lifespan_is_answered() -> None:
    handler = stream.StreamHandler()
    sent: list[dict[str, Any]] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(handler.asgi_app({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_settings_changes_show_in_the_next_tick() -> None:
    fasthystrix.configure_command("props", {**SEMAPHORE, "sleep_window": timedelta(seconds=3)})
    fasthystrix.do("props", lambda: 1)
    assert message("props")["propertyValue_circuitBreakerSleepWindowInMilliseconds"] == 3000
    fasthystrix.configure_command("props", {"isolation": "thread", "error_percent_threshold": 30})
    msg = message("props")
    assert msg["propertyValue_circuitBreakerErrorThresholdPercentage"] == 30
    assert msg["propertyValue_executionIsolationStrategy"] == "THREAD"
