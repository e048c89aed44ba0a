"""``python -m fasthystrix demo``: a circuit breaker protecting an API from its downstream, live.

Everything runs in this process, on loopback: a downstream HTTP service whose behaviour is
switched phase by phase, an API HTTP service whose handler calls it through the fasthystrix
command ``"downstream"`` (200 with the answer, 503 with the fallback's reason), open-loop load
on the API, and the metrics stream with its dashboard (``fasthystrix.serve_stream``).

The phases, in order (:data:`PHASES`):

1. ``healthy``: every call succeeds.
2. ``failing``: the downstream answers 500; failures open the circuit, calls are short-circuited.
3. ``overloaded``: the downstream is slow; a trial closes the circuit, calls pile up to the
   10 tickets and the extra ones are rejected (which opens the circuit again).
4. ``down``: the downstream hangs; the open circuit fails calls fast; trials time out.
5. ``recovering``: the downstream is back; after the 2 s sleep window a trial closes the circuit.
6. ``recovered``: the circuit is closed; every call succeeds.

Every command's outcome is counted exactly by a metric collector, and each phase is judged by
what happened in it. A phase whose effect has not shown by its planned end (on a busy machine a
trial call can come late) runs on, a second at a time, for a bounded time (:func:`extension_limit`);
the summary says which phases ran on, and why any effect did not show. :func:`run_demo` is the
programmatic entry (tests, screenshots); it returns a :class:`DemoSummary`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import fasthystrix

from ._core._config import CommandConfig
from ._core._events import EVENT_NAMES
from ._demo.display import EVENT_COLUMNS, Display, supports_unicode
from ._demo.services import (
    HANG_SECONDS,
    SLOW_SECONDS,
    Api,
    Downstream,
    EventCounter,
    IgnoreEvents,
    LoadGenerator,
)
from .metric_collector import MetricCollector, registry
from .stream import StreamServer, serve_stream

__all__ = [
    "DEFAULT_COMMAND",
    "DEFAULT_DURATION",
    "DEFAULT_PORT",
    "DEFAULT_RATE",
    "DEMO_CONFIG",
    "DESCRIPTION",
    "MAX_RATE",
    "MIN_DURATION",
    "MIN_RATE",
    "PHASES",
    "DemoRun",
    "DemoSummary",
    "Phase",
    "PhaseSummary",
    "add_arguments",
    "extension_limit",
    "main",
    "plan_phases",
    "run_demo",
]

DEFAULT_COMMAND = "downstream"
DEFAULT_DURATION = 60
DEFAULT_RATE = 50.0
#: The dashboard/stream port of ``python -m fasthystrix demo`` (``run_demo`` defaults to any free port).
DEFAULT_PORT = 8181
#: Below this rate the slow downstream cannot keep 10 calls in flight, nor a failing one
#: reach the 20 calls a window needs before the circuit may open, within one second.
MIN_RATE = 30.0
MAX_RATE = 1000.0

#: ``python -m fasthystrix demo --help``'s description.
DESCRIPTION = """\
Watch a circuit breaker protect an API from its downstream, live. Everything runs in this
process, on loopback: a downstream HTTP service, an API whose handler calls it through the
fasthystrix command "downstream" (200 with the answer, 503 with the fallback's reason),
steady load on the API, and the metrics stream with its dashboard.

Phases (each a share of --duration):
  healthy     every call succeeds
  failing     the downstream answers 500: failures, then the circuit opens (short-circuits)
  overloaded  the downstream is slow: calls pile up to 10 in flight, the extra ones are rejected
  down        the downstream hangs: the open circuit fails calls fast (short-circuits)
  recovering  the downstream is back: after the 2 s sleep window a trial closes the circuit
  recovered   the circuit is closed: every call succeeds

Every second a row shows that second's events; at the end, a table of events per phase. A phase
whose effect has not shown by its planned end (a busy machine) runs on for a few seconds more;
the summary says so, and why any effect did not show."""

_TIMEOUT_MS = 1000
_SLEEP_WINDOW_MS = 2000
_TICKETS = 10
#: The command the API uses (hystrix-go's defaults, except a 20 % trip point and a 2 s sleep window).
DEMO_CONFIG = CommandConfig(
    timeout=_TIMEOUT_MS,
    max_concurrent_requests=_TICKETS,
    request_volume_threshold=20,
    error_percent_threshold=20,
    sleep_window=_SLEEP_WINDOW_MS,
    isolation="thread",
)

_ERRORS = ("failure", "timeout", "rejected", "short-circuit")


@dataclass(frozen=True)
class Phase:
    """One step of the scenario: what the downstream does, and what the circuit should show.

    ``expect``: events that must occur; ``forbid``: events that must not; ``end_state``: the
    circuit's state when the phase ends (``None``: either); ``closes``: a trial call must close
    the circuit during the phase. ``minimum`` (whole seconds) is what the effect needs on an
    idle machine; ``weight`` is its share of any longer ``--duration``.
    """

    name: str
    downstream: str
    title: str
    expect: tuple[str, ...]
    forbid: tuple[str, ...] = ()
    end_state: str | None = None
    closes: bool = False
    minimum: int = 1
    weight: float = 0.0


PHASES: tuple[Phase, ...] = (
    Phase(
        "healthy",
        "healthy",
        "The downstream answers at once: every call succeeds.",
        expect=("success",),
        forbid=_ERRORS,
        end_state="closed",
        weight=0.15,
    ),
    Phase(
        "failing",
        "failing",
        "The downstream answers 500: calls fail until 20 % of the window's calls are errors, then the "
        "circuit opens and calls are short-circuited (the fallback answers at once).",
        expect=("failure", "short-circuit"),
        end_state="open",
        weight=0.20,
    ),
    Phase(
        "overloaded",
        "slow",
        f"The downstream is back but slow ({SLOW_SECONDS[0]:g}-{SLOW_SECONDS[1]:g} s): after the 2 s sleep "
        "window a trial call succeeds and closes the circuit, calls pile up to the 10 tickets and the extra ones "
        "are rejected; rejections are errors, so the circuit opens again.",
        expect=("rejected",),
        # Only a closed circuit lets calls pile up to the ticket limit.
        closes=True,
        # Worst case: the sleep window (2 s) plus a slow trial (0.6 s) before tickets run out.
        minimum=3,
        weight=0.30,
    ),
    Phase(
        "down",
        "down",
        f"The downstream hangs (up to {HANG_SECONDS:g} s): the open circuit fails calls fast (short-circuited) "
        "instead of letting each wait for the 1 s timeout; trial calls time out.",
        expect=("short-circuit",),
        end_state="open",
        weight=0.15,
    ),
    Phase(
        "recovering",
        "healthy",
        "The downstream recovers: calls are still short-circuited until the 2 s sleep window lets a trial "
        "through; its success closes the circuit.",
        expect=("success",),
        end_state="closed",
        closes=True,
        # The last trial may have started just before this phase: 2 s until the next one, and margin.
        minimum=3,
        weight=0.05,
    ),
    Phase(
        "recovered",
        "healthy",
        "The circuit is closed again: every call succeeds.",
        expect=("success",),
        forbid=_ERRORS,
        end_state="closed",
        weight=0.15,
    ),
)

#: The shortest run that shows every phase's effect (the phases' minimums).
MIN_DURATION = sum(phase.minimum for phase in PHASES)

#: Whole seconds one more trial needs to decide: the sleep window, then the trial up to its timeout.
_RETRY_SECONDS = math.ceil((_SLEEP_WINDOW_MS + _TIMEOUT_MS) / 1000)


def extension_limit(planned_seconds: int) -> int:
    """The most whole seconds a phase planned for ``planned_seconds`` may run past its plan.

    As long again as planned, and never less than one more sleep window and trial: a phase
    still waiting for its effect then (say, the circuit to close) will not show it by waiting.
    """
    return max(planned_seconds, _RETRY_SECONDS)


def _judge(phase: Phase, events: Mapping[str, int], closings: int, state: str) -> tuple[list[str], list[str]]:
    """What ``phase`` has not shown, given what happened in it: ``(missing, spoiled)``.

    ``missing`` may still show if the phase runs on (an expected event, a closing, the end
    state); ``spoiled`` cannot be undone (events that do not belong in the phase).
    """
    missing = [f"no {name} event" for name in phase.expect if events[name] == 0]
    if phase.closes and closings == 0:
        missing.append("no trial call closed the circuit")
    if phase.end_state is not None and state != phase.end_state:
        missing.append(f"the circuit was {state}, not {phase.end_state}")
    spoiled = [f"{events[name]} {name} event{'s' if events[name] > 1 else ''}" for name in phase.forbid if events[name]]
    if spoiled:
        spoiled[-1] += ", where none belong"
    return missing, spoiled


def plan_phases(duration: int) -> list[int]:
    """Whole seconds per phase of :data:`PHASES`, adding up to ``duration``.

    Each phase gets its minimum plus its weight's share of the rest (largest remainder first),
    so phase boundaries fall on the live table's one-second rows.
    """
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise TypeError(f"duration must be an int (seconds), not {duration!r}")
    if duration < MIN_DURATION:
        raise ValueError(f"duration must be at least {MIN_DURATION} seconds, got {duration}")
    extra = duration - MIN_DURATION
    total_weight = sum(phase.weight for phase in PHASES)
    shares = [phase.weight * extra / total_weight for phase in PHASES]
    seconds = [phase.minimum + int(share) for phase, share in zip(PHASES, shares, strict=True)]
    by_remainder = sorted(range(len(PHASES)), key=lambda i: int(shares[i]) - shares[i])
    for index in by_remainder[: duration - sum(seconds)]:
        seconds[index] += 1
    return seconds


@dataclass(frozen=True)
class PhaseSummary:
    """What one phase did: exact event counts, HTTP answers, the circuit's state at its end."""

    name: str
    downstream: str
    title: str
    planned_seconds: int
    seconds: float
    #: Every hystrix-go event name (zeros included) to its count during the phase.
    events: Mapping[str, int]
    #: The load generator's view: ``sent``, ``200``, ``503``, ``error``, ``skipped``.
    responses: Mapping[str, int]
    circuit: str
    #: How many times the circuit closed during the phase (a trial call succeeded).
    closings: int
    #: Whether the phase ran to its planned end.
    complete: bool
    #: Whether it showed what it is there to show (``None`` if it was cut short).
    as_expected: bool | None
    #: Why it did not (empty when it did, or was cut short).
    missed: tuple[str, ...] = ()
    #: Whole seconds it ran past its plan because its effect had not shown yet (at most
    #: :func:`extension_limit`), and what was missing when it began to run on.
    extended_seconds: int = 0
    extended_for: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "downstream": self.downstream,
            "title": self.title,
            "planned_seconds": self.planned_seconds,
            "seconds": round(self.seconds, 3),
            "events": dict(self.events),
            "responses": dict(self.responses),
            "circuit": self.circuit,
            "closings": self.closings,
            "complete": self.complete,
            "as_expected": self.as_expected,
            "missed": list(self.missed),
            "extended_seconds": self.extended_seconds,
            "extended_for": list(self.extended_for),
        }


