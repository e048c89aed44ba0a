"""The process survives flush(), reconfiguration and shutdown racing every way of running a command.

Each case runs in a subprocess of its own, so that a crash (a segfault from a freed circuit, an abort)
fails the test instead of killing the test runner. The first two cases are the reports that found the
freed-circuit crash; the others are the same race through every other entry point: thread isolation,
``go()``, ``do_async``, the decorator, metric collectors and state listeners, and daemon threads still
calling at interpreter exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import asyncio, sys, threading, time
import fasthystrix
from fasthystrix import CommandConfig, do
"""

CASES = {
    # The first report: four threads call do() while the main thread flushes and reconfigures.
    "threads-flush-reconfigure-semaphore": """
        fasthystrix.configure_command("x", CommandConfig(isolation="semaphore"))
        stop = False
        def worker():
            while not stop:
                do("x", lambda: time.sleep(0.0001) or 1)
        ts = [threading.Thread(target=worker) for _ in range(4)]; [t.start() for t in ts]
        for _ in range(100):
            time.sleep(0.002); fasthystrix.flush()
            fasthystrix.configure_command("x", CommandConfig(isolation="semaphore"))
        stop = True; [t.join() for t in ts]
    """,
    "threads-flush-reconfigure-thread": """
        fasthystrix.configure_command("x", CommandConfig(isolation="thread", timeout=5000))
        stop = False
        def worker():
            while not stop:
                do("x", lambda: time.sleep(0.0001) or 1, lambda err: 0)
        ts = [threading.Thread(target=worker) for _ in range(4)]; [t.start() for t in ts]
        for _ in range(60):
            time.sleep(0.003); fasthystrix.flush()
            fasthystrix.configure_command("x", CommandConfig(isolation="thread", timeout=5000))
        stop = True; [t.join() for t in ts]
    """,
    # The second report: run() itself flushes, so the call's circuit loses its last table reference.
    "flush-inside-run-semaphore": """
        fasthystrix.configure_command("x", CommandConfig(isolation="semaphore"))
        for _ in range(50):
            assert do("x", lambda: fasthystrix.flush() or 1) == 1
        assert do("x", lambda: 2) == 2
    """,
    "flush-inside-run-thread": """
        for _ in range(30):
            assert do("x", lambda: fasthystrix.flush() or 1) == 1
    """,
    "flush-inside-failing-run-and-fallback": """
        fasthystrix.configure_command("x", CommandConfig(isolation="semaphore"))
        def run():
            fasthystrix.flush()
            raise ValueError("down")
        def fallback(err):
            fasthystrix.flush()
            return 5
        for _ in range(50):
            assert do("x", run, fallback) == 5
            try:
                do("x", run)
            except ValueError:
                pass
            else:
                raise AssertionError("run's error was lost")
    """,
    "reconfigure-inside-run": """
        def run():
            fasthystrix.configure_command("x", CommandConfig(isolation="thread", max_concurrent_requests=3))
            fasthystrix.flush()
            fasthystrix.configure_command("x", CommandConfig(isolation="semaphore", timeout=1))
            return 1
        fasthystrix.configure_command("x", CommandConfig(isolation="semaphore"))
        for _ in range(50):
            do("x", run, lambda err: 1)
    """,
    "go-flush": """
        fasthystrix.configure_command("x", CommandConfig(timeout=60_000))
        futures = [fasthystrix.go("x", lambda: fasthystrix.flush() or 1) for _ in range(30)]
        assert [f.result(120) for f in futures] == [1] * 30
        stop = False
        def worker():
            while not stop:
                fasthystrix.go("y", lambda: 1, lambda err: 0).result(30)
        ts = [threading.Thread(target=worker) for _ in range(3)]; [t.start() for t in ts]
        for _ in range(60):
            time.sleep(0.003); fasthystrix.flush()
        stop = True; [t.join() for t in ts]
    """,
    "do-async-flush": """
        async def run():
            fasthystrix.flush()
            await asyncio.sleep(0)
            return 1
        async def main():
            for _ in range(30):
                assert await fasthystrix.do_async("x", run) == 1
            results = await asyncio.gather(*(fasthystrix.do_async("y", run, lambda err: 0) for _ in range(30)))
            assert len(results) == 30
        asyncio.run(main())
    """,
    "decorator-flush": """
        fasthystrix.configure_command("d", CommandConfig(isolation="semaphore"))
        @fasthystrix.command("d")
        def flushing(x):
            fasthystrix.flush()
            return x
        @fasthystrix.command("d", fallback=lambda x, *, err: -x)
        def failing(x):
            fasthystrix.flush()
            raise ValueError(x)
        for i in range(50):
            assert flushing(i) == i
            assert failing(i) == -i
        stop = False
        def worker():
            while not stop:
                flushing(1)
        ts = [threading.Thread(target=worker) for _ in range(3)]; [t.start() for t in ts]
        for _ in range(60):
            time.sleep(0.002); fasthystrix.flush()
            fasthystrix.configure_command("d", CommandConfig(isolation="semaphore"))
        stop = True; [t.join() for t in ts]
    """,
    "collector-flushes": """
        class Flushing:
            def update(self, result):
                fasthystrix.flush()
            def reset(self):
                pass
        fasthystrix.metric_collector.registry.register(lambda name: Flushing())
        fasthystrix.configure_command("x", CommandConfig(isolation="semaphore"))
        for _ in range(50):
            assert do("x", lambda: 1) == 1
            assert do("x", lambda: 1 / 0, lambda err: 2) == 2
    """,
    "listener-flushes": """
        fasthystrix.on_state_change(lambda name, old, new: fasthystrix.flush())
        fasthystrix.configure_command(
            "x", CommandConfig(isolation="semaphore", request_volume_threshold=1, error_percent_threshold=1)
        )
        for _ in range(50):
            do("x", lambda: 1 / 0, lambda err: 0)
            fasthystrix.get_circuit("x")[0].force_open = True
            do("x", lambda: 1, lambda err: 0)
    """,
    # Daemon threads still calling while the interpreter tears its modules down.
    "calls-during-shutdown": """
        fasthystrix.configure_command("s", CommandConfig(isolation="semaphore"))
        def worker(name):
            while True:
                try:
                    do(name, lambda: 1, lambda err: 0)
                except BaseException:
                    pass
        for name in ("s", "t"):
            for _ in range(2):
                threading.Thread(target=worker, args=(name,), daemon=True).start()
        time.sleep(0.05)
    """,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_process_survives(case: str, impl: str) -> None:
    env = dict(os.environ)
    if impl == "pure":
        env["FASTHYSTRIX_NO_EXTENSIONS"] = "1"
    script = PRELUDE + textwrap.dedent(CASES[case]) + "\nsys.stdout.write(fasthystrix.implementation + ' ok')\n"
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stderr[-4000:]}"
    assert done.stdout.endswith(f"{impl} ok"), done.stdout
