"""Progress on long work, written to stderr: a live line on a terminal, plain lines in a log.

Library code reports through a `Progress`; only the CLI decides where (or whether) it prints.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(done, total, label)` shows `[done/total] label  elapsed  ETA`.

    Nothing is printed for work that ends within `quiet_s` seconds, so quick commands stay quiet.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, quiet_s: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.quiet_s = quiet_s
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._shown = False

    def update(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if elapsed < self.quiet_s and not self._shown:
            return
        eta = f"  ETA {elapsed / done * (total - done):.0f}s" if 0 < done < total else ""
        line = f"[{done}/{total}] {label}  {elapsed:.1f}s{eta}"
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def note(self, line: str) -> None:
        """One line that matters whenever it comes (a wait for a lock), not subject to `quiet_s`."""
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.live and self._shown else "") + line + "\n")
        self.stream.flush()
        self._shown = False

    def done(self) -> None:
        """End the live line so that what follows starts on a fresh one."""
        if self.enabled and self.live and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False
        self.start = time.perf_counter()


SILENT = Progress(enabled=False)
