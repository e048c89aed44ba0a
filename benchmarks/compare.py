"""Run the benchmark suite once and print the issue's table: fasthystrix against a bare call and the peers.

    python benchmarks/compare.py [--quick] [--groups G[,G...]] [--json PATH] [--from-json PATH]

Runs ``benchmarks/test_bench_paths.py`` in this process (``pytest.main`` with ``--benchmark-disable-gc``
and ``--benchmark-json``), then reads the JSON.

- ns per call = pytest-benchmark's median round time / the round's inner loop count.
- The ratios that decide the targets are **paired medians**: after its pytest-benchmark run, each case
  is timed in rounds back to back with its group's reference (a bare call, a bare raise-and-catch,
  ``ThreadPoolExecutor(1).submit(ok).result()``, a bare await), alternating the order; the ratio is the
  median over those pairs of (case per call / reference per call). Load that changes during a group
  hits both sides of a pair alike.
- As a cross-check, every row also shows the plain median ratio: its median / the mean of the medians
  of the group's baseline measured at the group's start and end (their difference is the group's drift).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SUITE = HERE / "test_bench_paths.py"

# The issue's figures for the peers (CPython 3.11.7 on a 2-vCPU Intel Xeon @ 2.50 GHz), for reference.
ISSUE_PEERS = {
    "success": {"pybreaker": "2 446 ns (64x)", "circuitbreaker": "983 ns (26x)", "purgatory": "1 564 ns (41x)"},
    "failure-closed": {
        "pybreaker": "5 023 ns (133x)",
        "circuitbreaker": "2 059 ns (54x)",
        "purgatory": "4 426 ns (118x)",
    },
    "open-rejected": {
        "pybreaker": "4 479 ns (117x)",
        "circuitbreaker": "1 726 ns (45x)",
        "purgatory": "2 402 ns (63x)",
    },
    "two-threads": {"pybreaker": "0.52", "circuitbreaker": "0.86", "purgatory": "0.99"},
}

TARGETS = {
    "success": 5.0,  # compiled semaphore do() <= 5x a bare call (paired wall-clock; <= 3.5x in instructions)
    "success-pure": 15.0,  # pure do() <= 15x a bare call
    "failure-closed": 1.5,  # <= 1.5x a bare raise-and-catch
    "open-rejected": 8.0,  # with a fallback, <= 8x a bare call, in either isolation
    "thread-isolation": 0.35,  # <= 0.35x ThreadPoolExecutor.submit(fn).result()
    "two-threads": 0.95,  # >= 0.95
    "memory": 64 * 1024,  # <= 64 KiB
    "asyncio": 0.5,  # do_async with its timeout <= 0.5x `async with asyncio.timeout()` around the same await
    "decorator": 1.3,  # a decorated sync function <= 1.3x the equivalent do() call
}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return str(os.cpu_count())


def source_state() -> str:
    """The commit the run measured, and whether src/ had uncommitted changes (builds in place follow src/)."""
    root = HERE.parent

    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        except OSError:
            return ""
        return proc.stdout.strip()

    head = git("log", "-1", "--format=%h %ci %s")
    if not head:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", "src")
    return head[:100] + ("; src/ has uncommitted changes" if dirty else "; src/ clean")


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "n/a"
    if ns >= 10_000:
        return f"{ns / 1000:,.1f} us".replace(",", " ")
    return f"{ns:,.0f} ns".replace(",", " ")


def fmt_x(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "MET" if ok else "MISSED"


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.by: dict[tuple[str, str], dict[str, Any]] = {}
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            key = info.get("case") or bench.get("param") or bench["name"]
            self.by[(bench["group"], key)] = bench

    def get(self, group: str, cid: str) -> dict[str, Any] | None:
        return self.by.get((group, cid))

    def ns(self, group: str, cid: str) -> float | None:
        bench = self.get(group, cid)
        if bench is None or "inner_loops" not in bench["extra_info"]:
            return None
        return float(bench["stats"]["median"]) / bench["extra_info"]["inner_loops"] * 1e9

    def iqr_ns(self, group: str, cid: str) -> float | None:
        bench = self.get(group, cid)
        if bench is None or "inner_loops" not in bench["extra_info"]:
            return None
        return float(bench["stats"]["iqr"]) / bench["extra_info"]["inner_loops"] * 1e9

    def paired(self, group: str, cid: str, reference: str) -> float | None:
        """Median over back-to-back rounds of (case / ``reference``) per call, if measured."""
        bench = self.get(group, cid)
        if bench is None:
            return None
        value = bench["extra_info"].get("paired", {}).get(reference)
        return None if value is None else float(value)

    def ref(self, group: str, cid: str) -> float | None:
        """Mean of the baseline ``cid`` measured at the group's start and (if present) at its end."""
        values = [v for v in (self.ns(group, cid), self.ns(group, cid + "-end")) if v is not None]
        return statistics.fmean(values) if values else None

    def drift(self, group: str, cid: str) -> str:
        start, end = self.ns(group, cid), self.ns(group, cid + "-end")
        if start is None or end is None:
            return "n/a"
        return f"{(end - start) / start * 100:+.0f}% ({fmt_ns(start)} -> {fmt_ns(end)})"

    def ratio(self, group: str, cid: str, ref: float | None) -> float | None:
        ns = self.ns(group, cid)
        return None if ns is None or ref is None else ns / ref


