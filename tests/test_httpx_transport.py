"""fasthystrix.httpx: CommandTransport and AsyncCommandTransport against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import fasthystrix
from conftest import SHARED_TESTS
from fasthystrix import _registry
from fasthystrix.httpx import AsyncCommandTransport, CommandTransport, FailedResponseError, command_name
from local_http_server import GZIPPED, HELD_BODY, NEVER_MS, LocalServer, closed_port, refusing_ports, serving
from support import WAIT, wait_until


@pytest.fixture
def server() -> Iterator[LocalServer]:
    yield from serving()


# -- helpers --------------------------------------------------------------------------------------


def configure(name: str, **fields: Any) -> None:
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(**fields))


def metrics(name: str) -> fasthystrix.MetricsSnapshot:
    return fasthystrix.get_circuit(name)[0].metrics()


def client(transport: httpx.BaseTransport | None = None, **options: Any) -> httpx.Client:
    # No proxy from the environment: these requests go to loopback.
    return httpx.Client(transport=CommandTransport(transport, **options), trust_env=False)


def async_client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncCommandTransport(**options), trust_env=False)


class Recording(httpx.BaseTransport):
    """The real transport, recording the timeouts each request carried and how it ended."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.timeouts: list[dict[str, float | None]] = []
        self.errors: list[tuple[type[BaseException], float]] = []
        self.ended = threading.Event()
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(dict(request.extensions["timeout"]))
        start = time.monotonic()
        try:
            return self.inner.handle_request(request)
        except Exception as exc:
            self.errors.append((type(exc), time.monotonic() - start))
            raise
        finally:
            self.ended.set()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


def wait_tickets_back(name: str) -> None:
    """Until every ticket of ``name`` is back (fails after ``WAIT`` s: far sooner than ``NEVER_MS``)."""
    circuit = fasthystrix.get_circuit(name)[0]
    wait_until(lambda: circuit.tickets_in_use == 0, f"every ticket of {name} back")


# -- naming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://API.Example.com/v1/x?y=1", "api.example.com"),
        ("http://api.example.com:80/", "api.example.com"),
        ("https://api.example.com:443/", "api.example.com"),
        ("http://api.example.com:8080/", "api.example.com:8080"),
        ("https://api.example.com:80/", "api.example.com:80"),
        ("http://[::1]:8080/", "[::1]:8080"),
        ("https://bücher.example/", "xn--bcher-kva.example"),
    ],
)
def test_default_name_is_the_host_with_a_non_default_port(url: str, name: str) -> None:
    assert command_name(httpx.Request("GET", url)) == name


def test_custom_names(server: LocalServer) -> None:
    with client(name="api") as c:
        assert c.get(server.url + "/ok").status_code == 200
    with client(name=lambda request: "path" + request.url.path) as c:
        assert c.get(server.url + "/notfound").status_code == 404
    settings = fasthystrix.get_circuit_settings()
    assert "api" in settings and "path/notfound" in settings and server.name not in settings
    assert metrics("api").successes == 1


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://API.Example.com/v1/x?y=1", "api.example.com:443"),
        ("http://api.example.com/", "api.example.com:80"),
        ("http://api.example.com:8080/", "api.example.com:8080"),
        ("http://[::1]/", "[::1]:80"),
    ],
)
def test_host_port_names_always_carry_the_port(url: str, name: str) -> None:
    assert command_name(httpx.Request("GET", url), "host:port") == name


def test_command_maps_each_url_to_its_command(server: LocalServer) -> None:
    with client(command="host:port") as c:
        assert c.get(server.url + "/ok").status_code == 200
    with client(command="downstream") as c:
        assert c.get(server.url + "/ok").status_code == 200
    with client(command=lambda url: f"{url.host}{url.path}") as c:
        assert c.get(server.url + "/notfound").status_code == 404
    assert sorted(_registry.circuits()) == ["127.0.0.1/notfound", f"127.0.0.1:{server.port}", "downstream"]
    with client(command=lambda url: "") as c, pytest.raises(TypeError, match=r"command\(url\) must return"):
        c.get(server.url + "/ok")


