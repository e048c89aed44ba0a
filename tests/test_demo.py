"""``python -m fasthystrix demo``: the scenario end to end, Ctrl-C, the programmatic entry, the options.

The end-to-end run is a subprocess per implementation (``-W error -X dev``: a leaked socket or
thread warning shows on its stderr); the in-process runs stop early, so the whole file stays
affordable on a shared two-core machine. The demo's phases take as long as they take on a busy
machine (a phase runs on until its effect shows): the tests check what happened and what the
summary says about it, never how long it took, and wait for the demo with generous deadlines.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fasthystrix
from fasthystrix import demo
from fasthystrix.__main__ import main
from fasthystrix.metric_collector import registry as collector_registry


def _demo_command(*options: str) -> list[str]:
    return [sys.executable, "-X", "dev", "-W", "error", "-m", "fasthystrix", "demo", "--port", "0", *options]


#: Seconds a demo subprocess may take at most: the longest plan with every phase running on to its
#: limit, on a very busy machine. Only a hung demo gets near it.
DEMO_DEADLINE = 300


def _env(impl: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FASTHYSTRIX_NO_EXTENSIONS", None)
    if impl == "pure":
        env["FASTHYSTRIX_NO_EXTENSIONS"] = "1"
    env.pop("NO_COLOR", None)
    return env


@contextlib.contextmanager
def _sigint_reaches_children() -> Iterator[None]:
    """Let a child started now receive SIGINT as Ctrl-C, even if this process ignores it.

    A shell starts background jobs (``nox &``, a CI step's ``cmd &``) with SIGINT ignored, and an
    ignored signal stays ignored across exec: Python would then never raise KeyboardInterrupt
    in the demo. A handled signal is reset to its default in the child, so handle it meanwhile.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _shown(phase: demo.Phase, got: dict[str, Any]) -> tuple[bool, bool]:
    """From a phase's events, closings and end state: (its effect showed, no event that does not belong)."""
    events = got["events"]
    shown = (
        all(events[name] > 0 for name in phase.expect)
        and (got["closings"] > 0 or not phase.closes)
        and phase.end_state in (None, got["circuit"])
    )
    return shown, all(events[name] == 0 for name in phase.forbid)


@pytest.mark.slow
def test_demo_end_to_end(impl: str, tmp_path: Path) -> None:
    """The shortest run shows every effect, says so truthfully, counts exactly, and exits 0."""
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        _demo_command("--duration", str(demo.MIN_DURATION), "--json", str(summary_file)),
        env=_env(impl),
        capture_output=True,
        text=True,
        timeout=DEMO_DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert f"({impl} implementation)" in out
    assert "\x1b[" not in out  # not a terminal: plain lines
    assert "Summary: events per phase" in out
    for phase in demo.PHASES:
        assert f"phase {demo.PHASES.index(phase) + 1}/{len(demo.PHASES)}: {phase.name}" in out

    summary = json.loads(summary_file.read_text())
    assert summary["implementation"] == impl
    assert summary["completed"] and not summary["interrupted"]
    phases = {phase["name"]: phase for phase in summary["phases"]}
    assert list(phases) == [phase.name for phase in demo.PHASES]
    assert [phase["planned_seconds"] for phase in summary["phases"]] == demo.plan_phases(demo.MIN_DURATION)

    # Each phase's verdict is what its events, closings and end state say; each phase showed the
    # effect it is there for (running on past its plan if it needed to), and what spoilt one is named.
    verdicts = []
    for spec, got in zip(demo.PHASES, summary["phases"], strict=True):
        shown, clean = _shown(spec, got)
        assert shown, f"{spec.name} did not show its effect: {got['missed']}"
        assert got["as_expected"] is clean and (got["missed"] == []) is clean, got
        for name in spec.forbid:
            assert (got["events"][name] > 0) == any(name in reason for reason in got["missed"]), got
        assert 0 <= got["extended_seconds"] <= demo.extension_limit(got["planned_seconds"])
        assert bool(got["extended_for"]) == (got["extended_seconds"] > 0)
        verdicts.append(clean)
    assert summary["as_expected"] is all(verdicts)
    # Running on is the only way a phase outlasts its plan; a phase never ends before its plan.
    total = sum(phase["seconds"] for phase in summary["phases"])
    assert total >= demo.MIN_DURATION + sum(phase["extended_seconds"] for phase in summary["phases"]) - 0.01

    assert phases["failing"]["events"]["failure"] > 0 and phases["failing"]["circuit"] == "open"
    assert phases["overloaded"]["closings"] > 0 and phases["overloaded"]["events"]["rejected"] > 0
    assert phases["recovering"]["closings"] > 0  # a trial closed it
    last = summary["phases"][-1]
    assert last["events"]["success"] > 0
    assert last["circuit"] == summary["circuit"] == "closed" and summary["closed_again"]

    # The printed verdict says the same as the numbers.
    text = " ".join(out.split("Summary:")[1].split())
    if summary["as_expected"]:
        assert "Every phase showed its effect, and the circuit closed again" in text
    else:
        assert "Not every phase showed its effect" in text
        for phase in summary["phases"]:
            if phase["missed"]:
                assert f"{phase['name']}: {', '.join(phase['missed'])}" in text
        assert "The circuit closed again" in text
    for phase in summary["phases"]:
        if phase["extended_seconds"]:
            assert f"{phase['name']} {phase['extended_seconds']} s (at its planned end:" in text

    # Exact: every request the API answered is one command outcome, and its answer matches it.
    totals, answers = summary["totals"], summary["responses"]
    outcomes = sum(totals[name] for name in ("success", "failure", "rejected", "short-circuit", "timeout"))
    assert answers["error"] == 0
    assert outcomes == answers["sent"] == answers["200"] + answers["503"]
    assert totals["success"] == answers["200"]
    assert totals["fallback-success"] == answers["503"] == outcomes - totals["success"]
    assert totals["fallback-failure"] == 0
    # Per phase, a call finishing as the phase changes may have its event in one phase and
    # its HTTP answer in the next: exact in total, off by a few in flight at each boundary.
    for phase in summary["phases"]:
        assert abs(phase["events"]["success"] - phase["responses"]["200"]) <= 32  # the load's max in flight
        assert abs(phase["events"]["fallback-success"] - phase["responses"]["503"]) <= 32


def test_ctrl_c_stops_cleanly(impl: str) -> None:
    """SIGINT: servers shut down, a summary of what ran, exit code 130, no traceback."""
    with _sigint_reaches_children():
        proc = subprocess.Popen(
            _demo_command("--duration", "60"),
            env=_env(impl),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    watchdog = threading.Timer(DEMO_DEADLINE, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the first phase has begun once its heading is printed
            seen.append(line)
            if "phase 1/" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=DEMO_DEADLINE)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(seen) + rest
    assert proc.returncode == 130, f"{out}\n{err}"
    assert "Traceback" not in err and err == ""
    assert "Summary: events per phase" in out
    assert "Interrupted after" in out
    assert "healthy" in out.split("Summary:")[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return int(response.status), response.read().decode()


def test_run_demo_in_process(impl: str) -> None:
    """The programmatic entry: on_phase sees the URLs and can stop the run; the summary is exact."""
    seen: list[str] = []
    checks: dict[str, Any] = {}

    def on_phase(name: str, run: demo.DemoRun) -> None:
        seen.append(name)
        assert run.phase.name == name
        if name == "healthy":
            checks["api"] = _get(run.api_url)
            assert run.dashboard_url is not None and run.stream is not None
            checks["dashboard"] = _get(run.dashboard_url)[0]
            checks["stream_url"] = run.stream_url
        else:
            checks["counts"] = run.counts()
            run.stop()

    out = io.StringIO()
    summary = demo.run_demo(demo.MIN_DURATION, port=0, out=out, live=True, color=True, on_phase=on_phase)

    assert seen == ["healthy", "failing"]
    assert checks["api"] == (200, "price: 42\n")
    assert checks["dashboard"] == 200
    assert checks["stream_url"].endswith("/hystrix.stream")
    assert summary.implementation == impl
    assert not summary.completed and not summary.interrupted
    assert [phase.name for phase in summary.phases] == ["healthy", "failing"]
    healthy, failing = summary.phases
    assert healthy.complete and healthy.circuit == "closed" and healthy.events["success"] > 0
    # A loaded machine may slow calls enough to reject some: the verdict then says so.
    errors = {name: healthy.events[name] for name in ("failure", "timeout", "rejected", "short-circuit")}
    assert healthy.as_expected is (not any(errors.values()))
    assert [reason.split(" ")[:2] for reason in healthy.missed] == [
        [str(count), name] for name, count in errors.items() if count
    ]
    assert failing.as_expected is None and not failing.complete and failing.missed == ()
    # The failing phase's on_phase reads the counts just after the healthy phase was closed: calls
    # in flight then (at most the load's 32) may have succeeded in between.
    assert 0 <= checks["counts"]["success"] - healthy.events["success"] <= 32
    # Exact over the run: every request answered is one command, and the API call made from
    # on_phase is a command too (one more success than HTTP 200s from the load). Per phase, a
    # call in flight at the boundary may have its event in one phase and its answer in the next.
    totals, answers = summary.totals(), summary.response_totals()
    assert totals["success"] == answers["200"] + 1
    assert totals["fallback-success"] == answers["503"]
    assert answers["sent"] == answers["200"] + answers["503"]
    assert abs(healthy.events["success"] - (healthy.responses["200"] + 1)) <= 32  # the load's max in flight
    # The live display: cursor hidden then given back, a status line with a progress bar, coloured rows.
    text = out.getvalue()
    assert text.startswith("\x1b[?25l") and "\x1b[?25h" in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"\[#*\.+\]\s+0/10 s  phase 1/6 healthy  circuit closed", plain)
    assert "   1s closed " in plain and "\x1b[32m     " in text
    assert "Stopped after" in plain
    # The collector factory was only registered while the circuit was created.
    assert collector_registry._factories == ()


@pytest.mark.slow
def test_a_phase_without_its_effect_runs_on_then_says_why(impl: str) -> None:
    """A circuit forced open spoils the healthy phase: it runs on to its limit, and the summary says why."""

    def on_phase(name: str, run: demo.DemoRun) -> None:
        if name == "healthy":
            run.circuit.force_open = True
        else:
            run.stop()

    out = io.StringIO()
    summary = demo.run_demo(demo.MIN_DURATION, port=None, out=out, on_phase=on_phase)

    healthy = summary.phases[0]
    limit = demo.extension_limit(healthy.planned_seconds)
    assert healthy.complete and healthy.extended_seconds == limit
    assert healthy.seconds >= healthy.planned_seconds + limit
    # The load starts just before on_phase: a call or two may have succeeded before it forced the circuit open.
    forced = "the circuit was forced-open, not closed"
    assert healthy.extended_for in ((forced,), ("no success event", forced))
    short = healthy.events["short-circuit"]
    assert short > 0 and healthy.circuit == "forced-open"
    assert healthy.as_expected is False
    no_success = ("no success event",) if healthy.events["success"] == 0 else ()
    assert healthy.missed == (*no_success, forced, f"{short} short-circuit events, where none belong")
    text = " ".join(out.getvalue().split())
    reasons = ", ".join(healthy.extended_for)
    assert f"At its planned end the phase has not shown its effect yet ({reasons}): it runs on, for {limit} s" in text
    assert f"healthy {limit} s (at its planned end: {reasons})" in text
    assert "Stopped after" in text


def test_run_demo_needs_a_new_circuit() -> None:
    fasthystrix.get_circuit(demo.DEFAULT_COMMAND)
    with pytest.raises(RuntimeError, match="already exists"):
        demo.run_demo(demo.MIN_DURATION, port=None, out=io.StringIO())
    assert collector_registry._factories == ()


def test_run_demo_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="at least 10 seconds"):
        demo.run_demo(5, out=io.StringIO())
    with pytest.raises(TypeError, match="duration"):
        demo.run_demo(10.5, out=io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        demo.run_demo(10, rate=5, out=io.StringIO())
    with pytest.raises(ValueError, match="port"):
        demo.run_demo(10, port=70000, out=io.StringIO())


def test_plan_phases() -> None:
    assert demo.MIN_DURATION == 10
    assert demo.plan_phases(10) == [phase.minimum for phase in demo.PHASES]
    for duration in (10, 11, 17, 60, 600):
        plan = demo.plan_phases(duration)
        assert sum(plan) == duration
        assert all(seconds >= phase.minimum for seconds, phase in zip(plan, demo.PHASES, strict=True))
    # The first extra second goes to the overload, the phase that waits out a sleep window and a slow trial.
    assert demo.plan_phases(11)[2] == demo.PHASES[2].minimum + 1
    assert [phase.downstream for phase in demo.PHASES] == ["healthy", "failing", "slow", "down", "healthy", "healthy"]


def test_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in err
    assert "--port 0" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--duration", "5"], "argument --duration: must be at least 10 seconds"),
        (["demo", "--duration", "ten"], "argument --duration: expected whole seconds, got 'ten'"),
        (["demo", "--rate", "0"], "argument --rate: must be between 30 and 1000, got 0"),
        (["demo", "--rate", "fast"], "argument --rate: expected requests per second, got 'fast'"),
        (["demo", "--port", "70000"], "argument --port: must be between 0 and 65535, got 70000"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["nodemo"], "invalid choice: 'nodemo'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: python -m fasthystrix" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--duration", "--rate", "--port", "--host", "--json"):
        assert option in text
    assert "130" in text
