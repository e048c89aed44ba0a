"""A flaky HTTP dependency on loopback, called through fasthystrix: watch the circuit open and close.

    python examples/quickstart.py [--calls-per-phase N]

Phases: healthy -> failing (the circuit opens, calls fail fast) -> slow (timeouts)
-> recovered (after the sleep window one trial request closes the circuit).
"""

from __future__ import annotations

import argparse
import collections
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fasthystrix


class Downstream:
    """What the fake dependency does right now: answer, fail with 500, or hang for a while."""

    mode = "healthy"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if Downstream.mode == "failing":
            self.send_response(500)
            self.end_headers()
            return
        if Downstream.mode == "slow":
            time.sleep(0.2)
        body = b"price: 42\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's parameter name
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls-per-phase", type=int, default=60)
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/price"

    fasthystrix.configure_command(
        "price-service",
        fasthystrix.CommandConfig(
            timeout=100,  # ms
            max_concurrent_requests=10,
            request_volume_threshold=10,
            error_percent_threshold=25,
            sleep_window=500,  # ms
        ),
    )

    def fetch_price() -> str:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.read().decode().strip()

    def cached_price(err: BaseException) -> str:
        return f"price: 40 (cached, because {err})"

    circuit, _ = fasthystrix.get_circuit("price-service")
    print(f"fasthystrix {fasthystrix.__version__} ({fasthystrix.implementation} implementation), dependency at {url}\n")
    print(f"{'phase':<10} {'answers':<48} {'circuit':<8} events in the rolling window")
    for mode in ("healthy", "failing", "slow", "healthy"):
        Downstream.mode = mode
        if mode == "healthy" and circuit.state() != "closed":
            time.sleep(0.6)  # let the sleep window pass, so a trial request can close the circuit
        answers: collections.Counter[str] = collections.Counter()
        for _ in range(args.calls_per_phase):
            answer = fasthystrix.do("price-service", fetch_price, cached_price)
            answers[answer.split(" (")[0] + (" (fallback)" if "cached" in answer else "")] += 1
            time.sleep(0.005)
        m = circuit.metrics()
        events = (
            f"success={m.successes} failure={m.failures} timeout={m.timeouts} "
            f"short-circuit={m.short_circuits} fallback-success={m.fallback_successes}"
        )
        summary = ", ".join(f"{n}x {a}" for a, n in answers.most_common())
        print(f"{mode:<10} {summary:<48} {circuit.state():<8} {events}")
    m = circuit.metrics()
    print(f"\nrun latency p50={m.run_latency_percentiles[50.0]:.2f} ms p99={m.run_latency_percentiles[99.0]:.2f} ms")
    server.shutdown()
    fasthystrix.flush()


if __name__ == "__main__":
    main()
