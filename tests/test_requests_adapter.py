"""fasthystrix.requests: CommandAdapter against a real HTTP server on loopback."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

import fasthystrix
from conftest import SHARED_TESTS
from fasthystrix import _registry
from fasthystrix.requests import CommandAdapter, FailedResponseError, command_name, make_response
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


def session(**options: Any) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # proxies from the environment would bypass the adapter
    s.mount("http://", CommandAdapter(**options))
    return s


class Spy:
    """Records the timeout HTTPAdapter.send got from the CommandAdapter, when, and how the send ended."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.timeouts: list[Any] = []
        self.sent_at: list[float] = []
        self.errors: list[tuple[type[BaseException], float]] = []
        self.ended = threading.Event()
        original = HTTPAdapter.send

        def send(adapter: HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            self.timeouts.append(kwargs["timeout"])
            start = time.monotonic()
            self.sent_at.append(start)
            try:
                return original(adapter, request, **kwargs)
            except Exception as exc:
                self.errors.append((type(exc), time.monotonic() - start))
                raise
            finally:
                self.ended.set()

        monkeypatch.setattr(HTTPAdapter, "send", send)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


def wait_tickets_back(name: str) -> None:
    """Until every ticket of ``name`` is back (fails after ``WAIT`` s: far sooner than ``NEVER_MS``)."""
    circuit = fasthystrix.get_circuit(name)[0]
    wait_until(lambda: circuit.tickets_in_use == 0, f"every ticket of {name} back")


def assert_time_left(value: float, timeout: float, called_at: float, sent_at: float) -> None:
    """``value`` is what a command of ``timeout`` s, called at ``called_at``, had left when it sent."""
    assert timeout - (sent_at - called_at) - 1e-6 <= value <= timeout, (value, sent_at - called_at)


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
    assert command_name(requests.Request("GET", url).prepare()) == name


def test_custom_names(server: LocalServer) -> None:
    with session(name="api") as s:
        assert s.get(server.url + "/ok").status_code == 200
    with session(name=lambda request: "path" + urlsplit(request.url).path) as s:
        assert s.get(server.url + "/notfound").status_code == 404
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
    assert command_name(requests.Request("GET", url).prepare(), "host:port") == name


def test_command_maps_each_url_to_its_command(server: LocalServer) -> None:
    with session(command="host:port") as s:
        assert s.get(server.url + "/ok").status_code == 200
    with session(command="downstream") as s:
        assert s.get(server.url + "/ok").status_code == 200
    with session(command=lambda url: "path" + urlsplit(url).path) as s:
        assert s.get(server.url + "/notfound").status_code == 404
    assert sorted(_registry.circuits()) == [f"127.0.0.1:{server.port}", "downstream", "path/notfound"]
    with session(command=lambda url: None) as s, pytest.raises(TypeError, match=r"command\(url\) must return"):
        s.get(server.url + "/ok")


def test_urls_chosen_by_others_make_at_most_max_hosts_circuits(server: LocalServer) -> None:
    # A service fetching URLs its users give: each port a new host:port. 100 by default, then one more.
    with refusing_ports(101) as ports, session() as s:
        for port in ports:
            with pytest.raises(requests.ConnectionError):
                s.get(f"http://127.0.0.1:{port}/")
        assert s.get(server.url + "/ok").status_code == 200  # new too: past the bound
        with pytest.raises(requests.ConnectionError):
            s.get(f"http://127.0.0.1:{ports[0]}/")  # one of the first hundred: its own circuit still
    assert set(_registry.circuits()) == {f"127.0.0.1:{port}" for port in ports[:100]} | {"<other hosts>"}
    others = metrics("<other hosts>")
    assert (others.failures, others.successes) == (1, 1)
    assert metrics(f"127.0.0.1:{ports[0]}").failures == 2


def test_max_hosts_applies_to_every_mapping_and_none_lifts_it(server: LocalServer) -> None:
    from fasthystrix.requests import DEFAULT_MAX_HOSTS, OTHER_HOSTS

    assert (DEFAULT_MAX_HOSTS, OTHER_HOSTS) == (100, "<other hosts>")
    with session(command=lambda url: urlsplit(url).path, max_hosts=2) as s:
        for path in ("/ok", "/notfound", "/fail", "/ok", "/unavailable"):
            s.get(server.url + path)
    assert sorted(_registry.circuits()) == ["/notfound", "/ok", OTHER_HOSTS]
    assert metrics(OTHER_HOSTS).requests == 2
    fasthystrix.flush()
    with session(name=lambda request: urlsplit(request.url).path, max_hosts=None) as s:
        for path in ("/ok", "/notfound", "/fail"):
            s.get(server.url + path)
    # A shared circuit outlives flush() in its file: circuits() lists the host's, "<other hosts>" too.
    assert sorted(_registry.circuits()) == ["/fail", "/notfound", "/ok"] + [OTHER_HOSTS] * SHARED_TESTS


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError, match="name"):
        CommandAdapter(name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="command must be 'host', 'host:port', a command name"):
        CommandAdapter(command=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command must not be empty"):
        CommandAdapter(command="")
    with pytest.raises(TypeError, match="pass command or name, not both"):
        CommandAdapter(command="a", name="b")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_hosts must be an int >= 1 or None"):
            CommandAdapter(max_hosts=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command must be 'host' or 'host:port'"):
        command_name(requests.Request("GET", "http://x/").prepare(), "x")
    with pytest.raises(TypeError, match="fallback"):
        CommandAdapter(fallback="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_failure"):
        CommandAdapter(is_failure=1)  # type: ignore[arg-type]


def test_the_adapter_pickles_with_its_options(server: LocalServer) -> None:
    adapter = CommandAdapter(name="api", pool_maxsize=3)
    copy = pickle.loads(pickle.dumps(adapter))
    try:
        assert (copy.name, copy._pool_maxsize) == ("api", 3)
    finally:
        copy.close()
        adapter.close()
    adapter = CommandAdapter(command="host:port", max_hosts=1)
    copy = pickle.loads(pickle.dumps(adapter))
    with requests.Session() as s:
        s.trust_env = False
        s.mount("http://", copy)
        assert s.get(server.url + "/ok").status_code == 200
        assert s.get(f"http://localhost:{server.port}/ok").status_code == 200
    assert (copy.command, copy.max_hosts) == ("host:port", 1)
    assert sorted(_registry.circuits()) == [f"127.0.0.1:{server.port}", "<other hosts>"]
    adapter.close()


# -- outcomes -------------------------------------------------------------------------------------


def test_success_is_counted_under_the_host(server: LocalServer) -> None:
    with session() as s:
        response = s.get(server.url + "/ok")
        assert (response.status_code, response.text) == (200, "/ok 200")
        with s.get(server.url + "/ok", stream=True) as streamed:
            assert b"".join(streamed.iter_content(3)) == b"/ok 200"
    m = metrics(server.name)
    assert (m.successes, m.failures, m.requests) == (2, 0, 2)


def test_an_encoded_chunked_body_is_decoded_inside_the_command(server: LocalServer) -> None:
    with session() as s:
        assert s.get(server.url + "/gzip").content == GZIPPED
        with s.get(server.url + "/gzip", stream=True) as streamed:
            assert b"".join(streamed.iter_content(100)) == GZIPPED
    assert metrics(server.name).successes == 2


def test_without_read1_the_body_is_read_with_iter_content(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", None)  # as urllib3 < 2.2
    with session() as s:
        assert s.get(server.url + "/gzip").content == GZIPPED
        assert s.get(server.url + "/ok").text == "/ok 200"
    assert metrics(server.name).successes == 2


def test_4xx_is_not_a_failure(server: LocalServer) -> None:
    with session() as s:
        assert s.get(server.url + "/notfound").status_code == 404
    m = metrics(server.name)
    assert (m.successes, m.failures) == (1, 0)


def test_5xx_is_returned_counted_as_a_failure_and_trips_the_circuit(server: LocalServer) -> None:
    configure(server.name, request_volume_threshold=3, isolation="semaphore")
    with session() as s:
        for path in ("/fail", "/unavailable", "/fail"):
            response = s.get(server.url + path, stream=path == "/unavailable")
            assert response.status_code in (500, 503) and response.text.startswith(path)
        assert metrics(server.name).failures == 3
        with pytest.raises(fasthystrix.CircuitOpenError):
            s.get(server.url + "/ok")
    assert server.hits["/ok"] == 0 and sum(server.hits.values()) == 3
    m = metrics(server.name)
    assert (m.failures, m.short_circuits) == (3, 1)


def test_is_failure_decides_what_counts(server: LocalServer) -> None:
    with session(is_failure=lambda response: response.status_code == 404) as s:
        assert s.get(server.url + "/notfound").status_code == 404
        assert s.get(server.url + "/fail").status_code == 500
    m = metrics(server.name)
    assert (m.failures, m.successes) == (1, 1)


def test_connection_errors_count_as_failures_and_trip_the_circuit() -> None:
    port = closed_port()
    name = f"127.0.0.1:{port}"
    configure(name, request_volume_threshold=2)
    with session() as s:
        for _ in range(2):
            with pytest.raises(requests.ConnectionError):
                s.get(f"http://127.0.0.1:{port}/ok")
        with pytest.raises(fasthystrix.CircuitOpenError):
            s.get(f"http://127.0.0.1:{port}/ok")
    m = metrics(name)
    assert (m.failures, m.short_circuits) == (2, 1)


# -- the timeout hand-off -------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_slow_response_is_cut_off_at_the_command_timeout(server: LocalServer, spy: Spy, isolation: str) -> None:
    configure(server.name, timeout=200, isolation=isolation)
    with session() as s:
        start = time.monotonic()
        with pytest.raises(fasthystrix.TimeoutError):
            s.get(server.url + f"/slow?ms={NEVER_MS}")
        elapsed = time.monotonic() - start
        # Not before the timeout, and long before the server would answer.
        assert 0.19 <= elapsed < WAIT, elapsed
        # The socket itself gave up at the deadline, not at the server's answer: in thread
        # isolation the worker (and its ticket) does not linger after the caller got its answer.
        assert spy.ended.wait(WAIT)
        wait_tickets_back(server.name)
    [(connect, read)] = spy.timeouts
    assert 0 < connect <= 0.2 and 0 < read <= 0.2
    [(error, took)] = spy.errors
    assert error is requests.ReadTimeout and took < WAIT
    m = metrics(server.name)
    assert (m.timeouts, m.failures, m.successes) == (1, 0, 0)


def test_the_callers_shorter_timeout_is_kept(server: LocalServer, spy: Spy) -> None:
    # The caller's 0.1 s read timeout, not the command's 4 s, ends the request: a ReadTimeout
    # counted as a failure (the command's timeout would raise fasthystrix.TimeoutError). The
    # caller's longer connect timeout (5 s) is lowered to the time the command has left.
    configure(server.name, timeout=4000)
    with session() as s:
        start = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            s.get(server.url + f"/slow?ms={NEVER_MS}", timeout=(5, 0.1))
    [(connect, read)] = spy.timeouts
    assert_time_left(connect, 4.0, start, spy.sent_at[0])
    assert read == 0.1
    assert metrics(server.name).failures == 1


LEFT = None  # in ``expected`` below: the time the command had left when it sent


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, (LEFT, LEFT)),
        (0.1, (0.1, 0.1)),
        ((None, 5.0), (LEFT, LEFT)),
        (Timeout(total=5.0), (LEFT, LEFT)),
        (Timeout(connect=0.05, read=9.0), (0.05, LEFT)),
    ],
)
def test_every_form_of_the_timeout_argument_is_capped(
    server: LocalServer, spy: Spy, timeout: Any, expected: tuple[float | None, float | None]
) -> None:
    configure(server.name, timeout=3000)
    with session() as s:
        start = time.monotonic()
        assert s.get(server.url + "/ok", timeout=timeout).status_code == 200
    [sent] = spy.timeouts
    if isinstance(sent, Timeout):
        assert sent.total is None or sent.total <= 3.0
        sent = (sent.connect_timeout, sent._read)
    for value, wanted in zip(sent, expected, strict=True):
        if wanted is LEFT:
            assert_time_left(value, 3.0, start, spy.sent_at[0])
        else:
            assert value == wanted, sent


