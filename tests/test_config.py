"""Configuration: CommandConfig validation, the settings table, defaults, and settings that change at run time."""

from __future__ import annotations

import collections
import threading
import types
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix import CommandConfig, Settings, _registry
from fasthystrix._core._config import MAX_COUNT, MAX_DURATION_MS
from support import WAIT

HYSTRIX_DEFAULTS = Settings(
    timeout=timedelta(milliseconds=1000),
    max_concurrent_requests=10,
    request_volume_threshold=20,
    sleep_window=timedelta(milliseconds=5000),
    error_percent_threshold=50,
    isolation="thread",
)

FIELDS = (
    "timeout",
    "max_concurrent_requests",
    "request_volume_threshold",
    "sleep_window",
    "error_percent_threshold",
    "isolation",
)


def _fail() -> None:
    raise RuntimeError("boom")


def _settings_of(settings: Settings) -> tuple[Any, ...]:
    return tuple(getattr(settings, f) for f in FIELDS)


# -- defaults ---------------------------------------------------------------------------


def test_defaults_are_hystrix_go_defaults() -> None:
    defaults = fasthystrix.get_defaults()
    assert _settings_of(defaults) == _settings_of(HYSTRIX_DEFAULTS)
    assert isinstance(defaults.timeout, timedelta)
    assert isinstance(defaults.sleep_window, timedelta)
    assert (
        fasthystrix.DEFAULT_TIMEOUT,
        fasthystrix.DEFAULT_MAX_CONCURRENT_REQUESTS,
        fasthystrix.DEFAULT_REQUEST_VOLUME_THRESHOLD,
        fasthystrix.DEFAULT_SLEEP_WINDOW,
        fasthystrix.DEFAULT_ERROR_PERCENT_THRESHOLD,
        fasthystrix.DEFAULT_ISOLATION,
    ) == (1000, 10, 20, 5000, 50, "thread")


def test_unconfigured_command_gets_defaults_on_first_use() -> None:
    assert "fresh" not in fasthystrix.get_circuit_settings()
    assert fasthystrix.do("fresh", lambda: 1) == 1
    settings = fasthystrix.get_circuit_settings()["fresh"]
    assert _settings_of(settings) == _settings_of(HYSTRIX_DEFAULTS)


def test_empty_config_gets_defaults() -> None:
    configs: tuple[CommandConfig, dict[str, object]] = (CommandConfig(), {})
    for config in configs:
        settings = fasthystrix.configure_command("empty", config)
        assert _settings_of(settings) == _settings_of(HYSTRIX_DEFAULTS)
        assert fasthystrix.get_circuit_settings()["empty"].sleep_window == timedelta(seconds=5)


# -- hystrix-go's settings tests (spec section 10, 24-28) ------------------------------------


def test_configure_concurrency_reads_back() -> None:
    fasthystrix.configure_command("test", CommandConfig(max_concurrent_requests=100))
    assert fasthystrix.get_circuit_settings()["test"].max_concurrent_requests == 100


def test_configure_timeout_reads_back_as_timedelta() -> None:
    fasthystrix.configure_command("test", CommandConfig(timeout=10000))
    assert fasthystrix.get_circuit_settings()["test"].timeout == timedelta(seconds=10)


def test_configure_request_volume_threshold_reads_back() -> None:
    fasthystrix.configure_command("test", CommandConfig(request_volume_threshold=30))
    assert fasthystrix.get_circuit_settings()["test"].request_volume_threshold == 30


def test_get_circuit_settings_shares_the_settings_object() -> None:
    fasthystrix.configure_command("test", CommandConfig(timeout=30000))
    circuit, _ = fasthystrix.get_circuit("test")
    table = fasthystrix.get_circuit_settings()
    assert table["test"] is circuit.settings
    assert table["test"].timeout == timedelta(seconds=30)


