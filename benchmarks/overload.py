"""Overload without collapse: goodput and latency of a route under open-loop load, per configuration.

    python benchmarks/overload.py                      # the full run (about 4 min with 3 configurations)
    python benchmarks/overload.py --quick              # a smoke run (seconds): asserts nothing, plots to a temp file
    python benchmarks/overload.py --rates 0.5,1,2,5 --seconds 10 --warmup 3 --capacity 10 --plot docs/overload.png

**The service under test** is a Starlette app under a real uvicorn (a subprocess of this one, one
worker, uvloop and httptools when installed, on a loopback port it picks itself). Its route
``GET /work`` calls a simulated downstream of known capacity ``C`` (``--capacity``), in-process:

- the model (``Downstream``): processor sharing with contention. Each call needs ``base``
  (``--base-ms``, 20 ms) of work; while ``n <= C`` calls are in flight each runs at full speed,
  beyond that each runs at ``1 / (x * (1 + k * (x - 1)))`` with ``x = n / C``, recomputed whenever a
  call starts or ends. Held at ``n`` calls, a call lasts ``base * x * (1 + k (x - 1))``: the factor
  ``x`` is a saturated server sharing its capacity among more calls (throughput would stay
  ``C / base``), the second is contention (locks, cache misses, context switches), which makes
  throughput *fall* as the overload grows: ``C / base / (1 + k (x - 1))``, a retrograde curve as in
  the Universal Scalability Law (``k`` is ``--contention``, 0.1). A call its caller cancels (the
  middleware's timeout) leaves at once. The capacity is ``C / base`` calls per second (500/s by
  default); a service without protection that is offered more piles up calls until each takes
  longer than the client waits.

**The load** is open-loop: this process sends requests on a fixed timetable (``i / rate`` seconds
after the start), whatever the answers, over as many keep-alive connections as there are requests
in flight (up to ``--max-connections``; past that a request is counted as an error, ``client cap``).
A request's latency is measured from its *scheduled* time, so a client that falls behind cannot
hide the server's delay (no coordinated omission); how far behind the schedule the client sent is
recorded and reported (``lag``): a p99 lag far below the latencies means the client was not the
bottleneck. The timetable is served by a tick of about 1 ms (the event loop's timer resolution), so up to about
1 ms of lag is the method itself. Times are ``time.perf_counter()``.
The first ``--warmup`` seconds of each run are excluded; each run sends at most ``--max-requests``.
A request unanswered ``--client-timeout`` seconds after its schedule is closed and counted as an
error (``timeout``). Each (configuration, rate) pair gets a fresh server.

**Reported**, per configuration and rate: goodput (200 answers within 1 s of their schedule, per
second of the measured window), 503s per second, errors (other statuses, connection errors, client
timeouts, client cap), the p50 and p99 latency of the 200s, and the client's lag. Then, per
configuration, the issue's targets: goodput at 2x and 5x at least 90 % of goodput at 1x, and p99 of
the 200s at most 2x its value at 0.5x.

**Configurations** (all through ``fasthystrix.asgi.CircuitBreakerMiddleware``, timeout 1 s, except
the first):

1. ``none``: no protection;
2. ``hystrix``: hystrix-go semantics: ``max_concurrent_requests=C`` fixed tickets, rejections count
   as errors (so they can open the circuit);
3. ``tickets``: the same tickets, ``rejections_count_as_errors=False``;
4. ``queue``: the same, plus ``max_queue_wait`` (``--queue-wait-ms``, default one base latency);
5. ``adaptive-gradient2``, ``adaptive-vegas``, ``adaptive-aimd``: ``AdaptiveLimit(algorithm=...)``
   with its defaults, ``rejections_count_as_errors=False``.

The fixed-ticket configurations are given the right answer, ``C`` tickets, which a real service has
to guess; the adaptive ones find it. A configuration whose API this fasthystrix lacks
(``max_queue_wait``, ``AdaptiveLimit``) is reported as not available.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

GOOD_WITHIN = 1.0  # seconds: a 200 later than this is not goodput
ALGORITHMS = ("gradient2", "vegas", "aimd")
CONFIGS = ("none", "hystrix", "tickets", "queue", *(f"adaptive-{a}" for a in ALGORITHMS))
ROUTE = "/work"


# --------------------------------------------------------------------------------------------------
# The server (runs in a subprocess: ``overload.py _serve JSON``)
# --------------------------------------------------------------------------------------------------


class Downstream:
    """A simulated downstream: ``capacity`` calls at full speed, processor sharing with contention beyond.

    Each call needs ``base`` seconds of work at full speed. With ``n`` calls in flight, every one of
    them progresses at ``speed(n)``: 1 while ``n <= capacity``, else ``1 / (x * (1 + contention *
    (x - 1)))`` with ``x = n / capacity``, recomputed whenever a call starts or ends. So a call alone
    lasts ``base``, and ``n > capacity`` calls held at ``n`` last ``base * x * (1 + contention * (x -
    1))`` each: shared capacity times contention, throughput ``capacity / base / (1 + contention * (x
    - 1))`` falling as the overload grows (see the module's docstring). A call cancelled by its caller
    (a timeout) leaves at once, as a cancelled query does.

    Implementation: a virtual clock ``v`` that runs at ``speed(n)``; a call started at ``v0`` ends when
    ``v`` reaches ``v0 + base``: a heap of those ends, and one timer for the earliest.
    """

    def __init__(self, capacity: int, base: float, contention: float) -> None:
        self.capacity = capacity
        self.base = base
        self.contention = contention
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self._virtual = 0.0
        self._at = time.perf_counter()
        self._ends: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = 0
        self._timer: asyncio.TimerHandle | None = None

    def speed(self, n: int) -> float:
        """The rate at which each of ``n`` calls in flight progresses (1 = full speed)."""
        if n <= self.capacity:
            return 1.0
        x = n / self.capacity
        return 1.0 / (x * (1.0 + self.contention * (x - 1.0)))

    def latency(self, n: int) -> float:
        """Seconds a call lasts while ``n`` calls stay in flight, itself included."""
        return self.base / self.speed(n)

    def _advance(self) -> None:
        now = time.perf_counter()
        self._virtual += (now - self._at) * self.speed(self.in_flight)
        self._at = now

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ends = self._ends
        while ends and ends[0][2].done():  # cancelled calls: gone already
            heapq.heappop(ends)
        if ends:
            delay = (ends[0][0] - self._virtual) / self.speed(self.in_flight)
            self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._complete)

    def _complete(self) -> None:
        self._timer = None
        self._advance()
        ends = self._ends
        while ends and ends[0][0] <= self._virtual + 1e-9:
            _, _, future = heapq.heappop(ends)
            if not future.done():
                self.in_flight -= 1
                future.set_result(None)
        self._schedule()

    async def call(self) -> None:
        self._advance()
        future = asyncio.get_running_loop().create_future()
        self._sequence += 1
        heapq.heappush(self._ends, (self._virtual + self.base, self._sequence, future))
        self.in_flight += 1
        self.calls += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():  # it left before its end: the others speed up
                self._advance()
                self.in_flight -= 1
                self._schedule()
            raise


def availability(config: str) -> str | None:
    """Why ``config`` cannot run with the installed fasthystrix, or ``None`` when it can."""
    import fasthystrix

    if config == "queue":
        fields = {f.name for f in dataclasses.fields(fasthystrix.CommandConfig)}
        if "max_queue_wait" not in fields:
            return "not available: CommandConfig has no max_queue_wait"
    if config.startswith("adaptive-") and not hasattr(fasthystrix, "AdaptiveLimit"):
        return "not available: fasthystrix has no AdaptiveLimit"
    try:  # the names exist, but may not be wired in yet
        command_config(config, 10, 20.0)
    except (TypeError, ValueError) as exc:
        return f"not available: {exc}"
    return None


def command_config(config: str, capacity: int, queue_wait_ms: float) -> Any:
    """The ``CommandConfig`` of a protected configuration (``None`` for ``none``)."""
    import fasthystrix

    if config == "none":
        return None
    fields: dict[str, Any] = {"timeout": int(GOOD_WITHIN * 1000), "max_concurrent_requests": capacity}
    if config == "hystrix":
        fields["rejections_count_as_errors"] = True
    else:
        fields["rejections_count_as_errors"] = False
    if config == "queue":
        fields["max_queue_wait"] = timedelta(milliseconds=queue_wait_ms)
    if config.startswith("adaptive-"):
        limit = fasthystrix.AdaptiveLimit(algorithm=config.removeprefix("adaptive-"))
        fields["max_concurrent_requests"] = limit
    return fasthystrix.CommandConfig(**fields)


def build_app(options: dict[str, Any]) -> tuple[Any, Downstream]:
    """The service under test: ``GET /work`` calls the downstream; ``GET /health`` and ``/stats`` do not."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    downstream = Downstream(options["capacity"], options["base_ms"] / 1000.0, options["contention"])

    async def work(request: Request) -> PlainTextResponse:
        await downstream.call()
        return PlainTextResponse("ok")

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"max_in_flight": downstream.max_in_flight, "calls": downstream.calls})

    app: Any = Starlette(routes=[Route(ROUTE, work), Route("/health", health), Route("/stats", stats)])
    config = command_config(options["config"], options["capacity"], options["queue_wait_ms"])
    if config is not None:
        from fasthystrix.asgi import CircuitBreakerMiddleware

        app = CircuitBreakerMiddleware(app, config=config, exclude=("/health", "/stats"))
    return app, downstream


