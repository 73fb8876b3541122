"""Aggregates over seeds: percentile-bootstrap confidence intervals, the interquartile mean (IQM), and Student-t
intervals of a mean and of a paired difference.

These are the estimators rliable recommends (Agarwal et al., 2021, "Deep RL at the edge of the statistical
precipice"): the IQM is the mean of the middle 50% of runs (``scipy.stats.trim_mean(x, 0.25)``, as rliable
computes it) and intervals come from resampling runs with replacement. Implemented here with numpy/scipy:
rliable pulls seaborn/pandas/arch for what is a few lines.
With the handful of seeds a benchmark affords (5-10), a percentile bootstrap of the mean is too narrow (it never
reaches past the extreme seeds); :func:`t_interval` is the textbook interval for that case, and
:func:`paired_t_interval` the one that compares two methods run on the same seeds (same data, partition and
initial model per seed), where the seed-to-seed spread they share cancels.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy import stats as sps

#: Bootstrap resamples (rliable's default is 50,000 for papers; 2,000 keeps `marlx report` instant and the
#: interval ends stable to about 0.01 of the spread for a handful of seeds).
N_BOOTSTRAP = 2000
#: Confidence level of every interval.
CONFIDENCE = 0.95


def iqm(values) -> float:
    """Interquartile mean: the mean after cutting 25% of the values at each end (plain mean below 4 values)."""
    v = np.asarray(values, np.float64).reshape(-1)
    return float(sps.trim_mean(v, 0.25)) if v.size else float("nan")


def bootstrap_ci(values, statistic: Callable = np.mean, n_boot: int = N_BOOTSTRAP, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (one value per seed)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    samples = v[rng.integers(0, v.size, size=(n_boot, v.size))]
    if statistic is np.mean:
        stat = samples.mean(axis=1)
    else:
        stat = np.array([statistic(s) for s in samples])
    a = (1 - confidence) / 2
    lo, hi = np.quantile(stat, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_band(curves: np.ndarray, n_boot: int = N_BOOTSTRAP, confidence: float = CONFIDENCE,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and its bootstrap interval at every x: ``curves [seeds, points]`` (NaN where a seed has
    no data) -> ``(mean, low, high)`` each ``[points]``."""
    c = np.asarray(curves, np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no seed has data there)
        mean = np.nanmean(c, axis=0)
        if c.shape[0] < 2:
            return mean, mean.copy(), mean.copy()
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, c.shape[0], size=(n_boot, c.shape[0]))
        boot = np.nanmean(c[idx], axis=1)  # [n_boot, points]
        a = (1 - confidence) / 2
        lo, hi = np.nanquantile(boot, [a, 1 - a], axis=0)
    return mean, lo, hi


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval ``mean +- t_{n-1} * sd / sqrt(n)`` (``sd`` with ``n - 1``).
    One value gives a zero-width interval at it; none gives NaNs."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    half = float(sps.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def paired_t_interval(a, b, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the per-seed differences ``a[i] - b[i]`` (``a`` and ``b`` run on the same seeds,
    in the same order): the paired t-interval."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one per seed on both sides, got {a.size} and {b.size}")
    return t_interval(a - b, confidence)