def cell(res: Results, group: str, cid: str, reference: str = "bare") -> str:
    ns = res.ns(group, cid)
    if ns is None:
        return "n/a"
    return f"{fmt_ns(ns)} ({fmt_x(res.paired(group, cid, reference))})"


def two_thread_ratio(res: Results, cid: str) -> float | None:
    bench = res.get("two-threads", cid)
    return None if bench is None else float(bench["extra_info"]["ratio_median"])


# --groups: each group's test function in the suite (selected with pytest's -k).
GROUP_TESTS = {
    "success": "test_success",
    "failure-closed": "test_failure_closed",
    "open-rejected": "test_open_rejected",
    "thread-isolation": "test_thread_isolation",
    "decorator": "test_decorator",
    "asyncio": "test_asyncio",
    "two-threads": "test_two_threads",
    "memory": "test_memory",
}


def run_suite(quick: bool, json_path: Path, log_path: Path, groups: list[str] | None = None) -> int:
    """Run the suite twice, merging the results into ``json_path``: once in a process running the
    compiled implementation (with the peers and the bare baselines), then the pure twin's cases
    in a process of their own (the implementation is chosen once per process, at import)."""
    selection = " or ".join(GROUP_TESTS[g] for g in groups) if groups else ""
    compiled_json = json_path.with_name(json_path.stem + "-compiled.json")
    pure_json = json_path.with_name(json_path.stem + "-pure.json")
    with open(log_path, "w") as log:
        rc = _pytest(quick, compiled_json, selection, {"FASTHYSTRIX_NO_EXTENSIONS": "0"}, log)
        pure_selection = f"({selection}) and pure" if selection else "pure"
        rc_pure = _pytest(quick, pure_json, pure_selection, {"FASTHYSTRIX_NO_EXTENSIONS": "1"}, log)
    merged: dict[str, Any] | None = None
    for part in (compiled_json, pure_json):
        if not part.exists() or part.stat().st_size == 0:  # pytest-benchmark opens it at start
            continue
        data = json.loads(part.read_text())
        if merged is None:
            merged = data
        else:
            merged["benchmarks"].extend(data["benchmarks"])
        part.unlink()
    if merged is not None:
        json_path.write_text(json.dumps(merged))
    return rc or rc_pure


