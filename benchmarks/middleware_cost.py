"""The middleware's own cost: a trivial route served bare and through ``CircuitBreakerMiddleware``, in one run.

    python benchmarks/middleware_cost.py                 # Starlette, FastAPI (uvicorn), Flask (gunicorn); about 4 min
    python benchmarks/middleware_cost.py --quick         # a smoke run of seconds (CI): asserts nothing
    python benchmarks/middleware_cost.py --frameworks flask --rounds 7 --seconds 5
    python benchmarks/middleware_cost.py --callgrind --cache-sim  # instructions, L1 misses, mispredictions (valgrind)

Each framework's route (``GET /``, answering ``ok``) is served by a real server in a subprocess of
its own, one per variant, all started at once:

- Starlette and FastAPI under uvicorn (one worker; uvloop and httptools when installed), bare and
  with ``fasthystrix.asgi.CircuitBreakerMiddleware``;
- Flask under gunicorn (one ``gthread`` worker, ``--threads`` threads), bare and with
  ``fasthystrix.wsgi.CircuitBreakerMiddleware``, in thread isolation (the default) and in semaphore
  isolation.

The middleware's commands get ``max_concurrent_requests=1000`` (no request is ever rejected: this
measures the cost, not shedding) and the default 1 s timeout. One more variant per framework,
``middleware-shed``, measures the 503 path: its command has no ticket (``max_concurrent_requests=0``),
so every request is shed at the door (503, ``Retry-After: 1``, the app never runs); its throughput
against the served middleware's, in the same rounds, is what a rejection costs against a served
request (its 503s are expected, not counted as failures). And one reference variant for Starlette
and FastAPI, ``minimal-wrapper``: not fasthystrix, but the least any ASGI middleware that reads the
response's status does (it wraps ``send()`` and counts statuses). Its ratio is the floor for a
middleware written in Python under the same server, in the same rounds. The load is closed-loop: ``wrk -t1
-c10`` (``--connections``), or, where wrk is not installed, a Python client of as many keep-alive
connections in a process of its own. With two cores or more the servers run on the first core and
the load tool on the second (``sched_setaffinity``), so they do not compete with each other.

**How the ratio is made.** Each framework's variants are loaded one after the other for ``--seconds``
each, ``--rounds`` times, the order alternating round by round (after a warm-up of each); a round's
ratio is the variant's requests/s over the bare server's in that round, and the figure is the
median over the rounds: load from elsewhere that comes and goes hits both sides of a pair alike.
The target is at least 97 % of the bare throughput. Responses other than 2xx are counted (wrk's
"Non-2xx") and reported: there must be none.

**The server's CPU time per request** (Linux: read from ``/proc`` for the server's process group
before and after each round) is reported beside the throughput: bare's over the variant's, per
round, and its median. With the server busy all the time (one core, a closed loop of 10
connections) it is what the throughput ratio measures, without the load tool's share of the noise:
wrk's own scheduling, and what else runs on a shared machine, move a round's throughput by a few
per cent, and the CPU time a request takes much less.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

TARGET = 0.97
FRAMEWORKS = ("starlette", "fastapi", "flask")
VARIANTS = {
    "starlette": ("bare", "middleware", "middleware-shed", "minimal-wrapper"),
    "fastapi": ("bare", "middleware", "middleware-shed", "minimal-wrapper"),
    "flask": ("bare", "middleware-thread", "middleware-semaphore", "middleware-shed"),
}
TICKETS = 1000  # max_concurrent_requests: never a rejection
SHED = "middleware-shed"  # no ticket at all: every request answered 503 at the door
# Not fasthystrix: the least any ASGI middleware that sees the response's status does (it wraps
# send()). What it costs under the same server is the floor of a middleware written in Python.
MINIMAL = "minimal-wrapper"


def tickets(variant: str) -> int:
    return 0 if variant == SHED else TICKETS


# --------------------------------------------------------------------------------------------------
# The servers (subprocesses: ``middleware_cost.py _serve FRAMEWORK VARIANT THREADS``)
# --------------------------------------------------------------------------------------------------


class StatusCounter:
    """The reference middleware (``minimal-wrapper``): counts the statuses of the app's responses,
    and does nothing else."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: dict[int, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        statuses = self.statuses

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1
            await send(message)

        await self.app(scope, receive, counted)


