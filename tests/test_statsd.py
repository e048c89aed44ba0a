"""The StatsD collector, sending to a real UDP socket on loopback."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix.metric_collector import MetricCollector, MetricResult, registry
from fasthystrix.statsd import (
    LAN_STATSD_FLUSH_BYTES,
    WAN_STATSD_FLUSH_BYTES,
    StatsdCollectorClient,
    sanitize_name,
)
from support import HOSTILE_NAMES, WAIT, wait_until


class Daemon:
    """A UDP socket on loopback standing in for statsd: a thread records every packet as it arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # As much buffer as the kernel allows: the client sends a flush's packets back to back.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.01)
        self.address = self.sock.getsockname()
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="test-statsd-daemon")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.packets.append(self.sock.recv(65536))
            except (TimeoutError, BlockingIOError):
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def receive(self, until: Callable[[list[str]], bool] = lambda lines: True, timeout: float = WAIT) -> list[str]:
        """Wait until ``until(lines)`` holds for every line received so far (or fail)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if lines and until(lines):
                return lines
            if time.monotonic() > deadline:
                counters, timings, gauges = _parse(lines)
                sizes = {name: len(values) for name, values in timings.items()}
                pytest.fail(f"the expected metrics never arrived; got {counters}, timings {sizes}, gauges {gauges}")
            time.sleep(0.005)

    def lines(self) -> list[str]:
        return [line for packet in list(self.packets) for line in packet.decode().split("\n")]


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    d.close()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[StatsdCollectorClient]:
    c = StatsdCollectorClient(daemon.address, prefix="myapp.hystrix", flush_interval=60).register()
    yield c
    c.close()
    assert not _statsd_threads()


def _complete(name: str, commands: int) -> Callable[[list[str]], bool]:
    """Every line of ``commands`` commands of ``name`` arrived: attempts counted, three timings each."""

    def complete(lines: list[str]) -> bool:
        counters, timings, _ = _parse(lines)
        return counters[f"{name}.attempts"] == commands and all(
            len(timings.get(f"{name}.{metric}", ())) == commands
            for metric in ("totalDuration", "runDuration", "concurrencyInUse")
        )

    return complete


def _statsd_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fasthystrix-statsd"]


def _configure(name: str, **extra: Any) -> None:
    fasthystrix.configure_command(name, {"isolation": "semaphore", **extra})


def _parse(lines: list[str]) -> tuple[Counter[str], dict[str, list[str]], dict[str, str]]:
    """Counters summed by name, timing values by name, the last gauge value by name."""
    counters: Counter[str] = Counter()
    timings: dict[str, list[str]] = {}
    gauges: dict[str, str] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        value, kind = rest.split("|")[:2]
        if kind == "c":
            counters[name] += int(value)
        elif kind == "ms":
            timings.setdefault(name, []).append(value)
        else:
            assert kind == "g", line
            gauges[name] = value
    return counters, timings, gauges


def test_sanitize_name() -> None:
    assert sanitize_name("svc/users:get.v2") == "svc-users-get-v2"
    assert sanitize_name("plain_name") == "plain_name"
    # Every other character outside [A-Za-z0-9_-] becomes "_", one for each code point.
    assert sanitize_name("GET /items/{item_id}") == "GET_-items-_item_id_"
    assert sanitize_name("a|b#c d\ne\x00f\ud800g\U0001f600h@i") == "a_b_c_d_e_f_g_h_i"
    assert sanitize_name("") == "_"
    # Longer than 200 characters: cut, and told apart by a hash of the whole name.
    long_a, long_b = sanitize_name("x" * 10_240), sanitize_name("x" * 10_239 + "y")
    assert len(long_a) == len(long_b) == 200
    assert long_a.startswith("x" * 191 + "-") and long_a != long_b
    assert re.fullmatch("[0-9a-f]{8}", long_a[192:])
    assert sanitize_name("y" * 200) == "y" * 200


# One StatsD line, strictly: dot-separated segments of [A-Za-z0-9_-], a number, a type, a sample rate.
_LINE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*:(0|[1-9][0-9]*)(\.[0-9]+)?\|(c|g|ms)(\|@(0\.[0-9]*[1-9]|1))?")


def test_any_name_gives_valid_lines_and_every_circuit_arrives(daemon: Daemon) -> None:
    names = ["normal", *HOSTILE_NAMES]
    with StatsdCollectorClient(daemon.address, prefix="myapp.hystrix", flush_interval=60).register() as client:
        for name in names:
            _configure(name)
            for _ in range(3):
                fasthystrix.do(name, lambda: "ok")
        client.flush()

        def every_circuit(lines: list[str]) -> bool:
            counters = _parse(lines)[0]
            return sum(1 for key, n in counters.items() if key.endswith(".attempts") and n == 3) == len(names)

        lines = daemon.receive(every_circuit)
        assert (client.dropped_packets, client.dropped_commands) == (0, 0)
        packets = list(daemon.packets)
    for packet in packets:
        assert len(packet) <= LAN_STATSD_FLUSH_BYTES
        for line in packet.decode("ascii").split("\n"):
            assert _LINE.fullmatch(line), line
    counters = _parse(lines)[0]
    circuits = {key.removeprefix("myapp.hystrix.").rpartition(".")[0] for key in counters}
    assert len(circuits) == len(names)  # none merged with another
    for circuit in ("normal", "new_line", "pi_pe", "ha_sh", "sp_ace", "col-on_at", "nul_byte", "emoji__", "_"):
        assert counters[f"myapp.hystrix.{circuit}.successes"] == 3, circuit
    assert counters["myapp.hystrix.lone___high_surrogate.successes"] == 3
    assert any(circuit.startswith("x" * 191 + "-") and len(circuit) == 200 for circuit in circuits)


def test_a_result_that_cannot_be_formatted_is_dropped_alone(daemon: Daemon) -> None:
    with StatsdCollectorClient(daemon.address, flush_interval=60) as client:
        good, bad = client.new_statsd_collector("good"), client.new_statsd_collector("bad")
        good.update(MetricResult(attempts=1, successes=1))
        bad.update(MetricResult(attempts=1, successes=1, run_duration="not a timedelta"))  # type: ignore[arg-type]
        good.update(MetricResult(attempts=1, successes=1))
        client.flush()
        daemon.receive(_complete("good", 2))
        assert client.dropped_commands == 1


def test_hystrix_go_names_types_and_values(client: StatsdCollectorClient, daemon: Daemon, clock: FakeClock) -> None:
    name = "users/get:v1.2"
    _configure(name, max_concurrent_requests=4)

    def run_30ms() -> str:
        clock.advance(ms=30)
        return "ok"

    def fail_10ms() -> None:
        clock.advance(ms=10)
        raise ValueError("down")

    for _ in range(2):
        fasthystrix.do(name, run_30ms)
    fasthystrix.do(name, fail_10ms, lambda err: "fb")
    fasthystrix.get_circuit(name)[0].force_open = True
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, run_30ms)
    client.flush()
    lines = daemon.receive(_complete("myapp.hystrix.users-get-v1-2", 4))
    p = "myapp.hystrix.users-get-v1-2."
    assert all(line.startswith(p) for line in lines), lines
    counters, timings, gauges = _parse(lines)
    assert counters == {
        p + "attempts": 4,
        p + "errors": 2,
        p + "successes": 2,
        p + "failures": 1,
        p + "shortCircuits": 1,
        p + "fallbackSuccesses": 1,
    }
    # The last command was short-circuited: hystrix-go's circuitOpen gauge says 1. The
    # concurrency limit is a gauge of ours.
    assert gauges == {p + "circuitOpen": "1", p + "maxConcurrentRequests": "4"}
    # Timings for every command, in milliseconds as Go formats them (zero when it did not run).
    assert timings[p + "runDuration"] == ["30", "30", "10", "0"]
    assert timings[p + "totalDuration"] == ["30", "30", "10", "0"]
    assert timings[p + "concurrencyInUse"] == ["0", "0", "0", "0"]


def test_fractional_milliseconds_concurrency_and_gauge(
    client: StatsdCollectorClient, daemon: Daemon, clock: FakeClock
) -> None:
    _configure("nested", max_concurrent_requests=4)

    def inner() -> None:
        clock.advance(ms=1.5)

    fasthystrix.do("nested", lambda: fasthystrix.do("nested", inner))
    client.flush()
    counters, timings, gauges = _parse(daemon.receive(_complete("myapp.hystrix.nested", 2)))
    p = "myapp.hystrix.nested."
    assert timings[p + "runDuration"] == ["1.5", "1.5"]
    # The inner command reported while the outer one held 1 of 4 tickets: 100 * 1/4.
    assert timings[p + "concurrencyInUse"] == ["25", "0"]
    assert gauges == {p + "circuitOpen": "0", p + "maxConcurrentRequests": "4"}
    assert counters[p + "successes"] == 2


def test_the_concurrency_limit_gauge_is_the_current_limit(
    client: StatsdCollectorClient, daemon: Daemon, clock: FakeClock
) -> None:
    p = "myapp.hystrix.limited."
    limit = fasthystrix.AdaptiveLimit(algorithm="vegas", initial=5, min_limit=1, max_limit=50)
    _configure("limited", max_concurrent_requests=limit)
    fasthystrix.do("limited", lambda: None)
    client.flush()
    _, _, gauges = _parse(daemon.receive(_complete("myapp.hystrix.limited", 1)))
    assert gauges[p + "maxConcurrentRequests"] == str(fasthystrix.get_circuit("limited")[0].concurrency_limit)
    _configure("limited", max_concurrent_requests=9)  # reconfigured: the next flush says so
    fasthystrix.do("limited", lambda: None)
    client.flush()
    _, _, gauges = _parse(daemon.receive(_complete("myapp.hystrix.limited", 2)))
    assert gauges[p + "maxConcurrentRequests"] == "9"


def test_a_circuit_flushed_before_its_results_are_sent_reports_no_limit(
    client: StatsdCollectorClient, daemon: Daemon
) -> None:
    _configure("gone", max_concurrent_requests=3)
    fasthystrix.do("gone", lambda: None)
    fasthystrix.flush()  # the circuit is forgotten; its queued result is still sent
    client.flush()
    counters, _, gauges = _parse(daemon.receive(_complete("myapp.hystrix.gone", 1)))
    assert counters["myapp.hystrix.gone.successes"] == 1
    assert gauges == {"myapp.hystrix.gone.circuitOpen": "0"}


def test_every_event_counter(daemon: Daemon, clock: FakeClock) -> None:
    with StatsdCollectorClient(daemon.address, flush_interval=60).register() as client:
        _configure("all")

        def late() -> None:
            clock.advance(ms=1500)

        with pytest.raises(fasthystrix.TimeoutError):
            fasthystrix.do("all", late)
        with pytest.raises(fasthystrix.FallbackError):
            fasthystrix.do("all", lambda: 1 / 0, lambda err: 1 / 0)
        _configure("all", max_concurrent_requests=0)
        with pytest.raises(fasthystrix.MaxConcurrencyError):
            fasthystrix.do("all", lambda: None)
        ctx = fasthystrix.Context()
        ctx.cancel()
        with pytest.raises(fasthystrix.ContextCanceledError):
            fasthystrix.do_c(ctx, "all", lambda c: None)
        client.flush()
        counters, _, gauges = _parse(daemon.receive(_complete("all", 4)))
    # No prefix: the names start with the circuit's.
    assert counters == {
        "all.attempts": 4,
        "all.errors": 3,
        "all.timeouts": 1,
        "all.failures": 1,
        "all.fallbackFailures": 1,
        "all.rejects": 1,
        "all.contextCanceled": 1,
    }
    # Neither a success nor a short-circuit: hystrix-go sends no circuitOpen. The limit is 0 tickets.
    assert gauges == {"all.maxConcurrentRequests": "0"}


def test_burst_is_batched_into_few_packets(daemon: Daemon) -> None:
    # Few enough that one flush's packets fit in the receiving socket's buffer (loopback UDP drops the rest).
    commands = 500
    with StatsdCollectorClient(daemon.address, flush_interval=0.05, flush_bytes=WAN_STATSD_FLUSH_BYTES).register():
        _configure("burst", max_concurrent_requests=100)
        for _ in range(commands):
            fasthystrix.do("burst", lambda: None)
        lines = daemon.receive(_complete("burst", commands))
    assert all(len(packet) <= WAN_STATSD_FLUSH_BYTES for packet in daemon.packets)
    # 3 timings per command plus a few summed counters, about 16 lines to a 512-byte packet.
    assert len(lines) >= 3 * commands
    assert len(daemon.packets) <= len(lines) / 10
    assert _parse(lines)[0]["burst.successes"] == commands


def test_background_thread_flushes_on_its_interval(daemon: Daemon) -> None:
    with StatsdCollectorClient(daemon.address, flush_interval=0.02).register() as client:
        _configure("tick")
        fasthystrix.do("tick", lambda: None)
        counters, _, _ = _parse(daemon.receive(_complete("tick", 1)))  # no flush() call
        assert counters["tick.successes"] == 1
        # The flush thread counts a packet after send() returns, and the daemon may have it before
        # then: on a busy machine the count comes later than the packet.
        wait_until(lambda: client.sent_packets >= 1, "the flush thread counts the packet it sent")


def test_close_sends_what_is_queued_and_stops_the_thread(daemon: Daemon) -> None:
    client = StatsdCollectorClient(daemon.address, flush_interval=60).register()
    assert len(_statsd_threads()) == 1
    _configure("closing")
    fasthystrix.do("closing", lambda: None)
    client.close()
    client.close()  # idempotent
    assert not _statsd_threads()
    assert client.new_statsd_collector not in registry.factories
    assert _parse(daemon.receive(_complete("closing", 1)))[0]["closing.successes"] == 1
    # A collector still attached to a live circuit ignores results after close().
    fasthystrix.do("closing", lambda: None)
    assert len(client._queue) == 0
    with pytest.raises(RuntimeError, match="closed"):
        client.register()


def _closed_udp_port() -> int:
    """A loopback UDP port nothing listens on, below the kernel's ephemeral range.

    A port the kernel handed out and took back (bind to 0, close) can be handed out again as the
    local port of the client's own socket, which then sends to itself: no port-unreachable
    answer, nothing refused (seen once in CI). The kernel never gives a port below its range."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            low = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for port in range(low - 1, 1024, -1):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise AssertionError("no free UDP port below the ephemeral range")


