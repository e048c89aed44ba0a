"""Host-wide circuits: one breaker, one ticket count and one rolling window for every process that
shares a directory, across real processes.

The other processes are ``tests/shared_worker.py`` workers, started with the ``spawn`` method
(fresh interpreters, the parent's environment, so the same implementation). Every process reads
the time from one shared int64 the test moves, so that windows and sleep windows agree and
nothing depends on how fast the machine is. Every wait has a timeout; a worker that does not
answer fails the test and is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
import shared_worker
from conftest import IMPLEMENTATION, SHARED_TESTS, FakeClock
from fasthystrix import _impl, _registry
from fasthystrix._core import _clock, _shared
from fasthystrix._core._config import CommandConfig, Settings, get_defaults
from fasthystrix._core._events import FAILURE, FALLBACK_FAILURE, FALLBACK_SUCCESS, NO_EVENT, SUCCESS, TIMEOUT
from fasthystrix._core._shared import SharedCircuitFile, SharedStateError
from fasthystrix.metric_collector import DefaultMetricCollector, MetricResult
from support import WAIT, wait_until

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="shared circuits need POSIX (fcntl, mmap, /proc)"),
    pytest.mark.skipif(
        not hasattr(_impl.current().CircuitBreaker, "_attach"),
        reason=f"the {IMPLEMENTATION} CircuitBreaker has no _attach() yet: its circuits cannot be shared",
    ),
]

SPAWN = multiprocessing.get_context("spawn")
TESTS_DIR = Path(__file__).resolve().parent
START_NS = 1_000_000_000_000
SECOND_NS = 1_000_000_000

open_circuit = shared_worker.open_circuit


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _own_sharing() -> None:
    """These tests share circuits themselves: under FASTHYSTRIX_TEST_SHARED, the directory the
    suite gave this test gives way first (conftest shares a fresh one again after the test)."""
    if SHARED_TESTS:
        _shared._unshare()
        _registry._files.clear()
        _registry._holders.clear()


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """Share this process's circuits through a fresh directory for the test."""
    directory = tmp_path / "circuits"
    _shared.share_circuits(directory)
    yield directory
    _shared._unshare()


@pytest.fixture
def host_clock() -> Iterator[Any]:
    """The time every process of the test reads: a shared int64 of nanoseconds, moved by the test."""
    value = SPAWN.RawValue("q", START_NS)
    _clock.set_clock(lambda: value.value)
    yield value
    _clock.set_clock(None)


