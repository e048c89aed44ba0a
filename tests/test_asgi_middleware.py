"""fasthystrix.asgi.CircuitBreakerMiddleware on a real uvicorn server, driven over loopback by httpx."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix import _registry
from fasthystrix.asgi import UNMATCHED, CircuitBreakerMiddleware
from slow_clients import SlowReaders, SlowUploads
from support import WAIT, first_step_failing_allocation, hardened_against_failed_allocations, load_example, wait_until

uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.background import BackgroundTask  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Host, Mount, Route  # noqa: E402


@contextlib.contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """Serve ``app`` with uvicorn on a loopback port; yield an httpx client for it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn started")
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=WAIT) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def metrics(name: str) -> Any:
    circuit = _registry.circuits().get(name)
    assert circuit is not None, f"no circuit {name!r}; circuits: {sorted(_registry.circuits())}"
    return circuit.metrics()


def app_with(routes: list[Any], **options: Any) -> Starlette:
    return Starlette(routes=routes, middleware=[Middleware(CircuitBreakerMiddleware, **options)])


async def item(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["item_id"]})


# -- naming ----------------------------------------------------------------------------------------


def test_commands_are_named_after_route_templates_not_urls() -> None:
    async def thing(request: Request) -> Response:
        return PlainTextResponse("thing")

    app = app_with(
        [
            Route("/items/{item_id:int}", item),
            Mount("/api", routes=[Route("/things/{thing_id}", thing)]),
            Mount("/ops", app=PlainTextResponse("an app of its own")),
        ]
    )
    with serve(app) as client:
        assert client.get("/items/1").json() == {"id": 1}
        assert client.get("/items/2").json() == {"id": 2}
        assert client.get("/api/things/x").text == "thing"
        assert client.get("/ops/a").text == client.get("/ops/b/c").text == "an app of its own"
        for _ in range(3):
            assert client.get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}").status_code == 404
        # PURGE: outside the standard methods (so "OTHER"), yet one that both of uvicorn's parsers
        # accept (httptools answers 400 itself to a method llhttp does not know, such as BREW).
        assert client.request("PURGE", "/items/3").status_code == 405
        assert client.request("PURGE", f"/{uuid.uuid4().hex}").status_code == 404
    assert sorted(_registry.circuits()) == [
        "GET /api/things/{thing_id}",
        "GET /items/{item_id}",
        "GET /ops/{path}",
        "GET <unmatched>",
        "OTHER /items/{item_id}",
        "OTHER <unmatched>",
    ]
    assert metrics("GET /items/{item_id}").successes == 2
    unmatched = metrics("GET <unmatched>")
    assert (unmatched.requests, unmatched.failures) == (3, 0)  # one shared circuit; 404s are not failures


def test_a_bare_asgi_app_without_a_router_has_its_commands_remembered() -> None:
    # No routes anywhere: every request is unmatched, and its command known from the table (the
    # compiled path serves only requests whose command is known), bounded like the rest.
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = CircuitBreakerMiddleware(bare)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    async def requests() -> None:
        for path in ("/a", "/a", "/b"):
            scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
            scope.update(http_version="1.1")
            await middleware(scope, receive, send)

    asyncio.run(requests())
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200, 200, 200]
    assert middleware._commands == {("GET", "/a", ""): "GET <unmatched>", ("GET", "/b", ""): "GET <unmatched>"}
    assert metrics("GET <unmatched>").successes == 3
    for i in range(5000):
        middleware.route_template({"type": "http", "method": "GET", "path": f"/{i}", "headers": []})
    assert len(middleware._templates) <= 4096


def test_strings_of_a_str_subclass_or_equal_but_other_objects_read_as_their_value() -> None:
    # The compiled path compares a message's type, the scope's type and its HTTP version by
    # length, kind and bytes, and hands anything that is not an exact str to ==: either way the
    # value is what counts. Each path twice: the second request takes the compiled path.
    class Text(str):
        pass

    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = 500 if scope["path"] == "/boom" else 200
        await send({"type": Text("http.response.start"), "status": status, "headers": []})
        await send({"type": "".join(["http.response.", "body"]), "body": b"x"})

    middleware = CircuitBreakerMiddleware(app)
    for path in ("/ok", "/boom", "/ok", "/boom"):
        sent = call_in_process(middleware, {"type": Text("http"), "path": path, "http_version": Text("1.1")}, [])
        assert [(m["type"], m.get("status")) for m in sent] == [
            ("http.response.start", 500 if path == "/boom" else 200),
            ("http.response.body", None),
        ]
    counted = metrics("GET <unmatched>")
    assert (counted.successes, counted.failures) == (2, 2)


def test_route_templates_are_remembered_per_path_unless_a_host_route_decides() -> None:
    async def thing(request: Request) -> Response:
        return PlainTextResponse("thing")

    app = Starlette(
        routes=[
            Host("api.example", app=Starlette(routes=[Route("/x", thing)])),
            Route("/items/{item_id:int}", item),
            Route("/x/{rest}", thing),
        ]
    )
    middleware = CircuitBreakerMiddleware(app)

    def scope(path: str, host: bytes = b"example", method: str = "GET") -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [(b"host", host)]}

    for _ in range(2):  # the second time from the table
        assert middleware.route_template(scope("/items/1")) == "/items/{item_id}"
        assert middleware.route_template(scope("/items/1", method="BREW")) == "/items/{item_id}"
        assert middleware.route_template(scope("/nope")) == UNMATCHED
    # A Host route took part: the same path names another route under another host.
    assert middleware.route_template(scope("/x", host=b"api.example")) == "/x"
    assert middleware.route_template(scope("/x")) == UNMATCHED
    assert middleware.route_template(scope("/x", host=b"api.example")) == "/x"
    # Bounded: a client choosing paths cannot grow the table without end.
    for i in range(5000):
        middleware.route_template(scope(f"/items/{i}"))
    assert len(middleware._templates) <= 4096


