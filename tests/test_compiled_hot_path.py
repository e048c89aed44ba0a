"""The compiled success path allocates no Python object (the pure twin does, which shows the probe works)."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
from collections.abc import Callable

import pytest

import fasthystrix


def ok() -> int:
    return 1


def _transient_bytes(call: Callable[[], object], calls: int = 10_000) -> int:
    """The most memory allocated at once while ``call()`` runs ``calls`` times, above where it started."""
    tracemalloc.start()
    try:
        for _ in range(100):  # under tracing too: first-call caches are not what is measured
            call()
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for _ in itertools.repeat(None, calls):  # range() would allocate an int per iteration
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


def test_success_path_allocation(impl: str) -> None:
    fasthystrix.configure_command(
        "hot-path", fasthystrix.CommandConfig(isolation="semaphore", max_concurrent_requests=10**6)
    )
    for _ in range(1000):  # creates the circuit and its histograms
        fasthystrix.do("hot-path", ok)
    do = fasthystrix.do
    baseline = _transient_bytes(lambda: ok())  # what the measuring (and calling ok) itself allocates
    transient = _transient_bytes(lambda: do("hot-path", ok))
    if impl == "compiled":
        if sys.version_info < (3, 11):
            pytest.skip("CPython 3.10 allocates frame objects for calls made from C; measured on 3.11+")
        assert transient == baseline
    else:
        # Nanosecond timestamps are Python ints: the pure twin allocates on every call.
        assert transient > baseline
    assert fasthystrix.get_circuit("hot-path")[0].metrics().successes == 11_100
