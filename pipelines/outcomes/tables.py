"""Tables the report and notebooks draw from: pain trajectories and Kaplan-Meier curves."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats as sps

from pipelines.outcomes.stats import CONFIDENCE, kaplan_meier
from pipelines.outcomes.summary import ALL

TRAJECTORY_SCHEMA = {"condition": pl.String, "session_number": pl.Int64, "n": pl.Int64, "mean_pre": pl.Float64,
                     "sd_pre": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64}
KM_SCHEMA = {"condition": pl.String, "t": pl.Float64, "survival": pl.Float64, "ci_low": pl.Float64,
             "ci_high": pl.Float64, "improved": pl.Float64, "at_risk": pl.Int64, "events": pl.Int64,
             "censored": pl.Int64}


def pain_trajectories(scored_sessions: pl.DataFrame, episodes: pl.DataFrame) -> pl.DataFrame:
    """Mean ``pre`` score by session number k per condition (and ALL), with n and a 95% t interval.

    ``scored_sessions`` comes from :func:`pipelines.outcomes.metrics.session_scores`.
    The interval is empty for n < 2 and equals the mean when the sd is 0.
    """
    pre = (scored_sessions.filter(pl.col("pre").is_not_null())
           .join(episodes.select("episode_id", "condition"), on="episode_id")
           .select("condition", pl.col("k").alias("session_number"), "pre"))
    both = pl.concat([pre, pre.with_columns(pl.lit(ALL).alias("condition"))], how="vertical")
    grouped = (both.group_by("condition", "session_number")
               .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("pre").mean().alias("mean_pre"),
                    pl.col("pre").std(ddof=1).alias("sd_pre"))
               .sort("condition", "session_number"))
    n = grouped["n"].to_numpy()
    sd = grouped["sd_pre"].fill_null(np.nan).to_numpy()
    mean = grouped["mean_pre"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        half = sps.t.ppf(0.5 + CONFIDENCE / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return grouped.with_columns(
        pl.Series("ci_low", mean - half).fill_nan(None), pl.Series("ci_high", mean + half).fill_nan(None)
    ).cast(TRAJECTORY_SCHEMA).select(list(TRAJECTORY_SCHEMA))


def km_curves(outcomes: pl.DataFrame) -> pl.DataFrame:
    """The Kaplan-Meier curve of sessions to response per condition and ALL (lifelines).

    One row per event time (plus t = 0): S(t), its pointwise 95% band, the share improved
    1 - S(t), and the numbers at risk, responding and censored at t.
    """
    analysed = outcomes.filter(pl.col("analysed"))
    frames = []
    labels = sorted(analysed["condition"].unique().to_list()) + [ALL]
    for label in labels:
        group = analysed if label == ALL else analysed.filter(pl.col("condition") == label)
        kmf = kaplan_meier(group["sessions_to_response"].to_numpy(), group["response_observed"].to_numpy())
        if kmf is None:
            continue
        table = kmf.event_table
        band = kmf.confidence_interval_
        frames.append(pl.DataFrame({
            "condition": label,
            "t": kmf.survival_function_.index.to_numpy(dtype=float),
            "survival": kmf.survival_function_.iloc[:, 0].to_numpy(),
            "ci_low": band.iloc[:, 0].to_numpy(),
            "ci_high": band.iloc[:, 1].to_numpy(),
            "at_risk": table["at_risk"].to_numpy(),
            "events": table["observed"].to_numpy(),
            "censored": table["censored"].to_numpy(),
        }).with_columns((1.0 - pl.col("survival")).alias("improved")))
    if not frames:
        return pl.DataFrame(schema=KM_SCHEMA)
    return pl.concat(frames, how="vertical_relaxed").cast(KM_SCHEMA).select(list(KM_SCHEMA))