def test_get_circuit_settings_is_a_copy() -> None:
    fasthystrix.configure_command("kept", {})
    table = fasthystrix.get_circuit_settings()
    table.clear()
    assert "kept" in fasthystrix.get_circuit_settings()


# -- times: int milliseconds or timedelta --------------------------------------------------


@pytest.mark.parametrize("field", ["timeout", "sleep_window"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (1, timedelta(milliseconds=1)),
        (1500, timedelta(milliseconds=1500)),
        (timedelta(seconds=2), timedelta(seconds=2)),
        (timedelta(microseconds=2500), timedelta(microseconds=2500)),
    ],
)
def test_times_accept_int_ms_and_timedelta(field: str, value: int | timedelta, expected: timedelta) -> None:
    for config in (CommandConfig(**{field: value}), {field: value}):  # type: ignore[arg-type]
        settings = fasthystrix.configure_command("t", config)
        got = getattr(settings, field)
        assert isinstance(got, timedelta)
        assert got == expected
        assert getattr(fasthystrix.get_circuit_settings()["t"], field) == expected


def test_configure_many_commands() -> None:
    result = fasthystrix.configure(
        {"a": CommandConfig(timeout=100), "b": {"max_concurrent_requests": 3, "isolation": "semaphore"}}
    )
    table = fasthystrix.get_circuit_settings()
    assert table["a"].timeout == timedelta(milliseconds=100)
    assert table["a"].max_concurrent_requests == 10
    assert table["b"].max_concurrent_requests == 3
    assert table["b"].isolation == "semaphore"
    assert table["b"].timeout == timedelta(seconds=1)
    assert set(result) == {"a", "b"}


def test_boundary_values_are_accepted() -> None:
    low = fasthystrix.configure_command(
        "low",
        CommandConfig(
            timeout=0,
            max_concurrent_requests=0,
            request_volume_threshold=0,
            sleep_window=0,
            error_percent_threshold=1,
            isolation="semaphore",
        ),
    )
    assert (low.max_concurrent_requests, low.request_volume_threshold, low.error_percent_threshold) == (0, 0, 1)
    high = fasthystrix.configure_command("high", {"error_percent_threshold": 100, "isolation": "thread"})
    assert high.error_percent_threshold == 100


def test_zero_max_concurrent_requests_rejects_every_call() -> None:
    fasthystrix.configure_command("closed-door", {"max_concurrent_requests": 0, "isolation": "semaphore"})
    ran = []
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do("closed-door", lambda: ran.append(1))
    assert ran == []


# -- invalid values ------------------------------------------------------------------------

_OBJ = object()

INVALID: list[tuple[str, object, type[Exception]]] = [
    *[
        (field, value, exc)
        for field in ("timeout", "sleep_window")
        for value, exc in (
            (-1, ValueError),
            (-1000, ValueError),
            (timedelta(milliseconds=-1), ValueError),
            (MAX_DURATION_MS + 1, ValueError),
            (timedelta(milliseconds=MAX_DURATION_MS, microseconds=1), ValueError),
            (2**63, ValueError),
            (1.5, TypeError),
            (1000.0, TypeError),
            (float("nan"), TypeError),
            ("1000", TypeError),
            ("", TypeError),
            (True, TypeError),
            (False, TypeError),
            ([], TypeError),
            ({}, TypeError),
            (b"1", TypeError),
            (_OBJ, TypeError),
        )
    ],
    *[
        (field, value, exc)
        for field in ("max_concurrent_requests", "request_volume_threshold")
        for value, exc in (
            (-1, ValueError),
            (-100, ValueError),
            (2**31, ValueError),
            (2**63 - 1, ValueError),
            (2**63, ValueError),
            (2**64, ValueError),
            (10**30, ValueError),
            (1.0, TypeError),
            (2.5, TypeError),
            ("5", TypeError),
            (True, TypeError),
            (False, TypeError),
            (timedelta(seconds=1), TypeError),
            ([], TypeError),
            (_OBJ, TypeError),
        )
    ],
    *[
        ("error_percent_threshold", value, exc)
        for value, exc in (
            (0, ValueError),
            (101, ValueError),
            (-1, ValueError),
            (1000, ValueError),
            (50.0, TypeError),
            ("50", TypeError),
            (True, TypeError),
            (False, TypeError),
            ([], TypeError),
        )
    ],
    *[
        ("isolation", value, exc)
        for value, exc in (
            ("process", ValueError),
            ("THREAD", ValueError),
            ("", ValueError),
            ("threads", ValueError),
            (1, TypeError),
            (True, TypeError),
            (b"thread", TypeError),
            (["thread"], TypeError),
        )
    ],
]


