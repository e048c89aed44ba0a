"""A forked child works: real ``os.fork()`` and multiprocessing's fork context, taken while other
threads have commands in flight, give a child that starts from the parent's settings, circuit
states and rolling windows, holds none of the parent's tickets, and has workers and a deadline
timer of its own. Every child reports through its exit status (and a pipe for the details); the
parent polls it with a deadline and kills it if it hangs, so a hang fails the test."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS
from fasthystrix import _registry
from support import WAIT, wait_until

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork() on this platform"),
    # Python 3.12+ warns that forking a multi-threaded process may deadlock the child: that is
    # exactly what these tests check does not happen to fasthystrix.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

ISOLATIONS = ("thread", "semaphore")
IN_FLIGHT = 10
TIMEOUT_MS = 5000  # a child's call that waited for a dead worker would take this long

# These tests hold a child to a private circuit's rule: the parent's calls in flight hold no ticket
# of the child's. A shared circuit's tickets are the host's (test_shared_fork.py covers its forks).
_PRIVATE_TICKETS = "a private circuit's tickets after a fork (a shared circuit's are the host's)"

CHILD_OK = 0
CHILD_FAILED = 1  # an assertion or an error in the child; the details come through the pipe


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _child_exit(checks: Callable[[], None], report: int) -> None:
    """In the child: run ``checks``, write what failed to ``report``, exit; never returns."""
    status = CHILD_FAILED
    try:
        checks()
        status = CHILD_OK
    except BaseException:
        os.write(report, traceback.format_exc().encode())
    finally:
        os._exit(status)


def _wait_for_child(pid: int, report: int, timeout: float = WAIT) -> None:
    """In the parent: the child's exit, polled; a child still running at ``timeout`` is killed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(report)
            pytest.fail(f"child {pid} still running after {timeout:g} s: it hangs")
        time.sleep(0.01)
    chunks = []
    while chunk := os.read(report, 65536):
        chunks.append(chunk)
    os.close(report)
    code = os.waitstatus_to_exitcode(status)
    assert code == CHILD_OK, f"child exited with {code}:\n{b''.join(chunks).decode()}"


def fork_and_check(checks: Callable[[], None], timeout: float = WAIT) -> None:
    """Fork; the child runs ``checks`` and exits, the parent waits for it (see ``_wait_for_child``)."""
    read_end, write_end = os.pipe()
    pid = _fork()
    if pid == 0:
        os.close(read_end)
        _child_exit(checks, write_end)
    os.close(write_end)
    _wait_for_child(pid, read_end, timeout)


def configure(name: str, isolation: str, **extra: Any) -> Any:
    fasthystrix.configure_command(
        name, {"isolation": isolation, "timeout": TIMEOUT_MS, "max_concurrent_requests": 2 * IN_FLIGHT, **extra}
    )
    return fasthystrix.get_circuit(name)[0]


class InFlight:
    """``count`` commands running on threads of their own, each held in its run until released."""

    def __init__(self, name: str, count: int = IN_FLIGHT) -> None:
        self.release = threading.Event()
        self.results: list[object] = []
        self._started = [threading.Event() for _ in range(count)]
        self._threads = [threading.Thread(target=self._call, args=(name, i)) for i in range(count)]

    def _call(self, name: str, i: int) -> None:
        def run() -> int:
            self._started[i].set()
            assert self.release.wait(WAIT), "never released"
            return i

        self.results.append(fasthystrix.do(name, run))

    def __enter__(self) -> InFlight:
        for thread in self._threads:
            thread.start()
        for started in self._started:
            assert started.wait(WAIT), "a run did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        for thread in self._threads:
            thread.join(WAIT)


def _warm_workers(name: str, count: int) -> None:
    """Leave ``count`` idle worker threads in the pool of ``name`` (thread isolation)."""
    with InFlight(name, count):
        pass