@dataclass(frozen=True)
class DemoSummary:
    """The whole run: one :class:`PhaseSummary` per phase that started, in order."""

    command: str
    implementation: str
    rate: float
    duration: int
    phases: tuple[PhaseSummary, ...]
    #: Ended by Ctrl-C (``KeyboardInterrupt``).
    interrupted: bool
    #: Every phase ran to its end.
    completed: bool
    #: The circuit's state when the load stopped.
    circuit: str

    def phase(self, name: str) -> PhaseSummary:
        """The summary of the phase called ``name``."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(f"no phase {name!r} ran (phases that ran: {[p.name for p in self.phases]})")

    def totals(self) -> dict[str, int]:
        """Event counts over the whole run."""
        return {name: sum(phase.events[name] for phase in self.phases) for name in EVENT_NAMES}

    def response_totals(self) -> dict[str, int]:
        """HTTP answers over the whole run (``sent``, ``200``, ``503``, ``error``, ``skipped``)."""
        keys = ("sent", "200", "503", "error", "skipped")
        return {key: sum(phase.responses[key] for phase in self.phases) for key in keys}

    @property
    def closed_again(self) -> bool:
        """The run ended with the circuit closed and successes in its last phase."""
        return bool(self.phases) and self.circuit == "closed" and self.phases[-1].events["success"] > 0

    @property
    def as_expected(self) -> bool:
        """Every phase ran and showed its effect."""
        return self.completed and all(phase.as_expected for phase in self.phases)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` writes)."""
        return {
            "command": self.command,
            "implementation": self.implementation,
            "rate": self.rate,
            "duration": self.duration,
            "interrupted": self.interrupted,
            "completed": self.completed,
            "circuit": self.circuit,
            "closed_again": self.closed_again,
            "as_expected": self.as_expected,
            "totals": self.totals(),
            "responses": self.response_totals(),
            "phases": [phase.to_dict() for phase in self.phases],
        }

    def format(self) -> str:
        """The summary table and its verdict, as printed at the end of the demo."""
        names = [name for name, _, _ in EVENT_COLUMNS]
        head = ["phase", "time", *names, "fallback", "circuit", "as expected"]
        rows: list[list[str]] = []

        def cells(label: str, seconds: float, events: Mapping[str, int], circuit: str, verdict: str) -> list[str]:
            fallback = f"{events['fallback-success']}/{events['fallback-failure']}"
            return [label, f"{seconds:.0f} s", *(str(events[n]) for n in names), fallback, circuit, verdict]

        for phase in self.phases:
            verdict = "cut short" if phase.as_expected is None else "yes" if phase.as_expected else "NO"
            rows.append(cells(phase.name, phase.seconds, phase.events, phase.circuit, verdict))
        total_seconds = sum(phase.seconds for phase in self.phases)
        rows.append(cells("total", total_seconds, self.totals(), self.circuit, ""))
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

        def line(row: list[str]) -> str:
            first = f"{row[0]:<{widths[0]}}"
            middle = [f"{cell:>{width}}" for cell, width in zip(row[1:-2], widths[1:-2], strict=True)]
            last = [f"{row[-2]:<{widths[-2]}}", row[-1]]
            return "  ".join([first, *middle, *last]).rstrip()

        rule = "-" * len(line(head))
        out = [
            f"Summary: events per phase of command {self.command!r}, exact counts from a metric collector",
            "",
            line(head),
            rule,
            *(line(row) for row in rows[:-1]),
            rule,
            line(rows[-1]),
            "",
        ]
        answers = self.response_totals()
        notes = [
            "(fallback: the fallback's successes/failures)",
            f"HTTP: {answers['sent']} requests sent to the API at {self.rate:g}/s: {answers['200']} answered 200, "
            f"{answers['503']} answered 503 with the fallback's reason, {answers['error']} failed"
            + (f", {answers['skipped']} not sent (too many in flight)" if answers["skipped"] else "")
            + ".",
        ]
        extended = [phase for phase in self.phases if phase.extended_seconds]
        if extended:
            notes.append(
                "Phases that ran on past their plan, waiting for their effect (a busy machine slows the load "
                "and the trial calls): "
                + "; ".join(
                    f"{phase.name} {phase.extended_seconds} s (at its planned end: {', '.join(phase.extended_for)})"
                    for phase in extended
                )
                + "."
            )
        if self.interrupted or not self.completed:
            ran = self.phases[-1].name if self.phases else "none"
            how = "Interrupted" if self.interrupted else "Stopped"
            notes.append(f"{how} after {total_seconds:.1f} s, in phase {ran!r}: the table covers what ran.")
        elif self.as_expected:
            notes.append(
                f"Every phase showed its effect, and the circuit closed again: "
                f"{self.phases[-1].events['success']} successes in the last phase, circuit {self.circuit}."
            )
        else:
            notes.append(
                "Not every phase showed its effect: "
                + "; ".join(f"{phase.name}: {', '.join(phase.missed)}" for phase in self.phases if phase.missed)
                + "."
            )
            last = self.phases[-1]
            if self.closed_again:
                notes.append(f"The circuit closed again: {last.events['success']} successes in the last phase.")
            else:
                ran_on = f", {last.extended_seconds} s of them past its plan" if last.extended_seconds else ""
                events = last.events
                notes.append(
                    f"The circuit did not close again: it was {self.circuit} when the load stopped. In the last "
                    f"phase ({last.seconds:.0f} s{ran_on}) {events['success']} calls succeeded, {events['timeout']} "
                    f"timed out, {events['failure']} failed, {events['rejected']} were rejected and "
                    f"{events['short-circuit']} short-circuited. A very busy machine slows the trial calls that "
                    "close it; a longer --duration gives them more room."
                )
        out.extend(textwrap.fill(note, width=100, subsequent_indent="  ") for note in notes)
        return "\n".join(out)


