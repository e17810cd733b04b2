"""The commands' progress output: one bar redrawn in place on a terminal, one line per step
elsewhere (a log, a pipe, CI), and lines printed above the bar; never the same line twice."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Bar:
    """``draw(done, total, unit, extra)`` after each step; ``line(text)`` for a line of its own
    (a finished run) that stays above the bar."""

    width = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr  # resolved now: sys.stderr may be replaced
        self.tty = self.stream.isatty()
        self.last_step: str | None = None
        self.shown = ""  # the bar as last drawn (terminal only), "" once it ended with a newline
        self.lock = threading.RLock()

    def draw(self, done: float, total: float, unit: str, extra: str = "") -> None:
        filled = int(self.width * min(done, total) / total) if total else self.width
        step = f"{done:,.0f}/{total:,.0f}"
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {step} {unit}"
        text += f"  {extra}" if extra else ""
        with self.lock:
            if step == self.last_step and (not self.tty or not self.shown):
                return  # the same step again (e.g. the last slice, then its run's end)
            self.last_step = step
            if self.tty:
                end = done >= total
                self.stream.write("\r" + text + "\x1b[K" + ("\n" if end else ""))
                self.shown = "" if end else text
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        with self.lock:
            if self.tty and self.shown:
                self.stream.write("\r\x1b[K" + text + "\n" + self.shown)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()


class Counter:
    """A bar over a known number of steps with rate and ETA: ``step(n=1, extra="")``."""

    def __init__(self, total: int, unit: str, bar: Bar | None = None, rate_unit: str | None = None) -> None:
        self.total, self.unit, self.rate_unit = total, unit, rate_unit
        self.bar = bar or Bar()
        self.done = 0
        self.amount = 0
        self.t0 = time.perf_counter()

    def step(self, n: int = 1, amount: int = 0, extra: str = "") -> None:
        self.done += n
        self.amount += amount
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        parts = [extra] if extra else []
        if self.rate_unit:
            parts.append(f"{self.amount:,} {self.rate_unit}  {self.amount / elapsed:,.0f} {self.rate_unit}/s")
        parts.append(f"ETA {eta:,.0f} s")
        self.bar.draw(self.done, self.total, self.unit, "  ".join(parts))