def _invalid_id(case: tuple[str, object, type[Exception]]) -> str:
    field, value, _ = case
    return f"{field}={value!r}"


def _check_message(exc: BaseException, field: str, value: object) -> None:
    message = str(exc)
    assert field in message, message
    assert repr(value) in message, message


@pytest.fixture
def existing() -> Settings:
    """A configured command with a live circuit, which failed configuration must leave alone."""
    settings = fasthystrix.configure_command("existing", CommandConfig(timeout=123, max_concurrent_requests=4))
    fasthystrix.get_circuit("existing")
    return settings


def _snapshot() -> tuple[dict[str, Settings], dict[str, Any], Settings]:
    return fasthystrix.get_circuit_settings(), _registry.circuits(), fasthystrix.get_defaults()


def _assert_unchanged(before: tuple[dict[str, Settings], dict[str, Any], Settings]) -> None:
    settings, circuits, defaults = before
    after_settings, after_circuits, after_defaults = _snapshot()
    assert after_settings.keys() == settings.keys()
    for name, value in settings.items():
        assert after_settings[name] is value
    assert after_circuits.keys() == circuits.keys()
    for name, circuit in circuits.items():
        assert after_circuits[name] is circuit
        assert circuit.settings is settings[name]
    assert after_defaults is defaults


@pytest.mark.parametrize("case", INVALID, ids=_invalid_id)
def test_command_config_rejects_invalid_value(case: tuple[str, object, type[Exception]]) -> None:
    field, value, exc_type = case
    with pytest.raises(exc_type) as info:
        CommandConfig(**{field: value})  # type: ignore[arg-type]
    _check_message(info.value, field, value)


@pytest.mark.parametrize("case", INVALID, ids=_invalid_id)
def test_configure_command_rejects_invalid_value_and_changes_nothing(
    case: tuple[str, object, type[Exception]], existing: Settings
) -> None:
    field, value, exc_type = case
    before = _snapshot()
    for name in ("existing", "new-name"):
        with pytest.raises(exc_type) as info:
            fasthystrix.configure_command(name, {field: value})
        _check_message(info.value, field, value)
    _assert_unchanged(before)
    assert "new-name" not in fasthystrix.get_circuit_settings()
    assert fasthystrix.get_circuit("existing")[0].settings is existing


@pytest.mark.parametrize("case", INVALID, ids=_invalid_id)
def test_configure_with_one_bad_entry_applies_none(
    case: tuple[str, object, type[Exception]], existing: Settings
) -> None:
    field, value, exc_type = case
    before = _snapshot()
    good = {"timeout": 777}
    for mapping in (
        {"good-1": good, "existing": {field: value}, "good-2": CommandConfig(timeout=777)},
        {"existing": good, "bad": {field: value}},
        {"bad": {field: value}, "existing": good},
    ):
        with pytest.raises(exc_type) as info:
            fasthystrix.configure(mapping)  # type: ignore[arg-type]
        _check_message(info.value, field, value)
        _assert_unchanged(before)
    table = fasthystrix.get_circuit_settings()
    assert not {"good-1", "good-2", "bad"} & table.keys()
    assert table["existing"].timeout == timedelta(milliseconds=123)


