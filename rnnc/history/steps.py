"""Change points in one row's medians over the runs of a history: where its speed stepped.

A bench row's median moves from run to run by the machine's noise (a few percent) and, now and
then, by a step: a commit that made it faster or slower. `find_steps` segments the series with
`ruptures` (PELT, a least-squares cost) on log(values), so that a step is a ratio and the noise is
the same size at every level. The penalty for a new segment scales with the noise that the series
itself shows, estimated robustly from successive differences (a step is one large difference among
many small ones and barely moves their median), so a noisy row needs a larger step to be believed
than a quiet one. Segments shorter than `min_size` runs are not allowed (one bad run is not a
step), and a step smaller than `min_change` is merged away: it may be real, but nobody acts on it.
Pure functions, no I/O.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MIN_CHANGE = 0.05  # steps smaller than 5% are not reported
MIN_SIZE = 3  # runs on each side of a step, at least
PENALTY = 6.0  # x noise variance x log(n): what a new segment must save in squared log-error
NOISE_FLOOR = 0.002  # log units: no bench is quieter than 0.2% from run to run
_MAD_TO_SIGMA = 1.4826  # MAD x this = standard deviation, for normal noise


@dataclass(frozen=True)
class Step:
    """A change of level: `index` is the first point after the step (0-based into the series);
    `before` and `after` are the medians of the segments on either side; `change` = after/before - 1
    (positive: slower, for times)."""

    index: int
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after / self.before - 1.0


def noise(values: Sequence[float]) -> float:
    """The run-to-run noise of a series in log units (about its cv), from the median absolute
    deviation of successive differences of log(values): blind to a few steps and outliers."""
    y = _logs(values)
    if y.size < 3:
        return NOISE_FLOOR
    d = np.diff(y)
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(_MAD_TO_SIGMA * mad / math.sqrt(2.0), NOISE_FLOOR)


def find_steps(values: Sequence[float], min_change: float = MIN_CHANGE, min_size: int = MIN_SIZE,
               penalty: float = PENALTY) -> list[Step]:
    """The steps in `values` (positive numbers, oldest first), in order. A series shorter than two
    segments of `min_size` has none to find."""
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    y = _logs(values)
    if y.size < 2 * min_size:
        return []
    import ruptures

    sigma = noise(values)
    algo = ruptures.Pelt(custom_cost=_l2_cost(), min_size=min_size, jump=1).fit(y.reshape(-1, 1))
    ends = algo.predict(pen=penalty * sigma ** 2 * math.log(y.size))[:-1]  # the last end is len(y)
    return _merge_small(np.asarray(values, dtype=np.float64), list(ends), min_change)


def _merge_small(x: np.ndarray, ends: list[int], min_change: float) -> list[Step]:
    """Drop the smallest step below `min_change` and measure the rest again, until none is left:
    two small steps the same way may add up to one that counts."""
    while True:
        bounds = [0] + ends + [x.size]
        levels = [float(np.median(x[a:b])) for a, b in zip(bounds, bounds[1:])]
        steps = [Step(i, before, after) for i, before, after in zip(ends, levels, levels[1:])]
        small = [s for s in steps if abs(math.log(s.after / s.before)) < math.log1p(min_change)]
        if not small:
            return steps
        ends.remove(min(small, key=lambda s: abs(math.log(s.after / s.before))).index)


@functools.cache
def _l2_cost_class() -> type:
    from ruptures.base import BaseCost

    class CumulativeL2(BaseCost):
        """ruptures' l2 cost (squared deviations from the segment's mean) from running sums: O(1)
        a segment instead of O(length), which keeps a history of hundreds of runs quick."""

        model = "l2"
        min_size = 1

        def fit(self, signal: np.ndarray) -> CumulativeL2:
            self.signal = np.asarray(signal, dtype=np.float64).reshape(len(signal), -1)
            y = self.signal[:, 0]
            y = y - y.mean()  # centred: the running sums cancel less
            self.s1 = np.concatenate([[0.0], np.cumsum(y)])
            self.s2 = np.concatenate([[0.0], np.cumsum(y * y)])
            return self

        def error(self, start: int, end: int) -> float:
            total = self.s1[end] - self.s1[start]
            return max(float(self.s2[end] - self.s2[start] - total * total / (end - start)), 0.0)

    return CumulativeL2


def _l2_cost() -> Any:
    return _l2_cost_class()()


def _logs(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("need a one-dimensional series")
    if x.size and not (np.all(np.isfinite(x)) and np.all(x > 0)):
        raise ValueError("values must be positive and finite")
    return np.log(x)
