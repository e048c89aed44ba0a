"""What a shared circuit reports: cumulative counts that survive the window's expiry and resets,
and the Prometheus scrape's counters, on both implementations."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fasthystrix
from fasthystrix import _impl
from fasthystrix._observability._cumulative import read_circuits, shared_cumulative
from support import sharing

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="shared circuits are POSIX only"),
    pytest.mark.skipif(
        not hasattr(_impl.current().CircuitBreaker, "_attach"),
        reason=f"the {_impl.current().name} core cannot share circuits yet",
    ),
]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    with sharing(tmp_path / "circuits") as directory:
        yield directory


def _fail() -> None:
    raise ValueError("down")


def test_cumulative_counts_survive_expiry_and_resets(shared: Path, clock: object) -> None:
    fasthystrix.configure_command("m", {"isolation": "semaphore", "request_volume_threshold": 10**6})
    circuit = fasthystrix.get_circuit("m")[0]
    seen = []
    for round_ in range(3):
        for _ in range(7):
            fasthystrix.do("m", lambda: 1)
        for _ in range(3):
            fasthystrix.do("m", _fail, lambda err: 0)
        clock.advance(60)  # type: ignore[attr-defined] - every bucket and latency slot expires
        counts = shared_cumulative(circuit)
        assert counts is not None
        seen.append(counts)
        if round_ == 1:
            circuit._reset_state()  # a reset (a closing circuit, flush()) keeps the totals
    assert [c.events[:2] for c in seen] == [(7, 3), (14, 6), (21, 9)]
    assert [c.events[7] for c in seen] == [3, 6, 9]  # fallback successes
    assert [(c.run_count, c.total_count) for c in seen] == [(10, 10), (20, 20), (30, 30)]
    assert circuit.metrics().successes == 0  # the rolling window has moved past them all


def test_the_scrape_reads_the_shared_totals(shared: Path) -> None:
    fasthystrix.configure_command("p", {"isolation": "semaphore", "request_volume_threshold": 10**6})
    for _ in range(5):
        fasthystrix.do("p", lambda: 1)
    fasthystrix.do("p", _fail, lambda err: 0)
    (reading,) = [r for r in read_circuits() if r.name == "p"]
    assert reading.cumulative is not None
    assert reading.cumulative.events[:2] == (5, 1)
    assert reading.rolling.successes == 5
