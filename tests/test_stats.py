"""The statistics behind every report and the gate, checked against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnnc import stats


def test_percentiles_interpolate_linearly():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert stats.median(xs) == 2.5
    assert stats.percentile(xs, 90) == pytest.approx(3.7)
    assert stats.percentile(xs, 0) == 1.0 and stats.percentile(xs, 100) == 4.0
    assert stats.iqr(xs) == pytest.approx(3.25 - 1.75)


def test_cv_is_sample_std_over_mean():
    assert stats.cv([2.0, 4.0]) == pytest.approx(math.sqrt(2) / 3)
    assert stats.cv([5.0]) == 0.0


def test_summarize_and_throughput():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median_ms"] == 3.0 and s["iqr_ms"] == 2.0 and s["q1_ms"] == 2.0 and s["q3_ms"] == 4.0
    assert s["p90_ms"] == pytest.approx(4.6) and s["p99_ms"] == pytest.approx(4.96)
    assert s["min_ms"] == 1.0 and s["mean_ms"] == 3.0
    t = stats.throughput(4.0, batch_size=8, seq_len=16)  # 250 calls/s
    assert t == {"sequences_per_s": 2000.0, "tokens_per_s": 32000.0}


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0]]])
def test_bad_samples_are_refused(bad):
    with pytest.raises(ValueError):
        stats.median(bad)


def _noisy(center: float, n: int, spread: float, seed: int) -> list[float]:
    return list(center * np.exp(np.random.default_rng(seed).normal(0, spread, n)))


def test_bootstrap_ratio_brackets_the_true_ratio():
    base, new = _noisy(10, 60, 0.05, 1), _noisy(12.5, 60, 0.05, 2)
    ratio, lo, hi = stats.bootstrap_ratio(base, new)
    assert lo < ratio < hi
    assert lo < 1.25 < hi or abs(ratio - 1.25) < 0.03
    assert stats.bootstrap_ratio(base, new) == (ratio, lo, hi)  # seeded: reproducible


def test_compare_fails_a_real_slowdown_past_the_threshold():
    c = stats.compare(_noisy(10, 60, 0.05, 1), _noisy(12.5, 60, 0.05, 2), max_regression=0.10)
    assert c.verdict == "fail" and c.ci_low > 1.10 and c.p_slower < 0.001


def test_compare_passes_a_slowdown_under_the_threshold():
    c = stats.compare(_noisy(10, 60, 0.05, 1), _noisy(10.5, 60, 0.05, 2), max_regression=0.10)
    assert c.verdict in ("slower", "same")


def test_compare_passes_a_big_change_that_noise_explains():
    # medians 20% apart, but samples so spread that the interval reaches below +10%
    c = stats.compare(_noisy(10, 8, 0.6, 1), _noisy(12, 8, 0.6, 2), max_regression=0.10)
    assert c.verdict != "fail" and c.ci_low <= 1.10


def test_compare_says_unknown_with_too_few_samples():
    c = stats.compare([1.0, 1.0], [5.0, 5.0], max_regression=0.10)
    assert c.verdict == "unknown" and math.isnan(c.ci_low)


def test_compare_sees_a_speedup():
    assert stats.compare(_noisy(10, 60, 0.05, 1), _noisy(7, 60, 0.05, 2), 0.10).verdict == "faster"


def test_quartile_fallback():
    assert stats.compare_quartiles((9, 10, 11), (12, 13, 14), 0.10) == "fail"
    assert stats.compare_quartiles((9, 10, 13), (12, 13, 14), 0.10) == "same"  # IQRs overlap
    assert stats.compare_quartiles((9, 10, 11), (11.5, 10.8, 12), 0.10) == "slower"
    assert stats.compare_quartiles((9, 10, 11), (6, 7, 8), 0.10) == "faster"


def test_normalised_ratio_divides_out_the_calibration_and_carries_its_noise():
    base, new = _noisy(10, 60, 0.02, 1), _noisy(15, 60, 0.02, 2)  # 1.5x slower on a 1.5x slower machine
    tight_b, tight_n = [5.0] * 60, [7.5] * 60
    ratio, lo, hi = stats.bootstrap_ratio(base, new, base_unit=tight_b, new_unit=tight_n)
    assert lo < 1.0 < hi and ratio == pytest.approx(1.0, abs=0.02)
    _, lo2, hi2 = stats.bootstrap_ratio(base, new, base_unit=_noisy(5, 60, 0.2, 3), new_unit=_noisy(7.5, 60, 0.2, 4))
    assert hi2 - lo2 > hi - lo  # a noisy calibration widens the interval
    with pytest.raises(ValueError):
        stats.bootstrap_ratio(base, new, base_unit=tight_b)


def test_common_mode_cancels_shared_drift_and_keeps_a_lone_regression():
    names = ("torch", "torchscript", "onnxruntime", "tvm")
    base = {n: _noisy(1.0 + i, 60, 0.03, i) for i, n in enumerate(names)}
    drift = 1.18  # the machine got 18% slower for everyone; onnxruntime 25% slower on top
    new = {n: _noisy((1.0 + i) * drift * (1.25 if n == "onnxruntime" else 1.0), 60, 0.03, 10 + i)
           for i, n in enumerate(names)}
    plain = [stats.compare(base[n], new[n], 0.10).verdict for n in names]
    assert plain.count("fail") == 4  # the plain comparison blames every backend
    cmps, shared = stats.compare_common_mode(base, new, 0.10)
    assert shared == pytest.approx(drift, rel=0.05)
    assert [cmps[n].verdict == "fail" for n in names] == [False, False, True, False]
    assert cmps["onnxruntime"].ratio == pytest.approx(1.25, rel=0.05)
    with pytest.raises(ValueError):
        stats.compare_common_mode({"a": [1.0] * 9, "b": [1.0] * 9}, {"a": [1.0] * 9, "b": [1.0] * 9}, 0.1)


def test_history_band_is_the_rows_own_run_to_run_spread():
    rng = np.random.default_rng(3)
    tight = list(np.exp(rng.normal(0, 0.02, 20)))  # a row whose median moved ~2% between runs
    loose = list(np.exp(rng.normal(0, 0.10, 20)))  # one that moved ~10%
    assert stats.compare_to_history(tight, 1.25, 0.10).verdict == "fail"
    assert stats.compare_to_history(loose, 1.25, 0.10).verdict != "fail"  # within what it has shown
    cmp = stats.compare_to_history(tight, 1.0, 0.10)
    assert cmp.verdict == "same" and cmp.ci_low < 1 < cmp.ci_high and 0.2 < cmp.p_slower < 0.8
    assert stats.compare_to_history(tight, 0.7, 0.10).verdict == "faster"
    assert stats.compare_to_history(tight[:3], 2.0, 0.10).verdict == "unknown"
    # an episode of slow runs widens the band: the next one is not a false alarm
    assert stats.compare_to_history(tight + [1.15, 1.18], 1.2, 0.10).verdict != "fail"


def test_history_band_false_alarm_rate_on_unchanged_runs():
    """Draws from the history's own distribution fail at 10% (almost) never; 25% slower ones fail when
    the history is tight enough to tell."""
    rng = np.random.default_rng(0)
    alarms = caught = 0
    for _ in range(500):
        past = np.exp(rng.normal(0, 0.03, 20))
        new = float(np.exp(rng.normal(0, 0.03)))
        alarms += stats.compare_to_history(past, new, 0.10).verdict == "fail"
        caught += stats.compare_to_history(past, new * 1.25, 0.10).verdict == "fail"
    assert alarms == 0 and caught >= 450
