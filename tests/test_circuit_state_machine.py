"""One semaphore-mode circuit driven by random calls, clock jumps, forcing (open and closed), disabling and
reconfiguration (rejections counted as errors or not, the sleep window's backoff, several trials in
half-open and a bound on them; ``ignore`` and ``is_failure`` or not; the rolling window's length and
buckets), checked
after every step against a small reference model of hystrix-go's breaker (with fasthystrix's documented
changes: an exact window (10 s by default), synchronous metrics, only the trial closes a circuit, a forced-open circuit
lets no trial through, and a trial slot is not spent when no ticket is free)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta
from fractions import Fraction
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import fasthystrix
from conftest import SHARED_TESTS
from fasthystrix._core import _clock

NAME = "state-machine"
TIMEOUT_MS = 100
NS_PER_MS = 1_000_000
TIMEOUT_NS = TIMEOUT_MS * NS_PER_MS
NS_PER_S = 1_000_000_000
START_NS = 1_000_000 * NS_PER_S

REQUEST_EVENTS = ("success", "failure", "rejected", "short-circuit", "timeout")
ERROR_EVENTS = ("failure", "rejected", "short-circuit", "timeout")
ERROR_TYPES: dict[str, type[BaseException]] = {
    "short-circuit": fasthystrix.CircuitOpenError,
    "rejected": fasthystrix.MaxConcurrencyError,
    "timeout": fasthystrix.TimeoutError,
}
SNAPSHOT_FIELDS = {
    "successes": "success",
    "failures": "failure",
    "rejects": "rejected",
    "short_circuits": "short-circuit",
    "timeouts": "timeout",
    "fallback_successes": "fallback-success",
    "fallback_failures": "fallback-failure",
    "bad_requests": "bad-request",
    "slow_calls": "slow",
}

RUN_VALUE = "run-value"
FALLBACK_VALUE = "fallback-value"
INNER_VALUE = "inner-value"
FAILED_VALUE = "failed-value"  # what is_failure accepts, when the rules are on


class BadArgument(ValueError):
    """What ignore accepts, when the rules are on."""


# (rolling_window, rolling_buckets): mostly the default; host-wide circuits keep only the default.
WINDOWS = [(10_000, 10)] if SHARED_TESTS else [(10_000, 10), (10_000, 10), (2000, 4), (1000, 1), (2400, 80), (500, 50)]


def _is_failed_value(result: object) -> bool:
    return result == FAILED_VALUE


class Clock(_clock.ManualClock):
    """Monotonic nanoseconds that move only when told to (read by the compiled twin through its C clock)."""

    def advance_ms(self, ms: int) -> None:
        self.advance_ns(ms * NS_PER_MS)


@dataclass
class Config:
    volume: int
    percent: int
    sleep_ms: int
    max_concurrent: int
    enabled: bool = True
    rejections_as_errors: bool = True
    multiplier: float = 1.0
    max_sleep_ms: int | None = None
    half_open_calls: int = 1
    max_wait_ms: int | None = None
    slow_ms: int | None = None  # slow_call_duration
    slow_rate: int = 100  # slow_call_rate_threshold
    window_ms: int = 10_000  # rolling_window
    buckets: int = 10  # rolling_buckets

    @property
    def bucket_ns(self) -> int:
        return self.window_ms // self.buckets * NS_PER_MS

    @property
    def probes(self) -> bool:
        """Several trials, or a bound on them: half-open phases with a verdict of their own."""
        return self.half_open_calls > 1 or self.max_wait_ms is not None

    rules: bool = False  # ignore=BadArgument and is_failure=_is_failed_value


class Model:
    """The breaker as the spec describes it: per-second buckets, an open flag and the last test time."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.events: dict[int, Counter[str]] = {}
        self.peak_active: dict[int, int] = {}
        self.open = False
        self.forced = False
        self.forced_closed = False
        self.opened_or_last_tested = 0
        # The backoff: this episode's wait (0: the sleep window as configured now).
        self.wait_ns = 0
        self.in_use = 0
        # Half-open phases (Config.probes): the open episode, its reopens so far (a phase is the
        # pair), and the current phase's trials: admitted, finished, failed.
        self.episode = 0
        self.reopens = 0
        self.probes = (0, 0, 0)
        self.admitted_phase: tuple[int, int] | None = None  # the phase of the call admit() let in

    def window(self, now: int) -> Counter[str]:
        bucket = now // self.config.bucket_ns
        total: Counter[str] = Counter()
        for s, counts in self.events.items():
            if bucket - self.config.buckets < s <= bucket:
                total.update(counts)
        return total

    def window_peak(self, now: int) -> int:
        bucket = now // self.config.bucket_ns
        n = self.config.buckets
        return max((p for s, p in self.peak_active.items() if bucket - n < s <= bucket), default=0)

    def reconfigured(self, config: Config) -> None:
        """New settings: another window starts empty (events keyed by its buckets)."""
        if (config.window_ms, config.buckets) != (self.config.window_ms, self.config.buckets):
            self.events.clear()
            self.peak_active.clear()
        self.config = config

    def health(self, now: int) -> tuple[int, int]:
        counts = self.window(now)
        return sum(counts[e] for e in REQUEST_EVENTS), sum(counts[e] for e in ERROR_EVENTS)

    def breaker_health(self, now: int) -> tuple[int, int]:
        """What the breaker decides on: without rejections when they do not count as errors."""
        requests, errors = self.health(now)
        if not self.config.rejections_as_errors:
            rejected = self.window(now)["rejected"]
            requests, errors = requests - rejected, errors - rejected
        return requests, errors

    @staticmethod
    def error_percent(requests: int, errors: int) -> int:
        if requests == 0:
            return 0
        return int(Fraction(100 * errors, requests) + Fraction(1, 2))

    def check_open(self, now: int) -> str:
        """``"open"``, ``"closed"``, or ``"tripped"`` when this check opens the circuit."""
        # Hystrix's order: a disabled breaker never opens, forced open beats forced closed,
        # forced closed beats open.
        if not self.config.enabled:
            return "closed"
        if self.forced:
            return "open"
        if self.forced_closed:
            return "closed"
        if self.open:
            return "open"
        requests, errors = self.breaker_health(now)
        if requests == 0 or requests < self.config.volume:
            return "closed"
        if self.error_percent(requests, errors) < self.config.percent and not (
            self.config.slow_ms is not None
            and self.window(now)["slow"] > 0
            and self.error_percent(requests, self.window(now)["slow"]) >= self.config.slow_rate
        ):
            return "closed"
        self.open = True
        self.opened_or_last_tested = now
        self.wait_ns = self.config.sleep_ms * NS_PER_MS if self.config.multiplier != 1.0 else 0
        self.episode += 1
        self.reopens = 0
        self.probes = (0, 0, 0)
        return "tripped"

    def current_wait(self) -> int:
        return self.wait_ns or self.config.sleep_ms * NS_PER_MS

    def reopened(self) -> None:
        """A failed trial: the next wait is the last one times the multiplier, capped."""
        self.reopens += 1
        self.probes = (0, 0, 0)
        if self.config.multiplier == 1.0:
            self.wait_ns = 0
            return
        cap = (self.config.max_sleep_ms or 365 * 24 * 3600 * 1000) * NS_PER_MS
        self.wait_ns = min(int((self.wait_ns or self.config.sleep_ms * NS_PER_MS) * self.config.multiplier), cap)

    def take_trial(self, now: int) -> bool:
        # fasthystrix: a forced-open circuit lets no trial through, even when it has also tripped.
        if self.open and not self.forced and now > self.opened_or_last_tested + self.current_wait():
            self.opened_or_last_tested = now
            return True
        return False

    def max_wait_passed(self, now: int) -> bool:
        max_wait = self.config.max_wait_ms
        return max_wait is not None and now > self.opened_or_last_tested + max_wait * NS_PER_MS

    def reopen_phase(self, now: int) -> None:
        """The half-open phase failed or ran past its bound: open again, the sleep window from now."""
        self.opened_or_last_tested = now
        self.reopened()

    def take_probe(self, now: int) -> bool:
        """With several trials: whether this call is one (``admitted_phase`` says of which phase)."""
        if self.forced:
            return False
        admitted, done, failed = self.probes
        if admitted == 0:
            if now <= self.opened_or_last_tested + self.current_wait():
                return False
        elif self.max_wait_passed(now):
            self.reopen_phase(now)  # this call finds the trials past their bound
            return False
        elif admitted >= self.config.half_open_calls:
            return False
        if self.in_use >= self.config.max_concurrent:
            return False
        if admitted == 0:
            self.opened_or_last_tested = now
        self.probes = (admitted + 1, done, failed)
        self.admitted_phase = (self.episode, self.reopens)
        return True

    def probe_ended(self, phase: tuple[int, int], failed: bool, now: int) -> None:
        admitted, done, failures = self.probes
        if not self.open or admitted == 0 or phase != (self.episode, self.reopens):
            return  # its phase has had its verdict
        if self.max_wait_passed(now):
            self.reopen_phase(now)
            return
        done += 1
        failures += failed
        if done < admitted or admitted < self.config.half_open_calls:
            self.probes = (admitted, done, failures)
            return
        if self.error_percent(done, failures) < self.config.percent:
            self.close()
        else:
            self.reopen_phase(now)

    def close(self) -> None:
        self.open = False
        self.wait_ns = 0
        self.reopens = 0
        self.probes = (0, 0, 0)
        self.events.clear()
        self.peak_active.clear()

    def admit(self, now: int) -> str:
        """``"short-circuit"``, ``"rejected"``, ``"run"`` or ``"trial"``; an admitted call takes a ticket."""
        state = self.check_open(now)
        trial = False
        self.admitted_phase = None
        if state != "closed":
            if state == "tripped":
                return "short-circuit"
            if self.config.probes:
                if not self.take_probe(now):
                    return "short-circuit"
            elif self.in_use >= self.config.max_concurrent or not self.take_trial(now):
                return "short-circuit"
            trial = True
        if self.in_use >= self.config.max_concurrent:
            return "rejected"
        self.in_use += 1
        bucket = now // self.config.bucket_ns
        self.events.setdefault(bucket, Counter())["executed"] += 1
        self.peak_active[bucket] = max(self.peak_active.get(bucket, 0), self.in_use)
        return "trial" if trial else "run"

    def finish(
        self,
        event: str,
        fallback_event: str | None,
        end: int,
        trial: bool,
        phase: tuple[int, int] | None = None,
        run_ns: int = -1,
    ) -> None:
        if phase is not None:
            self.probe_ended(phase, event != "success", end)
        elif trial and event == "success" and self.open:
            self.close()
        elif trial and self.open:
            self.reopened()
        counts = self.events.setdefault(end // self.config.bucket_ns, Counter())
        counts[event] += 1
        if fallback_event is not None:
            counts[fallback_event] += 1
        # A slow call: a request whose run (not a timeout's) took longer, in whole microseconds.
        slow_ms = self.config.slow_ms
        if slow_ms is not None and event in ("success", "failure") and run_ns // 1000 > slow_ms * 1000:
            counts["slow"] += 1

    def state(self) -> str:
        if not self.config.enabled:
            return "closed"
        if self.forced:
            return "forced-open"
        return "open" if self.open and not self.forced_closed else "closed"


configs = st.builds(
    Config,
    volume=st.integers(0, 5),
    percent=st.one_of(st.sampled_from([1, 25, 33, 34, 50, 51, 66, 67, 99, 100]), st.integers(1, 100)),
    sleep_ms=st.integers(1000, 5000),
    max_concurrent=st.sampled_from([10, 10, 10, 10, 1, 0]),
    enabled=st.sampled_from([True, True, True, True, False]),
    rejections_as_errors=st.sampled_from([True, True, False]),
    multiplier=st.sampled_from([1.0, 1.0, 1.5, 2.0]),
    max_sleep_ms=st.sampled_from([None, 3000, 7000]),
    half_open_calls=st.sampled_from([1, 1, 1, 2, 3, 5]),
    max_wait_ms=st.sampled_from([None, None, None, 50, 500, 3000]),
    slow_ms=st.sampled_from([None, None, 20, 50, 100]),
    slow_rate=st.one_of(st.sampled_from([1, 50, 100]), st.integers(1, 100)),
    rules=st.booleans(),
).flatmap(lambda c: st.sampled_from(WINDOWS).map(lambda w: replace(c, window_ms=w[0], buckets=w[1])))
fallbacks = st.sampled_from(["none", "returns", "raises"])


class CircuitMachine(RuleBasedStateMachine):
    """Drives the real circuit and the model with the same inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(START_NS)
        _clock.set_clock(self.clock)
        fasthystrix.flush()
        self.model: Model
        self.circuit: Any

    def _configure(self, config: Config) -> None:
        fasthystrix.configure_command(
            NAME,
            fasthystrix.CommandConfig(
                timeout=TIMEOUT_MS,
                max_concurrent_requests=config.max_concurrent,
                request_volume_threshold=config.volume,
                sleep_window=config.sleep_ms,
                error_percent_threshold=config.percent,
                isolation="semaphore",
                circuit_breaker_enabled=config.enabled,
                rejections_count_as_errors=config.rejections_as_errors,
                sleep_window_multiplier=config.multiplier,
                max_sleep_window=config.max_sleep_ms,
                half_open_max_calls=config.half_open_calls,
                half_open_max_wait=config.max_wait_ms,
                slow_call_duration=config.slow_ms,
                slow_call_rate_threshold=config.slow_rate,
                ignore=BadArgument if config.rules else None,
                is_failure=_is_failed_value if config.rules else None,
                rolling_window=config.window_ms,
                rolling_buckets=config.buckets,
            ),
        )

    @initialize(config=configs, offset_ms=st.integers(0, 999))
    def start(self, config: Config, offset_ms: int) -> None:
        self.clock.advance_ms(offset_ms)
        self._configure(config)
        self.model = Model(config)
        self.circuit, created = fasthystrix.get_circuit(NAME)
        assert created

    def teardown(self) -> None:
        _clock.set_clock(None)
        fasthystrix.flush()

    def _inner_call(self, raises: bool) -> tuple[Any, Any]:
        """A call made from inside a running command: it sees the outer call's ticket and may trip
        the circuit while the outer call is still running. Returns ``(got, expected)``."""
        now = self.clock.now
        verdict = self.model.admit(now)
        phase = self.model.admitted_phase
        if verdict in ("run", "trial"):
            self.model.in_use -= 1
            if raises:
                self.model.finish("failure", "fallback-success", now, verdict == "trial", phase)
                expected: Any = (FALLBACK_VALUE, RuntimeError)
            else:
                self.model.finish("success", None, now, verdict == "trial", phase)
                expected = INNER_VALUE
        else:
            self.model.finish(verdict, "fallback-success", now, False)
            expected = (FALLBACK_VALUE, ERROR_TYPES[verdict])

        def run() -> str:
            if raises:
                raise RuntimeError("inner run failed")
            return INNER_VALUE

        try:
            got = fasthystrix.do(NAME, run, lambda err: (FALLBACK_VALUE, type(err)))
        except Exception as exc:
            got = exc
        return got, expected

    @rule(
        raises=st.booleans(),
        delay_ms=st.one_of(st.integers(0, TIMEOUT_MS), st.sampled_from([TIMEOUT_MS, TIMEOUT_MS + 1])),
        fallback=fallbacks,
        nested=st.lists(st.booleans(), max_size=4).map(tuple),
    )
    def call(self, raises: bool, delay_ms: int, fallback: str, nested: tuple[bool, ...]) -> None:
        self._do(raises, delay_ms * NS_PER_MS, fallback, nested)

    @rule(failures=st.integers(1, 5))
    def succeed_while_circuit_trips(self, failures: int) -> None:
        """Calls made while this one runs fail and may trip the circuit: its success must not close it."""
        self._do(False, 0, "none", (True,) * failures + (False,))

    @rule(delay_ms=st.integers(0, TIMEOUT_MS))
    def succeed(self, delay_ms: int) -> None:
        self._do(False, delay_ms * NS_PER_MS, "none", ())

    @rule(fallback=fallbacks)
    def fail(self, fallback: str) -> None:
        self._do(True, 0, fallback, ())

    @rule(
        raises=st.booleans(),
        delay_ns=st.one_of(st.sampled_from([TIMEOUT_NS, TIMEOUT_NS + 1]), st.integers(TIMEOUT_NS + 1, 3 * NS_PER_S)),
        fallback=fallbacks,
    )
    def slow_call(self, raises: bool, delay_ns: int, fallback: str) -> None:
        """Run advances the clock past the timeout (or exactly to it): a timeout whatever run did."""
        self._do(raises, delay_ns, fallback, ())

    @rule(
        kind=st.sampled_from(["bad", "failed-result"]),
        delay_ms=st.one_of(st.integers(0, TIMEOUT_MS), st.just(TIMEOUT_MS + 1)),
        fallback=fallbacks,
    )
    def outcome_rule_call(self, kind: str, delay_ms: int, fallback: str) -> None:
        """Run raises what ``ignore`` accepts, or returns what ``is_failure`` accepts (when the rules are on)."""
        self._do(False, delay_ms * NS_PER_MS, fallback, (), kind)

    def _do(self, raises: bool, delay_ns: int, fallback: str, nested: tuple[bool, ...], kind: str = "") -> None:
        """One ``do()`` predicted by the model: which path it takes, its event and its fallback event;
        ``nested`` lists the calls run makes before returning (True: that call fails); ``kind``:
        "bad" (run raises BadArgument) or "failed-result" (run returns FAILED_VALUE)."""
        model = self.model
        start = self.clock.now
        verdict = model.admit(start)
        phase = model.admitted_phase
        run_error: BaseException = BadArgument("bad argument") if kind == "bad" else RuntimeError("run failed")
        fallback_error = ValueError("fallback failed")
        ran: list[tuple[int, str]] = []
        inner: list[tuple[Any, Any]] = []
        fallback_args: list[BaseException] = []

        def run() -> str:
            ran.append((self.circuit.tickets_in_use, self.circuit.state()))
            for inner_raises in nested:
                inner.append(self._inner_call(inner_raises))
            self.clock.advance_ns(delay_ns)
            if raises or kind == "bad":
                raise run_error
            return FAILED_VALUE if kind == "failed-result" else RUN_VALUE

        def fb(err: BaseException) -> str:
            fallback_args.append(err)
            if fallback == "raises":
                raise fallback_error
            return FALLBACK_VALUE

        value: Any = None
        raised: BaseException | None = None
        try:
            value = fasthystrix.do(NAME, run, None if fallback == "none" else fb)
        except Exception as exc:
            raised = exc

        if verdict in ("short-circuit", "rejected"):
            assert not ran, f"run executed although the model says {verdict}"
            event = verdict
        else:
            assert ran, f"run did not execute although the model says {verdict}"
            # A trial runs while the circuit is still open (so any other call short-circuits).
            assert ran[0] == (1, "open" if verdict == "trial" else "closed")
            for got, expected in inner:
                assert got == expected, f"nested call: got {got!r}, model says {expected!r}"
            model.in_use -= 1
            rules = model.config.rules
            if delay_ns > TIMEOUT_NS:
                event = "timeout"
            elif kind == "bad":
                event = "bad-request" if rules else "failure"
            elif kind == "failed-result":
                event = "failure" if rules else "success"
            else:
                event = "failure" if raises else "success"
        end = self.clock.now
        failed_result = kind == "failed-result" and event == "failure"

        if event == "success":
            assert raised is None and value == (FAILED_VALUE if kind else RUN_VALUE), (value, raised)
            assert not fallback_args
            fallback_event = None
        elif event == "bad-request":
            # Neither success nor failure: run's error reaches the caller, the fallback never runs.
            assert raised is run_error and not fallback_args, (value, raised, fallback_args)
            fallback_event = None
        elif failed_result:
            if fallback == "none":
                assert isinstance(raised, fasthystrix.FailedResultError) and raised.result == FAILED_VALUE
                fallback_event = None
            else:
                (err,) = fallback_args
                assert isinstance(err, fasthystrix.FailedResultError) and err.result == FAILED_VALUE
                fallback_event = "fallback-success" if fallback == "returns" else "fallback-failure"
                if fallback == "returns":
                    assert raised is None and value == FALLBACK_VALUE, (value, raised)
                else:
                    assert isinstance(raised, fasthystrix.FallbackError) and raised.run_error is err
        else:
            expected_error = ERROR_TYPES.get(event, type(run_error))
            if fallback == "none":
                assert isinstance(raised, expected_error), f"{event}: raised {raised!r}"
                assert not fallback_args
                if event == "failure":
                    assert raised is run_error
                fallback_event = None
            else:
                assert len(fallback_args) == 1, f"{event}: fallback called {len(fallback_args)} times"
                assert isinstance(fallback_args[0], expected_error)
                if event == "failure":
                    assert fallback_args[0] is run_error
                if fallback == "returns":
                    assert raised is None and value == FALLBACK_VALUE, (value, raised)
                    fallback_event = "fallback-success"
                else:
                    assert isinstance(raised, fasthystrix.FallbackError), f"{event}: raised {raised!r}"
                    assert raised.fallback_error is fallback_error
                    assert isinstance(raised.run_error, expected_error)
                    fallback_event = "fallback-failure"
        model.finish(event, fallback_event, end, verdict == "trial", phase, end - start if ran else -1)

    @rule(failures=st.lists(st.booleans(), min_size=1, max_size=6), nested=st.booleans())
    def half_open_phase(self, failures: list[bool], nested: bool) -> None:
        """Past the sleep window, calls that fail or not: the trials of a half-open phase and the
        calls beyond them (all made one after the other, or all from inside the first)."""
        target = self.model.opened_or_last_tested + self.model.current_wait() + 1
        if target > self.clock.now:
            self.clock.advance_ns(target - self.clock.now)
        if nested:
            self._do(failures[0], 0, "returns", tuple(failures[1:]))
        else:
            for raises in failures:
                self._do(raises, 0, "returns", ())

    @rule(ms=st.integers(1, 999))
    def advance_milliseconds(self, ms: int) -> None:
        self.clock.advance_ms(ms)

    @rule(seconds=st.one_of(st.integers(1, 9), st.integers(10, 25)), ms=st.integers(0, 999))
    def advance_seconds(self, seconds: int, ms: int) -> None:
        self.clock.advance_ms(seconds * 1000 + ms)

    @rule(extra_ns=st.sampled_from([0, 1]))
    def advance_to_trial_time(self, extra_ns: int) -> None:
        """Jump to exactly the end of the sleep window (no trial yet) or one nanosecond past it."""
        target = self.model.opened_or_last_tested + self.model.current_wait() + extra_ns
        if target > self.clock.now:
            self.clock.advance_ns(target - self.clock.now)

    @rule(extra_ns=st.sampled_from([0, 1]))
    def advance_to_max_wait(self, extra_ns: int) -> None:
        """Jump to exactly the bound of the half-open phase's trials, or one nanosecond past it."""
        if self.model.config.max_wait_ms is None:
            return
        target = self.model.opened_or_last_tested + self.model.config.max_wait_ms * NS_PER_MS + extra_ns
        if target > self.clock.now:
            self.clock.advance_ns(target - self.clock.now)

    @rule(value=st.sampled_from([True, False, False]))
    def force_open(self, value: bool) -> None:
        self.circuit.force_open = value
        self.model.forced = value

    @rule(value=st.sampled_from([True, False, False]))
    def force_closed(self, value: bool) -> None:
        self.circuit.force_closed = value
        self.model.forced_closed = value

    @rule(config=configs)
    def reconfigure(self, config: Config) -> None:
        self._configure(config)
        self.model.reconfigured(config)

    @rule()
    def is_open(self) -> None:
        expected = self.model.check_open(self.clock.now) != "closed"
        assert self.circuit.is_open() is expected

    @rule()
    def allow_request(self) -> None:
        now = self.clock.now
        state = self.model.check_open(now)
        # With several trials, only commands are trials.
        expected = state == "closed" or (
            state == "open" and not self.model.config.probes and self.model.take_trial(now)
        )
        assert self.circuit.allow_request() is expected

    @invariant()
    def metrics_match_model(self) -> None:
        now = self.clock.now
        snapshot = self.circuit.metrics()
        window = self.model.window(now)
        got = {f: getattr(snapshot, f) for f in SNAPSHOT_FIELDS}
        expected = {f: window[e] for f, e in SNAPSHOT_FIELDS.items()}
        assert got == expected
        requests, errors = self.model.health(now)
        assert (snapshot.requests, snapshot.errors) == (requests, errors)
        assert snapshot.error_percent == Model.error_percent(requests, errors)
        assert snapshot.errors <= snapshot.requests
        assert 0 <= snapshot.error_percent <= 100
        assert snapshot.executed == window["executed"]
        assert snapshot.max_concurrent == self.model.window_peak(now)
        assert snapshot.context_canceled == snapshot.context_deadline_exceeded == 0
        assert snapshot.concurrent == 0

    @invariant()
    def no_ticket_taken_between_calls(self) -> None:
        assert self.circuit.tickets_in_use == 0
        assert self.model.in_use == 0

    @invariant()
    def state_matches_model(self) -> None:
        assert self.circuit.state() == self.model.state()
        assert self.circuit.force_open is self.model.forced
        assert self.circuit.force_closed is self.model.forced_closed
        if self.model.open:
            # sleep_window_now is a timedelta: whole microseconds of the nanosecond wait (a backoff
            # of 1.5 leaves fractions of a microsecond).
            assert self.circuit.sleep_window_now // timedelta(microseconds=1) == self.model.current_wait() // 1000


def test_circuit_follows_the_reference_model() -> None:
    run_state_machine_as_test(
        CircuitMachine,
        settings=settings(
            max_examples=int(os.environ.get("FASTHYSTRIX_STATE_MACHINE_EXAMPLES", "150")),
            stateful_step_count=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