@pytest.mark.parametrize("key", ["timeout_ms", "Timeout", "maxConcurrentRequests", "unknown"])
def test_unknown_dict_keys_are_rejected_by_name(key: str, existing: Settings) -> None:
    before = _snapshot()
    with pytest.raises((TypeError, ValueError)) as info:
        fasthystrix.configure_command("existing", {"timeout": 5, key: 5})
    assert key in str(info.value)
    with pytest.raises((TypeError, ValueError)) as info:
        fasthystrix.configure({"other": {}, "existing": {key: 5}})
    assert key in str(info.value)
    _assert_unchanged(before)
    assert "other" not in fasthystrix.get_circuit_settings()


@pytest.mark.parametrize("config", [None, 5, "timeout=5", [("timeout", 5)], Settings])
def test_configure_command_rejects_a_config_of_the_wrong_type(config: object, existing: Settings) -> None:
    before = _snapshot()
    with pytest.raises(TypeError):
        fasthystrix.configure_command("existing", config)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fasthystrix.configure({"other": {}, "existing": config})  # type: ignore[dict-item]
    _assert_unchanged(before)


@pytest.mark.parametrize("mapping", [None, [("a", {})], "a", 5])
def test_configure_rejects_non_mapping(mapping: object, existing: Settings) -> None:
    before = _snapshot()
    with pytest.raises(TypeError):
        fasthystrix.configure(mapping)  # type: ignore[arg-type]
    _assert_unchanged(before)


def test_configure_rejects_non_str_name_and_applies_none(existing: Settings) -> None:
    before = _snapshot()
    with pytest.raises(TypeError):
        fasthystrix.configure({"ok": {}, 5: {}})  # type: ignore[dict-item]
    _assert_unchanged(before)
    assert "ok" not in fasthystrix.get_circuit_settings()


# -- upper bounds -----------------------------------------------------------------------------


def test_largest_values_are_accepted_and_work() -> None:
    """The documented bounds themselves are valid, and a command runs with them on either implementation."""
    largest = {
        "timeout": MAX_DURATION_MS,
        "max_concurrent_requests": MAX_COUNT,
        "request_volume_threshold": MAX_COUNT,
        "sleep_window": timedelta(milliseconds=MAX_DURATION_MS),
        "isolation": "semaphore",
    }
    settings = fasthystrix.configure_command("largest", largest)
    assert settings.timeout == settings.sleep_window == timedelta(days=365)
    assert settings.max_concurrent_requests == settings.request_volume_threshold == 2**31 - 1
    assert fasthystrix.do("largest", lambda: "ran") == "ran"
    fasthystrix.configure_command("largest", {**largest, "isolation": "thread"})
    assert fasthystrix.do("largest", lambda: "ran") == "ran"
    assert fasthystrix.go("largest", lambda: "ran").result(WAIT) == "ran"
    assert fasthystrix.get_circuit("largest")[0].metrics().successes == 3


@pytest.mark.parametrize("field", ["max_concurrent_requests", "request_volume_threshold"])
def test_count_too_large_for_the_compiled_circuit_changes_nothing(field: str) -> None:
    """2**63 used to pass validation: the compiled circuit then applied the timeout, raised
    ``OverflowError`` before the isolation, and after ``flush()`` every call raised it."""
    fasthystrix.configure_command("big", {"isolation": "thread", "timeout": 1000})
    fasthystrix.do("big", lambda: None)
    circuit = fasthystrix.get_circuit("big")[0]
    before = _snapshot()
    with pytest.raises(ValueError, match=rf"{field} must be at most 2147483647 \(2\*\*31 - 1\), got {2**63}"):
        fasthystrix.configure_command("big", {"timeout": 5, "isolation": "semaphore", field: 2**63})
    _assert_unchanged(before)
    assert circuit.settings.timeout == timedelta(seconds=1)
    assert circuit.settings.isolation == "thread"
    assert fasthystrix.do("big", threading.current_thread) is not threading.current_thread()
    fasthystrix.flush()
    assert fasthystrix.do("big", lambda: "ran", lambda err: "fallback") == "ran"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent_requests", 2**63),
        ("request_volume_threshold", MAX_COUNT + 1),
        ("timeout", MAX_DURATION_MS + 1),
        ("sleep_window", timedelta.max),
    ],
)
def test_set_defaults_rejects_too_large_values_and_changes_nothing(field: str, value: object) -> None:
    before = fasthystrix.get_defaults()
    with pytest.raises(ValueError) as info:
        fasthystrix.set_defaults(CommandConfig(**{field: value}))  # type: ignore[arg-type]
    _check_message(info.value, field, value)
    assert fasthystrix.get_defaults() is before
    assert fasthystrix.do("after-defaults", lambda: "ran") == "ran"


