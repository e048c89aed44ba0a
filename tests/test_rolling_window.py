"""The configurable rolling window (``rolling_window``, ``rolling_buckets``: Hystrix's
``metrics.rollingStats.timeInMilliseconds`` and ``numBuckets``): validation and bounds, events
leaving the window bucket by bucket, the breaker deciding on the configured window, reconfiguring,
the stream's fields, a thread stress test, the memory of idle circuits, and host-wide circuits
(whose window is their file's: tests/test_shared_circuits.py has the tests across processes), on a
fake clock, in both implementations."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from conftest import IMPLEMENTATION, SHARED_TESTS
from fasthystrix import CommandConfig, _impl
from fasthystrix._core import _shared
from fasthystrix._core._config import MAX_ROLLING_BUCKETS, MAX_ROLLING_WINDOW_MS
from fasthystrix._core._events import COUNTED_EVENT_NAMES
from fasthystrix._observability import _cumulative
from fasthystrix._observability._stream_messages import messages, render
from support import FakeClock, sharing


def _configure(name: str, **extra: Any) -> Any:
    fasthystrix.configure_command(
        name,
        CommandConfig(
            **{
                "isolation": "semaphore",
                "request_volume_threshold": 4,
                "error_percent_threshold": 50,
                "sleep_window": 60_000,
                "timeout": 1000,
                **extra,
            }
        ),
    )
    return fasthystrix.get_circuit(name)[0]


def _fail() -> None:
    raise RuntimeError("down")


def _to_bucket_start(clock: FakeClock, bucket_ms: int) -> None:
    """Move the fake clock to the start of a bucket of ``bucket_ms``."""
    width = bucket_ms * 1_000_000
    clock.advance_ns(-clock() % width or width)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"rolling_window": 0}, ValueError, "rolling_window"),
        ({"rolling_window": 9}, ValueError, "rolling_window"),
        ({"rolling_window": -1}, ValueError, "rolling_window"),
        ({"rolling_window": MAX_ROLLING_WINDOW_MS + 1}, ValueError, "rolling_window"),
        ({"rolling_window": timedelta(microseconds=1_500_500)}, ValueError, "whole number of milliseconds"),
        ({"rolling_window": "10s"}, TypeError, "rolling_window"),
        ({"rolling_window": 1000.0}, TypeError, "rolling_window"),
        ({"rolling_window": True}, TypeError, "rolling_window"),
        ({"rolling_buckets": 0}, ValueError, "rolling_buckets"),
        ({"rolling_buckets": MAX_ROLLING_BUCKETS + 1}, ValueError, "rolling_buckets"),
        ({"rolling_buckets": 2.0}, TypeError, "rolling_buckets"),
        ({"rolling_buckets": True}, TypeError, "rolling_buckets"),
        ({"rolling_buckets": "10"}, TypeError, "rolling_buckets"),
        # The window must divide evenly, into buckets of at least 10 ms; the message names both.
        ({"rolling_window": 1000, "rolling_buckets": 3}, ValueError, "rolling_window=1000 ms and rolling_buckets=3"),
        ({"rolling_window": 99, "rolling_buckets": 10}, ValueError, "rolling_window=99 ms and rolling_buckets=10"),
        ({"rolling_window": 50, "rolling_buckets": 10}, ValueError, "at least 10 ms per bucket"),
        # Against the default of the other field (10 s, 10 buckets).
        ({"rolling_buckets": 7}, ValueError, "rolling_window=10000 ms and rolling_buckets=7"),
        ({"rolling_window": 1005}, ValueError, "rolling_window=1005 ms and rolling_buckets=10"),
    ],
)
def test_bad_values_are_refused_and_change_nothing(config: dict[str, Any], error: type[Exception], match: str) -> None:
    before = fasthystrix.configure_command(
        "window-bad", {"request_volume_threshold": 7, "rolling_window": 2000, "rolling_buckets": 4}
    )
    with pytest.raises(error, match=match):
        fasthystrix.configure_command("window-bad", config)
    with pytest.raises(error, match=match):
        fasthystrix.configure({"window-ok": {}, "window-bad": config})
    assert fasthystrix.get_circuit_settings()["window-bad"] is before
    assert "window-ok" not in fasthystrix.get_circuit_settings()
    assert (before.rolling_window, before.rolling_buckets) == (timedelta(seconds=2), 4)


@pytest.mark.parametrize(
    ("window", "buckets"),
    [
        (10, 1),  # the narrowest window: one bucket of 10 ms
        (800, MAX_ROLLING_BUCKETS),  # the most buckets, 10 ms each
        (MAX_ROLLING_WINDOW_MS, MAX_ROLLING_BUCKETS),  # the widest window
        (MAX_ROLLING_WINDOW_MS, 1),
        (timedelta(seconds=2), 4),
    ],
)
def test_values_at_the_bounds_are_taken(window: Any, buckets: int) -> None:
    settings = fasthystrix.configure_command("window-ok", {"rolling_window": window, "rolling_buckets": buckets})
    expected = window if isinstance(window, timedelta) else timedelta(milliseconds=window)
    assert (settings.rolling_window, settings.rolling_buckets) == (expected, buckets)
    assert fasthystrix.get_circuit_settings()["window-ok"] is settings


def test_the_default_is_hystrix_s_10_buckets_of_one_second() -> None:
    defaults = fasthystrix.get_defaults()
    assert (defaults.rolling_window, defaults.rolling_buckets) == (timedelta(seconds=10), 10)
    assert defaults.default_window
    circuit = fasthystrix.get_circuit("window-default")[0]
    assert circuit._default._rolling.window() == (1_000_000_000, 10)


def test_set_defaults_gives_new_commands_the_window() -> None:
    fasthystrix.set_defaults(CommandConfig(rolling_window=3000, rolling_buckets=6))
    circuit = fasthystrix.get_circuit("window-from-defaults")[0]
    assert circuit._default._rolling.window() == (500_000_000, 6)
    assert fasthystrix.get_circuit_settings()["window-from-defaults"].rolling_window == timedelta(seconds=3)


# -- the window's behaviour -----------------------------------------------------------------


@pytest.mark.parametrize("offset_ms", [0, 400])
def test_an_event_leaves_with_its_bucket(clock: FakeClock, offset_ms: int) -> None:
    # 2 s in 4 buckets of 500 ms: an event at t leaves when its bucket does, at the start of the
    # bucket 2 s after its own: t + 2 s for an event at a bucket's start, t + 1.6 s at 400 ms in.
    circuit = _configure("window-expiry", rolling_window=2000, rolling_buckets=4, request_volume_threshold=100)
    _to_bucket_start(clock, 500)
    clock.advance(ms=offset_ms)
    fasthystrix.do("window-expiry", _fail, lambda err: None)
    stays_ms = 2000 - offset_ms
    clock.advance(ms=stays_ms - 1)
    snapshot = circuit.metrics()
    assert (snapshot.requests, snapshot.failures, snapshot.fallback_successes) == (1, 1, 1)
    clock.advance(ms=1)
    snapshot = circuit.metrics()
    assert (snapshot.requests, snapshot.failures, snapshot.fallback_successes) == (0, 0, 0)


def test_events_expire_bucket_by_bucket(clock: FakeClock) -> None:
    circuit = _configure("window-steps", rolling_window=400, rolling_buckets=4, request_volume_threshold=100)
    _to_bucket_start(clock, 100)
    for _ in range(4):  # one success per 100 ms bucket
        assert fasthystrix.do("window-steps", lambda: "ok") == "ok"
        clock.advance(ms=100)
    seen = []
    for _ in range(5):
        seen.append(circuit.metrics().successes)
        clock.advance(ms=100)
    assert seen == [3, 2, 1, 0, 0]


def test_the_breaker_decides_on_the_configured_window(clock: FakeClock) -> None:
    name = "window-breaker"
    circuit = _configure(name, rolling_window=2000, rolling_buckets=4)
    _to_bucket_start(clock, 500)
    for _ in range(3):
        fasthystrix.do(name, _fail, lambda err: None)
    clock.advance(ms=2000)  # those 3 failures left the 2 s window (the default 10 s window keeps them)
    fasthystrix.do(name, _fail, lambda err: None)
    fasthystrix.do(name, _fail, lambda err: None)
    assert not circuit.is_open()  # 2 requests, below the volume threshold of 4
    assert circuit.metrics().requests == 2
    fasthystrix.do(name, _fail, lambda err: None)
    fasthystrix.do(name, _fail, lambda err: None)
    assert circuit.is_open()
    assert isinstance(fasthystrix.do(name, lambda: "ok", lambda err: err), fasthystrix.CircuitOpenError)


def test_one_bucket_windows_empty_at_once(clock: FakeClock) -> None:
    name = "window-one-bucket"
    circuit = _configure(name, rolling_window=1000, rolling_buckets=1, request_volume_threshold=100)
    _to_bucket_start(clock, 1000)
    clock.advance(ms=999)
    fasthystrix.do(name, lambda: "ok")
    assert circuit.metrics().successes == 1
    clock.advance(ms=1)
    assert circuit.metrics().successes == 0


def test_reconfiguring_the_window_resets_its_counts_and_nothing_else(clock: FakeClock) -> None:
    name = "window-reconfigure"
    _cumulative.acquire()
    try:
        circuit = _configure(name, rolling_window=2000, rolling_buckets=4, request_volume_threshold=100)
        for _ in range(3):
            fasthystrix.do(name, lambda: "ok")
        fasthystrix.do(name, _fail, lambda err: None)
        assert circuit.metrics().requests == 4
        # The same window again (another field changed): the counts stay.
        _configure(name, rolling_window=2000, rolling_buckets=4, request_volume_threshold=50)
        assert circuit.metrics().requests == 4
        # Another window: they go; the cumulative counters the exporters read keep every event.
        _configure(name, rolling_window=3000, rolling_buckets=6, request_volume_threshold=50)
        snapshot = circuit.metrics()
        assert (snapshot.requests, snapshot.successes, snapshot.failures) == (0, 0, 0)
        assert circuit._default._rolling.window() == (500_000_000, 6)
        fasthystrix.do(name, lambda: "ok")
        assert circuit.metrics().successes == 1
        # Back to the default window.
        _configure(name, request_volume_threshold=50)
        assert circuit.metrics().requests == 0
        assert circuit._default._rolling.window() == (1_000_000_000, 10)
        fasthystrix.do(name, lambda: "ok")
        assert circuit.metrics().successes == 1
        collector = _cumulative.cumulative_of(circuit)
        assert collector is not None
        events = dict(zip(COUNTED_EVENT_NAMES, collector.counts().events, strict=True))
        assert (events["success"], events["failure"]) == (5, 1)
    finally:
        _cumulative.release()


def test_the_window_s_retired_totals_stay_exact_across_reconfiguration(clock: FakeClock) -> None:
    # The compiled window keeps what leaves it (retired totals, what a host-wide circuit's exporters
    # read); the pure private window has no such totals (its exporters count through a collector).
    rolling = _impl.current().RollingMetrics()
    assert hasattr(rolling, "cumulative") == (IMPLEMENTATION == "compiled")
    if not hasattr(rolling, "cumulative"):
        return
    now = 5_000_000_000
    for geometry in [(250_000_000, 4), (250_000_000, 4), (10_000_000, 100), (1_000_000_000, 10), (250_000_000, 4)]:
        rolling.configure_window(*geometry)
        for i in range(7):
            rolling.record(0, -1, now + i * 30_000_000, 5, 5)
        now += 10_000_000_000
    events = rolling.cumulative()[0]
    assert events[0] == 35
    assert rolling.counts(now)[0] == 0


def test_bad_geometries_are_refused_by_the_window() -> None:
    rolling = _impl.current().RollingMetrics()
    for bucket_ns, buckets in [(0, 10), (-1, 10), (1_000_000, 0)]:
        with pytest.raises(ValueError, match="rolling window"):
            rolling.configure_window(bucket_ns, buckets)
    assert rolling.window() == (1_000_000_000, 10)


# -- reporting ------------------------------------------------------------------------------


def test_the_stream_reports_the_configured_window(clock: FakeClock) -> None:
    name = "window-stream"
    circuit = _configure(name, rolling_window=2000, rolling_buckets=4, request_volume_threshold=100)
    _to_bucket_start(clock, 500)
    fasthystrix.do(name, lambda: "ok")
    fasthystrix.do(name, _fail, lambda err: None)
    command, pool = messages(circuit, 0)
    assert command["propertyValue_metricsRollingStatisticalWindowInMilliseconds"] == 2000
    assert pool["propertyValue_metricsRollingStatisticalWindowInMilliseconds"] == 2000
    assert (command["rollingCountSuccess"], command["rollingCountFailure"], command["requestCount"]) == (1, 1, 2)
    clock.advance(ms=2000)
    command, _ = messages(circuit, 0)
    assert (command["rollingCountSuccess"], command["rollingCountFailure"], command["requestCount"]) == (0, 0, 0)
    # The rendered text says the same (one template for the dicts and the text).
    text = render([circuit], 0)
    assert text.count(b'"propertyValue_metricsRollingStatisticalWindowInMilliseconds":2000,') == 2


def test_the_stream_reports_the_default_window() -> None:
    command, pool = messages(fasthystrix.get_circuit("window-stream-default")[0], 0)
    assert command["propertyValue_metricsRollingStatisticalWindowInMilliseconds"] == 10_000
    assert pool["propertyValue_metricsRollingStatisticalWindowInMilliseconds"] == 10_000


# -- threads --------------------------------------------------------------------------------


def test_threads_recording_across_bucket_boundaries_lose_nothing(clock: FakeClock) -> None:
    # 8 threads call while a 9th moves the fake clock through the 10 ms buckets of a 1 s window:
    # every call is counted in the window (the clock moves less than the window), in one bucket
    # or another; then the window expires and the cumulative counters still hold every call.
    name = "window-stress"
    _cumulative.acquire()
    try:
        circuit = _configure(
            name, rolling_window=800, rolling_buckets=80, max_concurrent_requests=100, request_volume_threshold=10**6
        )
        _to_bucket_start(clock, 1000)
        calls = 2000
        start = threading.Barrier(9)
        failures: list[BaseException] = []

        def caller(k: int) -> None:
            try:
                start.wait()
                for i in range(calls):
                    if (i + k) % 5:
                        fasthystrix.do(name, lambda: "ok")
                    else:
                        fasthystrix.do(name, _fail, lambda err: None)
            except BaseException as exc:
                failures.append(exc)

        def mover() -> None:
            start.wait()
            for _ in range(700):  # 700 ms in 1 ms steps, within the 800 ms window: across 70 bucket boundaries
                clock.advance(ms=1)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        threads.append(threading.Thread(target=mover))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures
        snapshot = circuit.metrics()
        assert snapshot.requests == 8 * calls
        assert snapshot.failures == 8 * calls // 5
        assert snapshot.successes == 8 * calls - 8 * calls // 5
        assert snapshot.fallback_successes == 8 * calls // 5
        assert snapshot.executed == 8 * calls
        clock.advance(ms=1000)
        assert circuit.metrics().requests == 0
        collector = _cumulative.cumulative_of(circuit)
        assert collector is not None
        events = dict(zip(COUNTED_EVENT_NAMES, collector.counts().events, strict=True))
        assert events["success"] + events["failure"] == 8 * calls
    finally:
        _cumulative.release()


# -- memory ---------------------------------------------------------------------------------


def _traced_per_circuit(names: list[str]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        circuits = [fasthystrix.get_circuit(name) for name in names]
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(circuits) == len(names)
    return used / len(names)


# What a private circuit's window costs (a host-wide circuit's buckets are in its file, whose
# mapping and process slot cost Python objects of their own, whatever the window).
@pytest.mark.skipif(SHARED_TESTS, reason="measures private circuits: a host-wide window lives in its file")
@pytest.mark.parametrize(
    ("window", "buckets", "bound"),
    [
        (None, None, 4096),  # the default window: what every circuit costs today
        (2000, 4, 4096),  # a few buckets: within the 4 KiB of any idle circuit
        (10_000, 10, 4096),  # the default, spelled out
        (800, MAX_ROLLING_BUCKETS, 4096 + MAX_ROLLING_BUCKETS * 200),  # only the buckets asked for
    ],
)
def test_an_idle_circuit_costs_its_buckets_only(window: int | None, buckets: int | None, bound: int) -> None:
    fasthystrix.do("warm-up", lambda: None, None)  # first-use caches, not a circuit's cost
    n = 500
    names = [f"window-idle-{window}-{i}" for i in range(n)]
    fasthystrix.configure({name: CommandConfig(rolling_window=window, rolling_buckets=buckets) for name in names})
    per_circuit = _traced_per_circuit(names)
    print(f"\n{IMPLEMENTATION}: {per_circuit:.0f} B per idle circuit, window {window} in {buckets} buckets")
    assert 0 < per_circuit <= bound


# -- host-wide circuits ---------------------------------------------------------------------


def _file_geometry(circuit: Any) -> tuple[int, int]:
    """The geometry in a host-wide circuit's file (the GEOM words every process counts with)."""
    words = memoryview(circuit._shared.map).cast("q")
    try:
        return words[_shared.GEOM // 8 + _shared.GEOM_WIDTH], words[_shared.GEOM // 8 + _shared.GEOM_BUCKETS]
    finally:
        words.release()


def test_host_wide_circuits_take_another_window(tmp_path: Path, clock: FakeClock) -> None:
    name = "window-host"
    with sharing(tmp_path / "circuits"):
        circuit = _configure(name, request_volume_threshold=100)
        assert _file_geometry(circuit) == (1_000_000_000, 10)
        for _ in range(3):
            fasthystrix.do(name, lambda: "ok")
        settings = fasthystrix.configure_command(
            name,
            {"isolation": "semaphore", "request_volume_threshold": 100, "rolling_window": 2000, "rolling_buckets": 4},
        )
        assert (settings.rolling_window, settings.rolling_buckets) == (timedelta(seconds=2), 4)
        assert fasthystrix.get_circuit_settings()[name] == settings
        assert circuit._default._rolling.window() == _file_geometry(circuit) == (500_000_000, 4)
        assert circuit.metrics().successes == 0  # another window: emptied
        _to_bucket_start(clock, 500)
        fasthystrix.do(name, lambda: "ok")
        clock.advance(ms=1999)
        assert circuit.metrics().successes == 1
        clock.advance(ms=1)
        assert circuit.metrics().successes == 0
        # Every call is in the window or the retired totals.
        events = dict(zip(COUNTED_EVENT_NAMES, _cumulative_events(circuit), strict=True))
        assert events["success"] == 4
        # A bad window changes nothing, in the file either.
        with pytest.raises(ValueError, match="rolling_buckets"):
            fasthystrix.configure_command(name, {"rolling_buckets": 7})
        assert _file_geometry(circuit) == (500_000_000, 4)


def _cumulative_events(circuit: Any) -> tuple[int, ...]:
    host = getattr(circuit, "_host", None)  # the pure twin's window is read under the host lock
    if host is None:
        return tuple(circuit._default._rolling.cumulative()[0])
    with host.lock:
        return tuple(circuit._default._rolling.cumulative()[0])


def test_a_window_set_before_sharing_is_the_file_s(tmp_path: Path) -> None:
    before = _shared.shared_dir()
    fasthystrix.flush()
    _shared._unshare()
    try:
        fasthystrix.configure_command("window-early", {"rolling_window": 2000, "rolling_buckets": 4})
        fasthystrix.set_defaults(CommandConfig(rolling_window=3000, rolling_buckets=6))
        with sharing(tmp_path / "circuits"):
            early = fasthystrix.get_circuit("window-early")[0]
            by_default = fasthystrix.get_circuit("window-by-default")[0]
            assert _file_geometry(early) == early._default._rolling.window() == (500_000_000, 4)
            assert _file_geometry(by_default) == by_default._default._rolling.window() == (500_000_000, 6)
            assert by_default.settings.rolling_window == timedelta(seconds=3)
    finally:
        fasthystrix.set_defaults()
        if before is not None:
            fasthystrix.flush()
            fasthystrix.share_circuits(before)
