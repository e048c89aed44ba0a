"""A StatsD metric collector with hystrix-go's metric names, batched over UDP by a background thread.

Standard library only (the ``statsd`` extra adds nothing)::

    from fasthystrix.statsd import StatsdCollectorClient

    client = StatsdCollectorClient("127.0.0.1:8125", prefix="myapp.hystrix").register()
    ...
    client.close()  # sends what is queued, stops the thread, unregisters

Each command queues its ``MetricResult`` (no formatting, no I/O on the command
path); the thread formats hystrix-go's lines (``<prefix>.<name>.<metric>``,
the circuit's name escaped by :func:`sanitize_name`) and sends them in
packets of at most ``flush_bytes`` every ``flush_interval`` seconds, sooner
when many are queued. Counters of one flush are summed (``successes:42|c``)
and a circuit's gauges sent once (``circuitOpen`` with its last value, and
``maxConcurrentRequests``, the concurrency limit at the flush); timings are all sent.
A daemon that is down, an address that does not resolve or a full queue
drops metrics (counted in :attr:`StatsdCollectorClient.dropped_packets` and
:attr:`~StatsdCollectorClient.dropped_commands`, logged at most once a
minute): nothing ever blocks or raises into a command.

As in hystrix-go, collectors attach when a circuit is created: register
before the first call of a command.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import socket
import threading
import time
import weakref
from datetime import timedelta
from decimal import Decimal

from . import _registry
from ._core._errors import safe_repr
from ._core._log import logger
from .metric_collector import MetricResult, registry

__all__ = [
    "GIGABIT_STATSD_FLUSH_BYTES",
    "LAN_STATSD_FLUSH_BYTES",
    "WAN_STATSD_FLUSH_BYTES",
    "StatsdCollector",
    "StatsdCollectorClient",
    "sanitize_name",
]

#: hystrix-go's packet sizes: a safe size on the internet, on Ethernet, and with jumbo frames.
WAN_STATSD_FLUSH_BYTES = 512
LAN_STATSD_FLUSH_BYTES = 1432
GIGABIT_STATSD_FLUSH_BYTES = 8932

# hystrix-go's counters, in the order it sends them: (MetricResult field, metric name).
_COUNTERS = (
    ("attempts", "attempts"),
    ("errors", "errors"),
    ("successes", "successes"),
    ("failures", "failures"),
    ("rejects", "rejects"),
    ("short_circuits", "shortCircuits"),
    ("timeouts", "timeouts"),
    ("fallback_successes", "fallbackSuccesses"),
    ("fallback_failures", "fallbackFailures"),
    ("context_canceled", "contextCanceled"),
    ("context_deadline_exceeded", "contextDeadlineExceeded"),
    ("bad_requests", "badRequests"),  # not hystrix-go's: errors ``ignore`` accepted
)
_ATTEMPTS, _ERRORS, _SUCCESSES = 0, 1, 2
_FALLBACK_SUCCESSES, _FALLBACK_FAILURES, _CONTEXT_CANCELED, _CONTEXT_DEADLINE_EXCEEDED = 7, 8, 9, 10
_BAD_REQUESTS = 11
_ERROR_INDICES = (3, 4, 5, 6)  # failures, rejects, short_circuits, timeouts
_LOG_EVERY = 60.0  # seconds between two warnings about dropped metrics
# The longest flush_interval: the thread sleeps that long, and far longer sleeps overflow the OS's timers.
_MAX_FLUSH_INTERVAL = 3600
_RESOLVE_RETRY = 5.0  # seconds between two attempts to resolve an address that failed
# Results queued before the thread is woken early (it otherwise sleeps flush_interval).
_WAKE_AT = 512
# The longest escaped circuit name: well within Graphite's 255 bytes per path segment (a file name).
_MAX_NAME = 200
_HASH_HEX = 8
_HYSTRIX_GO_SEPARATORS = str.maketrans("/:.", "---")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def sanitize_name(name: str) -> str:
    """A circuit's name as one segment of a StatsD metric name: ``[A-Za-z0-9_-]``, 1 to 200 characters.

    As hystrix-go, ``/``, ``:`` and ``.`` become ``-``; every other character outside
    ``A-Z a-z 0-9 _ -`` (a space, ``|``, ``#``, ``@``, a newline, NUL, a surrogate, any
    non-ASCII character) becomes ``_``, one per code point; the empty name is ``_``.
    A result longer than 200 characters is cut to 191, followed by ``-`` and the first
    8 hex digits of the SHA-256 of the whole name (UTF-8, surrogates kept).

    Distinct names can escape to the same segment (``"a b"``, ``"a|b"`` and ``"a_b"``
    are all ``a_b``): the daemon then sees one metric, their counters summed.
    """
    escaped = _UNSAFE.sub("_", name.translate(_HYSTRIX_GO_SEPARATORS)) or "_"
    if len(escaped) <= _MAX_NAME:
        return escaped
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return f"{escaped[: _MAX_NAME - _HASH_HEX - 1]}-{digest}"


def _parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, tuple):
        host, port = address
    elif isinstance(address, str):
        host, sep, port_text = address.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"address must be 'host:port', not {address!r}")
        port = int(port_text)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    else:
        raise TypeError(f"address must be 'host:port' or (host, port), not {address!r}")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"address must name a host and a port in 1..65535, not {address!r}")
    return host, port


def _milliseconds(duration: timedelta) -> str:
    """Go's ``FormatFloat(ms, 'f', -1, 64)``: the shortest decimal, as ``repr`` (never an exponent here)."""
    us = (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds
    if us <= 0:
        return "0"
    text = repr(us / 1000)
    return text[:-2] if text.endswith(".0") else text


class StatsdCollector:
    """One circuit's collector (hystrix-go's ``StatsdCollector``): queues each result for the client."""

    __slots__ = ("_client", "name", "prefix")

    def __init__(self, client: StatsdCollectorClient, name: str) -> None:
        self._client = client
        #: The circuit's name, as given (its current concurrency limit is read by name at each flush).
        self.name = name
        #: ``<prefix>.<sanitised name>.``: what every metric name of this circuit starts with.
        self.prefix = f"{client.prefix}.{sanitize_name(name)}." if client.prefix else f"{sanitize_name(name)}."

    def update(self, result: MetricResult) -> None:
        """Queue ``result`` (or drop it: sampled out, queue full, client closed); never blocks or raises."""
        client = self._client
        if client._closed:
            return
        rate = client.sample_rate
        if rate < 1.0 and client._random() >= rate:
            return
        queue = client._queue
        length = len(queue)
        if length >= client.max_queue:
            client._dropped(commands=1)
            return
        queue.append((self, result))
        if length == _WAKE_AT:
            client._wake.set()

    def reset(self) -> None:
        """Nothing to forget (hystrix-go's statsd collector ignores ``Reset`` too)."""


class StatsdCollectorClient:
    """The UDP sender shared by the collectors of every circuit (hystrix-go's ``StatsdCollectorClient``).

    ``address`` is ``"host:port"`` (``"[::1]:8125"`` for IPv6) or ``(host, port)``,
    resolved by the background thread, never on the command path. ``prefix``
    starts every metric name; ``sample_rate`` in (0, 1] sends that fraction of
    commands, marked ``|@rate`` (0 means 1, as hystrix-go); ``prefix`` is made of
    dot-separated segments of ``A-Z a-z 0-9 _ -`` (a trailing dot is dropped); ``flush_bytes``
    bounds a packet (0 means :data:`LAN_STATSD_FLUSH_BYTES`); queued results are sent
    every ``flush_interval`` seconds (at most 3600); at most ``max_queue`` commands
    wait for the thread.
    """

    def __init__(
        self,
        address: str | tuple[str, int] = "127.0.0.1:8125",
        *,
        prefix: str = "",
        sample_rate: float = 1.0,
        flush_bytes: int = LAN_STATSD_FLUSH_BYTES,
        flush_interval: float = 1.0,
        max_queue: int = 100_000,
    ) -> None:
        self.address = _parse_address(address)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {prefix!r}")
        if prefix.rstrip(".") and not _PREFIX.fullmatch(prefix.rstrip(".")):
            raise ValueError(
                f"prefix must be made of dot-separated segments of A-Z, a-z, 0-9, '_' and '-', not {prefix!r}"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate must be a number in [0, 1], not {sample_rate!r}")
        if isinstance(flush_bytes, bool) or not isinstance(flush_bytes, int) or flush_bytes < 0:
            raise ValueError(f"flush_bytes must be an int >= 0, not {flush_bytes!r}")
        if (
            isinstance(flush_interval, bool)
            or not isinstance(flush_interval, (int, float))
            or not 0 < flush_interval <= _MAX_FLUSH_INTERVAL
        ):
            raise ValueError(
                f"flush_interval must be a number of seconds > 0 and <= {_MAX_FLUSH_INTERVAL}, "
                f"not {safe_repr(flush_interval)}"
            )
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1, not {max_queue!r}")
        self.prefix = prefix.rstrip(".")
        self.sample_rate = float(sample_rate) or 1.0
        self.flush_bytes = flush_bytes or LAN_STATSD_FLUSH_BYTES
        self.flush_interval = float(flush_interval)
        self.max_queue = max_queue
        self._suffix = "" if self.sample_rate >= 1.0 else f"|@{format(Decimal(repr(self.sample_rate)), 'f')}"
        self._random = random.random
        self._queue: collections.deque[tuple[StatsdCollector, MetricResult]] = collections.deque()
        self._closed = False
        self._stopping = False
        self._registered = False
        self._wake = threading.Event()
        # Guards the socket and the drain (the thread's, flush()'s and close()'s).
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._resolve_failed_at: float | None = None
        self._stats_lock = threading.Lock()
        self._sent_packets = 0
        self._dropped_packets = 0
        self._dropped_commands = 0
        self._last_log = -_LOG_EVERY
        self._unlogged_drops = 0
        self._thread = threading.Thread(target=self._run, name="fasthystrix-statsd", daemon=True)
        self._thread.start()
        _clients.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: a sender thread of its own, new locks, and none of the parent's queue.

        The parent's thread does not exist in the child, and the parent sends what it had
        queued. The socket is shared: both processes send datagrams through it.
        """
        self._queue.clear()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        if not self._closed:
            self._thread = threading.Thread(target=self._run, name="fasthystrix-statsd", daemon=True)
            self._thread.start()

    # -- the hystrix-go API -----------------------------------------------------------

    def new_statsd_collector(self, name: str) -> StatsdCollector:
        """The collector of circuit ``name``: the factory to register (hystrix-go's ``NewStatsdCollector``)."""
        return StatsdCollector(self, name)

    def register(self) -> StatsdCollectorClient:
        """Register :meth:`new_statsd_collector` in ``fasthystrix.metric_collector.registry``; returns self."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        registry.register(self.new_statsd_collector)
        self._registered = True
        return self

    # -- sending ----------------------------------------------------------------------

    @property
    def sent_packets(self) -> int:
        """Packets handed to the operating system."""
        return self._sent_packets

    @property
    def dropped_packets(self) -> int:
        """Packets not sent: address unresolved, or the send failed (e.g. the daemon refused it)."""
        return self._dropped_packets

    @property
    def dropped_commands(self) -> int:
        """Commands not reported: the queue was full, or a result could not be formatted."""
        return self._dropped_commands

    def flush(self) -> None:
        """Send everything queued now, on this thread (never raises for a network error)."""
        with self._lock:
            self._drain()

    def close(self, timeout: float = 5.0) -> None:
        """Unregister (if :meth:`register` did), send what is queued and stop the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._registered:
            self._registered = False
            try:
                registry.unregister(self.new_statsd_collector)
            except ValueError:
                pass  # already removed by hand
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            self._drain()
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> StatsdCollectorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        host, port = self.address
        return f"<StatsdCollectorClient {host}:{port} prefix={self.prefix!r}{' closed' if self._closed else ''}>"

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                with self._lock:
                    self._drain()
            except Exception:  # a bug here must not kill the thread silently
                logger.exception("statsd: sending metrics failed")
            if self._stopping:
                return

    def _dropped(self, *, packets: int = 0, commands: int = 0, error: BaseException | None = None) -> None:
        """Count drops and log about them at most once a minute (called from any thread)."""
        with self._stats_lock:
            self._dropped_packets += packets
            self._dropped_commands += commands
            self._unlogged_drops += packets + commands
            now = time.monotonic()
            if now - self._last_log < _LOG_EVERY:
                return
            self._last_log, dropped, self._unlogged_drops = now, self._unlogged_drops, 0
        host, port = self.address
        reason = "the queue is full" if error is None else f"{type(error).__name__}: {error}"
        logger.warning(
            "statsd: dropped %d packets or commands for %s:%d since the last warning (%s)", dropped, host, port, reason
        )

    def _drain(self) -> None:
        """Format and send every queued result (``_lock`` held)."""
        queue = self._queue
        if not queue:
            return
        # Per circuit prefix: the counts of _COUNTERS, summed over the batch.
        counters: dict[str, list[int]] = {}
        gauges: dict[str, int] = {}
        names: dict[str, str] = {}  # prefix -> circuit name, for the limit gauge
        timings: list[str] = []
        suffix = self._suffix
        popleft = queue.popleft
        for _ in range(len(queue)):
            collector, result = popleft()
            prefix = collector.prefix
            try:
                # The timings first: a result that cannot be formatted (a collector fed by hand
                # with wrong types) is dropped alone, before it touches the batch's counts.
                timing = (
                    f"{prefix}totalDuration:{_milliseconds(result.total_duration)}|ms{suffix}",
                    f"{prefix}runDuration:{_milliseconds(result.run_duration)}|ms{suffix}",
                    f"{prefix}concurrencyInUse:{int(100 * result.concurrency_in_use)}|ms{suffix}",
                )
            except Exception as exc:
                self._dropped(commands=1, error=exc)
                continue
            timings += timing
            names[prefix] = collector.name
            counts = counters.get(prefix)
            if counts is None:
                counts = counters[prefix] = [0] * len(_COUNTERS)
            # Exactly one outcome per result (attempts == 1): find it without reading every field.
            if result.successes:
                counts[_SUCCESSES] += result.successes
                gauges[prefix] = 0
            else:
                for index in _ERROR_INDICES:
                    value = getattr(result, _COUNTERS[index][0])
                    if value:
                        counts[index] += value
                        break
                else:
                    counts[_CONTEXT_CANCELED] += result.context_canceled
                    counts[_CONTEXT_DEADLINE_EXCEEDED] += result.context_deadline_exceeded
                    counts[_BAD_REQUESTS] += result.bad_requests
                if result.short_circuits:
                    gauges[prefix] = 1
                counts[_ERRORS] += result.errors
            counts[_ATTEMPTS] += result.attempts
            if result.fallback_successes:
                counts[_FALLBACK_SUCCESSES] += result.fallback_successes
            elif result.fallback_failures:
                counts[_FALLBACK_FAILURES] += result.fallback_failures
        lines = [f"{prefix}circuitOpen:{value}|g{suffix}" for prefix, value in gauges.items()]
        # The concurrency limit now (max_concurrent_requests, or an AdaptiveLimit's value), once per
        # circuit of the batch; a circuit flushed or evicted since has none to report.
        circuits = _registry._circuits
        for prefix, name in names.items():
            circuit = circuits.get(name)
            if circuit is not None:
                lines.append(f"{prefix}maxConcurrentRequests:{circuit.concurrency_limit}|g{suffix}")
        for prefix, counts in counters.items():
            lines += [
                f"{prefix}{metric}:{value}|c{suffix}"
                for (_, metric), value in zip(_COUNTERS, counts, strict=True)
                if value
            ]
        lines += timings
        self._send(_packets(lines, self.flush_bytes))

    def _send(self, packets: list[bytes]) -> None:
        sock = self._socket or self._connect()
        if sock is None:
            self._dropped(packets=len(packets), error=OSError(f"cannot resolve {self.address[0]!r}"))
            return
        for index, packet in enumerate(packets):
            try:
                sock.send(packet)
            except OSError as exc:
                # Refused (nobody listening), buffer full, network down...: drop, never retry or block.
                self._dropped(packets=len(packets) - index if isinstance(exc, ConnectionRefusedError) else 1, error=exc)
                if isinstance(exc, ConnectionRefusedError):
                    return
            else:
                self._sent_packets += 1  # only ever written with _lock held

    def _connect(self) -> socket.socket | None:
        now = time.monotonic()
        if self._resolve_failed_at is not None and now - self._resolve_failed_at < _RESOLVE_RETRY:
            return None
        host, port = self.address
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError:
            self._resolve_failed_at = now
            return None
        try:
            sock.setblocking(False)
            # Connected, so that a daemon that is down is reported (as refused sends) instead of silent.
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            self._resolve_failed_at = now
            return None
        self._resolve_failed_at = None
        self._socket = sock
        return sock


def _packets(lines: list[str], flush_bytes: int) -> list[bytes]:
    """Join lines with newlines into packets of at most ``flush_bytes`` (a longer line goes alone)."""
    blob = "\n".join(lines).encode()
    packets = []
    start, size = 0, len(blob)
    while size - start > flush_bytes:
        # The last newline that keeps the packet within flush_bytes, or else the end of an oversized line.
        cut = blob.rfind(b"\n", start, start + flush_bytes + 1)
        if cut < 0:
            cut = blob.find(b"\n", start)
            if cut < 0:
                break
        packets.append(blob[start:cut])
        start = cut + 1
    if start < size:
        packets.append(blob[start:])
    return packets


# The clients not yet garbage: in a forked child each gets a sender thread of its own.
_clients: weakref.WeakSet[StatsdCollectorClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