@pytest.mark.parametrize(
    ("field", "value", "exc_type"),
    [
        ("max_concurrent_requests", 2**63, ValueError),
        ("request_volume_threshold", -1, ValueError),
        ("error_percent_threshold", 0, ValueError),
        ("timeout", timedelta(days=366), ValueError),
        ("sleep_window", timedelta(milliseconds=-1), ValueError),
        ("timeout", 1000, TypeError),
        ("isolation", "process", ValueError),
    ],
)
def test_settings_built_directly_are_validated_too(field: str, value: object, exc_type: type[Exception]) -> None:
    """``Settings`` is public and circuits trust it; a bad one fails where it is built."""
    values = {name: getattr(HYSTRIX_DEFAULTS, name) for name in FIELDS}
    values[field] = value
    with pytest.raises(exc_type) as info:
        Settings(**values)
    _check_message(info.value, field, value)


class _ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("field", "value", "exc_type", "shown"),
    [
        ("max_concurrent_requests", 10**5000, ValueError, "<int of 16610 bits>"),
        ("timeout", 10**5000, ValueError, "<int of 16610 bits>"),
        ("timeout", _ReprRaises(), TypeError, "<unprintable _ReprRaises object>"),
        ("isolation", _ReprRaises(), TypeError, "<unprintable _ReprRaises object>"),
    ],
    ids=["count-10**5000", "timeout-10**5000", "timeout-bad-repr", "isolation-bad-repr"],
)
def test_values_that_cannot_be_shown_still_name_the_field(
    field: str, value: object, exc_type: type[Exception], shown: str, existing: Settings
) -> None:
    """The message used ``repr(value)``, which fails for an int past Python's str() limit or a
    ``__repr__`` that raises: the error then said nothing about the field."""
    before = _snapshot()
    with pytest.raises(exc_type) as info:
        fasthystrix.configure_command("existing", {field: value})
    assert str(info.value).startswith(field)
    assert str(info.value).endswith(shown)
    _assert_unchanged(before)


# -- set_defaults -----------------------------------------------------------------------------


def test_set_defaults_applies_to_later_commands_only() -> None:
    fasthystrix.configure_command("configured-before", {})
    fasthystrix.do("used-before", lambda: None)
    circuit_before, _ = fasthystrix.get_circuit("used-before")

    new = fasthystrix.set_defaults(CommandConfig(timeout=250, max_concurrent_requests=3, isolation="semaphore"))
    assert new is fasthystrix.get_defaults()
    assert new.timeout == timedelta(milliseconds=250)
    assert (new.max_concurrent_requests, new.isolation) == (3, "semaphore")
    assert new.request_volume_threshold == 20
    assert new.sleep_window == timedelta(seconds=5)
    assert new.error_percent_threshold == 50

    table = fasthystrix.get_circuit_settings()
    assert _settings_of(table["configured-before"]) == _settings_of(HYSTRIX_DEFAULTS)
    assert _settings_of(table["used-before"]) == _settings_of(HYSTRIX_DEFAULTS)
    assert _settings_of(circuit_before.settings) == _settings_of(HYSTRIX_DEFAULTS)

    configured = fasthystrix.configure_command("configured-after", {"max_concurrent_requests": 7})
    assert configured.timeout == timedelta(milliseconds=250)
    assert configured.max_concurrent_requests == 7
    assert configured.isolation == "semaphore"

    caller = threading.current_thread()
    seen: list[threading.Thread] = []
    fasthystrix.do("used-after", lambda: seen.append(threading.current_thread()))
    assert seen == [caller]
    assert fasthystrix.get_circuit_settings()["used-after"].timeout == timedelta(milliseconds=250)


