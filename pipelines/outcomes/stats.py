"""The statistics of METRICS.md "One condition", each from the library it names.

Every function takes plain numpy arrays (one group's analysed episodes) and returns
plain floats, or None for an empty cell. Sources:

* Student-t interval: ``scipy.stats.t.interval`` (sample sd, n - 1 degrees of freedom).
* Wilcoxon signed-rank: ``scipy.stats.wilcoxon`` with its defaults.
* Benjamini-Hochberg: ``scipy.stats.false_discovery_control``.
* Wilson score interval: ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``
  (Wilson 1927; z = norm.ppf(0.975)).
* Kaplan-Meier: ``lifelines.KaplanMeierFitter`` (Greenwood variance, log(-log) band).
"""

from __future__ import annotations

import math
import warnings

from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:  # lifelines takes seconds to import: load it when a curve is fitted
    from lifelines import KaplanMeierFitter

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
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return successes / n, float(ci.low), float(ci.high)


def kaplan_meier(durations: np.ndarray, observed: np.ndarray) -> "KaplanMeierFitter | None":
    """Kaplan-Meier fit of sessions to response; None for an empty group."""
    from lifelines import KaplanMeierFitter

    if len(durations) == 0:
        return None
    kmf = KaplanMeierFitter(alpha=1 - CONFIDENCE)
    kmf.fit(np.asarray(durations, dtype=float), event_observed=np.asarray(observed, dtype=bool))
    return kmf


def km_median_sessions(kmf: "KaplanMeierFitter | None") -> tuple[float | None, float | None, float | None]:
    """Median sessions to response with its 95% interval; None where lifelines says infinity."""
    if kmf is None:
        return None, None, None
    from lifelines.utils import median_survival_times

    bounds = median_survival_times(kmf.confidence_interval_)
    low, high = bounds.iloc[0, 0], bounds.iloc[0, 1]
    return _finite(kmf.median_survival_time_), _finite(low), _finite(high)


def km_improved_by(kmf: "KaplanMeierFitter | None", sessions: tuple[int, ...] = IMPROVED_BY_SESSIONS) -> list[float | None]:
    """1 - S(t) at the given session counts."""
    if kmf is None:
        return [None] * len(sessions)
    survival = kmf.survival_function_at_times(list(sessions)).to_numpy()
    return [float(1.0 - s) for s in survival]
