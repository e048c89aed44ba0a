"""A FastAPI service calling a flaky dependency through fasthystrix, with the dashboard and Prometheus mounted.

    python -m pip install -e '.[examples]' && python examples/fastapi_app.py [--port 8000]

Every request runs as a command named after its route template ("GET /api/items/{item_id}"),
never its URL: a Go service whose middleware named each hystrix command after the request
URL let any client create circuits without bound; here unknown paths share one circuit,
"GET <unmatched>". The dependency is simulated in-process: 20 ms per call, and down for
5 seconds out of every 20.

- GET /api/price       calls the dependency through the command "pricing-service", whose
                       fallback answers with the last known price ("stale": true);
- GET /api/items/{id}  calls it directly: when it fails, the route answers 502, a failure of
                       its command, whose circuit then opens: 503 {"error": "circuit open"}
                       with a Retry-After, until a trial request after the sleep window succeeds;
- /ops/hystrix-dashboard and /ops/hystrix.stream: fasthystrix's dashboard and the Hystrix stream;
- /metrics             Prometheus (with prometheus-client installed).

Load it and watch the dashboard (http://127.0.0.1:8000/ops/hystrix-dashboard):

    wrk -t2 -c50 -d30s http://127.0.0.1:8000/api/price

50 connections against 40 tickets per route:
"GET /api/price" sheds the excess at the door (503 {"error": "max concurrency"} with
Retry-After: 1, before anything else runs); a rejection is overload, not a fault, so it never opens
the route's circuit (``rejections_count_as_errors=False``) and the route goes on serving at its
capacity. "pricing-service" (10 tickets, 100 ms timeout) rejects
and, during each outage, trips and short-circuits, answered by its fallback. With
``wrk -t2 -c50 -d30s http://127.0.0.1:8000/api/items/7`` the route's own circuit opens in each outage.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException

import fasthystrix
from fasthystrix.asgi import CircuitBreakerMiddleware

try:
    from prometheus_client import CollectorRegistry, make_asgi_app

    from fasthystrix import prometheus
except ImportError:  # the example runs without prometheus-client, minus /metrics
    prometheus = None  # type: ignore[assignment]


class DownstreamError(Exception):
    """The dependency answered with an error."""


class FlakyDownstream:
    """An in-process stand-in for a remote pricing service: slow-ish, and down now and then."""

    def __init__(self, latency: float = 0.02, outage_every: float = 20.0, outage_for: float = 5.0) -> None:
        self.latency = latency
        self.outage_every = outage_every
        self.outage_for = outage_for
        self.forced: bool | None = None  # True: always down; False: never
        self._epoch = time.monotonic()

    def healthy(self) -> None:
        self.forced = False

    def failing(self) -> None:
        self.forced = True

    def down(self) -> bool:
        if self.forced is not None:
            return self.forced
        return (time.monotonic() - self._epoch) % self.outage_every >= self.outage_every - self.outage_for

    async def price(self, item_id: int = 0) -> float:
        await asyncio.sleep(self.latency)
        if self.down():
            raise DownstreamError("pricing service unavailable")
        return 42.0 + item_id / 100


downstream = FlakyDownstream()
last_price = 42.0

# Prometheus first: its counters cover the circuits created after it is registered.
if prometheus is not None:
    metrics_registry = CollectorRegistry()
    prometheus_collector = prometheus.register(metrics_registry)

app = FastAPI(title="fasthystrix example")
app.add_middleware(
    CircuitBreakerMiddleware,
    # Every route's command; configure_command("GET /api/items/{item_id}", ...) would override one.
    config=fasthystrix.CommandConfig(
        timeout=500, max_concurrent_requests=40, request_volume_threshold=20, rejections_count_as_errors=False
    ),
    exclude=("/ops", "/metrics"),  # the stream never ends: keep it out of the commands' timeouts
)
stream_handler = fasthystrix.StreamHandler()
app.mount("/ops", stream_handler.asgi_app)
if prometheus is not None:
    app.mount("/metrics", make_asgi_app(registry=metrics_registry))


def stale_price(*, err: BaseException) -> dict[str, Any]:
    return {"price": last_price, "stale": True, "reason": str(err)}


@fasthystrix.command(
    "pricing-service",
    fallback=stale_price,
    config=fasthystrix.CommandConfig(timeout=100, max_concurrent_requests=10, request_volume_threshold=10),
)
async def fetch_price() -> dict[str, Any]:
    global last_price
    last_price = await downstream.price()
    return {"price": last_price, "stale": False}


@app.get("/api/price")
async def get_price() -> dict[str, Any]:
    return await fetch_price()


@app.get("/api/items/{item_id}")
async def get_item(item_id: int) -> dict[str, Any]:
    try:
        price = await downstream.price(item_id)
    except DownstreamError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from exc
    return {"item_id": item_id, "price": price}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    print(f"dashboard: http://127.0.0.1:{args.port}/ops/hystrix-dashboard")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
