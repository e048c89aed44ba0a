"""CPU cost of serving the metrics stream: N circuits to M clients, as a share of one core.

    python benchmarks/stream_load.py [--circuits 1000] [--clients 50] [--seconds 20]

This process creates the circuits (each with successes, failures and latency
samples in its window), serves them with ``fasthystrix.serve_stream`` (1 s
interval), and a separate client process opens the connections and reads
everything. The figure is this process's CPU time (user + system, all threads)
over the measured seconds, divided by the wall time: what the publisher and the
per-client writers cost. An idle period with the same circuits and no client is
measured first for comparison (the publisher does not run then).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time

import fasthystrix

CLIENT = r"""
import selectors, socket, sys, time
host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sel = selectors.DefaultSelector()
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(f"GET /hystrix.stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("connected", flush=True)
received = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        data = key.fileobj.recv(1 << 20)
        received += len(data)
print(received, flush=True)
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def populate(circuits: int) -> None:
    def fail() -> None:
        raise ValueError

    for i in range(circuits):
        name = f"service-{i:04d}.endpoint"
        fasthystrix.configure_command(name, {"isolation": "semaphore", "request_volume_threshold": 10**6})
        for _ in range(5):
            fasthystrix.do(name, lambda: time.sleep(0))
        fasthystrix.do(name, fail, lambda err: None)


def _split(n: int, parts: int) -> list[range]:
    return [range(i, n, parts) for i in range(parts) if i < n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuits", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--max-pending",
        type=int,
        default=30,
        help="ticks a client may fall behind (the readers here share two cores with the server)",
    )
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--active",
        action="store_true",
        help="keep every circuit changing: one call on each circuit every 0.5 s (the traffic's own "
        "cost is measured with no client connected and subtracted)",
    )
    args = parser.parse_args()

    populate(args.circuits)
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(args.circuits, stop), daemon=True)
    if args.active:
        traffic.start()
    with fasthystrix.serve_stream(port=0, max_pending=args.max_pending) as server:
        tick = server.handler.render()
        print(
            f"fasthystrix {fasthystrix.__version__} ({fasthystrix.implementation}), Python {sys.version.split()[0]}, "
            f"{args.circuits} circuits, {args.clients} clients, one tick = {len(tick) / 1e6:.2f} MB per client"
        )
        start_wall, start_cpu = time.monotonic(), cpu_seconds()
        time.sleep(min(5.0, args.seconds))
        idle = (cpu_seconds() - start_cpu) / (time.monotonic() - start_wall)
        what = "the traffic alone, no client" if args.active else "no client"
        print(f"{what}: {idle * 100:.2f} % of one core")

        # Time one tick's build on its own, so the fan-out's share shows.
        t0 = time.perf_counter()
        for _ in range(5):
            server.handler.render()
        build = (time.perf_counter() - t0) / 5

        per_process = [len(part) for part in _split(args.clients, args.client_processes)]
        clients = [
            subprocess.Popen(
                # Readers outlast the measurement whatever their start-up time; their count at
                # the end is checked below.
                [sys.executable, "-c", CLIENT, "127.0.0.1", str(server.port), str(n), str(args.seconds + 10)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in per_process
        ]
        for client in clients:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "connected"
        time.sleep(1.0)  # let every connection get its first tick
        start_wall, start_cpu = time.monotonic(), cpu_seconds()
        ticks_before = server.handler.ticks
        time.sleep(args.seconds)
        wall = time.monotonic() - start_wall
        busy = (cpu_seconds() - start_cpu) / wall
        ticks = server.handler.ticks - ticks_before
        connected = server.handler.clients
        received = 0
        for client in clients:
            assert client.stdout is not None
            received += int(client.stdout.readline())
            client.wait()
        if args.active:
            print(f"serving minus the traffic: {(busy - idle) * 100:.2f} % of one core")
        print(
            f"serving: {busy * 100:.2f} % of one core over {wall:.1f} s ({ticks} ticks; building one tick "
            f"{build * 1e3:.1f} ms = {build * 100:.2f} % of a core at 1 tick/s); clients connected at the end: "
            f"{connected}, dropped: {server.handler.dropped_clients}; "
            f"the {len(clients)} client processes read {received / 1e6:.0f} MB"
        )
        print(f"loadavg: {' '.join(os.getloadavg().__repr__().strip('()').split(', '))}")
    stop.set()
    if args.active:
        traffic.join()
    return 0


def _traffic(circuits: int, stop: threading.Event) -> None:
    """One call on each circuit every half second, so every tick finds every circuit changed."""
    names = [f"service-{i:04d}.endpoint" for i in range(circuits)]
    while not stop.wait(0.5):
        for name in names:
            fasthystrix.do(name, lambda: None)


if __name__ == "__main__":
    sys.exit(main())
