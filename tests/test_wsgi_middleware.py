"""fasthystrix.wsgi.CircuitBreakerMiddleware on werkzeug's threaded server, driven over loopback by httpx."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import pytest

import fasthystrix
from conftest import SHARED_TESTS, FakeClock
from fasthystrix import _registry
from fasthystrix.wsgi import UNMATCHED, CircuitBreakerMiddleware
from slow_clients import SlowReaders, SlowUploads
from support import WAIT, load_example, wait_until

httpx = pytest.importorskip("httpx")
flask = pytest.importorskip("flask")

from werkzeug.routing import Map, Rule  # noqa: E402
from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: E402
from werkzeug.wrappers import Response  # noqa: E402

THREAD = fasthystrix.CommandConfig(isolation="thread")
SEMAPHORE = fasthystrix.CommandConfig(isolation="semaphore")


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """Serve ``app`` on werkzeug's threaded server on a loopback port; yield an httpx client for it."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=WAIT) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def metrics(name: str) -> Any:
    circuit = _registry.circuits().get(name)
    assert circuit is not None, f"no circuit {name!r}; circuits: {sorted(_registry.circuits())}"
    return circuit.metrics()


def flask_app(**options: Any) -> Any:
    """A Flask app with ``/items/<int:item_id>``, its wsgi_app wrapped in the middleware."""
    app = flask.Flask(f"test-{uuid.uuid4().hex}")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return {"id": item_id}

    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


# -- naming ----------------------------------------------------------------------------------------


def test_commands_are_named_after_url_rules_not_urls() -> None:
    app = flask_app()
    with serve(app) as client:
        assert client.get("/items/1").json() == {"id": 1}
        assert client.get("/items/2").json() == {"id": 2}
        for _ in range(3):
            assert client.get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}").status_code == 404
        assert client.post("/items/1").status_code == 405
        assert client.request("BREW", f"/{uuid.uuid4().hex}").status_code in (404, 405)
    assert sorted(_registry.circuits()) == [
        "GET /items/<int:item_id>",
        "GET <unmatched>",
        "OTHER <unmatched>",
        "POST <unmatched>",
    ]
    assert metrics("GET /items/<int:item_id>").successes == 2
    unmatched = metrics("GET <unmatched>")
    assert (unmatched.requests, unmatched.failures) == (3, 0)  # one shared circuit; 404s are not failures


def test_a_plain_wsgi_app_with_and_without_a_url_map() -> None:
    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]

    with serve(CircuitBreakerMiddleware(plain)) as client:
        assert client.get("/anything").text == "plain"
        assert client.post("/else").text == "plain"
    assert sorted(_registry.circuits()) == ["GET <unmatched>", "POST <unmatched>"]
    fasthystrix.flush()
    url_map = Map([Rule("/users/<name>")])
    with serve(CircuitBreakerMiddleware(plain, url_map=url_map)) as client:
        assert client.get("/users/ann").text == "plain"
        assert client.get("/users/bob").text == "plain"
        assert client.get("/nope").text == "plain"
    # A shared circuit outlives flush() in its file: circuits() lists the host's, the POST one too.
    assert (
        sorted(_registry.circuits()) == ["GET /users/<name>", "GET <unmatched>"] + ["POST <unmatched>"] * SHARED_TESTS
    )
    assert metrics("GET /users/<name>").successes == 2


def test_rules_are_remembered_per_method_path_and_host_in_a_bounded_table() -> None:
    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    url_map = Map([Rule("/users/<name>", methods=["GET"]), Rule("/", host="api.example")], host_matching=False)
    middleware = CircuitBreakerMiddleware(plain, url_map=url_map)

    def environ(path: str, method: str = "GET", host: str = "example") -> dict[str, Any]:
        return {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "HTTP_HOST": host,
            "SERVER_NAME": host,
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
        }

    for _ in range(2):  # the second time from the table
        assert middleware.route_template(environ("/users/ann")) == "/users/<name>"
        assert middleware.route_template(environ("/users/ann", method="POST")) == UNMATCHED  # a 405
        assert middleware.route_template(environ("/nope")) == UNMATCHED
    for i in range(5000):
        middleware.route_template(environ(f"/users/{i}"))
    assert len(middleware._templates) <= 4096