class Worker:
    """One worker process and its request and reply queues."""

    def __init__(self, directory: Path, clock: Any, name: str, config: dict[str, Any] | None, extras: Any) -> None:
        self.requests = SPAWN.Queue()
        self.replies = SPAWN.Queue()
        self.process = SPAWN.Process(
            target=shared_worker.serve,
            args=(str(directory), IMPLEMENTATION, clock, name, config, extras, self.requests, self.replies),
            daemon=True,
        )
        self.process.start()

    def send(self, method: str, *args: Any) -> None:
        self.requests.put((method, args))

    def reply(self, timeout: float = WAIT) -> Any:
        try:
            status, value = self.replies.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"worker {self.process.pid} did not answer within {timeout:g} s")
        if status != "ok":
            pytest.fail(f"worker {self.process.pid} failed:\n{value}")
        return value

    def call(self, method: str, *args: Any) -> Any:
        self.send(method, *args)
        return self.reply()

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the worker."""
        self.process.kill()
        self.process.join(WAIT)
        assert not self.process.is_alive()

    def stop(self) -> None:
        if self.process.is_alive():
            self.requests.put(None)
            self.process.join(WAIT)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(WAIT)
        for q in (self.requests, self.replies):
            q.close()
            q.join_thread()


StartWorkers = Callable[..., list[Worker]]


@pytest.fixture
def start_workers(shared_dir: Path, host_clock: Any) -> Iterator[StartWorkers]:
    """``start_workers(n, name, config=None, **extras)``: ``n`` ready workers on circuit ``name``.

    ``config`` is configured in each worker before it opens the circuit (so written to the file);
    ``extras`` (shared values, events, barriers) are passed to them.
    """
    started: list[Worker] = []

    def start(n: int, name: str, config: dict[str, Any] | None = None, **extras: Any) -> list[Worker]:
        workers = [Worker(shared_dir, host_clock, name, config, extras) for _ in range(n)]
        started.extend(workers)
        for worker in workers:
            assert worker.reply() == "ready"
        return workers

    yield start
    for worker in started:
        worker.stop()


def configure(name: str, **config: Any) -> None:
    fasthystrix.configure_command(name, {"isolation": "semaphore", **config})


def do(name: str, outcome: str) -> str:
    """One command in this process: ``"ok"`` succeeds, ``"fail"`` raises; what it returned."""

    def run() -> str:
        if outcome == "fail":
            raise ValueError("down")
        return "ran"

    result: str = fasthystrix.do(name, run, lambda err: f"fallback:{type(err).__name__}")
    return result


def snapshot_counts(snapshot: Any) -> dict[str, int]:
    fields = (
        "requests",
        "errors",
        "successes",
        "failures",
        "rejects",
        "short_circuits",
        "timeouts",
        "fallback_successes",
        "fallback_failures",
        "executed",
    )
    return {f: getattr(snapshot, f) for f in fields}


# -- across processes -----------------------------------------------------------------------------


def test_counts_add_up_exactly_across_processes(start_workers: StartWorkers) -> None:
    name = "counts"
    configure(name, request_volume_threshold=1_000_000, error_percent_threshold=100, max_concurrent_requests=100)
    parent = open_circuit(name)
    workers = start_workers(4, name, barrier=SPAWN.Barrier(4))
    # Enough calls, started together, that the processes' updates overlap many times.
    successes, failures = 3000, 1000
    for worker in workers:
        worker.send("race_mixed", ["ok", "fail"] * failures + ["ok"] * (successes - failures))
    for worker in workers:
        results = worker.reply()
        assert results.count("ran") == successes
        assert results.count("fallback:ValueError") == failures
    expected = {
        "requests": 4 * (successes + failures),
        "errors": 4 * failures,
        "successes": 4 * successes,
        "failures": 4 * failures,
        "rejects": 0,
        "short_circuits": 0,
        "timeouts": 0,
        "fallback_successes": 4 * failures,
        "fallback_failures": 0,
        "executed": 4 * (successes + failures),
    }
    assert snapshot_counts(parent.metrics()) == expected
    for worker in workers:
        assert snapshot_counts(worker.call("metrics")) == expected
        assert worker.call("tickets") == 0
    assert parent.tickets_in_use == 0


def test_the_call_that_finds_20_requests_at_50_percent_trips_every_process(start_workers: StartWorkers) -> None:
    name = "trip"
    configure(name, request_volume_threshold=20, error_percent_threshold=50, sleep_window=60_000)
    parent = open_circuit(name)
    workers = start_workers(4, name)
    for worker in workers:
        worker.send("calls", ["ok", "fail", "ok", "fail"])
    for worker in workers:
        assert worker.reply() == ["ran", "fallback:ValueError"] * 2
    # 16 requests, 8 errors; then 19 (9 errors, 47 %), then 20 at 50 %: every call so far was
    # checked against fewer than 20 requests, so all ran, and nothing changed the state.
    assert [do(name, o) for o in ("ok", "fail", "ok", "fail")] == ["ran", "fallback:ValueError"] * 2
    assert parent.state() == "closed"
    assert {worker.call("state") for worker in workers} == {"closed"}
    # The next call, in any process, finds the window unhealthy: it trips the circuit, and
    # is itself short-circuited.
    assert workers[2].call("calls", ["ok"]) == ["fallback:CircuitOpenError"]
    assert parent.state() == "open"
    for worker in workers:
        assert worker.call("state") == "open"
        assert worker.call("calls", ["ok"]) == ["fallback:CircuitOpenError"]
    assert do(name, "ok") == "fallback:CircuitOpenError"
    counts = snapshot_counts(parent.metrics())
    assert (counts["requests"], counts["short_circuits"], counts["successes"]) == (26, 6, 10)


def test_one_trial_per_sleep_window_host_wide(start_workers: StartWorkers, host_clock: Any) -> None:
    name = "trial"
    configure(name, request_volume_threshold=1, error_percent_threshold=50, sleep_window=1000)
    parent = open_circuit(name)
    ran = SPAWN.Value("q", 0)
    barrier = SPAWN.Barrier(4)
    workers = start_workers(4, name, ran=ran, barrier=barrier)
    assert do(name, "fail") == "fallback:ValueError"
    assert parent.is_open()
    for round_ in range(1, 11):
        host_clock.value += SECOND_NS + 1  # past the sleep window
        for worker in workers:
            worker.send("race", "fail", 25)
        results = [r for worker in workers for r in worker.reply()]
        # Exactly one call ran (and failed, so the circuit stays open); every other was short-circuited.
        assert results.count("fallback:ValueError") == 1, results
        assert results.count("fallback:CircuitOpenError") == len(results) - 1
        assert ran.value == round_
        assert parent.state() == "open"
    # Within the sleep window that last trial started: no trial at all.
    for worker in workers:
        worker.send("race", "ok", 10)
    assert {r for worker in workers for r in worker.reply()} == {"fallback:CircuitOpenError"}
    # A successful trial closes the circuit for everyone.
    host_clock.value += SECOND_NS + 1
    assert workers[1].call("calls", ["ok"]) == ["ran"]
    assert parent.state() == "closed"
    assert {worker.call("state") for worker in workers} == {"closed"}
    assert [do(name, "ok"), workers[3].call("calls", ["ok"])] == ["ran", ["ran"]]


@pytest.mark.skipif(IMPLEMENTATION != "pure", reason="the pure twin's host lock (the compiled one uses atomics)")
def test_the_host_lock_excludes_other_processes_and_threads(start_workers: StartWorkers) -> None:
    name = "lock"
    configure(name)
    open_circuit(name)
    counter = SPAWN.RawValue("q", 0)  # no lock of its own: only the circuit's lock guards it
    workers = start_workers(4, name, counter=counter, barrier=SPAWN.Barrier(4))
    for worker in workers:
        worker.send("lock_stress", 300, 2)
    assert sum(worker.reply() for worker in workers) == counter.value == 4 * 300 * 2


def _blocked_lock_waiters(pid: int) -> int:
    """Record lock requests of process ``pid`` waiting now (``/proc/locks`` lines with ``->``)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and line.split()[5] == str(pid))


