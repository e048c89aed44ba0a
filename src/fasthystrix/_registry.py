"""The process-wide tables: settings per command name and circuits per command name."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import _impl
from ._core import _clock, _config, _shared, _transitions
from ._core._config import CommandConfig, Settings, get_defaults
from ._core._events import CONTEXT_DEADLINE_EXCEEDED
from ._core._log import logger
from ._isolation import _command
from ._isolation._command import run_threaded
from ._isolation._workers import timer, workers
from .metric_collector import DefaultMetricCollector, registry

__all__ = [
    "configure",
    "configure_command",
    "flush",
    "get_circuit",
    "get_circuit_settings",
    "get_or_create",
    "CircuitLimitError",
    "circuit_table_stats",
    "get_settings",
    "get_max_circuits",
    "set_max_circuits",
    "share_circuits",
]

_circuits: dict[str, Any] = {}
_REQUEST_EVENTS = CONTEXT_DEADLINE_EXCEEDED + 1  # the window's counts of calls: success .. deadline
_settings: dict[str, Settings] = {}
# Serialises circuit creation (so each factory runs once per circuit) and settings changes.
# Reentrant: a collector factory may itself use fasthystrix.
_lock = threading.RLock()
_creating: set[str] = set()  # names whose circuit is being created (guarded by _lock)

#: The default bound on circuits per process (``set_max_circuits``).
DEFAULT_MAX_CIRCUITS = 10_000
#: The circuit that answers, as an open circuit, the calls of a name the full table refused.
REFUSED_NAME = "fasthystrix:circuit-limit"
_max_circuits = DEFAULT_MAX_CIRCUITS
# Names configured explicitly (configure, configure_command): their circuits are never
# evicted and their settings are kept by flush(). Guarded by _lock.
_configured: set[str] = set()
# Circuits evicted and calls refused so far (guarded by _lock), for circuit_table_stats().
_evicted_total = 0
_refused_total = 0


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {name!r}")
    return name


def get_settings(name: str) -> Settings:
    """The settings of ``name``, configuring it with the defaults on first use (as hystrix-go).

    With shared circuits, the host's settings: the last writer's, whichever process it was.
    """
    if _shared.shared_dir() is not None:
        settings: Settings = _settings_holder(name).settings
        return settings
    return _local_settings(name)


def _local_settings(name: str) -> Settings:
    settings = _settings.get(name)
    if settings is None:
        with _lock:
            settings = _settings.get(name)
            if settings is None:
                settings = _settings[name] = _shared.intern(Settings.from_config(CommandConfig(), get_defaults()))
    return settings


def configure_command(name: str, config: CommandConfig | Mapping[str, Any]) -> Settings:
    """Replace the settings of ``name`` (``None`` fields take the current defaults).

    Applies to calls that start afterwards, ``max_concurrent_requests`` included.
    A bad ``config`` raises before anything changes. Returns the new settings.
    """
    _check_name(name)
    settings = Settings.from_config(CommandConfig.from_mapping(config), get_defaults())
    with _lock:
        _settings[name] = _shared.intern(settings)
        _configured.add(name)
        circuit = _circuits.get(name)
        if circuit is None and _shared.shared_dir() is not None:
            circuit = _settings_holder(name)  # host-wide settings live in the circuit's file
        if circuit is not None:
            circuit._settings = settings
    return settings


def configure(mapping: Mapping[str, CommandConfig | Mapping[str, Any]]) -> dict[str, Settings]:
    """Configure several commands at once; all entries are validated before any is applied."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"configure() takes a mapping of name to CommandConfig, not {mapping!r}")
    resolved: dict[str, Settings] = {}
    for name, config in mapping.items():
        _check_name(name)
        try:
            resolved[name] = Settings.from_config(CommandConfig.from_mapping(config), get_defaults())
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"command {name!r}: {exc}") from None
    with _lock:
        for name, settings in resolved.items():
            _settings[name] = _shared.intern(settings)
            _configured.add(name)
            circuit = _circuits.get(name)
            if circuit is None and _shared.shared_dir() is not None:
                circuit = _settings_holder(name)
            if circuit is not None:
                circuit._settings = settings
    return resolved


