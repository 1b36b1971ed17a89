"""The report's cheaper history and blanking counts equal the code they replaced.

``weekly_cohorts`` now builds only the outcome observations dated in the trend window,
``outcomes_before`` picks rows with ``is_in`` instead of joins and
merge sorted frames, and ``_base_counts`` counts the episodes of a sorted relief table
by runs. Each is compared here with the implementation it replaced (copied below as
it was) on synthetic exports of several sizes and seeds, on the hand-made edge cases of
``test_report_history``, with inputs in stored order and shuffled (which takes the
fallback paths), and on records built to make the order of a day's ratings matter.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.outcomes.joins import semi_join_by_hash
from pipelines.outcomes.metrics import (
    episode_outcomes, episode_outcomes_from, episodes_with_records_between, outcome_observations, reaches,
    scored_sessions, session_relief,
)
from pipelines.outcomes.summary import ALL
from pipelines.reports import history
from pipelines.reports.weekly import REPORT_OUTCOME_COLUMNS, TREND_WEEKS, _base_counts
from pipelines.settings import Settings
from test_report_history import _edge_cases

SUNDAY = date(2026, 11, 22)
SETTINGS = Settings()


# --------------------------------------------------------------------------------------
# The implementations replaced (pipelines/reports/history.py and weekly.py before)
# --------------------------------------------------------------------------------------

def _previous_touched(sessions, pain_scores, after, until):
    return episodes_with_records_between(None, sessions, pain_scores, after, until).to_frame()


def previous_outcomes_before(episodes, scored, pain_scores, later_outcomes, later, earlier, settings=None):
    touched = _previous_touched(scored, pain_scores, earlier, later)
    kept = later_outcomes.filter(pl.col("referral_date") <= earlier).join(touched, on="episode_id", how="anti")
    redo = episodes.filter(pl.col("referral_date") <= earlier).join(touched, on="episode_id", how="semi")
    scored_earlier = semi_join_by_hash(scored.filter(pl.col("session_date") <= earlier), redo, "episode_id")
    redone = episode_outcomes_from(redo, scored_earlier, pain_scores, earlier, settings)
    return pl.concat([kept, redone], how="vertical").sort("episode_id")


def previous_weekly_cohorts(episodes, sessions, pain_scores, scored, as_of, weeks, settings=None):
    settings = settings or Settings()
    first_day = as_of - timedelta(weeks=weeks) + timedelta(days=1)
    week_ends = pl.DataFrame({"week_index": list(range(weeks)),
                              "week_end": [first_day + timedelta(days=7 * i + 6) for i in range(weeks)]},
                             schema={"week_index": pl.Int64, "week_end": pl.Date})

    def week_index(column):
        return ((pl.col(column) - pl.lit(first_day)).dt.total_days() // 7).cast(pl.Int64).alias("week_index")

    def per_week(frame, column, name):
        return (frame.filter(pl.col(column).is_between(first_day, as_of)).select(week_index(column))
                .group_by("week_index").agg(pl.len().cast(pl.Int64).alias(name)))

    active = _previous_touched(scored, pain_scores, first_day - timedelta(days=1), as_of)
    scored = semi_join_by_hash(scored, active, "episode_id")
    episodes_d = episodes.filter(pl.col("referral_date") <= as_of).join(active, on="episode_id", how="semi")
    observations = outcome_observations(scored, pain_scores, episodes_d, as_of)
    baseline = scored.filter(pl.col("k") == 1).select("episode_id", pl.col("pre").alias("baseline_pain"))
    finals = (observations.filter(pl.col("date") >= first_day).with_columns(week_index("date"))
              .group_by("week_index", "episode_id").agg(pl.col("score").last().alias("final_pain"))
              .join(week_ends, on="week_index")
              .join(episodes_d.select("episode_id", "referral_date"), on="episode_id")
              .filter(pl.col("referral_date") <= pl.col("week_end"))
              .join(baseline, on="episode_id")
              .filter(pl.col("baseline_pain").is_not_null() & (pl.col("baseline_pain") != 0)))
    change = pl.col("baseline_pain").cast(pl.Float64) - pl.col("final_pain").cast(pl.Float64)
    pct = 100.0 * change / pl.col("baseline_pain")
    cohorts = (finals.with_columns(reaches(pct, settings.responder_30_threshold).alias("responder_30"))
               .group_by("week_index").agg(pl.len().cast(pl.Int64).alias("responder_n"),
                                           pl.col("responder_30").sum().cast(pl.Int64).alias("responders")))
    out = week_ends
    for frame in (per_week(sessions, "session_date", "sessions"), per_week(episodes, "referral_date", "new_episodes"),
                  cohorts):
        out = out.join(frame, on="week_index", how="left")
    return out.sort("week_index").fill_null(0).select(list(history.WEEKLY_COHORT_SCHEMA)).cast(
        history.WEEKLY_COHORT_SCHEMA)


def previous_base_counts(outcomes, relief, by):
    adherence = outcomes.filter((pl.col("sessions_attended") >= 1) & pl.col("prescribed_sessions").is_not_null())
    per_group = (adherence.group_by(by).agg(pl.len().alias("n_adherence"))
                 .join(relief.group_by(by).agg(pl.col("episode_id").n_unique().alias("n_relief")),
                       on=by, how="full", coalesce=True))
    pooled = pl.DataFrame({by: [ALL], "n_adherence": [adherence.height],
                           "n_relief": [relief["episode_id"].n_unique() if relief.height else 0]})
    return pl.concat([per_group.cast({"n_adherence": pl.Int64, "n_relief": pl.Int64}),
                      pooled.cast({"n_adherence": pl.Int64, "n_relief": pl.Int64})], how="vertical")


# --------------------------------------------------------------------------------------
# Data: synthetic exports (several seeds and sizes) and the hand-made edge cases
# --------------------------------------------------------------------------------------

SYNTHETIC = [(300, 1), (500, 2), (900, 3)]


def _synthetic(tmp_path_factory, n, seed):
    from pipelines.ingest.core import ingest_folder
    from pipelines.synth import generate

    raw = tmp_path_factory.mktemp(f"speed_raw_{n}_{seed}")
    generate(n, seed, raw)  # last day: Sunday 2026-11-22
    result = ingest_folder(raw, date(2026, 11, 27))
    return result.episodes, result.sessions, result.pain_scores


@pytest.fixture(scope="module", params=[*(f"synthetic-{n}-{seed}" for n, seed in SYNTHETIC), "edge_cases"])
def tables(request, tmp_path_factory):
    if request.param == "edge_cases":
        return _edge_cases()
    _, n, seed = request.param.split("-")
    return _synthetic(tmp_path_factory, int(n), int(seed))


def _shuffled(frame: pl.DataFrame, seed: int = 11) -> pl.DataFrame:
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)


def _one_score_per_key(pain_scores: pl.DataFrame) -> pl.DataFrame:
    """The scores without the later ones of a duplicate (session, timepoint). The edge cases
    hold a duplicate pre score, of which "the first one counts"; shuffled, no score is the
    first, and either implementation may keep either (ingest never accepts such a pair)."""
    return pain_scores.filter(pl.col("session_id").is_null()
                              | pl.struct("session_id", "timepoint").is_first_distinct())


# --------------------------------------------------------------------------------------
# Each replaced function against its previous implementation
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("back", [0, 2, 30])
@pytest.mark.parametrize("settings", [SETTINGS, Settings(responder_30_threshold=50.0)], ids=["default", "50"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["stored", "shuffled"])
def test_weekly_cohorts_equal_the_previous_implementation(tables, back, settings, shuffle):
    ep, se, ps = tables
    ps = _one_score_per_key(ps) if shuffle else ps
    sunday = SUNDAY - timedelta(weeks=back)
    scored = scored_sessions(ep, se, ps, sunday)
    outcomes = episode_outcomes_from(ep, scored, ps, sunday, settings)
    if shuffle:
        ep, se, ps, scored, outcomes = (_shuffled(f) for f in (ep, se, ps, scored, outcomes))
    got = history.weekly_cohorts(ep, se, ps, scored, outcomes, sunday, TREND_WEEKS, settings)
    assert_frame_equal(got, previous_weekly_cohorts(ep, se, ps, scored, sunday, TREND_WEEKS, settings))
    if back == 0:
        assert got["responder_n"].sum() > 0


@pytest.mark.parametrize("days_back", [1, 7, 20, 2000])
@pytest.mark.parametrize("shuffle", [False, True], ids=["stored", "shuffled"])
def test_outcomes_before_equal_the_previous_implementation(tables, days_back, shuffle):
    ep, se, ps = tables
    ps = _one_score_per_key(ps) if shuffle else ps
    earlier = SUNDAY - timedelta(days=days_back)
    scored = scored_sessions(ep, se, ps, SUNDAY)
    later = episode_outcomes(ep, se, ps, SUNDAY, SETTINGS)
    if shuffle:  # unsorted outcomes: concatenated and sorted instead of merged
        ep, ps, scored, later = (_shuffled(f) for f in (ep, ps, scored, later))
    expected = previous_outcomes_before(ep, scored, ps, later, SUNDAY, earlier, SETTINGS)
    assert_frame_equal(history.outcomes_before(ep, scored, ps, later, SUNDAY, earlier, SETTINGS), expected)
    # the report passes only the columns it reads, and gets those back
    slim = later.select(REPORT_OUTCOME_COLUMNS)
    assert_frame_equal(history.outcomes_before(ep, scored, ps, slim, SUNDAY, earlier, SETTINGS),
                       expected.select(REPORT_OUTCOME_COLUMNS))


def _by_group(frame: pl.DataFrame, by: str) -> pl.DataFrame:
    return frame.sort(by, nulls_last=True)  # group_by leaves the rows in any order


@pytest.mark.parametrize("by", ["condition", "clinic_id"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "shuffled"])
def test_base_counts_equal_the_previous_implementation(tables, by, shuffle):
    ep, se, ps = tables
    outcomes = episode_outcomes(ep, se, ps, SUNDAY, SETTINGS)
    relief = session_relief(ep, se, ps, SUNDAY)
    assert relief["episode_id"].is_sorted()  # as the report gets it: counted by runs
    if shuffle:
        relief = _shuffled(relief)
    got, expected = _base_counts(outcomes, relief, by), previous_base_counts(outcomes, relief, by)
    assert_frame_equal(_by_group(got, by), _by_group(expected, by))
    assert got.filter(pl.col(by) == ALL)["n_relief"].item() == relief["episode_id"].n_unique() > 0


def test_base_counts_of_an_episode_in_two_groups_are_counted_by_n_unique():
    """Sorted by episode, but one episode's rows in two groups (runs would count it once)."""
    outcomes = pl.DataFrame({"condition": ["a", "b"], "sessions_attended": [1, 1], "prescribed_sessions": [6, 6]})
    relief = pl.DataFrame({"episode_id": ["E1", "E1", "E2"], "condition": ["a", "b", "b"], "relief": [1.0, 2.0, 0.0]})
    got = _by_group(_base_counts(outcomes, relief, "condition"), "condition")
    assert_frame_equal(got, _by_group(previous_base_counts(outcomes, relief, "condition"), "condition"))
    assert dict(zip(got["condition"], got["n_relief"])) == {"ALL": 2, "a": 1, "b": 2}


