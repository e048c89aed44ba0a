"""Host-wide circuits under real servers on loopback: gunicorn (sync and gthread workers) and
uvicorn ``--workers``, four worker processes each, running ``shared_server_app``.

Each test starts a server whose workers share circuits through a fresh directory, drives it
with a bounded number of requests (each on a new connection, so they spread over the
workers), and reads the circuit back from whichever worker answers. The dependency is a
server in this process that counts the calls reaching it and can hold them.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fasthystrix import _impl
from support import WAIT, wait_until

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="shared circuits are POSIX only"),
    pytest.mark.skipif(
        not hasattr(_impl.current().CircuitBreaker, "_attach"),
        reason=f"the {_impl.current().name} core cannot share circuits yet",
    ),
]

HERE = Path(__file__).resolve().parent
WORKERS = 4


class Dependency:
    """A loopback HTTP server standing for the dependency: counts calls in flight, can hold them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.hits: list[tuple[float, int]] = []  # (monotonic time, worker pid)
        self.started: list[float] = []  # when each call's run started in its worker (X-Started)
        self.holding: dict[int, int] = {}  # worker pid -> calls held now
        self.release = threading.Event()
        self.release.set()
        self.status = 200
        dependency = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pid = int(self.headers.get("X-Worker", "0"))
                with dependency.lock:
                    dependency.in_flight += 1
                    dependency.max_in_flight = max(dependency.max_in_flight, dependency.in_flight)
                    dependency.hits.append((time.monotonic(), pid))
                    dependency.started.append(float(self.headers.get("X-Started", "nan")))
                    dependency.holding[pid] = dependency.holding.get(pid, 0) + 1
                try:
                    dependency.release.wait(60)
                    body = b"dep"
                    self.send_response(dependency.status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the worker that called was killed
                finally:
                    with dependency.lock:
                        dependency.in_flight -= 1
                        dependency.holding[pid] -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dependency() -> Iterator[Dependency]:
    dep = Dependency()
    yield dep
    dep.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, path: str, timeout: float = 60.0) -> Any:
    """GET ``path`` on a new connection; the decoded JSON (or text for /metrics)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, (path, response.status, body[:200])
    return body.decode() if path == "/metrics" else json.loads(body)


class Server:
    """A server of WORKERS worker processes sharing circuits through ``shared``."""

    def __init__(self, kind: str, shared: Path, config: dict[str, Any], dep_url: str) -> None:
        self.kind = kind
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            FASTHYSTRIX_SHARED_DIR=str(shared),
            FH_TEST_CONFIG=json.dumps(config),
            FH_TEST_DEP=dep_url,
            PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
            FASTHYSTRIX_NO_EXTENSIONS="0" if _impl.current().name == "compiled" else "1",
        )
        bind = f"127.0.0.1:{self.port}"
        if kind == "uvicorn":
            argv = [sys.executable, "-m", "uvicorn", "shared_server_app:asgi_app", "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", str(WORKERS), "--log-level", "warning"]  # fmt: skip
        else:
            worker_class = "gthread" if kind == "gunicorn-gthread" else "sync"
            argv = [sys.executable, "-m", "gunicorn", "shared_server_app:app", "-b", bind, "-w", str(WORKERS),
                    "-k", worker_class, "--threads", "8" if worker_class == "gthread" else "1",
                    "--graceful-timeout", "2", "--log-level", "warning"]  # fmt: skip
        self.process = subprocess.Popen(argv, env=env, cwd=HERE, start_new_session=True)
        wait_until(self._up, f"{kind} answering on {bind}")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.kind} exited with {self.process.returncode}")
        try:
            request(self.port, "/state", timeout=2)
        except (OSError, AssertionError, http.client.HTTPException):
            return False
        return True

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


@pytest.fixture
def serve(tmp_path: Path, dependency: Dependency) -> Iterator[Any]:
    servers: list[Server] = []

    def start(kind: str, **config: Any) -> Server:
        server = Server(kind, tmp_path / f"shared-{len(servers)}", config, dependency.url)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def calls(port: int, mode: str, n: int, threads: int = 8, sleep: float = 0.01) -> list[dict[str, Any]]:
    """``n`` commands of ``mode``, from ``threads`` client threads; each keeps its worker busy for
    ``sleep`` seconds, so that they spread over the workers."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: request(port, f"/call?mode={mode}&sleep={sleep}"), range(n)))


