"""The sleep window of an open circuit: hystrix-go's fixed one, or a backoff.

With ``sleep_window_multiplier`` and ``sleep_window_jitter`` at their defaults (1 and 0), the
wait before a trial is the command's ``sleep_window`` as set now (a reconfiguration applies at
once, as in hystrix-go): the circuit stores 0 for its episode. Otherwise each open episode
keeps its own wait: the sleep window when the circuit trips, multiplied at each reopen (a failed
trial) without a close in between, capped by ``max_sleep_window`` (365 days without one), then
moved by up to ``jitter`` of itself either way.

The compiled circuit does the same integer and double arithmetic in C (``_circuit.pyx``), with
the same pseudo-random jitter (splitmix64 of the time and the episode), so both twins wait alike.
"""

from __future__ import annotations

from ._config import MAX_DURATION_MS

__all__ = ["PPM", "jittered", "next_raw", "ppm", "seed"]

PPM = 1_000_000
_MAX_NS = MAX_DURATION_MS * 1_000_000
_MASK = (1 << 64) - 1


def ppm(value: float) -> int:
    """A multiplier's excess over 1, or a jitter fraction, in parts per million (what circuits store)."""
    return round(value * PPM)


def seed(now_ns: int, episode: int, reopens: int) -> int:
    """The jitter's seed for an episode's ``reopens``-th wait (as a uint64)."""
    return (now_ns ^ (episode << 20) ^ reopens) & _MASK


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def next_raw(previous_ns: int, base_ns: int, extra_ppm: int, max_ns: int) -> int:
    """The wait before jitter after a reopen: the previous one (or the sleep window) times the
    multiplier, capped."""
    raw = previous_ns if previous_ns > 0 else base_ns
    raw = int(raw * ((PPM + extra_ppm) / PPM))
    cap = max_ns if max_ns > 0 else _MAX_NS
    return min(raw, cap)


def jittered(raw_ns: int, jitter_ppm: int, seed_value: int) -> int:
    """``raw_ns`` moved by up to ``jitter_ppm`` millionths of itself, either way; at least 1 ns."""
    if jitter_ppm == 0 or raw_ns <= 0:
        return raw_ns
    r = _splitmix64(seed_value) % 2_000_001 - 1_000_000  # -1e6..1e6
    return max(raw_ns + int(raw_ns * (jitter_ppm / 1e6) * (r / 1e6)), 1)