def test_set_defaults_keeps_unset_fields_and_restores() -> None:
    fasthystrix.set_defaults(CommandConfig(timeout=250))
    second = fasthystrix.set_defaults(CommandConfig(sleep_window=timedelta(seconds=1)))
    assert second.timeout == timedelta(milliseconds=250)
    assert second.sleep_window == timedelta(seconds=1)
    restored = fasthystrix.set_defaults()
    assert _settings_of(restored) == _settings_of(HYSTRIX_DEFAULTS)
    assert _settings_of(fasthystrix.get_defaults()) == _settings_of(HYSTRIX_DEFAULTS)


@pytest.mark.parametrize("bad", [{"timeout": 5}, 5, "x", HYSTRIX_DEFAULTS])
def test_set_defaults_rejects_non_config(bad: object) -> None:
    before = fasthystrix.get_defaults()
    with pytest.raises(TypeError):
        fasthystrix.set_defaults(bad)  # type: ignore[arg-type]
    assert fasthystrix.get_defaults() is before


def test_set_defaults_max_concurrency_zero_rejects_new_commands() -> None:
    fasthystrix.do("old", lambda: None)
    fasthystrix.set_defaults(CommandConfig(max_concurrent_requests=0))
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do("new", lambda: None)
    assert fasthystrix.do("old", lambda: 5) == 5


# -- run-time changes take effect for calls that start afterwards ------------------------------


def test_timeout_change_applies_to_next_call_semaphore(clock: FakeClock) -> None:
    fasthystrix.configure_command("slow", {"timeout": 100, "isolation": "semaphore"})

    def run() -> str:
        clock.advance(ms=150)
        return "done"

    with pytest.raises(fasthystrix.TimeoutError):
        fasthystrix.do("slow", run)
    fasthystrix.configure_command("slow", {"timeout": 200, "isolation": "semaphore"})
    assert fasthystrix.do("slow", run) == "done"
    fasthystrix.configure_command("slow", {"timeout": timedelta(milliseconds=149), "isolation": "semaphore"})
    with pytest.raises(fasthystrix.TimeoutError):
        fasthystrix.do("slow", run)
    metrics = fasthystrix.get_circuit("slow")[0].metrics()
    assert (metrics.timeouts, metrics.successes) == (2, 1)


def test_timeout_change_applies_to_next_call_thread() -> None:
    fasthystrix.configure_command("slow-thread", {"timeout": 20})
    release = threading.Event()
    try:
        with pytest.raises(fasthystrix.TimeoutError):
            fasthystrix.do("slow-thread", lambda: release.wait(2 * WAIT))
    finally:
        release.set()
    fasthystrix.configure_command("slow-thread", {"timeout": 4000})

    def forty_ms() -> str:
        threading.Event().wait(0.04)
        return "in time"

    assert fasthystrix.do("slow-thread", forty_ms) == "in time"


def _blocked_go(name: str) -> tuple[threading.Event, Future[Any]]:
    gate = threading.Event()
    future = fasthystrix.go(name, lambda: gate.wait(2 * WAIT) and "released")
    return gate, future