def test_command_names_are_remembered_per_request_key_unless_a_callable_decides() -> None:
    matched: list[str] = []
    url_map = Map([Rule("/users/<name>", methods=["GET"])])
    real_bind = url_map.bind_to_environ

    def bind_to_environ(environ: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        matched.append(environ["PATH_INFO"])
        return real_bind(environ, *args, **kwargs)

    url_map.bind_to_environ = bind_to_environ  # type: ignore[method-assign]

    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]

    def environ(path: str, host: str = "example") -> dict[str, Any]:
        return {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "HTTP_HOST": host,
            "SERVER_NAME": host,
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
        }

    def call(middleware: Any, env: dict[str, Any]) -> bytes:
        return b"".join(middleware(env, lambda status, headers, exc_info=None: None))

    by_rule = CircuitBreakerMiddleware(plain, url_map=url_map, exclude=("/ops",))
    for _ in range(3):
        assert call(by_rule, environ("/users/ann")) == b"plain"
        assert call(by_rule, environ("/ops/x")) == b"plain"
        assert call(by_rule, environ("/users/ann", host="other")) == b"plain"
    # Matched once per request key (the host is part of it), then answered from the table.
    assert matched == ["/users/ann", "/users/ann"]
    assert by_rule._commands == {
        ("GET", "/users/ann", "", "example", "http"): "GET /users/<name>",
        ("GET", "/ops/x", "", "example", "http"): None,
        ("GET", "/users/ann", "", "other", "http"): "GET /users/<name>",
    }
    assert metrics("GET /users/<name>").successes == 6
    asked: list[str] = []

    def name(env: dict[str, Any]) -> str:
        asked.append(env["PATH_INFO"])
        return "tenant-" + env["HTTP_X_TENANT"]

    by_callable = CircuitBreakerMiddleware(plain, name=name)
    for tenant in ("a", "b", "a"):
        assert call(by_callable, {**environ("/users/ann"), "HTTP_X_TENANT": tenant}) == b"plain"
    assert asked == ["/users/ann"] * 3 and by_callable._commands == {}  # asked every time: it may read anything
    assert (metrics("tenant-a").successes, metrics("tenant-b").successes) == (2, 1)
    # Bounded: a client choosing paths cannot grow the table without end.
    for i in range(5000):
        assert call(by_rule, environ(f"/users/{i}")) == b"plain"
    assert 0 < len(by_rule._commands) <= 4096
    assert metrics("GET /users/<name>").successes == 5006


def test_the_request_key_reads_any_mapping_and_defaults_to_empty_strings() -> None:
    # The key of the middleware's tables, from one definition in the core (the compiled __call__
    # and the Python path both use it): a missing variable is "", a mapping that is not a dict
    # gives the same key.
    from types import MappingProxyType

    from fasthystrix import wsgi

    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/a", "HTTP_HOST": "h", "wsgi.url_scheme": "https"}
    assert wsgi._core.request_key(env) == ("GET", "/a", "", "h", "https")
    assert wsgi._core.request_key(MappingProxyType(env)) == ("GET", "/a", "", "h", "https")
    assert wsgi._core.request_key({}) == ("", "", "", "", "")


def test_name_callable_string_and_exclude() -> None:
    def name(environ: dict[str, Any]) -> str | None:
        path = environ["PATH_INFO"]
        return None if path == "/items/0" else "tenant-" + path.rsplit("/", 1)[-1]

    with serve(flask_app(name=name, exclude=("/items/9",))) as client:
        for i in (0, 1, 9):
            assert client.get(f"/items/{i}").json() == {"id": i}
    assert list(_registry.circuits()) == ["tenant-1"]
    with serve(flask_app(name="everything")) as client:
        assert client.get("/items/1").status_code == 200
        assert client.get("/b").status_code == 404
    assert metrics("everything").requests == 2


