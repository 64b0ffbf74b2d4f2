"""The machine's limits, measured once per bench, and where each row stands against them (a roofline).

A row's median says how fast a backend ran, not how fast it could: these figures say what the
machine can do at the bench's thread count, so that a reader sees how far a row is from the
limit. Measured, not read from a datasheet: a shared VM's cores, a container's bandwidth and the
BLAS torch ships are what the backends get.

How (all through torch, at `threads` intra-op threads, float32; best of a few repeats, since on a
shared machine the slow samples are the neighbours' and the fast ones the machine's):
- sgemm roof: C = A @ B, square, n = 2048, one warm-up, best of 5: 2 n^3 / t. torch runs it
  through oneDNN/MKL, as the backends' own matmuls do. (n = 1024, best of 3, read 266 GFLOP/s on
  the 2-core Sapphire Rapids VM where n = 2048, best of 5, reads 345-359: a roof our own fp32
  kernels passed by 4-14% is not the machine's.)
- memory bandwidth: `x.sum()` over a buffer of twice the L3 (64 to 256 MiB), first touched
  before the clock starts (allocated by numpy, which asks for transparent huge pages: the
  first touch is most of the measure's cost), best of 2 reads.
- L3 bandwidth: the same over a slice of a quarter of the L3 (at most 64 MiB), read twice per
  call after a warm-up, best of 3; left out where that slice would not be well beyond the L2s.
- L2 bandwidth: a buffer of half of one L2, read repeatedly in one call through a stride-0
  `expand` (each thread's share stays in its own L2), 32 MiB a call, best of 9.
Cache sizes from /sys/devices/system/cpu/cpu0/cache, else `lscpu -B`, else 1 MiB L2 and 32 MiB L3.
About 0.5-1 s in all, most of it the first touch of the memory buffer; `measured` keeps the
figures for the process, so a test session or a folder of specs pays it once per thread count.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from rnnc import host, targets
from rnnc.host import FALLBACK_L2, FALLBACK_L3, MiB, SYSFS, Caches, caches
from rnnc.records.report import Row

if TYPE_CHECKING:  # a row's work is counted where the model is (onnx); the roof only reads it
    from rnnc.graphs.work import Work

__all__ = ["FALLBACK_L2", "FALLBACK_L3", "SYSFS", "Caches", "Roof", "caches", "measure", "measured", "with_roof"]
# the cache sizes are `host`'s (the kernels read them too); named here, where the roof reads them
METHOD = ("torch float32 at the bench's threads, best of a few: sgemm n=2048 (best of 5); "
          "sum() over 2x L3 (64-256 MiB) for memory, over L3/4 for L3, over L2/2 read repeatedly for L2")


@dataclass(frozen=True)
class Roof:
    """The figures of one measure. `l2_bytes` is the L2 of the cores `threads` threads run on."""

    threads: int
    sgemm_gflops: float
    memory_gbps: float
    l2_gbps: float
    l3_gbps: float | None
    l2_bytes: int
    l3_bytes: int | None
    memory_buffer_bytes: int
    cache_source: str
    method: str
    measure_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Roof | None:
        """The record a report's environment holds, or None where it holds none (an older report)."""
        try:
            return cls(**data)
        except TypeError:
            return None

    def level(self, working_set: int) -> tuple[str, float]:
        """The memory level a working set of that many bytes is read from, and its bandwidth (GB/s)."""
        if working_set <= self.l2_bytes:
            return "L2", self.l2_gbps
        if self.l3_gbps is not None and self.l3_bytes is not None and working_set <= self.l3_bytes:
            return "L3", self.l3_gbps
        return "memory", self.memory_gbps


