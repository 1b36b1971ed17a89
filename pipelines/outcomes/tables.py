"""Tables the report and notebooks draw from: pain trajectories and Kaplan-Meier curves."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats as sps

from pipelines.outcomes.km import km_table
from pipelines.outcomes.metrics import with_episode_columns
from pipelines.outcomes.stats import CONFIDENCE
from pipelines.outcomes.summary import ALL

TRAJECTORY_SCHEMA = {"condition": pl.String, "session_number": pl.Int64, "n": pl.Int64, "mean_pre": pl.Float64,
                     "sd_pre": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64}
KM_SCHEMA = {"condition": pl.String, "t": pl.Float64, "survival": pl.Float64, "ci_low": pl.Float64,
             "ci_high": pl.Float64, "improved": pl.Float64, "at_risk": pl.Int64, "events": pl.Int64,
             "censored": pl.Int64}


def pain_trajectories(scored_sessions: pl.DataFrame, episodes: pl.DataFrame,
                      rows: pl.Series | None = None) -> pl.DataFrame:
    """Mean ``pre`` score by session number k per condition (and ALL), with n and a 95% t interval.

    ``scored_sessions`` comes from :func:`pipelines.outcomes.metrics.scored_sessions` (only
    episode_id, k and pre are read). The interval is empty for n < 2 and equals the mean
    when the sd is 0. ``rows``: each scored session's row of ``episodes`` when known
    (:func:`pipelines.outcomes.metrics.episode_rows`), instead of looking its episode up.
    """
    has_pre = scored_sessions["pre"].is_not_null()
    pre = scored_sessions.select("episode_id", pl.col("k").alias("session_number"), "pre").filter(has_pre)
    if rows is not None:
        rows = rows.filter(has_pre)
    statistics = [pl.len().cast(pl.Int64).alias("n"), pl.col("pre").mean().alias("mean_pre"),
                  pl.col("pre").std(ddof=1).alias("sd_pre")]
    conditions = episodes["condition"].drop_nulls().unique().sort()
    if ALL in conditions:  # its rows share the pooled rows' group, as in the concatenation below
        pre = with_episode_columns(pre, episodes, ["condition"], rows).select("condition", "session_number", "pre")
        both = pl.concat([pre, pre.with_columns(pl.lit(ALL).alias("condition"))], how="vertical")
        grouped = both.group_by("condition", "session_number").agg(statistics)
    else:
        # A group's statistics depend only on its values in row order, so the groups can be
        # formed any way that keeps them: the pooled rows on their own, and each condition's
        # by one integer, (condition's number) * 2**32 + k, cheaper to group than text.
        # (k counts an episode's sessions.)
        coded = episodes.select("episode_id", pl.col("condition").cast(pl.Enum(conditions)).to_physical()
                                .cast(pl.Int64).fill_null(len(conditions)).alias("_condition"))
        key = (pl.col("_condition") * 2**32 + pl.col("session_number")).alias("_key")
        by_key = with_episode_columns(pre, coded, ["_condition"], rows).group_by(key).agg(statistics)
        names = pl.Series("condition", [*conditions, None], dtype=pl.String)
        per_condition = by_key.select(names.gather(by_key["_key"] // 2**32),
                                      (pl.col("_key") % 2**32).alias("session_number"), "n", "mean_pre", "sd_pre")
        pooled = pre.group_by("session_number").agg(statistics).select(pl.lit(ALL).alias("condition"), pl.all())
        grouped = pl.concat([per_condition, pooled], how="vertical")
    grouped = grouped.sort("condition", "session_number")
    n = grouped["n"].to_numpy()
    sd = grouped["sd_pre"].fill_null(np.nan).to_numpy()
    mean = grouped["mean_pre"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        half = sps.t.ppf(0.5 + CONFIDENCE / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return grouped.with_columns(
        pl.Series("ci_low", mean - half).fill_nan(None), pl.Series("ci_high", mean + half).fill_nan(None)
    ).cast(TRAJECTORY_SCHEMA).select(list(TRAJECTORY_SCHEMA))


#: the episode_outcomes columns km_curves reads
KM_COLUMNS = ("condition", "analysed", "sessions_to_response", "response_observed")


def km_curves(outcomes: pl.DataFrame) -> pl.DataFrame:
    """The Kaplan-Meier curve of sessions to response per condition and ALL (``outcomes``
    needs :data:`KM_COLUMNS`).

    One row per timeline point (t = 0 and every distinct duration): S(t), its pointwise 95%
    band, the share improved 1 - S(t), and the numbers at risk, responding and censored at t.
    Estimated with :mod:`pipelines.outcomes.km` (lifelines' formulas, tested against it).
    """
    analysed = outcomes.filter(pl.col("analysed")).select("condition", "sessions_to_response", "response_observed")
    if analysed.is_empty():
        return pl.DataFrame(schema=KM_SCHEMA)
    per_condition = km_table(analysed.filter(pl.col("condition").is_not_null()), ["condition"])
    pooled = km_table(analysed, []).with_columns(pl.lit(ALL).alias("condition"))
    return (pl.concat([per_condition, pooled.select(per_condition.columns)], how="vertical_relaxed")
            .with_columns((1.0 - pl.col("survival")).alias("improved"))
            .cast(KM_SCHEMA).select(list(KM_SCHEMA)))
