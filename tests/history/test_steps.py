"""Change points in one row's medians over runs: seeded experiments with known answers.

The noise is lognormal with a cv drawn from 3-5% per series, what medians of a shared CI machine
show from run to run. Measured with these seeds (0-49): a 20% step after run 15 of 30 is found
alone and at the exact index 50/50 times; pure noise gives a step 0/50 times. Over 200 seeds the
rates are 197/200 and 0/200: at 5% noise the run next to the step is sometimes nearer the other
level, so an exact index cannot be promised every time. The thresholds below leave one case of
slack for other numpy/ruptures builds, no more.
"""
from __future__ import annotations

import numpy as np
import pytest

from rnnc.history import Step, find_steps, noise

SEEDS = range(50)


def noisy(seed: int, n: int = 30, cv: tuple[float, float] = (0.03, 0.05)) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    return 10.0 * np.exp(rng.normal(0.0, rng.uniform(*cv), n))


def stepped(seed: int, at: int = 15, factor: float = 1.2, n: int = 30) -> np.ndarray:
    values = noisy(seed, n)
    values[at:] *= factor
    return values


def test_a_20_percent_step_is_found_at_its_run():
    found = [find_steps(stepped(seed)) for seed in SEEDS]
    exact = sum(len(s) == 1 and s[0].index == 15 for s in found)
    near = sum(len(s) == 1 and abs(s[0].index - 15) <= 1 for s in found)
    assert exact >= 49, f"exact index in {exact}/50 (measured 50/50)"
    assert near == 50, f"within one run in {near}/50"
    changes = [s[0].change for s in found if len(s) == 1]
    assert np.median(changes) == pytest.approx(0.2, abs=0.02)


def test_pure_noise_has_no_step():
    false = sum(bool(find_steps(noisy(seed + 10_000))) for seed in SEEDS)
    assert false <= 1, f"a step in {false}/50 series of pure noise (measured 0/50)"


def test_a_step_down_is_a_negative_change():
    (step,) = find_steps(stepped(3, at=12, factor=0.8))
    assert step.index == 12 and step.change == pytest.approx(-0.2, abs=0.04)
    assert step.after < step.before


def test_two_steps_and_their_segment_medians():
    values = np.concatenate([np.full(10, 10.0), np.full(10, 12.0), np.full(10, 9.0)]) * np.exp(
        np.random.default_rng(1).normal(0, 0.01, 30))
    steps = find_steps(values)
    assert [s.index for s in steps] == [10, 20]
    assert steps[0].before == pytest.approx(10.0, rel=0.02) and steps[0].after == pytest.approx(12.0, rel=0.02)
    assert steps[1].change == pytest.approx(9 / 12 - 1, abs=0.02)


def test_steps_below_the_minimum_change_are_ignored():
    quiet = 10.0 * np.exp(np.random.default_rng(2).normal(0, 0.003, 30))  # 0.3% noise: a 3% step is clear
    small = quiet.copy()
    small[15:] *= 1.03
    assert find_steps(small) == []
    assert [s.index for s in find_steps(small, min_change=0.02)] == [15]
    large = quiet.copy()
    large[15:] *= 1.06
    assert [s.index for s in find_steps(large)] == [15]


def test_one_bad_run_is_not_a_step():
    values = noisy(5)
    values[12] *= 2.0
    assert find_steps(values) == []


def test_short_flat_and_bad_series():
    assert find_steps([1.0, 1.2, 1.1, 1.3, 1.2]) == []  # fewer than two segments of 3
    assert find_steps([5.0] * 30) == []
    flat = [5.0] * 15 + [6.0] * 15
    assert find_steps(flat) == [Step(15, 5.0, 6.0)]
    assert noise([5.0] * 30) > 0  # a floor, so that a flat series does not make every wobble a step
    assert noise(noisy(0, 200, cv=(0.04, 0.04))) == pytest.approx(0.04, rel=0.2)
    with pytest.raises(ValueError):
        find_steps([1.0, -1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError):
        find_steps([1.0, float("nan")] * 5)