def asgi_app(framework: str, variant: str, name: str | None = None) -> Any:
    """The Starlette or FastAPI app, bare, with the middleware, or with the reference wrapper."""
    import fasthystrix
    from fasthystrix.asgi import CircuitBreakerMiddleware

    config = fasthystrix.CommandConfig(max_concurrent_requests=tickets(variant), rejections_count_as_errors=False)
    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def index(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app: Any = Starlette(routes=[Route("/", index)])
        if variant == MINIMAL:
            return StatusCounter(app)
        return app if variant == "bare" else CircuitBreakerMiddleware(app, config=config, name=name)
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse as FastAPIText

    api = FastAPI()

    @api.get("/", response_class=FastAPIText)
    async def root() -> str:
        return "ok"

    if variant == MINIMAL:
        api.add_middleware(StatusCounter)
    elif variant != "bare":
        api.add_middleware(CircuitBreakerMiddleware, config=config, name=name)
    return api


def wsgi_app(variant: str, name: str | None = None) -> Any:
    """The Flask app, bare or with the middleware in thread or semaphore isolation."""
    from flask import Flask

    import fasthystrix
    from fasthystrix.wsgi import CircuitBreakerMiddleware

    app = Flask("middleware_cost")

    @app.get("/")
    def index() -> str:
        return "ok"

    if variant != "bare":
        isolation = "thread" if variant == SHED else variant.removeprefix("middleware-")
        config = fasthystrix.CommandConfig(
            max_concurrent_requests=tickets(variant),
            isolation=isolation,  # type: ignore[arg-type]
            rejections_count_as_errors=False,
        )
        app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, config=config, name=name)  # type: ignore[method-assign]
    return app


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def gunicorn(app: Any, sock: socket.socket, threads: int, loglevel: str) -> Any:
    """A gunicorn application serving ``app`` on ``sock``: one ``gthread`` worker of ``threads`` threads."""
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped,unused-ignore]

    sock.set_inheritable(True)

    class Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": f"fd://{sock.fileno()}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": threads,
                "keepalive": 30,
                "loglevel": loglevel,
                "accesslog": None,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    return Gunicorn()


def serve(framework: str, variant: str, threads: int) -> None:
    """Serve one variant on a loopback port of its own; print the port first."""
    sock = listening_socket()
    if framework == "flask":
        server = gunicorn(wsgi_app(variant), sock, threads, "warning")
        print(sock.getsockname()[1], flush=True)
        server.run()
        return
    import uvicorn

    loop, http = server_stack()
    config = uvicorn.Config(
        asgi_app(framework, variant), loop=loop, http=http, lifespan="off", log_level="warning", access_log=False
    )
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def server_stack() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools when installed."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


# --------------------------------------------------------------------------------------------------
# The load: wrk, or a Python client (``middleware_cost.py _client PORT CONNECTIONS SECONDS``)
# --------------------------------------------------------------------------------------------------