def _calls_complete_at_once(name: str, calls: int) -> None:
    """In the child: ``calls`` commands (do and go), none waiting for a worker that is gone."""
    circuit = fasthystrix.get_circuit(name)[0]
    start = time.monotonic()
    assert [fasthystrix.do(name, lambda: "child") for _ in range(calls)] == ["child"] * calls
    futures = [fasthystrix.go(name, lambda: "go") for _ in range(calls)]
    assert [f.result(WAIT) for f in futures] == ["go"] * calls
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT_MS / 1000 / 2, f"{2 * calls} calls took {elapsed:.2f} s: some waited for a timeout"
    wait_until(lambda: circuit.tickets_in_use == 0, "the child's tickets back")


@pytest.mark.skipif(SHARED_TESTS, reason=_PRIVATE_TICKETS)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_child_forked_with_calls_in_flight_on_other_threads_works(isolation: str) -> None:
    name = f"fork-in-flight-{isolation}"
    circuit = configure(name, isolation)
    if isolation == "thread":
        _warm_workers(name, IN_FLIGHT + 5)  # idle workers whose threads the child will not have
    for _ in range(3):
        assert fasthystrix.do(name, lambda: "warm") == "warm"
    with InFlight(name) as flight:
        assert circuit.tickets_in_use == IN_FLIGHT
        successes = circuit.metrics().successes

        def child() -> None:
            assert circuit.tickets_in_use == 0, "the parent's runs on other threads hold no ticket here"
            assert circuit.metrics().successes == successes, "the rolling window is the parent's"
            assert circuit.settings.timeout_ns == TIMEOUT_MS * 1_000_000
            _calls_complete_at_once(name, IN_FLIGHT + 2)
            assert circuit.metrics().successes == successes + 2 * (IN_FLIGHT + 2)
            assert circuit.state() == "closed"

        fork_and_check(child)
        assert circuit.tickets_in_use == IN_FLIGHT, "the parent's runs still hold their tickets"
    assert sorted(flight.results) == list(range(IN_FLIGHT)), "the parent's runs all succeeded"
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().successes == successes + IN_FLIGHT


def test_child_of_a_parent_whose_worker_threads_are_all_busy_gets_threads_of_its_own() -> None:
    """The parent's pool is at its maximum, every worker held by a run: those threads are not in
    the child, so its pool starts empty and its calls run, up to the same maximum. (The child
    uses a circuit of its own: with shared circuits, the parent's tickets are the host's.)"""
    name = "fork-pool-full"
    configure(name, "thread")
    configure(f"{name}-child", "thread")
    fasthystrix.set_max_threads(IN_FLIGHT)
    with InFlight(name):
        assert (
            fasthystrix.do(name, lambda: "ran", lambda err: str(err))
            == "hystrix: max concurrency: no worker thread free"
        )

        def child() -> None:
            from fasthystrix._isolation._workers import workers

            assert workers._workers == set() and workers._idle == []
            assert fasthystrix.get_max_threads() == IN_FLIGHT
            _calls_complete_at_once(f"{name}-child", IN_FLIGHT - 2)  # fewer go()s at once than threads
            with InFlight(f"{name}-child", IN_FLIGHT):
                assert fasthystrix.do(name, lambda: "ran", lambda err: type(err).__name__) == "MaxConcurrencyError"

        fork_and_check(child)
        assert fasthystrix.do(name, lambda: "ran", lambda err: type(err).__name__) == "MaxConcurrencyError"
    assert fasthystrix.do(name, lambda: "ran") == "ran"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_child_keeps_the_parent_circuit_states_and_settings(isolation: str) -> None:
    tripped = configure(f"fork-tripped-{isolation}", isolation, request_volume_threshold=2, sleep_window=60_000)
    forced = configure(f"fork-forced-{isolation}", isolation)
    forced.force_open = True
    for _ in range(3):
        assert fasthystrix.do(tripped.name, _boom, lambda err: "fallback") == "fallback"
    assert tripped.state() == "open"

    def child() -> None:
        assert tripped.state() == "open"
        assert forced.state() == "forced-open"
        assert tripped.settings.request_volume_threshold == 2
        with pytest.raises(fasthystrix.CircuitOpenError):
            fasthystrix.do(tripped.name, lambda: "ran")
        assert fasthystrix.do(forced.name, lambda: "ran", lambda err: type(err).__name__) == "CircuitOpenError"
        failures = tripped.metrics().failures
        assert failures >= 2
        assert tripped.metrics().short_circuits >= 1

    fork_and_check(child)
    forced.force_open = False