# -- failures, the open circuit, recovery ---------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_5xx_and_exceptions_trip_the_circuit_and_it_recovers(isolation: str) -> None:
    state = {"mode": "500", "calls": 0}
    config = fasthystrix.CommandConfig(
        request_volume_threshold=4, error_percent_threshold=50, sleep_window=300, isolation=isolation
    )
    app = flask.Flask("flaky")

    @app.get("/flaky")
    def flaky() -> Any:
        state["calls"] += 1
        if state["mode"] == "500":
            return "down for now", 500
        if state["mode"] == "raise":
            raise RuntimeError("boom")  # Flask answers 500
        return "fine"

    flask_wsgi_app = app.wsgi_app

    def escaping(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/escape":
            state["calls"] += 1
            raise RuntimeError("escapes the app")  # werkzeug's server answers 500
        return flask_wsgi_app(environ, start_response)

    app.wsgi_app = CircuitBreakerMiddleware(escaping, url_map=app.url_map, config=config)  # type: ignore[method-assign]
    app.url_map.add(Rule("/escape", endpoint="escape"))
    with serve(app) as client:
        response = client.get("/flaky")
        assert (response.status_code, response.text) == (500, "down for now")  # the app's own answer
        state["mode"] = "raise"
        assert client.get("/flaky").status_code == 500
        for _ in range(2):
            assert client.get("/escape", headers={"connection": "close"}).status_code == 500
        assert metrics("GET /flaky").failures == 2
        assert metrics("GET /escape").failures == 2
        assert state["calls"] == 4

        for path in ("/flaky", "/flaky", "/flaky"):
            client.get(path)  # two more failures: 4 of 4 requests failed
        response = client.get("/flaky")
        assert response.status_code == 503
        assert response.json() == {"error": "circuit open", "command": "GET /flaky"}
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/json"
        calls = state["calls"]
        assert client.get("/flaky").status_code == 503
        assert state["calls"] == calls  # the app was not run
        # The call that found 4 of 4 failed opened the circuit, and the two after it.
        assert metrics("GET /flaky").short_circuits == 3

        state["mode"] = "ok"
        time.sleep(0.35)  # the sleep window: the next request is the trial
        response = client.get("/flaky")
        assert (response.status_code, response.text) == (200, "fine")
        assert not fasthystrix.get_circuit("GET /flaky")[0].is_open()  # recorded before the response is sent
        assert client.get("/flaky").status_code == 200


def test_4xx_are_not_failures() -> None:
    config = fasthystrix.CommandConfig(request_volume_threshold=2, error_percent_threshold=1)
    app = flask.Flask("bad")

    @app.get("/bad")
    def bad() -> Any:
        if flask.request.args.get("kind") == "abort":
            flask.abort(404)
        return "bad request", 400

    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
    with serve(app) as client:
        for i in range(8):
            response = client.get("/bad", params={"kind": "abort" if i % 2 else "return"})
            assert response.status_code == (404 if i % 2 else 400)
    snapshot = metrics("GET /bad")
    assert (snapshot.successes, snapshot.failures, snapshot.errors) == (8, 0, 0)


@pytest.mark.parametrize(
    ("is_failure", "failures"),
    [({429, 503}, 2), (lambda status: status >= 400, 3), (None, 1)],
    ids=["statuses", "predicate", "default"],
)
def test_is_failure_says_which_statuses_are_failures(is_failure: Any, failures: int) -> None:
    app = flask.Flask("statuses")

    @app.get("/status/<int:code>")
    def status(code: int) -> Any:
        return f"answered {code}", code

    app.wsgi_app = CircuitBreakerMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config={"request_volume_threshold": 100}, is_failure=is_failure
    )
    with serve(app) as client:
        for code in (200, 404, 429, 503):
            response = client.get(f"/status/{code}")
            assert (response.status_code, response.text) == (code, f"answered {code}")  # the app's own answer
    snapshot = metrics("GET /status/<int:code>")
    assert (snapshot.successes, snapshot.failures) == (4 - failures, failures)


