"""Kaplan-Meier estimates for many groups at once, with lifelines' formulas.

``lifelines.KaplanMeierFitter`` is the reference implementation, but each fit costs
25-100 ms of pandas overhead whatever the group size, and the pipeline fits one curve
per condition, per clinic and condition, and per report week: hundreds of fits a run.
Here every group is estimated in one polars pass with exactly lifelines' arithmetic
(``KaplanMeierFitter._fit``, ``_additive_estimate``, ``_bounds``, ``qth_survival_time``
and ``survival_function_at_times``, lifelines 0.30):

* timeline: 0 and every distinct duration of the group (event or censoring);
* at_risk(t) = n - removed before t; S(t) = exp(cumsum(log(at_risk - d) - log(at_risk)));
* Greenwood: var(t) = cumsum(d / (at_risk (at_risk - d))), a term with d = at_risk counted 0;
* 95% band, exponential Greenwood ("log(-log)"): with v = log S,
  exp(-exp(log(-v) -/+ z sqrt(var) / v)), and 1 where that is undefined (S = 1);
* median (and its interval, from the band's two curves): the first t with S(t) <= 0.5,
  none when the curve stays above 0.5;
* S at a session count s: S at the largest timeline point <= s.

``tests/test_km.py`` checks every value against lifelines on random and edge-case groups.
"""

from __future__ import annotations


import numpy as np
import polars as pl
from scipy import stats as sps

CONFIDENCE = 0.95
_GROUP = "__km_group"


def _with_group(frame: pl.DataFrame, by: list[str]) -> tuple[pl.DataFrame, list[str]]:
    if by:
        return frame, by
    return frame.with_columns(pl.lit(0).alias(_GROUP)), [_GROUP]


def km_table(frame: pl.DataFrame, by: list[str], duration: str = "sessions_to_response",
             observed: str = "response_observed", confidence: float = CONFIDENCE) -> pl.DataFrame:
    """One row per group of ``by`` and timeline point t (0 and every distinct duration).

    Columns: the ``by`` keys, t, at_risk, events, censored, survival, ci_low, ci_high.
    Groups with no rows have no rows here. ``by`` may be empty (one group).
    """
    data, keys = _with_group(frame.select(*by, duration, observed), by)
    counts = (
        data.group_by(*keys, pl.col(duration).cast(pl.Float64).alias("t"))
        .agg(pl.len().cast(pl.Int64).alias("removed"), pl.col(observed).cast(pl.Int64).sum().alias("events"))
    )
    # lifelines' event table starts at min(0, smallest duration) with nobody removed
    origin = counts.select(keys).unique().with_columns(
        pl.lit(0.0).alias("t"), pl.lit(0, pl.Int64).alias("removed"), pl.lit(0, pl.Int64).alias("events"))
    table = (
        pl.concat([counts, origin], how="vertical")
        .group_by(*keys, "t").agg(pl.col("removed").sum(), pl.col("events").sum())
        .sort(*keys, "t")
        .with_columns(
            (pl.col("removed").sum().over(keys) - pl.col("removed").cum_sum().shift(1, fill_value=0).over(keys))
            .alias("at_risk"))
        .with_columns((pl.col("removed") - pl.col("events")).alias("censored"))
    )
    at_risk = table["at_risk"].to_numpy().astype(np.float64)
    deaths = table["events"].to_numpy().astype(np.float64)
    group_id = table.select(pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])
                            .cum_sum()).to_series().to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_terms = np.log(at_risk - deaths) - np.log(at_risk)
        var_terms = deaths / (at_risk * (at_risk - deaths))
    var_terms[np.isinf(var_terms)] = 0.0
    log_estimate = _grouped_cumsum(log_terms, group_id)
    variance = _grouped_cumsum(var_terms, group_id)
    survival = np.exp(log_estimate)
    z = sps.norm.ppf(1 - (1 - confidence) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(survival)
        ci_low = np.exp(-np.exp(np.log(-v) - z * np.sqrt(variance) / v))
        ci_high = np.exp(-np.exp(np.log(-v) + z * np.sqrt(variance) / v))
    ci_low[np.isnan(ci_low)] = 1.0
    ci_high[np.isnan(ci_high)] = 1.0
    out = table.select(*keys, "t", "at_risk", "events", "censored").with_columns(
        pl.Series("survival", survival), pl.Series("ci_low", ci_low), pl.Series("ci_high", ci_high))
    return out if by else out.drop(_GROUP)


def _grouped_cumsum(values: np.ndarray, group_id: np.ndarray) -> np.ndarray:
    """Running sums restarting at each group (rows sorted by group), summed left to right
    like pandas' cumsum, so the floating-point result equals lifelines' per-group one."""
    out = np.empty_like(values)
    starts = np.flatnonzero(np.r_[True, group_id[1:] != group_id[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        np.cumsum(values[start:end], out=out[start:end])
    return out


def _first_at_or_below(column: str, level: float) -> pl.Expr:
    return pl.col("t").filter(pl.col(column) <= level).first()


def km_statistics(frame: pl.DataFrame, by: list[str], at_sessions: tuple[int, ...],
                  duration: str = "sessions_to_response", observed: str = "response_observed",
                  confidence: float = CONFIDENCE) -> pl.DataFrame:
    """Per group: median sessions to response with its interval, and 1 - S(s) at each s.

    Columns: the ``by`` keys, median, median_low, median_high (null where the curve, or the
    band's curve, never reaches 0.5), and improved_by_<s> for each s in ``at_sessions``.
    """
    table, keys = _with_group(km_table(frame, by, duration, observed, confidence), by)
    aggregations = [
        _first_at_or_below("survival", 0.5).alias("median"),
        _first_at_or_below("ci_low", 0.5).alias("median_low"),
        _first_at_or_below("ci_high", 0.5).alias("median_high"),
        *[(1.0 - pl.col("survival").filter(pl.col("t") <= s).last()).alias(f"improved_by_{s}")
          for s in at_sessions],
    ]
    out = table.group_by(keys, maintain_order=True).agg(aggregations)
    return out if by else out.drop(_GROUP)
