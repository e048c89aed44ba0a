"""A circuit whose state lives in a shared circuit file (pure-Python twin).

:meth:`CircuitBreaker._attach` turns a new circuit into a
:class:`SharedCircuitBreaker`: the same object and slots, whose open flag, forced
flag, opening time, episode and settings are words of the file (properties over
the mapping), whose tickets are the file's host-wide count
(:class:`SharedTicketPool`) and whose rolling window is the file's
(:class:`~._shared_rolling_py.SharedRollingMetrics`). Every state machine step of
``CircuitBreaker`` then runs unchanged on the host-wide state.

Locking. What the private circuit does under its lock, a shared one does under
its :class:`HostLock`: the circuit's threading lock (a POSIX record lock does not
exclude the threads of one process), then a record lock (``lockf``) on one byte of
the file (``STATE_LOCK``'s), which excludes the other processes. Record locks are
per process, so a forked child never inherits its parent's, and they go when the
process dies, so a killed worker never leaves the circuit locked. They are also
dropped when the process closes any descriptor of the file: a ``SharedCircuitFile``
keeps its descriptor open for the process's life, and nothing else in a process
that maps the file may open and close it (``_shared.read_name`` does: it is only
for files this process has not mapped). The reaper takes the file's
``flock`` (another kind of lock, which does not conflict with record locks) and then
the host lock; nothing takes them in the other order. Because record locks belong to
processes, the kernel may refuse one as a deadlock that is none (``EDEADLK``: two
processes each hold one circuit while another of their threads waits for the other
circuit); :class:`HostLock` tries again.

A shared circuit never takes the lock-free path of ``_gate``: its gate stays closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import weakref
from typing import Any

from . import _shared, _transitions
from ._circuit_py import CircuitBreaker
from ._config import Settings
from ._events import PROBE, probe_phase
from ._shared_rolling_py import SharedRollingMetrics

__all__ = ["HostLock", "SharedCircuitBreaker", "SharedTicketPool", "attach", "host_lock"]

# Word indices (int64) into the whole file.
_LIMITS = _shared.LIMITS // 8
_VERSION = _LIMITS + _shared.LIMIT_VERSION
_SLEEP_WINDOW = _LIMITS + _shared.LIMIT_SLEEP_WINDOW_NS
_STATE_WORD = _shared.STATE // 8 + _shared.STATE_WORD
_OPENED_NS = _shared.STATE // 8 + _shared.STATE_OPENED_NS
_EPISODE = _shared.STATE // 8 + _shared.STATE_EPISODE
_TRIAL_SLOT = _shared.STATE // 8 + _shared.STATE_TRIAL_SLOT
_REOPENS = _shared.STATE // 8 + _shared.STATE_REOPENS
_SLEEP_RAW_NS = _shared.STATE // 8 + _shared.STATE_SLEEP_RAW_NS
_SLEEP_NS = _shared.STATE // 8 + _shared.STATE_SLEEP_NS
_TICKETS = _shared.TICKETS // 8
_PROBES = _TICKETS + _shared.TICKETS_PROBES

# The state word's bits, as the compiled twin's (_circuit.pxd).
_OPEN = 1
_FORCED = 2
_FORCED_CLOSED = 4  # as the compiled twin's STATE_FORCED_CLOSED

# Seconds between two tries of a record lock the kernel refused as a deadlock (see HostLock._lock_file).
_FIRST_PAUSE = 0.00005
_LAST_PAUSE = 0.002

# No process slot: the trial slot of a circuit whose current trial (if any) has reported.
_NO_SLOT = 0  # STATE_TRIAL_SLOT holds the trial's process slot plus one, as the compiled twin

# The byte the record lock covers: STATE_LOCK's first (the compiled twin's spinlock word, unused here).
_LOCK_BYTE = _shared.STATE + 8 * _shared.STATE_LOCK


def _proc_tickets(slot: int) -> int:
    """The word of the tickets held by the process of ``slot``."""
    return (_shared.PROCS + slot * _shared.PROC_SIZE) // 8 + _shared.PROC_TICKETS


def _proc_probe_phase(slot: int) -> int:
    """The word of the half-open phase whose trials the process of ``slot`` runs (then their count)."""
    return (_shared.PROCS + slot * _shared.PROC_SIZE) // 8 + _shared.PROC_PROBE_PHASE


class HostLock:
    """A shared circuit's lock: its threads' lock, then the file's record lock. Reentrant.

    Reentrant because a ticket goes back both under the circuit's lock and
    without it, and a record lock is per process: the first ``__enter__`` of the
    outermost holder takes it, the matching ``__exit__`` releases it. For the same
    reason every circuit object of one file in a process (a circuit and the one
    that replaces it after ``flush()``) shares one ``HostLock`` (see :func:`host_lock`).
    """

    __slots__ = ("__weakref__", "_depth", "_file", "_local", "_pid")

    def __init__(self, shared: _shared.SharedCircuitFile) -> None:
        # The file object, not just its descriptor: the descriptor stays open while the lock exists.
        self._file = shared
        self._local = threading.RLock()
        self._depth = 0  # nesting of the thread holding _local
        self._pid = os.getpid()

    def __enter__(self) -> None:
        self._local.acquire()
        if self._depth == 0:
            try:
                self._lock_file()
            except BaseException:
                self._local.release()
                raise
        self._depth += 1

    def _lock_file(self) -> None:
        fd = self._file.fd
        pause = _FIRST_PAUSE
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, _LOCK_BYTE, os.SEEK_SET)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLK:
                    raise
            # The kernel tracks record locks per process, so it sees a cycle where there is none: a
            # thread of this process holds another circuit's lock while this thread waits, and that
            # holder never waits for anyone (no thread holds two circuits' locks at once): it will
            # let go. Try again shortly.
            time.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                fcntl.lockf(self._file.fd, fcntl.LOCK_UN, 1, _LOCK_BYTE, os.SEEK_SET)
        finally:
            self._local.release()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's holder (its thread does not exist here, and record
        locks are not inherited). Does nothing in the process that made the lock."""
        if os.getpid() != self._pid:
            self._local = threading.RLock()
            self._depth = 0
            self._pid = os.getpid()