@pytest.mark.parametrize("value", ["500", [500, "502"], [99], 3.5])
def test_is_failure_is_checked(value: Any) -> None:
    with pytest.raises(TypeError, match="is_failure"):
        CircuitBreakerMiddleware(lambda environ, start_response: [], is_failure=value)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_a_nested_commands_error_is_a_failure_not_a_503(isolation: str) -> None:
    fasthystrix.get_circuit("inner")[0].force_open = True

    def nested(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return fasthystrix.do("inner", lambda: [b"never"])  # type: ignore[no-any-return]

    middleware = CircuitBreakerMiddleware(nested, config=fasthystrix.CommandConfig(isolation=isolation))
    with serve(middleware) as client:
        # The app's own CircuitOpenError is not the route's: the server answers 500, not a 503 from us.
        assert client.get("/nested", headers={"connection": "close"}).status_code == 500
    snapshot = metrics("GET <unmatched>")
    assert (snapshot.failures, snapshot.short_circuits) == (1, 0)
    assert metrics("inner").short_circuits == 1


# -- concurrency and timeouts ---------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_max_concurrency_rejects_with_503(isolation: str) -> None:
    release = threading.Event()
    inside: list[int] = []
    app = flask.Flask("slow")

    @app.get("/slow")
    def slow() -> Any:
        inside.append(1)
        release.wait(2 * WAIT)
        return "done"

    # The two admitted requests hold their tickets until the test releases them.
    config = fasthystrix.CommandConfig(max_concurrent_requests=2, timeout=120_000, isolation=isolation)
    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
    with serve(app) as client, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.get, "/slow") for _ in range(6)]
        rejected = []
        for future in as_completed(futures, timeout=WAIT):
            rejected.append(future.result())
            if len(rejected) == 4:
                break
        assert [r.status_code for r in rejected] == [503] * 4
        assert all(r.json() == {"error": "max concurrency", "command": "GET /slow"} for r in rejected)
        wait_until(lambda: len(inside) == 2, "the two admitted requests in the view")
        release.set()
        statuses = sorted(f.result().status_code for f in futures)
    assert statuses == [200, 200, 503, 503, 503, 503]
    snapshot = metrics("GET /slow")
    assert (snapshot.successes, snapshot.rejects) == (2, 4)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_a_full_route_sheds_at_the_door_without_reading_the_body(isolation: str) -> None:
    release = threading.Event()
    calls: list[str] = []
    app = flask.Flask("slow")

    @app.route("/slow", methods=["GET", "POST"])
    def slow() -> Any:
        calls.append(flask.request.method)
        release.wait(2 * WAIT)
        return "done"

    config = fasthystrix.CommandConfig(max_concurrent_requests=1, timeout=120_000, isolation=isolation)
    app.wsgi_app = CircuitBreakerMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, name="slow", config=config, retry_after_rejected=7
    )
    with serve(app) as client, ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.get, "/slow")
        wait_until(lambda: calls == ["GET"], "the one ticket taken")
        response = client.get("/slow")
        assert response.status_code == 503
        assert response.json() == {"error": "max concurrency", "command": "slow"}
        assert response.headers["retry-after"] == "7"
        # A body announced and never sent: answered at once, the body never read (the command's
        # path would answer 400, an incomplete body), and the connection closed.
        head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
        answer = raw_exchange(client.base_url.port or 0, head)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 7\r\n" in answer.lower()
        assert b"connection: close\r\n" in answer.lower()
        release.set()
        assert held.result().text == "done"
    assert calls == ["GET"]  # the app never ran for a shed request
    assert (metrics("slow").successes, metrics("slow").rejects) == (1, 2)
    assert fasthystrix.get_circuit("slow")[0].tickets_in_use == 0


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_an_open_circuit_sheds_at_the_door_with_what_remains_of_the_sleep_window(
    isolation: str, clock: FakeClock
) -> None:
    state = {"fail": True, "calls": 0}
    app = flask.Flask("flaky")

    @app.get("/flaky")
    def flaky() -> Any:
        state["calls"] += 1
        return ("down", 500) if state["fail"] else "fine"

    config = fasthystrix.CommandConfig(
        request_volume_threshold=2, error_percent_threshold=50, sleep_window=5000, isolation=isolation
    )
    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
    with serve(app) as client:
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
        assert fasthystrix.get_circuit("GET /flaky")[0].state() == "closed"
        assert client.get("/flaky").text == "fine"
    assert state["calls"] == 4


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_timeout_answers_503_and_closes_the_late_response(isolation: str) -> None:
    closed = threading.Event()
    release = threading.Event()
    returned = threading.Event()
    app = flask.Flask("stuck")

    @app.get("/stuck")
    def stuck() -> Any:
        if isolation == "thread":
            release.wait(2 * WAIT)  # until the test has its answer
        else:
            time.sleep(0.3)  # on the caller's thread: past the timeout, then the answer
        response = flask.make_response("too late")
        response.call_on_close(closed.set)
        returned.set()
        return response

    config = fasthystrix.CommandConfig(timeout=200, isolation=isolation)
    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
    try:
        with serve(app) as client:
            started = time.monotonic()
            response = client.get("/stuck")
            elapsed = time.monotonic() - started
            # Thread isolation answers at the deadline, while the view still runs; semaphore
            # isolation once the view has returned.
            assert returned.is_set() is (isolation == "semaphore")
            release.set()
    finally:
        release.set()
    assert response.status_code == 503
    assert response.json() == {"error": "timeout", "command": "GET /stuck"}
    assert elapsed >= (0.19 if isolation == "thread" else 0.29)  # the timeout, or the view's sleep
    assert closed.wait(WAIT)  # the discarded response was closed all the same
    assert metrics("GET /stuck").timeouts == 1