def _pytest(quick: bool, json_path: Path, selection: str, env: dict[str, str], log: Any) -> int:
    args = [
        sys.executable,
        "-m",
        "pytest",
        str(SUITE),
        "-p",
        "no:cacheprovider",
        "--benchmark-disable-gc",
        f"--benchmark-json={json_path}",
        f"--benchmark-max-time={0.1 if quick else 1.0}",
        "--benchmark-min-rounds=5",
        "-q",
        # When every case errors, pytest-benchmark warns "Not saving anything" as the session ends, and
        # the project's filterwarnings = error made that a traceback in place of pytest's error summary.
        "-W",
        "ignore:Not saving anything:pytest_benchmark.logger.PytestBenchmarkWarning",
    ]
    if selection:
        args += ["-k", selection]
    full_env = dict(os.environ, FASTHYSTRIX_BENCH_QUICK="1" if quick else "0", **env)
    log.flush()
    return subprocess.run(args, env=full_env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short rounds (about 20 s); noisier")
    parser.add_argument(
        "--groups",
        type=lambda text: [g.strip() for g in text.split(",") if g.strip()],
        help=f"run only these comma-separated groups ({', '.join(GROUP_TESTS)}); the others report n/a",
    )
    parser.add_argument("--json", type=Path, help="keep pytest-benchmark's JSON here (default: a temp file)")
    parser.add_argument("--from-json", type=Path, help="print the report of an earlier run's JSON, run nothing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups or ()) - set(GROUP_TESTS))
    if unknown:
        parser.error(f"unknown group(s): {', '.join(unknown)}")

    if args.from_json:
        data = json.loads(args.from_json.read_text())
        run = data.get("compare_run", {})
        rc, log_path = 0, None
    else:
        started = time.time()
        # The source is read before the run: another session may change src/ while it runs.
        run = {"load_start": loadavg(), "source": source_state(), "quick": args.quick, "groups": args.groups}
        tmp = Path(tempfile.mkdtemp(prefix="fasthystrix-bench-"))
        json_path = args.json or tmp / "bench.json"
        log_path = tmp / "pytest.log"
        print(f"running {SUITE.relative_to(HERE.parent)} ({'quick' if args.quick else 'full'}); log: {log_path}")
        sys.stdout.flush()
        rc = run_suite(args.quick, json_path, log_path, args.groups)
        if not json_path.exists() or json_path.stat().st_size == 0:  # pytest-benchmark opens it at start
            print(f"pytest exited with {rc} and wrote no JSON; see {log_path}:")
            print("\n".join(log_path.read_text().splitlines()[-40:]))
            return 2
        data = json.loads(json_path.read_text())
        run.update(load_end=loadavg(), elapsed=time.time() - started, exit_code=rc)
        data["compare_run"] = run
        json_path.write_text(json.dumps(data, indent=2))
    report(Results(data), data, run, rc, log_path)
    return 0 if rc == 0 else 1


def report(res: Results, data: dict[str, Any], run: dict[str, Any], rc: int, log_path: Path | None) -> None:
    import fasthystrix

    machine = data.get("machine_info", {})
    print()
    print("fasthystrix benchmarks")
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.executable}); "
        f"fasthystrix {fasthystrix.__version__}, default implementation {fasthystrix.implementation!r}"
    )
    print(f"machine: {cpu_model()}, nproc {nproc()}, {platform.machine()} {platform.system()} {platform.release()}")
    load_start, load_end = run.get("load_start", "n/a"), run.get("load_end", "n/a")
    print(f"loadavg at start {load_start}, at end {load_end} (2-core shared machine: wall-clock is noisy)")
    print(f"source: {run.get('source', 'not recorded')}")
    busy = max((float(x.split()[0]) for x in (load_start, load_end) if x != "n/a"), default=0.0)
    if busy > 1.5:
        print(
            f"WARNING: 1-minute load average {busy:.2f} > 1.5: another workload holds a core. The thread rows "
            "(two-threads, thread-isolation) need both cores and are not representative; rerun when quiet."
        )
    versions = []
    for dist in ("pytest-benchmark", "pybreaker", "circuitbreaker", "purgatory", "aiobreaker"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    print("versions: " + ", ".join(versions))
    print(
        f"mode: {'quick' if run.get('quick') else 'full'}"
        + (f", groups {', '.join(run['groups'])}" if run.get("groups") else "")
        + f"; run took {run.get('elapsed', 0):.0f} s; "
        f"pytest exit code {run.get('exit_code', rc)}"
        + (f" (log {log_path})" if log_path else "")
        + f"; pytest-benchmark machine_info cpu: {machine.get('cpu', {}).get('brand_raw', '?')}"
    )
    print(
        "method: ns/call = pytest-benchmark's median round / inner loop count; ratio = median over back-to-back "
        "rounds of (case / reference) per call (a paired median; the plain median ratio is in brackets in the "
        "row list); GC disabled in timed loops"
    )

    checks: list[tuple[str, bool | None]] = []

    def check(text: str, value: float | None, limit: float, at_least: bool = False, info: bool = False) -> str:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        checks.append((text, None if info else ok))
        return verdict(ok)

    # -- the issue's table ------------------------------------------------------------------------
    print()
    print("| path | pybreaker | circuitbreaker | purgatory | fasthystrix compiled | fasthystrix pure | target |")
    print("|---|---|---|---|---|---|---|")

    g = "success"
    x_c, x_p = res.paired(g, "fasthystrix-compiled", "bare"), res.paired(g, "fasthystrix-pure", "bare")
    v_c = check(f"success, compiled semaphore do() <= 5x a bare call: {fmt_x(x_c)}", x_c, TARGETS["success"])
    v_p = check(f"success, pure do() <= 15x a bare call: {fmt_x(x_p)}", x_p, TARGETS["success-pure"])
    print(
        f"| success | {cell(res, g, 'pybreaker')} | {cell(res, g, 'circuitbreaker')} | {cell(res, g, 'purgatory')} | "
        f"{cell(res, g, 'fasthystrix-compiled')} | {cell(res, g, 'fasthystrix-pure')} | "
        f"compiled <= 5x: {v_c}; pure <= 15x: {v_p} |"
    )

    g = "failure-closed"
    y_c = res.paired(g, "fasthystrix-compiled", "raise-catch")
    y_p = res.paired(g, "fasthystrix-pure", "raise-catch")
    v_c = check(f"failure (closed), compiled <= 1.5x a bare raise-and-catch: {fmt_x(y_c)}", y_c, TARGETS[g])
    check(f"failure (closed), pure vs a bare raise-and-catch (no pure target): {fmt_x(y_p)}", y_p, 1.5, info=True)
    print(
        f"| failure, still closed | {cell(res, g, 'pybreaker')} | {cell(res, g, 'circuitbreaker')} | "
        f"{cell(res, g, 'purgatory')} | {cell(res, g, 'fasthystrix-compiled')}, {fmt_x(y_c)} raise+catch | "
        f"{cell(res, g, 'fasthystrix-pure')}, {fmt_x(y_p)} raise+catch | compiled <= 1.5x raise+catch: {v_c} |"
    )

    g = "open-rejected"
    z_c = res.paired(g, "fasthystrix-compiled", "bare")
    v_c = check(f"open (rejected), compiled with a fallback <= 8x a bare call: {fmt_x(z_c)}", z_c, TARGETS[g])
    z_t = res.paired(g, "fasthystrix-compiled-thread", "bare")
    text = f"open (rejected), compiled thread isolation with a fallback <= 8x a bare call: {fmt_x(z_t)}"
    check(text, z_t, TARGETS[g])
    print(
        f"| circuit open (rejected) | {cell(res, g, 'pybreaker')} | {cell(res, g, 'circuitbreaker')} | "
        f"{cell(res, g, 'purgatory')} | {cell(res, g, 'fasthystrix-compiled')} with fallback | "
        f"{cell(res, g, 'fasthystrix-pure')} with fallback | compiled, with fallback, <= 8x: {v_c} |"
    )

    def rr(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    r = {cid: two_thread_ratio(res, cid) for cid in ("pybreaker", "circuitbreaker", "purgatory")}
    r_c, r_p = two_thread_ratio(res, "fasthystrix-compiled"), two_thread_ratio(res, "fasthystrix-pure")
    v_c = check(f"two threads vs one, compiled >= 0.95: {rr(r_c)}", r_c, TARGETS["two-threads"], at_least=True)
    check(f"two threads vs one, pure (info): {rr(r_p)}", r_p, TARGETS["two-threads"], at_least=True, info=True)
    print(
        f"| two threads vs one, same breaker | {rr(r['pybreaker'])} | {rr(r['circuitbreaker'])} | "
        f"{rr(r['purgatory'])} | {rr(r_c)} | {rr(r_p)} | compiled >= 0.95: {v_c} |"
    )
    print()
    print(
        "cells: ns per call (paired-median ratio to a bare call of ok()). Peers' failure/open rows: try/except "
        "around the call, no fallback; fasthystrix's open row: do(name, ok, lambda err: 0) on a forced-open "
        "circuit. Two threads: ns/call with 1 thread / ns/call with 2 threads (throughput ratio), median of "
        "paired rounds. Every call is timed as written (do(name, ok), breaker.call(ok)), not through "
        "functools.partial."
    )
    print(
        "cross-check, the form of runs before 2026-11-27: compiled functools.partial(do, name, ok)(): "
        f"{cell(res, 'success', 'fasthystrix-compiled-partial')} (no target)"
    )
    print("the issue's peer figures (an Intel Xeon run), for scale:")
    for g, figures in ISSUE_PEERS.items():
        print(f"  {g}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))

    # -- asyncio and the decorator ------------------------------------------------------------------
    print()
    print("asyncio (paired ratios; do_async enforces its timeout, the peers enforce none):")
    g = "asyncio"
    for impl in ("compiled", "pure"):
        cid = f"fasthystrix-{impl}"
        x = res.paired(g, cid, "asyncio-timeout")
        text = f"asyncio, {impl} do_async <= 0.5x `async with asyncio.timeout(1.0)`: {fmt_x(x)}"
        v = check(text + ("" if impl == "compiled" else " (info)"), x, TARGETS[g], info=impl == "pure")
        print(
            f"  fasthystrix {impl} do_async: {fmt_ns(res.ns(g, cid))}, {fmt_x(x)} asyncio.timeout() ({v}), "
            f"{fmt_x(res.paired(g, cid, 'bare-await'))} a bare await"
        )
    for cid in ("asyncio-timeout", "aiobreaker", "circuitbreaker"):
        print(f"  {cid}: {fmt_ns(res.ns(g, cid))}, {fmt_x(res.paired(g, cid, 'bare-await'))} a bare await")
    print("decorator (paired ratios to the do() call it replaces, same implementation, semaphore isolation):")
    g = "decorator"
    for impl in ("compiled", "pure"):
        for cid, ref, what in (
            (f"decorated-{impl}", "do", "@command ok() vs do(name, ok)"),
            (f"decorated-arg-{impl}", "do-closure", "@command echo(7) vs do(name, lambda: echo(7))"),
        ):
            x = res.paired(g, cid, ref)
            text = f"decorator, {impl} {what} <= 1.3x: {fmt_x(x)}"
            v = check(text + ("" if impl == "compiled" else " (info)"), x, TARGETS[g], info=impl == "pure")
            print(f"  {impl} {what}: {fmt_ns(res.ns(g, cid))}, {fmt_x(x)} ({v})")

    # -- thread isolation --------------------------------------------------------------------------
    g = "thread-isolation"
    tpe = {n: res.ref(g, f"baseline-tpe{n}") for n in (1, 2, 4)}
    known = {n: v for n, v in tpe.items() if v is not None}
    fastest_n, fastest = min(known.items(), key=lambda kv: kv[1]) if known else (0, None)
    print()
    print("thread isolation (target: paired ratio to ThreadPoolExecutor(1).submit(ok).result() <= 0.35x):")
    for n, v in tpe.items():
        print(f"  ThreadPoolExecutor({n}).submit(ok).result(): {fmt_ns(v)}")
    print(f"  ThreadPoolExecutor(1) drift over the group: {res.drift(g, 'baseline-tpe1')}")
    for impl in ("compiled", "pure"):
        for suffix, what in (("", "do()"), ("-go", "go().result()")):
            cid = f"fasthystrix-{impl}{suffix}"
            x = res.paired(g, cid, "tpe")
            text = f"thread isolation, {impl} {what} <= 0.35x ThreadPoolExecutor(1): {fmt_x(x)}"
            v = check(text + ("" if impl == "compiled" else " (info)"), x, TARGETS[g], info=impl == "pure")
            print(
                f"  fasthystrix {impl} {what}, isolation='thread': {fmt_ns(res.ns(g, cid))}, paired {fmt_x(x)} "
                f"ThreadPoolExecutor(1) ({v}); median ratio to the fastest executor, "
                f"ThreadPoolExecutor({fastest_n}): {fmt_x(res.ratio(g, cid, fastest))}"
            )

    # -- two threads, details -----------------------------------------------------------------------
    print()
    print("two threads vs one (one shared breaker; ns per call = wall / total calls; median of paired rounds):")
    for bench in [b for b in data["benchmarks"] if b["group"] == "two-threads"]:
        info = bench["extra_info"]
        print(
            f"  {info['label']}: 1 thread {fmt_ns(statistics.median(info['one_thread_ns']))}, "
            f"2 threads {fmt_ns(statistics.median(info['two_threads_ns']))}, ratio {info['ratio_median']:.2f} "
            f"(rounds {', '.join(f'{x:.2f}' for x in info['ratios'])}; {info['calls_per_thread']} calls/thread)"
        )

    # -- memory -------------------------------------------------------------------------------------------
    print()
    for impl in ("compiled", "pure"):
        bench = res.get("memory", impl)
        if bench is None:
            print(f"memory, {impl}: n/a")
            continue
        info = bench["extra_info"]
        traced, hist = info["tracemalloc_circuit_bytes"], info["rolling_memory_bytes"]
        # tracemalloc traces the histograms too (PyMem_RawCalloc is traced) when the first call's growth covers
        # them; then memory_bytes() is already in ``traced`` and adding it would count it twice.
        seen = info.get("first_call_bytes", 0) >= info.get("first_slot_histogram_bytes", hist) > 0
        footprint = traced if seen else traced + hist
        text = f"memory, {impl} circuit after {info['calls'] - 1:,} calls <= 64 KiB: {footprint / 1024:.1f} KiB"
        v = check(text + ("" if impl == "compiled" else " (info)"), footprint, TARGETS["memory"], info=impl == "pure")
        print(
            f"memory, {impl}: one circuit after {info['calls']:,} successful do() calls: {footprint / 1024:.1f} KiB "
            f"(target <= 64 KiB: {v}). tracemalloc {traced:,} B (the circuit created and called under it; growth "
            f"over the calls alone {info['tracemalloc_growth_over_calls_bytes']:+,} B); "
            f"_rolling.memory_bytes() {hist:,} B, "
            + (
                f"already in tracemalloc's figure (the first call grew it by {info['first_call_bytes']:,} B); "
                f"tracemalloc + memory_bytes() = {(traced + hist) / 1024:.1f} KiB counts them twice"
                if seen
                else "not seen by tracemalloc, added"
            )
        )
        if "all_slots_histogram_bytes" in info:
            # The run lasts seconds, so only one or two of the 15-second latency slots get allocated;
            # a circuit in use for a minute holds all of them.
            steady = footprint - hist + info["all_slots_histogram_bytes"]
            print(
                f"  {impl}, once every latency slot is allocated (after a minute of traffic): "
                f"{steady / 1024:.1f} KiB (histograms {info['all_slots_histogram_bytes']:,} B)"
            )

    # -- every row ---------------------------------------------------------------------------------------
    bare = {g: res.ref(g, "baseline") for g in ("success", "open-rejected", "asyncio")}
    bare["failure-closed"] = res.ns("failure-closed", "baseline-call")
    raise_catch = {
        "failure-closed": res.ref("failure-closed", "baseline"),
        "open-rejected": res.ref("open-rejected", "baseline-raise"),
    }
    print()
    print(
        "every row: ns per call +- IQR/inner loops; paired-median ratios; in brackets the plain median ratio "
        "to the group's baseline (mean of its start and end medians):"
    )
    for g in ("success", "failure-closed", "open-rejected", "thread-isolation", "asyncio"):
        rows = [b for b in data["benchmarks"] if b["group"] == g]
        if not rows:
            continue
        if g == "thread-isolation":
            plain = [("tpe", "tpe", res.ref(g, "baseline-tpe1"))]
        elif g == "asyncio":
            plain = [("bare await", "bare-await", bare[g])]
        elif g == "success":
            plain = [("bare", "bare", bare[g])]
        else:
            plain = [("bare", "bare", bare[g]), ("raise+catch", "raise-catch", raise_catch[g])]
        drift = res.drift(g, "baseline" if g != "thread-isolation" else "baseline-tpe1")
        print(f"  [{g}] baseline drift start->end: {drift}")
        for bench in rows:
            info = bench["extra_info"]
            cid = info["case"]
            ratios = "  ".join(
                f"{fmt_x(res.paired(g, cid, key))} [{fmt_x(res.ratio(g, cid, base))}] {name}"
                for name, key, base in plain
            )
            print(f"    {info['label']:<70} {fmt_ns(res.ns(g, cid)):>9} +-{fmt_ns(res.iqr_ns(g, cid)):>8}  {ratios}")

    # -- targets ---------------------------------------------------------------------------------------------
    print()
    print("targets (issue 11's performance section; ratios are paired medians):")
    for text, ok in checks:
        mark = {True: "[MET]   ", False: "[MISSED]", None: "[info]  "}[ok]
        print(f"  {mark} {text}")
    met = sum(1 for _, ok in checks if ok is True)
    missed = sum(1 for _, ok in checks if ok is False)
    print(f"  {met} met, {missed} missed")


if __name__ == "__main__":
    sys.exit(main())
