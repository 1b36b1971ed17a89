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


#: the episode_outcomes columns the statistics read (with the grouping columns)
STATISTICS_COLUMNS = ["analysed", "change", "baseline_pain", "final_pain", "responder_30", "responder_50",
                      "sessions_attended", "prescribed_sessions", "sessions_to_response", "response_observed"]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _kaplan_meier(analysed: pl.DataFrame, by: list[str]) -> dict[tuple, dict]:
    """Median sessions to response (with interval) and share improved by 3/6/10 sessions per group."""
    table = km_statistics(analysed, by, stats.IMPROVED_BY_SESSIONS)
    return {tuple(row[c] for c in by): row for row in table.iter_rows(named=True)}


class _Columns:
    """The columns the statistics read, each converted to numpy once for all groups.

    A group's values are taken from these arrays by row index, in row order: the same
    arrays, value for value, as filtering the group's frame and converting it, so every
    statistic is computed on exactly the numbers it was computed on before (nulls are NaN
    in float columns, as ``to_numpy`` gives them; flags are the rows a polars filter keeps)."""

    def __init__(self, outcomes: pl.DataFrame):
        flags = outcomes.select(pl.col("analysed", "responder_30", "responder_50").fill_null(False),
                                pl.col("prescribed_sessions").is_not_null().alias("prescribed"))
        self.analysed, self.responder_30, self.responder_50, self.prescribed = (
            flags[c].to_numpy() for c in ("analysed", "responder_30", "responder_50", "prescribed"))
        self.change, self.baseline, self.final, self.attended, self.prescribed_sessions = (
            outcomes[c].to_numpy() for c in ("change", "baseline_pain", "final_pain", "sessions_attended",
                                              "prescribed_sessions"))


def _statistics(columns: _Columns, rows: np.ndarray | slice, settings: Settings, with_p_value: bool, km: dict | None,
                relief_mean: float | None) -> dict:
    """Every METRICS.md statistic of the episodes ``rows`` of ``columns`` (see group_statistics)."""
    analysed = columns.analysed[rows]
    change = columns.change[rows][analysed].astype(np.float64)
    n = len(change)
    mean_change, ci_low, ci_high = stats.mean_with_t_interval(change)
    r30 = stats.wilson_interval(int(np.count_nonzero(columns.responder_30[rows][analysed])), n)
    r50 = stats.wilson_interval(int(np.count_nonzero(columns.responder_50[rows][analysed])), n)
    km = km or {}
    median, median_low, median_high = km.get("median"), km.get("median_low"), km.get("median_high")
    improved = [km.get(f"improved_by_{s}") for s in stats.IMPROVED_BY_SESSIONS]
    attended_all = columns.attended[rows]
    attended = attended_all >= 1  # a missing count (NaN) is not >= 1, as a polars filter drops it
    prescribed = attended & columns.prescribed[rows]
    with np.errstate(divide="ignore", invalid="ignore"):  # polars gives inf and NaN here too
        adherence = (attended_all[prescribed].astype(np.float64)
                     / columns.prescribed_sessions[rows][prescribed].astype(np.float64))
    return {
        "n_episodes": len(analysed),
        "n_analysed": n,
        "baseline_mean": _mean(columns.baseline[rows][analysed].astype(np.float64)),
        "final_mean": _mean(columns.final[rows][analysed].astype(np.float64)),
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
        "mean_sessions_attended": _mean(attended_all[attended].astype(np.float64)),
        "adherence": _mean(adherence),
        "immediate_relief_mean": relief_mean,
        "suppressed": n < settings.min_cell_size,
    }


def group_statistics(outcomes: pl.DataFrame, relief: pl.DataFrame | None, settings: Settings,
                     with_p_value: bool = True, km: dict | None = None, relief_mean: float | None = None) -> dict:
    """Every METRICS.md statistic for one group of episodes (all of them, analysed or not).

    ``km`` is the group's row of :func:`pipelines.outcomes.km.km_statistics` when the
    caller estimated every group's curve at once; without it the curve is estimated here.
    ``relief`` is the group's session relief table; a caller that averaged it already
    passes ``relief=None`` and the mean as ``relief_mean``.
    """
    outcomes = outcomes.select(STATISTICS_COLUMNS)
    return _all_of(outcomes, _Columns(outcomes), relief, settings, with_p_value, km, relief_mean)


def _all_of(outcomes: pl.DataFrame, columns: _Columns, relief: pl.DataFrame | None, settings: Settings,
            with_p_value: bool, km: dict | None, relief_mean: float | None) -> dict:
    """:func:`group_statistics` of every row of ``outcomes``, whose ``columns`` are given."""
    if km is None and columns.analysed.any():
        km = _kaplan_meier(outcomes.filter(pl.col("analysed")), [])[()]
    if relief is not None:
        relief_mean = _mean(relief["relief"].to_numpy().astype(np.float64))
    return _statistics(columns, slice(None), settings, with_p_value, km, relief_mean)


def _runs(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """The first row (``_start``) and keys of every run of rows with the same ``by`` values.

    Session relief comes in runs of one episode's sessions, so its five million rows at a
    million episodes are a million runs. Runs of more columns are runs of fewer ones too
    (only shorter), so one set of runs serves every grouping by some of its columns."""
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    new_run = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift()) for c in by]) | (position == 0)
    return frame.select(*by, position.alias("_start")).filter(new_run)


