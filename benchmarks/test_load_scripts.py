"""The load benchmarks (``overload.py``, ``middleware_cost.py``) still run, in their ``--quick`` modes.

Collected by ``nox -s bench-smoke`` (``pytest benchmarks``), which CI runs: each script runs once
in a subprocess against real servers on loopback, and its report is checked for completeness and
consistency, never for timing (a loaded machine may be slow; the figures are the full runs' job).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(HERE / script), "--quick", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures the server's CPU through /proc")
def test_overload_quick_accounts_for_every_request(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import overload
    finally:
        sys.path.remove(str(HERE))
    plot, results = tmp_path / "overload.png", tmp_path / "results.json"
    out = run("overload.py", "--plot", str(plot), "--json", str(results))
    rows = json.loads(results.read_text())
    available = [c for c in overload.CONFIGS if overload.availability(c) is None]
    assert {"none", "hystrix", "tickets"} <= set(available)
    # Each available configuration ran at each of the quick rates, and every request sent in the
    # measured window ended as a 200, a 503 or a counted error.
    assert sorted((r["config"], r["multiple"]) for r in rows) == sorted((c, m) for c in available for m in (0.5, 2.0))
    for r in rows:
        rejected = round(r["rejected"] * r["seconds"])
        assert r["ok"] + rejected + r["errors"] == r["sent"], r
        assert r["sent"] > 0
    for config in overload.CONFIGS:
        assert f"| {config} |" in out
        if config not in available:
            assert "not available" in out
    # The fixed-ticket configurations never let more than C calls reach the downstream.
    for r in rows:
        if r["config"] in ("hystrix", "tickets"):
            assert 0 < r["downstream_max_in_flight"] <= 5, r
    written = plot if plot.exists() else plot.with_suffix(".svg")
    head = written.read_bytes()[:8]
    assert head.startswith(b"\x89PNG") or head.startswith(b"<svg"), head


def test_downstream_model() -> None:
    sys.path.insert(0, str(HERE))
    try:
        from overload import Downstream
    finally:
        sys.path.remove(str(HERE))
    model = Downstream(capacity=10, base=0.02, contention=0.5)
    assert model.latency(1) == model.latency(10) == 0.02
    # Past capacity: shared (x) times contended (1 + k (x - 1)), so throughput n / latency falls.
    assert model.latency(20) == pytest.approx(0.02 * 2 * 1.5)
    throughputs = [n / model.latency(n) for n in (10, 20, 40, 80)]
    assert throughputs == sorted(throughputs, reverse=True)
    assert throughputs[0] == pytest.approx(500)


def test_downstream_shares_and_releases() -> None:
    """Calls in flight together share the downstream; a cancelled call leaves and the rest speed up."""
    sys.path.insert(0, str(HERE))
    try:
        from overload import Downstream
    finally:
        sys.path.remove(str(HERE))

    async def scenario() -> None:
        model = Downstream(capacity=1, base=0.05, contention=0.0)
        first = asyncio.ensure_future(model.call())
        second = asyncio.ensure_future(model.call())
        third = asyncio.ensure_future(model.call())
        await asyncio.sleep(0)
        assert model.in_flight == 3
        started = time.perf_counter()
        third.cancel()
        await asyncio.gather(first, second)
        # Two calls of 50 ms of work sharing a capacity of one: neither ends before 100 ms.
        assert time.perf_counter() - started >= 0.1 - 0.005
        assert third.cancelled()
        assert (model.in_flight, model.max_in_flight, model.calls) == (0, 3, 3)
        assert model._ends == [] or all(end[2].done() for end in model._ends)

    asyncio.run(scenario())


def test_middleware_cost_quick_reports_every_variant() -> None:
    out = run("middleware_cost.py", "--frameworks", "starlette,flask")
    for framework, variants in (
        ("starlette", ("bare", "middleware", "minimal-wrapper")),
        ("flask", ("bare", "middleware-thread", "middleware-semaphore")),
    ):
        for variant in variants:
            row = next(
                line for line in out.splitlines() if line.startswith(f"| {framework} (") and f"| {variant} |" in line
            )
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert float(cells[2].replace(",", "")) > 0, row  # it served requests
            if sys.platform == "linux":
                assert float(cells[5]) > 0, row  # the server's CPU time per request, from /proc
            assert cells[7] == "0", row  # and every answer was a 2xx
        # The 503 path, measured in the same rounds: a rate of 503s, and its ratio to served requests.
        row = next(line for line in out.splitlines() if line.startswith(f"| {framework} (") and "x (" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1].replace(",", "")) > 0, row


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="--callgrind needs valgrind (apt-get install valgrind)")
@pytest.mark.parametrize(
    ("framework", "cheaper_than"),
    [
        # Wrapping the app does more work than the bare app. The middleware and the reference send()
        # wrapper are within a few thousand instructions of each other, either may be the cheaper:
        # only their cost over bare is an invariant.
        ("starlette", (("bare", "minimal-wrapper"), ("bare", "middleware"))),
        # gunicorn's worker is counted, not its arbiter (which serves no request): handing each
        # request to a worker thread (thread isolation) does more than running it in place.
        ("flask", (("bare", "middleware-semaphore"), ("middleware-semaphore", "middleware-thread"))),
    ],
)
def test_middleware_cost_callgrind_counts_each_variants_instructions(
    framework: str, cheaper_than: tuple[tuple[str, str], ...]
) -> None:
    out = run("middleware_cost.py", "--callgrind", "--frameworks", framework)
    counts = {}
    for variant in {name for pair in cheaper_than for name in pair}:
        row = next(
            line for line in out.splitlines() if line.startswith(f"| {framework} (") and f"| {variant} |" in line
        )
        counts[variant] = int(row.strip("|").split("|")[2].strip().replace(",", ""))
    assert all(count > 0 for count in counts.values()), out
    for cheaper, dearer in cheaper_than:
        assert counts[cheaper] < counts[dearer], (cheaper, dearer, out)


@pytest.mark.parametrize("impl", ["compiled", "pure"])
def test_callgrind_do_runs_every_path(impl: str) -> None:
    # Without --measure the script only makes the calls (valgrind runs it so): each path must work.
    sys.path.insert(0, str(HERE))
    try:
        import callgrind_do
    finally:
        sys.path.remove(str(HERE))
    env = dict(os.environ, FASTHYSTRIX_NO_EXTENSIONS="1" if impl == "pure" else "0")
    for path in callgrind_do.PATHS:
        done = subprocess.run(
            [sys.executable, str(HERE / "callgrind_do.py"), path, "10", "--impl", impl],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, (path, done.stderr)
