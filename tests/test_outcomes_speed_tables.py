"""Session relief, pain trajectories and the summaries equal what they were before they were
made cheaper, exactly (values, dtypes, row order), on varied synthetic data.

The implementations they replaced are kept below as the reference (``_before_*``): a join
per session, a group-by over the conditions and an ALL copy of every row, and summaries
that partitioned and filtered the whole outcome table per group. The statistics are also
checked against scipy directly.

One column is not compared exactly: the summaries' immediate_relief_mean was polars' grouped
mean, which on two threads adds in an order that varies from run to run (the last bits of
the mean differ between two calls on the same data). It is now numpy's mean of the group's
relief values in row order, like the pooled row's: equal to the old one where the old one
was reproducible (sums without rounding, as with scores in halves), and otherwise to within
rounding.
"""

from __future__ import annotations

import math
import random
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from scipy import stats as sps

from pipelines.outcomes import stats
from pipelines.outcomes.metrics import episode_outcomes_from, episodes_as_of, scored_sessions, session_relief_from
from pipelines.outcomes.metrics import with_episode_columns
from pipelines.outcomes.summary import (ALL, SUMMARY_COLUMNS, _FLOAT_COLUMNS, _kaplan_meier, _mean,
                                        clinic_condition_summary, condition_summary_from, group_statistics, summarise)
from pipelines.outcomes.tables import CONFIDENCE, TRAJECTORY_SCHEMA, pain_trajectories
from pipelines.settings import Settings
from test_outcomes_incremental import START, accepted

# --------------------------------------------------------------------------------------
# the implementations before (the reference)
# --------------------------------------------------------------------------------------


