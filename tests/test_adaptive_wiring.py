"""``max_concurrent_requests=AdaptiveLimit(...)`` wired into the circuits: validation, the limit
each algorithm finds through ``fasthystrix.do``, every entry point feeding samples, admission
reading the current limit under 8 threads, reconfiguration. The algorithms themselves are
tested in test_adaptive_limits.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from conftest import IMPLEMENTATION, FakeClock
from fasthystrix import AdaptiveLimit, CommandConfig
from fasthystrix._core._limits import ALGORITHMS
from support import WAIT, sharing

TESTS_DIR = Path(__file__).parent

MS = 1_000_000


def _circuit(name: str) -> Any:
    return fasthystrix.get_circuit(name)[0]


def _configure(name: str, limit: int | AdaptiveLimit, **fields: Any) -> Any:
    fasthystrix.configure_command(name, CommandConfig(max_concurrent_requests=limit, **fields))
    return _circuit(name)


# -- configuration ----------------------------------------------------------------------------


def test_max_concurrent_requests_takes_an_int_or_an_adaptive_limit() -> None:
    limit = AdaptiveLimit("vegas", initial=7, min_limit=2, max_limit=30)
    settings = fasthystrix.configure_command("a", CommandConfig(max_concurrent_requests=limit))
    # Everything that reads an int keeps reading one: the initial limit.
    assert settings.max_concurrent_requests == 7
    assert settings.adaptive_limit is limit
    assert fasthystrix.get_circuit_settings()["a"].adaptive_limit == limit
    assert fasthystrix.get_circuit_settings()["a"].max_concurrent_requests == 7
    fixed = fasthystrix.configure_command("b", CommandConfig(max_concurrent_requests=12))
    assert fixed.max_concurrent_requests == 12
    assert fixed.adaptive_limit is None
    # From a mapping too (configure's form).
    both = fasthystrix.configure({"c": {"max_concurrent_requests": limit}})
    assert both["c"].adaptive_limit is limit


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("10", TypeError),
        (2.5, TypeError),
        (True, TypeError),
        ({"algorithm": "aimd"}, TypeError),
        (-1, ValueError),
        (2**31, ValueError),
    ],
)
def test_a_bad_limit_names_the_field_and_the_value_and_changes_nothing(value: object, error: type) -> None:
    circuit = _configure("a", AdaptiveLimit("aimd", initial=1, max_limit=10), isolation="semaphore")
    fasthystrix.do("a", lambda: None)  # the limiter has moved the limit: 1 -> 2
    assert circuit.concurrency_limit == 2
    before = fasthystrix.get_circuit_settings()["a"]
    with pytest.raises(error, match=rf"max_concurrent_requests .*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        CommandConfig(max_concurrent_requests=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="max_concurrent_requests"):
        fasthystrix.configure_command("a", {"max_concurrent_requests": value})
    with pytest.raises(error, match="command 'a': max_concurrent_requests"):
        fasthystrix.configure({"a": {"max_concurrent_requests": value}})
    assert fasthystrix.get_circuit_settings()["a"] == before
    assert circuit.concurrency_limit == 2  # the limiter was not reset either


def test_the_defaults_can_be_adaptive() -> None:
    limit = AdaptiveLimit("aimd", initial=2, max_limit=9)
    fasthystrix.set_defaults(CommandConfig(max_concurrent_requests=limit, isolation="semaphore"))
    assert fasthystrix.get_defaults().adaptive_limit is limit
    fasthystrix.do("fresh", lambda: None)
    circuit = _circuit("fresh")
    assert circuit.settings.adaptive_limit is limit
    assert circuit.concurrency_limit == 3  # one sample, 1 in flight of 2: demand, +1
    # A config that leaves the field None inherits both the int and the limit object.
    settings = fasthystrix.configure_command("other", CommandConfig(timeout=50))
    assert (settings.max_concurrent_requests, settings.adaptive_limit) == (2, limit)
    # An int in the config wins over adaptive defaults.
    settings = fasthystrix.configure_command("fixed", CommandConfig(max_concurrent_requests=5))
    assert (settings.max_concurrent_requests, settings.adaptive_limit) == (5, None)


def test_concurrency_limit_reads_the_fixed_limit() -> None:
    circuit = _configure("a", 13)
    assert circuit.concurrency_limit == 13
    fasthystrix.configure_command("a", CommandConfig(max_concurrent_requests=4))
    assert circuit.concurrency_limit == 4


def test_reconfiguring_resets_the_limiter_and_an_int_restores_a_fixed_limit() -> None:
    adaptive = AdaptiveLimit("aimd", initial=1, max_limit=10)
    circuit = _configure("a", adaptive, isolation="semaphore")
    for _ in range(3):
        fasthystrix.do("a", lambda: None)
    assert circuit.concurrency_limit == 3  # 1 -> 2 -> 3, then one call in flight of 3 is no demand
    _configure("a", adaptive, isolation="semaphore")
    assert circuit.concurrency_limit == 1  # a new limiter, from initial
    fasthystrix.do("a", lambda: None)
    assert circuit.concurrency_limit == 2
    _configure("a", 6, isolation="semaphore")
    assert circuit.concurrency_limit == 6
    for _ in range(5):
        fasthystrix.do("a", lambda: None)
    assert circuit.concurrency_limit == 6  # fixed: nothing moves it
    assert circuit.settings.adaptive_limit is None


# -- every path feeds the limiter -------------------------------------------------------------


def _via_do(name: str) -> Any:
    return fasthystrix.do(name, lambda: "ok")


def _via_go(name: str) -> Any:
    return fasthystrix.go(name, lambda: "ok").result(WAIT)


def _via_do_c(name: str) -> Any:
    return fasthystrix.do_c(fasthystrix.Context(), name, lambda ctx: "ok")


def _via_do_async(name: str) -> Any:
    async def run() -> str:
        return "ok"

    return asyncio.run(fasthystrix.do_async(name, run))


def _via_decorator(name: str) -> Any:
    @fasthystrix.command(name)
    def decorated() -> str:
        return "ok"

    return decorated()


ENTRY_POINTS: dict[str, Callable[[str], Any]] = {
    "do": _via_do,
    "go": _via_go,
    "do_c": _via_do_c,
    "do_async": _via_do_async,
    "decorator": _via_decorator,
}


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_each_entry_point_feeds_a_sample(entry: str, isolation: str) -> None:
    """AIMD with one call in flight and a limit of 1 is not application-limited: each success
    adds one."""
    circuit = _configure("a", AdaptiveLimit("aimd", initial=1, max_limit=10), isolation=isolation)
    assert ENTRY_POINTS[entry]("a") == "ok"
    assert circuit.concurrency_limit == 2
    assert ENTRY_POINTS[entry]("a") == "ok"
    assert circuit.concurrency_limit == 3


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_failures_feed_a_sample_and_timeouts_a_drop(isolation: str) -> None:
    # The failure under a timeout it cannot reach, even on a busy machine; the timeout below under a
    # 20 ms one, on a command of its own.
    failing = _configure(
        "f", AdaptiveLimit("aimd", initial=10, max_limit=100), isolation=isolation, timeout=int(WAIT * 1000)
    )

    def fail() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        fasthystrix.do("f", fail)
    assert failing.concurrency_limit == 10  # a failure is no drop: AIMD holds (application-limited)
    circuit = _configure("a", AdaptiveLimit("aimd", initial=10, max_limit=100), isolation=isolation, timeout=20)
    release = threading.Event()

    def slow() -> None:
        # Thread isolation: the deadline ends the command while run still holds its ticket.
        # Semaphore isolation: run returns after the timeout, a success too late.
        release.wait(0.05 if isolation == "semaphore" else WAIT)

    try:
        assert fasthystrix.do("a", slow, lambda err: type(err).__name__) == "TimeoutError"
        assert circuit.concurrency_limit == 9  # dropped: x0.9
    finally:
        release.set()


def test_turned_away_calls_feed_nothing() -> None:
    circuit = _configure("a", AdaptiveLimit("aimd", initial=1, max_limit=10), isolation="semaphore")
    circuit.force_open = True
    for _ in range(5):
        assert fasthystrix.do("a", lambda: "ok", lambda err: "fallback") == "fallback"
    assert circuit.concurrency_limit == 1


# -- each algorithm through do(), on a fake clock ----------------------------------------------


class Holders:
    """``count`` commands of ``name`` that stay in flight (each in its run) until closed."""

    def __init__(self, name: str, count: int) -> None:
        self.release = threading.Event()
        inside = threading.Semaphore(0)

        def hold() -> None:
            inside.release()
            self.release.wait(WAIT)

        self.threads = [
            threading.Thread(target=fasthystrix.do, args=(name, hold, lambda err: None)) for _ in range(count)
        ]
        for thread in self.threads:
            thread.start()
        for _ in range(count):
            assert inside.acquire(timeout=WAIT)

    def close(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def holders() -> Iterator[list[Holders]]:
    made: list[Holders] = []
    yield made
    for holder in made:
        holder.close()


def _call_taking(clock: FakeClock, name: str, latency_ns: int) -> Any:
    def run() -> str:
        clock.advance_ns(latency_ns)
        return "ok"

    return fasthystrix.do(name, run, lambda err: type(err).__name__)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_limit_goes_up_with_headroom(algorithm: str, clock: FakeClock, holders: list[Holders]) -> None:
    """Ten calls in flight against a limit of 12, at a steady 20 ms: there is demand and no sign
    of a queue, so the limit grows, up to its maximum."""
    circuit = _configure(
        "a", AdaptiveLimit(algorithm, initial=12, min_limit=1, max_limit=18), isolation="semaphore", timeout=1000
    )
    holders.append(Holders("a", 9))
    limits = []
    for _ in range(400):
        assert _call_taking(clock, "a", 20 * MS) == "ok"
        limits.append(circuit.concurrency_limit)
    assert max(limits) > 12
    assert all(1 <= limit <= 18 for limit in limits)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_limit_goes_down_when_latency_rises(algorithm: str, clock: FakeClock, holders: list[Holders]) -> None:
    """Ten calls in flight; the downstream's latency goes from 20 ms to 150 ms (over the 100 ms
    timeout): the limit falls, until admission turns calls away, and never below its minimum."""
    circuit = _configure(
        "a", AdaptiveLimit(algorithm, initial=20, min_limit=3, max_limit=20), isolation="semaphore", timeout=100
    )
    holders.append(Holders("a", 9))
    for _ in range(300):
        assert _call_taking(clock, "a", 20 * MS) == "ok"
    before = circuit.concurrency_limit
    assert before >= 15
    answers = []
    limits = []
    for _ in range(300):
        answers.append(_call_taking(clock, "a", 150 * MS))
        limits.append(circuit.concurrency_limit)
    assert circuit.concurrency_limit <= 10 < before
    assert all(3 <= limit <= 20 for limit in limits)
    # Once the limit is at or below the calls in flight, admission rejects: the limit is what it reads.
    assert "MaxConcurrencyError" in answers
    assert answers.index("MaxConcurrencyError") > 0


# -- admission under 8 threads ----------------------------------------------------------------


class InFlight:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def _hammer(name: str, run: Callable[[], Any], threads: int = 8, calls: int = 150) -> None:
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(WAIT)
            for _ in range(calls):
                fasthystrix.do(name, run, lambda err: None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(WAIT)
    assert not errors


def _wait_for_tickets(circuit: Any) -> None:
    """Until every run has ended (thread isolation: a timed-out run keeps its ticket until then)."""
    for _ in range(int(WAIT * 100)):
        if circuit.tickets_in_use == 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"tickets still in use: {circuit.tickets_in_use}")


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_concurrency_never_exceeds_the_current_limit(isolation: str) -> None:
    """Every call times out (timeout 0), so AIMD brings the limit from 6 down to 1 and keeps it
    there; 8 threads hammering the command then never have more than one run in flight."""
    fasthystrix.set_max_threads(64)
    circuit = _configure(
        "a",
        AdaptiveLimit("aimd", initial=6, min_limit=1, max_limit=6),
        isolation=isolation,
        timeout=0,
        request_volume_threshold=10**9,  # the breaker stays out of it
    )
    seen = InFlight()

    def run() -> None:
        with seen:
            threading.Event().wait(0.0005)

    for _ in range(100):
        if circuit.concurrency_limit == 1:
            break
        fasthystrix.do("a", run, lambda err: None)
        _wait_for_tickets(circuit)
    assert circuit.concurrency_limit == 1
    assert seen.max == 1
    _hammer("a", run)
    _wait_for_tickets(circuit)
    assert seen.max == 1
    assert circuit.concurrency_limit == 1


def test_the_limit_grows_under_8_threads_and_admission_follows_it() -> None:
    circuit = _configure(
        "a",
        AdaptiveLimit("aimd", initial=1, min_limit=1, max_limit=5),
        isolation="semaphore",
        timeout=10_000,
        rejections_count_as_errors=False,
    )
    seen = InFlight()

    def run() -> None:
        with seen:
            threading.Event().wait(0.0005)

    _hammer("a", run)
    assert 1 < circuit.concurrency_limit <= 5
    assert 1 <= seen.max <= 5


# -- the stream and the exporters report the current limit ------------------------------------


def _adaptive_circuit_at(clock: FakeClock, limit: int) -> Any:
    """An AIMD circuit brought from 10 down to ``limit`` by timeouts (each one x0.9, whole tickets:
    one less), so its current limit differs from its settings' ``max_concurrent_requests``."""
    circuit = _configure(
        "adaptive", AdaptiveLimit("aimd", initial=10, max_limit=10), isolation="semaphore", timeout=100
    )
    while circuit.concurrency_limit > limit:
        assert _call_taking(clock, "adaptive", 200 * MS) == "TimeoutError"
    assert circuit.concurrency_limit == limit
    assert circuit.settings.max_concurrent_requests == 10
    return circuit