class DemoRun:
    """The running demo as an ``on_phase`` callback sees it: where things are, and what happened so far."""

    def __init__(
        self,
        command: str,
        circuit: Any,
        api: Api,
        downstream: Downstream,
        stream: StreamServer | None,
        counter: EventCounter,
        stop_event: threading.Event,
    ) -> None:
        self.command = command
        #: The command's ``CircuitBreaker``.
        self.circuit = circuit
        #: The API under load (``GET`` it: 200 with the downstream's answer or 503 with the fallback's reason).
        self.api_url = api.url
        #: The switchable downstream.
        self.downstream_url = downstream.url
        #: The metrics stream server (``fasthystrix.serve_stream``), or ``None`` when not served.
        self.stream = stream
        self.phase: Phase = PHASES[0]
        #: 0-based index of :attr:`phase` in :data:`PHASES`.
        self.phase_index = 0
        self._counter = counter
        self._stop_event = stop_event

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard page, or ``None`` without a stream server."""
        return None if self.stream is None else self.stream.dashboard_url

    @property
    def stream_url(self) -> str | None:
        """The ``text/event-stream`` of metrics, or ``None`` without a stream server."""
        return None if self.stream is None else self.stream.stream_url

    def counts(self) -> dict[str, int]:
        """Every event of the command since the demo started, and ``closings`` (times its circuit closed)."""
        return self._counter.counts()

    def stop(self) -> None:
        """End the demo early (from any thread): ``run_demo`` then returns a summary of what ran."""
        self._stop_event.set()


def _new_circuit(command: str, counter: EventCounter) -> Any:
    """Create ``command``'s circuit with ``counter`` among its collectors, and configure it."""

    def factory(name: str) -> MetricCollector:
        return counter if name == command else IgnoreEvents()

    # Registered only while the circuit is created: collectors are attached at creation.
    registry.register(factory)
    try:
        circuit, created = fasthystrix.get_circuit(command)
    finally:
        registry.unregister(factory)
    if not created:
        raise RuntimeError(
            f"circuit {command!r} already exists, so the demo cannot count its events: "
            "run the demo in a fresh process, call fasthystrix.flush() first, or pass another command name"
        )
    fasthystrix.configure_command(command, DEMO_CONFIG)
    return circuit