# One HostLock per file (device, inode) in this process.
_host_locks: weakref.WeakValueDictionary[tuple[int, int], HostLock] = weakref.WeakValueDictionary()
_host_locks_lock = threading.Lock()


def host_lock(shared: _shared.SharedCircuitFile) -> HostLock:
    """The lock of ``shared``'s file in this process, made on first use."""
    info = os.fstat(shared.fd)
    key = (info.st_dev, info.st_ino)
    with _host_locks_lock:
        lock = _host_locks.get(key)
        if lock is None:
            lock = _host_locks[key] = HostLock(shared)
        return lock


def _after_fork_in_child() -> None:
    global _host_locks_lock
    _host_locks_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Host:
    """A shared circuit's view of its file: the words, the lock, the settings read last."""

    __slots__ = ("lock", "pool", "proc_tickets", "settings", "shared", "version", "window", "words")

    def __init__(self, shared: _shared.SharedCircuitFile) -> None:
        self.shared = shared
        self.words = memoryview(shared.map).cast("q")
        self.lock = host_lock(shared)
        self.proc_tickets = _proc_tickets(shared.slot)
        self.version = -1
        self.settings: Settings | None = None
        self.window = SharedRollingMetrics(shared.map)
        self.pool = SharedTicketPool(self)

    def install(self, circuit: CircuitBreaker) -> None:
        """Point ``circuit`` and its default collector at the file: its lock, window and tickets."""
        default = circuit._default
        default._rolling = self.window
        default._lock = self.lock
        circuit._metrics = self.window
        circuit._pending = self.window._pending
        circuit._admits = self.window._admits
        circuit._tickets = self.pool  # type: ignore[assignment]
        circuit._lock = self.lock
        circuit._host = self
        circuit._shared = self.shared

    def read_settings(self) -> Settings:
        """The file's settings, rebuilt if another writer changed them since the last read."""
        settings = self.settings
        if self.words[_VERSION] != self.version or settings is None:
            with self.lock:  # read the words as one writer left them
                self.version = self.words[_VERSION]
                limits = tuple(self.words[_LIMITS : _LIMITS + _shared.LIMIT_WORDS])
                settings = self.settings = _shared.settings_from_words(limits, settings)
        return settings

    def write_settings(self, settings: Settings) -> None:
        """Make ``settings`` the circuit's for every process (the last writer wins)."""
        with self.lock:
            _shared.write_settings(self.shared.map, settings)
            self.version = self.words[_VERSION]
            self.settings = settings

    def attach_slot(self, circuit: CircuitBreaker) -> None:
        """In a forked child (after ``shared.reclaim_after_fork()``): this process's own slot and lock."""
        self.lock.after_fork()
        self.proc_tickets = _proc_tickets(self.shared.slot)
        # Whatever else the fork hooks renewed in the circuit, its state stays the file's.
        self.install(circuit)

    def reclaim_slot(self, circuit: CircuitBreaker, slot: int) -> None:
        words = self.words
        verdict = None
        with self.lock:
            held = _proc_tickets(slot)
            if words[held] > 0:
                words[_TICKETS] = max(words[_TICKETS] - words[held], 0)
            words[held] = 0
            if words[_STATE_WORD] & _OPEN and words[_TRIAL_SLOT] == slot + 1:
                # Its trial will never report: let the next call take a trial now.
                words[_OPENED_NS] = circuit._clock() - words[_SLEEP_WINDOW] - 1
                words[_TRIAL_SLOT] = _NO_SLOT
            phase = _proc_probe_phase(slot)
            lost, words[phase + 1] = words[phase + 1], 0
            if lost > 0:
                # Its trials of the half-open phase will never report: each counts as failed.
                now = circuit._clock()
                settings = circuit._settings_obj
                for _ in range(lost):
                    verdict = circuit._probe_ended_locked(words[phase], True, now, settings) or verdict
        if verdict == "closed":
            _transitions.closed(circuit.name)
        elif verdict == "reopened":
            _transitions.reopened(circuit.name)