def test_the_stream_reports_the_current_limit(clock: FakeClock) -> None:
    from fasthystrix._observability import _stream_messages

    circuit = _adaptive_circuit_at(clock, 7)
    command, pool = _stream_messages.messages(circuit)
    assert command["propertyValue_executionIsolationSemaphoreMaxConcurrentRequests"] == 7
    for field in ("currentCorePoolSize", "currentLargestPoolSize", "currentMaximumPoolSize", "currentPoolSize"):
        assert pool[field] == 7
    cache: dict[str, Any] = {}
    text = _stream_messages.render([circuit], 1, cache)
    assert b'"propertyValue_executionIsolationSemaphoreMaxConcurrentRequests":7,' in text
    assert b'"currentPoolSize":7,' in text
    # The limit moves while the settings stay the same object: the cached text must follow it.
    settings = circuit.settings
    assert _call_taking(clock, "adaptive", 200 * MS) == "TimeoutError"
    assert circuit.settings is settings
    assert circuit.concurrency_limit == 6
    text = _stream_messages.render([circuit], 2, cache)
    assert b'"propertyValue_executionIsolationSemaphoreMaxConcurrentRequests":6,' in text
    assert b'"currentPoolSize":6,' in text


def test_the_exporters_report_the_current_limit(clock: FakeClock) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from fasthystrix import prometheus
    from fasthystrix._observability import _cumulative

    registry = CollectorRegistry()
    collector = prometheus.register(registry)
    try:
        _adaptive_circuit_at(clock, 4)
        (reading,) = [r for r in _cumulative.read_circuits() if r.name == "adaptive"]
        assert reading.max_concurrent == 4
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples
            if sample.labels.get("command") == "adaptive"
        }
        assert samples["fasthystrix_max_concurrent_requests"] == 4
    finally:
        collector.close()


