"""Shared fixtures: every test runs on a clean registry, on this process's implementation, and
must give back every concurrency ticket it took."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

import fasthystrix
from fasthystrix import _impl, _registry
from fasthystrix._core import _clock, _config, _shared, _transitions
from fasthystrix.metric_collector import registry as collector_registry


def _implementation() -> str:
    """The implementation this process runs: the suite runs once per implementation, in its own process.

    ``FASTHYSTRIX_NO_EXTENSIONS=1`` selects the pure one (``nox`` runs the suite both ways).
    """
    pure_only = os.environ.get("FASTHYSTRIX_NO_EXTENSIONS", "") not in ("", "0")
    if _impl.COMPILED_MODULES and not pure_only and _impl.COMPILED is None:
        # Never skip the compiled twin silently: if it was meant to be built, it must be tested.
        raise RuntimeError(
            f"compiled fasthystrix modules are missing ({_impl.WHY_PURE}); "
            "set FASTHYSTRIX_NO_EXTENSIONS=1 to test the pure implementation only"
        )
    return _impl.current().name


IMPLEMENTATION = _implementation()


def pytest_report_header() -> str:
    return f"fasthystrix implementation: {IMPLEMENTATION}"


@pytest.fixture(autouse=True)
def impl() -> Iterator[str]:
    """The implementation under test; the registry is clean before and checked after."""
    _reset()
    yield IMPLEMENTATION
    try:
        _assert_tickets_returned()
    finally:
        _reset()


# FASTHYSTRIX_TEST_SHARED=1 runs every test with its circuits shared through a directory of its
# own (the whole suite as a check that sharing changes nothing a single process can see).
SHARED_TESTS = os.environ.get("FASTHYSTRIX_TEST_SHARED", "") not in ("", "0")
_shared_dirs: list[str] = []


def _reset() -> None:
    _clock.set_clock(None)
    fasthystrix.flush()
    with _registry._lock:
        _registry._settings.clear()
        _registry._configured.clear()
        _registry._max_circuits = _registry.DEFAULT_MAX_CIRCUITS
    if SHARED_TESTS:
        _shared._unshare()
        _registry._files.clear()
        _registry._holders.clear()
        while _shared_dirs:
            shutil.rmtree(_shared_dirs.pop(), ignore_errors=True)
        _shared_dirs.append(tempfile.mkdtemp(prefix="fasthystrix-test-"))
        fasthystrix.share_circuits(_shared_dirs[-1])
    _config.set_defaults()
    fasthystrix.set_max_threads()
    collector_registry._factories = ()
    _transitions._listeners = ()


def _assert_tickets_returned(timeout: float = 30.0) -> None:
    """Every ticket must come back; runs abandoned at a timeout get a moment to end."""
    deadline = time.monotonic() + timeout
    while True:
        leaked = {name: c.tickets_in_use for name, c in _registry.circuits().items() if c.tickets_in_use}
        if not leaked:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"concurrency tickets not returned: {leaked}")
        time.sleep(0.01)


# A monotonic clock that moves only when told to. Installed with _clock.set_clock, the compiled
# circuits read its value through their production C clock, not through a Python call.
FakeClock = _clock.ManualClock


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """Install a fake clock for circuits created during the test."""
    fake = FakeClock()
    _clock.set_clock(fake)
    fasthystrix.flush()
    yield fake
    _clock.set_clock(None)


def fasthystrix_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fasthystrix")]
