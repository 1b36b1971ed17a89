"""The report's derived dates (pipelines.reports.history) equal their direct computation.

The weekly report computes outcomes once as of its Sunday and derives the previous Sunday
and the 12 trend weeks from them. Each helper is checked here against the outcomes
functions called directly for that date (the way the report computed them before), on a
synthetic export and on hand-made records with the edge cases of METRICS.md "One episode".
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.outcomes.metrics import episode_outcomes, episode_outcomes_from, scored_sessions, session_relief
from pipelines.outcomes.summary import ALL, condition_summary_from
from pipelines.reports.history import outcomes_before, weekly_cohorts
from pipelines.reports.weekly import TREND_WEEKS, _pooled
from pipelines.settings import Settings

SUNDAY = date(2026, 11, 22)
SETTINGS = Settings()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    from pipelines.ingest.core import ingest_folder
    from pipelines.synth import generate

    raw = tmp_path_factory.mktemp("history_raw")
    generate(600, 7, raw)  # last day: Sunday 2026-11-22
    result = ingest_folder(raw, date(2026, 11, 27))
    return result.episodes, result.sessions, result.pain_scores


def _episode(eid: str, referral: date, condition: str = "low_back_pain", clinic: str = "C1") -> dict:
    return {"episode_id": eid, "patient_id": f"P{eid}", "clinic_id": clinic, "condition": condition,
            "referral_date": referral, "prescribed_sessions": 6, "age_band": "45-59", "sex": "F",
            "chronicity": "chronic"}


def _edge_cases() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Records around SUNDAY and the trend weeks: follow-ups alone in a week, follow-ups before
    any session (t = 0), a follow-up long after the last session, a zero or missing baseline, a decimal score exactly at 30%, two
    sessions on one day, a duplicate pre score, sessions and ratings before the referral, an episode
    referred in the report's week, and episodes that stop or go on after a trend week."""
    monday = SUNDAY - timedelta(days=6)
    episodes, sessions, scores = [], [], []

    def add(eid, referral, plan, followups=(), condition="low_back_pain", clinic="C1"):
        """plan: (days after referral, pre, post) per session; followups: (days after referral, score)."""
        episodes.append(_episode(eid, referral, condition, clinic))
        for i, (offset, pre, post) in enumerate(plan, start=1):
            sid = f"S{eid}_{i}"
            sessions.append({"session_id": sid, "episode_id": eid, "session_date": referral + timedelta(days=offset)})
            for tp, score in (("pre", pre), ("post", post)):
                if score is not None:
                    scores.append({"episode_id": eid, "session_id": sid, "timepoint": tp, "score": float(score),
                                   "recorded_on": None})
        for offset, score in followups:
            scores.append({"episode_id": eid, "session_id": None, "timepoint": "followup", "score": float(score),
                           "recorded_on": referral + timedelta(days=offset)})

    start = SUNDAY - timedelta(weeks=TREND_WEEKS + 2)
    for i in range(40):  # a steady stream: weekly sessions, some responders, some not
        referral = start + timedelta(days=3 * i)
        drop = i % 5
        add(f"A{i:02d}", referral, [(7 * j, 7 - (drop * j) // 3, 6 - (drop * j) // 3) for j in range(1 + i % 7)],
            followups=[(7 * (1 + i % 7) + 10, 7 - drop)] if i % 3 == 0 else (),
            condition=("low_back_pain", "neck_pain", "knee_osteoarthritis")[i % 3], clinic=f"C{i % 4}")
    add("B_decimal", monday - timedelta(days=21), [(0, 7, 6), (7, 6, 5), (21, 4.9, 4)])        # exactly 30%
    add("B_zero", monday - timedelta(days=14), [(0, 0, 0), (7, 0, 0), (14, 1, 0)])             # no pain at baseline
    add("B_nobase", monday - timedelta(days=14), [(0, None, 5), (7, 6, 5), (14, 4, 3)])        # no baseline
    add("B_follow_only", monday - timedelta(days=35), [(0, 8, 7), (7, 7, 6)], followups=[(37, 3)])
    add("B_t0", monday - timedelta(days=10), [(5, 6, 5), (10, 4, 4)], followups=[(1, 2), (9, 5)])
    add("B_same_day", monday - timedelta(days=7), [(0, 8, 8), (0, 7, 6), (8, 5, 5)])
    add("B_new", monday + timedelta(days=1), [(0, 6, 5), (3, 3, 3)])                            # referred this week
    add("B_early", monday - timedelta(days=7), [(-3, 6, 5), (2, 6, 4), (9, 2, 2)])             # session before referral
    add("B_rated_before_referral", monday - timedelta(days=7), [(-10, 8, 7), (-9, 4, 4), (3, 5, 5)])
    add("B_late_followup", monday - timedelta(weeks=20), [(0, 8, 7), (7, 6, 6)], followups=[(7 * 19 + 2, 2)])
    add("B_two_followups", monday - timedelta(days=28), [(0, 9, 8), (7, 8, 8)], followups=[(30, 6), (30, 6)])
    # a duplicate pre score: the first one counts
    scores.append({"episode_id": "B_decimal", "session_id": "SB_decimal_1", "timepoint": "pre", "score": 2.0,
                   "recorded_on": None})
    ep = pl.DataFrame(episodes, schema={"episode_id": pl.String, "patient_id": pl.String, "clinic_id": pl.String,
                                        "condition": pl.String, "referral_date": pl.Date,
                                        "prescribed_sessions": pl.Int64, "age_band": pl.String, "sex": pl.String,
                                        "chronicity": pl.String})
    se = pl.DataFrame(sessions, schema={"session_id": pl.String, "episode_id": pl.String, "session_date": pl.Date})
    ps = pl.DataFrame(scores, schema={"episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String,
                                      "score": pl.Float64, "recorded_on": pl.Date})
    return ep, se, ps


@pytest.fixture(scope="module", params=["synthetic", "edge_cases"])
def tables(request):
    return request.getfixturevalue("synthetic") if request.param == "synthetic" else _edge_cases()


def _loop_trend(ep, se, ps, sunday: date, weeks: int, settings: Settings) -> list[dict]:
    """The trend as the report computed it before: episode_outcomes once per week, on the
    episodes rated that week."""
    rows = []
    for back in range(weeks - 1, -1, -1):
        end = sunday - timedelta(weeks=back)
        start = end - timedelta(days=6)
        rated = pl.concat([
            se.filter(pl.col("session_date").is_between(start, end)).select("episode_id"),
            ps.filter((pl.col("timepoint") == "followup") & pl.col("recorded_on").is_between(start, end))
            .select("episode_id"),
        ]).unique()
        outcomes = episode_outcomes(ep.join(rated, on="episode_id", how="semi"),
                                    se.join(rated, on="episode_id", how="semi"),
                                    ps.join(rated, on="episode_id", how="semi"), end, settings)
        analysed = outcomes.filter(pl.col("analysed") & (pl.col("last_observation_date") >= start))
        rows.append({"week_end": end,
                     "sessions": se.filter(pl.col("session_date").is_between(start, end)).height,
                     "new_episodes": ep.filter(pl.col("referral_date").is_between(start, end)).height,
                     "responder_n": analysed.height,
                     "responders": int(analysed["responder_30"].sum()) if analysed.height else 0})
    return rows


@pytest.mark.parametrize("back", [0, 1, 3])
@pytest.mark.parametrize("settings", [SETTINGS, Settings(responder_30_threshold=50.0)], ids=["default", "50"])
def test_weekly_cohorts_equal_the_per_week_computation(tables, back, settings):
    ep, se, ps = tables
    sunday = SUNDAY - timedelta(weeks=back)
    scored = scored_sessions(ep, se, ps, sunday)
    got = weekly_cohorts(ep, se, ps, scored, episode_outcomes_from(ep, scored, ps, sunday, settings), sunday,
                         TREND_WEEKS, settings)
    expected = _loop_trend(ep, se, ps, sunday, TREND_WEEKS, settings)
    assert got.to_dicts() == expected
    assert sum(r["responder_n"] for r in expected) > 0


def test_weekly_cohorts_before_any_record():
    ep, se, ps = _edge_cases()
    sunday = date(2020, 1, 5)
    scored = scored_sessions(ep, se, ps, sunday)
    got = weekly_cohorts(ep, se, ps, scored, episode_outcomes_from(ep, scored, ps, sunday, SETTINGS), sunday,
                         TREND_WEEKS, SETTINGS)
    assert got.to_dicts() == _loop_trend(ep, se, ps, sunday, TREND_WEEKS, SETTINGS)
    assert got["responder_n"].sum() == 0 and got.height == TREND_WEEKS


@pytest.mark.parametrize("days_back", [1, 7, 14, 60, 2000])
def test_outcomes_before_equal_episode_outcomes(tables, days_back):
    ep, se, ps = tables
    later = episode_outcomes(ep, se, ps, SUNDAY, SETTINGS)
    earlier = SUNDAY - timedelta(days=days_back)
    scored = scored_sessions(ep, se, ps, SUNDAY)
    assert_frame_equal(outcomes_before(ep, scored, ps, later, SUNDAY, earlier, SETTINGS),
                       episode_outcomes(ep, se, ps, earlier, SETTINGS))


def test_pooled_is_the_all_row_of_the_condition_summary(tables):
    ep, se, ps = tables
    outcomes = episode_outcomes(ep, se, ps, SUNDAY, SETTINGS)
    relief = session_relief(ep, se, ps, SUNDAY)
    expected = condition_summary_from(outcomes, relief, SETTINGS).filter(pl.col("condition") == ALL).row(0, named=True)
    got = _pooled(outcomes, relief, SETTINGS)
    # the week-on-week headline reads these; the p value is not computed for it
    for key in ("n_episodes", "n_analysed", "mean_change", "mean_change_ci_low", "mean_change_ci_high",
                "responder_30_rate", "responder_30_ci_low", "responder_30_ci_high", "responder_50_rate",
                "median_sessions_to_response", "median_sessions_ci_low", "median_sessions_ci_high",
                "improved_by_session_6"):
        assert got[key] == expected[key], key