def get_circuit_settings() -> dict[str, Settings]:
    """A copy of the settings table (the same immutable ``Settings`` objects).

    With shared circuits: every command of the host, each with the host's settings.
    """
    if _shared.shared_dir() is not None:
        return {name: circuit.settings for name, circuit in circuits().items()}
    with _lock:
        return dict(_settings)


def get_or_create(name: str) -> Any:
    """The circuit of ``name``, created on first use.

    When the table is full and nothing can be evicted, the circuit named ``REFUSED_NAME``
    (forced open): the command answers through its fallback with ``CircuitOpenError``.
    """
    circuit = _circuits.get(name)
    if circuit is None:
        try:
            circuit = get_circuit(name)[0]
        except CircuitLimitError:
            circuit = _refused()
    return circuit


class CircuitLimitError(RuntimeError):
    """The process holds ``get_max_circuits()`` circuits and none of them can be evicted."""


def get_max_circuits() -> int:
    """The most circuits this process keeps (default ``DEFAULT_MAX_CIRCUITS``, 10 000)."""
    return _max_circuits


def set_max_circuits(limit: int | None = None) -> int:
    """Bound the circuits this process keeps to ``limit`` (``None``: ``DEFAULT_MAX_CIRCUITS``);
    returns the new bound.

    A new name past the bound evicts the least used circuits that are closed, idle (no
    ticket in use), not forced and not configured explicitly; open, forced and configured
    circuits are never evicted. When none can be, the command is answered as by an open
    circuit (its fallback gets ``CircuitOpenError``) and counted on the circuit named
    ``"fasthystrix:circuit-limit"``. Circuits already over a lowered bound are evicted as
    new names come.
    """
    global _max_circuits
    if limit is None:
        limit = DEFAULT_MAX_CIRCUITS
    if type(limit) is not int:
        raise TypeError(f"max_circuits must be an int, not {limit!r}")
    if limit < 1:
        raise ValueError(f"max_circuits must be at least 1, not {limit!r}")
    with _lock:
        _max_circuits = limit
    return limit


def circuit_table_stats() -> dict[str, int]:
    """The circuit table's size and bound, and the circuits evicted and calls refused so far."""
    with _lock:
        return {
            "circuits": len(_circuits),
            "max_circuits": _max_circuits,
            "evicted": _evicted_total,
            "refused": _refused_total,
        }


def _evictable(name: str, circuit: Any) -> bool:
    return (
        name not in _configured
        and name != REFUSED_NAME
        and getattr(circuit, "_shared", None) is None  # host-wide: bounded by _shared.MAX_CIRCUITS
        and not circuit.force_open
        and not circuit.force_closed
        and circuit.state() == "closed"
        and circuit.tickets_in_use == 0
    )


