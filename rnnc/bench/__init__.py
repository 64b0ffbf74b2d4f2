"""Benchmarks: `run_bench` sweeps models x shapes x backends and writes the report (SPEC section 4).

`stats` holds the pure statistics, `measure` the one timing loop, `sweep` the rows, resume and
atomic writes.
"""
from __future__ import annotations

from rnnc.bench.measure import Settings
from rnnc.bench.sweep import exit_code, run_bench
from rnnc.reports.tables import results_table

__all__ = ["Settings", "exit_code", "results_table", "run_bench"]
