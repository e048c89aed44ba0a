"""go()'s deadline timer does not keep finished commands around until their deadline."""

from __future__ import annotations

import threading

import fasthystrix
from fasthystrix._isolation._workers import timer
from support import WAIT


def test_finished_go_commands_do_not_pile_up_in_the_timer() -> None:
    fasthystrix.configure_command("go-deadlines", fasthystrix.CommandConfig(timeout=60_000))
    for _ in range(3000):
        assert fasthystrix.go("go-deadlines", lambda: 1).result(timeout=WAIT) == 1
    # 3000 finished commands with a minute left on their deadline: only a bounded remainder stays.
    assert timer.pending() <= 512


def test_pending_go_commands_keep_their_deadline() -> None:
    fasthystrix.configure_command("go-deadlines-pending", fasthystrix.CommandConfig(timeout=50))
    release = threading.Event()
    future = fasthystrix.go("go-deadlines-pending", lambda: release.wait(2 * WAIT))
    for _ in range(600):  # enough schedules to trigger sweeps while the command is pending
        fasthystrix.go("go-deadlines-pending-other", lambda: 1).result(timeout=WAIT)
    try:
        assert isinstance(future.exception(timeout=WAIT), fasthystrix.TimeoutError)
    finally:
        release.set()