def _start_stream(port: int, host: str) -> StreamServer:
    try:
        return serve_stream(port, host)
    except OSError as exc:
        hint = "; pass port 0 (--port 0) for any free port" if port else ""
        raise OSError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}{hint}") from exc


def _subtract(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


class _Demo:
    """One run: starts the services, drives the phases, shuts everything down, sums up."""

    def __init__(
        self,
        seconds: list[int],
        rate: float,
        port: int | None,
        host: str,
        display: Display,
        on_phase: Callable[[str, DemoRun], object] | None,
        stop_event: threading.Event,
        command: str,
    ) -> None:
        self.seconds = seconds
        self.rate = rate
        self.port = port
        self.host = host
        self.display = display
        self.on_phase = on_phase
        self.stop_event = stop_event
        self.command = command
        self.counter = EventCounter()
        self.max_tickets = _TICKETS
        self.downstream: Downstream | None = None
        self.api: Api | None = None
        self.stream: StreamServer | None = None
        self.load: LoadGenerator | None = None
        self.circuit: Any = None
        self.run: DemoRun | None = None
        self.done: list[PhaseSummary] = []
        self.extended = [0] * len(PHASES)
        self.extended_for: list[tuple[str, ...]] = [()] * len(PHASES)
        self.phase_index = -1
        self.phase_started = 0.0
        self.phase_counts: dict[str, int] = {}
        self.phase_responses: dict[str, int] = {}
        self.started = 0.0

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        # The stream first: a port in use fails the run before anything else has changed.
        if self.port is not None:
            self.stream = _start_stream(self.port, self.host)
        self.circuit = _new_circuit(self.command, self.counter)
        self.downstream = Downstream()
        self.api = Api(self.command, self.downstream.port)
        self.load = LoadGenerator(self.api.port, self.rate)
        self.run = DemoRun(
            self.command, self.circuit, self.api, self.downstream, self.stream, self.counter, self.stop_event
        )
        self._introduce()

    def _introduce(self) -> None:
        assert self.downstream is not None and self.api is not None
        arrow = " \u2192 " if self.display.unicode else " -> "
        plan = arrow.join(f"{phase.name} {seconds} s" for phase, seconds in zip(PHASES, self.seconds, strict=True))
        if self.stream is not None:
            served = [f"  dashboard   {self.stream.dashboard_url}", f"  stream      {self.stream.stream_url}"]
        else:
            served = ["  dashboard   not served (port=None)"]
        config = DEMO_CONFIG
        self.display.lines(
            f"fasthystrix {fasthystrix.__version__} demo ({fasthystrix.implementation} implementation): "
            f"{sum(self.seconds)} s at {self.rate:g} requests/s",
            f"  downstream  {self.downstream.url}  healthy, failing (500), slow or hanging, phase by phase",
            f"  API         {self.api.url}  calls it as command {self.command!r}: "
            "200, or 503 and the fallback's reason",
            *served,
            f"  command     timeout {config.timeout} ms, {config.max_concurrent_requests} tickets, opens at "
            f">= {config.error_percent_threshold} % errors over >= {config.request_volume_threshold} calls, "
            f"sleep window {config.sleep_window} ms",
            f"  phases      {plan}",
            "Ctrl-C stops early, with a summary of what ran (exit code 130).",
        )
        self.display.table_header()

    # -- phases ------------------------------------------------------------------------

    def _enter_phase(self, index: int, now: float) -> None:
        assert self.downstream is not None and self.load is not None and self.run is not None
        phase = PHASES[index]
        self.phase_index = index
        self.phase_started = now
        self.downstream.set_mode(phase.downstream)
        self.display.phase(index + 1, len(PHASES), phase.name, self.seconds[index], phase.title)
        self.run.phase = phase
        self.run.phase_index = index
        if self.on_phase is not None:
            self.on_phase(phase.name, self.run)

    def _close_phase(self, now: float, complete: bool) -> None:
        assert self.load is not None
        phase = PHASES[self.phase_index]
        counts = self.counter.counts()
        responses = self.load.counts()
        events = _subtract(counts, self.phase_counts)
        closings = events.pop("closings")
        state = str(self.circuit.state())
        self.phase_counts, self.phase_responses, responses = (
            counts,
            responses,
            _subtract(responses, self.phase_responses),
        )
        as_expected = None
        missed: tuple[str, ...] = ()
        if complete:
            missing, spoiled = _judge(phase, events, closings, state)
            missed = (*missing, *spoiled)
            as_expected = not missed
        self.done.append(
            PhaseSummary(
                name=phase.name,
                downstream=phase.downstream,
                title=phase.title,
                planned_seconds=self.seconds[self.phase_index],
                seconds=now - self.phase_started,
                events=events,
                responses=responses,
                circuit=state,
                closings=closings,
                complete=complete,
                as_expected=as_expected,
                missed=missed,
                extended_seconds=self.extended[self.phase_index],
                extended_for=self.extended_for[self.phase_index],
            )
        )

    def _run_on(self, counts: Mapping[str, int], state: str) -> bool:
        """At a planned phase end: whether the phase should run one more second to show its effect."""
        index = self.phase_index
        phase = PHASES[index]
        events = _subtract(counts, self.phase_counts)
        missing, _ = _judge(phase, events, events["closings"], state)
        limit = extension_limit(self.seconds[index])
        if not missing or self.extended[index] >= limit:
            return False
        if not self.extended[index]:
            self.extended_for[index] = tuple(missing)
            self.display.note(
                f"At its planned end the phase has not shown its effect yet ({', '.join(missing)}): "
                f"it runs on, for {limit} s at most."
            )
        self.extended[index] += 1
        return True

    def drive(self) -> bool:
        """Run the phases; ``True`` if all ran to their end (``False``: stopped early)."""
        assert self.load is not None
        ends = [sum(self.seconds[: i + 1]) for i in range(len(self.seconds))]
        total = ends[-1]
        self.phase_counts = self.counter.counts()
        self.phase_responses = self.load.counts()
        self.started = time.monotonic()
        self.load.start()
        self._enter_phase(0, 0.0)
        last = dict(self.phase_counts)
        second = 0
        peak = 0
        state = str(self.circuit.state())
        states = {state}  # seen during the current second (sampled about every 0.1 s)
        while not self.stop_event.is_set():
            elapsed = time.monotonic() - self.started
            tickets = int(self.circuit.tickets_in_use)
            peak = max(peak, tickets)
            state = str(self.circuit.state())
            states.add(state)
            if elapsed >= second + 1:
                second += 1
                counts = self.counter.counts()
                during = _subtract(counts, last)
                # Closings are exact (the collector is reset on each); openings show in the samples.
                changed = len(states) > 1 or during["closings"] > 0
                self.display.row(second, state, changed, during, peak)
                last, peak, states = counts, tickets, {state}
                if second == ends[self.phase_index]:
                    if self._run_on(counts, state):
                        ends[self.phase_index :] = [end + 1 for end in ends[self.phase_index :]]
                        total = ends[-1]
                    elif self.phase_index + 1 == len(PHASES):
                        return True  # the last phase is closed once the load has stopped
                    else:
                        self._close_phase(elapsed, complete=True)
                        self._enter_phase(self.phase_index + 1, elapsed)
                continue
            phase = PHASES[self.phase_index]
            self.display.status(elapsed, total, self.phase_index + 1, len(PHASES), phase.name, state, tickets)
            self.stop_event.wait(min(0.1, second + 1 - elapsed))
        return False

    # -- stop ----------------------------------------------------------------------------

    def shutdown(self, complete: bool) -> None:
        """Stop the load, close the phase in progress, then every server; waits for each thread."""
        try:
            if self.load is not None:
                self.load.close()
                if self.phase_index >= 0:
                    # Every request has been answered, so every event of the run is counted by now.
                    self._close_phase(time.monotonic() - self.started, complete)
        finally:
            try:
                if self.downstream is not None:
                    self.downstream.release_all()
                if self.api is not None:
                    self.api.close()
                self._wait_for_tickets()
            finally:
                if self.downstream is not None:
                    self.downstream.close()
                if self.stream is not None:
                    self.stream.close()
                self.counter.close()
                self.display.close()

    def _wait_for_tickets(self, timeout: float = 5.0) -> None:
        # Runs abandoned at their timeout still hold a ticket until the downstream answers
        # (at once, now that it is released); give them that moment.
        if self.circuit is None:
            return
        deadline = time.monotonic() + timeout
        while self.circuit.tickets_in_use and time.monotonic() < deadline:
            time.sleep(0.01)

    def summary(self, interrupted: bool, completed: bool) -> DemoSummary:
        state = str(self.circuit.state()) if self.circuit is not None else "closed"
        if self.done:
            state = self.done[-1].circuit
        return DemoSummary(
            command=self.command,
            implementation=str(fasthystrix.implementation),
            rate=self.rate,
            duration=sum(self.seconds),
            phases=tuple(self.done),
            interrupted=interrupted,
            completed=completed,
            circuit=state,
        )


def _isatty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def run_demo(
    duration: int = DEFAULT_DURATION,
    rate: float = DEFAULT_RATE,
    *,
    port: int | None = 0,
    host: str = "127.0.0.1",
    out: TextIO | None = None,
    live: bool | None = None,
    color: bool | None = None,
    on_phase: Callable[[str, DemoRun], object] | None = None,
    stop: threading.Event | None = None,
    command: str = DEFAULT_COMMAND,
) -> DemoSummary:
    """Run the scenario for ``duration`` seconds (at least :data:`MIN_DURATION`) at ``rate`` requests/s.

    ``port``/``host``: where the metrics stream and dashboard listen (``0``: any free port,
    ``None``: not served). ``out``: where the live table and the summary go (default stdout);
    ``live``: ANSI live display with a progress bar (default: when ``out`` is a terminal);
    ``color``: ANSI colours (default: when live and ``NO_COLOR`` is unset). A phase whose effect
    has not shown by its planned end runs on for up to :func:`extension_limit` seconds more, so
    the run may take longer than ``duration``; the summary says which phases did, and why.

    ``on_phase(name, run)`` is called as each phase starts, on the thread running the demo, with
    a :class:`DemoRun` (URLs of the API, downstream, dashboard and stream; event counts so far;
    ``stop()``). The load keeps running while it runs, but the table and the next phase wait for
    it, so do slow work (a screenshot) on another thread. An exception from it ends the demo
    (everything is shut down) and propagates.

    Setting ``stop`` (or calling ``run.stop()``) ends the demo early; so does Ctrl-C
    (``KeyboardInterrupt`` in the thread running it), which is not re-raised: the returned
    summary says ``interrupted``. In every case the servers are closed, the threads joined and
    the summary printed before this returns. The command ``command`` must not have a circuit
    yet (the demo counts its events with a metric collector attached at creation); it is
    configured with :data:`DEMO_CONFIG`.
    """
    seconds = plan_phases(duration)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a number (requests per second), not {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"rate must be between {MIN_RATE:g} and {MAX_RATE:g} requests per second, got {rate!r}")
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port!r}")
    stream_out = sys.stdout if out is None else out
    is_live = _isatty(stream_out) if live is None else live
    if color is None:
        color = is_live and not os.environ.get("NO_COLOR")
    display = Display(
        stream_out,
        live=is_live,
        color=color,
        unicode=supports_unicode(stream_out),
        max_tickets=_TICKETS,
    )
    demo = _Demo(seconds, float(rate), port, host, display, on_phase, stop or threading.Event(), command)
    interrupted = completed = False
    try:
        try:
            demo.start()
            completed = demo.drive()
        except KeyboardInterrupt:
            interrupted = True
    finally:
        demo.shutdown(completed)
    summary = demo.summary(interrupted, completed)
    stream_out.write("\n" + summary.format() + "\n")
    stream_out.flush()
    return summary