def test_streamed_bodies_and_a_late_start_response() -> None:
    app = flask.Flask("stream")

    @app.get("/stream")
    def stream() -> Any:
        def body() -> Iterator[str]:
            for i in range(3):
                yield f"{i}\n"
                time.sleep(0.01)

        return flask.Response(body(), mimetype="text/plain")

    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        if environ["PATH_INFO"] != "/lazy":
            yield from app.wsgi_app(environ, start_response)
            return
        yield b""  # PEP 3333: start_response may come as late as the first non-empty chunk
        status = environ.get("QUERY_STRING") or "200"
        start_response(f"{status} Whatever", [("Content-Type", "text/plain")])
        yield b"lazy "
        yield b"body"

    app.url_map.add(Rule("/lazy", endpoint="lazy"))
    middleware = CircuitBreakerMiddleware(lazy, url_map=app.url_map)
    with serve(middleware) as client:
        assert client.get("/stream").text == "0\n1\n2\n"
        assert client.get("/lazy").text == "lazy body"
        response = client.get("/lazy?503")
        assert (response.status_code, response.text) == (503, "lazy body")
    assert metrics("GET /stream").successes == 1
    snapshot = metrics("GET /lazy")
    assert (snapshot.successes, snapshot.failures) == (1, 1)


# -- slow clients: their time is not the route's ---------------------------------------------------


def counting(app: Any, seen: list[str]) -> Any:
    """``app``, noting the path of each request as the server hands it over (headers read)."""

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ["PATH_INFO"])
        return app(environ, start_response)

    return counted


def upload_app(**options: Any) -> Any:
    app = flask.Flask(f"upload-{uuid.uuid4().hex}")

    @app.post("/upload")
    def upload() -> Any:
        return f"{len(flask.request.get_data())} bytes"

    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


@pytest.mark.parametrize("trickle", [True, False], ids=["trickling", "stalled"])
@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_slow_uploads_leave_the_route_to_other_clients(isolation: str, trickle: bool) -> None:
    seen: list[str] = []
    app = counting(upload_app(config=fasthystrix.CommandConfig(isolation=isolation)), seen)
    with serve(app) as client, SlowUploads(client.base_url.port or 0, "/upload", 10, trickle=trickle) as attack:
        wait_until(lambda: attack.connected >= 10 and seen.count("/upload") >= 10, "ten slow uploads begun")
        statuses = [client.post("/upload", content=b"y" * 1000).status_code for _ in range(30)]
        assert statuses == [200] * 30
        circuit = _registry.circuits()["POST /upload"]
        wait_until(lambda: circuit.tickets_in_use == 0, "no ticket held while the uploads go on")
        assert attack.answers == {}  # still uploading: the server's own timeouts are theirs
    snapshot = metrics("POST /upload")
    assert (snapshot.successes, snapshot.errors) == (30, 0)


def test_slow_readers_leave_the_route_to_other_clients() -> None:
    produced: list[int] = []
    app = flask.Flask("download")

    @app.get("/download")
    def download() -> Any:
        produced.append(1)
        return flask.Response((b"z" * 65536 for _ in range(64)), mimetype="application/octet-stream")

    config = fasthystrix.CommandConfig(timeout=120_000)
    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
    with serve(app) as client, SlowReaders(client.base_url.port or 0, "/download", 10):
        wait_until(lambda: len(produced) == 10, "ten slow readers answered")
        circuit = _registry.circuits()["GET /download"]
        wait_until(lambda: circuit.tickets_in_use == 0, "no ticket held for a client that does not read")
        for _ in range(3):
            response = client.get("/download")
            assert (response.status_code, len(response.content)) == (200, 64 * 65536)
    snapshot = metrics("GET /download")
    assert (snapshot.rejects, snapshot.timeouts, snapshot.failures) == (0, 0, 0)


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
    app = flask.Flask("upload")

    @app.post("/upload")
    def upload() -> Any:
        bodies.append(flask.request.get_data())
        return str(len(bodies[-1]))

    app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app, max_body_size=100_000)  # type: ignore[method-assign]
    body = bytes(range(256)) * 390  # 99 840 bytes
    with serve(app) as client:
        port = client.base_url.port or 0
        assert client.post("/upload", content=body).text == "99840"
        assert client.post("/upload", content=iter([body[:50_000], body[50_000:]])).text == "99840"  # chunked
        assert client.post("/upload").text == "0"
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n"
        answer = raw_exchange(port, head)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b'{"error": "request body too large", "command": "POST /upload", "max_body_size": 100000}' in answer
        chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"%x\r\n%s\r\n" % (60_000, b"c" * 60_000) * 2 + b"0\r\n\r\n"
        assert raw_exchange(port, chunked).startswith(b"HTTP/1.1 413 ")
    assert bodies == [body, body, b""]
    snapshot = metrics("POST /upload")
    assert (snapshot.requests, snapshot.successes) == (3, 3)  # a 413 never reaches the command


