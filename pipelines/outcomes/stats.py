"""The statistics of METRICS.md "One condition", each from the library it names.

Every function here takes plain numpy arrays (one group's analysed episodes) and returns
plain floats, or None for an empty cell. Sources:

* Student-t interval: ``scipy.stats.t.interval`` (sample sd, n - 1 degrees of freedom).
* Wilcoxon signed-rank: ``scipy.stats.wilcoxon`` with its defaults.
* Benjamini-Hochberg: ``scipy.stats.false_discovery_control``.
* Wilson score interval: the formula of ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``
  (Wilson 1927; z = norm.ppf(0.975)), without binomtest's unused exact p-value.
* Kaplan-Meier: :mod:`pipelines.outcomes.km` (lifelines' formulas for many groups at once).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import special, stats

CONFIDENCE = 0.95
IMPROVED_BY_SESSIONS = (3, 6, 10)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _all_equal(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def mean_with_t_interval(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Mean and its two-sided 95% Student-t interval; no interval below n = 2; (m, m) when sd = 0."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = float(np.mean(values))
    if n < 2:
        return mean, None, None
    if _all_equal(values):  # sd is 0 (tested exactly: float sd of equal decimals is ~1e-16)
        return mean, mean, mean
    sd = float(np.std(values, ddof=1))
    low, high = stats.t.interval(CONFIDENCE, df=n - 1, loc=mean, scale=sd / math.sqrt(n))
    return mean, float(low), float(high)


def standardised_response_mean(change: np.ndarray) -> float | None:
    """Mean change / sample sd of change (dz); empty when n < 2 or sd = 0."""
    if len(change) < 2 or _all_equal(change):
        return None
    return float(np.mean(change)) / float(np.std(change, ddof=1))


def wilcoxon_p(change: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p of change against 0 (scipy defaults); empty when all 0."""
    if len(change) == 0 or not np.any(change != 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _finite(stats.wilcoxon(change).pvalue)
        except ValueError:
            return None


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    if not p_values:
        return []
    return [float(q) for q in stats.false_discovery_control(np.asarray(p_values, dtype=float))]


def wilson_interval(successes: int, n: int) -> tuple[float | None, float | None, float | None]:
    """Share and its 95% Wilson score interval; all empty when n = 0."""
    if n == 0:
        return None, None, None
    k, n = int(successes), int(n)
    # scipy's own formula (scipy.stats._binomtest._binom_wilson_conf_int, Newcombe 1998), written
    # out because binomtest(k, n) first computes an exact p-value nobody reads: 3 ms a call.
    # tests/test_stats.py checks it equals binomtest(k, n).proportion_ci(method="wilson").
    p = k / n
    z = float(special.ndtri(0.5 + 0.5 * CONFIDENCE))
    denom = 2 * (n + z ** 2)
    center = (2 * n * p + z ** 2) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z ** 2)
    low = 0.0 if k == 0 else center - delta
    high = 1.0 if k == n else center + delta
    return p, float(low), float(high)