# -- command line ----------------------------------------------------------------------------


def _bounded(kind: Callable[[str], Any], low: float, high: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def _duration(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, got {text!r}") from None
    if value < MIN_DURATION:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_DURATION} seconds (the 2 s sleep window needs room to show), got {value}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    parser.add_argument(
        "--duration",
        type=_duration,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help=f"how long the whole scenario runs, in whole seconds, at least {MIN_DURATION} (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_bounded(float, MIN_RATE, MAX_RATE, "requests per second"),
        default=DEFAULT_RATE,
        metavar="PER_SECOND",
        help=f"requests per second sent to the API, {MIN_RATE:g} to {MAX_RATE:g} (default %(default)g)",
    )
    parser.add_argument(
        "--port",
        type=_bounded(int, 0, 65535, "a port number"),
        default=DEFAULT_PORT,
        help="port of the metrics stream and dashboard; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the stream and dashboard listen on (default %(default)s)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    parser.add_argument(
        "--plain", action="store_true", help="plain lines, no colours or progress bar, even on a terminal"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``demo`` with parsed options: 0 when it ran to its end, 130 after Ctrl-C, 1 on an error."""
    try:
        summary = run_demo(
            args.duration,
            args.rate,
            port=args.port,
            host=args.host,
            live=False if args.plain else None,
        )
        if args.json:
            with open(args.json, "w", encoding="utf-8") as file:
                json.dump(summary.to_dict(), file, indent=2)
                file.write("\n")
    except BrokenPipeError:
        # Output piped into something that stopped reading (``| head``): end quietly, as a shell tool
        # does; what is left to flush goes nowhere instead of raising again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"fasthystrix demo: error: {exc}", file=sys.stderr)
        return 1
    return 130 if summary.interrupted else 0
