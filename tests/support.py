"""Pieces several test modules share: waiting for something to happen, a known set of events,
and loading the examples."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from conftest import IMPLEMENTATION, SHARED_TESTS, FakeClock
from fasthystrix._core import _shared
from fasthystrix._integrations._asgi_core_py import Resumed

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: Seconds a test waits for something that must happen (a thread to start, a ticket to come back,
#: a future to resolve). Generous, so that a machine busy with other work still passes: only a
#: failing test waits it out. Tests assert what happens, not how fast.
WAIT = 30.0


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it is true; fail, naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.005)


def load_example(filename: str) -> Any:
    """Import ``examples/<filename>`` as a module of its own."""
    spec = importlib.util.spec_from_file_location(filename.removesuffix(".py"), EXAMPLES / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def semaphore_command(name: str, **extra: Any) -> None:
    fasthystrix.configure_command(name, {"isolation": "semaphore", **extra})


def boom() -> None:
    raise ValueError("down")


def drive_known_events(name: str, clock: FakeClock) -> None:
    """success 3, failure 3, rejected 1, short-circuit 2, timeout 1, fallback-success 4, fallback-failure 1,
    bad-request 2 (errors ``ignore`` accepts: they reach the caller, without the fallback)."""

    def slow(ms: float) -> Callable[[], str]:
        def run() -> str:
            clock.advance(ms=ms)
            return "ok"

        return run

    def failing_after_10ms() -> None:
        clock.advance(ms=10)
        raise ValueError("down")

    def bad_request() -> None:
        clock.advance(ms=10)
        raise KeyError("bad argument")

    semaphore_command(name, max_concurrent_requests=7, ignore=KeyError)
    for _ in range(3):
        assert fasthystrix.do(name, slow(30)) == "ok"
    for _ in range(2):
        with pytest.raises(KeyError):
            fasthystrix.do(name, bad_request, lambda err: "fb")
    for _ in range(2):
        assert fasthystrix.do(name, failing_after_10ms, lambda err: "fb") == "fb"
    with pytest.raises(fasthystrix.FallbackError):
        fasthystrix.do(name, failing_after_10ms, lambda err: boom())
    with pytest.raises(fasthystrix.TimeoutError):
        fasthystrix.do(name, slow(1500))
    semaphore_command(name, max_concurrent_requests=0)
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do(name, slow(1))
    semaphore_command(name, max_concurrent_requests=7)
    circuit = fasthystrix.get_circuit(name)[0]
    circuit.force_open = True
    for _ in range(2):
        assert fasthystrix.do(name, slow(1), lambda err: "fb") == "fb"
    circuit.force_open = False


KNOWN = {
    "success": 3,
    "failure": 3,
    "rejected": 1,
    "short-circuit": 2,
    "timeout": 1,
    "context_canceled": 0,
    "context_deadline_exceeded": 0,
    "fallback-success": 4,
    "fallback-failure": 1,
    "bad-request": 2,
}


@contextlib.contextmanager
def sharing(directory: Path) -> Iterator[Path]:
    """Circuits shared through ``directory`` for the block (then as before: unshared, or the
    directory FASTHYSTRIX_TEST_SHARED gave this test)."""
    from fasthystrix import _registry
    from fasthystrix._core import _shared

    before = _shared.shared_dir()
    fasthystrix.flush()
    _shared._unshare()
    fasthystrix.share_circuits(directory)
    try:
        yield directory
    finally:
        fasthystrix.flush()
        _shared._unshare()
        _registry._files.clear()
        _registry._holders.clear()
        if before is not None:
            fasthystrix.share_circuits(before)


#: Circuit names every exporter must survive: lone surrogates (what ``surrogateescape`` makes of
#: bytes that are not UTF-8), the separators and escapes of the StatsD and Prometheus text
#: formats, NUL, characters outside the BMP, an empty name and a 10 KB one.
#: Why a test is left out under FASTHYSTRIX_TEST_SHARED: it needs more than a shared directory holds.
BEYOND_SHARED_BOUNDS = "needs longer names or more circuits than a shared directory holds (1 024 bytes, 1 024 names)"

HOSTILE_NAMES = (
    "lone \ud800 high surrogate",
    "lone low surrogate \udfff",
    "\ud83d\ude00 a pair, as two code points",
    "new\nline",
    "carriage\rreturn",
    'quo"te',
    "back\\slash",
    'back\\slash and quote\\"',
    "pi|pe",
    "ha#sh",
    "sp ace",
    "tab\there",
    "{br}aces=and,commas",
    "col:on@at",
    "nul\x00byte",
    "emoji \U0001f600",
    "",
    # The longest: 10 KiB, or the most a shared circuit's name may be (its file holds it).
    "x" * (_shared.NAME_MAX if SHARED_TESTS else 10_240),
)


def exported_label(name: str) -> str:
    """What the Prometheus and OpenTelemetry exporters publish for circuit ``name``: every
    surrogate code point replaced by U+FFFD, everything else as it is."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name)


#: A test of what a failed allocation inside the library leaves behind: the compiled paths are
#: hardened (no ticket kept); the pure twin is not (an allocation between its ticket and the try
#: that ends the command can fail and keep the ticket).
hardened_against_failed_allocations = pytest.mark.skipif(
    IMPLEMENTATION != "compiled", reason="the pure twin is not hardened against failed allocations"
)


async def first_step_failing_allocation(
    awaitable: Any, number: int, after_step: Callable[[str], object] | None = None
) -> str:
    """Await ``awaitable`` with allocation ``number`` (0: the first) of its first step failing with
    ``MemoryError`` (CPython's ``_testcapi`` counts every allocation of the process: the step runs
    here at once), then, if it waited, the rest without failures: ``"returned"`` or ``"raised"``,
    or ``"returned after waiting"`` or ``"raised after waiting"``. Nothing of it outlives the call
    (no error returned, which would keep its frames): what it left behind is what it leaves.
    ``after_step(outcome)`` is called when the first step returned or raised, before ``awaitable``
    is dropped: what holds while the caller still has it."""
    testcapi = pytest.importorskip("_testcapi")
    steps = awaitable.__await__()
    del awaitable
    testcapi.set_nomemory(number, number + 1)
    try:
        try:
            yielded = steps.send(None)
        finally:
            testcapi.remove_mem_hooks()
    except StopIteration:
        outcome = "returned"
    except BaseException:
        outcome = "raised"
    else:
        outcome = None
    if outcome is not None:
        if after_step is not None:
            after_step(outcome)
        return outcome
    try:
        await Resumed(steps, yielded)
    except BaseException:
        return "raised after waiting"
    return "returned after waiting"
