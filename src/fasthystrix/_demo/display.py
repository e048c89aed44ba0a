"""What the demo prints while it runs: one row of events per second, under each phase's heading.

On a terminal the rows are coloured and a status line (progress bar, phase, circuit state,
tickets in use) stays pinned below them, redrawn in place with ANSI escapes. Anywhere else
(a pipe, a file, a ``StringIO``) the same rows come out as plain lines, one per second.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Mapping
from typing import TextIO

__all__ = ["EVENT_COLUMNS", "Display", "supports_unicode"]

#: The live table's event columns: (hystrix-go event name, width, ANSI colour).
EVENT_COLUMNS = (
    ("success", 7, "32"),
    ("failure", 7, "31"),
    ("timeout", 7, "33"),
    ("rejected", 8, "35"),
    ("short-circuit", 13, "36"),
)
_STATE_COLOURS = {"closed": "32", "open": "31", "forced-open": "31"}
_CLEAR_LINE = "\r\x1b[2K"
_HIDE_CURSOR = "\x1b[?25l"
_SHOW_CURSOR = "\x1b[?25h"
_BAR_WIDTH = 24


def supports_unicode(out: TextIO) -> bool:
    """Whether ``out`` can take box-drawing characters (a UTF-8 stream)."""
    encoding = getattr(out, "encoding", None) or ""
    return encoding.lower().replace("-", "").replace("_", "") == "utf8"


class Display:
    """Rows, headings and (when ``live``) the pinned status line, written to ``out``."""

    def __init__(self, out: TextIO, *, live: bool, color: bool, unicode: bool, max_tickets: int) -> None:
        self.out = out
        self.live = live
        self.color = color
        self.unicode = unicode
        self.max_tickets = max_tickets
        self._status = ""
        if live:
            self._write(_HIDE_CURSOR)

    # -- low level ------------------------------------------------------------------

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def lines(self, *lines: str) -> None:
        """Print whole lines above the status line (which is redrawn after them)."""
        text = "".join(line + "\n" for line in lines)
        if self.live:
            self._write(_CLEAR_LINE + text + self._status)
        else:
            self._write(text)

    # -- the table --------------------------------------------------------------------

    def table_header(self) -> None:
        """The column names and what the numbers mean."""
        names = " ".join(f"{name:>{width}}" for name, width, _ in EVENT_COLUMNS)
        header = f"{'time':>5} {'circuit':<7} {names} {'fallback':>9} {'tickets':>7}"
        self.lines(
            "",
            self._paint(header, "1"),
            self._paint(f"{'':6}events per second; circuit: its state at the end of the second (*: opened or", "2"),
            self._paint(
                f"{'':6}closed during it); fallback: successes/failures; tickets: most in use (of {self.max_tickets})",
                "2",
            ),
        )

    def phase(self, number: int, count: int, name: str, seconds: int, title: str) -> None:
        """The heading of a phase."""
        mark = "\u25b6" if self.unicode else ">"
        heading = f"{mark} phase {number}/{count}: {name} ({seconds} s)"
        width = min(shutil.get_terminal_size().columns, 100) - 1 if self.live else 99
        body = textwrap.wrap(title, width=width, initial_indent="  ", subsequent_indent="  ")
        self.lines(self._paint(heading, "1"), *(self._paint(line, "2") for line in body))

    def note(self, text: str) -> None:
        """A remark under the rows of the current phase (it runs on past its plan)."""
        width = min(shutil.get_terminal_size().columns, 100) - 1 if self.live else 99
        body = textwrap.wrap(text, width=width, initial_indent="  ", subsequent_indent="  ")
        self.lines(*(self._paint(line, "33") for line in body))

    def row(self, second: int, state: str, changed: bool, events: Mapping[str, int], tickets: int) -> None:
        """One second of events (``events``: counts during that second; ``changed``: the circuit opened or closed)."""
        label = f"{state}*" if changed else state
        cells = [f"{second:>4}s", self._paint(f"{label:<7}", _STATE_COLOURS.get(state, "0"))]
        for name, width, colour in EVENT_COLUMNS:
            value = events.get(name, 0)
            cells.append(self._paint(f"{value:>{width}}", colour if value else "2"))
        fallback = f"{events.get('fallback-success', 0)}/{events.get('fallback-failure', 0)}"
        cells.append(self._paint(f"{fallback:>9}", "0" if fallback != "0/0" else "2"))
        cells.append(f"{tickets:>7}")
        self.lines(" ".join(cells))

    # -- the status line (live only) ----------------------------------------------------

    def status(self, elapsed: float, total: int, number: int, count: int, name: str, state: str, tickets: int) -> None:
        """Redraw the pinned line: progress bar, phase, circuit state, tickets in use."""
        if not self.live:
            return
        fraction = min(max(elapsed / total, 0.0), 1.0) if total else 1.0
        filled = round(fraction * _BAR_WIDTH)
        full, empty = ("\u2588", "\u2591") if self.unicode else ("#", ".")
        bar = full * filled + empty * (_BAR_WIDTH - filled)
        plain = (
            f"[{bar}] {int(min(elapsed, total)):>4}/{total} s  phase {number}/{count} {name}  "
            f"circuit {state}  tickets {tickets}/{self.max_tickets}  (Ctrl-C stops)"
        )
        # Never let the line wrap: \r could then no longer bring the cursor back to its start.
        width = shutil.get_terminal_size().columns - 1
        plain = plain[:width]
        if self.color:
            # Colour the bar and the state after truncating, so escapes are never cut in half.
            text = plain.replace(bar, self._paint(bar, "36"), 1)
            text = text.replace(f"circuit {state}", f"circuit {self._paint(state, _STATE_COLOURS.get(state, '0'))}", 1)
        else:
            text = plain
        if text != self._status:
            self._status = text
            self._write(_CLEAR_LINE + text)

    def close(self) -> None:
        """Remove the status line and give the cursor back."""
        if self.live:
            self._status = ""
            self._write(_CLEAR_LINE + _SHOW_CURSOR)
