"""The research API (pipelines/research.py): cohort selection, settings and as-of, groupings,
and the same numbers as the pipeline's assets for the same cohort.

Two kinds of data: a hand-made folder of a few episodes (exact expectations, fast), and one
pipeline run on 800 synthetic episodes, made once per pytest session (shared by xdist
workers under a file lock) and read only.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from report_helpers import build_once
from polars.testing import assert_frame_equal

from pipelines import research
from pipelines.outcomes.metrics import episode_outcomes
from pipelines.outcomes.summary import ALL, SUMMARY_SCHEMA, condition_summary
from pipelines.settings import Settings

TOLERANCE = {"check_exact": False, "rel_tol": 1e-9, "abs_tol": 1e-12}
TODAY = "2026-11-27"


# --------------------------------------------------------------------------------------
# A pipeline run on synthetic data, once per session
# --------------------------------------------------------------------------------------

def _pipeline_run(folder: Path) -> dict:
    from pipelines.pipeline import run_pipeline
    from pipelines.synth import generate

    generate(800, 7, folder / "raw")
    outcome = run_pipeline(raw_dir=folder / "raw", processed_dir=folder / "processed",
                           reports_dir=folder / "reports", today=TODAY)
    return {"processed": str(folder / "processed"), "success": outcome.success, "failure": outcome.failure,
            "as_of": outcome.as_of}


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> dict:
    run = build_once(tmp_path_factory, "research_pipeline_800", _pipeline_run)
    assert run["success"], f"the pipeline failed on synthetic data: {run['failure']}"
    return run


@pytest.fixture(scope="session")
def tables(pipeline_run) -> research.Tables:
    return research.load_tables(pipeline_run["processed"])


# --------------------------------------------------------------------------------------
# A hand-made processed folder
# --------------------------------------------------------------------------------------

EPISODE_SCHEMA = {"episode_id": pl.String, "patient_id": pl.String, "clinic_id": pl.String, "condition": pl.String,
                  "referral_date": pl.Date, "prescribed_sessions": pl.Int64, "age_band": pl.String, "sex": pl.String,
                  "chronicity": pl.String}
SESSION_SCHEMA = {"session_id": pl.String, "episode_id": pl.String, "therapist_id": pl.String,
                  "session_date": pl.Date, "duration_min": pl.Int64}
SCORE_SCHEMA = {"episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String, "score": pl.Float64,
                "recorded_on": pl.Date}

D = date(2026, 3, 1)


def _day(n: int) -> date:
    return D + timedelta(days=n)


#: (episode, clinic, condition, referred day, prescribed, age band, sex, chronicity, pre scores per session)
EPISODES = [
    ("E1", "C1", "low_back_pain", 0, 6, "45-59", "F", "chronic", [8, 6, 4]),      # 50%: responder at t = 2
    ("E2", "C1", "low_back_pain", 1, 8, "60-74", "M", "chronic", [6, 5, 5, 5]),   # 16.7%: censored at t = 3
    ("E3", "C2", "neck_pain", 2, None, None, "F", "acute", [5, 3]),                # 40%: responder at t = 1
    ("E4", "C2", "low_back_pain", 3, 10, "30-44", None, None, [7, 7, 2]),          # 71%: responder at t = 2
    ("E5", "C1", "neck_pain", 4, 4, "75+", "F", "chronic", [4]),                   # no outcome
    ("E6", "C2", "neck_pain", 30, 6, "45-59", "M", "subacute", []),                # no sessions, referred late
]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> research.Tables:
    """Six episodes in two clinics; sessions three days apart; pre and post scores."""
    folder = tmp_path_factory.mktemp("small_processed")
    episodes, sessions, scores = [], [], []
    for eid, clinic, condition, day, prescribed, age, sex, chronicity, pres in EPISODES:
        episodes.append((eid, "P" + eid, clinic, condition, _day(day), prescribed, age, sex, chronicity))
        for k, pre in enumerate(pres, start=1):
            sid = f"S{eid}_{k}"
            sessions.append((sid, eid, "T1", _day(day + 3 * k), 45))
            scores.append((eid, sid, "pre", float(pre), None))
            scores.append((eid, sid, "post", float(max(pre - 2, 0)), None))
    pl.DataFrame(episodes, schema=EPISODE_SCHEMA, orient="row").write_parquet(folder / "episodes.parquet")
    pl.DataFrame(sessions, schema=SESSION_SCHEMA, orient="row").write_parquet(folder / "sessions.parquet")
    pl.DataFrame(scores, schema=SCORE_SCHEMA, orient="row").write_parquet(folder / "pain_scores.parquet")
    return research.load_tables(folder)


def _ids(frame) -> set[str]:
    return set(frame["episode_id"].to_list())


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def test_load_tables_reads_every_processed_table_with_its_schema(tables, pipeline_run):
    present = tables.frames()
    assert set(present) == {"episodes", "sessions", "pain_scores", "episode_outcomes", "session_relief",
                            "condition_summary", "clinic_condition_summary", "pain_trajectories", "km_curves",
                            "ingest_audit", "rejected_rows"}
    assert dict(tables.condition_summary.schema) == SUMMARY_SCHEMA
    assert tables.latest_record == date.fromisoformat(pipeline_run["as_of"])
    assert tables.cohort == ()


def test_load_tables_without_optional_outputs_and_missing_folder(small, tmp_path):
    assert small.episode_outcomes is None and small.condition_summary is None
    assert small.latest_record == _day(1 + 3 * 4)  # E2's fourth session
    with pytest.raises(FileNotFoundError, match="make demo"):
        research.load_tables(tmp_path)


def test_find_processed_dir_env_and_parents(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data" / "processed").mkdir(parents=True)
    (project / "notebooks").mkdir()
    monkeypatch.delenv(research.PROCESSED_DIR_ENV, raising=False)
    monkeypatch.chdir(project / "notebooks")
    assert research.find_processed_dir() == project / "data" / "processed"
    monkeypatch.setenv(research.PROCESSED_DIR_ENV, str(tmp_path / "elsewhere"))
    assert research.find_processed_dir() == tmp_path / "elsewhere"


# --------------------------------------------------------------------------------------
# Cohort selection
# --------------------------------------------------------------------------------------

def _assert_consistent(cohort: research.Tables, full: research.Tables) -> None:
    """Every per-episode table holds exactly the full table's rows of the kept episodes."""
    kept = cohort.episodes.select("episode_id")
    for name in ("sessions", "pain_scores", "episode_outcomes", "session_relief"):
        frame = getattr(cohort, name)
        if getattr(full, name) is None:
            assert frame is None
            continue
        expected = getattr(full, name).join(kept, on="episode_id", how="semi")
        assert_frame_equal(frame, expected)
        assert _ids(frame) <= _ids(cohort.episodes)