async def python_client(port: int, connections: int, seconds: float) -> tuple[int, int]:
    """Closed loop: each connection sends its next request as soon as the last is answered."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    counts = [0, 0]  # 2xx, other
    end = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(match.group(1)) if match else 0)
                counts[0 if head[9:10] == b"2" else 1] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return counts[0], counts[1]


class Load:
    """One timed load of a server: requests/s and responses other than 2xx."""

    def __init__(self, connections: int, core: int | None, client: str) -> None:
        self.connections = connections
        self.core = core
        self.wrk = shutil.which("wrk") if client in ("auto", "wrk") else None
        if client == "wrk" and self.wrk is None:
            raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")

    @property
    def tool(self) -> str:
        if self.wrk:
            return f"wrk -t1 -c{self.connections}"
        return f"a Python client (asyncio) of {self.connections} keep-alive connections"

    def _preexec(self) -> None:
        if self.core is not None:
            os.sched_setaffinity(0, {self.core})

    def run(self, port: int, seconds: float) -> tuple[float, int, int]:
        """requests/s, responses other than 2xx (and socket errors), requests answered."""
        if self.wrk:
            duration = max(1, round(seconds))
            command = [self.wrk, "-t1", f"-c{self.connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/"]
            out = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=self._preexec).stdout
            rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
            count = re.search(r"(\d+) requests in", out)
            bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
            errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
            if rate is None or count is None:
                raise RuntimeError(f"cannot read wrk's output:\n{out}")
            failures = int(bad.group(1)) if bad else 0
            failures += sum(int(g) for g in errors.groups()) if errors else 0
            return float(rate.group(1)), failures, int(count.group(1))
        command = [sys.executable, __file__, "_client", str(port), str(self.connections), str(seconds)]
        out = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=self._preexec).stdout
        ok, other = json.loads(out)
        return ok / seconds, other, ok + other


def group_cpu_seconds(group: int) -> float | None:
    """The CPU time (user and system) of the processes of process group ``group`` so far (the
    server and, under gunicorn, its worker), from ``/proc``; ``None`` where there is no ``/proc``."""
    if not os.path.isdir("/proc/self"):
        return None
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:  # pgrp; fields[11] and [12]: utime and stime, in clock ticks
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------
# In-process: each app called directly, no server (``--profile``)
# --------------------------------------------------------------------------------------------------


def direct_app(framework: str, variant: str) -> Callable[[int], None]:
    """A function making ``n`` requests to the app itself, in this process (an ASGI or WSGI call each)."""
    if framework == "flask":
        from werkzeug.test import EnvironBuilder

        wsgi = wsgi_app(variant, name=f"{framework} {variant}")  # a command per variant: its own config
        environ = EnvironBuilder(path="/", base_url="http://127.0.0.1/").get_environ()

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
            return lambda data: None

        def run_wsgi(n: int) -> None:
            for _ in range(n):
                result = wsgi(dict(environ), start_response)
                for _chunk in result:
                    pass
                close = getattr(result, "close", None)
                if close is not None:
                    close()

        return run_wsgi
    asgi = asgi_app(framework, variant, name=f"{framework} {variant}")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def requests(n: int) -> None:
        for _ in range(n):
            await asgi(dict(scope), receive, send)

    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()  # as under uvicorn
    except ImportError:
        loop = asyncio.new_event_loop()

    def run_asgi(n: int) -> None:
        loop.run_until_complete(requests(n))

    return run_asgi


def profile(frameworks: list[str], requests: int, top: int) -> None:
    """Per framework: µs per request of each variant called in-process (best of 5), then where the
    middleware's variant spends its time (cProfile, by own time)."""
    import cProfile
    import io
    import pstats

    for framework in frameworks:
        print(f"\n## {framework}: in-process, no server ({requests} requests per round, CPU time, best of 5 rounds)\n")
        runners = {variant: direct_app(framework, variant) for variant in VARIANTS[framework]}
        best: dict[str, float] = {}
        for variant, run in runners.items():
            run(200)  # warm-up (and the circuit is created)
            times = []
            for _ in range(5):
                # CPU time, not wall time: other processes on a shared machine do not count.
                started = time.process_time()
                run(requests)
                times.append((time.process_time() - started) / requests * 1e6)
            best[variant] = min(times)
        for variant, us in best.items():
            extra = "" if variant == "bare" else f" ({us - best['bare']:+.1f} µs)"
            print(f"- {variant}: {us:.1f} µs of CPU per request{extra}")
        for variant, run in runners.items():
            if variant == "bare":
                continue
            profiler = cProfile.Profile()
            profiler.enable()
            run(requests)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
            print(f"\ncProfile, {framework} {variant}, by own time (cProfile's overhead inflates every call):\n")
            print("```")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip()).strip())
            print("```")


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class Server:
    """One variant's server process; killed (with its workers) at the end."""

    def __init__(self, framework: str, variant: str, threads: int, core: int | None) -> None:
        self.name = f"{framework} {variant}"
        command = [sys.executable, __file__, "_serve", framework, variant, str(threads)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # gunicorn's worker too goes with the group
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{self.name}: the server did not start (it printed {line!r})")
        self.port = int(line)
        deadline = time.monotonic() + 30
        while not self.ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name}: no answer within 30 s")
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 503" if self.name.endswith(SHED) else b"HTTP/1.1 200")
        except OSError:
            return False

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def measure(framework: str, args: argparse.Namespace, load: Load, server_core: int | None) -> dict[str, Any]:
    """Every variant of ``framework``, in alternating rounds: the per-round ratios to bare and their median."""
    variants = VARIANTS[framework]
    servers = {v: Server(framework, v, args.threads, server_core) for v in variants}
    try:
        for server in servers.values():
            load.run(server.port, args.warmup)
        rates: dict[str, list[float]] = {v: [] for v in variants}
        cpu_us: dict[str, list[float]] = {v: [] for v in variants}
        failures = dict.fromkeys(variants, 0)
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else tuple(reversed(variants))
            for variant in order:
                group = servers[variant].process.pid  # its own session: the group of the server and its workers
                before = group_cpu_seconds(group)
                rate, bad, answered = load.run(servers[variant].port, args.seconds)
                after = group_cpu_seconds(group)
                rates[variant].append(rate)
                failures[variant] += bad
                if before is not None and after is not None and answered:
                    cpu_us[variant].append((after - before) / answered * 1e6)
    finally:
        for server in servers.values():
            server.stop()
    bare = rates["bare"]
    result: dict[str, Any] = {"framework": framework, "variants": {}}
    for variant in variants:
        ratios = [r / b for r, b in zip(rates[variant], bare, strict=True)]
        result["variants"][variant] = {
            "requests_per_s": statistics.median(rates[variant]),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "failures": failures[variant],
        }
        if len(cpu_us[variant]) == len(cpu_us["bare"]) == args.rounds:
            # The server's CPU time per request: bare's over the variant's, per round, is what the
            # throughput ratio would be with the server always busy, without the load tool's noise.
            cpu_ratios = [b / c for b, c in zip(cpu_us["bare"], cpu_us[variant], strict=True)]
            result["variants"][variant].update(
                cpu_us_per_request=statistics.median(cpu_us[variant]), cpu_ratio=statistics.median(cpu_ratios)
            )
    return result


