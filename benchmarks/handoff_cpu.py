"""CPU and wall time per thread-isolated call, fasthystrix against ``ThreadPoolExecutor``, in one run.

    python benchmarks/handoff_cpu.py [--rounds R] [--quick] [--impl compiled[,pure]] [--json PATH]

A script, not a test: nothing is asserted, it prints figures and whether the targets are met.

Cases, for three runs (``trivial`` = ``def ok(): return 1``, ``1ms`` = ``time.sleep(0.001)``,
``10ms`` = ``time.sleep(0.010)``):

- ``fasthystrix.do(name, run)`` and ``fasthystrix.go(name, run).result()`` with ``isolation="thread"``,
  for each implementation asked for;
- ``ThreadPoolExecutor(max_workers=1).submit(run).result()`` (``tpe1``, the reference) and the same
  with ``max_workers=10`` (``tpe10``).

How a figure is made:

- A block is ``n`` calls in a row of one case (``n`` per run below), GC off. Per call it gives the
  process CPU (``time.process_time()``: every thread of the process, so the caller, the worker that
  ran the call and any spin or timer thread), the caller thread's own CPU (``time.thread_time()``)
  and the wall time (``time.perf_counter()``).
- A round runs one block of every case of a run, in an order that rotates from round to round; the
  runs are interleaved too (trivial, 1ms, 10ms, trivial, ...). Each case's **ratio** is the median
  over rounds of (case / ``tpe1`` of the same round), so load that comes and goes hits both sides of a
  pair alike. Absolute figures (medians over rounds) are context only: the machine is shared.

Targets: process CPU per call <= 1.2x ``tpe1``'s for the 1ms and 10ms runs; wall time per call of
``do()`` and ``go().result()`` with the trivial run <= 0.35x ``tpe1``'s.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fasthystrix
from fasthystrix import _impl


def ok() -> int:
    return 1


def sleep_1ms() -> int:
    time.sleep(0.001)
    return 1


def sleep_10ms() -> int:
    time.sleep(0.010)
    return 1


# run name -> (callable, calls per block, calls per block with --quick)
RUNS: dict[str, tuple[Callable[[], int], int, int]] = {
    "trivial": (ok, 5000, 2000),
    "1ms": (sleep_1ms, 300, 100),
    "10ms": (sleep_10ms, 100, 30),
}
CPU_TARGET = 1.2  # process CPU per call / tpe1's, 1ms and 10ms runs
LATENCY_TARGET = 0.35  # wall time per call / tpe1's, trivial run


Block = tuple[float, float, float, float, float]


def _spun(budget: Any) -> tuple[int, int]:
    if budget is None:
        return 0, 0
    return budget.spun, budget.spun + budget.skipped


class Case:
    """One way of making a call, measured in blocks."""

    def __init__(self, label: str, call: Callable[[], object], pool: Any = None) -> None:
        self.label = label
        self.call = call
        self.pool = pool  # fasthystrix's WorkerPool, for its spin budgets' counters

    def block(self, n: int) -> Block:
        """Per call over ``n`` calls in a row: process CPU, caller thread CPU and wall seconds, and the
        share of the pool's waits for a result and for a task that spun (NaN without a pool)."""
        call = self.call
        # getattr: versions before the spin budgets have none (for comparing two versions).
        results = getattr(self.pool, "result_waits", None)
        tasks = getattr(self.pool, "task_waits", None)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            spun_r0, waits_r0 = _spun(results)
            spun_t0, waits_t0 = _spun(tasks)
            wall0, cpu0, caller0 = time.perf_counter(), time.process_time(), time.thread_time()
            for _ in itertools.repeat(None, n):
                call()
            wall1, cpu1, caller1 = time.perf_counter(), time.process_time(), time.thread_time()
            spun_r1, waits_r1 = _spun(results)
            spun_t1, waits_t1 = _spun(tasks)
        finally:
            if gc_was_enabled:
                gc.enable()
        nan = float("nan")
        share_r = (spun_r1 - spun_r0) / (waits_r1 - waits_r0) if waits_r1 > waits_r0 else nan
        share_t = (spun_t1 - spun_t0) / (waits_t1 - waits_t0) if waits_t1 > waits_t0 else nan
        return (cpu1 - cpu0) / n, (caller1 - caller0) / n, (wall1 - wall0) / n, share_r, share_t


def _circuit(impl: str, name: str) -> Any:
    fasthystrix.configure_command(
        name,
        fasthystrix.CommandConfig(
            isolation="thread", timeout=10_000, max_concurrent_requests=1000, request_volume_threshold=10**9
        ),
    )
    circuit = fasthystrix.get_circuit(name)[0]
    assert type(circuit).__module__.endswith("_circuit" if impl == "compiled" else "_circuit_py"), type(circuit)
    return circuit


def fasthystrix_cases(impl: str, run_name: str, run: Callable[[], int]) -> list[Case]:
    """do() and go().result() of ``run``, each on its own circuit (so each has its own workers)."""
    _impl.select(impl)
    do, go = fasthystrix.do, fasthystrix.go
    do_name, go_name = f"handoff-cpu-{impl}-{run_name}-do", f"handoff-cpu-{impl}-{run_name}-go"
    do_circuit, go_circuit = _circuit(impl, do_name), _circuit(impl, go_name)

    def do_call() -> object:
        return do(do_name, run)

    def go_call() -> object:
        return go(go_name, run).result()

    return [
        Case(f"fasthystrix {impl} do()", do_call, getattr(do_circuit, "_workers", None)),
        Case(f"fasthystrix {impl} go().result()", go_call, getattr(go_circuit, "_workers", None)),
    ]


