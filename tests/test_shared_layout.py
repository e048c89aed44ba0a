"""The shared circuit file's layout: the compiled core's C structs have the sizes and offsets that
``_shared`` (and the pure core) use for the file's regions."""

from __future__ import annotations

import pytest

from fasthystrix import _impl
from fasthystrix._core import _shared


def test_regions_are_cache_line_aligned_and_fit_64_kib() -> None:
    for offset in (_shared.LIMITS, _shared.STATE, _shared.TICKETS, _shared.WINDOW, _shared.HIST, _shared.PROCS):
        assert offset % 64 == 0, offset
    assert _shared.SIZE <= 64 * 1024  # the bound: at most 64 KiB of shared state per circuit
    assert _shared.HIST - _shared.WINDOW == _shared.WINDOW_SIZE
    assert _shared.PROCS - _shared.HIST == _shared.HIST_SIZE


@pytest.mark.skipif(_impl.COMPILED is None, reason="the compiled core is not built")
def test_compiled_structs_match_the_file_layout() -> None:
    from fasthystrix._core import _circuit

    layout = _circuit._layout()
    assert layout["limits"] == _shared.STATE - _shared.LIMITS
    assert layout["limits.version"] == 8 * _shared.LIMIT_VERSION
    assert layout["state"] == _shared.TICKETS - _shared.STATE
    assert layout["state.lock"] == 8 * _shared.STATE_LOCK
    assert layout["state.trial_slot"] == 8 * _shared.STATE_TRIAL_SLOT
    assert layout["tickets"] == _shared.WINDOW - _shared.TICKETS
    assert layout["window"] == _shared.WINDOW_SIZE
    assert layout["window.requests"] == 8 * 110
    assert layout["window.stats"] == 8 * 114
    # _shared initialises the latency stamps of a new file at this offset.
    assert layout["window.stamp"] == 8 * (110 + 4 + 24)
    assert layout["window.retired"] == layout["window.stamp"] + 8 * 4
    assert layout["proc"] == _shared.PROC_SIZE
    assert layout["proc.tickets"] == 8 * _shared.PROC_TICKETS