# --------------------------------------------------------------------------------------------------
# --callgrind: instructions per request under the server (``middleware_cost.py _counted FRAMEWORK VARIANT N``)
# --------------------------------------------------------------------------------------------------

_CLIENT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for _ in range(int(sys.argv[2])):
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    answer = b""
    while not answer.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("the server closed the connection")
        answer += chunk
"""


def counted_serve(framework: str, variant: str, requests: int) -> None:
    """Serve ``requests`` requests, one after the other on one keep-alive connection, from a client
    process of its own (valgrind does not follow it), then exit. uvicorn with uvloop and h11; Flask
    under gunicorn (one ``gthread`` worker of one thread: its process is the one counted)."""
    if framework == "flask":
        counted_serve_wsgi(variant, requests)
        return
    import uvicorn

    app = asgi_app(framework, variant)
    sock = listening_socket()
    config = uvicorn.Config(app, log_level="critical", lifespan="off", loop="uvloop", http="h11", access_log=False)
    server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENT, str(sock.getsockname()[1]), str(requests)
        )
        if await client.wait() != 0:
            raise SystemExit(f"the client failed ({variant})")
        server.should_exit = True
        await serving

    asyncio.run(run())


def counted_serve_wsgi(variant: str, requests: int) -> None:
    """gunicorn's arbiter in this process, its worker forked from it; once the client is done, the
    arbiter is told to stop (SIGTERM: the worker finishes and exits, and valgrind writes its count)."""
    sock = listening_socket()
    arbiter = os.getpid()

    def client() -> None:
        code = subprocess.call([sys.executable, "-c", _CLIENT, str(sock.getsockname()[1]), str(requests)])
        if code != 0:
            print(f"the client failed ({variant})", file=sys.stderr, flush=True)
        os.kill(arbiter, signal.SIGTERM)

    server = gunicorn(wsgi_app(variant), sock, 1, "critical")
    threading.Thread(target=client, daemon=True).start()  # the arbiter's only: the worker forks without it
    server.run()


def _counted(framework: str, variant: str, n: int, cache_sim: bool = False) -> dict[str, int]:
    """Callgrind's totals (``Ir``, and with ``cache_sim`` the simulated cache misses and branch
    mispredictions) of the process that served ``n`` requests (gunicorn: its worker's, not the arbiter's)."""
    with tempfile.TemporaryDirectory() as out_dir:
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p"]
        if cache_sim:
            valgrind += ["--cache-sim=yes", "--branch-sim=yes"]
        with subprocess.Popen(
            [*valgrind, sys.executable, __file__, "_counted", framework, variant, str(n)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        ) as process:
            _, stderr = process.communicate()
        totals = {int(name.rsplit(".", 1)[1]): _totals(os.path.join(out_dir, name)) for name in os.listdir(out_dir)}
    if process.returncode != 0 or process.pid not in totals or "the client failed" in stderr:
        raise SystemExit(f"valgrind failed for {framework} {variant}:\n{stderr[-2000:]}")
    if framework != "flask":
        return totals[process.pid]
    workers = [pid for pid in totals if pid != process.pid]  # valgrind runs the arbiter as the process it started
    if len(workers) != 1:
        raise SystemExit(f"expected one gunicorn worker for {variant}, found the processes {sorted(totals)}")
    return totals[workers[0]]


def _totals(path: str) -> dict[str, int]:
    """A callgrind output file's events and their totals (its ``events:`` and ``summary:`` lines)."""
    events: list[str] = []
    totals: list[int] = []
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                totals = [int(x) for x in line.split()[1:]]
    return dict(zip(events, totals, strict=True))