def test_max_concurrent_lowered_while_calls_in_flight() -> None:
    name = "lowered"
    fasthystrix.configure_command(name, {"max_concurrent_requests": 3, "timeout": 120_000})
    circuit, _ = fasthystrix.get_circuit(name)
    blocked = [_blocked_go(name) for _ in range(3)]
    try:
        assert circuit.tickets_in_use == 3
        fasthystrix.configure_command(name, {"max_concurrent_requests": 2, "timeout": 120_000})
        with pytest.raises(fasthystrix.MaxConcurrencyError):
            fasthystrix.do(name, lambda: "no ticket")

        blocked[0][0].set()
        assert blocked[0][1].result(WAIT) == "released"
        assert circuit.tickets_in_use == 2
        with pytest.raises(fasthystrix.MaxConcurrencyError):
            fasthystrix.do(name, lambda: "still no ticket")

        blocked[1][0].set()
        assert blocked[1][1].result(WAIT) == "released"
        assert circuit.tickets_in_use == 1
        assert fasthystrix.do(name, lambda: "admitted") == "admitted"
        assert circuit.metrics().rejects == 2
    finally:
        for gate, _ in blocked:
            gate.set()
    for _, future in blocked:
        assert future.result(WAIT) == "released"


def test_max_concurrent_raised_while_calls_in_flight() -> None:
    name = "raised"
    fasthystrix.configure_command(name, {"max_concurrent_requests": 1, "timeout": 120_000})
    circuit, _ = fasthystrix.get_circuit(name)
    first = _blocked_go(name)
    more: list[tuple[threading.Event, Future[Any]]] = []
    try:
        with pytest.raises(fasthystrix.MaxConcurrencyError):
            fasthystrix.do(name, lambda: None)
        fasthystrix.configure_command(name, {"max_concurrent_requests": 3, "timeout": 120_000})
        more = [_blocked_go(name), _blocked_go(name)]
        assert circuit.tickets_in_use == 3
        with pytest.raises(fasthystrix.MaxConcurrencyError):
            fasthystrix.do(name, lambda: None)
        assert all(not future.done() for _, future in [first, *more])
    finally:
        for gate, _ in [first, *more]:
            gate.set()
    assert [future.result(WAIT) for _, future in [first, *more]] == ["released"] * 3
    assert circuit.metrics().rejects == 2


def _trip_setup(name: str, **overrides: object) -> None:
    config: dict[str, object] = {
        "isolation": "semaphore",
        "request_volume_threshold": 4,
        "error_percent_threshold": 50,
        "sleep_window": 5000,
    }
    config.update(overrides)
    fasthystrix.configure_command(name, config)


def _fail_times(name: str, n: int) -> None:
    for _ in range(n):
        with pytest.raises(RuntimeError):
            fasthystrix.do(name, _fail)


def test_request_volume_threshold_change_applies(clock: FakeClock) -> None:
    _trip_setup("rvt", request_volume_threshold=10)
    _fail_times("rvt", 4)
    with pytest.raises(RuntimeError):
        fasthystrix.do("rvt", _fail)
    _trip_setup("rvt", request_volume_threshold=5)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("rvt", lambda: "never")
    assert fasthystrix.get_circuit("rvt")[0].is_open()


def test_error_percent_threshold_change_applies(clock: FakeClock) -> None:
    _trip_setup("ept", error_percent_threshold=60)
    _fail_times("ept", 2)
    for _ in range(2):
        assert fasthystrix.do("ept", lambda: "ok") == "ok"
    assert fasthystrix.do("ept", lambda: "ok") == "ok"
    assert fasthystrix.get_circuit("ept")[0].metrics().error_percent == 40
    _trip_setup("ept", error_percent_threshold=40)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("ept", lambda: "never")


def test_sleep_window_change_applies(clock: FakeClock) -> None:
    _trip_setup("sw", sleep_window=5000)
    _fail_times("sw", 4)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("sw", lambda: "never")
    clock.advance(2)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("sw", lambda: "never")
    _trip_setup("sw", sleep_window=1000)
    assert fasthystrix.do("sw", lambda: "trial") == "trial"
    assert not fasthystrix.get_circuit("sw")[0].is_open()