def test_a_trickled_body_is_read_inside_the_command_and_cut_at_the_deadline(server: LocalServer) -> None:
    configure(server.name, timeout=250)
    with session() as s:
        with pytest.raises(fasthystrix.TimeoutError):
            s.get(server.url + f"/trickle?chunks={NEVER_MS // 50}&ms=50")
        # Between chunks the worker sees the deadline and stops reading, long before the body's end.
        wait_tickets_back(server.name)
    assert metrics(server.name).timeouts == 1


def test_stream_true_counts_at_the_headers(server: LocalServer) -> None:
    with session() as s, s.get(server.url + "/held", stream=True) as response:
        # The command ended with the headers: counted, its ticket back, before the body is sent.
        m = metrics(server.name)
        assert (m.successes, m.timeouts, fasthystrix.get_circuit(server.name)[0].tickets_in_use) == (1, 0, 0)
        server.release.set()
        assert response.content == HELD_BODY


# -- concurrency and the fallback ----------------------------------------------------------------


def test_rejected_at_max_concurrency(server: LocalServer) -> None:
    # The first two calls hold their tickets until the test releases their bodies.
    configure(server.name, max_concurrent_requests=2, timeout=120_000)
    outcomes: list[object] = []

    def call(s: requests.Session) -> None:
        try:
            outcomes.append(s.get(server.url + "/held").status_code)
        except fasthystrix.MaxConcurrencyError as err:
            outcomes.append(type(err))

    with session() as s:
        threads = [threading.Thread(target=call, args=(s,)) for _ in range(4)]
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


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_answers_failures_timeouts_and_short_circuits(server: LocalServer, stream: bool) -> None:
    # 500 ms: far longer than a loopback answer takes, even on a busy machine.
    configure(server.name, timeout=500, request_volume_threshold=4)
    seen: list[BaseException] = []

    def fallback(request: requests.PreparedRequest, err: BaseException) -> requests.Response:
        seen.append(err)
        if isinstance(err, FailedResponseError):
            assert err.response.content == b"/fail 500"  # read inside the command, even with stream=True
            return make_response(request, content=b"stale " + urlsplit(request.url).path.encode())
        return make_response(request, 203, content=type(err).__name__.encode(), headers={"X-Cache": "stale"})

    with session(fallback=fallback) as s:
        assert s.get(server.url + "/fail", stream=stream).text == "stale /fail"
        assert s.get(server.url + f"/slow?ms={NEVER_MS}", stream=stream).text == "TimeoutError"
        assert s.get(server.url + "/ok", stream=stream).text == "/ok 200"
        assert s.get(server.url + "/fail", stream=stream).text == "stale /fail"
        response = s.get(server.url + "/ok", stream=stream)  # 3 of 4 failed: the circuit opens
        assert (response.status_code, response.text) == (203, "CircuitOpenError")
        wait_tickets_back(server.name)  # the abandoned run ends before the client closes
        assert (response.reason, response.headers["x-cache"], response.url) == (
            "Non-Authoritative Information",
            "stale",
            server.url + "/ok",
        )
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
    def fallback(request: requests.PreparedRequest, err: BaseException) -> requests.Response:
        raise LookupError("no cache")

    with session(fallback=fallback) as s, pytest.raises(fasthystrix.FallbackError) as info:
        s.get(server.url + "/fail")
    assert isinstance(info.value.run_error, FailedResponseError)
    assert isinstance(info.value.fallback_error, LookupError)
