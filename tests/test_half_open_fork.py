"""Several trials in half-open across processes: a dead worker's trials of a host-wide circuit count
as failed, and a forked child does not wait for its parent's trials. Apart from test_half_open.py
because ThreadSanitizer cannot follow a fork (the sanitizer sessions run these under ASan only)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix._core import _shared
from support import sharing, wait_until
from test_half_open import SLEEP_NS, _configure, _trip


@pytest.fixture
def events() -> Iterator[list[tuple[str, str, str]]]:
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def listener(name: str, old: str, new: str) -> None:
        with lock:
            seen.append((name, old, new))

    remove = fasthystrix.on_state_change(listener)
    yield seen
    remove()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_dead_process_trials_count_as_failed(tmp_path: Path, clock: Any, events: list[tuple[str, str, str]]) -> None:
    with sharing(tmp_path / "circuits"):
        name = "dead-probes"
        circuit = _configure(name, half_open_max_calls=2, error_percent_threshold=60)
        _trip(name, clock)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(read)

                def die() -> None:
                    os.write(write, b"x")
                    os._exit(0)  # in the middle of its trial: it never reports

                fasthystrix.do(name, die)
            finally:
                os._exit(1)
        os.close(write)
        assert os.read(read, 1) == b"x"
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        assert fasthystrix.do(name, lambda: "mine") == "mine"  # the second trial
        # Only the reaper can end the phase (the child's trial never reports), before or after the
        # second trial reported: one failure (the dead trial) of two, 50 % < 60 %, closed.
        wait_until(lambda: _shared.reap_once() >= 0 and circuit.state() == "closed", "the verdict")
        assert [(o, n) for x, o, n in events if x == name][-1] == ("half-open", "closed")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_wait_for_its_parent_trials(clock: Any) -> None:
    if _shared.shared_dir() is not None:
        pytest.skip("a shared circuit's trials are the host's (the reaper's test above)")
    name = "fork-probes"
    circuit = _configure(name, half_open_max_calls=2)
    _trip(name, clock)
    status: list[int] = []

    def trial() -> str:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                # No trial of the parent's phase reports here: the child opened it again (a sleep
                # window from now), and then holds a phase of its own.
                if isinstance(fasthystrix.do(name, lambda: "x", lambda err: err), fasthystrix.CircuitOpenError):
                    clock.advance_ns(SLEEP_NS + 1)
                    if fasthystrix.do(name, lambda: "a") == "a" and fasthystrix.do(name, lambda: "b") == "b":
                        code = 0 if circuit.state() == "closed" else 3
                else:
                    code = 2
            finally:
                os._exit(code)
        status.append(os.waitpid(pid, 0)[1])
        return "parent"

    assert fasthystrix.do(name, trial) == "parent"
    assert status == [0]
    assert circuit.state() == "open"  # in the parent, one of two trials has reported
    assert fasthystrix.do(name, lambda: "b") == "b"
    assert circuit.state() == "closed"