def test_isolation_change_applies() -> None:
    caller = threading.current_thread()

    def where() -> threading.Thread:
        return threading.current_thread()

    fasthystrix.configure_command("iso", {"isolation": "semaphore"})
    assert fasthystrix.do("iso", where) is caller
    fasthystrix.configure_command("iso", {"isolation": "thread"})
    worker = fasthystrix.do("iso", where)
    assert worker is not caller
    assert worker.name.startswith("fasthystrix")
    fasthystrix.configure_command("iso", {"isolation": "semaphore"})
    assert fasthystrix.do("iso", where) is caller


def test_configure_command_accepts_dict_and_config_alike() -> None:
    from_dict = fasthystrix.configure_command("d", {"timeout": 42, "isolation": "semaphore"})
    from_config = fasthystrix.configure_command("c", CommandConfig(timeout=42, isolation="semaphore"))
    assert _settings_of(from_dict) == _settings_of(from_config)


def test_reconfigure_replaces_the_whole_settings() -> None:
    fasthystrix.configure_command("whole", {"timeout": 42, "max_concurrent_requests": 2})
    after = fasthystrix.configure_command("whole", {"sleep_window": 7})
    assert after.timeout == timedelta(seconds=1)
    assert after.max_concurrent_requests == 10
    assert after.sleep_window == timedelta(milliseconds=7)


# -- values too large for the clock or for timedelta ------------------------------------------


@pytest.mark.parametrize("field", ["timeout", "sleep_window"])
@pytest.mark.parametrize("value", [10**17, 10**30])
def test_int_ms_beyond_timedelta_range_is_a_clear_error(field: str, value: int, existing: Settings) -> None:
    """An int that cannot become a ``timedelta`` must fail like any invalid value, not with OverflowError."""
    before = _snapshot()
    with pytest.raises((TypeError, ValueError)) as info:
        fasthystrix.configure_command("existing", {field: value})
    _check_message(info.value, field, value)
    _assert_unchanged(before)


@pytest.mark.parametrize("value", [timedelta(days=365 * 1000), timedelta.max, 10**13])
def test_huge_timeout_is_refused_or_works_in_thread_isolation(value: int | timedelta) -> None:
    """A timeout past ``threading.TIMEOUT_MAX`` is either refused at configure time or simply never fires."""
    try:
        fasthystrix.configure_command("patient", {"timeout": value})
    except (TypeError, ValueError) as exc:
        _check_message(exc, "timeout", value)
        return

    def thirty_ms() -> str:
        threading.Event().wait(0.03)
        return "finished"

    assert fasthystrix.do("patient", thirty_ms) == "finished"
    assert fasthystrix.go("patient", thirty_ms).result(WAIT) == "finished"
    assert fasthystrix.get_circuit("patient")[0].metrics().successes == 2


def test_calls_in_flight_keep_the_timeout_they_started_with() -> None:
    fasthystrix.configure_command("in-flight", {"timeout": 120_000})
    gate = threading.Event()
    future = fasthystrix.go("in-flight", lambda: gate.wait(2 * WAIT) and "finished")
    try:
        fasthystrix.configure_command("in-flight", {"timeout": 10})
        assert not gate.wait(0.08)
        assert not future.done()
    finally:
        gate.set()
    assert future.result(WAIT) == "finished"
    assert fasthystrix.get_circuit("in-flight")[0].metrics().timeouts == 0


@pytest.mark.parametrize(
    "make",
    [types.MappingProxyType, lambda d: collections.ChainMap(d), collections.OrderedDict],
    ids=["MappingProxyType", "ChainMap", "OrderedDict"],
)
def test_config_may_be_any_mapping(make: Any) -> None:
    """``configure_command(name, config: CommandConfig | Mapping[str, Any])``: any Mapping, not only dict."""
    settings = fasthystrix.configure_command("m", make({"timeout": 5, "isolation": "semaphore"}))
    assert settings.timeout == timedelta(milliseconds=5)
    assert settings.isolation == "semaphore"
    table = fasthystrix.configure({"n": make({"max_concurrent_requests": 2})})
    assert table["n"].max_concurrent_requests == 2
