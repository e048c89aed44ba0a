"""The other processes of tests/test_shared_circuits.py: a worker that opens one shared circuit and
runs what the test asks, one request at a time, replying on a queue.

Started with ``multiprocessing.get_context("spawn")``: a fresh interpreter that imports fasthystrix
with the parent's environment (so the same implementation) and reads time from the parent's clock,
a shared int64, so that every process agrees on the time and the test moves it.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

import fasthystrix
from fasthystrix import _impl, _registry
from fasthystrix._core import _clock, _shared
from fasthystrix._isolation._workers import workers
from fasthystrix.metric_collector import DefaultMetricCollector

#: Seconds anything in a worker waits at most for the test (the test's own timeouts are shorter).
WAIT = 60.0


def open_circuit(name: str) -> Any:
    """The circuit of ``name`` in this process, attached to the shared directory.

    Built as ``_registry._create`` builds one and attached by hand, because the registry does
    not attach circuits yet; ``configure_command`` before this call writes its settings to the
    file (the last writer wins), else the file's settings are adopted.
    """
    with _registry._lock:
        circuit = _registry._circuits.get(name)
        if circuit is not None:
            return circuit
        configured = _registry._settings.get(name)
        settings = _registry.get_settings(name)
        implementation = _impl.current()
        circuit = implementation.CircuitBreaker(name, settings, DefaultMetricCollector(name), [], _clock.get_clock())
        circuit._workers = workers.for_command()
        circuit._attach(_shared.SharedCircuitFile(name, implementation.name, settings), configured)
        _registry._circuits[name] = circuit
        return circuit


def share(directory: str, clock: Any) -> None:
    """Share circuits through ``directory``, reading the time from ``clock`` (a shared int64) if given."""
    if clock is not None:
        _clock.set_clock(lambda: clock.value)
    _shared.share_circuits(directory)


class Ops:
    """What a worker does on request: each method's result is sent back to the test."""

    def __init__(self, name: str, extras: dict[str, Any]) -> None:
        self.name = name
        self.extras = extras
        self.circuit = open_circuit(name)
        self.threads: list[threading.Thread] = []
        self.outcomes: list[str] = []
        # Calls running now in "hold" or "hang", counted once they hold no lock shared with
        # another process (see _hold).
        self.held = 0
        self.held_changed = threading.Condition()
        self.never = threading.Event()

    def _call(self, outcome: str) -> str:
        """One command: ``"ok"`` succeeds, ``"fail"`` raises, ``"hold"`` waits for the test's
        ``release`` event, ``"hang"`` waits until the process is killed."""

        def run() -> str:
            ran = self.extras.get("ran")
            if ran is not None:
                with ran.get_lock():
                    ran.value += 1
            if outcome == "fail":
                raise ValueError("down")
            if outcome in ("hold", "hang"):
                self._hold(outcome == "hang")
            return "ran"

        def fallback(err: BaseException) -> str:
            return f"fallback:{type(err).__name__}"

        result: str = fasthystrix.do(self.name, run, fallback)
        return result

    def _hold(self, hang: bool) -> None:
        # A process killed while it holds a multiprocessing lock, or while it waits on a
        # multiprocessing Event (whose set() waits for every waiter to wake), blocks every other
        # process that uses it: a call that will be killed ("hang") waits on an event of its own.
        inflight = self.extras["inflight"]
        with inflight.get_lock():
            inflight.value += 1
            now = inflight.value
        peak = self.extras.get("peak")
        if peak is not None:
            with peak.get_lock():
                peak.value = max(peak.value, now)
        with self.held_changed:
            self.held += 1
            self.held_changed.notify_all()
        try:
            if not (self.never if hang else self.extras["release"]).wait(WAIT):
                raise RuntimeError("the test never released the held calls")
        finally:
            with self.held_changed:
                self.held -= 1
                self.held_changed.notify_all()
            with inflight.get_lock():
                inflight.value -= 1

    def wait_held(self, n: int) -> int:
        """Wait until ``n`` calls are running in "hold" or "hang" (and hold no shared lock)."""
        with self.held_changed:
            self.held_changed.wait_for(lambda: self.held == n, WAIT)
            return self.held

    def calls(self, outcomes: list[str]) -> list[str]:
        return [self._call(outcome) for outcome in outcomes]

    def race(self, outcome: str, n: int) -> list[str]:
        """Wait for every worker at the barrier, then make ``n`` calls."""
        self.extras["barrier"].wait(WAIT)
        return self.calls([outcome] * n)

    def race_mixed(self, outcomes: list[str]) -> list[str]:
        """Wait for every worker at the barrier, then make the calls ``outcomes`` say."""
        self.extras["barrier"].wait(WAIT)
        return self.calls(outcomes)

    def lock_stress(self, n: int, threads: int) -> int:
        """``threads`` threads each add 1 to the shared ``counter`` ``n`` times, read and write
        apart, under the circuit's lock (the pure twin's host lock)."""
        counter = self.extras["counter"]
        self.extras["barrier"].wait(WAIT)

        def loop() -> None:
            for _ in range(n):
                with self.circuit._lock:
                    value = counter.value
                    os.sched_yield()  # invite another thread or process in: it must not get in
                    counter.value = value + 1

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(WAIT)
        return n * threads

    def open(self, name: str) -> str:
        """Open (attach) the circuit of ``name`` too."""
        return str(open_circuit(name).name)

    def hold_lock(self, name: str) -> bool:
        """A thread holds circuit ``name``'s lock until the test's ``release`` event; returns once it does."""
        circuit = open_circuit(name)
        held = threading.Event()

        def hold() -> None:
            with circuit._lock:
                held.set()
                self.extras["release"].wait(WAIT)

        threading.Thread(target=hold, daemon=True).start()
        return held.wait(WAIT)

    def take_lock(self, name: str) -> None:
        """A thread takes and releases circuit ``name``'s lock (see :meth:`take_lock_result`)."""
        circuit = open_circuit(name)

        def take() -> None:
            try:
                with circuit._lock:
                    pass
            except BaseException as exc:
                self.outcomes.append(repr(exc))
            else:
                self.outcomes.append("ok")

        self.threads = [threading.Thread(target=take, daemon=True)]
        self.threads[0].start()

    def take_lock_result(self) -> list[str]:
        return self.join_threads()

    def start_threads(self, outcome: str, n: int) -> int:
        """Start ``n`` threads that each make one call (see :meth:`join_threads`)."""

        def one() -> None:
            try:
                result = self._call(outcome)
            except BaseException as exc:
                result = f"raised:{exc!r}"
            self.outcomes.append(result)
            rejected = self.extras.get("rejected")
            if rejected is not None and result.startswith("fallback:"):
                with rejected.get_lock():
                    rejected.value += 1

        # Daemons: a worker asked to stop does not wait for calls that hang.
        self.threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for thread in self.threads:
            thread.start()
        return n

    def join_threads(self) -> list[str]:
        for thread in self.threads:
            thread.join(WAIT)
        return sorted(self.outcomes)

    def metrics(self) -> Any:
        return self.circuit.metrics()

    def state(self) -> str:
        state: str = self.circuit.state()
        return state

    def tickets(self) -> int:
        tickets: int = self.circuit.tickets_in_use
        return tickets

    def settings(self) -> Any:
        return self.circuit.settings

    def window(self) -> tuple[int, int]:
        """``(bucket_ns, buckets)``: the geometry this process's window counts with."""
        geometry: tuple[int, int] = self.circuit._default._rolling.window()
        return geometry

    def configure(self, config: dict[str, Any]) -> Any:
        return fasthystrix.configure_command(self.name, config)

    def allow_request(self) -> bool:
        allowed: bool = self.circuit.allow_request()
        return allowed

    def force_open(self, value: bool) -> str:
        self.circuit.force_open = value
        return self.state()

    def slot(self) -> int:
        slot: int = self.circuit._shared.slot
        return slot

    def pid(self) -> int:
        return os.getpid()


def serve(
    directory: str,
    implementation: str,
    clock: Any,
    name: str,
    config: dict[str, Any] | None,
    extras: dict[str, Any],
    requests: Any,
    replies: Any,
) -> None:
    """A worker's life: share, open the circuit, then answer ``(method, args)`` requests until ``None``."""
    try:
        if _impl.current().name != implementation:
            raise RuntimeError(f"worker runs the {_impl.current().name} implementation, the test {implementation}")
        share(directory, clock)
        if config is not None:
            fasthystrix.configure_command(name, config)
        ops = Ops(name, extras)
    except BaseException:
        replies.put(("error", traceback.format_exc()))
        return
    replies.put(("ok", "ready"))
    while True:
        request = requests.get(timeout=WAIT)
        if request is None:
            return
        method, args = request
        try:
            fn: Callable[..., Any] = getattr(ops, method)
            replies.put(("ok", fn(*args)))
        except BaseException:
            replies.put(("error", traceback.format_exc()))
