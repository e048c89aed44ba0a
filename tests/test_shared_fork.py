"""A process forked with shared circuits uses the host's circuits: it sees the parent's calls in
flight and counts, counts its tickets in a process slot of its own, and a command that forks from
inside its run gives its ticket back once, in the parent."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fasthystrix
from fasthystrix import _impl
from support import WAIT, sharing

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="no fork"),
    pytest.mark.skipif(
        not hasattr(_impl.current().CircuitBreaker, "_attach"),
        reason=f"the {_impl.current().name} core cannot share circuits yet",
    ),
]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    with sharing(tmp_path / "circuits") as directory:
        yield directory


def _wait_child(pid: int) -> int:
    deadline = time.monotonic() + WAIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child hung")
        time.sleep(0.01)


def _child(check: object) -> None:
    """In the child: exit 0 if ``check()`` is true, 1 if false, 2 if it raised."""
    try:
        code = 0 if check() else 1  # type: ignore[operator]
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 2
    os._exit(code)


def test_child_shares_the_host_circuit_with_a_call_in_flight(shared: Path) -> None:
    fasthystrix.configure_command("f", {"isolation": "semaphore", "request_volume_threshold": 10**6})
    for _ in range(5):
        fasthystrix.do("f", lambda: 1)
    release = threading.Event()
    started = threading.Event()

    def held() -> int:
        started.set()
        release.wait(WAIT)
        return 1

    caller = threading.Thread(target=fasthystrix.do, args=("f", held))
    caller.start()
    assert started.wait(WAIT)
    circuit = fasthystrix.get_circuit("f")[0]
    assert circuit.tickets_in_use == 1
    pid = os.fork()
    if pid == 0:

        def check() -> bool:
            c = fasthystrix.get_circuit("f")[0]
            # The parent's call in flight is the host's: its ticket is counted here too.
            ok = c.tickets_in_use == 1 and c.metrics().successes == 5
            fasthystrix.do("f", lambda: 1)
            return ok and c.tickets_in_use == 1 and c.metrics().successes == 6

        _child(check)
    assert _wait_child(pid) == 0
    release.set()
    caller.join(WAIT)
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().successes == 7  # the child's call is the host's too


def test_fork_inside_run_gives_the_ticket_back_once(shared: Path) -> None:
    fasthystrix.configure_command("g", {"isolation": "semaphore", "request_volume_threshold": 10**6})
    circuit = fasthystrix.get_circuit("g")[0]
    child_exit: list[int] = []

    def run() -> str:
        pid = os.fork()
        if pid == 0:
            return "child"
        # The parent's command stays in flight until the child has checked and exited.
        child_exit.append(_wait_child(pid))
        return "parent"

    result = fasthystrix.do("g", run)
    if result == "child":
        # The forking thread's command ended in the child: giving its ticket back here would give
        # back the parent's (still in flight): that give is absorbed, the host still counts 1.
        _child(lambda: circuit.tickets_in_use == 1 and circuit.metrics().successes == 1)
    assert result == "parent"
    assert child_exit == [0]
    assert circuit.tickets_in_use == 0
    assert circuit.metrics().successes == 2