@pytest.mark.skipif(IMPLEMENTATION != "pure", reason="the pure twin's host lock (the compiled one uses atomics)")
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks to see a blocked lock request")
def test_the_host_lock_survives_a_deadlock_the_kernel_only_thinks_it_sees(start_workers: StartWorkers) -> None:
    """Record locks belong to processes, not threads, so the kernel reports a cycle (EDEADLK) where
    two threads of one process hold one circuit and wait for another: it is none, and the lock waits."""
    configure("x")
    configure("y")
    release = SPAWN.Event()
    p, q = start_workers(2, "x", release=release)
    assert p.call("open", "y") == q.call("open", "y") == "y"
    try:
        assert p.call("hold_lock", "x")
        assert q.call("hold_lock", "y")
        p.call("take_lock", "y")  # waits for q
        wait_until(lambda: _blocked_lock_waiters(p.process.pid) == 1, "p waiting for y's lock")
        q.call("take_lock", "x")  # waits for p: the kernel sees p and q each wait for the other
    finally:
        release.set()  # the holders let go: both waiters get their lock
    assert p.call("take_lock_result") == ["ok"]
    assert q.call("take_lock_result") == ["ok"]


def test_tickets_are_host_wide(start_workers: StartWorkers) -> None:
    name = "tickets"
    limit = 3
    configure(name, max_concurrent_requests=limit, request_volume_threshold=1000)
    parent = open_circuit(name)
    inflight, peak, rejected = SPAWN.Value("q", 0), SPAWN.Value("q", 0), SPAWN.Value("q", 0)
    release = SPAWN.Event()
    workers = start_workers(4, name, inflight=inflight, peak=peak, rejected=rejected, release=release)
    try:
        for worker in workers:
            assert worker.call("start_threads", "hold", 4) == 4
        # 16 calls at once: `limit` of them run (and wait), the others are turned away.
        wait_until(lambda: inflight.value == limit and rejected.value == 16 - limit, "calls admitted or rejected")
        assert parent.tickets_in_use == limit
        assert {worker.call("tickets") for worker in workers} == {limit}
        assert parent.metrics().concurrent == limit
    finally:
        release.set()
    outcomes = [r for worker in workers for r in worker.call("join_threads")]
    assert outcomes.count("ran") == limit
    assert outcomes.count("fallback:MaxConcurrencyError") == 16 - limit
    assert peak.value == limit
    assert parent.tickets_in_use == 0
    counts = snapshot_counts(parent.metrics())
    assert (counts["successes"], counts["rejects"], counts["executed"]) == (limit, 16 - limit, limit)
    assert parent.metrics().max_concurrent == limit


def test_a_waiter_gets_a_ticket_another_process_gives_back(start_workers: StartWorkers) -> None:
    # max_queue_wait is this process's own (the queue is): the worker's calls do not wait.
    name = "queued-host"
    configure(name, max_concurrent_requests=2, request_volume_threshold=1000, timeout=60_000)
    release = SPAWN.Event()
    (worker,) = start_workers(1, name, inflight=SPAWN.Value("q", 0), release=release)
    configure(name, max_concurrent_requests=2, request_volume_threshold=1000, timeout=60_000, max_queue_wait=60_000)
    parent = open_circuit(name)
    assert parent.settings.max_queue_wait_ns == 60_000_000_000
    _hold_tickets(worker, 2, "hold")
    answers: list[str] = []
    waiter = threading.Thread(target=lambda: answers.append(fasthystrix.do(name, lambda: "waited")))
    waiter.start()
    try:
        wait_until(lambda: parent.queue_size == 1, "the call waits for a ticket")
        assert worker.call("tickets") == 2
    finally:
        release.set()  # the worker gives its tickets back: no give-back here tells the waiter
    waiter.join(WAIT)
    assert answers == ["waited"]
    assert worker.call("join_threads") == ["ran", "ran"]
    assert parent.tickets_in_use == 0 and parent.queue_size == 0