def _stream_message(port: int) -> dict[str, Any]:
    """The first HystrixCommand message of ``dep`` on the worker that takes the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/hystrix.stream")
        response = conn.getresponse()
        while True:
            line = response.fp.readline()
            assert line, "stream ended"
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("type") == "HystrixCommand" and message.get("name") == "dep":
                    return dict(message)
    finally:
        conn.close()


NO_TRIP = {"isolation": "semaphore", "request_volume_threshold": 1_000_000, "timeout": 30_000}


@pytest.mark.parametrize("kind", ["gunicorn-sync", "gunicorn-gthread", "uvicorn"])
def test_exact_counts_from_any_worker(serve: Any, kind: str) -> None:
    server = serve(kind, **NO_TRIP)
    answers = calls(server.port, "ok", 120) + calls(server.port, "fail", 80)
    assert [a["outcome"] for a in answers] == ["success"] * 120 + ["failure"] * 80
    served_by = {a["pid"] for a in answers}
    assert len(served_by) >= 2, f"all requests went to one worker {served_by}: the test proves nothing"
    # Every worker that answers reads the host's counts, in the window and cumulated.
    readers: set[int] = set()
    states: list[dict[str, Any]] = []
    with ThreadPoolExecutor(8) as pool:
        # Until two workers have answered (bounded): which worker takes a connection is the kernel's call.
        for _ in range(25):
            states += pool.map(lambda _: request(server.port, "/state?sleep=0.01"), range(8))
            readers = {state["pid"] for state in states}
            if len(readers) >= 2:
                break
    for state in states:
        readers.add(state["pid"])
        assert state["metrics"]["successes"] == 120, state
        assert state["metrics"]["failures"] == 80, state
        assert state["metrics"]["requests"] == 200, state
        assert state["tickets"] == 0, state
        assert state["cumulative"][:2] == [120, 80], state
    assert len(readers) >= 2, readers
    # The Prometheus scrape and the stream, from whichever worker answers.
    for _ in range(4):
        scrape = request(server.port, "/metrics")
        for event, count in (("success", 120), ("failure", 80)):
            match = re.search(rf'^fasthystrix_events_total{{command="dep",event="{event}"}} (\S+)$', scrape, re.M)
            assert match and float(match.group(1)) == count, (event, scrape[:2000])
        assert re.search(r'^fasthystrix_rolling_events{command="dep",event="success"} 120\.0$', scrape, re.M)
    if kind != "uvicorn":  # the ASGI test app does not mount the stream
        message = _stream_message(server.port)
        assert message["rollingCountSuccess"] == 120
        assert message["rollingCountFailure"] == 80
        assert message["reportingHosts"] == 1


@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn"])
def test_host_wide_trip_on_the_crossing_call(serve: Any, kind: str) -> None:
    server = serve(kind, isolation="semaphore", request_volume_threshold=20, error_percent_threshold=50,
                   sleep_window=600_000, timeout=30_000)  # fmt: skip
    first = calls(server.port, "fail", 20)
    assert [a["outcome"] for a in first] == ["failure"] * 20
    # The 21st call, whichever worker takes it, finds 20 requests all failed: it trips the circuit.
    after = calls(server.port, "ok", 40)
    assert {a["outcome"] for a in after} == {"short-circuit"}, after
    assert len({a["pid"] for a in first + after}) >= 2
    state = request(server.port, "/state")
    assert state["state"] == "open"
    assert state["metrics"]["short_circuits"] == 40


def test_one_trial_per_sleep_window_host_wide(serve: Any, dependency: Dependency) -> None:
    sleep_window = 0.5
    server = serve("gunicorn-gthread", isolation="semaphore", request_volume_threshold=20, timeout=30_000,
                   sleep_window=int(sleep_window * 1000))  # fmt: skip
    dependency.status = 500  # every call reaching it fails: each trial reopens the circuit
    calls(server.port, "fail", 20)
    with dependency.lock:
        dependency.hits.clear()
        dependency.started.clear()
    start = time.monotonic()
    outcomes: list[str] = []
    with ThreadPoolExecutor(16) as pool:
        # Load from 16 clients for about 6 sleep windows, bounded in count and time.
        def client(_: int) -> None:
            while time.monotonic() - start < 6 * sleep_window:
                outcomes.append(request(server.port, "/call?mode=dep")["outcome"])

        list(pool.map(client, range(16)))
    hits = sorted(dependency.started)
    assert len(outcomes) > 100, "too little load to test anything"
    assert 1 <= len(hits) <= 7, hits
    # One trial per sleep window, whichever worker: consecutive trials are admitted at least a
    # window apart. The dependency sees each a little after its admission, later on a busy machine
    # (a worker's thread may wait for a core in between): 100 ms of slack, and two trials in one
    # window would also show as more than 7 hits above.
    gaps = [b - a for a, b in itertools.pairwise(hits)]
    assert all(g >= sleep_window - 0.1 for g in gaps), gaps
    assert outcomes.count("failure") == len(hits)


@pytest.mark.parametrize("kind", ["gunicorn-sync", "gunicorn-gthread"])
def test_concurrency_limit_is_per_host(serve: Any, dependency: Dependency, kind: str) -> None:
    server = serve(kind, isolation="semaphore", max_concurrent_requests=3,
                   request_volume_threshold=1_000_000, timeout=60_000)  # fmt: skip
    dependency.release.clear()
    n = 32
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(request, server.port, "/call?mode=dep") for _ in range(n)]
        # The 3 admitted calls may still be on their way to the dependency when the rest are rejected.
        wait_until(
            lambda: sum(f.done() for f in futures) == n - 3 and dependency.in_flight == 3,
            f"{n - 3} calls rejected and 3 at the dependency",
        )
        rejected = [f.result() for f in futures if f.done()]
        assert {a["outcome"] for a in rejected} == {"rejected"}
        assert request(server.port, "/state")["tickets"] == 3
        if kind == "gunicorn-sync":
            # A sync worker serves one request at a time: the 3 tickets are held by 3 processes,
            # and the fourth worker rejects because of the others' tickets.
            holders = {pid for pid, held in dependency.holding.items() if held}
            assert len(holders) == 3, dependency.holding
            assert {a["pid"] for a in rejected} - holders
        dependency.release.set()
        answers = [f.result() for f in futures]
    assert dependency.max_in_flight == 3
    assert [a["outcome"] for a in answers].count("success") == 3
    wait_until(lambda: request(server.port, "/state")["tickets"] == 0, "tickets back")


def test_killed_worker_gives_its_tickets_back(serve: Any, dependency: Dependency) -> None:
    server = serve("gunicorn-sync", isolation="semaphore", max_concurrent_requests=3,
                   request_volume_threshold=1_000_000, timeout=60_000)  # fmt: skip
    before = calls(server.port, "ok", 30, threads=3)
    dependency.release.clear()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(request, server.port, "/call?mode=dep") for _ in range(3)]
        wait_until(lambda: dependency.in_flight == 3, "3 calls in flight")
        with dependency.lock:
            victim, held = next((pid, n) for pid, n in dependency.holding.items() if n)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # Its tickets come back within the documented bound, read from another worker.
        wait_until(lambda: request(server.port, "/state")["tickets"] == 3 - held, "the dead worker's tickets")
        elapsed = time.monotonic() - killed_at
        assert elapsed < 1.0, f"tickets came back after {elapsed:.2f} s"
        state = request(server.port, "/state")
        assert state["pid"] != victim
        assert state["metrics"]["successes"] == len(before)  # its counts stay
        dependency.release.set()
        for f in futures:
            try:
                f.result()
            except (OSError, http.client.HTTPException):
                pass  # the killed worker's own requests
    wait_until(lambda: request(server.port, "/state")["tickets"] == 0, "every ticket back")
    # The survivors and the replacement worker carry on.
    assert {a["outcome"] for a in calls(server.port, "ok", 20)} == {"success"}


def test_killed_trial_is_released(serve: Any, dependency: Dependency) -> None:
    sleep_window = 3.0
    server = serve("gunicorn-gthread", isolation="semaphore", request_volume_threshold=20, timeout=60_000,
                   sleep_window=int(sleep_window * 1000))  # fmt: skip
    calls(server.port, "fail", 20)
    assert request(server.port, "/call?mode=ok")["outcome"] == "short-circuit"
    dependency.release.clear()
    deadline = time.monotonic() + WAIT
    # Once the sleep window is over, one call becomes the trial and hangs in the dependency.
    while not dependency.hits:
        assert time.monotonic() < deadline, "no trial"
        try:
            request(server.port, "/call?mode=dep", timeout=0.5)
        except (OSError, http.client.HTTPException):
            pass  # the trial itself, hanging
    with dependency.lock:
        victim = dependency.hits[0][1]
        dependency.hits.clear()
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    dependency.release.set()
    # Without the reaper the next trial would wait for the next sleep window (3 s).
    while not dependency.hits:
        request(server.port, "/call?mode=dep")
        assert time.monotonic() - killed_at < sleep_window, "the dead worker's trial was never released"
    assert dependency.hits[0][0] - killed_at < 1.0 + 0.2
    wait_until(lambda: request(server.port, "/state")["state"] == "closed", "the new trial closing it")


def test_stopped_worker_does_not_block_the_others(serve: Any) -> None:
    server = serve("gunicorn-sync", **NO_TRIP)
    calls(server.port, "ok", 20)
    victim = sorted(server.worker_pids())[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        answers = calls(server.port, "ok", 40, threads=3)
        assert {a["outcome"] for a in answers} == {"success"}
        assert victim not in {a["pid"] for a in answers}
        assert request(server.port, "/state")["metrics"]["successes"] == 60
    finally:
        os.kill(victim, signal.SIGCONT)