def call_in_process(middleware: Any, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Call ``middleware`` once, without a server: ``messages`` are what the client sends; the
    messages the app sends back are returned."""
    sent: list[dict[str, Any]] = []
    incoming = list(messages)

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }
    asyncio.run(middleware({**base, **scope}, receive, send))
    return sent


def test_command_names_are_remembered_per_method_and_path_unless_a_callable_or_a_host_decides() -> None:
    async def thing(request: Request) -> Response:
        return PlainTextResponse("thing")

    app = Starlette(
        routes=[
            Route("/items/{item_id:int}", item),  # matched before the Host route is consulted
            Host("api.example", app=Starlette(routes=[Route("/x", thing)])),
        ]
    )
    by_template = CircuitBreakerMiddleware(app, exclude=("/ops",))
    for _ in range(2):
        call_in_process(by_template, {"path": "/items/1"}, [])
        call_in_process(by_template, {"path": "/ops/x"}, [])
        call_in_process(by_template, {"path": "/x", "headers": [(b"host", b"api.example")]}, [])
        call_in_process(by_template, {"path": "/x", "headers": [(b"host", b"other")]}, [])
    # The template's and the excluded path's answers are remembered; the host-matched path's is not.
    assert by_template._commands == {("GET", "/items/1", ""): "GET /items/{item_id}", ("GET", "/ops/x", ""): None}
    assert metrics("GET /x").successes == 2 and metrics("GET <unmatched>").requests == 2
    asked: list[str] = []

    def name(scope: dict[str, Any]) -> str:
        asked.append(scope["path"])
        return "tenant-" + scope["headers"][0][1].decode()

    by_callable = CircuitBreakerMiddleware(app, name=name)
    for tenant in (b"a", b"b", b"a"):
        call_in_process(by_callable, {"path": "/items/1", "headers": [(b"x-tenant", tenant)]}, [])
    assert asked == ["/items/1"] * 3 and by_callable._commands == {}  # asked every time: it may read anything
    assert (metrics("tenant-a").successes, metrics("tenant-b").successes) == (2, 1)
    # Bounded: a client choosing paths cannot grow the table without end.
    for i in range(5000):
        by_template._command_of(
            {"type": "http", "method": "GET", "path": f"/items/{i}", "root_path": ""}, ("GET", f"/items/{i}", "")
        )
    assert 0 < len(by_template._commands) <= 4096


def test_a_request_without_a_body_reaches_the_app_as_the_client_sent_it() -> None:
    """HTTP/1.x without Content-Length or Transfer-Encoding has no body: the app's receive() is
    the client's own. Any other request's body is read first and replayed whole, HTTP/2's too."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(await receive())
        await PlainTextResponse("ok")(scope, receive, send)

    middleware = CircuitBreakerMiddleware(app, name="bodies")
    empty = {"type": "http.request", "body": b"", "more_body": False}
    call_in_process(middleware, {}, [empty])
    assert seen[-1] is empty  # the client's own message, not a replayed copy
    chunks = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]
    for scope in (
        {"http_version": "2", "method": "POST"},  # no Content-Length: HTTP/2 may still send a body
        {"method": "POST", "headers": [(b"transfer-encoding", b"chunked")]},
        {"method": "POST", "headers": [(b"content-length", b"3")]},
    ):
        call_in_process(middleware, scope, [dict(c) for c in chunks])
        assert seen[-1] == {"type": "http.request", "body": b"abc", "more_body": False}, scope
    assert metrics("bodies").successes == 4


def test_the_apps_send_and_receive_raise_where_awaited_and_may_be_awaited_later() -> None:
    """The app's send() and receive() (ready awaitables in the compiled core, coroutines in the
    pure one) behave as coroutines would: an error is raised where the app awaits, a send made
    now and awaited later has gone out in order, and what a step returns comes back unchanged."""
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        broken = send({"status": 200})  # no "type": raised where awaited, not here
        with pytest.raises(KeyError):
            await broken
        start = send({"type": "http.response.start", "status": 201, "headers": []})
        body = send({"type": "http.response.body", "body": b"late"})
        seen.append(await start)
        seen.append(await body)
        seen.append(await receive())

    middleware = CircuitBreakerMiddleware(app, name="awaitables")
    sent = call_in_process(
        middleware,
        {"method": "POST", "headers": [(b"content-length", b"2")]},
        [{"type": "http.request", "body": b"hi"}],
    )
    assert [m.get("status", m.get("body")) for m in sent] == [201, b"late"]
    assert seen == [None, None, {"type": "http.request", "body": b"hi", "more_body": False}]
    assert metrics("awaitables").successes == 1


def test_servers_see_an_asgi3_app() -> None:
    """uvicorn tells ASGI 3 from ASGI 2 by asking whether the app's __call__ is a coroutine function:
    the compiled __call__ (which returns an awaitable written in C) is marked as one."""
    from uvicorn.config import Config

    middleware = CircuitBreakerMiddleware(app_with([]))
    assert asyncio.iscoroutinefunction(middleware.__call__)
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(middleware.__call__)
    config = Config(middleware)
    config.load()
    assert config.asgi_version == "3.0"