def _hold_tickets(worker: Worker, n: int, outcome: str = "hang") -> None:
    """Start ``n`` calls in ``worker`` that keep their tickets (until it is killed, for ``"hang"``)."""
    assert worker.call("start_threads", outcome, n) == n
    assert worker.call("wait_held", n) == n


def test_a_killed_process_gives_its_tickets_back_at_the_next_reap(start_workers: StartWorkers) -> None:
    name = "killed-tickets"
    configure(name, max_concurrent_requests=5, request_volume_threshold=1000)
    parent = open_circuit(name)
    release = SPAWN.Event()
    victim, survivor = start_workers(2, name, inflight=SPAWN.Value("q", 0), release=release)
    _hold_tickets(victim, 2)
    slot = victim.call("slot")
    assert parent.tickets_in_use == 2 == survivor.call("tickets")
    victim.kill()
    _shared.reap_once()  # the background reaper may have been first: either way, they are back
    assert parent.tickets_in_use == 0
    assert survivor.call("tickets") == 0
    assert parent._shared.slot_pid(slot) == 0  # and its slot is free
    _hold_tickets(survivor, 5, "hold")  # every ticket is free again
    release.set()
    assert survivor.call("join_threads") == ["ran"] * 5


def test_a_killed_process_frees_the_trial_it_took(start_workers: StartWorkers, host_clock: Any) -> None:
    name = "killed-trial"
    configure(name, request_volume_threshold=1, error_percent_threshold=50, sleep_window=1000)
    parent = open_circuit(name)
    (victim,) = start_workers(1, name, inflight=SPAWN.Value("q", 0))
    assert do(name, "fail") == "fallback:ValueError"
    assert parent.is_open()
    host_clock.value += SECOND_NS + 1
    _hold_tickets(victim, 1)  # the trial: it runs, and waits
    assert not parent.allow_request()  # the trial of this sleep window is taken
    victim.kill()
    _shared.reap_once()
    assert parent.tickets_in_use == 0
    # The dead process's trial will never report: the next call may take a trial at once.
    assert do(name, "ok") == "ran"
    assert parent.state() == "closed"


def test_the_reaper_thread_reclaims_a_killed_process_within_a_second(start_workers: StartWorkers) -> None:
    name = "reaper"
    configure(name, max_concurrent_requests=5, request_volume_threshold=1000)
    parent = open_circuit(name)
    (victim,) = start_workers(1, name, inflight=SPAWN.Value("q", 0))
    _hold_tickets(victim, 3)
    assert parent.tickets_in_use == 3
    killed = time.monotonic()
    victim.kill()
    left = 1.0 - (time.monotonic() - killed)
    wait_until(lambda: parent.tickets_in_use == 0, "the reaper thread giving the tickets back", timeout=left)


def test_settings_last_writer_wins(start_workers: StartWorkers) -> None:
    name = "settings"
    configure(name, timeout=1000, max_concurrent_requests=10)
    parent = open_circuit(name)
    first, second = start_workers(2, name)  # they adopt the file's settings
    assert first.call("settings") == parent.settings == second.call("settings")
    assert parent.settings.max_concurrent_requests == 10
    written = first.call("configure", {"isolation": "semaphore", "timeout": 250, "max_concurrent_requests": 3})
    assert written.max_concurrent_requests == 3
    assert parent.settings == written == second.call("settings")
    assert parent._settings == written
    again = fasthystrix.configure_command(name, {"isolation": "thread", "sleep_window": 1234, "timeout": 50})
    assert first.call("settings") == again == second.call("settings")
    # A process that configures the command before it opens the circuit writes its settings too.
    (late,) = start_workers(1, name, {"isolation": "semaphore", "max_concurrent_requests": 7})
    assert late.call("settings").max_concurrent_requests == 7
    assert parent.settings.max_concurrent_requests == 7 == first.call("settings").max_concurrent_requests