def test_daemon_down_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    closed_port = _closed_udp_port()
    _configure("down")
    with caplog.at_level(logging.WARNING, logger="fasthystrix"):
        with StatsdCollectorClient(("127.0.0.1", closed_port), flush_interval=60).register() as client:
            for _ in range(20):
                assert fasthystrix.do("down", lambda: "ok") == "ok"
                client.flush()
            # Connected UDP: the port-unreachable answers surface as refused sends, counted.
            assert client.dropped_packets > 0
    warnings = [r for r in caplog.records if "statsd: dropped" in r.getMessage()]
    assert len(warnings) == 1, "drops are logged at most once a minute"


def test_unresolvable_address_never_raises() -> None:
    _configure("nowhere")
    with StatsdCollectorClient("no-such-host.invalid:8125", flush_interval=60).register() as client:
        for _ in range(2):
            for _ in range(5):
                assert fasthystrix.do("nowhere", lambda: "ok") == "ok"
            # The second time is within the retry delay: dropped without asking the resolver again.
            client.flush()
        assert client.dropped_packets == 2
        assert client.sent_packets == 0


def test_full_queue_drops_and_counts(daemon: Daemon) -> None:
    with StatsdCollectorClient(daemon.address, flush_interval=60, max_queue=10).register() as client:
        _configure("full")
        for _ in range(25):
            fasthystrix.do("full", lambda: None)
        assert client.dropped_commands == 15
        client.flush()
        assert _parse(daemon.receive(_complete("full", 10)))[0]["full.successes"] == 10