def test_base_counts_of_no_relief():
    outcomes = pl.DataFrame({"condition": ["a"], "sessions_attended": [0], "prescribed_sessions": [6]})
    relief = pl.DataFrame(schema={"episode_id": pl.String, "condition": pl.String, "relief": pl.Float64})
    assert_frame_equal(_base_counts(outcomes, relief, "condition"),
                       previous_base_counts(outcomes, relief, "condition"))


# --------------------------------------------------------------------------------------
# A day's ratings in (date, t) order, built to matter
# --------------------------------------------------------------------------------------

def _one_episode(sessions: list[tuple[int, float]], followups: list[tuple[int, float]], referral_day: int = 0):
    """Episode E1 referred on day ``referral_day`` of the last trend week (day 0 its Monday);
    sessions and follow-ups as (day, score)."""
    monday = SUNDAY - timedelta(days=6)
    ep = pl.DataFrame({"episode_id": ["E1"], "patient_id": ["P1"], "clinic_id": ["C1"], "condition": ["neck_pain"],
                       "referral_date": [monday + timedelta(days=referral_day)], "prescribed_sessions": [6],
                       "age_band": ["45-59"], "sex": ["F"], "chronicity": ["chronic"]})
    se = pl.DataFrame({"session_id": [f"S{i}" for i in range(len(sessions))], "episode_id": ["E1"] * len(sessions),
                       "session_date": [monday + timedelta(days=d) for d, _ in sessions]})
    ps = pl.DataFrame({"episode_id": ["E1"] * (len(sessions) + len(followups)),
                       "session_id": [f"S{i}" for i in range(len(sessions))] + [None] * len(followups),
                       "timepoint": ["pre"] * len(sessions) + ["followup"] * len(followups),
                       "score": [s for _, s in sessions] + [s for _, s in followups],
                       "recorded_on": [None] * len(sessions) + [monday + timedelta(days=d) for d, _ in followups]},
                      schema={"episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String,
                              "score": pl.Float64, "recorded_on": pl.Date})
    return ep, se, ps