def serve(options: dict[str, Any]) -> None:
    """Run the app under uvicorn on a loopback port of its own; print the port, then serve until killed."""
    import uvicorn

    app, _ = build_app(options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    config = uvicorn.Config(
        app,
        loop=options["loop"],
        http=options["http"],
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def server_stack() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools when installed."""
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    return loop, http


# --------------------------------------------------------------------------------------------------
# The open-loop client (this process)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Samples:
    """Every request of one run: its schedule, when it was sent, when and how it ended."""

    scheduled: list[float]
    sent: list[float]
    done: list[float]
    status: list[int]  # HTTP status; 0 pending; negative: an error of the client's (ERRORS)


ERR_CONNECTION, ERR_TIMEOUT, ERR_CAP = -1, -2, -3


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.request = -1
        self.need = -1  # bytes of the whole response once its headers are in, else -1
        self.head = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, index: int) -> None:
        self.request = index
        self.client.samples.sent[index] = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.client.request_bytes)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.need < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                at = head.find(b"content-length:")
                length = 0
                if at >= 0:
                    stop = head.find(b"\r\n", at)
                    length = int(head[at + 15 : stop if stop >= 0 else len(head)])
                self.head = end + 4
                self.need = self.head + length
            if len(buffer) < self.need:
                return
            status = int(buffer[9:12])
            del buffer[: self.need]
            self.need = -1
            index, self.request = self.request, -1
            if index >= 0:
                self.client.finish(index, status, self)
            if not buffer:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        index, self.request = self.request, -1
        self.client.lost(self, index)


class Client:
    """Sends request ``i`` at ``start + i / rate`` over a pool of keep-alive connections."""

    def __init__(
        self, port: int, rate: float, count: int, max_connections: int, timeout: float, warmup: float, server_pid: int
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.warmup = warmup
        self.server_pid = server_pid
        self.server_cpu = math.nan  # the server's CPU seconds per second over the measured window
        self.measuring = False
        self.connects = 0  # connections opened during the measured window
        self.port = port
        self.rate = rate
        self.count = count
        self.max_connections = max_connections
        self.timeout = timeout
        self.request_bytes = f"GET {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        self.samples = Samples([0.0] * count, [0.0] * count, [0.0] * count, [0] * count)
        self.idle: deque[Connection] = deque()
        self.busy: dict[Connection, int] = {}
        self.connections = 0  # open or opening
        self.remaining = count
        self.finished = self.loop.create_future()

    def record(self, index: int, status: int) -> None:
        if self.samples.status[index] != 0:
            return
        self.samples.status[index] = status
        self.samples.done[index] = time.perf_counter()
        self.remaining -= 1
        if self.remaining == 0 and not self.finished.done():
            self.finished.set_result(None)

    def finish(self, index: int, status: int, connection: Connection) -> None:
        self.busy.pop(connection, None)
        self.record(index, status)
        self.idle.append(connection)

    def lost(self, connection: Connection, index: int) -> None:
        self.connections -= 1
        self.busy.pop(connection, None)
        try:
            self.idle.remove(connection)
        except ValueError:
            pass
        if index >= 0:
            self.record(index, ERR_CONNECTION)

    async def connect(self) -> Connection:
        _, protocol = await self.loop.create_connection(lambda: Connection(self), "127.0.0.1", self.port)
        protocol.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        return protocol

    async def open_and_send(self, index: int) -> None:
        try:
            connection = await self.connect()
        except OSError:
            self.connections -= 1
            self.record(index, ERR_CONNECTION)
            return
        self.busy[connection] = index
        connection.send(index)

    def send(self, index: int) -> None:
        while self.idle:
            connection = self.idle.popleft()
            if connection.transport is not None and not connection.transport.is_closing():
                self.busy[connection] = index
                connection.send(index)
                return
        if self.connections >= self.max_connections:
            self.samples.sent[index] = time.perf_counter()
            self.record(index, ERR_CAP)
            return
        self.connections += 1
        self.connects += self.measuring
        self.loop.create_task(self.open_and_send(index))

    async def prepare(self, connections: int) -> None:
        """Open ``connections`` idle connections before the timetable starts."""
        for _ in range(min(connections, self.max_connections)):
            self.connections += 1
            try:
                self.idle.append(await self.connect())
            except OSError:
                self.connections -= 1

    async def sweep(self) -> None:
        """Close the connections whose request is older than the client timeout: those are errors."""
        while not self.finished.done():
            await asyncio.sleep(0.05)
            deadline = time.perf_counter() - self.timeout
            for connection, index in list(self.busy.items()):
                if self.samples.scheduled[index] < deadline:
                    self.busy.pop(connection, None)
                    connection.request = -1
                    self.record(index, ERR_TIMEOUT)
                    if connection.transport is not None:
                        connection.transport.abort()

    async def run(self) -> Samples:
        await self.prepare(int(self.rate * 0.1) + 50)
        sweeper = self.loop.create_task(self.sweep())
        start = time.perf_counter() + 0.05
        scheduled = self.samples.scheduled
        interval = 1.0 / self.rate
        for i in range(self.count):
            scheduled[i] = start + i * interval
        i = 0
        measured_from = start + self.warmup
        cpu_start: tuple[float, float] | None = None
        while i < self.count:
            now = time.perf_counter()
            if cpu_start is None and now >= measured_from:
                cpu_start = (now, cpu_seconds(self.server_pid))
                self.measuring = True
            while i < self.count and scheduled[i] <= now:
                self.send(i)
                i += 1
            if i < self.count:
                await asyncio.sleep(min(0.001, max(0.0, scheduled[i] - time.perf_counter())))
        if cpu_start is not None:
            now = time.perf_counter()
            if now > cpu_start[0]:
                self.server_cpu = (cpu_seconds(self.server_pid) - cpu_start[1]) / (now - cpu_start[0])
        await asyncio.wait((self.finished,), timeout=self.timeout + 1.0)
        sweeper.cancel()
        for connection in [*self.idle, *self.busy]:
            if connection.transport is not None:
                connection.transport.abort()
        return self.samples


# --------------------------------------------------------------------------------------------------
# One run, the statistics, the report
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One (configuration, rate) run over its measured window."""

    config: str
    multiple: float
    rate: float
    seconds: float
    sent: int
    goodput: float  # 200s within GOOD_WITHIN, per second
    ok: int
    rejected: float  # 503s per second
    errors: int
    error_kinds: dict[str, int]
    p50_ms: float
    p99_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    downstream_max_in_flight: int
    server_cpu: float  # the server process's CPU seconds per second (1.0 = one core) in the measured window
    load_average: float = math.nan  # the machine's 1-minute load average when the run started
    connects: int = 0  # connections the client had to open during the measured window


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest rank; NaN of nothing."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(
    config: str, multiple: float, rate: float, warmup: float, samples: Samples, max_in_flight: int, server_cpu: float
) -> Result:
    """The statistics of the requests scheduled after the warm-up."""
    start = samples.scheduled[0]
    first = next((i for i, t in enumerate(samples.scheduled) if t >= start + warmup), len(samples.scheduled))
    indices = range(first, len(samples.scheduled))
    seconds = len(indices) / rate
    latencies, lags, good, rejected = [], [], 0, 0
    kinds: dict[str, int] = {}
    names = {ERR_CONNECTION: "connection", ERR_TIMEOUT: "timeout", ERR_CAP: "client cap", 0: "unanswered"}
    for i in indices:
        status = samples.status[i]
        if samples.sent[i]:
            lags.append(samples.sent[i] - samples.scheduled[i])
        if status == 200:
            latency = samples.done[i] - samples.scheduled[i]
            latencies.append(latency)
            good += latency <= GOOD_WITHIN
        elif status == 503:
            rejected += 1
        else:
            kind = names.get(status, str(status))
            kinds[kind] = kinds.get(kind, 0) + 1
    return Result(
        config=config,
        multiple=multiple,
        rate=rate,
        seconds=seconds,
        sent=len(indices),
        goodput=good / seconds if seconds else math.nan,
        ok=len(latencies),
        rejected=rejected / seconds if seconds else math.nan,
        errors=sum(kinds.values()),
        error_kinds=kinds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        lag_p50_ms=percentile(lags, 0.50) * 1000,
        lag_p99_ms=percentile(lags, 0.99) * 1000,
        lag_max_ms=max(lags, default=math.nan) * 1000,
        downstream_max_in_flight=max_in_flight,
        server_cpu=server_cpu,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux's /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A blocking GET on loopback (readiness and stats)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


class Server:
    """The service under test in a subprocess of its own; a context manager that kills it at the end."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> Server:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "_serve", json.dumps(self.options)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__()
            raise RuntimeError(f"the server did not start (it printed {line!r})")
        self.port = int(line)
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(self.port, "/health")[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the server did not answer /health within 30 s")
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(http_get(self.port, "/stats", timeout=5.0)[1])
            return result
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is None:
            return
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def run_one(args: argparse.Namespace, config: str, multiple: float) -> Result:
    """A fresh server for ``config``, loaded at ``multiple`` times its capacity; the measured window's statistics."""
    loop_name, http = server_stack()
    options = {
        "config": config,
        "capacity": args.capacity,
        "base_ms": args.base_ms,
        "contention": args.contention,
        "queue_wait_ms": args.queue_wait_ms,
        "loop": loop_name,
        "http": http,
    }
    capacity_rate = args.capacity / (args.base_ms / 1000.0)
    rate = capacity_rate * multiple
    load_average = os.getloadavg()[0]
    count = min(args.max_requests, max(1, round(rate * (args.warmup + args.seconds))))
    with Server(options) as server:
        warmup = min(args.warmup, count / rate / 2)
        assert server.process is not None
        pid = server.process.pid
        client = None

        async def load() -> Samples:
            nonlocal client
            client = Client(server.port, rate, count, args.max_connections, args.client_timeout, warmup, pid)
            return await client.run()

        samples = new_event_loop_run(load)
        max_in_flight = int(server.stats().get("max_in_flight", -1))
    assert client is not None
    result = summarize(config, multiple, rate, warmup, samples, max_in_flight, client.server_cpu)
    result.load_average = load_average
    result.connects = client.connects
    return result


def new_event_loop_run(factory: Callable[[], Any]) -> Any:
    """``asyncio.run`` on uvloop when installed (a faster client), else the default loop."""
    try:
        import uvloop

        return uvloop.run(factory())
    except ImportError:
        return asyncio.run(factory())


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def report(results: list[Result], skipped: dict[str, str], args: argparse.Namespace) -> str:
    """The markdown table, then the issue's targets per configuration."""
    lines = [
        "| configuration | offered (xC) | offered req/s | goodput/s | goodput vs 1x | 503/s | errors "
        "| p50 ms (200s) | p99 ms (200s) | p99 vs 0.5x | downstream max in flight | server CPU "
        "| client lag p99 / max ms | new connections | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_config: dict[str, list[Result]] = {}
    for r in results:
        by_config.setdefault(r.config, []).append(r)
    verdicts = []
    for config in CONFIGS:
        if config in skipped:
            lines.append(f"| {config} | {skipped[config]} |  |  |  |  |  |  |  |  |  |  |  |  |  |")
            continue
        runs = by_config.get(config, [])
        one = next((r for r in runs if r.multiple == 1.0), None)
        half = next((r for r in runs if r.multiple == 0.5), None)
        for r in runs:
            vs_one = f"{r.goodput / one.goodput:.0%}" if one and one.goodput > 0 else "n/a"
            ratio = r.p99_ms / half.p99_ms if half and half.p99_ms > 0 else math.nan
            vs_half = "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"
            errors = str(r.errors) + (
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(r.error_kinds.items())) + ")" if r.errors else ""
            )
            lines.append(
                f"| {config} | {r.multiple:g}x | {r.rate:,.0f} | {fmt(r.goodput)} | {vs_one} "
                f"| {fmt(r.rejected)} | {errors} "
                f"| {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {vs_half} | {r.downstream_max_in_flight} | {r.server_cpu:.0%} "
                f"| {fmt(r.lag_p99_ms, 2)} / {fmt(r.lag_max_ms, 1)} | {r.connects} | {fmt(r.load_average, 2)} |"
            )
        if one and half and runs:
            goodput_ok = one.goodput > 0 and all(
                r.goodput >= 0.9 * one.goodput for r in runs if r.multiple in (2.0, 5.0)
            )
            p99_ok = not math.isnan(half.p99_ms) and all(r.p99_ms <= 2 * half.p99_ms for r in runs)
            measured = {r.multiple for r in runs}
            partial = "" if {2.0, 5.0} <= measured else " (2x/5x not both measured)"
            verdicts.append(
                f"- {config}: goodput at 2x/5x >= 90 % of 1x: {'met' if goodput_ok else 'NOT met'}; "
                f"p99 <= 2x p99 at 0.5x: {'met' if p99_ok else 'NOT met'}{partial}"
            )
    return "\n".join([*lines, "", "Targets (issue 14):", *verdicts])


def plot(results: list[Result], path: Path, args: argparse.Namespace) -> str:
    """Goodput and p99 against offered load, one line per configuration: PNG by matplotlib, else SVG."""
    by_config: dict[str, list[Result]] = {}
    for r in results:
        by_config.setdefault(r.config, []).append(r)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        svg = path.with_suffix(".svg")
        svg.write_text(svg_plot(by_config, args))
        return f"matplotlib is not installed: wrote {svg} instead"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    capacity_rate = args.capacity / (args.base_ms / 1000.0)
    for config, runs in by_config.items():
        xs = [r.multiple for r in runs]
        left.plot(xs, [r.goodput for r in runs], marker="o", label=config)
        right.plot(xs, [r.p99_ms for r in runs], marker="o", label=config)
    left.axhline(capacity_rate, color="grey", linestyle=":", linewidth=1, label="capacity")
    left.set_xlabel("offered load (x capacity)")
    left.set_ylabel("goodput (200s within 1 s, per s)")
    left.set_ylim(bottom=0)
    right.set_xlabel("offered load (x capacity)")
    right.set_ylabel("p99 of the 200s (ms)")
    right.set_yscale("log")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({r.multiple for r in results}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(
        f"Open-loop load on a route whose downstream serves {args.capacity} calls x {args.base_ms:g} ms "
        f"({capacity_rate:,.0f}/s)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def svg_plot(by_config: dict[str, list[Result]], args: argparse.Namespace) -> str:
    """The same two panels as a hand-written SVG (when matplotlib is missing); log2 x axis, log y for p99."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    width, height, pad = 420, 300, 50
    multiples = sorted({r.multiple for runs in by_config.values() for r in runs})
    lo, hi = math.log2(min(multiples)), math.log2(max(multiples))

    def x(m: float, offset: int) -> float:
        return offset + pad + (math.log2(m) - lo) / ((hi - lo) or 1) * (width - 2 * pad)

    goodputs = [r.goodput for runs in by_config.values() for r in runs if not math.isnan(r.goodput)]
    p99s = [r.p99_ms for runs in by_config.values() for r in runs if not math.isnan(r.p99_ms) and r.p99_ms > 0]
    top_g = max(goodputs, default=1.0) * 1.1 or 1.0
    lo_p, hi_p = math.log10(min(p99s, default=1.0)), math.log10(max(p99s, default=10.0)) + 0.1

    def y_g(v: float) -> float:
        return height - pad - v / top_g * (height - 2 * pad)

    def y_p(v: float) -> float:
        return height - pad - (math.log10(v) - lo_p) / ((hi_p - lo_p) or 1) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height}" font-size="11">']
    for offset, label in ((0, "goodput/s"), (width, "p99 ms (log)")):
        parts.append(f'<text x="{offset + 5}" y="15">{label} against offered load (x capacity)</text>')
        parts.append(
            f'<line x1="{offset + pad}" y1="{height - pad}" x2="{offset + width - pad}" '
            f'y2="{height - pad}" stroke="black"/>'
        )
        for m in multiples:
            parts.append(f'<text x="{x(m, offset) - 8}" y="{height - pad + 15}">{m:g}x</text>')
    for n, (config, runs) in enumerate(by_config.items()):
        color = colors[n % len(colors)]
        good = " ".join(f"{x(r.multiple, 0):.1f},{y_g(r.goodput):.1f}" for r in runs if not math.isnan(r.goodput))
        p99 = " ".join(f"{x(r.multiple, width):.1f},{y_p(r.p99_ms):.1f}" for r in runs if r.p99_ms > 0)
        parts.append(f'<polyline fill="none" stroke="{color}" points="{good}"/>')
        parts.append(f'<polyline fill="none" stroke="{color}" points="{p99}"/>')
        parts.append(f'<text x="{pad + 5}" y="{30 + 13 * n}" fill="{color}">{config}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="0.5,1,2,5", help="offered loads as multiples of the capacity (0.5,1,2,5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run, after the warm-up (10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per run excluded at its start (3)")
    parser.add_argument("--capacity", type=int, default=10, help="calls the downstream serves at base latency (10)")
    parser.add_argument("--base-ms", type=float, default=20.0, help="the downstream's latency below capacity (20)")
    parser.add_argument("--contention", type=float, default=0.1, help="the model's contention factor k (0.1)")
    parser.add_argument(
        "--queue-wait-ms", type=float, default=20.0, help="max_queue_wait of the queue configuration (20)"
    )
    parser.add_argument("--max-requests", type=int, default=40_000, help="requests per run at most (40000)")
    parser.add_argument("--max-connections", type=int, default=4000, help="client connections at most (4000)")
    parser.add_argument("--client-timeout", type=float, default=3.0, help="seconds before a request is given up (3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "overload.png")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of seconds (CI): 2 rates, short runs, temp plot"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.warmup, args.capacity = "0.5,2", 0.6, 0.2, 5
        args.client_timeout = 1.5
        if args.plot == parser.get_default("plot"):
            args.plot = Path(tempfile.mkdtemp(prefix="overload-")) / "overload.png"
    multiples = [float(m) for m in args.rates.split(",")]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    import fasthystrix

    loop_name, http = server_stack()
    capacity_rate = args.capacity / (args.base_ms / 1000.0)
    print(
        f"# overload: fasthystrix {fasthystrix.__version__} ({fasthystrix.implementation}), "
        f"uvicorn ({loop_name}, {http})"
    )
    print(f"# {machine()} at start")
    print(
        f"# downstream: {args.capacity} calls x {args.base_ms:g} ms = {capacity_rate:,.0f} calls/s, "
        f"contention k={args.contention:g}; "
        f"runs: {args.warmup:g} s warm-up + {args.seconds:g} s measured, at most {args.max_requests} requests"
    )
    skipped: dict[str, str] = {}
    results: list[Result] = []
    for config in configs:
        reason = availability(config)
        if reason is not None:
            skipped[config] = reason
            print(f"# {config}: {reason}", flush=True)
            continue
        for multiple in multiples:
            result = run_one(args, config, multiple)
            results.append(result)
            print(
                f"# {config} {multiple:g}x: goodput {result.goodput:,.1f}/s, 503 {result.rejected:,.1f}/s, "
                f"errors {result.errors}, p99 {fmt(result.p99_ms)} ms, lag p99 {fmt(result.lag_p99_ms, 2)} ms",
                flush=True,
            )
    print(f"# {machine()} at end\n")
    print(report(results, skipped, args))
    print()
    print(plot(results, args.plot, args))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_serve":
        serve(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
