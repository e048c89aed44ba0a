"""What sharing a circuit between processes costs: one process, two processes, and a real server.

    python benchmarks/shared_circuits.py                  # all three, about 2 minutes
    python benchmarks/shared_circuits.py --only single    # or: contention, server

- ``single``: the success path of ``do()`` in one process, semaphore isolation, on a private
  circuit and on a shared one, in interleaved rounds; the ratio shared / private (the issue's
  target: at most 1.5x).
- ``contention``: calls per second of one process alone on a shared circuit, then of each of two
  processes calling the same shared circuit at the same time (target: each keeps at least 0.8x),
  with two processes on two private circuits beside it as the machine's own scaling (two cores
  shared with whatever else runs here).
- ``server``: gunicorn ``-w 2`` serving a route that runs one command, with and without sharing,
  under ``wrk`` (if installed), alternating; requests per second and their ratio (target: within 3%).

Ratios from one run on one machine, never absolute times alone: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROUNDS = 7
CALLS = 200_000

_SINGLE = textwrap.dedent(
    """
    import os, sys, time
    import fasthystrix
    if sys.argv[1] == "shared":
        fasthystrix.share_circuits(sys.argv[2])
    fasthystrix.configure_command("c", {"isolation": "semaphore", "max_concurrent_requests": 10**6,
                                        "request_volume_threshold": 10**9})
    do = fasthystrix.do
    def ok():
        return 1
    for _ in range(10000):
        do("c", ok)
    n = int(sys.argv[3])
    t = time.perf_counter_ns()
    for _ in range(n):
        do("c", ok)
    print((time.perf_counter_ns() - t) / n)
    """
)

_LOOP = textwrap.dedent(
    """
    import os, sys, time
    import fasthystrix
    fasthystrix.share_circuits(sys.argv[1])
    name = sys.argv[2]
    fasthystrix.configure_command(name, {"isolation": "semaphore", "max_concurrent_requests": 10**6,
                                         "request_volume_threshold": 10**9})
    do = fasthystrix.do
    def ok():
        return 1
    for _ in range(10000):
        do(name, ok)
    start_at = float(sys.argv[3])
    while time.time() < start_at:
        time.sleep(0.001)
    n = 0
    end = time.perf_counter() + float(sys.argv[4])
    while time.perf_counter() < end:
        for _ in range(1000):
            do(name, ok)
        n += 1000
    print(n / float(sys.argv[4]))
    """
)


def single() -> float:
    """Median ns per success ``do()`` on a private and on a shared circuit; prints the ratio."""
    private, shared = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(ROUNDS):
            for kind, out in (("private", private), ("shared", shared))[:: 1 if i % 2 else -1]:
                run = [sys.executable, "-c", _SINGLE, kind, os.path.join(d, f"r{i}"), str(CALLS)]
                out.append(float(subprocess.run(run, capture_output=True, text=True, check=True).stdout))
    p, s = statistics.median(private), statistics.median(shared)
    print(f"single process, success do(): private {p:.0f} ns, shared {s:.0f} ns per call "
          f"(medians of {ROUNDS} interleaved rounds of {CALLS:,} calls)")  # fmt: skip
    print(f"  shared / private = {s / p:.2f}x   (target <= 1.5x: {'met' if s / p <= 1.5 else 'MISSED'})")
    return s / p


def _rates(d: str, names: list[str], seconds: float) -> list[float]:
    start_at = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LOOP, d, name, str(start_at), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        for name in names
    ]
    return [float(p.communicate()[0]) for p in procs]


def contention(seconds: float = 3.0) -> float:
    """Calls/s of each of two processes on one shared circuit, against one process alone."""
    alone, together, control = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(3):
            alone += _rates(d, ["one"], seconds)
            together += _rates(d, ["one", "one"], seconds)
            control += _rates(d, ["a", "b"], seconds)
    a = statistics.median(alone)
    t = statistics.median(together)
    c = statistics.median(control)
    print(f"contention: one process alone {a:,.0f} calls/s; two processes on one shared circuit "
          f"{t:,.0f} calls/s each; two on two circuits {c:,.0f} calls/s each "
          f"(medians of 3 rounds of {seconds:g} s)")  # fmt: skip
    print(f"  each of two / alone = {t / a:.2f}x   (target >= 0.8x: {'met' if t / a >= 0.8 else 'MISSED'}); "
          f"two on two circuits / alone = {c / a:.2f}x (the machine's own scaling)")  # fmt: skip
    return t / a


_APP = textwrap.dedent(
    """
    import fasthystrix
    fasthystrix.configure_command("route", {"isolation": "semaphore", "max_concurrent_requests": 1000})
    def ok():
        return b"ok"
    def app(environ, start_response):
        body = fasthystrix.do("route", ok)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_and_load(app_dir: str, shared: str | None, seconds: int) -> float:
    port = _free_port()
    env = dict(os.environ)
    env.pop("FASTHYSTRIX_SHARED_DIR", None)
    if shared:
        env["FASTHYSTRIX_SHARED_DIR"] = shared
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "app:app",
            "-w",
            "2",
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--chdir",
            app_dir,
        ],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        subprocess.run(["wrk", "-t1", "-c4", "-d1s", f"http://127.0.0.1:{port}/"], capture_output=True)  # warm up
        out = subprocess.run(
            ["wrk", "-t1", "-c4", f"-d{seconds}s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True
        ).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        assert match, out
        return float(match.group(1))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def server(seconds: int = 5, rounds: int = 5) -> float | None:
    """gunicorn -w 2 with and without sharing, under wrk; the ratio of the medians."""
    if shutil.which("wrk") is None or not _has_gunicorn():
        print("server: needs wrk and gunicorn (apt-get install wrk; pip install gunicorn): skipped")
        return None
    without, with_ = [], []
    with tempfile.TemporaryDirectory() as d:
        Path(d, "app.py").write_text(_APP)
        for i in range(rounds):
            for shared, out in ((None, without), (os.path.join(d, f"s{i}"), with_))[:: 1 if i % 2 else -1]:
                out.append(_serve_and_load(d, shared, seconds))
    w, s = statistics.median(without), statistics.median(with_)
    print(f"server: gunicorn -w 2 (sync), wrk -t1 -c4 -d{seconds}s, {rounds} alternating rounds: "
          f"{w:,.0f} req/s private, {s:,.0f} req/s shared (medians); all: {without} / {with_}")  # fmt: skip
    spread = (max(without) - min(without)) / w
    verdict = "met" if s / w >= 0.97 else "MISSED"
    print(f"  shared / private = {s / w:.3f}   (target: sharing costs at most 3%: {verdict}; the private "
          f"rounds alone spread over {spread:.0%} of their median on this machine)")  # fmt: skip
    return s / w


def _has_gunicorn() -> bool:
    return subprocess.run([sys.executable, "-c", "import gunicorn"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["single", "contention", "server"])
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    if args.only in (None, "single"):
        single()
    if args.only in (None, "contention"):
        contention()
    if args.only in (None, "server"):
        server()
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