def _boom() -> None:
    raise ValueError("down")


@pytest.mark.skipif(SHARED_TESTS, reason=_PRIVATE_TICKETS)
def test_go_started_before_the_fork_resolves_in_the_child_at_its_deadline() -> None:
    # The run is on a parent worker that the child does not have: the child's deadline timer
    # (a new thread) still ends the command, and the child's own go() calls run on new workers.
    name = "fork-go-before"
    circuit = configure(name, "thread", timeout=300)
    release = threading.Event()
    started = threading.Event()

    def held() -> str:
        started.set()
        release.wait(WAIT)
        return "parent"

    future = fasthystrix.go(name, held, lambda err: type(err).__name__)
    assert started.wait(WAIT)

    def child() -> None:
        assert future.result(WAIT) == "TimeoutError"
        assert circuit.tickets_in_use == 0
        assert fasthystrix.go(name, lambda: "child").result(WAIT) == "child"
        assert circuit.metrics().timeouts == 1

    try:
        fork_and_check(child)
    finally:
        release.set()
    # In the parent the run ends late: the timeout is the outcome there too, and the ticket comes back.
    assert future.result(WAIT) == "TimeoutError"
    wait_until(lambda: circuit.tickets_in_use == 0, "the parent's ticket back")


def test_fork_inside_a_semaphore_run_gives_back_its_own_ticket_in_both_processes() -> None:
    name = "fork-in-run-semaphore"
    circuit = configure(name, "semaphore")
    read_end, write_end = os.pipe()
    seen: dict[str, int] = {}

    def run() -> int:
        pid = _fork()
        seen["in run"] = circuit.tickets_in_use
        return pid

    parent = os.getpid()
    try:
        pid = fasthystrix.do(name, run)
    except BaseException:
        if os.getpid() != parent:  # never back into pytest from the child
            os._exit(CHILD_FAILED)
        raise
    if pid == 0:
        os.close(read_end)

        def child() -> None:
            # The ticket taken before the fork is not counted in the child, and giving it back
            # (when do() above returned) did not take the count below zero.
            assert seen["in run"] == 0
            assert circuit.tickets_in_use == 0
            _calls_complete_at_once(name, 4)
            assert circuit.tickets_in_use == 0

        _child_exit(child, write_end)
    os.close(write_end)
    _wait_for_child(pid, read_end)
    assert seen["in run"] == 1
    assert circuit.tickets_in_use == 0


def test_fork_inside_a_thread_isolated_run_gives_back_its_own_ticket_in_both_processes() -> None:
    # The run forks on a worker thread: in the child that worker is the only thread. It ends the
    # command (resolves the future) and starts a thread that checks, then exits the child.
    name = "fork-in-run-thread"
    circuit = configure(name, "thread")
    read_end, write_end = os.pipe()
    holder: dict[str, Future[Any]] = {}
    stored = threading.Event()
    seen: dict[str, int] = {}

    def child() -> None:
        assert holder["future"].result(WAIT) == 0
        assert seen["in run"] == 0
        wait_until(lambda: circuit.tickets_in_use == 0, "the child's count at zero")
        _calls_complete_at_once(name, 4)
        assert circuit.tickets_in_use == 0

    def run() -> int:
        assert stored.wait(WAIT)
        pid = _fork()
        seen["in run"] = circuit.tickets_in_use
        if pid == 0:
            os.close(read_end)
            threading.Thread(target=_child_exit, args=(child, write_end)).start()
        return pid

    holder["future"] = fasthystrix.go(name, run)
    stored.set()
    pid = holder["future"].result(WAIT)
    os.close(write_end)
    _wait_for_child(pid, read_end)
    assert seen["in run"] == 1
    wait_until(lambda: circuit.tickets_in_use == 0, "the parent's ticket back")


