"""Adaptive concurrency limits: a command's ticket count found from its latencies.

Three algorithms, as Netflix's concurrency-limits library defines them (its ``AIMDLimit``,
``VegasLimit`` and ``Gradient2Limit``, with their defaults where they apply here). Each takes
one sample per finished call: the call's round-trip time, the calls in flight when it
started, and whether it was dropped (it timed out), and answers the new limit. They are
plain arithmetic on a circuit's own state, off the hot path: a circuit with a fixed limit
never runs them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["ALGORITHMS", "AdaptiveLimit", "Limiter"]

#: The algorithms ``AdaptiveLimit`` accepts.
ALGORITHMS = ("gradient2", "vegas", "aimd")
_MAX_LIMIT = 1_000_000


def _check_int(field: str, value: object, low: int) -> int:
    if type(value) is not int:
        raise TypeError(f"AdaptiveLimit {field} must be an int, not {value!r}")
    if not low <= value <= _MAX_LIMIT:
        raise ValueError(f"AdaptiveLimit {field} must be between {low} and {_MAX_LIMIT}, not {value!r}")
    return value


@dataclass(frozen=True)
class AdaptiveLimit:
    """A concurrency limit that moves with the dependency's latency, for ``max_concurrent_requests``.

    ``algorithm``: ``"gradient2"`` (the default), ``"vegas"`` or ``"aimd"``. The limit starts
    at ``initial`` and stays within ``min_limit`` .. ``max_limit``. Each circuit using it keeps
    its own limit; ``CircuitBreaker.concurrency_limit`` reads it.
    """

    algorithm: str = "gradient2"
    initial: int = 20
    min_limit: int = 1
    max_limit: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, str):
            raise TypeError(f"AdaptiveLimit algorithm must be a str, not {self.algorithm!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"AdaptiveLimit algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        _check_int("min_limit", self.min_limit, 1)
        _check_int("max_limit", self.max_limit, 1)
        _check_int("initial", self.initial, 1)
        if self.min_limit > self.max_limit:
            raise ValueError(f"AdaptiveLimit min_limit {self.min_limit} is above max_limit {self.max_limit}")
        if not self.min_limit <= self.initial <= self.max_limit:
            raise ValueError(
                f"AdaptiveLimit initial {self.initial} is outside min_limit..max_limit "
                f"({self.min_limit}..{self.max_limit})"
            )

    def limiter(self) -> Limiter:
        """A fresh limiter with this algorithm and bounds (one per circuit)."""
        return _LIMITERS[self.algorithm](self)


class Limiter:
    """One circuit's adaptive limit: ``on_sample`` after each call, ``limit`` to admit."""

    __slots__ = ("_estimate", "max_limit", "min_limit")

    def __init__(self, config: AdaptiveLimit) -> None:
        self.min_limit = config.min_limit
        self.max_limit = config.max_limit
        self._estimate = float(config.initial)

    @property
    def limit(self) -> int:
        """The current limit: whole tickets, within the bounds."""
        return max(self.min_limit, min(self.max_limit, int(self._estimate)))

    def on_sample(self, rtt_ns: int, inflight: int, dropped: bool) -> int:
        """Account one finished call; returns the new limit."""
        raise NotImplementedError

    def _clamp(self, value: float) -> float:
        return max(float(self.min_limit), min(float(self.max_limit), value))


class _AIMD(Limiter):
    """Additive increase, multiplicative decrease: +1 while the limit is in use, x0.9 on a drop."""

    __slots__ = ()
    BACKOFF = 0.9

    def on_sample(self, rtt_ns: int, inflight: int, dropped: bool) -> int:
        if dropped:
            self._estimate = self._clamp(math.floor(self._estimate * self.BACKOFF))
        elif inflight * 2 >= self._estimate:  # not application-limited: there is demand for more
            self._estimate = self._clamp(self._estimate + 1)
        return self.limit


class _Vegas(Limiter):
    """TCP Vegas: the queue the latency implies, ``limit * (1 - rtt_noload / rtt)``, kept between
    alpha (3 log10 limit) and beta (6 log10 limit); the no-load latency is probed again now and
    then (every 30 x limit samples, jittered), since it drifts."""

    __slots__ = ("_probe_count", "_probe_jitter", "_random", "_rtt_noload")
    PROBE_MULTIPLIER = 30

    def __init__(self, config: AdaptiveLimit) -> None:
        super().__init__(config)
        self._rtt_noload = 0
        self._probe_count = 0
        self._random = random.Random(0x5EED)  # reproducible probes
        self._probe_jitter = self._random.uniform(0.5, 1.0)

    def on_sample(self, rtt_ns: int, inflight: int, dropped: bool) -> int:
        if rtt_ns <= 0:
            return self.limit
        self._probe_count += 1
        if self._probe_jitter * self.PROBE_MULTIPLIER * self._estimate <= self._probe_count:
            self._probe_count = 0
            self._probe_jitter = self._random.uniform(0.5, 1.0)
            self._rtt_noload = rtt_ns
            return self.limit
        if self._rtt_noload == 0 or rtt_ns < self._rtt_noload:
            self._rtt_noload = rtt_ns
            return self.limit
        estimate = self._estimate
        log_limit = max(1.0, math.log10(max(estimate, 1.0)))
        queue = math.ceil(estimate * (1 - self._rtt_noload / rtt_ns))
        if dropped:
            new = estimate - log_limit
        elif inflight * 2 < estimate:
            return self.limit  # application-limited: the latency says nothing about the limit
        elif queue <= log_limit:
            new = estimate + 6 * log_limit
        elif queue < 3 * log_limit:
            new = estimate + log_limit
        elif queue > 6 * log_limit:
            new = estimate - log_limit
        else:
            return self.limit
        self._estimate = self._clamp(new)
        return self.limit


class _Gradient2(Limiter):
    """The ratio of the long-term average latency to this call's, x1.5 tolerance, clamped to
    0.5..1, scales the limit, plus a queue of 4; smoothed 0.2. The long average (600 samples)
    decays when it runs far above the short one, so a recovered dependency is seen again."""

    __slots__ = ("_long_rtt", "_samples")
    SMOOTHING = 0.2
    TOLERANCE = 1.5
    QUEUE = 4
    LONG_WINDOW = 600
    WARMUP = 10

    def __init__(self, config: AdaptiveLimit) -> None:
        super().__init__(config)
        self._long_rtt = 0.0
        self._samples = 0

    def on_sample(self, rtt_ns: int, inflight: int, dropped: bool) -> int:
        if rtt_ns <= 0:
            return self.limit
        short = float(rtt_ns)
        self._samples += 1
        if self._samples <= self.WARMUP:  # a plain average first, as the library's warm-up
            self._long_rtt += (short - self._long_rtt) / self._samples
        else:
            self._long_rtt += (short - self._long_rtt) * 2 / (self.LONG_WINDOW + 1)
        if self._long_rtt / short > 2:
            self._long_rtt *= 0.95
        estimate = self._estimate
        if inflight < estimate / 2:
            return self.limit  # application-limited
        gradient = max(0.5, min(1.0, self.TOLERANCE * self._long_rtt / short))
        new = estimate * gradient + self.QUEUE
        new = estimate * (1 - self.SMOOTHING) + new * self.SMOOTHING
        self._estimate = self._clamp(new)
        return self.limit


_LIMITERS: dict[str, type[Limiter]] = {"gradient2": _Gradient2, "vegas": _Vegas, "aimd": _AIMD}
