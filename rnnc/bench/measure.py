"""The timing loop: the only part of `rnnc.bench` that reads a clock.

Each thing timed is a `TimeFunc`, `time_func(loops) -> seconds` for `loops` back-to-back calls
(pyperf's design: the callable owns its loop). A row is measured in three steps:

1. warm-up: calls until both `warmup_min` calls and `warmup_s` seconds are spent (kept apart);
2. `loops` per sample, from the warm-up's median call time, so that one sample takes at least
   `min_sample_s` and timer resolution stays small against it (slow calls keep loops = 1);
3. rounds: each round visits every backend still short of `min_count` samples or `min_time_s`
   seconds, in an order that rotates every round, then the calibration workload. A visit first
   settles (untimed calls for `settle_s`: the previous runtime's worker threads spin-wait for a
   while after its last call and would otherwise steal cores from this one's first samples),
   then takes a burst of samples for `burst_s`. Interleaving makes machine drift (other jobs,
   clock changes, thermal limits) hit every backend and the calibration alike instead of
   whichever happened to run last.

A sample is the mean time of one call over its `loops` calls, in milliseconds.

Preempted samples. On Linux the kernel counts, per thread, the time it spent runnable but
waiting for a CPU (`/proc/thread-self/schedstat`, field 2). A sample during which the timing
thread waited for more than `max_preempt` of its duration measured another job's time slice,
not the backend: it is set aside (`Measurement.preempted_ms`, kept in the report) and another
sample is taken. With one thread per runtime (`rnnc bench --threads 1`) all the work runs on
the timing thread and the test is exact; with more, waits of the worker threads go unseen.
If too few samples stay clean before `max_row_s`, the preempted ones are used too, with a warning.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rnnc import stats

TimeFunc = Callable[[int], float]

CALIBRATION = "numpy float32 matmul 32x256 @ 256x32 (one thread: below BLAS's threading threshold)"


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure each row. The defaults suit a laptop-sized sweep."""

    warmup_s: float = 0.2
    warmup_min: int = 2
    min_count: int = 20
    min_time_s: float = 0.5  # per backend and row
    min_sample_s: float = 0.002
    settle_s: float = 0.01
    burst_s: float = 0.05
    max_row_s: float = 60.0  # per row, all backends: past it a row stops at MIN_COUNT_FLOOR samples
    max_preempt: float = 0.02  # share of a sample the timing thread may wait for a CPU (see above)
    cv_warn: float = 0.10  # coefficient of variation above which a row is flagged as unstable

    def __post_init__(self) -> None:
        for name in ("warmup_s", "min_time_s", "min_sample_s", "settle_s", "burst_s", "max_row_s", "cv_warn",
                     "max_preempt"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_count < 1 or self.warmup_min < 0:
            raise ValueError("min_count must be >= 1 and warmup_min >= 0")


MIN_COUNT_FLOOR = 5  # samples every backend gets even when a row runs past max_row_s


@dataclass
class Measurement:
    samples_ms: list[float] = field(default_factory=list)  # clean samples
    preempted_ms: list[float] = field(default_factory=list)  # set aside: the thread waited for a CPU
    warmup_ms: list[float] = field(default_factory=list)  # every warm-up call, in ms
    loops: int = 1
    spent_s: float = 0.0


def time_calls(fn: Callable[[], object]) -> TimeFunc:
    """A TimeFunc over a no-argument call (a runner's `bind`), with the garbage collector held off
    during the sample as `timeit` does, so one row does not pay for another's garbage."""

    def time_func(loops: int) -> float:
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(loops):
                fn()
            return time.perf_counter() - start
        finally:
            if enabled:
                gc.enable()

    return time_func


def calibration_call(seed: int = 0) -> Callable[[], object]:
    """The fixed workload every report measures beside its rows, so that reports from different
    machines compare as ratios (`rnnc gate --normalize`). It is small enough that BLAS runs it on
    one thread: a multi-threaded one would measure the other jobs on a shared machine instead."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((32, 256), dtype=np.float32)
    b = rng.standard_normal((256, 32), dtype=np.float32)
    out = np.empty((32, 32), dtype=np.float32)
    return lambda: np.matmul(a, b, out=out)


def calibration_workload() -> TimeFunc:
    return time_calls(calibration_call())


def with_extra_work(fn: Callable[[], object], fraction: float) -> Callable[[], object]:
    """TEST-ONLY: a call that does `fraction` more work, by busy-waiting after each call for that
    fraction of the call's own duration. Used to check that the gate catches a real slowdown;
    reached only through `run_bench(..., extra_work={backend: fraction})` and recorded in the report."""
    if fraction <= 0:
        return fn

    def slowed() -> object:
        start = time.perf_counter()
        out = fn()
        until = start + (time.perf_counter() - start) * (1 + fraction)
        while time.perf_counter() < until:
            pass
        return out

    return slowed


def warm_up(time_func: TimeFunc, settings: Settings) -> list[float]:
    """Calls until `warmup_min` calls and `warmup_s` seconds; returns each call's ms (kept apart)."""
    values: list[float] = []
    spent = 0.0
    while len(values) < settings.warmup_min or spent < settings.warmup_s:
        elapsed = time_func(1)
        values.append(elapsed * 1000)
        spent += elapsed
    return values


def loops_for(call_ms: list[float], min_sample_s: float, max_loops: int = 1 << 20) -> int:
    """Calls per sample so that one sample lasts at least `min_sample_s`, from the median of the
    warm-up calls' times (one slow warm-up call cannot set it, as a single trial run would)."""
    if not call_ms:
        raise ValueError("need the warm-up's call times")
    per_call_s = stats.median(call_ms) / 1000
    if per_call_s <= 0:
        return max_loops
    return int(min(max_loops, max(1, math.ceil(min_sample_s / per_call_s))))


def _settle(time_func: TimeFunc, seconds: float) -> None:
    spent = time_func(1)
    while spent < seconds:
        spent += time_func(1)


def run_delay_s() -> float | None:
    """Seconds this thread has spent waiting for a CPU since it started; None where unknown."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def measure_interleaved(
    funcs: dict[str, TimeFunc],
    settings: Settings,
    calibration: TimeFunc | None = None,
    clock: Callable[[], float] = time.perf_counter,
    waited: Callable[[], float | None] = run_delay_s,
) -> tuple[dict[str, Measurement], Measurement]:
    """Measure every TimeFunc of one row, interleaved round by round; returns each one's
    `Measurement` and the calibration workload's, taken in the same rounds."""
    results = {name: Measurement() for name in funcs}
    for name, time_func in funcs.items():
        results[name].warmup_ms = warm_up(time_func, settings)
        results[name].loops = loops_for(results[name].warmup_ms, settings.min_sample_s)
    cal = Measurement()
    if calibration is not None:
        cal.warmup_ms = warm_up(calibration, settings)
        cal.loops = loops_for(cal.warmup_ms, settings.min_sample_s)

    def sample(time_func: TimeFunc, m: Measurement) -> float:
        before = waited()
        elapsed = time_func(m.loops)
        after = waited()
        preempted = before is not None and after is not None and after - before > settings.max_preempt * elapsed
        (m.preempted_ms if preempted else m.samples_ms).append(elapsed / m.loops * 1000)
        if not preempted:
            m.spent_s += elapsed
        return elapsed

    def short(m: Measurement, over_time: bool) -> bool:
        if over_time:  # past max_row_s: stop at the floor, counting preempted samples too
            return len(m.samples_ms) + len(m.preempted_ms) < min(MIN_COUNT_FLOOR, settings.min_count)
        return len(m.samples_ms) < settings.min_count or m.spent_s < settings.min_time_s

    names = list(funcs)
    started, round_no = clock(), 0
    while True:
        over_time = clock() - started > settings.max_row_s
        pending = [n for n in names if short(results[n], over_time)]
        if not pending:
            break
        shift = round_no % len(pending)
        for name in pending[shift:] + pending[:shift]:
            m = results[name]
            _settle(funcs[name], settings.settle_s)
            burst = 0.0
            while True:
                burst += sample(funcs[name], m)
                if burst >= settings.burst_s or not short(m, over_time):
                    break
        if calibration is not None:  # a burst too: the normalised gate needs its median to be tight
            _settle(calibration, settings.settle_s)
            burst = 0.0
            while True:
                burst += sample(calibration, cal)
                if burst >= settings.burst_s:
                    break
        round_no += 1
    return results, cal
