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
from fasthystrix.requests import CommandAdapter, FailedResponseError, command_name, make_response
from local_http_server import GZIPPED, LocalServer, closed_port, serving


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
    """Records the timeout HTTPAdapter.send got from the CommandAdapter, and how the send ended."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.timeouts: list[Any] = []
        self.errors: list[tuple[type[BaseException], float]] = []
        self.ended = threading.Event()
        original = HTTPAdapter.send

        def send(adapter: HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            self.timeouts.append(kwargs["timeout"])
            start = time.monotonic()
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


def wait_tickets_back(name: str, within: float) -> float:
    """Seconds until every ticket of ``name`` is back; fails after ``within``."""
    start = time.monotonic()
    circuit = fasthystrix.get_circuit(name)[0]
    while circuit.tickets_in_use:
        assert time.monotonic() - start < within, f"tickets of {name} still taken after {within} s"
        time.sleep(0.005)
    return time.monotonic() - start


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


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError, match="name"):
        CommandAdapter(name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback"):
        CommandAdapter(fallback="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_failure"):
        CommandAdapter(is_failure=1)  # type: ignore[arg-type]


def test_the_adapter_pickles_with_its_options() -> None:
    adapter = CommandAdapter(name="api", pool_maxsize=3)
    copy = pickle.loads(pickle.dumps(adapter))
    try:
        assert (copy.name, copy._pool_maxsize) == ("api", 3)
    finally:
        copy.close()
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
            s.get(server.url + "/slow?ms=3000")
        elapsed = time.monotonic() - start
        assert 0.19 <= elapsed < 0.7, elapsed
        # The socket itself gave up near the deadline, not at the server's 3 s: in thread
        # isolation the worker (and its ticket) does not linger after the caller got its answer.
        assert spy.ended.wait(1.0)
        assert wait_tickets_back(server.name, within=1.0) < 0.7
    [(connect, read)] = spy.timeouts
    assert 0 < connect <= 0.2 and 0 < read <= 0.2
    [(error, took)] = spy.errors
    assert error is requests.ReadTimeout and took < 0.7
    m = metrics(server.name)
    assert (m.timeouts, m.failures, m.successes) == (1, 0, 0)


def test_the_callers_shorter_timeout_is_kept(server: LocalServer, spy: Spy) -> None:
    configure(server.name, timeout=2000)
    with session() as s:
        start = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            s.get(server.url + "/slow?ms=3000", timeout=(5, 0.1))
        assert time.monotonic() - start < 1.0
    [(connect, read)] = spy.timeouts
    assert 1.9 < connect <= 2.0 and read == 0.1
    assert metrics(server.name).failures == 1


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, ((0.25, 0.3), (0.25, 0.3))),
        (0.1, ((0.1, 0.1), (0.1, 0.1))),
        ((None, 1.0), ((0.25, 0.3), (0.25, 0.3))),
        (Timeout(total=5.0), ((0.25, 0.3), (0.25, 0.3))),
        (Timeout(connect=0.05, read=9.0), ((0.05, 0.05), (0.25, 0.3))),
    ],
)
def test_every_form_of_the_timeout_argument_is_capped(
    server: LocalServer, spy: Spy, timeout: Any, expected: tuple[tuple[float, float], tuple[float, float]]
) -> None:
    configure(server.name, timeout=300)
    with session() as s:
        assert s.get(server.url + "/ok", timeout=timeout).status_code == 200
    [sent] = spy.timeouts
    if isinstance(sent, Timeout):
        assert sent.total is None or sent.total <= 0.3
        sent = (sent.connect_timeout, sent._read)
    (low_c, high_c), (low_r, high_r) = expected
    assert low_c <= sent[0] <= high_c and low_r <= sent[1] <= high_r, sent


def test_a_trickled_body_is_read_inside_the_command_and_cut_at_the_deadline(server: LocalServer) -> None:
    configure(server.name, timeout=250)
    with session() as s:
        start = time.monotonic()
        with pytest.raises(fasthystrix.TimeoutError):
            s.get(server.url + "/trickle?chunks=40&ms=50")
        assert time.monotonic() - start < 0.7
        # Between chunks the worker sees the deadline and stops reading (2 s of body left).
        assert wait_tickets_back(server.name, within=1.0) < 0.5
    assert metrics(server.name).timeouts == 1


def test_stream_true_counts_at_the_headers(server: LocalServer) -> None:
    configure(server.name, timeout=150)
    with session() as s, s.get(server.url + "/trickle?chunks=5&ms=60", stream=True) as response:
        assert response.content == b"xxxxx"  # 300 ms of body, after the command ended
    m = metrics(server.name)
    assert (m.successes, m.timeouts) == (1, 0)


# -- concurrency and the fallback ----------------------------------------------------------------


def test_rejected_at_max_concurrency(server: LocalServer) -> None:
    configure(server.name, max_concurrent_requests=2, timeout=2000)
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def call(s: requests.Session) -> None:
        barrier.wait()
        try:
            outcomes.append(s.get(server.url + "/slow?ms=300").status_code)
        except fasthystrix.MaxConcurrencyError as err:
            outcomes.append(type(err))

    with session() as s:
        threads = [threading.Thread(target=call, args=(s,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert outcomes.count(200) == 2 and outcomes.count(fasthystrix.MaxConcurrencyError) == 2
    assert server.hits["/slow"] == 2
    assert metrics(server.name).rejects == 2


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_answers_failures_timeouts_and_short_circuits(server: LocalServer, stream: bool) -> None:
    configure(server.name, timeout=200, request_volume_threshold=4)
    seen: list[BaseException] = []

    def fallback(request: requests.PreparedRequest, err: BaseException) -> requests.Response:
        seen.append(err)
        if isinstance(err, FailedResponseError):
            assert err.response.content == b"/fail 500"  # read inside the command, even with stream=True
            return make_response(request, content=b"stale " + urlsplit(request.url).path.encode())
        return make_response(request, 203, content=type(err).__name__.encode(), headers={"X-Cache": "stale"})

    with session(fallback=fallback) as s:
        assert s.get(server.url + "/fail", stream=stream).text == "stale /fail"
        assert s.get(server.url + "/slow?ms=2000", stream=stream).text == "TimeoutError"
        assert s.get(server.url + "/ok", stream=stream).text == "/ok 200"
        assert s.get(server.url + "/slow?ms=2000", stream=stream).text == "TimeoutError"
        response = s.get(server.url + "/ok", stream=stream)  # 3 of 4 failed: the circuit opens
        assert (response.status_code, response.text) == (203, "CircuitOpenError")
        wait_tickets_back(server.name, within=1.0)  # the abandoned runs end before the client closes
        assert (response.reason, response.headers["x-cache"], response.url) == (
            "Non-Authoritative Information",
            "stale",
            server.url + "/ok",
        )
    assert [type(err) for err in seen] == [
        FailedResponseError,
        fasthystrix.TimeoutError,
        fasthystrix.TimeoutError,
        fasthystrix.CircuitOpenError,
    ]
    assert seen[0].status_code == 500  # type: ignore[attr-defined]
    m = metrics(server.name)
    assert (m.failures, m.timeouts, m.short_circuits, m.fallback_successes) == (1, 2, 1, 4)


def test_a_failing_fallback_raises_fallback_error(server: LocalServer) -> None:
    def fallback(request: requests.PreparedRequest, err: BaseException) -> requests.Response:
        raise LookupError("no cache")

    with session(fallback=fallback) as s, pytest.raises(fasthystrix.FallbackError) as info:
        s.get(server.url + "/fail")
    assert isinstance(info.value.run_error, FailedResponseError)
    assert isinstance(info.value.fallback_error, LookupError)