# -- fallbacks ------------------------------------------------------------------------------------


def test_a_request_without_a_body_keeps_the_servers_stream() -> None:
    """HTTP/1.x without Content-Length or Transfer-Encoding has no body: nothing is read before
    the command, and the app reads the server's own stream. Any other body is read first."""
    import io
    import wsgiref.util

    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append((environ["wsgi.input"], environ["wsgi.input"].read()))
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    middleware = CircuitBreakerMiddleware(app, name="wsgi-bodies")

    def call(**extra: Any) -> None:
        environ: dict[str, Any] = {}
        wsgiref.util.setup_testing_defaults(environ)
        environ.update(extra)
        assert b"".join(middleware(environ, lambda status, headers, exc_info=None: None)) == b"ok"

    stream = io.BytesIO(b"")
    call(SERVER_PROTOCOL="HTTP/1.1", **{"wsgi.input": stream})
    assert seen[-1] == (stream, b"")  # the server's own stream
    for extra in ({"CONTENT_LENGTH": "3"}, {"SERVER_PROTOCOL": "HTTP/2", "wsgi.input_terminated": True}):
        stream = io.BytesIO(b"abc")
        call(**{"SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": stream, **extra})
        assert seen[-1][0] is not stream and seen[-1][1] == b"abc", extra  # read first, replayed
    assert metrics("wsgi-bodies").successes == 3


def test_fallback_response_replaces_the_503() -> None:
    errors: list[BaseException] = []

    def fallback(environ: dict[str, Any], err: fasthystrix.CircuitError) -> Any:
        errors.append(err)
        if environ["PATH_INFO"] == "/items/1":
            return Response('{"price": 42, "stale": true}', mimetype="application/json", headers={"x-fallback": "1"})
        if environ["PATH_INFO"] == "/tuple":
            return 200, [("Content-Type", "text/plain")], "cached"
        return None  # the default 503

    app = flask_app(fallback=fallback)
    app.add_url_rule("/tuple", "tuple", lambda: "live")
    app.add_url_rule("/other", "other", lambda: "live")
    with serve(app) as client:
        assert client.get("/items/1").json() == {"id": 1}
        fasthystrix.get_circuit("GET /items/<int:item_id>")[0].force_open = True
        response = client.get("/items/1")
        assert (response.status_code, response.json()) == (200, {"price": 42, "stale": True})
        assert response.headers["x-fallback"] == "1"
        assert isinstance(errors[-1], fasthystrix.CircuitOpenError)

        fasthystrix.configure_command("GET /tuple", fasthystrix.CommandConfig(max_concurrent_requests=0))
        response = client.get("/tuple")
        assert (response.status_code, response.text) == (200, "cached")
        assert isinstance(errors[-1], fasthystrix.MaxConcurrencyError)

        fasthystrix.get_circuit("GET /other")[0].force_open = True
        response = client.get("/other")
        assert response.status_code == 503
        assert response.json() == {"error": "circuit open", "command": "GET /other"}
    assert metrics("GET /items/<int:item_id>").short_circuits == 1
    assert metrics("GET /tuple").rejects == 1


