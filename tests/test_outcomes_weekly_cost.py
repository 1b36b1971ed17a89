"""The cheaper weekly outcome steps give what the plainer code gave, and fall back when unsure.

Each shortcut of the weekly run is compared with the straightforward computation it
replaces (exactly: values, dtypes, row order), and every case it cannot handle is shown to
fall back: the digest comparison by position (:func:`pipelines.outcomes.incremental.compare`),
the splice planned per episode run (:func:`~pipelines.outcomes.incremental.splice`), the
recomputation from the rows picked out once (:func:`~pipelines.outcomes.incremental.rows_of`),
both summaries from shared groupings (:func:`pipelines.outcomes.summary.summaries`) and the
consistency check's neighbour comparison.
"""

from __future__ import annotations

import random
from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_outcomes_incremental import START, Tables, _edit, accepted, run

from pipelines.defs.outcomes.checks import CONSISTENCY_COLUMNS, outcome_problems
from pipelines.outcomes import incremental as inc
from pipelines.outcomes.metrics import episode_outcomes_from, scored_sessions
from pipelines.outcomes.summary import (STATISTICS_COLUMNS, clinic_condition_summary, condition_summary_from,
                                        summaries)
from pipelines.settings import Settings

# --------------------------------------------------------------------------------------
# comparing digests
# --------------------------------------------------------------------------------------


def _joined_changes(current: pl.DataFrame, previous: pl.DataFrame, between: pl.Series) -> dict:
    """The comparison as a plain join on episode_id (the code before the positional one)."""
    joined = current.join(previous, on="episode_id", how="left", suffix="_prev", maintain_order="left")
    same = ((pl.col("digest_a") == pl.col("digest_a_prev")) & (pl.col("digest_b") == pl.col("digest_b_prev"))
            ).fill_null(False)
    flags = joined.select("episode_id", same.alias("same"), pl.col("digest_a_prev").is_null().alias("new"),
                          pl.col("episode_id").is_in(between.implode()).alias("dated"))
    keep = pl.col("same") & ~pl.col("dated")
    counts = flags.select(pl.len().alias("episodes"), pl.col("new").sum().alias("new"),
                          (~pl.col("same") & ~pl.col("new")).sum().alias("changed"),
                          (pl.col("same") & pl.col("dated")).sum().alias("dated_between"),
                          (~keep).sum().alias("recompute")).row(0, named=True)
    removed = previous.filter(~pl.col("episode_id").is_in(current["episode_id"].implode()))["episode_id"]
    return {"recompute": flags.filter(~keep)["episode_id"].to_list(), "removed": removed.to_list(),
            "counts": {**{k: int(v) for k, v in counts.items()}, "removed": removed.len()}}


def _digests(ids: list[str], rng: random.Random) -> pl.DataFrame:
    return pl.DataFrame({"episode_id": ids, "digest_a": [rng.getrandbits(64) for _ in ids],
                         "digest_b": [rng.getrandbits(64) for _ in ids]}, schema=inc.DIGEST_SCHEMA)


@pytest.mark.parametrize("seed", range(60))
def test_comparing_digests_by_position_equals_joining_them(seed):
    rng = random.Random(seed)
    ids = [f"E{i:04d}" for i in rng.sample(range(5000), rng.randrange(0, 300))]
    previous = _digests(ids, rng)
    current = previous.clone()
    for _ in range(rng.randrange(0, 8)):
        n = current.height
        kind = rng.choice(["change", "remove", "append", "insert", "move", "reorder tail"])
        at = rng.randrange(n) if n else 0
        position = pl.int_range(pl.len()) == at
        if kind == "change" and n:
            current = current.with_columns(pl.when(position).then(pl.lit(rng.getrandbits(64), pl.UInt64))
                                           .otherwise(pl.col("digest_a")).alias("digest_a"))
        elif kind == "remove" and n:
            current = current.filter(~position)
        elif kind in ("append", "insert"):
            new = _digests([f"N{rng.randrange(10**6):06d}"], rng)
            if new["episode_id"][0] not in current["episode_id"]:
                at = n if kind == "append" else at
                current = pl.concat([current.head(at), new, current.slice(at)])
        elif kind == "move" and n:
            current = pl.concat([current.filter(~position), current.filter(position)])
        elif kind == "reorder tail":
            current = pl.concat([current.head(at), current.slice(at).sample(fraction=1.0, shuffle=True, seed=seed)])
    between = pl.Series("episode_id", rng.sample(current["episode_id"].to_list(), min(current.height, 3)),
                        dtype=pl.String)
    changes = inc.compare(current, previous, between)
    expected = _joined_changes(current, previous, between)
    assert changes.recompute.to_list() == expected["recompute"]
    assert changes.removed.to_list() == expected["removed"]
    assert changes.counts == expected["counts"]


