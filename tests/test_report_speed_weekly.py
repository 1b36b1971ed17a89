"""The report's cheaper week-on-week and trend steps show the same numbers.

The previous Sunday's pooled statistics are computed without its session relief (the
headline shows none of it), and the 12-week trend takes each episode's referral date and
baseline from the episode outcomes instead of joining the episodes and the first sessions.
Each is compared with what it replaced: the headline rows with the previous week's relief,
and the trend with the joins, on synthetic exports and on the hand-made edge cases.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.outcomes.metrics import episode_outcomes, episode_outcomes_from, scored_sessions, session_relief
from pipelines.reports import history
from pipelines.reports.weekly import TREND_WEEKS, _pooled, _to_date_rows
from pipelines.settings import Settings
from test_report_history import _edge_cases, synthetic, tables  # noqa: F401  (fixtures)
from test_report_speed_history import previous_weekly_cohorts

SUNDAY = date(2026, 11, 22)
SETTINGS = Settings()


@pytest.mark.parametrize("days_back", [7, 30])
@pytest.mark.parametrize("k", [1, 11, 10_000])
def test_headline_rows_need_no_relief_of_the_previous_week(tables, days_back, k):  # noqa: F811
    ep, se, ps = tables
    earlier = SUNDAY - timedelta(days=days_back)
    pooled = _pooled(episode_outcomes(ep, se, ps, SUNDAY, SETTINGS), session_relief(ep, se, ps, SUNDAY), SETTINGS)
    before = episode_outcomes(ep, se, ps, earlier, SETTINGS)
    with_relief = _pooled(before, session_relief(ep, se, ps, earlier), SETTINGS)
    without = _pooled(before, None, SETTINGS)
    assert with_relief["immediate_relief_mean"] is not None and without["immediate_relief_mean"] is None
    assert {c: v for c, v in without.items() if c != "immediate_relief_mean"} == {
        c: v for c, v in with_relief.items() if c != "immediate_relief_mean"}
    rows = _to_date_rows(pooled, without, k)
    assert rows == _to_date_rows(pooled, with_relief, k)
    assert len(rows) == (6 if k <= pooled["n_analysed"] else 2)


@pytest.mark.parametrize("back", [0, 1, 5])
def test_trend_from_outcomes_equals_the_joins(tables, back):  # noqa: F811
    ep, se, ps = tables
    sunday = SUNDAY - timedelta(weeks=back)
    scored = scored_sessions(ep, se, ps, sunday)
    outcomes = episode_outcomes_from(ep, scored, ps, sunday, SETTINGS)
    got = history.weekly_cohorts(ep, se, ps, scored, outcomes, sunday, TREND_WEEKS, SETTINGS)
    assert_frame_equal(got, previous_weekly_cohorts(ep, se, ps, scored, sunday, TREND_WEEKS, SETTINGS))
    # the report passes its outcome columns only (a reused table is read with those)
    slim = outcomes.select("episode_id", "referral_date", "baseline_pain")
    assert_frame_equal(history.weekly_cohorts(ep, se, ps, scored, slim, sunday, TREND_WEEKS, SETTINGS), got)
    if back == 0:
        assert got["responder_n"].sum() > 0


def test_trend_of_an_episode_with_a_zero_or_missing_baseline_counts_none():
    """Observations of an episode without a usable baseline never enter a cohort."""
    ep, se, ps = _edge_cases()
    scored = scored_sessions(ep, se, ps, SUNDAY)
    outcomes = episode_outcomes_from(ep, scored, ps, SUNDAY, SETTINGS)
    unusable = outcomes.filter(pl.col("baseline_pain").is_null() | (pl.col("baseline_pain") == 0))["episode_id"]
    assert unusable.len() >= 2
    keep = ~pl.col("episode_id").is_in(unusable.implode())
    full = history.weekly_cohorts(ep, se, ps, scored, outcomes, SUNDAY, TREND_WEEKS, SETTINGS)
    without = history.weekly_cohorts(ep, se, ps.filter(keep), scored.filter(keep), outcomes.filter(keep), SUNDAY,
                                     TREND_WEEKS, SETTINGS)
    assert full["responder_n"].to_list() == without["responder_n"].to_list()
    assert full["responders"].to_list() == without["responders"].to_list()