#: --cache-sim's columns: callgrind's events (simulated L1 caches of the machine's sizes, and its branch predictor).
CACHE_COLUMNS = (("I1mr", "L1 instruction misses"), ("D1mr", "L1 data read misses"), ("Bcm", "mispredicted branches"))


def callgrind(frameworks: list[str], low: int, high: int, cache_sim: bool = False) -> None:
    """Per variant: the server's instructions per request, (Ir(high) - Ir(low)) / (high - low); with
    ``cache_sim``, its cache misses and mispredicted branches per request too (and their difference to bare)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    columns = CACHE_COLUMNS if cache_sim else ()
    print(
        "| framework (server) | variant | instructions per request | over bare |"
        + "".join(f" {c[1]} |" for c in columns)
    )
    print("|---|---|---|---|" + "---|" * len(columns))
    for framework in frameworks:
        server = "gunicorn gthread" if framework == "flask" else "uvicorn"
        variants = (
            ("bare", "middleware-semaphore", "middleware-thread")
            if framework == "flask"
            else ("bare", "middleware", MINIMAL)
        )
        per_request: dict[str, dict[str, float]] = {}
        for variant in variants:
            counts = [_counted(framework, variant, n, cache_sim) for n in (low, high)]
            per_request[variant] = {k: (counts[1][k] - counts[0][k]) / (high - low) for k in counts[0]}
            row, bare = per_request[variant], per_request["bare"]
            extra = "" if variant == "bare" else f"{row['Ir'] / bare['Ir'] - 1:+.1%}"
            cells = "".join(
                f" {row[c]:,.0f} |" if variant == "bare" else f" {row[c]:,.0f} ({row[c] - bare[c]:+,.0f}) |"
                for c, _ in columns
            )
            print(f"| {framework} ({server}) | {variant} | {row['Ir']:,.0f} | {extra} |{cells}", flush=True)


def cores() -> tuple[int | None, int | None]:
    """The servers' core and the load tool's: the first two this process may use, when there are two."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