def test_select_cohort_restricts_all_tables_consistently(tables):
    cohort = research.select_cohort(tables, conditions=["low_back_pain", "neck_pain"], clinics="C01",
                                    age_bands=["45-59", "60-74"], chronicity="chronic", sex=["F", "M"],
                                    referred_from="2025-12-01", referred_to=date(2026, 9, 30),
                                    prescribed_min=6, prescribed_max=10)
    ep = cohort.episodes
    assert 0 < ep.height < tables.episodes.height
    assert set(ep["condition"]) <= {"low_back_pain", "neck_pain"} and set(ep["clinic_id"]) == {"C01"}
    assert set(ep["age_band"]) <= {"45-59", "60-74"} and set(ep["chronicity"]) == {"chronic"}
    assert set(ep["sex"]) <= {"F", "M"}
    assert ep["referral_date"].min() >= date(2025, 12, 1) and ep["referral_date"].max() <= date(2026, 9, 30)
    assert ep["prescribed_sessions"].min() >= 6 and ep["prescribed_sessions"].max() <= 10
    expected = tables.episodes.filter(
        pl.col("condition").is_in(["low_back_pain", "neck_pain"]) & (pl.col("clinic_id") == "C01")
        & pl.col("age_band").is_in(["45-59", "60-74"]) & (pl.col("chronicity") == "chronic")
        & pl.col("sex").is_in(["F", "M"]) & pl.col("referral_date").is_between(date(2025, 12, 1), date(2026, 9, 30))
        & pl.col("prescribed_sessions").is_between(6, 10))
    assert_frame_equal(ep, expected)
    _assert_consistent(cohort, tables)
    # whole-population aggregates are dropped; the default as-of stays the pipeline's
    assert cohort.condition_summary is None and cohort.km_curves is None and cohort.pain_trajectories is None
    assert cohort.clinic_condition_summary is None
    assert cohort.latest_record == tables.latest_record
    assert len(cohort.cohort) == 1 and "clinic_id in {C01}" in cohort.describe()


