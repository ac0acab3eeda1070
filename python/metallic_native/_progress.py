"""A tiny byte-progress reporter for downloads and hashing (no dependency).

Two modes, chosen by whether the stream is a terminal:
  * TTY: one line redrawn in place (at most ~10 times a second) with a bar,
    bytes done/total, MB/s and ETA.
  * not a TTY (CI logs, pipes): no carriage returns; only explicit `note()`
    lines (one per finished part) plus a heartbeat at most every 30 seconds,
    so a log gets a handful of lines per model, never one per chunk.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Optional, TextIO

_MB = 1_000_000


def format_bytes(n: float) -> str:
    """Decimal units, as network speeds and wheel sizes are usually quoted."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Reports progress of `total` bytes; a no-op when disabled."""

    REDRAW_S = 0.1      # TTY redraw interval
    HEARTBEAT_S = 30.0  # non-TTY: longest silence while bytes keep flowing

    def __init__(self, total: int, label: str = "", *, enabled: bool = True,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 clock=time.monotonic):
        self.total = max(0, int(total))
        self.label = label
        self.done = 0
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self._clock = clock
        self._start = clock()
        self._last_draw = float("-inf")
        self._last_line = self._start
        self._drawn = False

    # -- numbers -----------------------------------------------------------
    def rate(self) -> float:
        """Average bytes per second since this reporter started."""
        elapsed = self._clock() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> Optional[float]:
        r = self.rate()
        if r <= 0 or self.total <= 0:
            return None
        return max(0.0, (self.total - self.done) / r)

    def status(self) -> str:
        parts = []
        if self.total:
            parts.append(f"{format_bytes(self.done)} / {format_bytes(self.total)}")
        else:
            parts.append(format_bytes(self.done))
        parts.append(f"{self.rate() / _MB:.1f} MB/s")
        eta = self.eta()
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    # -- output ------------------------------------------------------------
    def update(self, nbytes: int) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        now = self._clock()
        if self.tty:
            if now - self._last_draw >= self.REDRAW_S:
                self._draw(now)
        elif now - self._last_line >= self.HEARTBEAT_S:
            self._line(f"{self.label}: {self.status()}", now)

    def set_label(self, label: str) -> None:
        self.label = label
        if self.enabled and self.tty:
            self._draw(self._clock())

    def note(self, message: str) -> None:
        """A line that stays in the output (e.g. 'part 2/6 done')."""
        if not self.enabled:
            return
        if self.tty and self._drawn:
            self._clear()
        self._line(message, self._clock())

    def close(self, message: Optional[str] = None) -> None:
        if not self.enabled:
            return
        if self.tty and self._drawn:
            self._clear()
        if message:
            self._line(message, self._clock())

    def _write(self, text: str) -> None:
        # Progress is cosmetic: if stderr goes away (closed pipe, full disk),
        # stop reporting instead of failing the download it describes.
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def _draw(self, now: float) -> None:
        width = shutil.get_terminal_size((80, 20)).columns
        status = self.status()
        frac = self.done / self.total if self.total else 0.0
        frac = min(1.0, max(0.0, frac))
        bar_w = 20
        filled = int(frac * bar_w)
        bar = "[" + "#" * filled + "." * (bar_w - filled) + f"] {frac * 100:3.0f}%"
        label = self.label
        room = width - 1 - len(bar) - len(status) - 4
        if room < len(label):
            # A label cut to a few characters says nothing; shorten or drop it.
            label = label[:room - 3] + "..." if room >= 12 else ""
        text = "  ".join(x for x in (label, bar, status) if x)[: width - 1]
        self._write("\r" + text.ljust(width - 1))
        self._drawn = True
        self._last_draw = now

    def _clear(self) -> None:
        width = shutil.get_terminal_size((80, 20)).columns
        self._write("\r" + " " * (width - 1) + "\r")
        self._drawn = False

    def _line(self, text: str, now: float) -> None:
        self._write(text + "\n")
        self._last_line = now
        if self.tty:
            self._last_draw = float("-inf")  # redraw the bar below the note