def executor_case(label: str, executor: ThreadPoolExecutor, run: Callable[[], int]) -> Case:
    submit = executor.submit

    def call() -> object:
        return submit(run).result()

    return Case(label, call)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="rounds per run (default 7)")
    parser.add_argument("--quick", action="store_true", help="shorter blocks and 3 rounds (noisier)")
    parser.add_argument("--impl", default="compiled", help="comma-separated implementations (compiled, pure)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated runs (default {','.join(RUNS)})")
    parser.add_argument("--json", type=Path, help="also write every block's figures here")
    args = parser.parse_args()
    rounds = 3 if args.quick and args.rounds == 7 else args.rounds
    impls = [name for name in args.impl.split(",") if name]
    runs = {name: RUNS[name] for name in args.runs.split(",") if name in RUNS}
    if not runs:
        parser.error(f"--runs: none of {args.runs!r} is one of {', '.join(RUNS)}")
    for impl in impls:
        if impl not in _impl.available():
            parser.error(f"implementation {impl!r} is not available: {_impl.WHY_PURE}")

    executors = {"tpe1": ThreadPoolExecutor(max_workers=1), "tpe10": ThreadPoolExecutor(max_workers=10)}
    cases: dict[str, list[Case]] = {}
    for run_name, (run, _, _) in runs.items():
        found = [executor_case(f"ThreadPoolExecutor({key[3:]})", ex, run) for key, ex in executors.items()]
        for impl in impls:
            found += fasthystrix_cases(impl, run_name, run)
        cases[run_name] = found
    if impls:
        # Circuits keep the implementation they were created with: every case above is bound already.
        _impl.select(impls[0])

    print(f"Python {sys.version.split()[0]}, fasthystrix {fasthystrix.__version__}, load {loadavg()} at start")
    # Warm up: threads started, code paths run, before anything is timed.
    for run_name, found in cases.items():
        for case in found:
            case.block(max(1, RUNS[run_name][2] // 10))

    # figures[run][label] = one Block per round
    figures: dict[str, dict[str, list[Block]]] = {
        run_name: {case.label: [] for case in found} for run_name, found in cases.items()
    }
    for r in range(rounds):
        for run_name, found in cases.items():
            n = RUNS[run_name][2] if args.quick else RUNS[run_name][1]
            shift = r % len(found)
            for case in found[shift:] + found[:shift]:
                figures[run_name][case.label].append(case.block(n))
        print(f"round {r + 1}/{rounds} done, load {loadavg()}", file=sys.stderr)

    for executor in executors.values():
        executor.shutdown()
    fasthystrix.flush()

    reference = "ThreadPoolExecutor(1)"
    verdicts: list[str] = []
    print(f"load {loadavg()} at end; {rounds} rounds; ratios are medians over rounds of case / {reference}\n")
    print("cpu, caller: process and caller-thread CPU per call; spun: share of the waits for a result / for a task")
    print("that spun (fasthystrix's spin budgets; blank before them)\n")
    header = (
        f"{'run':8} {'case':34} {'cpu us':>8} {'caller':>8} {'wall us':>9} {'cpu ratio':>9} {'wall ratio':>10}"
        f" {'spun':>11}"
    )
    print(header)
    print("-" * len(header))
    for run_name, by_label in figures.items():
        ref = by_label[reference]
        for label, blocks in by_label.items():
            cpu = statistics.median(b[0] for b in blocks) * 1e6
            caller = statistics.median(b[1] for b in blocks) * 1e6
            wall = statistics.median(b[2] for b in blocks) * 1e6
            cpu_ratio = statistics.median(b[0] / a[0] for a, b in zip(ref, blocks, strict=True) if a[0] > 0)
            wall_ratio = statistics.median(b[2] / a[2] for a, b in zip(ref, blocks, strict=True))
            spun = ""
            if blocks[0][3] == blocks[0][3]:  # not NaN: a pool with spin budgets
                spun = f"{statistics.median(b[3] for b in blocks):.2f}/{statistics.median(b[4] for b in blocks):.2f}"
            print(
                f"{run_name:8} {label:34} {cpu:8.1f} {caller:8.1f} {wall:9.1f} {cpu_ratio:9.2f} {wall_ratio:10.3f}"
                f" {spun:>11}"
            )
            if not label.startswith("fasthystrix"):
                continue
            if run_name == "trivial":
                met = wall_ratio <= LATENCY_TARGET
                verdicts.append(f"{label}, {run_name}: wall {wall_ratio:.3f}x <= {LATENCY_TARGET}x: {met}")
            else:
                met = cpu_ratio <= CPU_TARGET
                verdicts.append(f"{label}, {run_name}: cpu {cpu_ratio:.2f}x <= {CPU_TARGET}x: {met}")
        print()
    print("targets (cpu for the sleeping runs, wall for the trivial one):")
    for line in verdicts:
        print(f"  {line}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "figures": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