def _evict() -> int:
    """Evict the least used evictable circuits (with ``_lock`` held); how many were evicted.

    One pass evicts a sixteenth of the bound at once, so a stream of new names costs one
    scan of the table per batch, not per name. Least used: no call in the rolling window
    first, oldest first; then the fewest calls in the window.
    """
    global _evicted_total
    now = _clock.now_ns()
    candidates: list[tuple[int, int, str]] = []
    for order, (name, circuit) in enumerate(_circuits.items()):
        if _evictable(name, circuit):
            counts = circuit._default._rolling.counts(now)
            candidates.append((sum(counts[:_REQUEST_EVENTS]), order, name))
    if not candidates:
        return 0
    excess = len(_circuits) - _max_circuits + 1
    batch = min(len(candidates), max(excess, _max_circuits // 16, 1))
    candidates.sort()
    for _, _, name in candidates[:batch]:
        circuit = _circuits.pop(name)
        if name not in _configured:
            _settings.pop(name, None)  # the defaults it took at first use
    _evicted_total += batch
    return batch


def _refused() -> Any:
    """The forced-open circuit that answers the calls the full table refused."""
    global _refused_total
    with _lock:
        _refused_total += 1
        circuit = _circuits.get(REFUSED_NAME)
        if circuit is None:
            settings = _local_settings(REFUSED_NAME)
            circuit = _impl.current().CircuitBreaker(
                REFUSED_NAME, settings, DefaultMetricCollector(REFUSED_NAME), [], _clock.get_clock()
            )
            circuit._workers = workers.for_command()
            circuit.force_open = True
            _circuits[REFUSED_NAME] = circuit  # one more than the bound, in every stream and export
            logger.warning(
                "the circuit table is full (%d circuits, none evictable): new command names are "
                "answered as open circuits, counted on %r",
                _max_circuits,
                REFUSED_NAME,
            )
    return circuit


def get_circuit(name: str) -> tuple[Any, bool]:
    """``(circuit, created)``: the circuit of ``name`` and whether this call created it.

    Exactly one caller creates a given circuit, however many threads race.
    """
    _check_name(name)
    circuit = _circuits.get(name)
    if circuit is not None:
        return circuit, False
    with _lock:
        circuit = _circuits.get(name)
        if circuit is not None:
            return circuit, False
        if name in _creating:
            raise RuntimeError(
                f"circuit {name!r} is being created: a metric collector factory cannot use its own circuit"
            )
        _creating.add(name)
        try:
            return _create(name), True
        finally:
            _creating.discard(name)


# With sharing: each name's mapped file (one per process), and the unpublished circuits that
# read and write the settings of names this process has not used yet (guarded by _lock).
_files: dict[str, _shared.SharedCircuitFile] = {}
_holders: dict[str, Any] = {}


def _file(name: str) -> _shared.SharedCircuitFile:
    shared = _files.get(name)
    if shared is None or shared.path.parent != _shared.shared_dir():
        settings = _local_settings(name)
        shared = _files[name] = _shared.SharedCircuitFile(name, _impl.current().name, settings)
    return shared


def _settings_holder(name: str) -> Any:
    """With sharing: a circuit attached to ``name``'s file, to read or write its settings without
    creating the circuit in this process (``get_circuit`` still says who created it)."""
    circuit = _circuits.get(name)
    if circuit is not None:
        return circuit
    with _lock:
        circuit = _circuits.get(name) or _holders.get(name)
        if circuit is None or circuit._shared.path.parent != _shared.shared_dir():
            impl = _impl.current()
            shared = _file(name)
            circuit = impl.CircuitBreaker(
                name, _local_settings(name), DefaultMetricCollector(name), [], _clock.get_clock()
            )
            circuit._attach(shared, None)
            _holders[name] = circuit
        return circuit


def _create(name: str) -> Any:
    """Build and register the circuit of ``name`` (with ``_lock`` held)."""
    if len(_circuits) - (REFUSED_NAME in _circuits) >= _max_circuits and not _evict():
        raise CircuitLimitError(
            f"circuit {name!r} not created: this process holds max_circuits={_max_circuits} "
            "circuits and none is evictable (closed, idle, not forced, not configured)"
        )
    settings = _local_settings(name)
    impl = _impl.current()
    # With sharing, the file first: a name the directory cannot take fails before anything changes.
    shared = _file(name) if _shared.shared_dir() is not None else None
    default = DefaultMetricCollector(name)
    collectors = registry.initialize_metric_collectors(name)
    circuit = impl.CircuitBreaker(name, settings, default, collectors, _clock.get_clock())
    circuit._workers = workers.for_command()  # the process's one pool: threads bounded, not per name
    if shared is not None:
        circuit._attach(shared, None)  # the file's settings: the last writer's, from any process
        _holders.pop(name, None)
    _circuits[name] = circuit
    return circuit


def circuits() -> dict[str, Any]:
    """A copy of the circuit table; with shared circuits, every circuit of the host (mapped here)."""
    if _shared.shared_dir() is not None:
        _discover()
    with _lock:
        return dict(_circuits)


def _discover() -> None:
    """Map the circuits other processes created in the shared directory."""
    for path in _shared.circuit_files():
        name = _shared.read_name(path)
        if name is not None and name not in _circuits:
            try:
                get_circuit(name)
            except (_shared.SharedStateError, ValueError) as exc:
                from ._core._log import logger

                logger.warning("shared circuit %s not mapped: %s", path.name, exc)


def share_circuits(path: str | os.PathLike[str]) -> Path:
    """Share every circuit of this process with the other processes using directory ``path``.

    One breaker, one concurrency limit, one set of settings and one rolling window per
    command name for every worker process of a server (gunicorn ``-w N``, uvicorn
    ``--workers N``, multiprocessing): call it before the first command, in the master
    before it forks or in each worker, or set ``FASTHYSTRIX_SHARED_DIR``. The directory
    is created (mode 700) if missing; it must belong to this user and not be writable by
    others. It holds one server's state: clear it when the server starts. Calling again
    with the same path does nothing; another path raises ``RuntimeError``. Returns the
    absolute directory.
    """
    return _shared.share_circuits(path, circuits_exist=lambda: len(_circuits))


def flush() -> None:
    """Reset and forget every circuit (settings are kept), as hystrix-go's ``Flush``.

    Also stops the idle worker threads and the deadline timer, so
    nothing of fasthystrix keeps running; a run still executing finishes on
    its thread, which then exits. Settings of names never configured explicitly
    (the defaults they took at first use) are forgotten with their circuits, so
    their memory is given back.
    """
    global _evicted_total, _refused_total
    with _lock:
        flushed = list(_circuits.values())
        _circuits.clear()
        _holders.clear()
        # Rebuilt, not deleted from: a dict keeps its table's size after deletions.
        kept = {name: settings for name, settings in _settings.items() if name in _configured}
        _settings.clear()
        _settings.update(kept)
        _evicted_total = _refused_total = 0
    for circuit in flushed:
        if getattr(circuit, "_shared", None) is not None:
            circuit._reset_state()  # host-wide: the next command of any process starts afresh
        circuit._default.reset()
        for collector in circuit._collectors:
            try:
                collector.reset()
            except Exception:
                logger.exception("metric collector %r failed to reset", collector)
    workers.retire()
    timer.discard_finished()
    _shared.stop_reaper()


# -- fork safety -------------------------------------------------------------------------

# The circuits whose locks the forking thread holds across a fork (set by _before_fork).
_held_across_fork: list[Any] = []


def _before_fork() -> None:
    """Hold the table's lock and every circuit's lock across the fork.

    So the child starts from a table and rolling windows that no thread was changing
    (the pure twin changes a window in several steps under its circuit's lock). The
    forking thread may already hold the table's lock (a collector factory that forks):
    it is reentrant. It never holds a circuit's lock while user code runs.
    """
    _lock.acquire()
    _held_across_fork.clear()
    for circuit in list(_circuits.values()):
        if circuit._shared is not None:
            # Its state is in the shared file, which the parent's threads go on updating (each
            # change under the file's lock): nothing of it is left half-done in the child.
            continue
        circuit._lock.acquire()
        _held_across_fork.append(circuit)  # only once held: the handlers after release these


def _after_fork_in_parent() -> None:
    for circuit in reversed(_held_across_fork):
        circuit._lock.release()
    _held_across_fork.clear()
    _lock.release()


def _after_fork_in_child() -> None:
    """Make the child's fasthystrix work: it keeps the parent's settings, circuit states and
    rolling windows, minus what ran on the parent's other threads.

    Only the forking thread exists in the child (Python's own ``threading`` handler has run).
    Each circuit holds no ticket (see ``TicketPool._after_fork_in_child``), its worker pool
    forgets the parent's threads, the deadline timer gets a new thread, and every lock that a
    thread gone with the fork may have held is replaced.
    """
    try:
        for circuit in reversed(_held_across_fork):
            circuit._lock.release()
        _held_across_fork.clear()
        # First the locks this handler takes itself (the timer's, to read its deadlines).
        timer._after_fork_in_child()
        workers._after_fork_in_child()
        for circuit in _circuits.values():
            circuit._after_fork_in_child()
            for collector in circuit._collectors:
                # Collectors that keep a lock or a thread say how to rebuild it (CumulativeCollector).
                rebuild = getattr(collector, "_after_fork_in_child", None)
                if rebuild is not None:
                    try:
                        rebuild()
                    except Exception:
                        logger.exception("metric collector %r failed to rebuild after a fork", collector)
        _command._after_fork_in_child()
        _transitions._lock = threading.Lock()
        _config._defaults_lock = threading.Lock()
        registry._lock = threading.Lock()
        clock = _clock.get_clock()
        if isinstance(clock, _clock.ManualClock):
            clock._lock = threading.Lock()
        # Shared circuits: a process slot of the child's own in each file, and its own reaper
        # (after the circuits above reset what is private to them).
        _shared._after_fork_in_child()
        # Last: its thread calls back into the commands, the circuits and their pools.
        timer.resume()
    finally:
        _lock.release()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

_command.bind(_circuits, get_or_create)
_impl.current().bind(_circuits, get_or_create, run_threaded)