def test_force_open_and_reset_are_host_wide(start_workers: StartWorkers) -> None:
    name = "forced"
    configure(name, request_volume_threshold=1000)
    parent = open_circuit(name)
    (worker,) = start_workers(1, name)
    assert worker.call("force_open", True) == "forced-open"
    assert parent.force_open and parent.state() == "forced-open"
    assert do(name, "ok") == "fallback:CircuitOpenError"
    parent._reset_state()
    assert worker.call("state") == "closed"
    assert snapshot_counts(worker.call("metrics"))["requests"] == 0
    assert worker.call("calls", ["ok"]) == ["ran"]


# -- one process: isolation, the window, fork --------------------------------------------------------


def test_thread_isolation_and_go_use_the_host_wide_circuit(shared_dir: Path) -> None:
    fasthystrix.configure_command("threaded", {"isolation": "thread", "timeout": 30_000})
    circuit = open_circuit("threaded")
    caller = threading.current_thread().name
    assert fasthystrix.do("threaded", lambda: threading.current_thread().name) != caller
    assert do("threaded", "fail") == "fallback:ValueError"
    assert fasthystrix.go("threaded", lambda: 42).result(WAIT) == 42
    counts = snapshot_counts(circuit.metrics())
    assert (counts["successes"], counts["failures"], counts["executed"]) == (2, 1, 3)
    wait_until(lambda: circuit.tickets_in_use == 0, "every ticket back")


def test_flushes_racing_each_other_and_new_circuits_all_return(shared_dir: Path) -> None:
    """flush() stops the reaper thread, and the next shared circuit starts another: flushes on
    several threads, while go() creates the circuit again, must all return. (Each stop must reach
    the reaper it stopped: one flush finishing must not take back another's stop request, which
    left that flush waiting forever on a reaper that never stopped.)"""
    fasthystrix.configure_command("racing-flush", {"timeout": int(WAIT * 1000)})
    for attempt in range(30):
        futures = [fasthystrix.go("racing-flush", lambda: fasthystrix.flush() or 1) for _ in range(10)]
        assert [f.result(WAIT) for f in futures] == [1] * 10, f"attempt {attempt}"
    wait_until(lambda: fasthystrix.get_circuit("racing-flush")[0].tickets_in_use == 0, "every ticket back")
    fasthystrix.flush()
    assert not [t for t in threading.enumerate() if t.name == "fasthystrix-reaper" and t.is_alive()]


@pytest.mark.skipif(SHARED_TESTS, reason="a private circuit's reset (every circuit is shared in this run)")
def test_reset_state_closes_and_empties_a_private_circuit(clock: FakeClock) -> None:
    configure("private-reset", request_volume_threshold=1)
    assert do("private-reset", "fail") == "fallback:ValueError"
    circuit = fasthystrix.get_circuit("private-reset")[0]
    assert circuit._shared is None
    assert circuit.is_open()
    circuit.force_open = True
    circuit._reset_state()
    assert (circuit.state(), circuit.force_open, circuit.metrics().requests) == ("closed", False, 0)
    assert do("private-reset", "ok") == "ran"


def test_the_shared_window_counts_as_a_private_one(shared_dir: Path, clock: FakeClock) -> None:
    """Random events over random times into a shared circuit's collector and a private one: the
    same counts and latency summaries (buckets, totals, slot reuse, the total-latency histogram)."""
    configure("window")
    shared = open_circuit("window")._default
    private = DefaultMetricCollector("private")
    rng = random.Random(20240601)
    latencies = [0, 1, 50, 127, 128, 129, 1000, 65_537, 10**6, 2**27 + 5, 2**31]
    events = [SUCCESS, FAILURE, TIMEOUT, 2, 3, 5, 6]
    for step in range(4000):
        r = rng.random()
        if r < 0.01:
            clock.advance(rng.choice([9, 11, 16, 59, 61, 200]))
        elif r < 0.25:
            clock.advance(ms=rng.randint(0, 1500))
        elif r < 0.255:
            shared.reset()
            private.reset()
        elif r < 0.35:
            active = rng.randint(0, 40)
            for collector in (shared, private):
                with collector._lock:
                    collector._rolling.record_executed(clock(), active)
        else:
            event = rng.choice(events)
            fallback = rng.choice([NO_EVENT, FALLBACK_SUCCESS, FALLBACK_FAILURE])
            result = MetricResult.from_event(event, fallback, rng.choice(latencies), rng.choice(latencies), 0)
            shared.update(result)
            private.update(result)
        if step % 97 == 0 or step == 3999:
            now = clock()
            (counts, run, total), (p_counts, p_run, p_total) = shared.reading(now), private.reading(now)
            assert counts == p_counts, step
            healths = []
            for collector in (shared, private):
                with collector._lock:
                    healths.append(collector._rolling.health(now))
            assert healths[0] == healths[1], step
            for mine, theirs in ((run, p_run), (total, p_total)):
                assert (mine.count, mine.mean, mine.percentiles) == (theirs.count, theirs.mean, theirs.percentiles)


