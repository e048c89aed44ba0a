"""Logging: silent by default (a NullHandler), hystrix-go's three messages once per open/trial/close cycle."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

import fasthystrix
from conftest import FakeClock

OPENING = "opening circuit {}"
TRIAL = "allowing single test to possibly close circuit {}"
CLOSING = "closing circuit {}"


def _trip_config(name: str) -> None:
    fasthystrix.configure_command(
        name,
        {
            "isolation": "semaphore",
            "request_volume_threshold": 3,
            "error_percent_threshold": 50,
            "sleep_window": 5000,
        },
    )


def _fail() -> None:
    raise RuntimeError("down")


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fasthystrix"]


def test_logger_has_a_null_handler_and_propagates() -> None:
    logger = logging.getLogger("fasthystrix")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert logger.propagate


SILENT_SCRIPT = textwrap.dedent(
    """
    import fasthystrix
    fasthystrix.configure_command(
        "quiet", {"isolation": "semaphore", "request_volume_threshold": 1, "error_percent_threshold": 1}
    )
    def fail():
        raise RuntimeError("down")
    try:
        fasthystrix.do("quiet", fail)
    except RuntimeError:
        pass
    try:
        fasthystrix.do("quiet", fail)
    except fasthystrix.CircuitOpenError:
        pass
    else:
        raise SystemExit("the circuit did not open")
    circuit = fasthystrix.get_circuit("quiet")[0]
    circuit.metrics()
    fasthystrix.flush()
    """
)


def test_nothing_is_printed_without_logging_configuration() -> None:
    """In a fresh interpreter with no logging setup, opening a circuit (a WARNING) prints nothing."""
    proc = subprocess.run(
        [sys.executable, "-c", SILENT_SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_nothing_reaches_stderr_in_process(capsys: pytest.CaptureFixture[str], clock: FakeClock) -> None:
    _trip_config("quiet")
    for _ in range(3):
        with pytest.raises(RuntimeError):
            fasthystrix.do("quiet", _fail)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do("quiet", _fail)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_open_trial_close_cycle_logs_each_message_once(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    name = "cycle"
    _trip_config(name)
    caplog.set_level(logging.DEBUG, logger="fasthystrix")
    for _ in range(3):
        with pytest.raises(RuntimeError):
            fasthystrix.do(name, _fail)
    assert _messages(caplog) == []

    for _ in range(5):
        with pytest.raises(fasthystrix.CircuitOpenError):
            fasthystrix.do(name, lambda: None)
        clock.advance(0.5)
    circuit = fasthystrix.get_circuit(name)[0]
    assert circuit.is_open()
    assert _messages(caplog) == [OPENING.format(name)]

    clock.advance(3)
    assert fasthystrix.do(name, lambda: "trial") == "trial"
    for _ in range(5):
        assert fasthystrix.do(name, lambda: "ok") == "ok"
    assert not circuit.is_open()
    assert _messages(caplog) == [OPENING.format(name), TRIAL.format(name), CLOSING.format(name)]

    levels = {r.getMessage(): r.levelno for r in caplog.records if r.name == "fasthystrix"}
    assert levels[OPENING.format(name)] == logging.WARNING
    assert levels[TRIAL.format(name)] == logging.INFO
    assert levels[CLOSING.format(name)] == logging.INFO


def test_failed_trial_logs_trial_without_closing(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    name = "relapse"
    _trip_config(name)
    caplog.set_level(logging.DEBUG, logger="fasthystrix")
    for _ in range(3):
        with pytest.raises(RuntimeError):
            fasthystrix.do(name, _fail)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: None)
    clock.advance(ms=5001)
    with pytest.raises(RuntimeError):
        fasthystrix.do(name, _fail)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: None)
    assert _messages(caplog) == [OPENING.format(name), TRIAL.format(name)]
    clock.advance(ms=5001)
    assert fasthystrix.do(name, lambda: "ok") == "ok"
    assert _messages(caplog) == [OPENING.format(name), TRIAL.format(name), TRIAL.format(name), CLOSING.format(name)]


def test_info_messages_hidden_at_default_warning_level(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    """With only the root's default WARNING level, the opening warning is emitted and the INFO ones are not."""
    name = "levels"
    _trip_config(name)
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            fasthystrix.do(name, _fail)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: None)
    clock.advance(ms=5001)
    fasthystrix.do(name, lambda: None)
    assert _messages(caplog) == [OPENING.format(name)]
