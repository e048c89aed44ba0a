"""The shared circuit file's layout: the compiled core's C structs have the sizes and offsets that
``_shared`` (and the pure core) use for the file's regions."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from fasthystrix import _impl
from fasthystrix._core import _shared
from fasthystrix._core._config import MAX_ROLLING_BUCKETS


def test_regions_are_cache_line_aligned_and_fit_64_kib() -> None:
    regions = (
        _shared.LIMITS,
        _shared.STATE,
        _shared.TICKETS,
        _shared.WINDOW,
        _shared.GEOM,
        _shared.HIST,
        _shared.PROCS,
    )
    for offset in regions:
        assert offset % 64 == 0, offset
    # The sharing issue's bound, at most 64 KiB of shared state per circuit, the largest rolling
    # window included (80 buckets of 13 words: 8 320 bytes).
    assert _shared.SIZE <= 64 * 1024
    assert _shared.WINDOW_SIZE <= _shared.GEOM - _shared.WINDOW < _shared.WINDOW_SIZE + 64
    # Room for the most buckets, rounded up to whole cache lines.
    rows = _shared.GEOM_HEADER + MAX_ROLLING_BUCKETS * _shared.BUCKET_WORDS * 8
    assert rows <= _shared.GEOM_SIZE < rows + 64
    assert _shared.HIST - _shared.GEOM == _shared.GEOM_SIZE
    assert _shared.PROCS - _shared.HIST == _shared.HIST_SIZE
    assert _shared.LIMIT_LAST < _shared.LIMIT_WORDS


def test_a_new_file_has_the_window_of_its_settings(tmp_path: Path) -> None:
    from fasthystrix._core._config import CommandConfig, Settings, get_defaults

    for config, geometry in [
        (CommandConfig(), (1_000_000_000, 10)),
        (CommandConfig(rolling_window=2000, rolling_buckets=4), (500_000_000, 4)),
        (CommandConfig(rolling_window=800, rolling_buckets=MAX_ROLLING_BUCKETS), (10_000_000, MAX_ROLLING_BUCKETS)),
    ]:
        settings = Settings.from_config(config, get_defaults())
        name = f"geometry-{geometry}"
        shared = _shared.SharedCircuitFile(name, _impl.current().name, settings, tmp_path)
        assert struct.unpack_from("<qq", shared.map, _shared.GEOM) == geometry
        words = struct.unpack_from("<qq", shared.map, _shared.LIMITS + 8 * _shared.LIMIT_WINDOW_BUCKET_NS)
        assert words == geometry
        read = _shared.settings_from_words(struct.unpack_from("<32q", shared.map, _shared.LIMITS))
        assert (read.rolling_window, read.rolling_buckets) == (settings.rolling_window, settings.rolling_buckets)


def test_a_file_with_a_corrupt_window_is_refused(tmp_path: Path) -> None:
    from fasthystrix._core._config import CommandConfig, Settings, get_defaults

    settings = Settings.from_config(CommandConfig(), get_defaults())
    first = _shared.SharedCircuitFile("corrupt-window", _impl.current().name, settings, tmp_path)
    struct.pack_into("<q", first.map, _shared.GEOM + 8 * _shared.GEOM_BUCKETS, MAX_ROLLING_BUCKETS + 1)
    with pytest.raises(_shared.SharedStateError, match=f"corrupt rolling window: {MAX_ROLLING_BUCKETS + 1} buckets"):
        _shared.SharedCircuitFile("corrupt-window", _impl.current().name, settings, tmp_path)


@pytest.mark.skipif(_impl.COMPILED is None, reason="the compiled core is not built")
def test_compiled_structs_match_the_file_layout() -> None:
    from fasthystrix._core import _circuit

    layout = _circuit._layout()
    assert layout["limits"] == _shared.STATE - _shared.LIMITS
    assert layout["limits.version"] == 8 * _shared.LIMIT_VERSION
    assert layout["state"] == _shared.TICKETS - _shared.STATE
    assert layout["state.lock"] == 8 * _shared.STATE_LOCK
    assert layout["state.trial_slot"] == 8 * _shared.STATE_TRIAL_SLOT
    assert layout["state.sleep_ns"] == 8 * _shared.STATE_SLEEP_NS
    assert layout["limits.sleep_jitter_ppm"] == 8 * _shared.LIMIT_SLEEP_JITTER_PPM
    assert layout["limits.half_open_wait_ns"] == 8 * _shared.LIMIT_HALF_OPEN_WAIT_NS
    assert layout["limits.slow_us"] == 8 * _shared.LIMIT_SLOW_US
    assert layout["limits.slow_rate"] == 8 * _shared.LIMIT_SLOW_RATE
    from fasthystrix._core import _shared_rolling_py

    assert layout["window.slow"] == 8 * _shared_rolling_py._SLOW - _shared.WINDOW
    assert layout["tickets.probes"] == 8 * _shared.TICKETS_PROBES
    assert layout["proc.probes"] == 8 * _shared.PROC_PROBES
    assert layout["tickets"] == _shared.WINDOW - _shared.TICKETS
    assert layout["window"] == _shared.WINDOW_SIZE
    assert layout["window.requests"] == 8 * 130
    assert layout["window.stats"] == 8 * 134
    # _shared initialises the latency stamps of a new file at this offset.
    assert layout["window.stamp"] == 8 * (130 + 4 + 24)
    assert layout["window.retired"] == layout["window.stamp"] + 8 * 4
    assert layout["window.rejections"] == layout["window.retired"] + 8 * 16
    assert layout["limits.window_bucket_ns"] == 8 * _shared.LIMIT_WINDOW_BUCKET_NS
    assert layout["limits.window_buckets"] == 8 * _shared.LIMIT_WINDOW_BUCKETS
    assert layout["geometry"] == _shared.GEOM_HEADER
    assert layout["geometry.n"] == 8 * _shared.GEOM_BUCKETS
    assert layout["geometry.buckets"] == _shared.GEOM_HEADER
    assert layout["proc"] == _shared.PROC_SIZE
    assert layout["proc.tickets"] == 8 * _shared.PROC_TICKETS


def test_a_file_from_an_earlier_boot_keeps_only_its_name_and_settings(tmp_path: Path) -> None:
    from fasthystrix._core._config import CommandConfig, Settings, get_defaults

    settings = Settings.from_config(CommandConfig(timeout=250, max_concurrent_requests=3), get_defaults())
    first = _shared.SharedCircuitFile("boot", _impl.current().name, settings, tmp_path)
    words = memoryview(first.map).cast("q")
    words[_shared.STATE // 8] = 1  # open
    words[_shared.STATE // 8 + _shared.STATE_OPENED_NS] = 10**18  # a time of the last boot
    words[_shared.TICKETS // 8] = 5  # tickets of processes of the last boot
    words[(_shared.PROCS + 64) // 8] = 4242  # a slot of a pid of the last boot
    words.release()
    struct.pack_into("<q", first.map, _shared.BOOT, _shared._BOOT_ID + 1)  # as if written before a reboot
    again = _shared.SharedCircuitFile("boot", _impl.current().name, settings, tmp_path)
    words = memoryview(again.map).cast("q")
    assert words[_shared.STATE // 8] == 0
    assert words[_shared.STATE // 8 + _shared.STATE_OPENED_NS] == 0
    assert words[_shared.TICKETS // 8] == 0
    assert words[(_shared.PROCS + 64) // 8] in (0, os.getpid())
    assert words[_shared.LIMITS // 8 + _shared.LIMIT_MAX_CONCURRENT] == 3  # the settings stay
    assert words[_shared.GEOM // 8 : _shared.GEOM // 8 + 2].tolist() == [1_000_000_000, 10]  # their window
    words.release()
    assert _shared.read_name(again.path) == "boot"


def test_the_directory_holds_at_most_max_circuits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fasthystrix._core._config import get_defaults

    monkeypatch.setattr(_shared, "MAX_CIRCUITS", 3)
    for name in ("a", "b", "c"):
        _shared.SharedCircuitFile(name, _impl.current().name, get_defaults(), tmp_path)
    with pytest.raises(_shared.SharedStateError, match=r"already holds 3 shared circuits"):
        _shared.SharedCircuitFile("d", _impl.current().name, get_defaults(), tmp_path)
    assert len(_shared.circuit_files(tmp_path)) == 3  # nothing created
    _shared.SharedCircuitFile("a", _impl.current().name, get_defaults(), tmp_path)  # existing names still open
