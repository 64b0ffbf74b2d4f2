"""Statistics on timing samples: plain functions of sequences of floats, no I/O, no clocks.

Everything a report or the gate says about speed is computed here, so it can be tested exactly.
Percentiles interpolate linearly between order statistics (numpy's default, and what most
readers expect): the median of [1, 2, 3, 4] is 2.5, its 90th percentile 3.7.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_SAMPLES = 5  # fewer than this per side and a comparison says "cannot tell" instead of guessing


def _values(samples: Sequence[float]) -> np.ndarray:
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("need a non-empty sequence of samples")
    if not np.all(np.isfinite(values)):
        raise ValueError("samples must be finite")
    return values


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100), linear interpolation between order statistics."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    return float(np.percentile(_values(samples), q))


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def iqr(samples: Sequence[float]) -> float:
    """Interquartile range: the spread of the middle half, blind to a few outliers."""
    return percentile(samples, 75) - percentile(samples, 25)


def cv(samples: Sequence[float]) -> float:
    """Coefficient of variation, sample standard deviation over mean (0 for a single sample)."""
    values = _values(samples)
    if values.size < 2:
        return 0.0
    mean = float(values.mean())
    return float(values.std(ddof=1)) / mean if mean > 0 else math.inf


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """The per-row statistics of a report (SPEC section 4), in the samples' unit."""
    values = _values(samples_ms)
    q1, q3 = percentile(values, 25), percentile(values, 75)
    return {
        "median_ms": median(values),
        "iqr_ms": q3 - q1,
        "q1_ms": q1,
        "q3_ms": q3,
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "cv": cv(values),
    }


def throughput(median_ms: float, batch_size: int, seq_len: int) -> dict[str, float]:
    """Sequences and tokens (time steps) per second at a median latency."""
    if median_ms <= 0:
        raise ValueError(f"median must be > 0 ms, got {median_ms}")
    per_s = 1000.0 / median_ms
    return {"sequences_per_s": batch_size * per_s, "tokens_per_s": batch_size * seq_len * per_s}