def test_locks_held_by_other_threads_at_the_fork_are_not_held_in_the_child() -> None:
    # Threads that do not exist in the child held these locks when the parent forked.
    from fasthystrix._core import _config, _transitions
    from fasthystrix._isolation._workers import timer, workers
    from fasthystrix.metric_collector import registry as collector_registry

    name = "fork-locks"
    configure(name, "thread")
    _warm_workers(name, 2)
    locks = [workers._lock, timer._lock, _transitions._lock, _config._defaults_lock, collector_registry._lock]
    holding = threading.Event()
    done = threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        done.wait(WAIT)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(WAIT)

    def child() -> None:
        _calls_complete_at_once(name, 3)
        remove = fasthystrix.on_state_change(lambda *args: None)
        remove()
        fasthystrix.configure_command("fork-locks-new", {"timeout": 100})
        fasthystrix.metric_collector.registry.register(lambda name: _NullCollector())
        assert fasthystrix.do("fork-locks-new", lambda: 1) == 1

    try:
        fork_and_check(child)
    finally:
        done.set()
        holder.join(WAIT)


def test_a_command_lock_held_at_the_fork_does_not_hold_up_the_child() -> None:
    # A go() in flight whose lock and future condition a thread gone with the fork held: the
    # child's timer still ends the command at its deadline.
    from fasthystrix._isolation._workers import timer

    name = "fork-command-lock"
    configure(name, "thread", timeout=300)
    release = threading.Event()
    started = threading.Event()

    def held() -> str:
        started.set()
        release.wait(WAIT)
        return "parent"

    future = fasthystrix.go(name, held, lambda err: type(err).__name__)
    assert started.wait(WAIT)
    (execution,) = [callback.__self__ for callback in timer.callbacks()]
    holding = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with execution.lock, future._condition:
            holding.set()
            done.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(WAIT)

    def child() -> None:
        assert future.result(WAIT) == "TimeoutError"

    try:
        fork_and_check(child)
    finally:
        done.set()
        holder.join(WAIT)
        release.set()
    assert future.result(WAIT) == "TimeoutError"


def test_collectors_work_in_the_child() -> None:
    # A cumulative collector whose lock a thread gone with the fork held, and a StatsD client
    # whose sender thread the child does not have.
    import socket

    from fasthystrix._observability._cumulative import CumulativeCollector, cumulative_of
    from fasthystrix.statsd import StatsdCollectorClient

    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(WAIT)
    client = StatsdCollectorClient(f"127.0.0.1:{daemon.getsockname()[1]}", prefix="forked").register()
    fasthystrix.metric_collector.registry.register(CumulativeCollector)
    name = "fork-collectors"
    circuit = configure(name, "semaphore")
    assert fasthystrix.do(name, lambda: 1) == 1
    cumulative = cumulative_of(circuit)
    assert cumulative is not None
    holding = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with cumulative._lock:
            holding.set()
            done.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(WAIT)

    def child() -> None:
        for _ in range(3):
            assert fasthystrix.do(name, lambda: 2) == 2
        assert cumulative.counts().events[0] == 4
        client.flush()
        received = b""
        while b"successes:3|c" not in received:
            received += daemon.recv(65536)
        assert b"forked.fork-collectors" in received
        assert client._thread.is_alive()

    try:
        client.flush()  # the parent's own result goes from the parent
        fork_and_check(child)
    finally:
        done.set()
        holder.join(WAIT)
        client.close()
        daemon.close()


class _NullCollector:
    def update(self, result: object) -> None:
        pass

    def reset(self) -> None:
        pass