class SharedTicketPool:
    """The host's tickets in use, as a ``TicketPool``: the file's count, and this process's share of it.

    Invariant (under the lock): the host count is the sum of the per-process
    counts, so the reaper gives back exactly what a dead process held.
    """

    __slots__ = ("_held", "_host")

    def __init__(self, host: _Host) -> None:
        self._host = host
        self._held: list[None] = []  # for the circuit's lock-free path, which never runs here

    @property
    def in_use(self) -> int:
        """Tickets taken now, by every process."""
        return self._host.words[_TICKETS]

    def try_take(self, limit: int) -> int:
        """Take a ticket if fewer than ``limit`` are taken: the new count, or ``-1`` (lock held)."""
        host = self._host
        words = host.words
        in_use = words[_TICKETS]
        if in_use >= limit:
            return -1
        words[_TICKETS] = in_use + 1
        words[host.proc_tickets] += 1
        return in_use + 1

    def give_back(self) -> None:
        """Return a ticket this process took."""
        host = self._host
        words = host.words
        with host.lock:
            # A ticket this process does not hold (taken before a fork by the parent, or already
            # given back by a reaper that found this slot's process dead) is not the host's to lose.
            if words[host.proc_tickets] > 0:
                words[host.proc_tickets] -= 1
                words[_TICKETS] -= 1