def test_the_planner_compares_the_digests_once_for_both_tables(tmp_path):
    tables = Tables(*accepted(50, 3))
    as_of = START + timedelta(days=100)
    run(tmp_path, tables, as_of)
    edited = _edit(random.Random(3), tables, "changed score")
    calls = []

    def between(a, b):
        calls.append((a, b))
        return inc.episodes_with_records_between(edited.episodes, edited.sessions, edited.pain_scores, a, b)

    stamp = inc.read_digests(tmp_path / inc.DIGESTS_FILE).stamp
    planner = inc.Planner(inc.episode_digests(edited.episodes, edited.sessions, edited.pain_scores),
                          inc.read_digests(tmp_path / inc.DIGESTS_FILE), between)
    from pipelines.outcomes.lineage import read_lineage

    scored = planner.plan("scored_sessions", stamp, read_lineage(tmp_path / "scored_sessions.parquet"))
    outcomes_stamp = read_lineage(tmp_path / "episode_outcomes.parquet")
    outcomes = planner.plan("episode_outcomes", outcomes_stamp, outcomes_stamp)
    assert scored.incremental and outcomes.incremental and len(calls) == 1
    assert scored.recompute.to_list() == outcomes.recompute.to_list() and scored.counts["changed"] == 1


def test_digests_with_a_repeated_episode_are_malformed(tmp_path):
    rng = random.Random(1)
    frame = _digests(["E1", "E2", "E1"], rng)
    from pipelines.io import write_table
    from pipelines.outcomes.lineage import Lineage

    write_table(frame, tmp_path / inc.DIGESTS_FILE, inc.digests_metadata(Lineage("i", "2026-01-01", "c")))
    assert inc.read_digests(tmp_path / inc.DIGESTS_FILE).problem == f"{inc.DIGESTS_FILE} is malformed"
    write_table(frame.head(2), tmp_path / inc.DIGESTS_FILE, inc.digests_metadata(Lineage("i", "2026-01-01", "c")))
    assert inc.read_digests(tmp_path / inc.DIGESTS_FILE).frame.height == 2


# --------------------------------------------------------------------------------------
# splicing
# --------------------------------------------------------------------------------------

def _merged(previous: pl.DataFrame, drop: pl.Series, recomputed: pl.DataFrame) -> pl.DataFrame | None:
    """The splice as a filter and a merge by key (the code before the per-run one)."""
    kept = previous.filter(~pl.col("episode_id").is_in(drop.implode()))
    merged = kept.merge_sorted(recomputed, "episode_id")
    if not merged.select((pl.col("episode_id") >= pl.col("episode_id").shift()).fill_null(True).all()).item():
        return None
    return merged


