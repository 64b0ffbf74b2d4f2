"""The timing loop, driven by fake time functions and a fake clock: no test here reads real time."""
from __future__ import annotations

import itertools

import pytest

from rnnc.bench import measure


def fake(per_call_s: float, log: list[str], name: str):
    """A TimeFunc that 'takes' per_call_s per call and logs each sample it is asked for."""

    def time_func(loops: int) -> float:
        log.append(name)
        return per_call_s * loops

    return time_func


NO_WAIT = dict(warmup_s=0.0, warmup_min=2, settle_s=0.0, burst_s=0.0)


def measure_fake(funcs, settings, calibration=None, **kw):
    """measure_interleaved with no real preemption test (the fakes' times are not real)."""
    kw.setdefault("waited", lambda: None)
    return measure.measure_interleaved(funcs, settings, calibration, **kw)


def test_loops_come_from_the_median_warmup_call():
    assert measure.loops_for([0.1, 0.1, 50.0], min_sample_s=0.002) == 20  # the 50 ms outlier is ignored
    assert measure.loops_for([5.0], min_sample_s=0.002) == 1
    with pytest.raises(ValueError):
        measure.loops_for([], 0.002)


def test_stops_at_min_count_and_min_time():
    log: list[str] = []
    settings = measure.Settings(min_count=7, min_time_s=0.05, min_sample_s=0.0, **NO_WAIT)
    results, cal = measure_fake(
        {"fast": fake(0.001, log, "fast"), "slow": fake(0.02, log, "slow")}, settings, fake(0.001, log, "cal"))
    assert len(results["slow"].samples_ms) == 7  # 7 x 20 ms already past min_time
    assert len(results["fast"].samples_ms) == 50  # needs 50 x 1 ms to reach min_time
    assert results["fast"].samples_ms[0] == pytest.approx(1.0)
    assert len(cal.samples_ms) == 50  # one calibration burst per round (burst_s = 0: one sample)


def test_backends_are_interleaved_in_rotating_order():
    log: list[str] = []
    settings = measure.Settings(min_count=4, min_time_s=0.0, min_sample_s=0.0, **NO_WAIT)
    funcs = {n: fake(0.001, log, n) for n in "abc"}
    measure_fake(funcs, settings)
    # 2 warm-up calls each, then rounds of (settle call, sample) per backend
    rounds = [log[i:i + 6] for i in range(6, len(log), 6)]
    assert len(rounds) == 4
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]  # the starting backend rotates
    for r in rounds:
        assert r[0::2] == r[1::2] and sorted(r[0::2]) == ["a", "b", "c"]


def test_a_row_past_max_time_stops_at_the_floor():
    clock = itertools.count(0, 10.0)  # every clock read is 10 s later
    settings = measure.Settings(min_count=50, min_time_s=0.0, min_sample_s=0.0, max_row_s=15, **NO_WAIT)
    results, _ = measure_fake({"a": fake(0.001, [], "a")}, settings, clock=lambda: next(clock))
    assert len(results["a"].samples_ms) == measure.MIN_COUNT_FLOOR


def test_loops_per_sample_average_the_calls():
    settings = measure.Settings(min_count=3, min_time_s=0.0, min_sample_s=0.01, **NO_WAIT)
    results, _ = measure_fake({"a": fake(0.001, [], "a")}, settings)
    assert results["a"].loops == 10 and results["a"].samples_ms == pytest.approx([1.0, 1.0, 1.0])


def test_extra_work_busy_waits_for_its_fraction(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(measure.time, "perf_counter", lambda: float(next(ticks)))
    calls = []
    slowed = measure.with_extra_work(lambda: calls.append(1) or "out", 0.25)
    assert slowed() == "out" and calls == [1]
    # start=0, after the call 1 -> busy until 1.25: one more read (2) ends the wait
    assert next(ticks) == 3
    fn = lambda: None  # noqa: E731
    assert measure.with_extra_work(fn, 0.0) is fn


def test_time_calls_holds_off_the_garbage_collector():
    import gc

    seen = []
    tf = measure.time_calls(lambda: seen.append(gc.isenabled()))
    assert tf(3) >= 0 and seen == [False] * 3 and gc.isenabled()


def test_settings_are_checked():
    with pytest.raises(ValueError):
        measure.Settings(min_count=0)
    with pytest.raises(ValueError):
        measure.Settings(min_time_s=-1)


def test_preempted_samples_are_set_aside_and_replaced():
    waits = iter([0.0, 0.0, 0.0, 0.5] + [0.5] * 1000)  # the second sample waits 0.5 s for a CPU
    settings = measure.Settings(min_count=3, min_time_s=0.0, min_sample_s=0.0, **NO_WAIT)
    results, _ = measure_fake({"a": fake(0.001, [], "a")}, settings, waited=lambda: next(waits))
    assert len(results["a"].samples_ms) == 3 and len(results["a"].preempted_ms) == 1


def test_a_machine_too_busy_stops_at_the_floor_with_every_sample_preempted():
    waits = itertools.count(0, 1.0)  # every sample waits 1 s
    clock = itertools.count(0, 10.0)
    settings = measure.Settings(min_count=50, min_time_s=0.0, min_sample_s=0.0, max_row_s=15, **NO_WAIT)
    results, _ = measure_fake({"a": fake(0.001, [], "a")}, settings, clock=lambda: next(clock),
                                             waited=lambda: next(waits))
    assert results["a"].samples_ms == [] and len(results["a"].preempted_ms) == measure.MIN_COUNT_FLOOR


def test_run_delay_is_read_where_the_kernel_has_it():
    value = measure.run_delay_s()
    assert value is None or value >= 0