def test_the_wrapped_app_is_read_per_request() -> None:
    async def first(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await PlainTextResponse("first")(scope, receive, send)

    async def second(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await PlainTextResponse("second")(scope, receive, send)

    middleware = CircuitBreakerMiddleware(first, name="swapped")
    assert [call_in_process(middleware, {}, [])[1]["body"] for _ in range(2)] == [b"first", b"first"]
    middleware.app = second  # the compiled path serves it now (the command is known, the circuit closed)
    assert call_in_process(middleware, {}, [])[1]["body"] == b"second"


def test_a_response_buffer_larger_than_memory_is_no_bound() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    middleware = CircuitBreakerMiddleware(app, name="huge-buffer", response_buffer_size=10**30)
    assert [call_in_process(middleware, {}, [])[0]["status"] for _ in range(2)] == [200, 200]
    assert metrics("huge-buffer").successes == 2


def test_wrapping_the_app_directly_and_a_plain_asgi_app() -> None:
    starlette_app = Starlette(routes=[Route("/items/{item_id:int}", item)])

    async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await PlainTextResponse("plain")(scope, receive, send)

    with serve(CircuitBreakerMiddleware(starlette_app)) as client:
        assert client.get("/items/5").json() == {"id": 5}
    assert list(_registry.circuits()) == ["GET /items/{item_id}"]
    with serve(CircuitBreakerMiddleware(plain)) as client:
        assert client.get("/anything/at/all").text == "plain"
        assert client.post("/else").text == "plain"
    assert sorted(_registry.circuits()) == ["GET /items/{item_id}", "GET <unmatched>", "POST <unmatched>"]


def test_name_callable_string_and_exclude() -> None:
    def name(scope: dict[str, Any]) -> str | None:
        return None if scope["path"] == "/free" else "tenant-" + scope["path"].strip("/")

    app = app_with(
        [Route(p, lambda request: PlainTextResponse("ok")) for p in ("/a", "/free", "/ops/stream")],
        name=name,
        exclude=("/ops",),
    )
    with serve(app) as client:
        for path in ("/a", "/free", "/ops/stream"):
            assert client.get(path).text == "ok"
    assert list(_registry.circuits()) == ["tenant-a"]
    app = app_with([Route("/a", lambda request: PlainTextResponse("ok"))], name="everything")
    with serve(app) as client:
        assert client.get("/a").text == "ok"
        assert client.get("/b").status_code == 404
    assert metrics("everything").requests == 2


def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[tuple[Any, ...]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    middleware = CircuitBreakerMiddleware(inner)

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    for kind in ("lifespan", "websocket"):
        scope = {"type": kind, "path": "/ws"}
        asyncio.run(middleware(scope, receive, send))
        assert seen[-1] == (scope, receive, send)
    assert _registry.circuits() == {}


# -- failures, the open circuit, recovery ---------------------------------------------------------------


def test_5xx_and_exceptions_trip_the_circuit_and_it_recovers() -> None:
    state = {"mode": "500", "calls": 0}

    async def flaky(request: Request) -> Response:
        state["calls"] += 1
        if state["mode"] == "500":
            return PlainTextResponse("down for now", status_code=500)
        if state["mode"] == "raise":
            raise RuntimeError("boom")
        return PlainTextResponse("fine")

    config = fasthystrix.CommandConfig(request_volume_threshold=4, error_percent_threshold=50, sleep_window=300)
    with serve(app_with([Route("/flaky", flaky)], config=config)) as client:
        for _ in range(2):
            response = client.get("/flaky")
            assert (response.status_code, response.text) == (500, "down for now")  # the app's own answer
        state["mode"] = "raise"
        for _ in range(2):
            # Starlette's ServerErrorMiddleware answers, then re-raises, and uvicorn closes the
            # connection: ask for that, so that no request races the close on a kept-alive one.
            assert client.get("/flaky", headers={"connection": "close"}).status_code == 500
        # Recorded once the command ends, after the app's response has gone out.
        wait_until(lambda: metrics("GET /flaky").failures == 4, "the four failures recorded")
        assert state["calls"] == 4

        response = client.get("/flaky")
        assert response.status_code == 503
        assert response.json() == {"error": "circuit open", "command": "GET /flaky"}
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/json"
        assert state["calls"] == 4  # the app was not run
        assert metrics("GET /flaky").short_circuits == 1

        state["mode"] = "ok"
        time.sleep(0.35)  # the sleep window: the next request is the trial
        response = client.get("/flaky")
        assert (response.status_code, response.text) == (200, "fine")
        circuit, _ = fasthystrix.get_circuit("GET /flaky")
        wait_until(lambda: not circuit.is_open(), "the trial closed the circuit")  # recorded after the response
        assert client.get("/flaky").status_code == 200


def test_4xx_are_not_failures() -> None:
    async def bad(request: Request) -> Response:
        if request.query_params.get("kind") == "raise":
            raise HTTPException(status_code=404, detail="no such thing")
        return PlainTextResponse("bad request", status_code=400)

    config = fasthystrix.CommandConfig(request_volume_threshold=2, error_percent_threshold=1)
    with serve(app_with([Route("/bad", bad)], config=config)) as client:
        for i in range(8):
            response = client.get("/bad", params={"kind": "raise" if i % 2 else "return"})
            assert response.status_code == (404 if i % 2 else 400)
    snapshot = metrics("GET /bad")
    assert (snapshot.successes, snapshot.failures, snapshot.errors) == (8, 0, 0)
    assert not fasthystrix.get_circuit("GET /bad")[0].is_open()


@pytest.mark.parametrize(
    ("is_failure", "failures"),
    [({429, 503}, 2), (lambda status: status >= 400, 3), (None, 1)],
    ids=["statuses", "predicate", "default"],
)
def test_is_failure_says_which_statuses_are_failures(is_failure: Any, failures: int) -> None:
    async def status(request: Request) -> Response:
        code = request.path_params["code"]
        return PlainTextResponse(f"answered {code}", status_code=code)

    app = app_with(
        [Route("/status/{code:int}", status)], config={"request_volume_threshold": 100}, is_failure=is_failure
    )
    with serve(app) as client:
        for code in (200, 404, 429, 503):
            response = client.get(f"/status/{code}")
            assert (response.status_code, response.text) == (code, f"answered {code}")  # the app's own answer
    circuit = fasthystrix.get_circuit("GET /status/{code}")[0]
    wait_until(lambda: circuit.metrics().requests == 4, "the four requests recorded")
    snapshot = metrics("GET /status/{code}")
    assert (snapshot.successes, snapshot.failures) == (4 - failures, failures)


@pytest.mark.parametrize("value", ["500", [500, "502"], [99], 3.5])
def test_is_failure_is_checked(value: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match="is_failure"):
        CircuitBreakerMiddleware(app, is_failure=value)


def test_a_nested_commands_error_is_a_failure_not_a_503() -> None:
    async def nested(request: Request) -> Response:
        return await fasthystrix.do_async("inner", lambda: asyncio.sleep(0, "never"))

    fasthystrix.get_circuit("inner")[0].force_open = True
    with serve(app_with([Route("/nested", nested)])) as client:
        # The app's own CircuitOpenError is not the route's: Starlette answers 500, not a 503 from us.
        assert client.get("/nested", headers={"connection": "close"}).status_code == 500
    snapshot = metrics("GET /nested")
    assert (snapshot.failures, snapshot.short_circuits) == (1, 0)
    assert metrics("inner").short_circuits == 1


# -- concurrency and timeouts ---------------------------------------------------------------------


def test_max_concurrency_rejects_with_503() -> None:
    release = threading.Event()
    inside: list[int] = []

    async def slow(request: Request) -> Response:
        inside.append(1)
        while not release.is_set():
            await asyncio.sleep(0.005)
        return PlainTextResponse("done")

    # The two admitted requests hold their tickets until the test releases them.
    config = fasthystrix.CommandConfig(max_concurrent_requests=2, timeout=120_000)
    with serve(app_with([Route("/slow", slow)], config=config)) as client, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.get, "/slow") for _ in range(6)]
        rejected = []
        for future in as_completed(futures, timeout=WAIT):
            rejected.append(future.result())
            if len(rejected) == 4:
                break
        assert [r.status_code for r in rejected] == [503] * 4
        assert all(r.json() == {"error": "max concurrency", "command": "GET /slow"} for r in rejected)
        assert rejected[0].headers["retry-after"] == "1"  # retry_after_rejected's default
        wait_until(lambda: len(inside) == 2, "the two admitted requests in the handler")
        release.set()
        statuses = sorted(f.result().status_code for f in futures)
    assert statuses == [200, 200, 503, 503, 503, 503]
    snapshot = metrics("GET /slow")
    assert (snapshot.successes, snapshot.rejects) == (2, 4)


def test_a_full_route_sheds_at_the_door_without_reading_the_body() -> None:
    release = threading.Event()
    calls: list[str] = []

    async def slow(request: Request) -> Response:
        calls.append(request.method)
        while not release.is_set():
            await asyncio.sleep(0.005)
        return PlainTextResponse("done")

    config = fasthystrix.CommandConfig(max_concurrent_requests=1, timeout=120_000)
    app = app_with([Route("/slow", slow, methods=["GET", "POST"])], name="slow", config=config, retry_after_rejected=7)
    with serve(app) as client, ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.get, "/slow")
        wait_until(lambda: calls == ["GET"], "the one ticket taken")
        response = client.get("/slow")
        assert response.status_code == 503
        assert response.json() == {"error": "max concurrency", "command": "slow"}
        assert response.headers["retry-after"] == "7"
        assert "close" not in response.headers.get("connection", "")  # no body: the connection is kept
        # A body announced and never sent: answered at once, the body never read (the command's
        # path would wait for it), and the connection closed.
        head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
        answer = raw_exchange(client.base_url.port or 0, head)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 7\r\n" in answer.lower()
        assert b"connection: close\r\n" in answer.lower()
        assert b'{"error": "max concurrency", "command": "slow"}' in answer
        release.set()
        assert held.result().text == "done"
    assert calls == ["GET"]  # the app never ran for a shed request
    assert (metrics("slow").successes, metrics("slow").rejects) == (1, 2)
    # No ticket outlives its request (the autouse fixture checks it too).
    assert fasthystrix.get_circuit("slow")[0].tickets_in_use == 0