class SharedCircuitBreaker(CircuitBreaker):
    """A circuit attached to a shared circuit file: its state is the file's (see the module)."""

    # No slots of its own: a CircuitBreaker becomes one by assigning __class__ (same layout).
    # The properties below take the place of the base class's slots of the same names.
    __slots__ = ()

    @property
    def _open(self) -> bool:
        return bool(self._host.words[_STATE_WORD] & _OPEN)

    @_open.setter
    def _open(self, value: bool) -> None:
        words = self._host.words
        words[_STATE_WORD] = words[_STATE_WORD] | _OPEN if value else words[_STATE_WORD] & ~_OPEN

    @property
    def _probes(self) -> int:
        return int(self._host.words[_PROBES])

    @_probes.setter
    def _probes(self, value: int) -> None:
        self._host.words[_PROBES] = value

    @property
    def _reopens(self) -> int:
        return int(self._host.words[_REOPENS])

    @_reopens.setter
    def _reopens(self, value: int) -> None:
        self._host.words[_REOPENS] = value

    @property
    def _sleep_raw_ns(self) -> int:
        return int(self._host.words[_SLEEP_RAW_NS])

    @_sleep_raw_ns.setter
    def _sleep_raw_ns(self, value: int) -> None:
        self._host.words[_SLEEP_RAW_NS] = value

    @property
    def _sleep_ns(self) -> int:
        return int(self._host.words[_SLEEP_NS])

    @_sleep_ns.setter
    def _sleep_ns(self, value: int) -> None:
        self._host.words[_SLEEP_NS] = value

    @property
    def _force_closed(self) -> bool:
        return bool(self._host.words[_STATE_WORD] & _FORCED_CLOSED)

    @_force_closed.setter
    def _force_closed(self, value: bool) -> None:
        words = self._host.words
        words[_STATE_WORD] = words[_STATE_WORD] | _FORCED_CLOSED if value else words[_STATE_WORD] & ~_FORCED_CLOSED

    @property
    def _force_open(self) -> bool:
        return bool(self._host.words[_STATE_WORD] & _FORCED)

    @_force_open.setter
    def _force_open(self, value: bool) -> None:
        words = self._host.words
        words[_STATE_WORD] = words[_STATE_WORD] | _FORCED if value else words[_STATE_WORD] & ~_FORCED

    @property
    def _opened_ns(self) -> int:
        return int(self._host.words[_OPENED_NS])

    @_opened_ns.setter
    def _opened_ns(self, value: int) -> None:
        self._host.words[_OPENED_NS] = value

    @property
    def _episode(self) -> int:
        return int(self._host.words[_EPISODE])

    @_episode.setter
    def _episode(self, value: int) -> None:
        self._host.words[_EPISODE] = value

    @property
    def _limit(self) -> int:
        # The host's limit word: admission in every process reads it; a process with an adaptive
        # limit stores its limiter's value there (the last sample wins, as with the settings).
        limit: int = self._host.words[_LIMITS + _shared.LIMIT_MAX_CONCURRENT]
        return limit

    @_limit.setter
    def _limit(self, value: int) -> None:
        self._host.words[_LIMITS + _shared.LIMIT_MAX_CONCURRENT] = value

    @property
    def _settings_obj(self) -> Settings:
        return self._host.read_settings()  # type: ignore[no-any-return]

    @_settings_obj.setter
    def _settings_obj(self, settings: Settings) -> None:
        self._host.write_settings(settings)

    def _open_gate_locked(self) -> None:
        pass  # the gate stays closed: every call takes the locked path

    def _is_open_locked(self, now: int, settings: Any) -> bool | None:
        opened = super()._is_open_locked(now, settings)
        if opened is None:
            self._host.words[_TRIAL_SLOT] = _NO_SLOT  # a new episode: no trial yet
        return opened

    def _allow_single_test_locked(self, now: int, settings: Any) -> bool:
        if super()._allow_single_test_locked(now, settings):
            # If this process dies before the trial reports, the reaper frees the trial.
            self._host.words[_TRIAL_SLOT] = self._shared.slot + 1
            return True
        return False

    def _probe_admitted_locked(self) -> None:
        # If this process dies before its trials report, the reaper counts them as failed.
        words = self._host.words
        word = _proc_probe_phase(self._shared.slot)
        phase = probe_phase(self._episode, self._reopens)
        if words[word] != phase:
            words[word] = phase
            words[word + 1] = 0
        words[word + 1] += 1

    def _probe_reported_locked(self, phase: int) -> None:
        words = self._host.words
        word = _proc_probe_phase(self._shared.slot)
        if words[word] == phase and words[word + 1] > 0:
            words[word + 1] -= 1

    def _report(
        self, event: int, fallback_event: int, now: int, run_us: int, total_us: int, trial: int, release: bool
    ) -> None:
        if 0 < trial < PROBE:
            host = self._host
            with host.lock:
                if trial == host.words[_EPISODE] and host.words[_TRIAL_SLOT] == self._shared.slot + 1:
                    host.words[_TRIAL_SLOT] = _NO_SLOT  # the trial ends: no longer the reaper's to free
        super()._report(event, fallback_event, now, run_us, total_us, trial, release)


def attach(circuit: CircuitBreaker, shared: _shared.SharedCircuitFile, configured: Settings | None) -> None:
    """``circuit._attach(shared, configured)``: see :meth:`CircuitBreaker._attach`."""
    if circuit._shared is not None:
        raise RuntimeError(f"circuit {circuit.name!r} is attached to a shared file already")
    if type(circuit) is not CircuitBreaker:
        raise TypeError(f"only a pure CircuitBreaker can be attached, not {type(circuit).__name__}")
    if shared.impl != "pure":
        raise ValueError(f"a pure circuit cannot use a file of the {shared.impl} implementation")
    if shared.slot < 0:
        raise RuntimeError(f"no process slot claimed in {str(shared.path)!r}")
    host = _Host(shared)
    if configured is not None:
        with host.lock:  # the window first, as the settings setter: a new window empties it once
            host.window.configure_window(configured.rolling_bucket_ns, configured.rolling_buckets)
            host.write_settings(configured)
    else:
        # The file's settings, with this process's code-valued fields (see settings_from_words).
        host.settings = circuit._settings_obj
        host.read_settings()
    with circuit._lock:  # the private lock (nothing else should hold it: the circuit is unused)
        host.install(circuit)
        # From here on the properties of SharedCircuitBreaker hold the state (see its __slots__).
        circuit.__class__ = SharedCircuitBreaker
    _shared.register(circuit)