@pytest.mark.parametrize("sessions, followups, referral_day, responder", [
    ([(-20, 8.0), (2, 7.0)], [(2, 2.0)], -20, True),             # a follow-up after the day's pre score
    ([(-20, 8.0), (2, 2.0)], [(1, 7.0)], -20, True),             # a later session's pre after a follow-up
    ([(-20, 8.0), (2, 2.0), (2, 7.5)], [], -20, False),          # two sessions one day: the larger k is last
    ([(-20, 8.0), (2, 7.5), (2, 2.0)], [(-9, 1.0)], -20, True),  # ... and an earlier week's follow-up
    ([(3, 8.0), (4, 2.0)], [(2, 1.0)], 1, True),                 # a follow-up before session 1 (t = 0)
    ([(-3, 8.0), (4, 2.0)], [(-2, 1.0)], 5, True),               # rated a week before the referral (not its cohort)
    ([(1, 8.0), (2, 2.0)], [], 3, True),                         # sessions before the referral, same week
])
def test_the_last_rating_of_the_week_is_the_final_score(sessions, followups, referral_day, responder):
    ep, se, ps = _one_episode(sessions, followups, referral_day)
    scored = scored_sessions(ep, se, ps, SUNDAY)
    got = history.weekly_cohorts(ep, se, ps, scored, episode_outcomes_from(ep, scored, ps, SUNDAY, SETTINGS), SUNDAY,
                                 TREND_WEEKS, SETTINGS)
    assert_frame_equal(got, previous_weekly_cohorts(ep, se, ps, scored, SUNDAY, TREND_WEEKS, SETTINGS))
    # and the outcome as of Sunday, computed directly
    direct = episode_outcomes(ep, se, ps, SUNDAY, SETTINGS)
    last = got.row(-1, named=True)
    analysed = direct.filter(pl.col("analysed") & (pl.col("last_observation_date") >= SUNDAY - timedelta(days=6)))
    assert last["responder_n"] == analysed.height
    assert last["responders"] == int(analysed["responder_30"].sum())
    assert last["responders"] == (1 if responder and analysed.height else 0)


def test_sorted_by_episode():
    kept = pl.DataFrame({"episode_id": ["E1", "E3", "E5"], "x": [1, 3, 5]})
    redone = pl.DataFrame({"episode_id": ["E2", "E4"], "x": [2, 4]})
    expected = pl.DataFrame({"episode_id": ["E1", "E2", "E3", "E4", "E5"], "x": [1, 2, 3, 4, 5]})
    assert_frame_equal(history._sorted_by_episode(kept, redone), expected)
    assert_frame_equal(history._sorted_by_episode(kept.reverse(), redone), expected)  # either need not be sorted
    assert_frame_equal(history._sorted_by_episode(redone, kept), expected)
    with_null = pl.DataFrame({"episode_id": [None, "E0"], "x": [0, 0]}, schema={"episode_id": pl.String, "x": pl.Int64})
    assert_frame_equal(history._sorted_by_episode(kept, with_null),
                       pl.concat([kept, with_null]).sort("episode_id"))