def _group_rows(runs: pl.DataFrame, height: int, by: list[str]) -> list[tuple[tuple, np.ndarray]]:
    """Every group of ``by`` (missing values form a group) with its row numbers, in row
    order, from :func:`_runs` (by ``by`` or more columns) of a frame of ``height`` rows."""
    groups = runs.with_row_index("_run").group_by(by).agg(pl.col("_run").sort())
    order = groups["_run"].explode().to_numpy()
    starts = runs["_start"].to_numpy()
    lengths = np.diff(np.append(starts, height))[order]
    first = np.repeat(starts[order] - (np.cumsum(lengths) - lengths), lengths)
    rows = first + np.arange(len(first))
    group_ends = np.cumsum(groups["_run"].list.len().to_numpy().astype(np.int64))  # in runs
    row_ends = np.cumsum(lengths)[group_ends - 1] if len(order) else group_ends
    return list(zip(groups.select(by).iter_rows(), np.split(rows, row_ends[:-1])))


class _Prepared:
    """What every summary of one outcomes table and relief table shares, done once: the
    statistics columns as numpy arrays, the analysed episodes, the relief values present,
    and both tables' runs of rows with the same ``finest`` keys (for any grouping by some
    of them)."""

    def __init__(self, outcomes: pl.DataFrame, relief: pl.DataFrame, finest: list[str]):
        self.outcomes = outcomes.select(*finest, *STATISTICS_COLUMNS)
        self.columns = _Columns(self.outcomes)
        self.analysed = self.outcomes.filter(pl.col("analysed"))
        self.relief = relief
        present = relief.filter(pl.col("relief").is_not_null())
        self.relief_values = present["relief"].to_numpy().astype(np.float64)
        self._outcome_runs, self._relief_runs = _runs(self.outcomes, finest), _runs(present, finest)

    def outcome_groups(self, by: list[str]) -> list[tuple[tuple, np.ndarray]]:
        return _group_rows(self._outcome_runs, self.outcomes.height, by)

    def relief_groups(self, by: list[str]) -> list[tuple[tuple, np.ndarray]]:
        return _group_rows(self._relief_runs, len(self.relief_values), by)


def summarise(outcomes: pl.DataFrame, relief: pl.DataFrame, settings: Settings,
              by: list[str], pooled_label: str | None = ALL, with_p_values: bool = True) -> pl.DataFrame:
    """One row per group of ``by`` (sorted), plus a pooled row labelled ``pooled_label``.

    The pooled row pools every episode; q_value is Benjamini-Hochberg over the group rows
    with a p (suppressed ones included) and the pooled row keeps its p as its q.
    ``outcomes`` needs ``by`` and :data:`STATISTICS_COLUMNS` (and episode_id when ``relief``
    lacks a column of ``by``); ``relief`` needs ``by`` (or episode_id) and relief.
    """
    missing = [c for c in by if c not in relief.columns]
    if missing:  # e.g. age_band: take each session's group from its episode
        relief = relief.join(outcomes.select("episode_id", *missing), on="episode_id", how="left",
                             maintain_order="left")
    return _summarise(_Prepared(outcomes, relief, by), settings, by, pooled_label, with_p_values)


def _summarise(prepared: _Prepared, settings: Settings, by: list[str], pooled_label: str | None,
               with_p_values: bool) -> pl.DataFrame:
    """:func:`summarise` from the shared work of ``prepared`` (runs by ``by`` or more columns)."""
    rows: list[dict] = []
    # each group's mean summed by numpy in row order, as the pooled row's: polars' grouped
    # mean adds in an order that varies from run to run (in the last bits of the result)
    relief_means = {keys: _mean(prepared.relief_values[rows]) for keys, rows in prepared.relief_groups(by)}
    # groups in sorted order, a missing value (None) last
    ordered = sorted(prepared.outcome_groups(by),
                     key=lambda item: tuple((v is None, v if v is not None else "") for v in item[0]))
    curves = _kaplan_meier(prepared.analysed, by)  # every group's curve in one pass
    columns = prepared.columns
    for keys, group_rows in ordered:
        stats_row = _statistics(columns, group_rows, settings, with_p_values, curves.get(keys, {}),
                                relief_means.get(keys))
        rows.append({**dict(zip(by, keys)), **stats_row})
    with_p = [r for r in rows if r["p_value"] is not None]
    for row, q in zip(with_p, stats.benjamini_hochberg([r["p_value"] for r in with_p])):
        row["q_value"] = q
    if pooled_label is not None:
        pooled = _all_of(prepared.outcomes, columns, prepared.relief, settings, with_p_values, None, None)
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
    return _clinic_summary(_Prepared(outcomes, relief, _CLINIC_CELLS), settings or Settings())


_CLINIC_CELLS = ["clinic_id", "condition"]


def _clinic_summary(prepared: _Prepared, settings: Settings) -> pl.DataFrame:
    cells = _summarise(prepared, settings, _CLINIC_CELLS, pooled_label=None, with_p_values=False)
    clinic_all = _summarise(prepared, settings, ["clinic_id"], pooled_label=None,
                            with_p_values=False).with_columns(pl.lit(ALL).alias("condition"))
    return pl.concat([cells, clinic_all.select(cells.columns)], how="vertical").sort("clinic_id", "condition")


def summaries(outcomes: pl.DataFrame, relief: pl.DataFrame, settings: Settings | None = None
              ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``condition_summary_from`` and ``clinic_condition_summary`` of the same tables, with
    the work they share done once (``outcomes`` and ``relief`` need clinic_id too)."""
    settings = settings or Settings()
    prepared = _Prepared(outcomes, relief, _CLINIC_CELLS)
    return _summarise(prepared, settings, ["condition"], ALL, True), _clinic_summary(prepared, settings)