def _before_relief(episodes: pl.DataFrame, scored: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """One join per session row. (Its inner join kept the sessions' order whenever they
    outnumbered the episodes, as at scale; in the opposite case the order was polars' choice.)"""
    eps = episodes_as_of(episodes, as_of)
    return (scored.filter(pl.col("pre").is_not_null() & pl.col("post").is_not_null())
            .join(eps.select("episode_id", "clinic_id", "condition"), on="episode_id", maintain_order="left")
            .with_columns((pl.col("pre") - pl.col("post")).alias("relief")))


def _before_trajectories(scored: pl.DataFrame, episodes: pl.DataFrame) -> pl.DataFrame:
    pre = (scored.filter(pl.col("pre").is_not_null())
           .join(episodes.select("episode_id", "condition"), on="episode_id", maintain_order="left")
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


def _before_group_statistics(outcomes, relief, settings, with_p_value=True, km=None, relief_mean=None) -> dict:
    analysed = outcomes.filter(pl.col("analysed"))
    change = analysed["change"].to_numpy().astype(np.float64)
    n = len(change)
    mean_change, ci_low, ci_high = stats.mean_with_t_interval(change)
    r30 = stats.wilson_interval(int(analysed["responder_30"].sum()), n)
    r50 = stats.wilson_interval(int(analysed["responder_50"].sum()), n)
    if km is None and n:
        km = _kaplan_meier(analysed, [])[()]
    km = km or {}
    improved = [km.get(f"improved_by_{s}") for s in stats.IMPROVED_BY_SESSIONS]
    attended = outcomes.filter(pl.col("sessions_attended") >= 1)
    prescribed = attended.filter(pl.col("prescribed_sessions").is_not_null())
    return {
        "n_episodes": outcomes.height, "n_analysed": n,
        "baseline_mean": _mean(analysed["baseline_pain"].to_numpy().astype(np.float64)),
        "final_mean": _mean(analysed["final_pain"].to_numpy().astype(np.float64)),
        "mean_change": mean_change, "mean_change_ci_low": ci_low, "mean_change_ci_high": ci_high,
        "median_change": float(np.median(change)) if n else None,
        "effect_size_dz": stats.standardised_response_mean(change),
        "p_value": stats.wilcoxon_p(change) if with_p_value else None,
        "responder_30_rate": r30[0], "responder_30_ci_low": r30[1], "responder_30_ci_high": r30[2],
        "responder_50_rate": r50[0], "responder_50_ci_low": r50[1], "responder_50_ci_high": r50[2],
        "median_sessions_to_response": km.get("median"), "median_sessions_ci_low": km.get("median_low"),
        "median_sessions_ci_high": km.get("median_high"),
        "improved_by_session_3": improved[0], "improved_by_session_6": improved[1],
        "improved_by_session_10": improved[2],
        "mean_sessions_attended": _mean(attended["sessions_attended"].to_numpy().astype(np.float64)),
        "adherence": _mean((prescribed["sessions_attended"] / prescribed["prescribed_sessions"]).to_numpy()),
        "immediate_relief_mean": relief_mean if relief is None else _mean(relief["relief"].to_numpy().astype(np.float64)),
        "suppressed": n < settings.min_cell_size,
    }


def _before_summarise(outcomes, relief, settings, by, pooled_label=ALL, with_p_values=True) -> pl.DataFrame:
    rows: list[dict] = []
    missing = [c for c in by if c not in relief.columns]
    if missing:
        relief = relief.join(outcomes.select("episode_id", *missing), on="episode_id", how="left")
    relief_means = {tuple(row[:-1]): row[-1] for row in
                    relief.group_by(by).agg(pl.col("relief").cast(pl.Float64).mean()).iter_rows()}
    ordered = sorted(outcomes.partition_by(by, as_dict=True).items(),
                     key=lambda item: tuple((v is None, v if v is not None else "") for v in item[0]))
    curves = _kaplan_meier(outcomes.filter(pl.col("analysed")), by)
    for keys, group in ordered:
        row = _before_group_statistics(group, None, settings, with_p_values, km=curves.get(keys, {}),
                                       relief_mean=relief_means.get(keys))
        rows.append({**dict(zip(by, keys)), **row})
    with_p = [r for r in rows if r["p_value"] is not None]
    for row, q in zip(with_p, stats.benjamini_hochberg([r["p_value"] for r in with_p])):
        row["q_value"] = q
    if pooled_label is not None:
        pooled = _before_group_statistics(outcomes, relief, settings, with_p_values)
        pooled["q_value"] = pooled["p_value"]
        rows.append({**{c: pooled_label for c in by}, **pooled})
    schema = {**{c: pl.String for c in by}, "n_episodes": pl.Int64, "n_analysed": pl.Int64,
              **{c: pl.Float64 for c in _FLOAT_COLUMNS}, "suppressed": pl.Boolean}
    frame = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return frame.select(*by, *[c for c in SUMMARY_COLUMNS if c != "condition"])


def _before_clinic_summary(outcomes, relief, settings) -> pl.DataFrame:
    cells = _before_summarise(outcomes, relief, settings, ["clinic_id", "condition"], None, False)
    clinic_all = _before_summarise(outcomes, relief, settings, ["clinic_id"], None, False).with_columns(
        pl.lit(ALL).alias("condition"))
    return pl.concat([cells, clinic_all.select(cells.columns)], how="vertical").sort("clinic_id", "condition")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

def _pipeline_tables(seed: int, n: int):
    """Accepted tables (generated as in test_outcomes_incremental) and their outcome tables."""
    rng = random.Random(seed)
    episodes, sessions, scores = accepted(n, seed, span_days=rng.choice([40, 120]))
    as_of = START + timedelta(days=rng.randrange(20, 200))
    scored = scored_sessions(episodes, sessions, scores, as_of)
    outcomes = episode_outcomes_from(episodes, scored, scores, as_of, Settings())
    return episodes, scored, outcomes, as_of


def _outcomes(seed: int, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """An outcome table and session relief drawn at random, with what the pipeline never
    makes but a cohort may hold: missing flags, counts and group keys, zero prescriptions,
    decimals with long expansions, ties and zero changes."""
    rng = np.random.default_rng(seed)
    analysed = rng.random(n) < rng.choice([0.0, 0.3, 0.8, 1.0])
    change = np.where(rng.random(n) < 0.2, rng.integers(-2, 3, n).astype(float), rng.normal(2, 3, n))
    if rng.random() < 0.2:
        change[:] = 0.0
    baseline = rng.integers(0, 11, n) + rng.random(n) / 3

    def maybe_null(values, share):
        return [None if rng.random() < share else v for v in values]

    frame = pl.DataFrame({
        "episode_id": [f"E{i:06d}" for i in rng.permutation(n)],
        "clinic_id": maybe_null(rng.choice(["C1", "C2", "C3", "C10"], n).tolist(), 0.05),
        "condition": maybe_null(rng.choice(["neck_pain", "low_back_pain", "knee_oa"], n).tolist(), 0.05),
        "sex": maybe_null(rng.choice(["F", "M"], n).tolist(), 0.2),
        "analysed": maybe_null(analysed.tolist(), 0.02),
        "change": [float(c) if a else None for c, a in zip(change, analysed)],
        "baseline_pain": maybe_null(baseline.tolist(), 0.05),
        "final_pain": maybe_null((baseline - change).tolist(), 0.05),
        "responder_30": maybe_null((change > 1.5).tolist(), 0.1),
        "responder_50": maybe_null((change > 3).tolist(), 0.1),
        "sessions_attended": maybe_null(rng.integers(0, 12, n).tolist(), 0.02),
        "prescribed_sessions": maybe_null(rng.integers(0, 10, n).tolist(), 0.3),
        "sessions_to_response": rng.integers(0, 12, n).tolist(),
        "response_observed": (rng.random(n) < 0.6).tolist(),
    }, schema_overrides={"episode_id": pl.String, "clinic_id": pl.String, "condition": pl.String, "sex": pl.String,
                         "analysed": pl.Boolean, "change": pl.Float64, "baseline_pain": pl.Float64,
                         "final_pain": pl.Float64, "responder_30": pl.Boolean, "responder_50": pl.Boolean,
                         "sessions_attended": pl.Int64, "prescribed_sessions": pl.Int64,
                         "sessions_to_response": pl.Int64, "response_observed": pl.Boolean})
    sessions = rng.integers(0, 6, n)
    relief = (frame.select("episode_id", "clinic_id", "condition", pl.Series("s", sessions)).filter(pl.col("s") > 0)
              .select(pl.exclude("s").repeat_by(pl.col("s")).explode())
              .with_columns(pl.Series("relief", rng.normal(1, 2, int(sessions.sum())))))
    return frame, relief


def _assert_same_summary(new: pl.DataFrame, before: pl.DataFrame, exact: bool = False) -> None:
    """Equal, immediate_relief_mean to within rounding unless ``exact`` (see the docstring)."""
    if not exact:
        assert_frame_equal(new.select("immediate_relief_mean"), before.select("immediate_relief_mean"),
                           check_exact=False, rel_tol=1e-12, abs_tol=1e-12)
        new, before = new.drop("immediate_relief_mean"), before.drop("immediate_relief_mean")
    assert_frame_equal(new, before, check_exact=True)


def _same_dict(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a)


# --------------------------------------------------------------------------------------
# session relief and the episode columns per run
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_session_relief_equals_a_join_per_session(seed):
    episodes, scored, _, as_of = _pipeline_tables(seed, random.Random(seed).choice([1, 5, 40, 200]))
    assert_frame_equal(session_relief_from(episodes, scored, as_of), _before_relief(episodes, scored, as_of),
                       check_exact=True)


def _joined(frame, episodes, columns):
    return frame.join(episodes.select("episode_id", *columns), on="episode_id", maintain_order="left")


def test_episode_columns_in_any_row_order_with_unknown_and_missing_episodes():
    episodes = pl.DataFrame({"episode_id": ["b", "a", "c", "d"], "clinic_id": ["C2", "C1", None, "C4"],
                             "condition": ["x", "y", "z", None]})
    frame = pl.DataFrame({"episode_id": ["a", "a", "q", "b", None, None, "a", "c", "c", "q", "d"],
                          "v": list(range(11))})
    out = with_episode_columns(frame, episodes, ["clinic_id", "condition"])
    # "q" (no such episode) and the missing ids are dropped, as an inner join drops them
    assert out["v"].to_list() == [0, 1, 3, 6, 7, 8, 10]
    assert out["clinic_id"].to_list() == ["C1", "C1", "C2", "C1", None, None, "C4"]
    assert out["condition"].to_list() == ["y", "y", "x", "y", "z", "z", None]
    assert_frame_equal(out, _joined(frame, episodes, ["clinic_id", "condition"]), check_exact=True)
    for seed in range(5):
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
        assert_frame_equal(with_episode_columns(shuffled, episodes, ["condition"]),
                           _joined(shuffled, episodes, ["condition"]), check_exact=True)


def test_episode_columns_of_a_repeated_episode_id_are_the_plain_join():
    episodes = pl.DataFrame({"episode_id": ["a", "b", "a"], "condition": ["x", "y", "z"]})
    frame = pl.DataFrame({"episode_id": ["a", "b", "b"], "v": [1, 2, 3]})
    out = with_episode_columns(frame, episodes, ["condition"])
    assert out.height == 4
    assert_frame_equal(out, _joined(frame, episodes, ["condition"]), check_exact=True)


def test_episode_columns_of_no_rows_and_of_rows_without_a_match():
    episodes = pl.DataFrame({"episode_id": ["a"], "condition": ["x"]})
    empty = pl.DataFrame(schema={"episode_id": pl.String, "v": pl.Int64})
    assert_frame_equal(with_episode_columns(empty, episodes, ["condition"]), _joined(empty, episodes, ["condition"]))
    none = pl.DataFrame({"episode_id": ["b", "c"], "v": [1, 2]})
    assert with_episode_columns(none, episodes, ["condition"]).columns == ["episode_id", "v", "condition"]
    assert with_episode_columns(none, episodes, ["condition"]).is_empty()


# --------------------------------------------------------------------------------------
# pain trajectories
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_pain_trajectories_equal_grouping_every_row_twice(seed):
    episodes, scored, _, as_of = _pipeline_tables(seed, random.Random(seed).choice([1, 5, 40, 300]))
    eps = episodes_as_of(episodes, as_of)
    if seed % 3 == 0:  # some episodes without a condition
        eps = eps.with_columns(pl.when(pl.col("episode_id").str.ends_with("1")).then(None)
                               .otherwise(pl.col("condition")).alias("condition"))
    new = pain_trajectories(scored, eps)
    assert_frame_equal(new, _before_trajectories(scored, eps), check_exact=True)
    # only the three columns it documents are read
    assert_frame_equal(pain_trajectories(scored.select("episode_id", "k", "pre"), eps), new, check_exact=True)


def test_pain_trajectories_with_a_condition_named_all_group_it_with_the_pooled_rows():
    episodes, scored, _, as_of = _pipeline_tables(3, 60)
    eps = episodes_as_of(episodes, as_of).with_columns(
        pl.when(pl.col("condition") == "neck_pain").then(pl.lit(ALL)).otherwise(pl.col("condition")).alias("condition"))
    new = pain_trajectories(scored, eps)
    assert new.filter(pl.col("condition") == ALL)["session_number"].is_unique().all()
    assert_frame_equal(new, _before_trajectories(scored, eps), check_exact=True)


def test_pain_trajectory_statistics_by_hand():
    scored = pl.DataFrame({"episode_id": ["a", "a", "b", "b", "c"], "k": [1, 2, 1, 2, 1],
                           "pre": [4.1, 3.0, 6.3, None, 5.0]})
    episodes = pl.DataFrame({"episode_id": ["a", "b", "c"], "condition": ["x", "x", "y"]})
    out = pain_trajectories(scored, episodes)
    assert out.select("condition", "session_number", "n").rows() == [
        ("ALL", 1, 3), ("ALL", 2, 1), ("x", 1, 2), ("x", 2, 1), ("y", 1, 1)]
    values = np.array([4.1, 6.3, 5.0])
    low, high = sps.t.interval(0.95, 2, loc=values.mean(), scale=values.std(ddof=1) / math.sqrt(3))
    row = out.row(0, named=True)
    assert row["mean_pre"] == pytest.approx(values.mean(), rel=1e-15)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, rel=1e-14), pytest.approx(high, rel=1e-14))
    assert out.row(1, named=True)["ci_low"] is None and out.row(1, named=True)["sd_pre"] is None


# --------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(16))
def test_summaries_equal_the_partitioned_ones_on_random_outcomes(seed):
    outcomes, relief = _outcomes(seed, [0, 1, 7, 60, 400, 3000][seed % 6])
    exact = seed % 2 == 0
    if exact:  # relief in halves: sums without rounding, so the old grouped mean was reproducible
        relief = relief.with_columns((pl.col("relief") * 2).round() / 2)
    settings = Settings(min_cell_size=[1, 5, 30][seed % 3])
    _assert_same_summary(condition_summary_from(outcomes, relief, settings),
                         _before_summarise(outcomes, relief, settings, ["condition"]), exact)
    _assert_same_summary(clinic_condition_summary(outcomes, relief, settings),
                         _before_clinic_summary(outcomes, relief, settings), exact)
    # a group column session relief does not have (taken from the episodes), two columns, no pooled row
    relief_ = relief.drop("clinic_id")
    for by, pooled, p in ((["sex"], ALL, True), (["sex", "clinic_id"], None, True), (["clinic_id"], "all", False)):
        _assert_same_summary(summarise(outcomes, relief_, settings, by, pooled, p),
                             _before_summarise(outcomes, relief_, settings, by, pooled, p), exact)
    group = outcomes.filter(pl.col("condition") == "neck_pain")
    group_relief = relief.filter(pl.col("condition") == "neck_pain")
    for args in ((group, group_relief, settings), (group, None, settings, False, {}, 1.5), (outcomes, relief, settings)):
        assert _same_dict(group_statistics(*args), _before_group_statistics(*args))


@pytest.mark.parametrize("seed", range(4))
def test_relief_means_are_numpy_means_of_each_group_in_row_order(seed):
    outcomes, relief = _outcomes(seed + 100, 4000)
    relief = relief.sample(fraction=1.0, shuffle=True, seed=seed) if seed % 2 else relief
    relief = relief.with_columns(pl.when(pl.int_range(pl.len()) % 97 == 3).then(None).otherwise(pl.col("relief"))
                                 .alias("relief"))
    summary = clinic_condition_summary(outcomes, relief)
    assert summary.equals(clinic_condition_summary(outcomes, relief))
    for row in summary.iter_rows(named=True):
        keys = pl.col("clinic_id").eq_missing(row["clinic_id"])
        if row["condition"] != ALL:
            keys &= pl.col("condition").eq_missing(row["condition"])
        values = relief.filter(keys)["relief"].drop_nulls().to_numpy()
        assert row["immediate_relief_mean"] == (float(np.mean(values)) if len(values) else None)


@pytest.mark.parametrize("seed", range(6))
def test_summaries_of_pipeline_outcomes_equal_the_partitioned_ones(seed):
    episodes, scored, outcomes, as_of = _pipeline_tables(seed, [3, 80, 400][seed % 3])
    relief = session_relief_from(episodes, scored, as_of)
    _assert_same_summary(condition_summary_from(outcomes, relief),
                         _before_summarise(outcomes, relief, Settings(), ["condition"]))
    _assert_same_summary(clinic_condition_summary(outcomes, relief), _before_clinic_summary(outcomes, relief, Settings()))
    # the columns the summary assets read are enough
    narrow = outcomes.select("clinic_id", "condition", *STATISTICS)
    assert_frame_equal(clinic_condition_summary(narrow, relief.select("clinic_id", "condition", "relief")),
                       clinic_condition_summary(outcomes, relief), check_exact=True)


STATISTICS = ["analysed", "change", "baseline_pain", "final_pain", "responder_30", "responder_50",
              "sessions_attended", "prescribed_sessions", "sessions_to_response", "response_observed"]


def test_summary_statistics_are_scipys():
    outcomes, relief = _outcomes(5, 3000)
    summary = condition_summary_from(outcomes, relief, Settings())
    for row in summary.iter_rows(named=True):
        group = outcomes if row["condition"] == ALL else outcomes.filter(pl.col("condition").eq_missing(row["condition"]))
        change = group.filter(pl.col("analysed"))["change"].to_numpy()
        assert row["n_analysed"] == len(change) > 40
        assert row["p_value"] == sps.wilcoxon(change).pvalue
        low, high = sps.t.interval(0.95, len(change) - 1, loc=np.mean(change),
                                   scale=np.std(change, ddof=1) / math.sqrt(len(change)))
        assert (row["mean_change"], row["mean_change_ci_low"], row["mean_change_ci_high"]) == (np.mean(change), low, high)
        k = int(group.filter(pl.col("analysed"))["responder_30"].sum())
        ci = sps.binomtest(k, len(change)).proportion_ci(method="wilson")
        assert row["responder_30_ci_low"] == pytest.approx(ci.low, rel=1e-14)
        assert row["responder_30_ci_high"] == pytest.approx(ci.high, rel=1e-14)
    groups = summary.filter(pl.col("condition") != ALL)
    assert groups["q_value"].to_list() == pytest.approx(list(sps.false_discovery_control(groups["p_value"].to_numpy())),
                                                        rel=1e-15)


def test_a_step_computed_from_an_unstamped_table_fails(tmp_path):
    """The clinic summary takes its stamp from this run's episode outcomes; without one the
    step fails rather than guess."""
    import dagster as dg

    from pipelines.defs.outcomes.assets import _stamp_of
    from pipelines.defs.resources import ProcessedTableIOManager

    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "episode_outcomes.parquet")
    with pytest.raises(dg.Failure, match="episode_outcomes.parquet, which this step is computed from, has no lineage"):
        _stamp_of(ProcessedTableIOManager(processed_dir=str(tmp_path)), "episode_outcomes.parquet")