def bootstrap_ratio(
    base: Sequence[float],
    new: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    base_unit: Sequence[float] | None = None,
    new_unit: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """Ratio of medians new/base with a percentile-bootstrap confidence interval (lo, hi).

    Every side is resampled independently; the fixed seed makes the gate reproducible. With
    `base_unit`/`new_unit` (each run's calibration samples) the medians are first divided by
    their run's calibration median, itself resampled, so its noise widens the interval too.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if (base_unit is None) != (new_unit is None):
        raise ValueError("give both calibrations or neither")
    rng = np.random.default_rng(seed)

    def medians(samples: Sequence[float]) -> tuple[float, np.ndarray]:
        v = _values(samples)
        return float(np.median(v)), np.median(v[rng.integers(0, v.size, size=(resamples, v.size))], axis=1)

    (b, b_boot), (n, n_boot) = medians(base), medians(new)
    if base_unit is not None and new_unit is not None:
        (bu, bu_boot), (nu, nu_boot) = medians(base_unit), medians(new_unit)
        b, b_boot, n, n_boot = b / bu, b_boot / bu_boot, n / nu, n_boot / nu_boot
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(n_boot / b_boot, [100 * alpha, 100 * (1 - alpha)])
    return n / b, float(lo), float(hi)


def mann_whitney_p(base: Sequence[float], new: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test for "new is slower than base"."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(_values(new), _values(base), alternative="greater").pvalue)


@dataclass(frozen=True)
class Comparison:
    """One row's change. `verdict` is one of:

    - "fail": slower by more than the threshold, and the whole confidence interval says so;
    - "slower" / "faster": the interval excludes no change, but the change is not a failure;
    - "same": the interval includes no change;
    - "unknown": too few samples to tell (never reads as a pass or a fail).
    """

    ratio: float  # new median / base median; > 1 is slower
    ci_low: float
    ci_high: float
    p_slower: float  # Mann-Whitney one-sided p for "new is slower"
    verdict: str
    n_base: int
    n_new: int

    @property
    def change(self) -> float:
        return self.ratio - 1


def compare(
    base: Sequence[float],
    new: Sequence[float],
    max_regression: float,
    confidence: float = 0.95,
    seed: int = 0,
    base_unit: Sequence[float] | None = None,
    new_unit: Sequence[float] | None = None,
) -> Comparison:
    """Fails only when the slowdown exceeds `max_regression` beyond what the samples' noise explains:
    the lower end of the confidence interval of the ratio of medians is above 1 + max_regression.
    `base_unit`/`new_unit`: calibration samples to normalise by (see `bootstrap_ratio`)."""
    if max_regression <= 0:
        raise ValueError(f"max_regression must be > 0, got {max_regression}")
    b, n = _values(base), _values(new)
    if b.size < MIN_SAMPLES or n.size < MIN_SAMPLES:
        ratio = float(np.median(n) / np.median(b))
        if base_unit is not None and new_unit is not None:
            ratio *= median(base_unit) / median(new_unit)
        return Comparison(ratio, math.nan, math.nan, math.nan, "unknown", b.size, n.size)
    ratio, lo, hi = bootstrap_ratio(b, n, confidence, seed=seed, base_unit=base_unit, new_unit=new_unit)
    if base_unit is not None and new_unit is not None:
        p = mann_whitney_p(b / median(base_unit), n / median(new_unit))
    else:
        p = mann_whitney_p(b, n)
    return Comparison(ratio, lo, hi, p, _verdict(lo, hi, max_regression), b.size, n.size)


def _verdict(lo: float, hi: float, max_regression: float) -> str:
    if lo > 1 + max_regression:
        return "fail"
    if lo > 1:
        return "slower"
    if hi < 1:
        return "faster"
    return "same"


def compare_common_mode(
    base: dict[str, Sequence[float]],
    new: dict[str, Sequence[float]],
    max_regression: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, Comparison], float]:
    """`common_mode`'s comparisons, and the shared drift as a plain ratio."""
    cmps, drift = common_mode(base, new, max_regression, confidence=confidence, resamples=resamples, seed=seed)
    return cmps, drift.ratio


def common_mode(
    base: dict[str, Sequence[float]],
    new: dict[str, Sequence[float]],
    max_regression: float,
    max_drift: float = math.inf,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, Comparison], Comparison]:
    """`compare` for backends measured interleaved on the same shape, after dividing out the
    change they share: each one's ratio of medians over the median of all their ratios (the
    common drift). Drift of the machine between two runs hits the interleaved backends together
    and cancels; a regression of one backend does not move the median of three or more. A change
    that slows every backend alike is invisible here, by construction, unless it is past
    `max_drift`: the drift is returned as a `Comparison` of its own (with its bootstrap interval),
    "fail" when even its low end is past 1 + max_drift, a bound larger than any drift the machine
    has shown.

    The drift is not the same for every backend: between reruns here torch and torchscript moved
    +25% while onnxruntime and tvm did not. So each interval also holds the spread of the backends'
    ratios around the shared one (1.4826 x their MAD, in quadrature with the bootstrap's): a
    split like that widens every interval of the shape, while one backend that regressed alone
    leaves the MAD of the others small and stands out.
    """
    names = list(base)
    if max_regression <= 0 or max_drift <= 0:
        raise ValueError(f"max_regression and max_drift must be > 0, got {max_regression}, {max_drift}")
    if sorted(names) != sorted(new) or len(names) < 3:
        raise ValueError("need the same three or more backends on both sides")
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    point, boot = {}, {}
    for name in names:
        b, n = _values(base[name]), _values(new[name])
        point[name] = float(np.median(n) / np.median(b))
        boot[name] = (np.median(n[rng.integers(0, n.size, size=(resamples, n.size))], axis=1)
                      / np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1))
    drift = float(np.median(list(point.values())))
    drift_boot = np.median(np.stack([boot[n] for n in names]), axis=0)
    alpha = (1 - confidence) / 2
    # how far the backends' own drifts spread around the shared one (robust: one backend that
    # regressed does not move the MAD of three or more); added to each interval in quadrature
    spread = 1.4826 * float(np.median([abs(math.log(point[n] / drift)) for n in names]))
    z = float(norm.ppf(1 - alpha))
    n_base, n_new = min(len(v) for v in base.values()), min(len(v) for v in new.values())
    out = {}
    for name in names:
        b, n = _values(base[name]), _values(new[name])
        if b.size < MIN_SAMPLES or n.size < MIN_SAMPLES:
            out[name] = Comparison(point[name] / drift, math.nan, math.nan, math.nan, "unknown", b.size, n.size)
            continue
        lo, hi = np.percentile(boot[name] / drift_boot, [100 * alpha, 100 * (1 - alpha)])
        mid = math.log(point[name] / drift)
        lo = math.exp(mid - math.hypot(mid - math.log(lo), z * spread))
        hi = math.exp(mid + math.hypot(math.log(hi) - mid, z * spread))
        out[name] = Comparison(point[name] / drift, lo, hi, mann_whitney_p(b, n / drift),
                               _verdict(lo, hi, max_regression), b.size, n.size)
    if n_base < MIN_SAMPLES or n_new < MIN_SAMPLES:
        shared = Comparison(drift, math.nan, math.nan, math.nan, "unknown", n_base, n_new)
    else:
        lo, hi = (float(v) for v in np.percentile(drift_boot, [100 * alpha, 100 * (1 - alpha)]))
        shared = Comparison(drift, lo, hi, math.nan, _verdict(lo, hi, max_drift), n_base, n_new)
    return out, shared


