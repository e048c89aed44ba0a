"""One instance of a service for tests/test_prometheus_server.py: fasthystrix's Prometheus metrics on a
loopback port, and commands driven to known outcomes when the test says so.

    python tests/prometheus_instance.py '<plan as JSON>'

The plan maps each command to its config and its steps, ``[outcome, count, ms]`` in order:
``success`` and ``failure`` (run takes ``ms``; a failure's fallback succeeds), ``fallback-failure``
(run fails after ``ms``, then its fallback fails), ``timeout`` (run takes ``ms``, past the
timeout, no fallback), ``rejected`` (no ticket: the command's limit is 0 for those calls),
``short-circuit`` (the circuit must be open by then: tripped by the steps before, or forced),
``context_canceled`` (a cancelled context), ``force-open``, and ``hold`` (that many calls stay
in run, holding a ticket, until the end). Each call is checked to end as its outcome says.

Time is a ``ManualClock`` that only the runs move, so durations are exact and the rolling
window keeps every event however long the test takes.

Protocol on stdin/stdout: prints ``listening <port>`` once the metrics are served (every
command's circuit exists by then, its counters at 0); drives the plan when it reads ``drive``,
then prints ``driven``; ends when stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

import fasthystrix
from fasthystrix import prometheus
from fasthystrix._core import _clock


class Down(Exception):
    """The dependency failed."""


def drive(
    clock: _clock.ManualClock, name: str, plan: dict[str, Any], release: threading.Event
) -> list[threading.Thread]:
    """Run the steps of command ``name``'s plan; returns the threads whose calls are held in run."""
    config = {"isolation": "semaphore", **plan["config"]}

    def taking(ms: float, fail: bool = False) -> Callable[[], str]:
        def run() -> str:
            clock.advance(ms=ms)
            if fail:
                raise Down(name)
            return "ok"

        return run

    def fallback_fails(err: BaseException) -> str:
        raise Down("fallback")

    holders = []
    for outcome, count, ms in plan["steps"]:
        for _ in range(count):
            if outcome == "success":
                assert fasthystrix.do(name, taking(ms)) == "ok"
            elif outcome == "failure":
                assert fasthystrix.do(name, taking(ms, fail=True), lambda err: "fallback") == "fallback"
            elif outcome == "fallback-failure":
                try:
                    fasthystrix.do(name, taking(ms, fail=True), fallback_fails)
                except fasthystrix.FallbackError:
                    pass
                else:
                    raise AssertionError("the fallback's failure did not reach the caller")
            elif outcome == "timeout":
                expect(fasthystrix.TimeoutError, fasthystrix.do, name, taking(ms))
            elif outcome == "rejected":
                fasthystrix.configure_command(name, {**config, "max_concurrent_requests": 0})
                expect(fasthystrix.MaxConcurrencyError, fasthystrix.do, name, taking(ms))
                fasthystrix.configure_command(name, config)
            elif outcome == "short-circuit":
                expect(fasthystrix.CircuitOpenError, fasthystrix.do, name, taking(ms))
            elif outcome == "context_canceled":
                ctx = fasthystrix.Context.background().with_cancel()
                ctx.cancel()
                expect(fasthystrix.ContextCanceledError, fasthystrix.do_c, ctx, name, lambda c: "ok")
            elif outcome == "force-open":
                fasthystrix.get_circuit(name)[0].force_open = True
            elif outcome == "hold":
                holders.append(hold(name, release))
            else:
                raise ValueError(f"unknown outcome {outcome!r}")
    return holders


def hold(name: str, release: threading.Event) -> threading.Thread:
    """A call of ``name`` whose run holds its ticket until ``release`` is set."""
    inside = threading.Event()

    def run() -> None:
        inside.set()
        release.wait()

    holder = threading.Thread(target=fasthystrix.do, args=(name, run), daemon=True)
    holder.start()
    while not inside.wait(0.01):
        assert holder.is_alive(), "a held call ended before its run started"
    return holder


def expect(error: type[BaseException], call: Callable[..., object], *args: Any) -> None:
    try:
        call(*args)
    except error:
        return
    raise AssertionError(f"expected {error.__name__}")


def main() -> None:
    plan: dict[str, Any] = json.loads(sys.argv[1])
    clock = _clock.ManualClock()
    _clock.set_clock(clock)
    registry = CollectorRegistry()
    collector = prometheus.register(registry)  # before any circuit exists, so all are counted
    for name, command in plan.items():
        fasthystrix.configure_command(name, {"isolation": "semaphore", **command["config"]})
        fasthystrix.get_circuit(name)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    print("listening", server.server_port, flush=True)
    release = threading.Event()
    holders: list[threading.Thread] = []
    for line in sys.stdin:
        if line.strip() == "drive":
            for name, command in plan.items():
                holders += drive(clock, name, command, release)
            print("driven", flush=True)
    release.set()
    for holder in holders:
        holder.join(60)
    server.shutdown()
    server.server_close()
    thread.join(60)
    collector.close()


if __name__ == "__main__":
    main()
