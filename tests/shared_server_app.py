"""The app the shared-circuit server tests run under gunicorn and uvicorn, several workers each.

Its one command, ``"dep"``, is configured from ``FH_TEST_CONFIG`` (JSON) in every worker, and
circuits are shared through ``FASTHYSTRIX_SHARED_DIR`` (read by fasthystrix at import):

- ``GET /call?mode=ok|fail|dep[&sleep=S]``: one command; ``dep`` calls the test's dependency server
  (``FH_TEST_DEP``) with this worker's pid. Answers JSON: the worker's pid and the outcome;
- ``GET /state[?sleep=S]``: the circuit as this worker sees it (metrics, tickets, state, settings,
  cumulative totals);
- ``GET /metrics``: a Prometheus scrape; ``GET /hystrix.stream``: the Hystrix stream.

``app`` is the WSGI app (gunicorn), ``asgi_app`` the ASGI one (uvicorn).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest

import fasthystrix
from fasthystrix import prometheus
from fasthystrix._observability._cumulative import shared_cumulative
from fasthystrix.stream import StreamHandler

fasthystrix.configure_command("dep", json.loads(os.environ.get("FH_TEST_CONFIG", "{}")))
_DEP = os.environ.get("FH_TEST_DEP", "")
_registry = CollectorRegistry()
_registry.register(prometheus.FasthystrixCollector())
stream = StreamHandler(interval=0.2)

_OUTCOMES = {
    fasthystrix.CircuitOpenError: "short-circuit",
    fasthystrix.MaxConcurrencyError: "rejected",
    fasthystrix.TimeoutError: "timeout",
}


def _dependency() -> str:
    # X-Started: when run started (CLOCK_MONOTONIC, the same clock in every process of the host),
    # microseconds after the circuit admitted it, whatever the request's way to the dependency.
    headers = {"X-Worker": str(os.getpid()), "X-Started": repr(time.monotonic())}
    request = urllib.request.Request(_DEP, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def _fail() -> str:
    raise RuntimeError("dependency failed")


_RUNS: dict[str, Callable[[], str]] = {"ok": lambda: "ok", "fail": _fail, "dep": _dependency}


def call(mode: str, sleep: float = 0.0) -> dict[str, Any]:
    """One command of ``mode``, after ``sleep`` seconds (keeps this worker busy, so that concurrent
    requests spread over the workers); its outcome as the caller saw it."""
    time.sleep(sleep)
    try:
        fasthystrix.do("dep", _RUNS[mode])
        outcome = "success"
    except Exception as exc:  # the outcome is what the test checks
        outcome = next((v for k, v in _OUTCOMES.items() if isinstance(exc, k)), "failure")
    return {"pid": os.getpid(), "outcome": outcome}


def state() -> dict[str, Any]:
    """The circuit as this worker reads it."""
    circuit = fasthystrix.get_circuit("dep")[0]
    m = circuit.metrics()
    cumulative = shared_cumulative(circuit)
    return {
        "pid": os.getpid(),
        "state": circuit.state(),
        "tickets": circuit.tickets_in_use,
        "max_concurrent": circuit.settings.max_concurrent_requests,
        "metrics": {
            k: getattr(m, k)
            for k in ("successes", "failures", "rejects", "short_circuits", "timeouts", "requests", "errors")
        },
        "cumulative": None if cumulative is None else list(cumulative.events),
        "shared_dir": str(fasthystrix.shared_dir()),
    }


def _answer(path: str, query: str) -> tuple[str, str, bytes]:
    if path == "/call":
        params = parse_qs(query)
        mode = params.get("mode", ["ok"])[0]
        sleep = float(params.get("sleep", ["0"])[0])
        return "200 OK", "application/json", json.dumps(call(mode, sleep)).encode()
    if path == "/state":
        time.sleep(float(parse_qs(query).get("sleep", ["0"])[0]))  # keeps this worker busy (see call)
        return "200 OK", "application/json", json.dumps(state()).encode()
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4", generate_latest(_registry)
    return "404 Not Found", "text/plain", b"not found"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """The WSGI app."""
    path = environ.get("PATH_INFO", "")
    if path == "/hystrix.stream":
        return stream.wsgi_app(environ, start_response)
    status, content_type, body = _answer(path, environ.get("QUERY_STRING", ""))
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The ASGI app (the command runs on the event loop's thread: semaphore isolation in tests)."""
    if scope["type"] != "http":
        return
    status, content_type, body = _answer(scope["path"], scope.get("query_string", b"").decode())
    code = int(status.split()[0])
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
