"""OpenTelemetry metrics for every circuit: observable instruments read at collection time.

Install with the ``otel`` extra (``pip install fasthystrix[otel]``; only
``opentelemetry-api`` is imported, the SDK or distro you configure does the
exporting)::

    from fasthystrix import otel

    instruments = otel.instrument()  # before the first command runs; the global MeterProvider by default
    ...
    instruments.close()

Instruments (meter ``fasthystrix``), each with a ``command`` attribute:

- ``fasthystrix.events`` (ObservableCounter, ``{event}``, attribute ``event``):
  every event since the circuit was created, with hystrix-go's event names;
- ``fasthystrix.rolling.events`` (gauge, attribute ``event``) and
  ``fasthystrix.rolling.error_ratio`` (gauge): the rolling window the breaker decides on (10 s by default);
- ``fasthystrix.circuit.open``, ``fasthystrix.circuit.forced_open`` (gauges, 0 or 1);
- ``fasthystrix.concurrent_requests``, ``fasthystrix.max_concurrent_requests`` (gauges; the
  latter is the current concurrency limit: an ``AdaptiveLimit``'s value now);
- ``fasthystrix.run.duration``, ``fasthystrix.total.duration`` (gauges in seconds, attribute
  ``quantile``: the rolling 60-second percentiles) with ``fasthystrix.run.duration.count``,
  ``fasthystrix.run.duration.sum`` and the ``total`` pair (cumulative ObservableCounters);
- ``fasthystrix.exporter.skipped_circuits`` (gauge, no attributes): circuits left out of
  the collection (see below); 0 but for names that are not valid UTF-8.

Any name is reported: the ``command`` attribute is the name as it is, except that a
name with surrogate code points (which no exporter can encode as UTF-8) is reported
with each one replaced by U+FFFD. If that replaced name is another circuit's name too,
the circuit is left out and counted in ``fasthystrix.exporter.skipped_circuits``.

The same numbers as :mod:`fasthystrix.prometheus`. The cumulative counters come
from a metric collector attached when a circuit is created: instrument before
the first call of a command; circuits created earlier report everything but
the cumulative counters until ``fasthystrix.flush()`` recreates them.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Instrument, MeterProvider, Observation

from ._core._events import COUNTED_EVENT_NAMES
from ._observability import _cumulative
from ._observability._cumulative import PERCENTILES, CircuitReading, quantile_label
from ._observability._export_names import exportable

__all__ = ["Instrumentation", "instrument"]

_QUANTILES = tuple((p, quantile_label(p)) for p in PERCENTILES)
# A reading is shared by the instruments of one collection; never reused after this long.
_READING_MAX_AGE = 1.0

_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class _ProviderInstruments:
    """The instruments of one MeterProvider, created once and switched on and off.

    The SDK hands back an existing instrument (and drops the new callbacks) when
    one is created again with the same name, so the instruments of a provider
    are made the first time it is instrumented and stay bound to this object.
    It must not reference the provider (it is the value of a weak-keyed table).
    """

    def __init__(self) -> None:
        self.active = False
        self._lock = threading.Lock()
        self._readings: list[CircuitReading] = []
        self._skipped = 0
        self._read_at = 0.0
        self._consumed: set[str] = set()
        self.instruments: dict[str, Instrument] = {}

    def create(self, provider: MeterProvider) -> None:
        from . import __version__

        meter = provider.get_meter("fasthystrix", __version__)
        counter = meter.create_observable_counter
        gauge = meter.create_observable_gauge
        specs: list[tuple[Callable[..., Instrument], str, str, str, Callable[[CircuitReading], Iterable[Observation]]]]
        specs = [
            (counter, "fasthystrix.events", "{event}", "Commands by event since the circuit was created.", _events),
            (
                gauge,
                "fasthystrix.rolling.events",
                "{event}",
                "Commands by event over the rolling window (10 s by default) the breaker decides on.",
                _rolling_events,
            ),
            (gauge, "fasthystrix.rolling.error_ratio", "1", "Errors / requests over the rolling window.", _ratio),
            (gauge, "fasthystrix.circuit.open", "", "1 if open or forced open, else 0.", _open),
            (gauge, "fasthystrix.circuit.forced_open", "", "1 if forced open, else 0.", _forced),
            (gauge, "fasthystrix.concurrent_requests", "{request}", "Commands holding a ticket now.", _concurrent),
            (gauge, "fasthystrix.max_concurrent_requests", "{request}", "The current concurrency limit.", _maximum),
            (
                gauge,
                "fasthystrix.run.duration",
                "s",
                "run() duration of successes and failures: rolling 60-second percentiles.",
                _run_quantiles,
            ),
            (counter, "fasthystrix.run.duration.count", "{command}", "Runs that finished, cumulative.", _run_count),
            (counter, "fasthystrix.run.duration.sum", "s", "Their total duration, cumulative.", _run_sum),
            (
                gauge,
                "fasthystrix.total.duration",
                "s",
                "Duration of commands that ran, fallback included: rolling 60-second percentiles.",
                _total_quantiles,
            ),
            (counter, "fasthystrix.total.duration.count", "{command}", "Commands that ran, cumulative.", _total_count),
            (counter, "fasthystrix.total.duration.sum", "s", "Their total duration, cumulative.", _total_sum),
        ]
        for create, name, unit, description, observe in specs:
            self.instruments[name] = create(
                name, callbacks=[self._callback(name, observe)], unit=unit, description=description
            )
        skipped = "fasthystrix.exporter.skipped_circuits"
        self.instruments[skipped] = gauge(
            skipped,
            callbacks=[self._skipped_callback(skipped)],
            unit="{circuit}",
            description="Circuits left out of this collection: their name, made valid UTF-8, is another circuit's.",
        )

    def _callback(self, name: str, observe: Callable[[CircuitReading], Iterable[Observation]]) -> _Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            return [observation for reading in self._reading_for(name)[0] for observation in observe(reading)]

        return callback

    def _skipped_callback(self, name: str) -> _Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            return [Observation(self._reading_for(name)[1])]

        return callback

    def _reading_for(self, name: str) -> tuple[list[CircuitReading], int]:
        """One reading of every circuit per collection, whatever order the instruments are called in,
        and how many circuits it leaves out.

        An instrument asking a second time means a new collection has started.
        """
        with self._lock:
            now = time.monotonic()
            if name in self._consumed or now - self._read_at > _READING_MAX_AGE:
                self._readings, self._skipped = exportable(_cumulative.read_circuits())
                self._read_at = now
                self._consumed.clear()
            self._consumed.add(name)
            return self._readings, self._skipped


def _events(reading: CircuitReading) -> Iterable[Observation]:
    if reading.cumulative is None:
        return ()
    return (
        Observation(count, {"command": reading.name, "event": event})
        for event, count in zip(COUNTED_EVENT_NAMES, reading.cumulative.events, strict=True)
    )


def _rolling_events(reading: CircuitReading) -> Iterable[Observation]:
    return (
        Observation(count, {"command": reading.name, "event": event})
        for event, count in zip(COUNTED_EVENT_NAMES, reading.rolling_events(), strict=True)
    )


def _ratio(reading: CircuitReading) -> Iterable[Observation]:
    rolling = reading.rolling
    return (Observation(rolling.errors / rolling.requests if rolling.requests else 0.0, {"command": reading.name}),)


def _open(reading: CircuitReading) -> Iterable[Observation]:
    return (Observation(int(reading.open), {"command": reading.name}),)


def _forced(reading: CircuitReading) -> Iterable[Observation]:
    return (Observation(int(reading.forced_open), {"command": reading.name}),)


def _concurrent(reading: CircuitReading) -> Iterable[Observation]:
    return (Observation(reading.concurrent, {"command": reading.name}),)


def _maximum(reading: CircuitReading) -> Iterable[Observation]:
    return (Observation(reading.max_concurrent, {"command": reading.name}),)


def _quantiles(command: str, percentiles: dict[float, float]) -> Iterable[Observation]:
    # The snapshot's percentiles are milliseconds; instruments use base units.
    return (
        Observation(percentiles.get(percentile, 0.0) / 1000, {"command": command, "quantile": label})
        for percentile, label in _QUANTILES
    )


def _run_quantiles(reading: CircuitReading) -> Iterable[Observation]:
    return _quantiles(reading.name, reading.rolling.run_latency_percentiles)


def _total_quantiles(reading: CircuitReading) -> Iterable[Observation]:
    return _quantiles(reading.name, reading.rolling.total_latency_percentiles)


def _cumulative_value(reading: CircuitReading, field: str) -> Iterable[Observation]:
    if reading.cumulative is None:
        return ()
    return (Observation(getattr(reading.cumulative, field), {"command": reading.name}),)


def _run_count(reading: CircuitReading) -> Iterable[Observation]:
    return _cumulative_value(reading, "run_count")


def _run_sum(reading: CircuitReading) -> Iterable[Observation]:
    return _cumulative_value(reading, "run_seconds")


def _total_count(reading: CircuitReading) -> Iterable[Observation]:
    return _cumulative_value(reading, "total_count")


def _total_sum(reading: CircuitReading) -> Iterable[Observation]:
    return _cumulative_value(reading, "total_seconds")


_lock = threading.Lock()
_providers: weakref.WeakKeyDictionary[MeterProvider, _ProviderInstruments] = weakref.WeakKeyDictionary()


class Instrumentation:
    """What :func:`instrument` returns: :meth:`close` stops reporting and counting."""

    def __init__(self, instruments: _ProviderInstruments) -> None:
        self._instruments: _ProviderInstruments | None = instruments

    @property
    def instruments(self) -> dict[str, Instrument]:
        """The observable instruments by name (empty once closed)."""
        return {} if self._instruments is None else dict(self._instruments.instruments)

    def close(self) -> None:
        """Stop reporting (the instruments stay on the meter, observing nothing) and counting; idempotent."""
        with _lock:
            instruments, self._instruments = self._instruments, None
            if instruments is None:
                return
            instruments.active = False
        _cumulative.release()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def instrument(meter_provider: MeterProvider | None = None) -> Instrumentation:
    """Report every circuit through ``meter_provider`` (the global one if ``None``); see the module docstring.

    Raises ``ValueError`` if that provider is already instrumented and not closed.
    """
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        instruments = _providers.get(provider)
        if instruments is None:
            instruments = _ProviderInstruments()
            instruments.create(provider)
            _providers[provider] = instruments
        elif instruments.active:
            raise ValueError(f"{provider!r} is already instrumented by fasthystrix; close() the first Instrumentation")
        instruments.active = True
    _cumulative.acquire()
    return Instrumentation(instruments)