def compare_quartiles(
    base: tuple[float, float, float], new: tuple[float, float, float], max_regression: float
) -> str:
    """Verdict from (q1, median, q3) alone, for results saved without samples: a failure needs the
    medians' ratio above 1 + max_regression and interquartile ranges that do not overlap."""
    (b1, bm, b3), (n1, nm, n3) = base, new
    if nm / bm > 1 + max_regression and n1 > b3:
        return "fail"
    if n1 > b3:
        return "slower"
    if n3 < b1:
        return "faster"
    return "same"


def compare_to_history(history: Sequence[float], new: float, max_regression: float,
                       confidence: float = 0.95) -> Comparison:
    """A new median against the medians earlier runs of the same row have shown (Bencher's design).

    The ratio is to the history's median; its interval is Student's prediction interval for one
    more draw from the history's own run-to-run spread: the standard deviation s of the log
    medians, t(n-1) x s x sqrt(1 + 1/n). The standard deviation, not a robust one, on purpose:
    this machine's drift comes in episodes (a whole run 10-20% slower), a heavy tail that a MAD
    would cut off and then cry wolf at the next episode; the runs before a real step are left
    out by the caller (the change points). The verdict is `compare`'s: a failure needs the
    interval's low end above 1 + max_regression.
    """
    if max_regression <= 0:
        raise ValueError(f"max_regression must be > 0, got {max_regression}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    logs = np.log(_values(history))
    if not (math.isfinite(new) and new > 0):
        raise ValueError(f"the new median must be > 0, got {new}")
    center = float(np.median(logs))
    ratio = math.exp(math.log(new) - center)
    if logs.size < MIN_SAMPLES:
        return Comparison(ratio, math.nan, math.nan, math.nan, "unknown", int(logs.size), 1)
    from scipy.stats import t as student

    n = logs.size
    sigma = float(np.std(logs, ddof=1)) * math.sqrt(1 + 1 / n)
    z = float(student.ppf(1 - (1 - confidence) / 2, n - 1))
    shift = math.log(ratio)
    lo, hi = math.exp(shift - z * sigma), math.exp(shift + z * sigma)
    p = float(student.sf(shift / sigma, n - 1)) if sigma > 0 else (0.0 if shift > 0 else 1.0)
    return Comparison(ratio, lo, hi, p, _verdict(lo, hi, max_regression), int(logs.size), 1)