def measure(threads: int | None = None) -> Roof:
    """Measure the figures at `threads` torch threads (None: torch's count now); see the module."""
    import torch

    before = torch.get_num_threads()
    threads = threads or before
    started = time.perf_counter()
    found = caches()
    torch.set_num_threads(threads)
    try:
        sgemm = _sgemm_gflops(torch, 2048)
        buffer = min(max(2 * (found.l3_bytes or FALLBACK_L3), 64 * MiB), 256 * MiB)
        x = torch.from_numpy(np.empty(buffer // 4, dtype=np.float32))  # numpy asks for huge pages
        x.fill_(1.0)  # the first touch, off the clock
        memory = _read_gbps(x, 1, repeats=2, warm=False)
        l2_total = found.l2_bytes * math.ceil(min(threads, host.cpu_count()) / max(found.l2_cpus, 1))
        l3, l3_slice = None, (found.l3_bytes or 0) // 4
        if found.l3_bytes and l3_slice >= 4 * l2_total:
            l3 = _read_gbps(x[: min(l3_slice, 64 * MiB) // 4], 2, repeats=3)
        del x
        small = torch.ones(found.l2_bytes // 2 // 4, dtype=torch.float32)
        l2 = _read_gbps(small, max(1, 32 * MiB // (found.l2_bytes // 2)), repeats=9)
    finally:
        torch.set_num_threads(before)
    return Roof(threads=threads, sgemm_gflops=round(sgemm, 2), memory_gbps=round(memory, 3), l2_gbps=round(l2, 3),
                l3_gbps=None if l3 is None else round(l3, 3), l2_bytes=l2_total, l3_bytes=found.l3_bytes,
                memory_buffer_bytes=buffer, cache_source=found.source, method=METHOD,
                measure_s=round(time.perf_counter() - started, 3))


@functools.cache
def measured(threads: int) -> Roof:
    """`measure(threads)`, once per process and thread count: the machine does not change in between."""
    return measure(threads)


def with_roof(row: Row, work: Work | None, roof: Roof | None) -> Row:
    """A timed row with its GFLOP/s, share of the sgemm roof, R's bytes per step, and the share of
    its median that reading R alone at its memory level's bandwidth would take; the row as it was
    where the work or the roof is unknown, or it did not run. The precision is the backend name's
    (`tvm:int8` reads int8 weights), else the row's own (a float16 spec)."""
    if row.status != "ok" or work is None or roof is None or not row.median_ms:
        return row
    named = targets.precision_of(row.backend)
    precision = named if named != targets.DEFAULT_PRECISION else row.precision
    gflops = work.flops / row.median_ms / 1e6
    fields: dict[str, Any] = {"gflops": _sig(gflops),
                              "roof_fraction": _sig(gflops / roof.sgemm_gflops) if roof.sgemm_gflops > 0 else None}
    per_step, per_call = work.r_bytes_per_step(precision), work.r_bytes_per_call(precision)
    if per_step is not None and per_call is not None:
        level, gbps = roof.level(per_step)
        fields.update(r_bytes_per_step=per_step, bw_level=level,
                      bw_fraction=_sig(per_call / (gbps * 1e9) / (row.median_ms / 1e3)) if gbps > 0 else None)
    return row.model_copy(update=fields)


def _sig(value: float) -> float:
    """Four significant digits: what a figure of a timed median can stand for."""
    return float(f"{value:.4g}")


def _sgemm_gflops(torch: Any, n: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    best = _best(lambda: torch.mm(a, b, out=c), 5)
    return 2 * n**3 / best / 1e9


def _read_gbps(x: Any, times: int, repeats: int, warm: bool = True) -> float:
    """GB/s of `x.sum()` read `times` over in one call (a stride-0 expand: no copy)."""
    view = x.expand(times, x.numel()) if times > 1 else x
    return times * x.numel() * 4 / _best(view.sum, repeats, warm) / 1e9


def _best(call: Callable[[], object], repeats: int, warm: bool = True) -> float:
    """The fastest of `repeats` calls, after one warm-up unless `warm` is False (seconds)."""
    if warm:
        call()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return best
