"""Stage 5, bench: `run_bench` sweeps models x shapes x backends and writes report.json
(SPEC section 4).

`measure` holds the one timing loop (the only part that reads a clock), `sweep` the rows, resume
and atomic writes, `sources` what a sweep runs on; the statistics are `rnnc.stats`, the rows'
format `rnnc.records.report`. Rendering the report is the next stage's (`rnnc.reports`).
"""
from __future__ import annotations

from rnnc.bench.measure import Settings
from rnnc.bench.sweep import exit_code, run_bench

__all__ = ["Settings", "exit_code", "run_bench"]