def test_the_exchange_adds_no_init_to_its_core() -> None:
    # The compiled path makes each request's exchange without calling __init__ (the core's fields
    # are set in C), and its send() calls the core's put() directly: an __init__ or a put() a mixin
    # added would be skipped there.
    from fasthystrix import _impl, asgi

    assert asgi._Exchange.__init__ is _impl.current().ExchangeCore.__init__
    assert asgi._Exchange.put is _impl.current().ExchangeCore.put is _impl.current().OutboxCore.put


def test_the_apps_send_takes_its_message_by_position_only() -> None:
    # The compiled send() is a one-argument C method (no keyword parsing): both cores take the
    # message as the ASGI spec passes it, by position, and turn a keyword away alike.
    from fasthystrix import asgi

    async def server_send(message: Any) -> None:
        sent.append(message)

    sent: list[Any] = []
    exchange = asgi._Exchange(None, {"type": "http"}, None, None, server_send, 1024, None)
    message = {"type": "http.response.start", "status": 200, "headers": []}
    with pytest.raises(TypeError):
        exchange.send(message=message)
    asyncio.run(exchange.send(message))
    assert (sent, exchange.status) == ([message], 200)


def test_a_full_route_with_max_queue_wait_lets_the_request_wait_for_a_ticket() -> None:
    release = threading.Event()
    calls: list[str] = []

    async def slow(request: Request) -> Response:
        calls.append(request.url.path)
        while not release.is_set():
            await asyncio.sleep(0.005)
        return PlainTextResponse("done")

    config = fasthystrix.CommandConfig(max_concurrent_requests=1, timeout=120_000, max_queue_wait=120_000)
    app = app_with([Route("/slow", slow)], name="slow", config=config)
    with serve(app) as client, ThreadPoolExecutor(2) as pool:
        held = pool.submit(client.get, "/slow")
        wait_until(lambda: len(calls) == 1, "the one ticket taken")
        waiting = pool.submit(client.get, "/slow")  # not shed at the door: its command queues
        circuit = fasthystrix.get_circuit("slow")[0]
        wait_until(lambda: circuit.queue_size == 1, "the second request waiting for the ticket")
        release.set()
        assert (held.result().text, waiting.result().text) == ("done", "done")
    assert len(calls) == 2
    assert (metrics("slow").successes, metrics("slow").rejects) == (2, 0)


def test_the_door_sheds_by_the_current_adaptive_limit() -> None:
    release = threading.Event()
    calls: list[str] = []

    async def slow(request: Request) -> Response:
        calls.append(request.url.path)
        while not release.is_set():
            await asyncio.sleep(0.005)
        return PlainTextResponse("done")

    limit = fasthystrix.AdaptiveLimit(algorithm="aimd", initial=1, min_limit=1, max_limit=5)
    config = fasthystrix.CommandConfig(max_concurrent_requests=limit, timeout=120_000)
    app = app_with([Route("/slow", slow)], name="slow", config=config)
    with serve(app) as client, ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.get, "/slow")
        wait_until(lambda: len(calls) == 1, "the one ticket of the adaptive limit taken")
        assert fasthystrix.get_circuit("slow")[0].concurrency_limit == 1
        response = client.get("/slow")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        release.set()
        assert held.result().text == "done"
    assert calls == ["/slow"]
    assert (metrics("slow").successes, metrics("slow").rejects) == (1, 1)


def test_an_open_circuit_sheds_at_the_door_with_what_remains_of_the_sleep_window(clock: FakeClock) -> None:
    state = {"fail": True, "calls": 0}

    async def flaky(request: Request) -> Response:
        state["calls"] += 1
        return PlainTextResponse("down" if state["fail"] else "fine", status_code=500 if state["fail"] else 200)

    config = fasthystrix.CommandConfig(request_volume_threshold=2, error_percent_threshold=50, sleep_window=5000)
    with serve(app_with([Route("/flaky", flaky)], config=config)) as client:
        assert [client.get("/flaky").status_code for _ in range(2)] == [500, 500]
        response = client.get("/flaky")  # its command trips the circuit
        assert (response.status_code, response.headers["retry-after"]) == (503, "5")
        clock.advance(1.3)
        response = client.get("/flaky")  # at the door
        assert response.status_code == 503
        assert response.json() == {"error": "circuit open", "command": "GET /flaky"}
        assert response.headers["retry-after"] == "4"  # 3.7 s left, rounded up
        clock.advance(3.6)
        assert client.get("/flaky").headers["retry-after"] == "1"  # 0.1 s left: at least 1
        assert state["calls"] == 2  # the app never ran while open
        assert metrics("GET /flaky").short_circuits == 3
        state["fail"] = False
        clock.advance(0.2)  # the window has passed: the next request is the trial
        assert client.get("/flaky").text == "fine"
        circuit, _ = fasthystrix.get_circuit("GET /flaky")
        wait_until(lambda: circuit.state() == "closed", "the trial closed the circuit")
        assert client.get("/flaky").text == "fine"
    assert state["calls"] == 4