def test_bad_arguments() -> None:
    app = flask.Flask("bad-args")
    with pytest.raises(TypeError, match="app"):
        CircuitBreakerMiddleware(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        CircuitBreakerMiddleware(app, name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exclude"):
        CircuitBreakerMiddleware(app, exclude="/ops")
    with pytest.raises(ValueError, match="max_body_size must be an int >= 0 or None, not -1"):
        CircuitBreakerMiddleware(app, max_body_size=-1)
    with pytest.raises(TypeError, match=r"retry_after_rejected must be an int, not 1\.5"):
        CircuitBreakerMiddleware(app, retry_after_rejected=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_after_rejected must not be negative, got -2"):
        CircuitBreakerMiddleware(app, retry_after_rejected=-2)
    with pytest.raises(TypeError, match="isolation"):
        CircuitBreakerMiddleware(app, config={"isolation": 1})
    # Too large for the compiled circuit: refused here, not at the first request of each route.
    with pytest.raises(ValueError, match=r"max_concurrent_requests must be at most 2147483647"):
        CircuitBreakerMiddleware(app, config={"max_concurrent_requests": 2**63})
    assert fasthystrix.get_circuit_settings() == {}


# -- the example ----------------------------------------------------------------------------------


def test_flask_example_serves_through_the_middleware() -> None:
    example = load_example("flask_app.py")
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
                assert 'fasthystrix_events_total{command="GET /api/items/<int:item_id>",event="failure"} 1.0' in (
                    client.get("/metrics").text
                )
    finally:
        example.stream_handler.close()
        if example.prometheus is not None:
            example.prometheus_collector.close()
    assert {"GET /api/price", "GET /api/items/<int:item_id>", "pricing-service"} <= set(_registry.circuits())
    assert metrics("GET /api/items/<int:item_id>").failures == 1


def test_an_abandon_racing_the_run_closes_the_apps_response_exactly_once() -> None:
    # Thread isolation: the worker's run() publishes the app's response while the server's thread
    # may abandon it at the timeout. Whichever comes first, the response is closed once, by one of
    # them, and never handed on after it was abandoned (the compiled exchange settles it with one
    # atomic word, the pure one with a lock).
    from fasthystrix import wsgi

    class Result(list[bytes]):
        def close(self) -> None:
            closed.append(self)

    def app(environ: dict[str, Any], start_response: Any) -> Result:
        start_response("200 OK", [])
        return Result([b"ok"])

    closed: list[Result] = []
    rounds = 1500
    for _ in range(rounds):
        exchange = wsgi._Exchange(app, {}, None)
        lined_up = threading.Barrier(2)

        def run(exchange: Any = exchange, lined_up: threading.Barrier = lined_up) -> None:
            lined_up.wait()
            exchange.run()

        worker = threading.Thread(target=run)
        worker.start()
        lined_up.wait()
        exchange.abandon()
        worker.join()
        assert exchange.abandoned and exchange.result is None
    assert len(closed) == rounds and len({id(r) for r in closed}) == rounds


def test_an_exchange_says_whether_it_was_abandoned_and_only_abandon_sets_it() -> None:
    from fasthystrix import wsgi

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    exchange = wsgi._Exchange(app, {}, None)
    assert exchange.abandoned is False
    with pytest.raises(AttributeError):
        exchange.abandoned = True  # read-only in both cores: abandon() closes the response too
    exchange.abandon()
    assert exchange.abandoned is True


def test_the_compiled_path_serves_what_the_python_path_serves() -> None:
    # The same requests through __call__ (compiled where it can) and through _serve (Python):
    # the same statuses, bodies and counts, the common path and the ones it hands on.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/boom":
            start_response("500 Internal Server Error", [("content-type", "text/plain")])
            return [b"boom"]
        if path == "/raise":
            raise ValueError("the app failed")
        start_response("200 OK", [("content-type", "text/plain")])
        return [path.encode()]

    answers = {}
    for way in ("__call__", "_serve"):
        config = fasthystrix.CommandConfig(isolation="semaphore", request_volume_threshold=10**6)
        middleware = CircuitBreakerMiddleware(app, name=f"parity-{way}", config=config)
        seen = []
        for path in ("/ok", "/ok", "/boom", "/raise", "/ok"):
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": path,
                "SCRIPT_NAME": "",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http",
                "wsgi.input": None,
            }
            statuses: list[str] = []

            def start_response(status: str, headers: Any, exc_info: Any = None, into: list[str] = statuses) -> None:
                into.append(status)

            try:
                body = b"".join(getattr(middleware, way)(environ, start_response))
            except ValueError as exc:
                seen.append(("raised", str(exc)))
                continue
            seen.append((statuses[0], body))
        m = fasthystrix.get_circuit(f"parity-{way}")[0].metrics()
        answers[way] = (seen, m.successes, m.failures)
    assert answers["__call__"] == answers["_serve"]
    assert answers["__call__"][1:] == (3, 2)