def test_opentelemetry_reports_the_current_limit(clock: FakeClock) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from fasthystrix import otel

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentation = otel.instrument(provider)
    try:
        _adaptive_circuit_at(clock, 5)
        data = reader.get_metrics_data()
        assert data is not None
        points = [
            point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "fasthystrix.max_concurrent_requests"
            for point in metric.data.data_points
            if dict(point.attributes) == {"command": "adaptive"}
        ]
        assert points == [5]
    finally:
        instrumentation.close()
        provider.shutdown()


# -- host-wide circuits -----------------------------------------------------------------------


def test_a_shared_circuit_stores_its_limit_in_the_host_wide_word(tmp_path: Path, clock: FakeClock) -> None:
    """Each process runs its own limiter and stores into the circuit file's limit word, which
    admission reads in every process: another process, configured or not, sees the limit."""
    directory = tmp_path / "circuits"
    with sharing(directory):
        circuit = _adaptive_circuit_at(clock, 6)
        assert circuit._shared is not None
        assert fasthystrix.get_circuit_settings()["adaptive"].adaptive_limit == AdaptiveLimit(
            "aimd", initial=10, max_limit=10
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
        if IMPLEMENTATION == "pure":
            env["FASTHYSTRIX_NO_EXTENSIONS"] = "1"
        code = textwrap.dedent(
            f"""
            import shared_worker
            shared_worker.share({str(directory)!r}, None)
            circuit = shared_worker.open_circuit("adaptive")
            print(circuit.concurrency_limit, circuit.settings.adaptive_limit)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=WAIT * 2, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["6", "None"]  # the host's limit; the limiter is the other process's
        # Admission here reads the same word: 6 tickets, the 7th call is rejected.
        holders = Holders("adaptive", 6)
        try:
            assert fasthystrix.do("adaptive", lambda: "ran", lambda err: type(err).__name__) == "MaxConcurrencyError"
        finally:
            holders.close()


def test_collectors_measure_concurrency_against_the_current_limit(clock: FakeClock, holders: list[Holders]) -> None:
    """``MetricResult.concurrency_in_use`` (StatsD's ``concurrencyInUse``) is tickets in use over
    the limit now, not over the settings' initial limit."""
    from fasthystrix.metric_collector import registry as collector_registry

    results: list[Any] = []

    class Collector:
        def update(self, result: Any) -> None:
            results.append(result)

        def reset(self) -> None:
            pass

    collector_registry.register(lambda name: Collector())
    _adaptive_circuit_at(clock, 7)
    holders.append(Holders("adaptive", 2))
    results.clear()
    assert _call_taking(clock, "adaptive", 20 * MS) == "ok"  # 3 in flight of 7: no demand, AIMD holds
    assert _circuit("adaptive").concurrency_limit == 7
    assert [r.concurrency_in_use for r in results] == [2 / 7]