def test_select_cohort_filter_semantics(small):
    by = lambda **kw: sorted(_ids(research.select_cohort(small, **kw).episodes))
    assert by() == ["E1", "E2", "E3", "E4", "E5", "E6"]
    assert by(conditions="neck_pain") == ["E3", "E5", "E6"]
    assert by(age_bands=["75+", None]) == ["E3", "E5"]           # None selects "not recorded"
    assert by(chronicity="chronic", sex="F") == ["E1", "E5"]
    assert by(sex=["M"]) == ["E2", "E6"]                          # a null sex is not "M"
    assert by(prescribed_min=6) == ["E1", "E2", "E4", "E6"]        # no prescription: left out
    assert by(prescribed_max=6) == ["E1", "E5", "E6"]
    assert by(referred_from=_day(1), referred_to=_day(3)) == ["E2", "E3", "E4"]  # inclusive
    # selections chain, each narrowing the previous one
    chained = research.select_cohort(research.select_cohort(small, clinics="C1"), conditions="low_back_pain")
    assert sorted(_ids(chained.episodes)) == ["E1", "E2"] and len(chained.cohort) == 2
    _assert_consistent(chained, small)
    with pytest.warns(UserWarning, match="no episode has condition"):
        assert by(conditions="low_back") == []


# --------------------------------------------------------------------------------------
# Settings, as-of and groupings
# --------------------------------------------------------------------------------------

def test_cohort_outcomes_on_hand_made_episodes(small):
    out = research.cohort_outcomes(small).sort("episode_id")
    assert out["episode_id"].to_list() == ["E1", "E2", "E3", "E4", "E5"]   # E6 referred after the as-of date
    assert out["exclusion_reason"].to_list() == [None, None, None, None, "no outcome"]
    assert out["sessions_to_response"].to_list() == [2, 3, 1, 2, None]
    assert out["response_observed"].to_list() == [True, False, True, True, None]
    strict = research.cohort_outcomes(small, settings=Settings(response_threshold=50, responder_30_threshold=45))
    assert strict["sessions_to_response"].to_list()[:4] == [2, 3, 1, 2]
    assert strict["response_observed"].to_list()[:4] == [True, False, False, True]   # E3's 40% < 50%
    assert strict["responder_30"].to_list()[:4] == [True, False, False, True]


def test_default_as_of_is_the_latest_record_of_the_loaded_data(small):
    # clinic C2's own records end on day 12 (E4's last session), the data's on day 13 ...
    c2 = research.select_cohort(small, clinics="C2")
    assert research.resolve_as_of(c2) == small.latest_record == _day(13)
    assert research.cohort_outcomes(c2)["sessions_attended"].to_list() == [2, 3]
    # ... and an as-of date before a referral leaves the episode out
    assert research.cohort_summary(small, as_of=_day(29))["n_episodes"].to_list()[-1] == 5
    late = research.cohort_summary(small, as_of=_day(30), by="clinic_id")
    assert late.filter(pl.col("clinic_id") == ALL)["n_episodes"].item() == 6