def test_a_failed_trial_keeps_the_window_it_began(clock: FakeClock) -> None:
    state = {"calls": 0}

    async def down(request: Request) -> Response:
        state["calls"] += 1
        clock.advance(0.5)  # the trial takes half a second of the circuit's time
        return PlainTextResponse("down", status_code=500)

    config = fasthystrix.CommandConfig(request_volume_threshold=1, error_percent_threshold=50, sleep_window=2000)
    with serve(app_with([Route("/down", down)], config=config)) as client:
        assert client.get("/down").status_code == 500
        assert client.get("/down").headers["retry-after"] == "2"  # tripped
        clock.advance(2.1)
        assert client.get("/down").status_code == 500  # the trial, which fails
        # The window began when the trial did (0.5 s ago), as the circuit counts it: 1.5 s left.
        assert client.get("/down").headers["retry-after"] == "2"
        clock.advance(1.4)
        assert client.get("/down").headers["retry-after"] == "1"
    assert state["calls"] == 2


class Interrupt(BaseException):
    """What a state listener may raise past the logging of its errors (as ``KeyboardInterrupt`` does)."""


def test_a_trial_whose_announcement_raises_keeps_no_ticket(clock: FakeClock) -> None:
    state = {"fail": True}

    async def flaky(request: Request) -> Response:
        return PlainTextResponse("fine", status_code=500 if state["fail"] else 200)

    def interrupting(name: str, old: str, new: str) -> None:
        if new == "half-open":
            raise Interrupt(name)

    config = fasthystrix.CommandConfig(request_volume_threshold=2, error_percent_threshold=50, sleep_window=1000)
    middleware = app_with([Route("/flaky", flaky)], config=config)
    request = [{"type": "http.request", "body": b"", "more_body": False}]

    def status() -> int:
        return int(call_in_process(middleware, {"path": "/flaky"}, request)[0]["status"])

    assert [status() for _ in range(3)] == [500, 500, 503]  # the third trips the circuit
    circuit, _ = fasthystrix.get_circuit("GET /flaky")
    remove = fasthystrix.on_state_change(interrupting)
    state["fail"] = False
    clock.advance(1.5)
    with pytest.raises(Interrupt):
        status()  # the trial: its announcement raises
    assert circuit.tickets_in_use == 0
    assert circuit.state() == "open"  # counted as a failed trial: another sleep window
    remove()
    clock.advance(1.5)
    assert status() == 200
    assert circuit.state() == "closed"


def test_forced_open_sheds_with_the_sleep_window() -> None:
    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    with serve(app_with([Route("/ok", ok)], config={"sleep_window": 2500})) as client:
        assert client.get("/ok").text == "ok"
        fasthystrix.get_circuit("GET /ok")[0].force_open = True
        response = client.get("/ok")
        assert (response.status_code, response.headers["retry-after"]) == (503, "3")
    assert metrics("GET /ok").short_circuits == 1


def test_every_circuit_state_the_door_reads_gets_its_answer() -> None:
    """The compiled __call__ serves a request itself only when the circuit is closed (forced closed,
    or its breaker disabled) and a ticket is free or may be waited for; every other state goes the
    whole way through _serve. Each state, in turn, on one route, gets the answer it should."""
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await PlainTextResponse("ok")(scope, receive, send)

    middleware = CircuitBreakerMiddleware(app, config={"max_concurrent_requests": 1, "sleep_window": 60_000})

    def status() -> int:
        return int(call_in_process(middleware, {"path": "/door"}, [])[0]["status"])

    assert status() == 200  # the first request: no circuit yet, made by its command
    circuit = fasthystrix.get_circuit("GET <unmatched>")[0]
    assert status() == 200  # closed, a ticket free: served in C (compiled)
    circuit.force_open = True
    assert status() == 503  # forced open: shed
    circuit.force_closed = True
    assert status() == 503  # forced open beats forced closed
    circuit.force_open = False
    assert status() == 200  # forced closed
    circuit.force_closed = False
    fasthystrix.configure_command("GET <unmatched>", fasthystrix.CommandConfig(max_concurrent_requests=0))
    assert status() == 503  # no ticket: shed (rejected)
    fasthystrix.configure_command(
        "GET <unmatched>", fasthystrix.CommandConfig(max_concurrent_requests=0, max_queue_wait=1)
    )
    assert status() == 503  # may wait for one, which never comes: rejected after the wait
    fasthystrix.configure_command("GET <unmatched>", fasthystrix.CommandConfig(max_concurrent_requests=1))
    circuit.force_open = True
    fasthystrix.configure_command("GET <unmatched>", fasthystrix.CommandConfig(circuit_breaker_enabled=False))
    assert status() == 200  # the breaker disabled: never short-circuits, forced open included
    m = metrics("GET <unmatched>")
    assert (m.successes, m.short_circuits, m.rejects) == (4, 2, 2)
    assert len(calls) == 4


