"""Per-condition (and per clinic and condition) summaries, METRICS.md "One condition"."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from pipelines.outcomes import stats
from pipelines.outcomes.km import km_statistics
from pipelines.outcomes.metrics import episode_outcomes, session_relief
from pipelines.settings import Settings

ALL = "ALL"

SUMMARY_COLUMNS = [
    "condition", "n_episodes", "n_analysed", "baseline_mean", "final_mean", "mean_change",
    "mean_change_ci_low", "mean_change_ci_high", "median_change", "effect_size_dz", "p_value",
    "q_value", "responder_30_rate", "responder_30_ci_low", "responder_30_ci_high",
    "responder_50_rate", "responder_50_ci_low", "responder_50_ci_high",
    "median_sessions_to_response", "median_sessions_ci_low", "median_sessions_ci_high",
    "improved_by_session_3", "improved_by_session_6", "improved_by_session_10",
    "mean_sessions_attended", "adherence", "immediate_relief_mean", "suppressed",
]
_FLOAT_COLUMNS = [c for c in SUMMARY_COLUMNS if c not in ("condition", "n_episodes", "n_analysed", "suppressed")]
SUMMARY_SCHEMA = {"condition": pl.String, "n_episodes": pl.Int64, "n_analysed": pl.Int64,
                  **{c: pl.Float64 for c in _FLOAT_COLUMNS}, "suppressed": pl.Boolean}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _kaplan_meier(analysed: pl.DataFrame, by: list[str]) -> dict[tuple, dict]:
    """Median sessions to response (with interval) and share improved by 3/6/10 sessions per group."""
    table = km_statistics(analysed, by, stats.IMPROVED_BY_SESSIONS)
    return {tuple(row[c] for c in by): row for row in table.iter_rows(named=True)}


def group_statistics(outcomes: pl.DataFrame, relief: pl.DataFrame | None, settings: Settings,
                     with_p_value: bool = True, km: dict | None = None, relief_mean: float | None = None) -> dict:
    """Every METRICS.md statistic for one group of episodes (all of them, analysed or not).

    ``km`` is the group's row of :func:`pipelines.outcomes.km.km_statistics` when the
    caller estimated every group's curve at once; without it the curve is estimated here.
    ``relief`` is the group's session relief table; a caller that averaged it already
    passes ``relief=None`` and the mean as ``relief_mean``.
    """
    analysed = outcomes.filter(pl.col("analysed"))
    change = analysed["change"].to_numpy().astype(np.float64)
    n = len(change)
    mean_change, ci_low, ci_high = stats.mean_with_t_interval(change)
    r30 = stats.wilson_interval(int(analysed["responder_30"].sum()), n)
    r50 = stats.wilson_interval(int(analysed["responder_50"].sum()), n)
    if km is None and n:
        km = _kaplan_meier(analysed, [])[()]
    km = km or {}
    median, median_low, median_high = km.get("median"), km.get("median_low"), km.get("median_high")
    improved = [km.get(f"improved_by_{s}") for s in stats.IMPROVED_BY_SESSIONS]
    attended = outcomes.filter(pl.col("sessions_attended") >= 1)
    prescribed = attended.filter(pl.col("prescribed_sessions").is_not_null())
    return {
        "n_episodes": outcomes.height,
        "n_analysed": n,
        "baseline_mean": _mean(analysed["baseline_pain"].to_numpy().astype(np.float64)),
        "final_mean": _mean(analysed["final_pain"].to_numpy().astype(np.float64)),
        "mean_change": mean_change,
        "mean_change_ci_low": ci_low,
        "mean_change_ci_high": ci_high,
        "median_change": float(np.median(change)) if n else None,
        "effect_size_dz": stats.standardised_response_mean(change),
        "p_value": stats.wilcoxon_p(change) if with_p_value else None,
        "responder_30_rate": r30[0], "responder_30_ci_low": r30[1], "responder_30_ci_high": r30[2],
        "responder_50_rate": r50[0], "responder_50_ci_low": r50[1], "responder_50_ci_high": r50[2],
        "median_sessions_to_response": median,
        "median_sessions_ci_low": median_low,
        "median_sessions_ci_high": median_high,
        "improved_by_session_3": improved[0],
        "improved_by_session_6": improved[1],
        "improved_by_session_10": improved[2],
        "mean_sessions_attended": _mean(attended["sessions_attended"].to_numpy().astype(np.float64)),
        "adherence": _mean((prescribed["sessions_attended"] / prescribed["prescribed_sessions"]).to_numpy()),
        "immediate_relief_mean": relief_mean if relief is None else _mean(relief["relief"].to_numpy().astype(np.float64)),
        "suppressed": n < settings.min_cell_size,
    }


def summarise(outcomes: pl.DataFrame, relief: pl.DataFrame, settings: Settings,
              by: list[str], pooled_label: str | None = ALL, with_p_values: bool = True) -> pl.DataFrame:
    """One row per group of ``by`` (sorted), plus a pooled row labelled ``pooled_label``.

    The pooled row pools every episode; q_value is Benjamini-Hochberg over the group rows
    with a p (suppressed ones included) and the pooled row keeps its p as its q.
    """
    rows: list[dict] = []
    missing = [c for c in by if c not in relief.columns]
    if missing:  # e.g. age_band: take each session's group from its episode
        relief = relief.join(outcomes.select("episode_id", *missing), on="episode_id", how="left")
    relief_means = {tuple(row[:-1]): row[-1] for row in
                    relief.group_by(by).agg(pl.col("relief").cast(pl.Float64).mean()).iter_rows()}
    # groups in sorted order, a missing value (None) last
    ordered = sorted(outcomes.partition_by(by, as_dict=True).items(),
                     key=lambda item: tuple((v is None, v if v is not None else "") for v in item[0]))
    curves = _kaplan_meier(outcomes.filter(pl.col("analysed")), by)  # every group's curve in one pass
    for keys, group in ordered:
        stats_row = group_statistics(group, None, settings, with_p_values, km=curves.get(keys, {}),
                                     relief_mean=relief_means.get(keys))
        rows.append({**dict(zip(by, keys)), **stats_row})
    with_p = [r for r in rows if r["p_value"] is not None]
    for row, q in zip(with_p, stats.benjamini_hochberg([r["p_value"] for r in with_p])):
        row["q_value"] = q
    if pooled_label is not None:
        pooled = group_statistics(outcomes, relief, settings, with_p_values)
        pooled["q_value"] = pooled["p_value"]
        rows.append({**{c: pooled_label for c in by}, **pooled})
    schema = {**{c: pl.String for c in by}, "n_episodes": pl.Int64, "n_analysed": pl.Int64,
              **{c: pl.Float64 for c in _FLOAT_COLUMNS}, "suppressed": pl.Boolean}
    frame = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return frame.select(*by, *[c for c in SUMMARY_COLUMNS if c != "condition"])


def condition_summary_from(outcomes: pl.DataFrame, relief: pl.DataFrame, settings: Settings | None = None) -> pl.DataFrame:
    return summarise(outcomes, relief, settings or Settings(), by=["condition"])


def condition_summary(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                      as_of: date, settings: Settings | None = None) -> pl.DataFrame:
    """The condition_summary table of METRICS.md from the accepted tables, as of ``as_of``."""
    settings = settings or Settings()
    outcomes = episode_outcomes(episodes, sessions, pain_scores, as_of, settings)
    relief = session_relief(episodes, sessions, pain_scores, as_of)
    return condition_summary_from(outcomes, relief, settings)


def clinic_condition_summary(outcomes: pl.DataFrame, relief: pl.DataFrame, settings: Settings | None = None) -> pl.DataFrame:
    """The same statistics per clinic and condition (for funnel plots), with a per-clinic ALL.

    p_value and q_value are left empty here: clinics are compared with funnel plots
    (METRICS.md "Publishing"), not with a test per clinic cell, and scipy's exact
    Wilcoxon for small tied samples costs ~0.5 s a cell.
    """
    settings = settings or Settings()
    cells = summarise(outcomes, relief, settings, by=["clinic_id", "condition"], pooled_label=None,
                      with_p_values=False)
    clinic_all = summarise(outcomes, relief, settings, by=["clinic_id"], pooled_label=None,
                           with_p_values=False).with_columns(pl.lit(ALL).alias("condition"))
    return pl.concat([cells, clinic_all.select(cells.columns)], how="vertical").sort("clinic_id", "condition")
