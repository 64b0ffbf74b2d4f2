"""The sweep's progress bar: rows done of rows planned, and an ETA from the pace of the rows
measured so far in this run (compiling a model, or rows kept by --resume, do not skew it)."""
from __future__ import annotations

import time

from rnnc.progress import Progress

WIDTH = 24


class SweepProgress:
    def __init__(self, progress: Progress, total: int) -> None:
        self.base = progress
        self.total = total
        self.done = 0
        self.measured_rows = 0
        self.measured_s = 0.0
        self.started = time.perf_counter()

    def child(self) -> Progress:
        """A separate progress line for work inside the sweep (compiling), same stream."""
        return Progress(self.base.stream, self.base.enabled) if self.base.enabled else self.base

    def skip(self, rows: int) -> None:
        """Rows already in the report (--resume): done, but not part of the pace."""
        self.done += rows

    def grow(self, rows: int) -> None:
        self.total += rows

    def measured(self, rows: int, seconds: float) -> None:
        self.done += rows
        self.measured_rows += rows
        self.measured_s += seconds

    def show(self, label: str) -> None:
        if not self.base.enabled:
            return
        filled = int(WIDTH * self.done / self.total) if self.total else WIDTH
        bar = "#" * filled + "." * (WIDTH - filled)
        eta = ""
        if self.measured_rows and self.done < self.total:
            eta = f"  ETA {self.measured_s / self.measured_rows * (self.total - self.done):.0f}s"
        line = f"[{bar}] {self.done}/{self.total} rows  {label}  {time.perf_counter() - self.started:.0f}s{eta}"
        stream = self.base.stream
        stream.write("\r\033[K" + line if self.base.live else line + "\n")
        stream.flush()

    def note(self, line: str) -> None:
        """A line kept above the bar (a node lost), whenever it comes."""
        self.base.note(line)

    def close(self) -> None:
        if self.base.enabled and self.base.live:
            self.base.stream.write("\n")
            self.base.stream.flush()