def test_sample_rate(daemon: Daemon) -> None:
    with StatsdCollectorClient(daemon.address, flush_interval=60, sample_rate=0.25).register() as client:
        draws = iter([0.1, 0.9, 0.3, 0.2])
        client._random = lambda: next(draws)
        _configure("sampled")
        for _ in range(4):
            fasthystrix.do("sampled", lambda: None)
        client.flush()
        lines = daemon.receive(_complete("sampled", 2))
    assert all(line.endswith("|@0.25") for line in lines), lines
    counters, timings, _ = _parse(lines)
    assert counters["sampled.successes"] == 2  # the draws below 0.25
    assert len(timings["sampled.runDuration"]) == 2


def test_metric_collector_protocol_and_many_threads(daemon: Daemon) -> None:
    with StatsdCollectorClient(daemon.address, flush_interval=0.01).register() as client:
        assert isinstance(client.new_statsd_collector("x"), MetricCollector)
        _configure("threads", max_concurrent_requests=100)
        threads, calls = 4, 100

        def worker() -> None:
            for _ in range(calls):
                fasthystrix.do("threads", lambda: None)

        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        daemon.receive(_complete("threads", threads * calls))
        assert client.dropped_commands == 0


def test_direct_update_and_ipv6_address_parsing() -> None:
    client = StatsdCollectorClient("[::1]:8125", flush_interval=60)
    try:
        assert client.address == ("::1", 8125)
        collector = client.new_statsd_collector("direct")
        collector.update(MetricResult(attempts=1, successes=1))
        collector.reset()
        assert len(client._queue) == 1
    finally:
        client._queue.clear()
        client.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "nohostport"}, "host:port"),
        ({"address": "host:99999"}, "1..65535"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"flush_bytes": -1}, "flush_bytes"),
        ({"flush_interval": 0}, "flush_interval"),
        # Accepted before, then the sending thread died in Event.wait() with OverflowError.
        ({"flush_interval": float("inf")}, "flush_interval must be a number of seconds > 0 and <= 3600, not inf"),
        ({"flush_interval": 1e300}, "flush_interval"),
        ({"flush_interval": 3601}, "flush_interval"),
        ({"flush_interval": float("nan")}, "flush_interval"),
        ({"max_queue": 0}, "max_queue"),
        ({"prefix": "my app"}, "prefix must be made of"),
        ({"prefix": "app|x"}, "prefix"),
        ({"prefix": "app..x"}, "prefix"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StatsdCollectorClient(**kwargs)
    assert not _statsd_threads()


def test_longest_flush_interval_keeps_the_thread_alive() -> None:
    client = StatsdCollectorClient(flush_interval=3600)
    try:
        time.sleep(0.05)  # the thread is asleep for the interval by now, or would have died trying
        assert client._thread.is_alive()
    finally:
        client.close()
    assert not _statsd_threads()


def test_hystrix_go_defaults() -> None:
    with StatsdCollectorClient(sample_rate=0, flush_bytes=0) as client:
        assert client.sample_rate == 1.0
        assert client.flush_bytes == LAN_STATSD_FLUSH_BYTES
        assert client.address == ("127.0.0.1", 8125)