def test_timeout_answers_503_and_really_cancels_the_handler() -> None:
    cancelled = threading.Event()

    async def stuck(request: Request) -> Response:
        try:
            await asyncio.sleep(2 * WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return PlainTextResponse("too late")

    config = fasthystrix.CommandConfig(timeout=200)
    with serve(app_with([Route("/stuck", stuck)], config=config)) as client:
        started = time.monotonic()
        response = client.get("/stuck")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json() == {"error": "timeout", "command": "GET /stuck"}
    assert elapsed >= 0.19
    assert cancelled.is_set()  # at the timeout, not at the end of the handler's sleep
    assert metrics("GET /stuck").timeouts == 1


@pytest.mark.parametrize("swallow", [False, True], ids=["reraises", "swallows"])
def test_a_handler_that_awaits_while_it_unwinds_from_the_timeout(swallow: bool) -> None:
    cleaned = threading.Event()

    async def stubborn(request: Request) -> Response:
        try:
            await asyncio.sleep(2 * WAIT)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleanup that awaits: the command ends once it has
            await asyncio.sleep(0)
            cleaned.set()
            if not swallow:
                raise
        return PlainTextResponse("too late")

    config = fasthystrix.CommandConfig(timeout=100)
    with serve(app_with([Route("/stubborn", stubborn)], config=config)) as client:
        response = client.get("/stubborn")
        if swallow:
            # A complete response, though past its deadline: the client gets it, counted as a timeout.
            assert (response.status_code, response.text) == (200, "too late")
        else:
            assert (response.status_code, response.json()["error"]) == (503, "timeout")
        assert cleaned.is_set()  # the answer came after the handler had unwound
        # A complete response goes out before its command ends: the ticket comes back just after.
        wait_until(lambda: fasthystrix.get_circuit("GET /stubborn")[0].tickets_in_use == 0, "the ticket back")
    assert metrics("GET /stubborn").timeouts == 1


def test_a_handler_that_answers_without_waiting_is_judged_by_its_time(clock: FakeClock) -> None:
    # The compiled path ends a request whose app answered in its first step itself, without a
    # do_async: a success in time counts as one, a late or slow one as do_async would count it.
    durations = iter([0.05, 0.3, 0.15])

    async def busy(request: Request) -> Response:
        clock.advance(next(durations))  # the handler's time, spent without awaiting
        return PlainTextResponse("done")

    config = fasthystrix.CommandConfig(timeout=200, slow_call_duration=100)
    with serve(app_with([Route("/busy", busy)], config=config)) as client:
        # A complete response goes out before its command ends, whatever the command counts.
        assert [client.get("/busy").text for _ in range(3)] == ["done"] * 3
        circuit = fasthystrix.get_circuit("GET /busy")[0]
        wait_until(lambda: circuit.tickets_in_use == 0, "every ticket back")
    m = metrics("GET /busy")
    # 50 ms: a success; 300 ms: past the timeout, a timeout; 150 ms: a slow success (a timeout is
    # not counted as a slow call).
    assert (m.successes, m.timeouts, m.failures, m.slow_calls) == (2, 1, 0, 1)


def test_an_error_where_the_command_goes_on_after_the_apps_first_wait_is_the_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The compiled path admits the command and takes the app's first step itself: what fails when
    # the command goes on from the app's first wait is the command's failure, its ticket back.
    from fasthystrix import asgi

    def broken(self: Any, yielded: Any) -> Any:
        raise RuntimeError("the rest of the command cannot start")

    async def waits(request: Request) -> Response:
        await asyncio.sleep(0)
        return PlainTextResponse("never")

    monkeypatch.setattr(asgi._Exchange, "_run_from", broken)
    with serve(app_with([Route("/waits", waits)])) as client:
        # The first request of a route takes the Python path (its command is not known yet); the
        # second the compiled one. A request that ends in an error can leave its connection closed
        # behind its 500, which a reused keep-alive connection then meets as a reset: one a request.
        close = {"connection": "close"}
        assert [client.get("/waits", headers=close).status_code for _ in range(2)] == [500, 500]
        assert fasthystrix.get_circuit("GET /waits")[0].tickets_in_use == 0
    m = metrics("GET /waits")
    assert (m.successes, m.failures) == (0, 2)


@hardened_against_failed_allocations
@pytest.mark.parametrize("waits", [False, True], ids=["answers at once", "waits first"])
def test_a_failed_allocation_in_a_requests_first_step_keeps_no_ticket(waits: bool) -> None:
    # Out of memory anywhere in the request's first step (the compiled path admits the command,
    # steps the app, and makes the DoAsync that takes a waiting one over): the request fails or
    # answers, and the ticket comes back either way.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if waits:
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "http_version": "1.1", "headers": []}
    statuses: list[int] = []

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def sweep() -> list[str]:
        config = fasthystrix.CommandConfig(request_volume_threshold=10_000)  # never open: every request runs
        middleware = CircuitBreakerMiddleware(app, name="allocations", config=config)
        await middleware(scope, receive, send)  # the first request of a route learns its command
        outcomes = []
        for number in range(150):
            outcome = await first_step_failing_allocation(middleware(scope, receive, send), number)
            assert fasthystrix.get_circuit("allocations")[0].tickets_in_use == 0, (number, outcome)
            outcomes.append(outcome)
        return outcomes

    outcomes = asyncio.run(sweep())
    assert "raised" in outcomes  # some allocation failed, and the error reached the server
    # The sweep went past the first step's last allocation: the last requests were served.
    assert outcomes[-10:] == ["returned after waiting" if waits else "returned"] * 10, outcomes
    assert statuses[-10:] == [200] * 10


def test_a_nested_commands_timeout_is_its_own_not_the_routes() -> None:
    async def slow_dependency() -> str:
        await asyncio.sleep(2 * WAIT)
        return "fresh"

    async def price(request: Request) -> Response:
        # The inner deadline cancels the request's task, which runs the app: the inner command
        # takes its cancellation back and answers with its fallback; the route goes on.
        value = await fasthystrix.do_async("dependency", slow_dependency, lambda err: "stale")
        await asyncio.sleep(0)
        return PlainTextResponse(value)

    fasthystrix.configure_command("dependency", fasthystrix.CommandConfig(timeout=50))
    with serve(app_with([Route("/price", price)], config={"timeout": 10_000})) as client:
        for _ in range(2):
            response = client.get("/price")
            assert (response.status_code, response.text) == (200, "stale")
    route = metrics("GET /price")
    assert (route.successes, route.timeouts, route.failures) == (2, 0, 0)
    assert metrics("dependency").timeouts == 2