def _rows(ids: list[int], rng: random.Random, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame([(f"E{i:03d}", offset + j, rng.random()) for i in ids for j in range(rng.randrange(1, 4))],
                        schema={"episode_id": pl.String, "k": pl.Int64, "x": pl.Float64}, orient="row")


@pytest.mark.parametrize("seed", range(200))
def test_splicing_per_run_equals_merging_by_key(seed):
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(200), rng.randrange(0, 40)))
    previous = _rows(ids, rng)
    if rng.random() < 0.5:  # read back from parts: several chunks
        previous = pl.concat([previous.head(previous.height // 2), previous.slice(previous.height // 2)],
                             rechunk=False)
    where = rng.choice(["anywhere", "first", "last", "none", "all"])
    pool = {"anywhere": range(200), "first": range(0, 20), "last": range(180, 200), "none": [],
            "all": ids}[where]
    recomputed_ids = sorted(rng.sample(list(pool), min(len(pool), rng.randrange(0, 12))))
    removed = rng.sample(ids, min(len(ids), rng.randrange(0, 3)))
    drop = pl.Series("episode_id", [f"E{i:03d}" for i in [*recomputed_ids, *removed]], dtype=pl.String)
    recomputed = _rows(recomputed_ids, rng, offset=10)
    spliced = inc.splice(previous, drop, recomputed)
    assert_frame_equal(spliced, _merged(previous, drop, recomputed))


@pytest.mark.parametrize("break_it", ["unsorted", "an episode in two runs", "kept and recomputed", "null key",
                                      "another schema"])
def test_a_splice_that_cannot_be_sure_returns_none(break_it):
    rng = random.Random(7)
    previous, recomputed = _rows([1, 2, 3, 4], rng), _rows([5], rng, offset=10)
    drop = pl.Series("episode_id", ["E005"], dtype=pl.String)
    if break_it == "unsorted":
        previous = previous.reverse()
    elif break_it == "an episode in two runs":
        previous = pl.concat([previous, _rows([1], rng)]).sort("k")
    elif break_it == "kept and recomputed":
        recomputed = _rows([2], rng, offset=10)
    elif break_it == "null key":
        previous = previous.with_columns(pl.when(pl.col("k") == 0).then(None).otherwise("episode_id")
                                         .alias("episode_id"))
    else:
        recomputed = recomputed.with_columns(pl.col("k").cast(pl.Int32))
    assert inc.splice(previous, drop, recomputed) is None
    # and the step computes in full instead, saying why
    result, plan = inc.apply(inc.Plan(incremental=True, reason="x", drop=drop, recompute=drop),
                             lambda: previous, lambda ids: recomputed, lambda: pl.DataFrame({"full": [1]}), "t")
    assert not plan.incremental and plan.reason == "the previous t has another schema or order"
    assert result.columns == ["full"]


# --------------------------------------------------------------------------------------
# recomputing from the rows picked out once
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_recomputing_from_the_picked_rows_equals_recomputing_from_the_whole_tables(seed):
    rng = random.Random(seed)
    ep, se, ps = accepted(rng.randrange(20, 120), seed)
    as_of = START + timedelta(days=rng.randrange(20, 200))
    ids = pl.Series("episode_id", rng.sample(ep["episode_id"].to_list(), rng.randrange(0, 15)), dtype=pl.String)
    mine = inc.rows_of(ids, ep, se, ps)
    assert all(frame["episode_id"].is_in(ids.implode()).all() for frame in mine)
    scored = scored_sessions(ep, se, ps, as_of)
    assert_frame_equal(inc.scored_sessions_of(ids, *mine, as_of), inc.scored_sessions_of(ids, ep, se, ps, as_of))
    assert_frame_equal(inc.scored_sessions_of(ids, *mine, as_of), inc.only(scored, ids))
    outcomes = episode_outcomes_from(ep, scored, ps, as_of, Settings())
    assert_frame_equal(inc.episode_outcomes_of(ids, mine[0], scored, mine[2], as_of, Settings()),
                       inc.only(outcomes, ids))


# --------------------------------------------------------------------------------------
# summaries and the consistency check
# --------------------------------------------------------------------------------------

def _outcomes(seed: int, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    rows, relief = [], []
    for i in range(n):
        clinic = rng.choice(["C1", "C2", "C3", None])
        condition = rng.choice(["knee_oa", "neck_pain", "low_back_pain", None])
        analysed = rng.random() < 0.8
        baseline = rng.choice([0.0, 3.0, 5.5, 7.0, 9.0])
        final = rng.choice([0.0, 2.0, 4.5, 8.0])
        sessions = rng.randrange(0, 12)
        rows.append({"clinic_id": clinic, "condition": condition, "analysed": analysed,
                     "change": baseline - final if analysed else None, "baseline_pain": baseline,
                     "final_pain": final, "responder_30": rng.random() < 0.5 if analysed else None,
                     "responder_50": rng.random() < 0.3 if analysed else None, "sessions_attended": sessions,
                     "prescribed_sessions": rng.choice([None, 6, 8]),
                     "sessions_to_response": rng.randrange(1, 10) if analysed else None,
                     "response_observed": rng.random() < 0.6 if analysed else None})
        for _ in range(sessions):
            relief.append({"clinic_id": clinic, "condition": condition,
                           "relief": rng.choice([None, -1.0, 0.0, 0.5, 1.5, 2.0, 3.25])})
    schema = {"clinic_id": pl.String, "condition": pl.String, "analysed": pl.Boolean, "change": pl.Float64,
              "baseline_pain": pl.Float64, "final_pain": pl.Float64, "responder_30": pl.Boolean,
              "responder_50": pl.Boolean, "sessions_attended": pl.Int64, "prescribed_sessions": pl.Int64,
              "sessions_to_response": pl.Int64, "response_observed": pl.Boolean}
    return (pl.DataFrame(rows, schema=schema).select("clinic_id", "condition", *STATISTICS_COLUMNS),
            pl.DataFrame(relief, schema={"clinic_id": pl.String, "condition": pl.String, "relief": pl.Float64}))


@pytest.mark.parametrize("seed, n", [(0, 0), (1, 1), (2, 40), (3, 400), (4, 3000)])
def test_both_summaries_from_shared_groupings_equal_each_on_its_own(seed, n):
    outcomes, relief = _outcomes(seed, n)
    settings = Settings(min_cell_size=5)
    condition, clinics = summaries(outcomes, relief, settings)
    assert_frame_equal(condition, condition_summary_from(outcomes.drop("clinic_id"), relief.drop("clinic_id"),
                                                         settings))
    assert_frame_equal(clinics, clinic_condition_summary(outcomes, relief, settings))
    if n:
        assert condition.filter(pl.col("condition") == "ALL")["n_episodes"].item() == n


@pytest.mark.parametrize("ids", [
    ["a", "b", "c"], ["a", "a", "b"], ["a", "b", "b", "b"], ["b", "a", "b"], ["c", "a"], [],
    ["a", None, "a"], [None, None, "a"], ["a", "a", "a", "b", "c", "c"],
])
def test_the_consistency_check_counts_repeated_episodes_as_is_duplicated_does(ids):
    outcomes = pl.DataFrame({"episode_id": ids}, schema={"episode_id": pl.String}).with_columns(
        pl.lit("no sessions").alias("exclusion_reason"),
        *[pl.lit(None, pl.Float64).alias(c) for c in CONSISTENCY_COLUMNS[2:]])
    problems = outcome_problems(outcomes)
    assert problems == {"analysed_with_missing_fields": 0, "unknown_exclusion_reasons": 0,
                        "duplicate_episode_ids": int(outcomes["episode_id"].is_duplicated().sum())}


def test_the_consistency_check_finds_missing_fields_and_unknown_reasons():
    outcomes = pl.DataFrame({"episode_id": ["a", "b", "c"], "exclusion_reason": [None, "lost", None],
                             "baseline_pain": [5.0, None, 5.0], "final_pain": [2.0, None, None],
                             "change": [3.0, None, 1.0], "pct_change": [60.0, None, 20.0],
                             "sessions_to_response": [2, None, 3]})
    assert outcome_problems(outcomes) == {"analysed_with_missing_fields": 1, "unknown_exclusion_reasons": 1,
                                          "duplicate_episode_ids": 0}


def test_without_a_staging_folder_both_tables_are_still_spliced(tmp_path):
    """When the I/O manager writes straight into the processed folder (as under ``dagster
    dev``), the step plans both tables before it writes its digests and tables, so both are
    spliced from the previous ones, and equal a full computation."""

    import dagster as dg

    from pipelines.definitions import make_definitions
    from pipelines.pipeline import run_config
    from weekly_helpers import add_week, raw_but_last_week

    source, raw, weeks = raw_but_last_week(tmp_path, 150, 8)
    job = make_definitions(Settings()).resolve_job_def("outcomes_job")

    def materialize(raw_dir, processed):
        config = run_config(raw_dir, processed, tmp_path / "reports", "", "2026-11-27", Settings(), None, False)
        result = job.execute_in_process(run_config=config, instance=dg.DagsterInstance.ephemeral())
        assert result.success
        return {event.asset_key.path[-1]: event.materialization.metadata
                for event in result.get_asset_materialization_events()}

    materialize(raw, tmp_path / "work")
    add_week(source, raw, weeks[-1])
    said = materialize(raw, tmp_path / "work")
    for asset in ("scored_sessions", "episode_outcomes"):
        assert said[asset]["incremental"].value.startswith("incremental: recomputed "), said[asset]["incremental"]
    materialize(source, tmp_path / "fresh")
    for name in ("scored_sessions.parquet", "episode_outcomes.parquet", "session_relief.parquet",
                 "pain_trajectories.parquet", "clinic_condition_summary.parquet", inc.DIGESTS_FILE):
        assert_frame_equal(pl.read_parquet(tmp_path / "work" / name), pl.read_parquet(tmp_path / "fresh" / name),
                           check_exact=True)
    assert (tmp_path / "work" / "condition_summary.csv").read_bytes() == \
        (tmp_path / "fresh" / "condition_summary.csv").read_bytes()