def test_urls_chosen_by_others_make_at_most_max_hosts_circuits(server: LocalServer) -> None:
    # A service fetching URLs its users give: each port a new host:port. 100 by default, then one more.
    with refusing_ports(101) as ports, client() as c:
        for port in ports:
            with pytest.raises(httpx.ConnectError):
                c.get(f"http://127.0.0.1:{port}/")
        assert c.get(server.url + "/ok").status_code == 200  # new too: past the bound
        with pytest.raises(httpx.ConnectError):
            c.get(f"http://127.0.0.1:{ports[0]}/")  # one of the first hundred: its own circuit still
    assert set(_registry.circuits()) == {f"127.0.0.1:{port}" for port in ports[:100]} | {"<other hosts>"}
    others = metrics("<other hosts>")
    assert (others.failures, others.successes) == (1, 1)
    assert metrics(f"127.0.0.1:{ports[0]}").failures == 2


def test_max_hosts_applies_to_every_mapping_and_none_lifts_it(server: LocalServer) -> None:
    from fasthystrix.httpx import DEFAULT_MAX_HOSTS, OTHER_HOSTS

    assert (DEFAULT_MAX_HOSTS, OTHER_HOSTS) == (100, "<other hosts>")
    with client(command=lambda url: url.path, max_hosts=2) as c:
        for path in ("/ok", "/notfound", "/fail", "/ok", "/unavailable"):
            c.get(server.url + path)
    assert sorted(_registry.circuits()) == ["/notfound", "/ok", OTHER_HOSTS]
    assert metrics(OTHER_HOSTS).requests == 2
    fasthystrix.flush()
    with client(name=lambda request: request.url.path, max_hosts=None) as c:
        for path in ("/ok", "/notfound", "/fail"):
            c.get(server.url + path)
    # A shared circuit outlives flush() in its file: circuits() lists the host's, "<other hosts>" too.
    assert sorted(_registry.circuits()) == ["/fail", "/notfound", "/ok"] + [OTHER_HOSTS] * SHARED_TESTS


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError, match="name"):
        CommandTransport(name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="command must be 'host', 'host:port', a command name"):
        CommandTransport(command=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command must not be empty"):
        AsyncCommandTransport(command="")
    with pytest.raises(TypeError, match="pass command or name, not both"):
        CommandTransport(command="a", name="b")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_hosts must be an int >= 1 or None"):
            CommandTransport(max_hosts=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command must be 'host' or 'host:port'"):
        command_name(httpx.Request("GET", "http://x/"), "x")
    with pytest.raises(TypeError, match="fallback"):
        CommandTransport(fallback="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_failure"):
        AsyncCommandTransport(is_failure=1)  # type: ignore[arg-type]


# -- outcomes -------------------------------------------------------------------------------------


def test_success_is_counted_under_the_host(server: LocalServer) -> None:
    with client() as c:
        response = c.get(server.url + "/ok")
        assert (response.status_code, response.text) == (200, "/ok 200")
        assert response.elapsed.total_seconds() >= 0  # the client still times the (buffered) body
        with c.stream("GET", server.url + "/ok") as streamed:
            assert b"".join(streamed.iter_bytes()) == b"/ok 200"
    m = metrics(server.name)
    assert (m.successes, m.failures, m.requests) == (2, 0, 2)


def test_4xx_is_not_a_failure(server: LocalServer) -> None:
    with client() as c:
        assert c.get(server.url + "/notfound").status_code == 404
    m = metrics(server.name)
    assert (m.successes, m.failures) == (1, 0)


def test_5xx_is_returned_counted_as_a_failure_and_trips_the_circuit(server: LocalServer) -> None:
    configure(server.name, request_volume_threshold=3, isolation="semaphore")
    with client() as c:
        for path in ("/fail", "/unavailable", "/fail"):
            response = c.get(server.url + path)
            assert response.status_code in (500, 503) and response.text.startswith(path)
        assert metrics(server.name).failures == 3
        with pytest.raises(fasthystrix.CircuitOpenError):
            c.get(server.url + "/ok")
    assert server.hits["/ok"] == 0 and sum(server.hits.values()) == 3
    m = metrics(server.name)
    assert (m.failures, m.short_circuits) == (3, 1)


def test_is_failure_decides_what_counts(server: LocalServer) -> None:
    with client(is_failure=lambda response: response.status_code == 404) as c:
        assert c.get(server.url + "/notfound").status_code == 404
        assert c.get(server.url + "/fail").status_code == 500
    m = metrics(server.name)
    assert (m.failures, m.successes) == (1, 1)


def test_connection_errors_count_as_failures_and_trip_the_circuit() -> None:
    port = closed_port()
    name = f"127.0.0.1:{port}"
    configure(name, request_volume_threshold=2)
    with client() as c:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                c.get(f"http://127.0.0.1:{port}/ok")
        with pytest.raises(fasthystrix.CircuitOpenError):
            c.get(f"http://127.0.0.1:{port}/ok")
    m = metrics(name)
    assert (m.failures, m.short_circuits) == (2, 1)


# -- the timeout hand-off -------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_slow_response_is_cut_off_at_the_command_timeout(server: LocalServer, isolation: str) -> None:
    configure(server.name, timeout=200, isolation=isolation)
    recording = Recording()
    with client(recording) as c:
        start = time.monotonic()
        with pytest.raises(fasthystrix.TimeoutError):
            c.get(server.url + f"/slow?ms={NEVER_MS}")
        elapsed = time.monotonic() - start
        # Not before the timeout, and long before the server would answer.
        assert 0.19 <= elapsed < WAIT, elapsed
        # The socket itself gave up at the deadline, not at the server's answer: in thread
        # isolation the worker (and its ticket) does not linger after the caller got its answer.
        assert recording.ended.wait(WAIT)
        wait_tickets_back(server.name)
    [timeouts] = recording.timeouts
    assert all(value is not None and 0 < value <= 0.2 for value in timeouts.values()), timeouts
    [(error, took)] = recording.errors
    assert error is httpx.ReadTimeout and took < WAIT
    m = metrics(server.name)
    assert (m.timeouts, m.failures, m.successes) == (1, 0, 0)


def test_the_callers_shorter_timeout_is_kept(server: LocalServer) -> None:
    # The caller's 0.1 s read timeout, not the command's 20 s, ends the request: a ReadTimeout
    # counted as a failure (the command's timeout would raise fasthystrix.TimeoutError).
    configure(server.name, timeout=20_000)
    recording = Recording()
    with httpx.Client(transport=CommandTransport(recording), trust_env=False, timeout=0.1) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get(server.url + f"/slow?ms={NEVER_MS}")
    assert recording.timeouts[0]["read"] == pytest.approx(0.1)
    assert metrics(server.name).failures == 1


def test_a_trickled_body_is_read_inside_the_command_and_cut_at_the_deadline(server: LocalServer) -> None:
    configure(server.name, timeout=250)
    with client() as c:
        with pytest.raises(fasthystrix.TimeoutError):
            c.get(server.url + f"/trickle?chunks={NEVER_MS // 50}&ms=50")
        # Between chunks the worker sees the deadline and stops reading, long before the body's end.
        wait_tickets_back(server.name)
    assert metrics(server.name).timeouts == 1


def test_read_body_false_counts_at_the_headers(server: LocalServer) -> None:
    with client(read_body=False) as c, c.stream("GET", server.url + "/held") as response:
        # The command ended with the headers: counted, its ticket back, before the body is sent.
        m = metrics(server.name)
        assert (m.successes, m.timeouts, fasthystrix.get_circuit(server.name)[0].tickets_in_use) == (1, 0, 0)
        server.release.set()
        assert response.read() == HELD_BODY


# -- concurrency and the fallback ----------------------------------------------------------------


def test_rejected_at_max_concurrency(server: LocalServer) -> None:
    # The first two calls hold their tickets until the test releases their bodies.
    configure(server.name, max_concurrent_requests=2, timeout=120_000)
    outcomes: list[object] = []

    def call(c: httpx.Client) -> None:
        try:
            outcomes.append(c.get(server.url + "/held").status_code)
        except fasthystrix.MaxConcurrencyError as err:
            outcomes.append(type(err))

    with client() as c:
        threads = [threading.Thread(target=call, args=(c,)) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(outcomes) == 2 and server.hits["/held"] == 2, "two calls rejected, two in flight")
        assert outcomes == [fasthystrix.MaxConcurrencyError] * 2
        server.release.set()
        for t in threads:
            t.join(WAIT)
    assert outcomes.count(200) == 2 and outcomes.count(fasthystrix.MaxConcurrencyError) == 2
    assert server.hits["/held"] == 2
    assert metrics(server.name).rejects == 2


@pytest.mark.parametrize("read_body", [True, False])
def test_fallback_answers_failures_timeouts_and_short_circuits(server: LocalServer, read_body: bool) -> None:
    # 500 ms: far longer than a loopback answer takes, even on a busy machine.
    configure(server.name, timeout=500, request_volume_threshold=4)
    seen: list[BaseException] = []

    def fallback(request: httpx.Request, err: BaseException) -> httpx.Response:
        seen.append(err)
        if isinstance(err, FailedResponseError):
            assert err.response.read() == b"/fail 500"  # read inside the command, whatever read_body
            return httpx.Response(200, text="stale " + request.url.path)
        return httpx.Response(203, text=type(err).__name__)

    with client(fallback=fallback, read_body=read_body) as c:
        assert c.get(server.url + "/fail").text == "stale /fail"
        assert c.get(server.url + f"/slow?ms={NEVER_MS}").text == "TimeoutError"
        assert c.get(server.url + "/ok").text == "/ok 200"
        assert c.get(server.url + "/fail").text == "stale /fail"
        response = c.get(server.url + "/ok")  # 3 of 4 failed: the circuit opens
        assert (response.status_code, response.text) == (203, "CircuitOpenError")
        wait_tickets_back(server.name)  # the abandoned run ends before the client closes
    assert [type(err) for err in seen] == [
        FailedResponseError,
        fasthystrix.TimeoutError,
        FailedResponseError,
        fasthystrix.CircuitOpenError,
    ]
    assert seen[0].status_code == 500  # type: ignore[attr-defined]
    # The wrappers' is_failure gives the core's FailedResultError, the response as its result.
    assert isinstance(seen[0], fasthystrix.FailedResultError)
    assert seen[0].result is seen[0].response  # type: ignore[attr-defined]
    assert str(seen[0]) == "the response status 500 counts as a failure"
    m = metrics(server.name)
    assert (m.failures, m.timeouts, m.short_circuits, m.fallback_successes) == (2, 1, 1, 4)


def test_a_failing_fallback_raises_fallback_error(server: LocalServer) -> None:
    def fallback(request: httpx.Request, err: BaseException) -> httpx.Response:
        raise LookupError("no cache")

    with client(fallback=fallback) as c, pytest.raises(fasthystrix.FallbackError) as info:
        c.get(server.url + "/fail")
    assert isinstance(info.value.run_error, FailedResponseError)
    assert isinstance(info.value.fallback_error, LookupError)


def test_close_closes_the_inner_transport(server: LocalServer) -> None:
    recording = Recording()
    with client(recording) as c:
        c.get(server.url + "/ok")
    assert recording.closed


# -- asyncio --------------------------------------------------------------------------------------


def test_async_success_failure_and_short_circuit(server: LocalServer) -> None:
    configure(server.name, request_volume_threshold=2)

    async def main() -> None:
        async with async_client() as c:
            response = await c.get(server.url + "/ok")
            assert (response.status_code, response.text) == (200, "/ok 200")
            assert (await c.get(server.url + "/notfound")).status_code == 404
            assert (await c.get(server.url + "/fail")).status_code == 500
            assert (await c.get(server.url + "/fail")).status_code == 500
            with pytest.raises(fasthystrix.CircuitOpenError):  # 2 of 4 failed: 50 %
                await c.get(server.url + "/ok")

    asyncio.run(main())
    m = metrics(server.name)
    assert (m.successes, m.failures, m.short_circuits) == (2, 2, 1)
    assert server.hits["/ok"] == 1


def test_async_timeout_cancels_the_request(server: LocalServer) -> None:
    configure(server.name, timeout=200)

    async def main() -> float:
        async with async_client() as c:
            start = time.monotonic()
            with pytest.raises(fasthystrix.TimeoutError):
                await c.get(server.url + f"/slow?ms={NEVER_MS}")
            elapsed = time.monotonic() - start
            # The connection was dropped with the cancelled request: the next one works.
            assert (await c.get(server.url + "/ok")).status_code == 200
            return elapsed

    elapsed = asyncio.run(main())
    # Not before the timeout, and long before the server would answer.
    assert 0.19 <= elapsed < WAIT, elapsed
    m = metrics(server.name)
    assert (m.timeouts, m.successes, m.concurrent) == (1, 1, 0)


def test_async_caller_cancellation_propagates(server: LocalServer) -> None:
    async def main() -> None:
        async with async_client() as c:
            task = asyncio.create_task(c.get(server.url + f"/slow?ms={NEVER_MS}"))
            deadline = time.monotonic() + WAIT
            while not server.hits["/slow"]:
                assert time.monotonic() < deadline, "the request never reached the server"
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    m = metrics(server.name)
    assert (m.context_canceled, m.failures, m.timeouts, m.concurrent) == (1, 0, 0, 0)


def test_async_fallback_and_rejection(server: LocalServer) -> None:
    # The first two calls hold their tickets until the test releases their bodies.
    configure(server.name, max_concurrent_requests=2, timeout=120_000)

    async def fallback(request: httpx.Request, err: BaseException) -> httpx.Response:
        await asyncio.sleep(0)
        return httpx.Response(200, text=type(err).__name__)

    async def main() -> list[str]:
        async with async_client(fallback=fallback) as c:
            calls = [asyncio.ensure_future(c.get(server.url + "/held")) for _ in range(4)]
            deadline = time.monotonic() + WAIT
            while sum(call.done() for call in calls) < 2 or server.hits["/held"] < 2:
                assert time.monotonic() < deadline, "two calls were not rejected with two in flight"
                await asyncio.sleep(0.005)
            server.release.set()
            responses = await asyncio.gather(*calls)
            failed = await c.get(server.url + "/unavailable")
            return [r.text for r in [*responses, failed]]

    texts = asyncio.run(main())
    held = HELD_BODY.decode()
    assert sorted(texts[:4]) == sorted([held, held, "MaxConcurrencyError", "MaxConcurrencyError"])
    assert texts[4] == "FailedResponseError"
    m = metrics(server.name)
    assert (m.successes, m.rejects, m.failures, m.fallback_successes) == (2, 2, 1, 3)


def test_async_timeout_caps_the_request_timeouts(server: LocalServer) -> None:
    configure(server.name, timeout=5000)
    seen: list[dict[str, float | None]] = []

    class Spy(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(dict(request.extensions["timeout"]))
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncCommandTransport(Spy()), trust_env=False, timeout=0.1) as c:
            await c.get(server.url + "/ok")
        async with httpx.AsyncClient(transport=AsyncCommandTransport(Spy()), trust_env=False, timeout=None) as c:
            await c.get(server.url + "/ok")

    asyncio.run(main())
    assert seen == [
        dict.fromkeys(("connect", "read", "write", "pool"), 0.1),
        dict.fromkeys(("connect", "read", "write", "pool"), 5.0),
    ]


def test_an_encoded_chunked_body_is_buffered_as_sent_and_decoded_by_the_client(server: LocalServer) -> None:
    with client() as c:
        response = c.get(server.url + "/gzip")
        assert response.content == GZIPPED
        assert response.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("read_body", [True, False])
def test_a_transport_that_answers_with_a_read_response_works_like_httpx_alone(read_body: bool) -> None:
    # httpx.MockTransport's responses (json=, content=) arrive already read: their stream
    # cannot be iterated again, so the command keeps them as they are.
    def handler(request: httpx.Request) -> httpx.Response:
        status = 500 if request.url.path == "/fail" else 200
        return httpx.Response(status, json={"path": request.url.path})

    name = "mock.test"
    transport = CommandTransport(httpx.MockTransport(handler), read_body=read_body)
    with httpx.Client(transport=transport) as c:
        assert c.get("http://mock.test/a").json() == {"path": "/a"}
        assert c.get("http://mock.test/fail").json() == {"path": "/fail"}

    async def main() -> list[Any]:
        async_transport = AsyncCommandTransport(httpx.MockTransport(handler), read_body=read_body)
        async with httpx.AsyncClient(transport=async_transport) as c:
            return [(await c.get(f"http://mock.test/{p}")).json() for p in ("b", "fail")]

    assert asyncio.run(main()) == [{"path": "/b"}, {"path": "/fail"}]
    m = metrics(name)
    assert (m.successes, m.failures) == (2, 2)