def test_fork_waits_for_a_circuit_being_created_on_another_thread() -> None:
    # The table's lock is held across the fork: a child never sees a circuit half made.
    entered = threading.Event()
    go_on = threading.Event()

    def factory(name: str) -> _NullCollector:
        if name == "fork-created":
            entered.set()
            go_on.wait(WAIT)
        return _NullCollector()

    fasthystrix.metric_collector.registry.register(factory)
    creator = threading.Thread(target=fasthystrix.get_circuit, args=("fork-created",))
    creator.start()
    assert entered.wait(WAIT)
    # The fork below waits for the creator, which goes on a moment later: a hold, not a
    # synchronisation (if the fork came first the test would pass without proving anything).
    threading.Thread(target=lambda: (time.sleep(0.2), go_on.set())).start()

    def child() -> None:
        assert "fork-created" in _registry.circuits()
        assert fasthystrix.do("fork-created", lambda: 1) == 1

    fork_and_check(child)
    creator.join(WAIT)


def _pool_task(args: tuple[str, int]) -> tuple[int, int, list[str]]:
    name, calls = args
    circuit = fasthystrix.get_circuit(name)[0]
    before = circuit.tickets_in_use
    values = [fasthystrix.do(name, lambda: "pool") for _ in range(calls)]
    values += [fasthystrix.go(name, lambda: "go").result(WAIT) for _ in range(calls)]
    wait_until(lambda: circuit.tickets_in_use == 0, "the pool worker's tickets back")
    return before, circuit.tickets_in_use, values


@pytest.mark.skipif(SHARED_TESTS, reason=_PRIVATE_TICKETS)
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_multiprocessing_fork_pool_with_calls_in_flight(isolation: str) -> None:
    name = f"fork-mp-{isolation}"
    circuit = configure(name, isolation)
    if isolation == "thread":
        _warm_workers(name, IN_FLIGHT + 5)
    ctx = multiprocessing.get_context("fork")
    with InFlight(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pool = ctx.Pool(2)
        try:
            outcome = pool.map_async(_pool_task, [(name, 5)] * 4).get(WAIT)
        finally:
            pool.terminate()
            pool.join()
        assert circuit.tickets_in_use == IN_FLIGHT
    assert outcome == [(0, 0, ["pool"] * 5 + ["go"] * 5)] * 4
    assert circuit.tickets_in_use == 0


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_fork_repeatedly_while_threads_hammer_do_and_go(isolation: str) -> None:
    name = f"fork-stress-{isolation}"
    circuit = configure(name, isolation, max_concurrent_requests=100)
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0] * 4

    def hammer(i: int) -> None:
        try:
            while not stop.is_set():
                assert fasthystrix.do(name, lambda: i) == i
                assert fasthystrix.go(name, lambda: i).result(WAIT) == i
                calls[i] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(calls), "every hammering thread going")
        for _ in range(20):
            fork_and_check(lambda: _calls_complete_at_once(name, 3))
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    assert not errors, errors
    wait_until(lambda: circuit.tickets_in_use == 0, "the parent's tickets back")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_child_has_no_waiting_calls_of_its_parent(isolation: str) -> None:
    # The parent's calls waiting for a ticket (max_queue_wait) do not exist in the child: its
    # queue is empty, and its own calls take tickets (none of the parent's are held there).
    circuit = configure("queued", isolation, max_concurrent_requests=1, max_queue_wait=TIMEOUT_MS)
    waiting: list[object] = []

    def checks() -> None:
        child = fasthystrix.get_circuit("queued")[0]
        assert child.queue_size == 0
        assert child.metrics().queue_size == 0
        if not SHARED_TESTS:  # a shared circuit's tickets are the host's: the parent's holder has the one
            assert fasthystrix.do("queued", lambda: "child") == "child"

    with InFlight("queued", 1):
        waiter = threading.Thread(target=lambda: waiting.append(fasthystrix.do("queued", lambda: "waited")))
        waiter.start()
        wait_until(lambda: circuit.queue_size == 1, "a call waits for a ticket")
        fork_and_check(checks)
    waiter.join(WAIT)
    assert waiting == ["waited"]
