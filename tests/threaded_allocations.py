"""A process of its own for tests/test_thread_pool.py: ``python threaded_allocations.py do|do_c COUNT``.

Each allocation of a call in thread isolation fails in turn (CPython's ``_testcapi.set_nomemory``
counts every allocation of the process, the worker's too), and after each call the ticket must come
back. Out of the test runner's process because a failed allocation can land anywhere in any thread,
pytest's own log capture included. Prints one JSON line: ``{"outcomes": {...}, "kept": [...]}``,
``kept`` the allocation numbers after which a ticket was still held ``WAIT`` seconds later.
"""

from __future__ import annotations

import _testcapi
import json
import sys
import time
from collections.abc import Callable

import fasthystrix
from fasthystrix._isolation import _workers

WAIT = 10.0


def wait_for(condition: Callable[[], object]) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def main(kind: str, count: int) -> None:
    fasthystrix.configure_command(
        "allocations", fasthystrix.CommandConfig(timeout=200, request_volume_threshold=10_000)
    )
    circuit = fasthystrix.get_circuit("allocations")[0]
    outcomes: dict[str, int] = {}
    kept = []
    for number in range(count):
        # An idle worker first (started here, not while allocations fail: CPython's Thread.start()
        # waits for ever on a thread whose start failed), so the call hands its run to it.
        fasthystrix.do("allocations", lambda: None)
        if not wait_for(lambda: len(_workers.workers._idle) >= 1):
            sys.exit("no idle worker")
        # Made before allocations fail: what is under test is the call (CPython 3.13 crashes later
        # when making a function object fails).
        ctx = fasthystrix.Context.background().with_cancel()
        run_with_context = lambda ctx: 1  # noqa: E731
        run = lambda: 1  # noqa: E731
        _testcapi.set_nomemory(number, number + 1)
        try:
            try:
                if kind == "do_c":
                    fasthystrix.do_c(ctx, "allocations", run_with_context)
                else:
                    fasthystrix.do("allocations", run)
            finally:
                _testcapi.remove_mem_hooks()
            outcome = "done"
        except BaseException as exc:  # MemoryError, or what it became (a timeout, a rejection...)
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if not wait_for(lambda: circuit.tickets_in_use == 0):
            kept.append(number)
            break  # held for good: the numbers after it would all show it
    print(json.dumps({"outcomes": outcomes, "kept": kept}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
