"""Sanity checks on the outcome tables (METRICS.md invariants), visible in the Dagster UI."""

import dagster as dg
import polars as pl

from pipelines.defs.resources import ProcessedTableIOManager

RATES = ["responder_30_rate", "responder_30_ci_low", "responder_30_ci_high", "responder_50_rate",
         "responder_50_ci_low", "responder_50_ci_high", "improved_by_session_3", "improved_by_session_6",
         "improved_by_session_10"]
INTERVALS = [("mean_change", "mean_change_ci_low", "mean_change_ci_high"),
             ("responder_30_rate", "responder_30_ci_low", "responder_30_ci_high"),
             ("responder_50_rate", "responder_50_ci_low", "responder_50_ci_high"),
             ("median_sessions_to_response", "median_sessions_ci_low", "median_sessions_ci_high")]
ADDITIVE = ["n_episodes", "n_analysed"]
TOLERANCE = 1e-9


def summary_problems(summary: pl.DataFrame) -> dict[str, list[str]]:
    """Every violated invariant of a summary table, by name, with the offending rows."""
    label = "condition"
    problems: dict[str, list[str]] = {}
    for column in RATES:
        bad = summary.filter((pl.col(column) < -TOLERANCE) | (pl.col(column) > 1 + TOLERANCE))
        if bad.height:
            problems[f"{column} outside 0..1"] = bad[label].to_list()
    for estimate, low, high in INTERVALS:
        bad = summary.filter((pl.col(low) > pl.col(estimate) + TOLERANCE) | (pl.col(high) < pl.col(estimate) - TOLERANCE))
        if bad.height:
            problems[f"{low}..{high} does not contain {estimate}"] = bad[label].to_list()
    bad = summary.filter(pl.col("n_analysed") > pl.col("n_episodes"))
    if bad.height:
        problems["n_analysed > n_episodes"] = bad[label].to_list()
    pooled = summary.filter(pl.col(label) == "ALL")
    rest = summary.filter(pl.col(label) != "ALL")
    if pooled.height != 1:
        problems["ALL row"] = [f"{pooled.height} ALL rows"]
    else:
        for column in ADDITIVE:
            if int(pooled[column][0]) != int(rest[column].sum()):
                problems[f"ALL {column} != sum of conditions"] = [f"{pooled[column][0]} vs {rest[column].sum()}"]
    return problems


@dg.asset_check(asset="condition_summary", blocking=True,
                description="Rates in 0..1, intervals contain estimates, n_analysed <= n_episodes, ALL = sum of rows.")
def condition_summary_invariants(condition_summary: pl.DataFrame) -> dg.AssetCheckResult:
    problems = summary_problems(condition_summary)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems),
                                                              "rows": condition_summary.height})


#: the episode_outcomes columns :func:`outcome_problems` reads
CONSISTENCY_COLUMNS = ["episode_id", "exclusion_reason", "baseline_pain", "final_pain", "change", "pct_change",
                       "sessions_to_response"]


def outcome_problems(outcomes: pl.DataFrame) -> dict[str, int]:
    """Analysed episodes missing an outcome field, unknown exclusion reasons, and rows whose
    episode_id repeats (every such row counted, as ``is_duplicated`` counts them)."""
    from pipelines.outcomes.metrics import EXCLUSION_REASONS

    analysed = outcomes.filter(pl.col("exclusion_reason").is_null())
    incomplete = analysed.filter(pl.any_horizontal(pl.col(c).is_null() for c in (
        "baseline_pain", "final_pain", "change", "pct_change", "sessions_to_response"))).height
    unknown = outcomes.filter(pl.col("exclusion_reason").is_not_null()
                              & ~pl.col("exclusion_reason").is_in(list(EXCLUSION_REASONS))).height
    return {"analysed_with_missing_fields": incomplete, "unknown_exclusion_reasons": unknown,
            "duplicate_episode_ids": _repeated_rows(outcomes["episode_id"])}


def _repeated_rows(ids: pl.Series) -> int:
    """``ids.is_duplicated().sum()``. The table comes sorted by episode_id, where a repeated
    value sits next to its twin: then only neighbours are compared (no hashing of a
    million ids)."""
    if ids.null_count() == 0 and bool((ids.shift() <= ids).fill_null(True).all()):
        return int(((ids == ids.shift()) | (ids == ids.shift(-1))).fill_null(False).sum())
    return int(ids.is_duplicated().sum())


@dg.asset_check(asset="episode_outcomes", blocking=True,
                description="Analysed episodes have every outcome field; excluded ones have a known reason.")
def episode_outcomes_consistent(processed_io_manager: dg.ResourceParam[ProcessedTableIOManager]
                                ) -> dg.AssetCheckResult:
    # read through the I/O manager's storage with a column list (an AssetIn on a checked asset
    # cannot carry one): a fifth of the table's columns
    problems = outcome_problems(processed_io_manager.read("episode_outcomes", CONSISTENCY_COLUMNS))
    return dg.AssetCheckResult(passed=not any(problems.values()), metadata=problems)