def test_as_of_is_honoured(tables):
    as_of = date(2026, 6, 30)
    summary = research.cohort_summary(tables, as_of=as_of)
    direct = condition_summary(tables.episodes, tables.sessions, tables.pain_scores, as_of)
    assert_frame_equal(summary, direct, **TOLERANCE)
    assert summary.filter(pl.col("condition") == ALL)["n_episodes"].item() == \
        tables.episodes.filter(pl.col("referral_date") <= as_of).height
    assert research.resolve_as_of(tables, "2026-06-30") == as_of
    outcomes = research.cohort_outcomes(tables, as_of="2026-06-30")
    assert outcomes["referral_date"].max() <= as_of
    assert_frame_equal(outcomes, episode_outcomes(tables.episodes, tables.sessions, tables.pain_scores, as_of))


def test_settings_are_honoured(tables):
    default = research.cohort_summary(tables)
    settings = Settings(responder_30_threshold=50, response_threshold=50, min_cell_size=100)
    custom = research.cohort_summary(tables, settings=settings)
    direct = condition_summary(tables.episodes, tables.sessions, tables.pain_scores, tables.latest_record, settings)
    assert_frame_equal(custom, direct, **TOLERANCE)
    # responder_30 at a 50% threshold is responder_50
    assert custom["responder_30_rate"].to_list() == default["responder_50_rate"].to_list()
    # a stricter response can only take as long or longer
    pooled = lambda f: f.filter(pl.col("condition") == ALL).row(0, named=True)
    assert pooled(custom)["improved_by_session_6"] < pooled(default)["improved_by_session_6"]
    assert (custom["median_sessions_to_response"].fill_null(1e9) >= default["median_sessions_to_response"].fill_null(1e9)).all()
    assert custom["suppressed"].to_list() == [n < 100 for n in custom["n_analysed"]]
    # statistics that do not depend on the thresholds are unchanged
    for column in ("n_analysed", "mean_change", "adherence", "immediate_relief_mean"):
        assert custom[column].to_list() == default[column].to_list()


@pytest.mark.parametrize("by", ["clinic_id", "age_band", "chronicity", "sex"])
def test_cohort_summary_by_other_groupings(tables, by):
    summary = research.cohort_summary(tables, by=by)
    assert summary.columns == [by, *[c for c in SUMMARY_SCHEMA if c != "condition"]]
    groups = summary[by].to_list()
    assert groups[-1] == ALL
    values = tables.episodes[by].fill_null(research.NOT_RECORDED).unique().to_list()
    assert sorted(groups[:-1]) == sorted(values) and groups[:-1] == sorted(groups[:-1])
    body = summary.filter(pl.col(by) != ALL)
    assert body["n_episodes"].sum() == summary[-1, "n_episodes"] == tables.episodes.height
    assert body["n_analysed"].sum() == summary[-1, "n_analysed"]
    # the pooled row is the condition table's ALL row
    pooled = research.cohort_summary(tables).filter(pl.col("condition") == ALL).drop("condition")
    assert_frame_equal(summary.filter(pl.col(by) == ALL).drop(by), pooled, **TOLERANCE)


def test_by_clinic_matches_a_clinic_cohort(tables):
    per_clinic = research.cohort_summary(tables, by="clinic_id")
    one = research.cohort_summary(research.select_cohort(tables, clinics="C03"))
    row = per_clinic.filter(pl.col("clinic_id") == "C03").drop("clinic_id", "q_value")
    assert_frame_equal(row, one.filter(pl.col("condition") == ALL).drop("condition", "q_value"), **TOLERANCE)


def test_unknown_grouping_is_refused(small):
    with pytest.raises(ValueError, match="by must be one of"):
        research.cohort_summary(small, by="therapist_id")


# --------------------------------------------------------------------------------------
# Same numbers as the pipeline's assets
# --------------------------------------------------------------------------------------

