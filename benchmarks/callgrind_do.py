"""Run N calls of one fasthystrix path, for counting instructions with valgrind's callgrind.

    python benchmarks/callgrind_do.py PATH N [--impl compiled|pure]
    python benchmarks/callgrind_do.py PATH N --measure [--impl ...]   # runs valgrind itself
    python benchmarks/callgrind_do.py PATH N --measure --config '{"half_open_max_calls": 5}'

PATH is one of: bare, raise-catch, success, failure, failure-fallback, open-fallback, open-raise,
open-fallback-thread (the open circuit in thread isolation), success-thread (the hand-off to a
worker thread and back; valgrind runs one thread at a time, so this counts the work of both sides),
success-outcomes (success with ``ignore`` and ``is_failure`` set, the predicate a C function: what
the check itself costs), success-outcomes-def (the same with a predicate written in Python: plus one
Python call), async-bare (``await`` of a coroutine function that returns at once, in one task of
asyncio's loop) and async-success (the same awaited through ``do_async``, its timeout enforced).
The set-up (implementation, configuration, circuit creation and WARMUP calls) is the same whatever
N is, so instructions(N) - instructions(0) is the cost of N calls alone. ``--measure`` runs

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=<tmp> python callgrind_do.py PATH n

for n = 0 and n = N and prints the difference per call (Ir = instructions executed). Wall-clock
timing on a shared 2-core machine is noisy; instruction counts are not, so use them to compare two
versions of the hot path (run the same command on each version and compare the per-call Ir).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import operator
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATHS = (
    "bare",
    "raise-catch",
    "success",
    "failure",
    "failure-fallback",
    "open-fallback",
    "open-raise",
    "open-fallback-thread",
    "success-thread",
    "success-outcomes",
    "success-outcomes-def",
    "async-bare",
    "async-success",
)
WARMUP = 2000


def ok() -> int:
    return 1


def fail() -> None:
    raise ValueError


async def anoop() -> int:
    return 1


def never(result: object) -> bool:
    return False


def caught(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            call()
        except Exception:
            pass

    return run


def build(path: str, impl: str) -> Callable[[], object]:
    if path == "bare":
        return ok
    if path == "raise-catch":
        return caught(fail)
    if path == "async-bare":
        return anoop
    import fasthystrix

    fasthystrix.flush()
    name = f"callgrind-{path}"
    # --config: more CommandConfig fields (what a circuit using them costs), through the environment.
    extra = json.loads(os.environ.get("FASTHYSTRIX_CALLGRIND_CONFIG") or "{}")
    fasthystrix.configure_command(
        name,
        fasthystrix.CommandConfig(
            **{
                "isolation": "thread" if path.endswith("-thread") else "semaphore",
                "max_concurrent_requests": 10**6,
                "request_volume_threshold": 10**9,
                **(
                    {"ignore": KeyError, "is_failure": never if path.endswith("-def") else operator.not_}
                    if path.startswith("success-outcomes")
                    else {}
                ),
                **extra,
            }
        ),
    )
    circuit = fasthystrix.get_circuit(name)[0]
    assert fasthystrix.implementation == impl, fasthystrix.implementation
    do = fasthystrix.do
    if path == "async-success":
        return functools.partial(fasthystrix.do_async, name, anoop)
    if path.startswith("success"):
        return functools.partial(do, name, ok)
    if path == "failure":
        return caught(functools.partial(do, name, fail))
    if path == "failure-fallback":
        return functools.partial(do, name, fail, lambda err: 0)
    circuit.force_open = True
    if path in ("open-fallback", "open-fallback-thread"):
        return functools.partial(do, name, ok, lambda err: 0)
    if path == "open-raise":
        return caught(functools.partial(do, name, ok))
    raise ValueError(f"unknown path {path!r}; one of {', '.join(PATHS)}")


def run(path: str, n: int, impl: str) -> None:
    f = build(path, impl)
    if path.startswith("async-"):
        run_async(f, n)
        return
    for _ in itertools.repeat(None, WARMUP):
        f()
    for _ in itertools.repeat(None, n):
        f()


def run_async(f: Callable[[], Any], n: int) -> None:
    """Await ``f()`` in one task of asyncio's own event loop, after the warm-up calls, ``n`` times."""
    import asyncio

    async def calls() -> None:
        for _ in itertools.repeat(None, WARMUP):
            await f()
        for _ in itertools.repeat(None, n):
            await f()

    asyncio.run(calls())


def collected(path: str, n: int, impl: str) -> tuple[int, dict[str, int]]:
    """Instructions callgrind counts for a whole run of this script with ``n`` calls, and per function."""
    with tempfile.TemporaryDirectory(prefix="fasthystrix-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(Path(__file__).resolve()),
            path,
            str(n),
            "--impl",
            impl,
        ]
        # The implementation is chosen once per process, at import: ask for it in the environment.
        env = dict(os.environ, PYTHONHASHSEED="0", FASTHYSTRIX_NO_EXTENSIONS="1" if impl == "pure" else "0")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        match = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"valgrind failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return int(match.group(1)), per_function(out)


def per_function(out: Path) -> dict[str, int]:
    """Self instructions per function, from ``callgrind_annotate`` (empty if it is missing)."""
    try:
        text = subprocess.run(
            ["callgrind_annotate", "--auto=no", "--inclusive=no", "--threshold=100", str(out)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return {}
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(\S+?:\S+)\s+\[", line)
        if match and "PROGRAM TOTALS" not in line:
            name = match.group(2).rsplit("/", 1)[-1]
            found[name] = found.get(name, 0) + int(match.group(1).replace(",", ""))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", choices=PATHS)
    parser.add_argument("n", type=int, nargs="?", default=100_000)
    parser.add_argument("--impl", choices=("compiled", "pure"), default="compiled")
    parser.add_argument("--measure", action="store_true", help="run under callgrind for 0 and N calls, print Ir/call")
    parser.add_argument("--top", type=int, default=12, help="with --measure: functions to list (self Ir per call)")
    parser.add_argument("--config", default="", help="JSON object of more CommandConfig fields for the command")
    args = parser.parse_args(argv)
    if args.config:
        json.loads(args.config)  # a bad one fails here, not inside valgrind
        os.environ["FASTHYSTRIX_CALLGRIND_CONFIG"] = args.config
    if not args.measure:
        run(args.path, args.n, args.impl)
        return 0
    base, base_functions = collected(args.path, 0, args.impl)
    total, functions = collected(args.path, args.n, args.impl)
    impl = "" if args.path in ("bare", "raise-catch", "async-bare") else f" ({args.impl})"
    print(
        f"{args.path}{impl}: {(total - base) / args.n:,.1f} instructions per call "
        f"({total:,} Ir with {args.n:,} calls, {base:,} Ir with 0; Python {sys.version.split()[0]})"
    )
    per_call = {k: (v - base_functions.get(k, 0)) / args.n for k, v in functions.items()}
    for name, ir in sorted(per_call.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ir:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
