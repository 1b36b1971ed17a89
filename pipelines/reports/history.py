"""The report's earlier dates (a week before, the last 12 weeks) derived from one computation.

The weekly report needs outcomes as of its Sunday D, as of the Sunday before (week-on-week
change) and, for each of the last 12 weeks, for the episodes rated that week. Computing
each from the accepted tables costs a full pass of :func:`episode_outcomes` per date. The
helpers here compute once as of D and derive the earlier dates from it, relying on two
facts of METRICS.md ("As of a date", "One episode"):

* an episode's outcome depends on its own records alone, so an episode with no record
  dated in (D', D] has the same outcome as of D' as as of D;
* the sessions as of D' < D are a prefix, in (session_date, session_id) order, of the
  sessions as of D, so numbering k, session scores and outcome observations as of D' are
  those as of D dated on or before D'.

Each helper equals its direct computation exactly (same rows, same order, same values):
``tests/test_report_history.py`` checks them against the outcomes functions, and
``tests/test_report_speed_history.py`` against the slower code they replaced.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from pipelines.outcomes.metrics import (
    episode_outcomes_from, episodes_with_records_between, reaches,
)
from pipelines.settings import Settings


def _not_in(ids: pl.Series) -> pl.Expr:
    """Rows whose episode_id is not in ``ids`` (a row without one is not in them: an anti join)."""
    return pl.col("episode_id").is_in(ids.implode()).fill_null(False).not_()


def touched_between(sessions: pl.DataFrame, pain_scores: pl.DataFrame, after: date, until: date) -> pl.DataFrame:
    """Episode ids with a session or a follow-up rating dated in (after, until]."""
    return episodes_with_records_between(None, sessions, pain_scores, after, until).to_frame()


def outcomes_before(episodes: pl.DataFrame, scored: pl.DataFrame, pain_scores: pl.DataFrame,
                    later_outcomes: pl.DataFrame, later: date, earlier: date,
                    settings: Settings | None = None) -> pl.DataFrame:
    """``episode_outcomes(episodes, sessions, pain_scores, earlier, settings)`` from the outcomes
    and the scored sessions (``scored_sessions``) as of ``later`` >= ``earlier``, with the
    columns of ``later_outcomes`` (a caller may pass only those it reads, with episode_id and
    referral_date).

    Only the episodes with a session or follow-up dated in (earlier, later] are computed
    again, from their scored sessions dated on or before ``earlier`` (a prefix of their
    sessions as of ``later``, numbered the same) and their follow-ups; the others keep their
    row. Rows are picked with ``is_in`` against the few touched episodes (cheaper than joins
    that hash both sides), and of the pain scores only follow-ups are read (pre and post are
    in ``scored``).
    """
    followups = pain_scores.filter(pl.col("timepoint") == "followup")
    touched = touched_between(scored, followups, earlier, later)["episode_id"]
    kept = later_outcomes.filter((pl.col("referral_date") <= earlier) & _not_in(touched))
    redo = episodes.filter((pl.col("referral_date") <= earlier) & pl.col("episode_id").is_in(touched.implode()))
    redo_ids = redo["episode_id"].implode()
    scored_earlier = scored.filter((pl.col("session_date") <= earlier) & pl.col("episode_id").is_in(redo_ids))
    redone = episode_outcomes_from(redo, scored_earlier, followups.filter(pl.col("episode_id").is_in(redo_ids)),
                                   earlier, settings).select(later_outcomes.columns)
    return _sorted_by_episode(kept, redone)


def _sorted_by_episode(kept: pl.DataFrame, redone: pl.DataFrame) -> pl.DataFrame:
    """``concat([kept, redone]).sort("episode_id")``, the outcome table's order. Sorting the
    whole again costs less than merging the two sorted frames by their text ids
    (``merge_sorted``: about twice the time at a million episodes)."""
    return pl.concat([kept, redone], how="vertical").sort("episode_id")


WEEKLY_COHORT_SCHEMA = {"week_end": pl.Date, "sessions": pl.Int64, "new_episodes": pl.Int64,
                        "responder_n": pl.Int64, "responders": pl.Int64}


def weekly_cohorts(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                   scored: pl.DataFrame, outcomes: pl.DataFrame, as_of: date, weeks: int,
                   settings: Settings | None = None) -> pl.DataFrame:
    """The 12-week trend's counts for the ``weeks`` weeks ending on Sunday ``as_of``, oldest first.

    One row per week (``week_end`` its Sunday): sessions dated that week, episodes referred
    that week, and the week's responder cohort as the report defines it: the episodes
    analysed as of the week's Sunday whose latest outcome observation was taken that week
    (``responder_n``), and how many of them are responder_30 (``responders``).

    ``scored`` is ``scored_sessions(episodes, sessions, pain_scores, as_of)`` and ``outcomes``
    the episode outcomes computed from it (episode_id, referral_date, baseline_pain). As of a
    week's Sunday E, an episode referred on or before E with an outcome observation dated
    that week has: session 1 on or before E (an observation follows a session), so its
    baseline is the one as of ``as_of``; at least one observation; and as its final score
    the last observation dated that week (observations as of E are those as of ``as_of``
    dated on or before E). So it is analysed exactly when its baseline is there and not 0,
    and a responder as :func:`episode_outcomes` computes it. Its referral date and that
    baseline (the pre score of its session 1 in ``scored``) are taken from ``outcomes`` in one
    join: at a million episodes, joining the episodes and the first sessions each cost as much.

    Only the observations dated in the window are built (``outcome_observations`` would
    number every rating of every episode): the pre score of a session k >= 2 (t = k - 1),
    and a follow-up dated on or after the episode's session 1 (t >= 1). Their order within
    an episode, (date, t), is (date, follow-up after pre scores, k): a follow-up's t, the
    number of sessions up to its date, is at least the k of every session that day, and
    follow-ups are keyed by (episode, date).
    """
    settings = settings or Settings()
    first_day = as_of - timedelta(weeks=weeks) + timedelta(days=1)
    week_ends = pl.DataFrame({"week_index": list(range(weeks)),
                              "week_end": [first_day + timedelta(days=7 * i + 6) for i in range(weeks)]},
                             schema={"week_index": pl.Int64, "week_end": pl.Date})

    def week_index(column: str) -> pl.Expr:
        return ((pl.col(column) - pl.lit(first_day)).dt.total_days() // 7).cast(pl.Int64).alias("week_index")

    def per_week(frame: pl.DataFrame, column: str, name: str) -> pl.DataFrame:
        return (frame.filter(pl.col(column).is_between(first_day, as_of)).select(week_index(column))
                .group_by("week_index").agg(pl.len().cast(pl.Int64).alias(name)))

    scored = scored.lazy()
    first = scored.filter(pl.col("k") == 1).select("episode_id", pl.col("session_date").alias("first_session"))
    in_window = pl.col("date").is_between(first_day, as_of)
    from_pre = (scored.filter(pl.col("session_date").is_between(first_day, as_of) & (pl.col("k") >= 2)
                              & pl.col("pre").is_not_null())
                .select("episode_id", pl.col("session_date").alias("date"), pl.lit(False).alias("followup"),
                        pl.col("k").cast(pl.Int64), pl.col("pre").alias("score")))
    from_followup = (pain_scores.lazy().filter(pl.col("timepoint") == "followup")
                     .select("episode_id", pl.col("recorded_on").alias("date"), pl.lit(True).alias("followup"),
                             pl.lit(0, dtype=pl.Int64).alias("k"), pl.col("score").cast(pl.Float64))
                     .filter(in_window)
                     .join(first, on="episode_id")
                     .filter(pl.col("first_session") <= pl.col("date")).drop("first_session"))
    finals = (pl.concat([from_pre, from_followup], how="vertical").with_columns(week_index("date"))
              .group_by("week_index", "episode_id")
              .agg(pl.col("score").sort_by("date", "followup", "k").last().alias("final_pain"))
              .join(week_ends.lazy(), on="week_index")
              .join(outcomes.lazy().select("episode_id", "referral_date", "baseline_pain"), on="episode_id")
              .filter(pl.col("referral_date") <= pl.col("week_end"))
              .filter(pl.col("baseline_pain").is_not_null() & (pl.col("baseline_pain") != 0)))
    # the same arithmetic as episode_outcomes (64-bit change, then the percentage)
    change = pl.col("baseline_pain").cast(pl.Float64) - pl.col("final_pain").cast(pl.Float64)
    pct = 100.0 * change / pl.col("baseline_pain")
    cohorts = (finals.with_columns(reaches(pct, settings.responder_30_threshold).alias("responder_30"))
               .group_by("week_index").agg(pl.len().cast(pl.Int64).alias("responder_n"),
                                           pl.col("responder_30").sum().cast(pl.Int64).alias("responders"))
               .collect())
    out = week_ends
    for frame in (per_week(sessions, "session_date", "sessions"), per_week(episodes, "referral_date", "new_episodes"),
                  cohorts):
        out = out.join(frame, on="week_index", how="left")
    return (out.sort("week_index").fill_null(0).select(list(WEEKLY_COHORT_SCHEMA)).cast(WEEKLY_COHORT_SCHEMA))