def test_timeout_mid_stream_cuts_the_response_short() -> None:
    cancelled = threading.Event()

    async def body() -> Any:
        yield b"first chunk\n"
        try:
            await asyncio.sleep(2 * WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield b"never sent\n"

    async def stream(request: Request) -> Response:
        return StreamingResponse(body(), media_type="text/plain")

    config = fasthystrix.CommandConfig(timeout=200)
    with serve(app_with([Route("/stream", stream)], config=config)) as client:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", "/stream") as response:
            assert response.status_code == 200  # it had started: no 503 can follow
            for chunk in response.iter_bytes():
                received += chunk
    assert received == b"first chunk\n"
    assert cancelled.is_set()
    assert metrics("GET /stream").timeouts == 1


def test_a_complete_stream_and_background_work_after_the_response() -> None:
    finished = threading.Event()

    async def body() -> Any:
        for i in range(3):
            yield f"{i}\n".encode()
            await asyncio.sleep(0.01)

    async def stream(request: Request) -> Response:
        return StreamingResponse(body(), media_type="text/plain")

    async def background() -> None:
        await asyncio.sleep(1.2)  # longer than the timeout, which covers only the response
        finished.set()

    async def later(request: Request) -> Response:
        return PlainTextResponse("accepted", status_code=202, background=BackgroundTask(background))

    # 1 s: far longer than the 30 ms stream takes, even on a busy machine.
    config = fasthystrix.CommandConfig(timeout=1000)
    routes = [Route("/stream", stream), Route("/later", later)]
    with serve(app_with(routes, config=config)) as client:
        assert client.get("/stream").text == "0\n1\n2\n"
        response = client.get("/later")
        assert (response.status_code, response.text) == (202, "accepted")
        assert finished.wait(WAIT)  # not cancelled at the timeout: the command ended with the response
    assert metrics("GET /stream").successes == 1
    snapshot = metrics("GET /later")
    assert (snapshot.successes, snapshot.timeouts) == (1, 0)


def test_a_client_leaving_mid_response_is_not_a_failure() -> None:
    async def body() -> Any:
        while True:
            yield b"tick\n"
            await asyncio.sleep(0.01)

    async def endless(request: Request) -> Response:
        return StreamingResponse(body(), media_type="text/plain")

    config = fasthystrix.CommandConfig(timeout=5000)
    with serve(app_with([Route("/endless", endless)], config=config)) as client:
        with client.stream("GET", "/endless") as response:
            assert next(response.iter_bytes()).startswith(b"tick")
        wait_until(
            lambda: "GET /endless" in _registry.circuits() and metrics("GET /endless").requests == 1,
            "the request counted",
        )
    snapshot = metrics("GET /endless")
    assert (snapshot.context_canceled, snapshot.failures, snapshot.errors) == (1, 0, 0)


# -- slow clients: their time is not the route's ---------------------------------------------------


def counting(app: Any, seen: list[str]) -> Any:
    """``app``, noting the path of each HTTP request as the server hands it over (headers read)."""

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)

    return counted


@pytest.mark.parametrize("trickle", [True, False], ids=["trickling", "stalled"])
def test_slow_uploads_leave_the_route_to_other_clients(trickle: bool) -> None:
    async def upload(request: Request) -> Response:
        return PlainTextResponse(f"{len(await request.body())} bytes")

    seen: list[str] = []
    app = counting(app_with([Route("/upload", upload, methods=["POST"])]), seen)  # the default config
    with serve(app) as client, SlowUploads(client.base_url.port or 0, "/upload", 10, trickle=trickle) as attack:
        wait_until(lambda: attack.connected >= 10 and seen.count("/upload") >= 10, "ten slow uploads begun")
        statuses = [client.post("/upload", content=b"y" * 1000).status_code for _ in range(30)]
        assert statuses == [200] * 30
        circuit = fasthystrix.get_circuit("POST /upload")[0]
        wait_until(lambda: circuit.tickets_in_use == 0, "no ticket held while the uploads go on")
        assert attack.answers == {}  # still uploading: the server's own timeouts are theirs
    snapshot = metrics("POST /upload")
    assert (snapshot.successes, snapshot.errors) == (30, 0)


def test_slow_readers_leave_the_route_to_other_clients() -> None:
    chunk = b"z" * 65536

    async def chunks() -> Any:
        for _ in range(64):  # 4 MiB in 64 messages: far more than the socket buffers hold
            yield chunk

    async def download(request: Request) -> Response:
        produced.append(1)
        return StreamingResponse(chunks(), media_type="application/octet-stream")

    produced: list[int] = []
    config = fasthystrix.CommandConfig(timeout=120_000)  # only the buffer, not the timeout, ends them
    with serve(app_with([Route("/download", download)], config=config)) as client:
        with SlowReaders(client.base_url.port or 0, "/download", 10):
            wait_until(lambda: len(produced) == 10, "ten slow readers answered")
            circuit = _registry.circuits()["GET /download"]  # made by the first request, with the config
            wait_until(lambda: circuit.tickets_in_use == 0, "no ticket held for a client that does not read")
            for _ in range(3):
                response = client.get("/download")
                assert (response.status_code, len(response.content)) == (200, 64 * 65536)
    snapshot = metrics("GET /download")
    assert (snapshot.rejects, snapshot.timeouts, snapshot.failures) == (0, 0, 0)


def test_a_send_that_waits_is_finished_in_order_by_the_pump() -> None:
    from fasthystrix.asgi import _Outbox

    async def main() -> None:
        sent: list[int] = []
        unwound: list[int] = []
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def send(message: dict[str, Any]) -> None:
            try:
                if message.get("wait"):
                    await gate
                elif message.get("yield"):
                    await asyncio.sleep(0)  # a bare yield, not a future
            finally:
                unwound.append(message["n"])
            sent.append(message["n"])

        outbox = _Outbox(send)
        outbox.put({"n": 1, "body": b"x"})  # taken at once: no task, nothing buffered
        assert (sent, outbox.buffered, outbox.idle) == ([1], 0, True)
        outbox.put({"n": 2, "body": b"xx", "wait": True})  # waits: the pump finishes it
        outbox.put({"n": 3, "body": b"yyy", "yield": True})  # queued behind it, in order
        outbox.put({"n": 4, "body": b"zzzz"})
        assert (sent, outbox.buffered, outbox.idle) == ([1], 9, False)
        for _ in range(3):
            await asyncio.sleep(0)  # the pump runs: still waiting for the gate
        assert (sent, outbox.buffered, outbox.error) == ([1], 9, None)
        gate.set_result(None)
        await outbox.drained()
        assert (sent, outbox.buffered, outbox.idle) == ([1, 2, 3, 4], 0, True)
        outbox.put({"n": 5, "yield": True})  # after the pump ended: stepped at once again, then pumped
        await outbox.close()
        assert sent == [1, 2, 3, 4, 5]

        # Stopped while the server's send waits: that send unwinds (cancelled).
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def stuck(message: dict[str, Any]) -> None:
            try:
                await never
            finally:
                unwound.append(-1)

        blocked = _Outbox(stuck)
        blocked.put({"n": 7})
        await asyncio.sleep(0)  # the pump starts waiting
        blocked.abort()
        await asyncio.sleep(0)
        assert unwound[-1] == -1 and blocked.idle

        # A send that fails: the app's next put raises its error; close() keeps quiet about an OSError.
        async def gone(message: dict[str, Any]) -> None:
            await asyncio.sleep(0)
            raise ConnectionResetError("the client went away")

        failing = _Outbox(gone)
        failing.put({"n": 8})
        await failing.drained()
        with pytest.raises(ConnectionResetError):
            failing.put({"n": 9})
        await failing.close()

    asyncio.run(main())


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection, and nothing more; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    return received