def _run_script(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    if IMPLEMENTATION == "pure":
        env["FASTHYSTRIX_NO_EXTENSIONS"] = "1"
    try:
        return subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT * 2,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills the child
        pytest.fail(f"script did not finish within {WAIT * 2:g} s:\n{exc.stderr!r}")


def test_a_forked_child_takes_a_slot_of_its_own(tmp_path: Path) -> None:
    """After fork the child counts its tickets in its own slot, so its death gives back only its own."""
    done = _run_script(
        f"""
        import os, threading
        import fasthystrix
        from fasthystrix._core import _shared
        import shared_worker

        shared_worker.share({str(tmp_path / "circuits")!r}, None)
        fasthystrix.configure_command("forked", {{"isolation": "semaphore"}})
        circuit = shared_worker.open_circuit("forked")
        release = threading.Event()
        holder = threading.Thread(target=lambda: fasthystrix.do("forked", lambda: release.wait(60)))
        holder.start()
        while circuit.tickets_in_use != 1:
            release.wait(0.001)
        parent_slot = circuit._shared.slot
        pid = os.fork()
        if pid == 0:
            status = 0 if circuit._shared.slot != parent_slot and circuit.tickets_in_use == 1 else 3
            child_release = threading.Event()
            threading.Thread(
                target=lambda: fasthystrix.do("forked", lambda: child_release.wait(60)), daemon=True
            ).start()
            while circuit.tickets_in_use != 2:
                child_release.wait(0.001)
            os._exit(status)  # dies holding its ticket
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert circuit.tickets_in_use == 2
        _shared.reap_once()
        assert circuit.tickets_in_use == 1, circuit.tickets_in_use
        release.set()
        holder.join(60)
        assert circuit.tickets_in_use == 0
        print(fasthystrix.implementation, "ok")
        """
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == f"{IMPLEMENTATION} ok"


# -- files and directories --------------------------------------------------------------------


def _valid_file(tmp_path: Path, name: str, impl: str = IMPLEMENTATION) -> bytes:
    """The bytes of a fresh circuit file of ``name`` (made in a scratch directory)."""
    scratch = tmp_path / f"scratch-{impl}-{len(list(tmp_path.iterdir()))}"
    scratch.mkdir(mode=0o700)
    made = SharedCircuitFile(name, impl, _settings(), scratch)
    return made.path.read_bytes()


def _settings() -> Settings:
    return Settings.from_config(CommandConfig(), get_defaults())


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


OTHER_IMPL = "compiled" if IMPLEMENTATION == "pure" else "pure"

# How each foreign file is made from a valid one (data) of the same name.
FOREIGN: dict[str, Callable[[Path, bytes], bytes]] = {
    "bad magic": lambda tmp, data: _patched(data, 0, b"NOTOURS!"),
    "empty header": lambda tmp, data: bytes(len(data)),
    "too short": lambda tmp, data: data[: _shared.SIZE - 64],
    "too long": lambda tmp, data: data + bytes(4096),
    "a few bytes": lambda tmp, data: b"FHCIRC",
    "other layout version": lambda tmp, data: _patched(data, 8, struct.pack("<q", 99)),
    "other implementation": lambda tmp, data: _valid_file(tmp, "victim", OTHER_IMPL),
    "unknown implementation": lambda tmp, data: _patched(data, 16, struct.pack("<q", 77)),
    "other command": lambda tmp, data: _valid_file(tmp, "someone else"),
    "name length out of range": lambda tmp, data: _patched(data, 32, struct.pack("<q", 10**6)),
    "negative name length": lambda tmp, data: _patched(data, 32, struct.pack("<q", -1)),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_foreign_or_corrupt_file_is_refused(shared_dir: Path, tmp_path: Path, kind: str) -> None:
    path = shared_dir / _shared.file_name("victim")
    path.write_bytes(FOREIGN[kind](tmp_path, _valid_file(tmp_path, "victim")))
    path.chmod(0o600)
    with pytest.raises(SharedStateError):
        SharedCircuitFile("victim", IMPLEMENTATION, _settings())
    # Nothing else is hurt: other circuits of the directory work.
    configure("fine")
    open_circuit("fine")
    assert do("fine", "ok") == "ran"


def test_a_file_others_may_read_is_refused(shared_dir: Path, tmp_path: Path) -> None:
    path = shared_dir / _shared.file_name("victim")
    path.write_bytes(_valid_file(tmp_path, "victim"))
    path.chmod(0o644)
    with pytest.raises(SharedStateError, match="mode"):
        SharedCircuitFile("victim", IMPLEMENTATION, _settings())


def test_a_symlinked_file_is_refused(shared_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.circuit"
    target.write_bytes(_valid_file(tmp_path, "victim"))
    target.chmod(0o600)
    (shared_dir / _shared.file_name("victim")).symlink_to(target)
    with pytest.raises(SharedStateError):
        SharedCircuitFile("victim", IMPLEMENTATION, _settings())


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_of_another_user_is_refused(shared_dir: Path, tmp_path: Path) -> None:
    path = shared_dir / _shared.file_name("victim")
    path.write_bytes(_valid_file(tmp_path, "victim"))
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(SharedStateError, match="uid"):
        SharedCircuitFile("victim", IMPLEMENTATION, _settings())


def test_circuit_files_are_private(shared_dir: Path) -> None:
    configure("private")
    circuit = open_circuit("private")
    info = os.stat(circuit._shared.path)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert info.st_size == _shared.SIZE
    assert stat.S_IMODE(os.stat(shared_dir).st_mode) & 0o022 == 0


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777], ids=oct)
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(SharedStateError, match="writable"):
        _shared.share_circuits(directory)
    assert _shared.shared_dir() is None


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        directory = tmp_path / "theirs"
        directory.mkdir(mode=0o700)
        os.chown(directory, 65534, 65534)
    else:
        directory = Path("/")  # root's
    with pytest.raises(SharedStateError, match="uid"):
        _shared.share_circuits(directory)
    assert _shared.shared_dir() is None


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(SharedStateError, match="not a directory"):
        _shared.share_circuits(link)
    assert _shared.shared_dir() is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_corrupt_circuit_body_never_crashes_the_process(tmp_path: Path, seed: int) -> None:
    """Garbage in the state, tickets, window and histograms of a file with a valid header: calls
    may raise, the process must not crash (indices from the file are never trusted)."""
    done = _run_script(
        f"""
        import random
        import fasthystrix
        from fasthystrix._core import _shared
        import shared_worker

        directory = {str(tmp_path / "circuits")!r}
        shared_worker.share(directory, None)
        fasthystrix.configure_command("corrupt", {{"isolation": "semaphore"}})
        circuit = shared_worker.open_circuit("corrupt")
        rng = random.Random({seed})
        m = circuit._shared.map
        for _ in range(2000):
            # Random int64 words, many of them small or negative, all over the body.
            offset = rng.randrange(_shared.STATE, _shared.PROCS, 8)
            value = rng.choice([-1, -(2**63), 2**63 - 1, rng.randrange(-100, 100), rng.getrandbits(63)])
            m[offset : offset + 8] = value.to_bytes(8, "little", signed=True)
        outcomes = set()
        for i in range(300):
            try:
                if i % 3 == 0:
                    circuit.metrics()
                fasthystrix.do("corrupt", (lambda: 1) if i % 2 else (lambda: 1 / 0), lambda err: 0)
                outcomes.add("returned")
            except Exception as exc:
                outcomes.add(type(exc).__name__)
        print(fasthystrix.implementation, "survived", sorted(outcomes))
        """
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.startswith(f"{IMPLEMENTATION} survived"), done.stdout


# -- the rolling window, host-wide ----------------------------------------------------------------


def _window_events(circuit: Any) -> dict[str, int]:
    """The window's cumulative event counts (window plus retired totals), host-wide."""
    from fasthystrix._core._events import COUNTED_EVENT_NAMES

    host = getattr(circuit, "_host", None)  # the pure twin's window is read under the host lock
    if host is None:
        events = circuit._default._rolling.cumulative()[0]
    else:
        with host.lock:
            events = circuit._default._rolling.cumulative()[0]
    return dict(zip(COUNTED_EVENT_NAMES, events, strict=True))


def test_a_configured_window_is_every_process_s_and_expires_bucket_by_bucket(
    start_workers: StartWorkers, host_clock: Any
) -> None:
    name = "window-host-wide"
    configure(name, rolling_window=2000, rolling_buckets=4, request_volume_threshold=1_000_000)
    parent = open_circuit(name)
    [worker] = start_workers(1, name)  # it adopts the file's settings, the window with them
    assert worker.call("window") == parent._default._rolling.window() == (500_000_000, 4)
    assert worker.call("settings").rolling_window.total_seconds() == 2
    start = host_clock.value  # START_NS: a bucket's start
    assert start % 500_000_000 == 0
    assert worker.call("calls", ["ok", "ok", "ok"]) == ["ran"] * 3
    host_clock.value = start + 500_000_000
    assert do(name, "ok") == "ran"
    host_clock.value = start + 2_000_000_000 - 1
    assert parent.metrics().successes == worker.call("metrics").successes == 4
    host_clock.value = start + 2_000_000_000  # the worker's bucket leaves, in both processes
    assert worker.call("metrics").successes == parent.metrics().successes == 1
    host_clock.value = start + 2_500_000_000
    assert parent.metrics().successes == worker.call("metrics").successes == 0
    assert _window_events(parent)["success"] == 4


def test_a_window_reconfigured_in_one_process_is_seen_by_the_others(
    start_workers: StartWorkers, host_clock: Any
) -> None:
    name = "window-reconfigured"
    config = {"isolation": "semaphore", "request_volume_threshold": 1_000_000}
    configure(name, **config)
    parent = open_circuit(name)
    first, second = start_workers(2, name)
    assert first.call("calls", ["ok"] * 5) == ["ran"] * 5
    do(name, "fail")
    assert parent.metrics().requests == 6
    # Another window in the second worker: emptied once, for everyone; every process counts with it.
    second.call("configure", {**config, "rolling_window": 3000, "rolling_buckets": 6})
    assert parent.metrics().requests == first.call("metrics").requests == 0
    assert parent._default._rolling.window() == first.call("window") == (500_000_000, 6)
    assert parent.settings.rolling_buckets == first.call("settings").rolling_buckets == 6
    assert first.call("calls", ["ok", "ok"]) == ["ran"] * 2
    do(name, "ok")
    assert parent.metrics().successes == second.call("metrics").successes == 3
    # The same window again, from another process: nothing changes.
    first.call("configure", {**config, "rolling_window": 3000, "rolling_buckets": 6})
    assert parent.metrics().successes == 3
    events = _window_events(parent)
    assert (events["success"], events["failure"]) == (8, 1)


def test_window_changes_racing_calls_in_other_processes_lose_nothing(
    start_workers: StartWorkers, host_clock: Any
) -> None:
    # Two workers call as fast as they can while this process changes the window again and again
    # (and moves the clock): every call is in the window or the retired totals, host-wide. The
    # timeout is a day of the test's clock: a worker stalled by a busy machine while this process
    # moves the clock on (7 ms a change, up to 14 s) must not see its call time out.
    name = "window-race"
    config = {
        "isolation": "semaphore",
        "request_volume_threshold": 1_000_000,
        "max_concurrent_requests": 100,
        "timeout": 86_400_000,
    }
    configure(name, **config)
    parent = open_circuit(name)
    workers = start_workers(2, name, barrier=SPAWN.Barrier(2))
    calls = 3000
    for worker in workers:
        worker.send("race_mixed", ["ok"] * calls)
    geometries = [(2000, 4), (800, 80), (10_000, 10), (500, 50)]
    changes = 0
    while sum(_window_events(parent).values()) < 2 * calls and changes < 2000:
        window, buckets = geometries[changes % len(geometries)]
        fasthystrix.configure_command(name, {**config, "rolling_window": window, "rolling_buckets": buckets})
        host_clock.value += 7_000_000
        changes += 1
    for worker in workers:
        assert worker.reply() == ["ran"] * calls
    events = _window_events(parent)
    assert events["success"] == sum(events.values()) == 2 * calls


def test_the_middlewares_door_sheds_a_circuit_another_process_opened(
    start_workers: StartWorkers, host_clock: Any
) -> None:
    """The door reads the sleep window from the circuit itself, so a circuit a worker opened is
    shed here before the request's body is read, with what remains of the window as Retry-After."""
    import asyncio

    from fasthystrix.asgi import CircuitBreakerMiddleware

    name = "door"
    configure(name, request_volume_threshold=1, error_percent_threshold=50, sleep_window=5000)
    parent = open_circuit(name)
    [worker] = start_workers(1, name)
    assert worker.call("calls", ["fail", "ok"]) == ["fallback:ValueError", "fallback:CircuitOpenError"]
    assert parent.state() == "open"
    ran: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ran.append((await receive())["body"].decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = CircuitBreakerMiddleware(app, name=name)

    def post() -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict[str, Any]] = []
        body = [{"type": "http.request", "body": b"hello", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return body.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/", "root_path": "",
                 "headers": [(b"content-length", b"5")]}  # fmt: skip
        asyncio.run(middleware(scope, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"])

    host_clock.value += 2 * SECOND_NS  # 3 s of the worker's sleep window left
    status, headers = post()
    assert (status, headers[b"retry-after"], headers[b"connection"]) == (503, b"3", b"close")
    assert ran == [] and parent.metrics().short_circuits == 2  # shed at the door, body unread
    host_clock.value += 3 * SECOND_NS + 1  # past the window: the trial runs, and closes the circuit
    assert post()[0] == 200
    assert ran == ["hello"] and parent.state() == "closed"
    assert worker.call("state") == "closed"