def test_cohort_summary_equals_the_pipelines_condition_summary_cell_by_cell(tables, pipeline_run):
    written = pl.read_csv(Path(pipeline_run["processed"]) / "condition_summary.csv", schema=SUMMARY_SCHEMA)
    recomputed = research.cohort_summary(research.load_tables(pipeline_run["processed"]))
    assert recomputed.columns == written.columns and recomputed.height == written.height
    for got, want in zip(recomputed.iter_rows(named=True), written.iter_rows(named=True)):
        for column, value in want.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, rel=1e-9, abs=1e-12), (want["condition"], column)
            else:
                assert got[column] == value, (want["condition"], column)


def test_per_episode_tables_equal_the_pipelines(tables):
    assert_frame_equal(research.cohort_outcomes(tables), tables.episode_outcomes)
    assert_frame_equal(research.cohort_relief(tables), tables.session_relief)
    assert_frame_equal(research.cohort_km_curves(tables), tables.km_curves, **TOLERANCE)
    assert_frame_equal(research.cohort_trajectories(tables), tables.pain_trajectories, **TOLERANCE)


def test_a_clinic_cohort_equals_the_pipelines_clinic_condition_summary(tables):
    """Same cohort, same numbers: select one clinic and compare with its clinic x condition rows
    (the clinic table has no p or q values: clinics are compared with funnel plots)."""
    for clinic in ("C01", "C07"):
        cohort = research.select_cohort(tables, clinics=clinic)
        mine = research.cohort_summary(cohort).drop("p_value", "q_value")
        theirs = (tables.clinic_condition_summary.filter(pl.col("clinic_id") == clinic)
                  .drop("clinic_id", "p_value", "q_value")
                  .sort(pl.col("condition") == ALL, "condition"))
        assert_frame_equal(mine, theirs, **TOLERANCE)


# --------------------------------------------------------------------------------------
# pandas, charts
# --------------------------------------------------------------------------------------

def test_pandas_tables_give_the_same_numbers(tables, pipeline_run):
    frames = research.load_tables(pipeline_run["processed"], as_pandas=True)
    assert frames.as_pandas and isinstance(frames.episodes, pd.DataFrame)
    back = frames.to_polars()
    for name, frame in tables.frames().items():
        assert_frame_equal(getattr(back, name), frame)
    cohort = research.select_cohort(frames, conditions="low_back_pain", chronicity="chronic")
    assert isinstance(cohort.sessions, pd.DataFrame)
    summary = research.cohort_summary(cohort)
    assert isinstance(summary, pd.DataFrame)
    polars_cohort = research.select_cohort(tables, conditions="low_back_pain", chronicity="chronic")
    assert_frame_equal(pl.from_pandas(summary), research.cohort_summary(polars_cohort), **TOLERANCE)
    outcomes, relief = research.cohort_outcomes(cohort), research.cohort_relief(cohort)
    assert isinstance(outcomes, pd.DataFrame) and isinstance(relief, pd.DataFrame)
    by_sex = research.summarise_outcomes(outcomes, relief, by="sex")
    assert isinstance(by_sex, pd.DataFrame)
    assert_frame_equal(pl.from_pandas(by_sex), research.cohort_summary(polars_cohort, by="sex"), **TOLERANCE)


def test_chart_helpers_return_figures(tables):
    from matplotlib.figure import Figure

    cohort = research.select_cohort(tables, chronicity=["chronic", "subacute"])
    summary = research.cohort_summary(cohort)
    settings = Settings(response_threshold=50)
    figures = [
        research.forest_chart(cohort, summary=summary),
        research.responder_chart(cohort, summary=summary),
        research.km_chart(cohort, settings=settings),
        research.trajectory_chart(cohort, as_of="2026-09-30"),
        research.funnel_chart(cohort),
    ]
    assert all(isinstance(f, Figure) for f in figures)
    assert "50%" in figures[2].get_suptitle()