def test_bodies_are_read_first_replayed_to_the_app_and_bounded() -> None:
    bodies: list[bytes] = []

    async def upload(request: Request) -> Response:
        bodies.append(await request.body())
        return PlainTextResponse(str(len(bodies[-1])))

    app = app_with([Route("/upload", upload, methods=["POST"])], max_body_size=100_000)
    body = bytes(range(256)) * 390  # 99 840 bytes
    with serve(app) as client:
        port = client.base_url.port or 0
        assert client.post("/upload", content=body).text == "99840"
        assert client.post("/upload", content=iter([body[:50_000], body[50_000:]])).text == "99840"  # chunked
        assert client.post("/upload").text == "0"
        # Announced too large: answered at once, the body never read.
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n"
        answer = raw_exchange(port, head)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b'{"error": "request body too large", "command": "POST /upload", "max_body_size": 100000}' in answer
        # Chunked, found too large once past the bound.
        chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"%x\r\n%s\r\n" % (60_000, b"c" * 60_000) * 2 + b"0\r\n\r\n"
        assert raw_exchange(port, chunked).startswith(b"HTTP/1.1 413 ")
    assert bodies == [body, body, b""]
    snapshot = metrics("POST /upload")
    assert (snapshot.requests, snapshot.successes) == (3, 3)  # a 413 never reaches the command


# -- fallbacks ------------------------------------------------------------------------------------


def test_fallback_response_replaces_the_503() -> None:
    errors: list[BaseException] = []

    def fallback(scope: dict[str, Any], err: fasthystrix.CircuitError) -> Any:
        errors.append(err)
        if scope["path"] == "/price":
            return JSONResponse({"price": 42, "stale": True}, headers={"x-fallback": "1"})
        if scope["path"] == "/tuple":
            return 200, {"content-type": "text/plain"}, "cached"
        return None  # the default 503

    async def fallback_async(scope: dict[str, Any], err: fasthystrix.CircuitError) -> Any:
        return fallback(scope, err)

    routes = [Route(p, lambda request: PlainTextResponse("live")) for p in ("/price", "/tuple", "/other")]
    for chosen in (fallback, fallback_async):
        errors.clear()
        fasthystrix.flush()
        with serve(app_with(routes, fallback=chosen)) as client:
            assert client.get("/price").text == "live"
            fasthystrix.get_circuit("GET /price")[0].force_open = True
            response = client.get("/price")
            assert (response.status_code, response.json()) == (200, {"price": 42, "stale": True})
            assert response.headers["x-fallback"] == "1"
            assert isinstance(errors[-1], fasthystrix.CircuitOpenError)

            fasthystrix.configure_command("GET /tuple", fasthystrix.CommandConfig(max_concurrent_requests=0))
            response = client.get("/tuple")
            assert (response.status_code, response.text) == (200, "cached")
            assert isinstance(errors[-1], fasthystrix.MaxConcurrencyError)

            fasthystrix.get_circuit("GET /other")[0].force_open = True
            assert client.get("/other").json() == {"error": "circuit open", "command": "GET /other"}
        assert metrics("GET /price").short_circuits == 1
        assert metrics("GET /tuple").rejects == 1


def test_config_too_large_for_the_circuit_is_refused_when_the_middleware_is_made() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(ValueError, match=r"request_volume_threshold must be at most 2147483647"):
        CircuitBreakerMiddleware(app, config={"request_volume_threshold": 2**63})
    assert fasthystrix.get_circuit_settings() == {}


def test_config_applies_once_per_name_and_leaves_configured_routes_alone() -> None:
    fasthystrix.configure_command("GET /special", fasthystrix.CommandConfig(timeout=1234))
    routes = [Route(p, lambda request: PlainTextResponse("ok")) for p in ("/plain", "/special")]
    with serve(app_with(routes, config={"timeout": 321, "max_concurrent_requests": 50})) as client:
        assert client.get("/plain").text == "ok"
        assert client.get("/special").text == "ok"
    settings = fasthystrix.get_circuit_settings()
    assert settings["GET /plain"].timeout.total_seconds() == 0.321
    assert settings["GET /plain"].max_concurrent_requests == 50
    assert settings["GET /special"].timeout.total_seconds() == 1.234


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="name"):
        CircuitBreakerMiddleware(item, name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback"):
        CircuitBreakerMiddleware(item, fallback="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exclude"):
        CircuitBreakerMiddleware(item, exclude="/ops")
    with pytest.raises(ValueError, match="timeout"):
        CircuitBreakerMiddleware(item, config={"timeout": -1})
    with pytest.raises(ValueError, match="max_body_size must be an int >= 0 or None, not -1"):
        CircuitBreakerMiddleware(item, max_body_size=-1)
    with pytest.raises(ValueError, match="max_body_size"):
        CircuitBreakerMiddleware(item, max_body_size="1 MB")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response_buffer_size must be an int >= 0, not True"):
        CircuitBreakerMiddleware(item, response_buffer_size=True)
    with pytest.raises(TypeError, match="retry_after_rejected must be an int, not '1'"):
        CircuitBreakerMiddleware(item, retry_after_rejected="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_after_rejected must not be negative, got -1"):
        CircuitBreakerMiddleware(item, retry_after_rejected=-1)


# -- the example ----------------------------------------------------------------------------------


def test_fastapi_example_serves_through_the_middleware() -> None:
    example = load_example("fastapi_app.py")
    example.downstream.healthy()
    # Its pricing command's timeout is 100 ms, only five times the stand-in's 20 ms latency: too
    # little room on a busy machine for "not stale" to be sure. Without the latency, it is.
    example.downstream.latency = 0.0
    try:
        with serve(example.app) as client:
            response = client.get("/api/price")
            assert response.status_code == 200, response.text
            assert response.json()["stale"] is False
            assert client.get("/api/items/7").json()["item_id"] == 7
            assert client.get("/ops/hystrix-dashboard").status_code == 200
            example.downstream.failing()
            assert client.get("/api/items/7").status_code == 502  # the downstream failed: a failure, passed on
            assert client.get("/api/price").json()["stale"] is True  # the inner command's fallback
            if example.prometheus is not None:
                assert 'fasthystrix_events_total{command="GET /api/items/{item_id}",event="failure"} 1.0' in (
                    client.get("/metrics/").text
                )
    finally:
        example.stream_handler.close()
        if example.prometheus is not None:
            example.prometheus_collector.close()
    assert {"GET /api/price", "GET /api/items/{item_id}", "pricing-service"} <= set(_registry.circuits())
    assert metrics("GET /api/items/{item_id}").failures == 1