def machine() -> str:
    load = os.getloadavg()
    average = " ".join(f"{x:.2f}" for x in load)
    return f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {average}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, from: " + ", ".join(FRAMEWORKS)
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per variant and round (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load per server before the rounds (2)")
    parser.add_argument("--connections", type=int, default=10, help="the load tool's connections (10)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn's gthread threads (8)")
    parser.add_argument(
        "--client", choices=("auto", "wrk", "python"), default="auto", help="the load tool (auto: wrk if installed)"
    )
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (CI): 1 round of 1 s")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: each app called in-process (no server): µs per request, and cProfile of the middleware",
    )
    parser.add_argument("--profile-requests", type=int, default=20_000, help="requests per --profile round (20000)")
    parser.add_argument("--top", type=int, default=25, help="functions shown per --profile (25)")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="instead: the server's instructions per request (valgrind), bare and with the middleware",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="with --callgrind: also the simulated L1 cache misses and mispredicted branches per request",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.5
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) {unknown}; choose from {', '.join(FRAMEWORKS)}")
    import fasthystrix

    if args.callgrind:
        print(
            f"# middleware cost under callgrind: fasthystrix {fasthystrix.__version__} ({fasthystrix.implementation})"
        )
        print("# uvicorn (uvloop, h11), gunicorn (one gthread worker of one thread: the worker counted);")
        print("# requests one after the other on one keep-alive connection\n")
        callgrind(frameworks, *((50, 150) if args.quick else (300, 1300)), cache_sim=args.cache_sim)
        return 0
    if args.profile:
        print(f"# middleware cost, in-process: fasthystrix {fasthystrix.__version__} ({fasthystrix.implementation})")
        print(f"# {machine()}")
        profile(frameworks, 1000 if args.quick else args.profile_requests, args.top)
        return 0
    server_core, load_core = cores()
    load = Load(args.connections, load_core, args.client)
    loop, http = server_stack()
    print(f"# middleware cost: fasthystrix {fasthystrix.__version__} ({fasthystrix.implementation})")
    print(f"# servers: uvicorn ({loop}, {http}), gunicorn gthread ({args.threads} threads); load: {load.tool}")
    pinning = f"servers on core {server_core}, load on core {load_core}" if server_core is not None else "no pinning"
    print(f"# {args.rounds} alternating rounds of {args.seconds:g} s per variant; {pinning}")
    print(f"# {machine()} at start", flush=True)
    results = [measure(framework, args, load, server_core) for framework in frameworks]
    print(f"# {machine()} at end\n")
    print(
        "| framework (server) | variant | requests/s (median) | vs bare (median of paired rounds) | rounds "
        "| server CPU µs/request (median) | bare's CPU/request over its (median of paired rounds) "
        "| non-2xx/errors | target >= 97 % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        server = "gunicorn" if result["framework"] == "flask" else "uvicorn"
        for variant, v in result["variants"].items():
            if variant == SHED:
                continue
            met = "" if variant == "bare" else ("met" if v["ratio"] >= TARGET else "NOT met")
            if variant == MINIMAL:
                met = "(reference: not fasthystrix)"
            rounds = ", ".join(f"{r:.3f}" for r in v["ratios"])
            cpu = f"{v['cpu_us_per_request']:.1f} | {v['cpu_ratio']:.1%}" if "cpu_ratio" in v else "n/a | n/a"
            print(
                f"| {result['framework']} ({server}) | {variant} | {v['requests_per_s']:,.0f} | {v['ratio']:.1%} "
                f"| {rounds} | {cpu} | {v['failures']} | {met} |"
            )
    print("\nThe 503 path (every request shed at the door) against a served request through the middleware:\n")
    print("| framework (server) | 503s/s (median) | served/s (median) | 503s per served request, per round (median) |")
    print("|---|---|---|---|")
    for result in results:
        server = "gunicorn" if result["framework"] == "flask" else "uvicorn"
        variants = result["variants"]
        if SHED not in variants:
            continue
        served = "middleware-thread" if result["framework"] == "flask" else "middleware"
        shed, ok = variants[SHED], variants[served]
        ratios = [r / s for r, s in zip(shed["ratios"], ok["ratios"], strict=True)]
        print(
            f"| {result['framework']} ({server}) | {shed['requests_per_s']:,.0f} | {ok['requests_per_s']:,.0f} "
            f"({served}) | {statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}) |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 5 and sys.argv[1] == "_counted":
        counted_serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 5 and sys.argv[1] == "_client":
        print(json.dumps(asyncio.run(python_client(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))))
    else:
        sys.exit(main())
