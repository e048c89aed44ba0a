"""Host-wide circuits: the shared directory, its circuit files and their layout.

With sharing on (``FASTHYSTRIX_SHARED_DIR`` or :func:`share_circuits`), each
command name has one file in the directory, mapped into every process that
uses the name: its settings, its state word, its tickets, its rolling window
and latency histograms live there, so every worker process of a server sees
one circuit. The compiled core updates the mapping with the same C atomics as
a private circuit; the pure core with a lock on the file around each update.
All processes sharing a directory must run the same implementation (the file
says which one made it).

A file is ``SIZE`` bytes, made of 64-byte aligned regions (offsets below):

- ``HEADER``: magic, layout version, implementation, size, name length;
- ``NAME``: the command name, UTF-8 (lone surrogates kept), at most ``NAME_MAX`` bytes;
- ``LIMITS``: the settings as int64 words (``LIMIT_*`` indices) and their version;
- ``STATE``: the state word, the time it opened (or of its last trial), the open
  episode, the circuit's spinlock, the process slot of the last trial;
- ``TICKETS``: the host's tickets in use;
- ``WINDOW``: the rolling window (``_rolling``'s totals, latency stats);
- ``GEOM``: the window's geometry (bucket width in ns, bucket count) and its buckets, room for
  ``MAX_ROLLING_BUCKETS`` of them (every geometry, the default included, counts here);
- ``HIST``: the latency histograms, 4 slots x (run, total) x ``LATENCY_BUCKETS`` uint32;
- ``PROCS``: ``MAX_PROCESSES`` process slots of 64 bytes (pid, start time, tickets it holds).

A process claims a slot in each circuit file it maps. When a process dies, a
reaper thread in each surviving process (every ``REAP_INTERVAL`` s) gives its
tickets back and frees its trial, so a killed worker costs the others at most
that long.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import mmap
import os
import stat
import struct
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._backoff import PPM, ppm
from ._config import MAX_ROLLING_BUCKETS, Settings

__all__ = [
    "MAX_CIRCUITS",
    "MAX_PROCESSES",
    "NAME_MAX",
    "REAP_INTERVAL",
    "SIZE",
    "SharedCircuitFile",
    "SharedStateError",
    "process_alive",
    "share_circuits",
    "shared_dir",
]


class SharedStateError(RuntimeError):
    """A shared circuit file or directory cannot be used: foreign, corrupt, or over a limit."""


MAGIC = b"FHCIRC\x00\x01"
LAYOUT_VERSION = 3
IMPL_CODES = {"compiled": 1, "pure": 2}
SUFFIX = ".circuit"

# Region offsets (bytes). The compiled core's structs in _shared.h have the same sizes;
# tests/test_shared_layout.py checks them against these.
HEADER = 0
NAME = 256
NAME_MAX = 1024
LIMITS = NAME + NAME_MAX  # 1280
LIMIT_WORDS = 32
STATE = LIMITS + 8 * LIMIT_WORDS  # 1536
TICKETS = STATE + 64  # 1600
WINDOW = TICKETS + 64  # 1664
WINDOW_SIZE = 1440
GEOM = WINDOW + WINDOW_SIZE + 32  # 3136: a cache line of its own
GEOM_HEADER = 32  # fh_geometry's width_ns, n and two unused words; then the buckets
GEOM_WIDTH = 0  # GEOM words: the bucket width in ns, the bucket count
GEOM_BUCKETS = 1
BUCKET_WORDS = 13  # FH_BUCKET_WIDTH: the 9 events, executed, max active, bad requests, slow calls
# Rounded up to whole cache lines, so that HIST starts on one.
GEOM_SIZE = (GEOM_HEADER + MAX_ROLLING_BUCKETS * BUCKET_WORDS * 8 + 63) // 64 * 64  # 8384
HIST = GEOM + GEOM_SIZE  # 11520: the histograms start on a cache line of their own
LATENCY_BUCKETS = (20 << 6) + 128
HIST_SIZE = 4 * 2 * LATENCY_BUCKETS * 4  # 45056
PROCS = HIST + HIST_SIZE  # 58624
MAX_PROCESSES = 128
PROC_SIZE = 64
SIZE = PROCS + MAX_PROCESSES * PROC_SIZE  # 64768

# LIMITS words.
LIMIT_TIMEOUT_NS = 0
LIMIT_SLEEP_WINDOW_NS = 1
LIMIT_MAX_CONCURRENT = 2
LIMIT_VOLUME = 3
LIMIT_ERROR_PERCENT = 4
LIMIT_SEMAPHORE = 5
LIMIT_VERSION = 6  # bumped by every settings write
LIMIT_BREAKER_DISABLED = 7  # circuit_breaker_enabled=False (negated: a zeroed word is the default)
LIMIT_REJECTIONS_NOT_ERRORS = 8  # rejections_count_as_errors=False
LIMIT_SLEEP_EXTRA_PPM = 9  # (sleep_window_multiplier - 1) in millionths
LIMIT_MAX_SLEEP_NS = 10  # max_sleep_window in ns (0: none)
LIMIT_SLEEP_JITTER_PPM = 11  # sleep_window_jitter in millionths
LIMIT_HALF_OPEN_CALLS = 12  # half_open_max_calls (0 reads as 1)
LIMIT_HALF_OPEN_WAIT_NS = 13  # half_open_max_wait in ns (0: no bound)
LIMIT_SLOW_US = 14  # slow_call_duration in us (0: off)
LIMIT_SLOW_RATE = 15  # slow_call_rate_threshold (0 reads as 100)
LIMIT_WINDOW_BUCKET_NS = 16  # rolling_window / rolling_buckets in ns (0 reads as 1 s)
LIMIT_WINDOW_BUCKETS = 17  # rolling_buckets (0 reads as 10)
LIMIT_LAST = LIMIT_WINDOW_BUCKETS

# STATE words.
STATE_WORD = 0
STATE_OPENED_NS = 1
STATE_EPISODE = 2
STATE_LOCK = 3
STATE_TRIAL_SLOT = 4
STATE_REOPENS = 5
STATE_SLEEP_RAW_NS = 6
STATE_SLEEP_NS = 7

# TICKETS words.
TICKETS_IN_USE = 0
TICKETS_PROBES = 1  # a half-open phase's trials: admitted, finished, failed (21 bits each)

# PROCS words (per slot).
PROC_PID = 0
PROC_START = 1
PROC_TICKETS = 2
PROC_PROBE_PHASE = 3  # the half-open phase whose trials this process runs (their verdict)
PROC_PROBES = 4  # how many of them it runs now (the reaper counts a dead process's as failed)

MAX_CIRCUITS = 1024
"""Circuit files a shared directory may hold (at most 1024 x 65.25 KiB = 65.25 MiB of shared memory);
a new name past it raises :class:`SharedStateError`."""

REAP_INTERVAL = 0.1
"""Seconds between two checks for dead processes: a killed worker's tickets and trial come back
within this (plus one check's time), well under 1 s."""

_HEADER = struct.Struct("<8sqqqq")  # magic, layout version, implementation, size, name length
_Q = struct.Struct("<q")
BOOT = HEADER + _HEADER.size  # the boot the file's times and pids belong to (see _boot_id)


def _boot_id() -> int:
    """This boot of the machine, as a number: monotonic times and pids mean nothing across a
    reboot, and a file on disk may outlive one (Linux: the kernel's boot id; 0 elsewhere)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return int.from_bytes(hashlib.sha256(f.read().strip()).digest()[:7], "little")
    except OSError:
        return 0


_BOOT_ID = _boot_id()

_lock = threading.Lock()
_dir: Path | None = None


def shared_dir() -> Path | None:
    """The directory circuits are shared through, or ``None`` (each process has its own)."""
    return _dir


def share_circuits(path: str | os.PathLike[str], *, circuits_exist: Callable[[], int] | None = None) -> Path:
    """Share every circuit of this process through ``path`` (see :func:`fasthystrix.share_circuits`)."""
    global _dir
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {path!r}")
    directory = Path(os.fspath(path)).absolute()
    if not str(directory).strip() or not os.fspath(path):
        raise ValueError("path must not be empty")
    with _lock:
        if _dir is not None:
            if _dir == directory:
                return _dir
            raise RuntimeError(
                f"circuits are already shared through {str(_dir)!r}; cannot switch to {str(directory)!r}"
            )
        existing = circuits_exist() if circuits_exist is not None else 0
        if existing:
            raise RuntimeError(
                f"share_circuits() must be called before the first command: {existing} private circuit(s) "
                "exist in this process (call it at startup, or flush() first)"
            )
        _check_directory(directory)
        _dir = directory
    return directory


def _unshare() -> None:
    """Stop sharing (tests only: circuits mapped so far stay mapped)."""
    global _dir
    with _lock:
        _dir = None


def _check_directory(directory: Path) -> None:
    if sys.platform == "win32":
        raise NotImplementedError("shared circuits need POSIX shared memory and process checks (not Windows)")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(directory, follow_symlinks=False)
    except OSError as exc:
        raise SharedStateError(f"shared circuit directory {str(directory)!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise SharedStateError(f"shared circuit directory {str(directory)!r} is not a directory (a symlink?)")
    if info.st_uid != os.geteuid():
        raise SharedStateError(
            f"shared circuit directory {str(directory)!r} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.geteuid()}): another user could change every circuit"
        )
    if info.st_mode & 0o022:
        raise SharedStateError(
            f"shared circuit directory {str(directory)!r} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}): chmod go-w it, or use a directory of your own"
        )


def _encode_name(name: str) -> bytes:
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > NAME_MAX:
        raise ValueError(
            f"a shared circuit's name is at most {NAME_MAX} bytes of UTF-8, got {len(encoded)}: {name[:60]!r}..."
        )
    return encoded


def file_name(name: str) -> str:
    """The file of command ``name`` in the shared directory (a hash: names may hold any character)."""
    return hashlib.sha256(_encode_name(name)).hexdigest()[:40] + SUFFIX


def circuit_files(directory: Path | None = None) -> list[Path]:
    """The circuit files in the shared directory."""
    directory = directory or _dir
    if directory is None:
        return []
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []


def _count_files(directory: Path) -> int:
    try:
        return sum(1 for name in os.listdir(directory) if name.endswith(SUFFIX))
    except FileNotFoundError:
        return 0


def read_name(path: Path) -> str | None:
    """The command name a circuit file holds, or ``None`` if it is not one of ours (yet)."""
    try:
        with open(path, "rb") as f:
            head = f.read(NAME + NAME_MAX)
    except OSError:
        return None
    if len(head) < NAME or head[:8] != MAGIC:
        return None
    _, _, _, _, length = _HEADER.unpack_from(head, 0)
    if not 0 <= length <= NAME_MAX:
        return None
    return head[NAME : NAME + length].decode("utf-8", "surrogatepass")


def _start_time(pid: int) -> int:
    """The process' start time in clock ticks since boot (Linux), 0 elsewhere: with the pid, an
    identity that a reused pid does not have."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    # The command field may hold spaces and parentheses: the fields follow the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else 0


def process_alive(pid: int, start: int) -> bool:
    """Whether the process that claimed a slot as ``(pid, start)`` still runs (a zombie does not)."""
    if not 0 < pid < 2**31:
        return False  # no process has that pid: a corrupt slot
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's: not ours, but alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    fields = data[data.rfind(b")") + 2 :].split()
    if fields and fields[0] == b"Z":
        return False  # killed, not yet reaped by its parent
    return not (start and len(fields) > 19 and int(fields[19]) != start)


class _FileLock:
    __slots__ = ("shared",)

    def __init__(self, shared: SharedCircuitFile) -> None:
        self.shared = shared

    def __enter__(self) -> None:
        import fcntl

        self.shared._tlock.acquire()
        try:
            fcntl.flock(self.shared.fd, fcntl.LOCK_EX)
        except BaseException:
            self.shared._tlock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        import fcntl

        try:
            fcntl.flock(self.shared.fd, fcntl.LOCK_UN)
        finally:
            self.shared._tlock.release()


class SharedCircuitFile:
    """One command's circuit file, mapped: what a circuit of either implementation is attached to.

    ``map`` is the shared ``mmap`` (``SIZE`` bytes); ``slot`` the process slot this
    process claimed in it. The file descriptor stays open for the process' life
    (the pure core locks it around updates).
    """

    __slots__ = ("__weakref__", "_tlock", "fd", "impl", "map", "name", "path", "slot")

    def __init__(self, name: str, impl: str, settings: Settings, directory: Path | None = None) -> None:
        directory = directory or _dir
        if directory is None:
            raise RuntimeError("circuits are not shared (share_circuits() was not called)")
        encoded = _encode_name(name)
        self.name = name
        self.impl = impl
        self.path = directory / file_name(name)
        self.slot = -1
        self._tlock = threading.Lock()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        if not self.path.exists() and _count_files(directory) >= MAX_CIRCUITS:
            raise SharedStateError(
                f"{str(directory)!r} already holds {MAX_CIRCUITS} shared circuits (MAX_CIRCUITS): "
                f"cannot add {name[:80]!r}; clear the directory when the server starts"
            )
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise SharedStateError(f"cannot open shared circuit file {str(self.path)!r}: {exc.strerror}") from exc
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                info = os.fstat(fd)
                if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                    raise SharedStateError(
                        f"shared circuit file {str(self.path)!r} has owner uid {info.st_uid} and mode "
                        f"{stat.S_IMODE(info.st_mode):o}; expected this user's and 600"
                    )
                fresh = info.st_size == 0
                if fresh:
                    os.ftruncate(fd, SIZE)
                elif info.st_size != SIZE:
                    raise SharedStateError(
                        f"shared circuit file {str(self.path)!r} is {info.st_size} bytes, not {SIZE}: corrupt, or "
                        f"made by another fasthystrix version (clear the directory when no server uses it)"
                    )
                self.map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                if fresh:
                    self._initialize(encoded, settings)
                else:
                    self._validate(encoded)
                    if _Q.unpack_from(self.map, BOOT)[0] != _BOOT_ID:
                        self._forget_last_boot()
                self._claim_slot()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        # The mapping stays valid without it (mmap holds a descriptor of its own).
        weakref.finalize(self, os.close, fd)

    def _initialize(self, encoded: bytes, settings: Settings) -> None:
        m = self.map
        m[NAME : NAME + len(encoded)] = encoded
        write_settings(m, settings, bump=False)
        _initialize_window(m)
        _Q.pack_into(m, BOOT, _BOOT_ID)
        # The header last: a file whose magic is there is complete.
        _HEADER.pack_into(m, HEADER, MAGIC, LAYOUT_VERSION, IMPL_CODES[self.impl], SIZE, len(encoded))

    def _forget_last_boot(self) -> None:
        """The file was written before the machine rebooted: its times (window, opening, trial)
        and its process slots belong to clocks and pids of that boot. Keep the name and the
        settings, start everything else afresh (no process of that boot can still use it)."""
        m = self.map
        m[STATE:SIZE] = bytes(SIZE - STATE)
        _initialize_window(m)
        _Q.pack_into(m, BOOT, _BOOT_ID)

    def _validate(self, encoded: bytes) -> None:
        magic, version, impl, size, length = _HEADER.unpack_from(self.map, HEADER)
        where = f"shared circuit file {str(self.path)!r}"
        if magic != MAGIC:
            raise SharedStateError(f"{where} is not a fasthystrix circuit file (bad magic {magic!r})")
        if version != LAYOUT_VERSION or size != SIZE:
            raise SharedStateError(
                f"{where} has layout version {version} and size {size}; this fasthystrix writes version "
                f"{LAYOUT_VERSION}, size {SIZE} (clear the directory when no server uses it)"
            )
        if impl != IMPL_CODES[self.impl]:
            names = {v: k for k, v in IMPL_CODES.items()}
            raise SharedStateError(
                f"{where} is used by the {names.get(impl, f'unknown ({impl})')} implementation; this process runs "
                f"the {self.impl} one, and all processes sharing a directory must run the same one"
            )
        if length != len(encoded) or self.map[NAME : NAME + length] != encoded:
            raise SharedStateError(f"{where} holds another command's circuit (hash collision or corrupt name)")
        width, buckets = struct.unpack_from("<qq", self.map, GEOM)
        if width <= 0 or not 1 <= buckets <= MAX_ROLLING_BUCKETS:
            raise SharedStateError(f"{where} has a corrupt rolling window: {buckets} buckets of {width} ns")

    # -- process slots (claimed and freed under the file lock) -----------------------------

    def _proc_word(self, slot: int, word: int) -> int:
        return PROCS + slot * PROC_SIZE + 8 * word

    def _claim_slot(self) -> None:
        m = self.map
        pid = os.getpid()
        start = _start_time(pid)
        free = -1
        for slot in range(MAX_PROCESSES):
            (owner,) = _Q.unpack_from(m, self._proc_word(slot, PROC_PID))
            if owner == pid and _Q.unpack_from(m, self._proc_word(slot, PROC_START))[0] == start:
                self.slot = slot  # this process' slot (another circuit object of the same name)
                return
            # A slot of a dead process whose pid this one reuses is not ours: the reaper frees it.
            if owner == 0 and free < 0:
                free = slot
        if free < 0:
            raise SharedStateError(
                f"{MAX_PROCESSES} live processes already share circuit {self.name[:80]!r} (MAX_PROCESSES); "
                "dead ones are freed by the survivors' reaper within a second"
            )
        _Q.pack_into(m, self._proc_word(free, PROC_START), start)
        _Q.pack_into(m, self._proc_word(free, PROC_TICKETS), 0)
        _Q.pack_into(m, self._proc_word(free, PROC_PID), pid)
        self.slot = free

    def reclaim_after_fork(self) -> None:
        """In a forked child: claim a slot of this process's own (the parent keeps its slot).

        Through a descriptor of its own first: the inherited one shares its open file (and so
        its ``flock``) with the parent, which it would not exclude."""

        self._tlock = threading.Lock()
        fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        old, self.fd = self.fd, fd
        weakref.finalize(self, os.close, fd)
        try:
            os.close(old)  # the parent's open file stays open in the parent
        except OSError:
            pass
        with self.locked():
            self.slot = -1
            self._claim_slot()

    def locked(self) -> Any:
        """The file's lock for slot changes: this process' threads (a lock) and other processes
        (``flock``, which threads sharing one descriptor would not exclude)."""
        return _FileLock(self)

    def dead_slots(self, alive: dict[tuple[int, int], bool] | None = None) -> Iterator[int]:
        """Slots claimed by processes that no longer run (``alive``: verdicts already made this
        round, by ``(pid, start)``, so that each process is checked once however many files)."""
        me = os.getpid()
        words = _PIDS.unpack_from(self.map, PROCS)
        for slot in range(MAX_PROCESSES):
            pid, start = words[2 * slot], words[2 * slot + 1]
            if pid == 0 or pid == me:
                continue
            verdict = None if alive is None else alive.get((pid, start))
            if verdict is None:
                verdict = process_alive(pid, start)
                if alive is not None:
                    alive[(pid, start)] = verdict
            if not verdict:
                yield slot

    def busy(self) -> bool:
        """Whether a dead process could hold something here: tickets in use, or the circuit open."""
        return bool(_Q.unpack_from(self.map, TICKETS)[0] or _Q.unpack_from(self.map, STATE)[0])

    def free_slot(self, slot: int, pid_seen: int | None = None) -> None:
        """Give a dead process' slot back (after its tickets were reclaimed)."""
        _Q.pack_into(self.map, self._proc_word(slot, PROC_PID), 0)

    def slot_pid(self, slot: int) -> int:
        return int(_Q.unpack_from(self.map, self._proc_word(slot, PROC_PID))[0])

    def live_processes(self) -> int:
        """How many processes have this circuit mapped now (dead ones not yet reaped excluded)."""
        n = 0
        for slot in range(MAX_PROCESSES):
            (pid,) = _Q.unpack_from(self.map, self._proc_word(slot, PROC_PID))
            if pid:
                (start,) = _Q.unpack_from(self.map, self._proc_word(slot, PROC_START))
                n += process_alive(pid, start)
        return n


def _initialize_window(m: Any) -> None:
    """A new (or zeroed) window: latency slots unused (stamp -1), as a private window's, and the
    geometry of the settings in the LIMITS words (the window's, whose counts are gone)."""
    words = memoryview(m).cast("q")
    stamps = (WINDOW + 8 * (130 + 4 + 24)) // 8
    for i in range(4):
        words[stamps + i] = -1
    words[GEOM // 8 + GEOM_WIDTH] = words[LIMITS // 8 + LIMIT_WINDOW_BUCKET_NS] or 1_000_000_000
    words[GEOM // 8 + GEOM_BUCKETS] = words[LIMITS // 8 + LIMIT_WINDOW_BUCKETS] or 10
    words.release()


# -- settings, as int64 words ------------------------------------------------------------------


def write_settings(m: Any, settings: Settings, bump: bool = True) -> None:
    """Store ``settings`` in a file's LIMITS region (the caller holds the circuit's lock)."""
    base = LIMITS
    values = (
        settings.timeout_ns,
        settings.sleep_window_ns,
        settings.max_concurrent_requests,
        settings.request_volume_threshold,
        settings.error_percent_threshold,
        1 if settings.semaphore else 0,
    )
    for i, v in enumerate(values):
        _Q.pack_into(m, base + 8 * i, v)
    _Q.pack_into(m, base + 8 * LIMIT_BREAKER_DISABLED, 0 if settings.circuit_breaker_enabled else 1)
    _Q.pack_into(m, base + 8 * LIMIT_REJECTIONS_NOT_ERRORS, 0 if settings.rejections_count_as_errors else 1)
    _Q.pack_into(m, base + 8 * LIMIT_SLEEP_EXTRA_PPM, ppm(settings.sleep_window_multiplier - 1.0))
    _Q.pack_into(m, base + 8 * LIMIT_MAX_SLEEP_NS, settings.max_sleep_window_ns)
    _Q.pack_into(m, base + 8 * LIMIT_SLEEP_JITTER_PPM, ppm(settings.sleep_window_jitter))
    _Q.pack_into(m, base + 8 * LIMIT_HALF_OPEN_CALLS, settings.half_open_max_calls)
    _Q.pack_into(m, base + 8 * LIMIT_HALF_OPEN_WAIT_NS, settings.half_open_max_wait_ns)
    _Q.pack_into(m, base + 8 * LIMIT_SLOW_US, (settings.slow_call_duration_ns + 999) // 1000)
    _Q.pack_into(m, base + 8 * LIMIT_SLOW_RATE, settings.slow_call_rate_threshold)
    _Q.pack_into(m, base + 8 * LIMIT_WINDOW_BUCKET_NS, settings.rolling_bucket_ns)
    _Q.pack_into(m, base + 8 * LIMIT_WINDOW_BUCKETS, settings.rolling_buckets)
    if bump:
        (version,) = _Q.unpack_from(m, base + 8 * LIMIT_VERSION)
        _Q.pack_into(m, base + 8 * LIMIT_VERSION, version + 1)


# Settings objects by their words: a process that reads back the settings it wrote gets the very
# object it configured (as without sharing), and equal settings are one object.
_interned: weakref.WeakValueDictionary[tuple[int, ...], Settings] = weakref.WeakValueDictionary()


def _words(settings: Settings) -> tuple[int, ...]:
    return (
        settings.timeout_ns,
        settings.sleep_window_ns,
        settings.max_concurrent_requests,
        settings.request_volume_threshold,
        settings.error_percent_threshold,
        1 if settings.semaphore else 0,
        0 if settings.circuit_breaker_enabled else 1,
        0 if settings.rejections_count_as_errors else 1,
        ppm(settings.sleep_window_multiplier - 1.0),
        settings.max_sleep_window_ns,
        ppm(settings.sleep_window_jitter),
        settings.half_open_max_calls,
        settings.half_open_max_wait_ns,
        (settings.slow_call_duration_ns + 999) // 1000,
        settings.slow_call_rate_threshold,
        settings.rolling_bucket_ns,
        settings.rolling_buckets,
    )


def intern(settings: Settings) -> Settings:
    """Remember ``settings`` as the object that its words read back as (see ``settings_from_words``)."""
    _interned[_words(settings)] = settings
    return settings


def settings_from_words(words: tuple[int, ...], local: Settings | None = None) -> Settings:
    """The :class:`Settings` that the LIMITS words ``words`` (as read) describe, with the fields that
    are code (``ignore``, ``is_failure``) taken from ``local``, this process's settings of the circuit (if any):
    code cannot be shared, each process keeps its own."""
    words = (*words[:LIMIT_HALF_OPEN_CALLS], max(words[LIMIT_HALF_OPEN_CALLS], 1), *words[LIMIT_HALF_OPEN_CALLS + 1 :])
    words = (*words[:LIMIT_SLOW_RATE], words[LIMIT_SLOW_RATE] or 100, *words[LIMIT_SLOW_RATE + 1 :])
    words = (
        *words[:LIMIT_WINDOW_BUCKET_NS],
        words[LIMIT_WINDOW_BUCKET_NS] or 1_000_000_000,
        words[LIMIT_WINDOW_BUCKETS] or 10,
    )
    key = (*words[:6], *words[LIMIT_BREAKER_DISABLED : LIMIT_LAST + 1])
    known = _interned.get(key)
    if known is not None:
        return _with_code_of(known, local)
    settings = Settings(
        timeout=timedelta(microseconds=words[LIMIT_TIMEOUT_NS] // 1000),
        max_concurrent_requests=words[LIMIT_MAX_CONCURRENT],
        request_volume_threshold=words[LIMIT_VOLUME],
        sleep_window=timedelta(microseconds=words[LIMIT_SLEEP_WINDOW_NS] // 1000),
        error_percent_threshold=words[LIMIT_ERROR_PERCENT],
        isolation="semaphore" if words[LIMIT_SEMAPHORE] else "thread",
        circuit_breaker_enabled=not words[LIMIT_BREAKER_DISABLED],
        rejections_count_as_errors=not words[LIMIT_REJECTIONS_NOT_ERRORS],
        sleep_window_multiplier=1.0 + words[LIMIT_SLEEP_EXTRA_PPM] / PPM,
        max_sleep_window=timedelta(microseconds=words[LIMIT_MAX_SLEEP_NS] // 1000)
        if words[LIMIT_MAX_SLEEP_NS]
        else None,
        sleep_window_jitter=words[LIMIT_SLEEP_JITTER_PPM] / PPM,
        half_open_max_calls=words[LIMIT_HALF_OPEN_CALLS],
        half_open_max_wait=timedelta(microseconds=words[LIMIT_HALF_OPEN_WAIT_NS] // 1000)
        if words[LIMIT_HALF_OPEN_WAIT_NS]
        else None,
        slow_call_duration=timedelta(microseconds=words[LIMIT_SLOW_US]) if words[LIMIT_SLOW_US] else None,
        slow_call_rate_threshold=words[LIMIT_SLOW_RATE],
        rolling_window=timedelta(microseconds=words[LIMIT_WINDOW_BUCKET_NS] * words[LIMIT_WINDOW_BUCKETS] // 1000),
        rolling_buckets=words[LIMIT_WINDOW_BUCKETS],
    )
    _interned[key] = settings
    return _with_code_of(settings, local)


def _with_code_of(settings: Settings, local: Settings | None) -> Settings:
    # An adaptive limit is this process's too: its limiter runs on this process's samples and
    # stores into the host's limit word, so that word is not the settings' initial limit.
    ignore = None if local is None else local.ignore
    is_failure = None if local is None else local.is_failure
    adaptive = None if local is None else local.adaptive_limit
    # The queue of calls waiting for a ticket is this process's: so is its max_queue_wait.
    queue_wait = timedelta(0) if local is None else local.max_queue_wait
    if (
        settings.ignore is ignore
        and settings.is_failure is is_failure
        and settings.adaptive_limit is adaptive
        and settings.max_queue_wait == queue_wait
    ):
        return settings
    if adaptive is not None:
        return dataclasses.replace(
            settings,
            ignore=ignore,
            is_failure=is_failure,
            adaptive_limit=adaptive,
            max_concurrent_requests=adaptive.initial,
            max_queue_wait=queue_wait,
        )
    return dataclasses.replace(
        settings, ignore=ignore, is_failure=is_failure, adaptive_limit=None, max_queue_wait=queue_wait
    )


# -- the reaper -----------------------------------------------------------------------------------

_mapped: weakref.WeakSet[Any] = weakref.WeakSet()  # circuits attached to a file in this process
# The reaper thread and the event that stops it. Each reaper has an event of its own, set once and
# never cleared: a stop request reaches the thread it was made for whatever other flush() calls
# start or stop meanwhile (with one event for all, a flush that had stopped its reaper cleared it
# while another flush's reaper had yet to see it, and that flush waited forever).
_reaper: tuple[threading.Thread, threading.Event] | None = None


def _start_reaper() -> None:
    """Start a reaper thread (with ``_lock`` held, or in a forked child before other threads)."""
    global _reaper
    stop = threading.Event()
    thread = threading.Thread(target=_reap_forever, args=(stop,), name="fasthystrix-reaper", daemon=True)
    _reaper = (thread, stop)
    thread.start()


def register(circuit: Any) -> None:
    """Watch ``circuit``'s file for dead processes (starts the reaper thread once)."""
    with _lock:
        _mapped.add(circuit)
        if _reaper is None or not _reaper[0].is_alive():
            _start_reaper()


def reap_once(full: bool = True) -> int:
    """Give back the tickets and trials of every dead process in this process' circuits, and free
    their slots; how many slots. ``full=False`` looks only at circuits with tickets in use or
    open (where a dead process can hold something back), so a round over thousands of idle
    circuits costs a few loads each."""

    reclaimed = 0
    alive: dict[tuple[int, int], bool] = {}
    seen: set[Path] = set()
    for circuit in list(_mapped):
        shared = circuit._shared
        if shared is None or shared.path in seen:
            continue
        seen.add(shared.path)
        try:
            if not full and not shared.busy():
                continue
            dead = list(shared.dead_slots(alive))
            if not dead:
                continue
            with shared.locked():
                for slot in set(dead) & set(shared.dead_slots()):  # again, under the file lock
                    circuit._reclaim_slot(slot)
                    shared.free_slot(slot)
                    reclaimed += 1
        except OSError as exc:
            if exc.errno != errno.EBADF:
                from ._log import logger

                logger.warning("fasthystrix reaper: %s: %s", shared.path, exc)
    return reclaimed


# Every FULL_ROUNDS rounds the reaper looks at every circuit, idle ones included (to free the
# slots of processes that died without holding anything).
FULL_ROUNDS = 50
_PIDS = struct.Struct("<" + "qq48x" * MAX_PROCESSES)  # (pid, start) of each process slot


def stop_reaper() -> None:
    """Stop the reaper thread and wait for it to end (``flush()``: nothing is mapped any more);
    ``register`` starts another."""
    global _reaper
    with _lock:
        reaper, _reaper = _reaper, None
    if reaper is not None:
        thread, stop = reaper
        stop.set()
        if thread is not threading.current_thread():
            thread.join()


def _reap_forever(stop: threading.Event) -> None:
    rounds = 0
    while not stop.wait(REAP_INTERVAL):
        rounds += 1
        try:
            reap_once(full=rounds % FULL_ROUNDS == 0)
        except Exception:  # never let the reaper die: the next round may succeed
            from ._log import logger

            logger.exception("fasthystrix reaper failed")


def _after_fork_in_child() -> None:
    """A forked child: its own slot in every mapped file, and a reaper thread of its own."""
    global _reaper, _lock
    _lock = threading.Lock()
    _reaper = None
    circuits = list(_mapped)
    for circuit in circuits:
        shared = circuit._shared
        if shared is not None:
            try:
                shared.reclaim_after_fork()
            except OSError as exc:
                # Its file is gone (its directory was removed while mapped). The circuits after it
                # must still get slots of their own: a child left in its parent's slot would have
                # its tickets and trials counted as the parent's, never reaped.
                _mapped.discard(circuit)
                from ._log import logger

                logger.warning("fasthystrix: %s: no slot in the forked child: %s", shared.path, exc)
                continue
            circuit._attach_slot()
    if circuits:
        _start_reaper()


# _after_fork_in_child is called by the registry's own fork handler, after the circuits have
# reset what is private to them (so that what _attach_slot sets is what stays).


# Read at import: the environment turns sharing on for the whole process.
_env_dir = os.environ.get("FASTHYSTRIX_SHARED_DIR", "")
if _env_dir:
    share_circuits(_env_dir)
