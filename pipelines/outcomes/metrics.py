"""One episode's outcome (METRICS.md, "One episode"), vectorised over all episodes.

Every step is a polars join, sort or group-by; nothing loops over episodes in Python, so
the same code serves five episodes in a test and millions in the weekly run.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from pipelines.outcomes.joins import left_join_by_hash, semi_join_by_hash
from pipelines.settings import Settings

#: tolerance with which a percentage "reaches" a threshold (METRICS.md, step 6)
REACH_TOLERANCE = 1e-9

EXCLUSION_REASONS = ("no sessions", "no baseline", "no pain at baseline", "no outcome")

OUTCOME_COLUMNS = [
    "episode_id", "patient_id", "clinic_id", "condition", "referral_date", "sessions_attended",
    "prescribed_sessions", "baseline_pain", "final_pain", "change", "pct_change", "responder_30",
    "responder_50", "sessions_to_response", "response_observed", "exclusion_reason",
]
#: carried along for cohort selection by researchers (not required by the contract)
EXTRA_COLUMNS = ["age_band", "sex", "chronicity", "n_observations", "last_observation_date", "analysed"]


def reaches(pct: pl.Expr, threshold: float) -> pl.Expr:
    """A percentage reaches a threshold when it is >= threshold - 1e-9 (METRICS.md step 6)."""
    return pct >= threshold - REACH_TOLERANCE


def episodes_as_of(episodes: pl.DataFrame, as_of: date) -> pl.DataFrame:
    return episodes.filter(pl.col("referral_date") <= as_of)


def numbered_sessions(episodes: pl.DataFrame, sessions: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """Sessions dated on or before D, numbered k = 1..n per episode by (session_date, session_id)."""
    # after the sort each episode's sessions are one run of rows: k = position - run start + 1
    # (cheaper than a window over episode_id, which hashes every id again)
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    run_start = pl.when(pl.col("episode_id").ne_missing(pl.col("episode_id").shift())
                        | (position == 0)).then(position).forward_fill()
    dated = sessions.lazy().filter(pl.col("session_date") <= as_of).select("session_id", "episode_id", "session_date")
    return (
        semi_join_by_hash(dated, episodes, "episode_id").lazy()
        .sort("episode_id", "session_date", "session_id")
        .with_columns((position - run_start + 1).alias("k"))
        .collect()
    )


def session_scores(numbered: pl.DataFrame, pain_scores: pl.DataFrame) -> pl.DataFrame:
    """One row per numbered session with its ``pre`` and ``post`` scores (null when absent).

    Scores are matched by session_id alone: in accepted data a pre/post score's key is
    (session_id, timepoint) and its episode_id is its session's (CONTRACT.md, checked by
    ingest and by the blocking asset checks), so the episode adds nothing to the match.
    """
    out = numbered
    for tp in ("pre", "post"):
        scores = (pain_scores.lazy().filter(pl.col("timepoint") == tp)
                  .select("session_id", pl.col("score").cast(pl.Float64).alias(tp)))
        out = left_join_by_hash(out, scores, "session_id")
    return out


def outcome_observations(scored: pl.DataFrame, pain_scores: pl.DataFrame, episodes: pl.DataFrame,
                         as_of: date) -> pl.DataFrame:
    """Ratings taken after at least one treatment: (episode_id, date, t, score).

    ``scored`` is the output of :func:`scored_sessions`. ``pre`` of session k >= 2 gives
    t = k - 1 on the session's date; a follow-up gives t = the number of sessions dated on
    or before its recorded_on, and is dropped at t = 0.
    """
    return _observations(scored.lazy(), pain_scores.lazy(), episodes.lazy(), as_of).collect()


def _observations(scored: pl.LazyFrame, pain_scores: pl.LazyFrame, episodes: pl.LazyFrame,
                  as_of: date) -> pl.LazyFrame:
    from_pre = scored.filter((pl.col("k") >= 2) & pl.col("pre").is_not_null()).select(
        "episode_id", pl.col("session_date").alias("date"), (pl.col("k") - 1).alias("t"),
        pl.col("pre").alias("score"))
    followups = (
        pain_scores.filter((pl.col("timepoint") == "followup") & (pl.col("recorded_on") <= as_of))
        .join(episodes.select("episode_id"), on="episode_id", how="semi")
        .select("episode_id", pl.col("recorded_on").alias("date"), pl.col("score").cast(pl.Float64))
        .sort("date")
    )
    # sessions on or before each date = the largest k among sessions dated on or before it
    last_k_by_date = _last_k_by_date(scored).sort("session_date")
    followups = followups.join_asof(last_k_by_date, left_on="date", right_on="session_date",
                                    by="episode_id", strategy="backward",
                                    check_sortedness=False)
    from_followup = followups.select("episode_id", "date", pl.col("k").fill_null(0).alias("t"), "score").filter(
        pl.col("t") >= 1)
    return pl.concat([from_pre, from_followup], how="vertical").sort("episode_id", "date", "t")


def _last_k_by_date(scored: pl.LazyFrame) -> pl.LazyFrame:
    """The largest k of each (episode_id, session_date).

    :func:`scored_sessions` returns its rows ordered by episode, date and k, so each pair is
    one run of rows ending at its largest k: keeping the last row of every run is exact and
    much cheaper than grouping millions of rows by (episode_id, session_date). Frames not in
    that order (checked, in one pass) are grouped instead."""
    same_episode = pl.col("episode_id") == pl.col("episode_id").shift()
    in_order = (((pl.col("episode_id") > pl.col("episode_id").shift())
                 | (same_episode & ((pl.col("session_date") > pl.col("session_date").shift())
                                    | ((pl.col("session_date") == pl.col("session_date").shift())
                                       & (pl.col("k") > pl.col("k").shift())))))
                .fill_null(True).all())
    if scored.select(in_order).collect().item():
        run_end = ((pl.col("episode_id") != pl.col("episode_id").shift(-1))
                   | (pl.col("session_date") != pl.col("session_date").shift(-1))).fill_null(True)
        return scored.filter(run_end).select("episode_id", "session_date", "k")
    return scored.group_by("episode_id", "session_date").agg(pl.col("k").max())


def scored_sessions(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                    as_of: date) -> pl.DataFrame:
    """Sessions on or before D of episodes referred on or before D, numbered, with pre/post scores.

    The one step every session-level metric starts from; the pipeline computes it once
    (the ``scored_sessions`` asset) and passes it to the metrics below.
    """
    return session_scores(numbered_sessions(episodes_as_of(episodes, as_of), sessions, as_of), pain_scores)


def episode_outcomes(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                     as_of: date, settings: Settings | None = None) -> pl.DataFrame:
    """One row per episode referred on or before ``as_of``, as METRICS.md "One episode" defines.

    baseline_pain and final_pain are filled wherever they exist; change, pct_change, the
    responder flags and sessions to response only for analysed episodes.
    """
    scored = scored_sessions(episodes, sessions, pain_scores, as_of)
    return episode_outcomes_from(episodes, scored, pain_scores, as_of, settings)


def episode_outcomes_from(episodes: pl.DataFrame, scored: pl.DataFrame, pain_scores: pl.DataFrame,
                          as_of: date, settings: Settings | None = None) -> pl.DataFrame:
    """:func:`episode_outcomes` from the output of :func:`scored_sessions` for the same ``as_of``."""
    settings = settings or Settings()
    eps = episodes_as_of(episodes, as_of).lazy()
    scored = scored.lazy()
    obs = _observations(scored, pain_scores.lazy(), eps, as_of)

    attended = scored.group_by("episode_id").agg(pl.len().cast(pl.Int64).alias("sessions_attended"))
    baseline = scored.filter(pl.col("k") == 1).select("episode_id", pl.col("pre").alias("baseline_pain"))
    # the aggregations below take first/last in (date, t) order: keep the observations' order
    obs = obs.join(baseline, on="episode_id", how="left", maintain_order="left").with_columns(
        (100.0 * (pl.col("baseline_pain") - pl.col("score")) / pl.col("baseline_pain")).alias("_pct"))
    per_episode = obs.group_by("episode_id").agg(
        pl.col("score").last().alias("final_pain"),
        pl.len().cast(pl.Int64).alias("n_observations"),
        pl.col("t").last().alias("_last_t"),
        pl.col("date").last().alias("last_observation_date"),
        pl.col("t").filter(reaches(pl.col("_pct"), settings.response_threshold)).first().alias("_response_t"),
    )
    out = (
        eps.join(attended, on="episode_id", how="left")
        .join(baseline, on="episode_id", how="left")
        .join(per_episode, on="episode_id", how="left")
        .with_columns(pl.col("sessions_attended").fill_null(0), pl.col("n_observations").fill_null(0))
    )
    exclusion = (
        pl.when(pl.col("sessions_attended") == 0).then(pl.lit(EXCLUSION_REASONS[0]))
        .when(pl.col("baseline_pain").is_null()).then(pl.lit(EXCLUSION_REASONS[1]))
        .when(pl.col("baseline_pain") == 0).then(pl.lit(EXCLUSION_REASONS[2]))
        .when(pl.col("n_observations") == 0).then(pl.lit(EXCLUSION_REASONS[3]))
        .otherwise(None)
    )
    out = out.with_columns(exclusion.alias("exclusion_reason"))
    analysed = pl.col("exclusion_reason").is_null()
    change = pl.col("baseline_pain").cast(pl.Float64) - pl.col("final_pain").cast(pl.Float64)
    pct = 100.0 * change / pl.col("baseline_pain")
    out = out.with_columns(
        analysed.alias("analysed"),
        pl.when(analysed).then(change).alias("change"),
        pl.when(analysed).then(pct).alias("pct_change"),
    ).with_columns(
        pl.when(analysed).then(reaches(pl.col("pct_change"), settings.responder_30_threshold)).alias("responder_30"),
        pl.when(analysed).then(reaches(pl.col("pct_change"), settings.responder_50_threshold)).alias("responder_50"),
        pl.when(analysed).then(pl.coalesce("_response_t", "_last_t")).cast(pl.Int64).alias("sessions_to_response"),
        pl.when(analysed).then(pl.col("_response_t").is_not_null()).alias("response_observed"),
    )
    return out.select(OUTCOME_COLUMNS + EXTRA_COLUMNS).sort("episode_id").collect()


def session_relief(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                   as_of: date) -> pl.DataFrame:
    """Within-session relief (pre - post) of every session on or before D with both scores."""
    return session_relief_from(episodes, scored_sessions(episodes, sessions, pain_scores, as_of), as_of)


def session_relief_from(episodes: pl.DataFrame, scored: pl.DataFrame, as_of: date,
                        rows: pl.Series | None = None) -> pl.DataFrame:
    """:func:`session_relief` from the output of :func:`scored_sessions` for the same ``as_of``:
    its sessions with both scores, in its order, with their episode's clinic and condition.

    ``rows``: each scored session's row of ``episodes`` (:func:`episode_rows`, with
    ``episodes`` the episode outcomes computed from ``scored``), taken as is."""
    both = scored["pre"].is_not_null() & scored["post"].is_not_null()
    if rows is None:
        episodes = episodes_as_of(episodes, as_of)
    return (with_episode_columns(scored.filter(both), episodes, ["clinic_id", "condition"],
                                 None if rows is None else rows.filter(both))
            .with_columns((pl.col("pre") - pl.col("post")).alias("relief")))


def episode_rows(scored: pl.DataFrame, outcomes: pl.DataFrame) -> pl.Series | None:
    """The row of ``outcomes`` of each row's episode, for :func:`scored_sessions` and the
    :func:`episode_outcomes_from` computed from it (``outcomes`` needs episode_id and
    sessions_attended); None when the two are not laid out as those functions leave them.

    Both are sorted by episode_id and sessions_attended counts an episode's scored sessions,
    so ``scored`` is, in the order of ``outcomes``, one run of sessions_attended rows per
    episode: the row numbers follow from the counts, with no episode looked up. That layout
    is checked where it can fail: the runs of one episode_id in ``scored`` start where the
    counts say, and the first row of each is that episode's (so every row of a run is)."""
    attended = outcomes["sessions_attended"]
    ids = scored["episode_id"]
    if (ids.null_count() or attended.null_count() or (outcomes.height and attended.min() < 0)
            or attended.sum() != scored.height):
        return None
    counts = attended.to_numpy()
    present = counts > 0
    starts = np.flatnonzero(ids.ne_missing(ids.shift()).fill_null(True).to_numpy())
    expected = (np.cumsum(counts) - counts)[present]
    if len(starts) != len(expected) or not (starts == expected).all():
        return None
    if not ids.gather(starts).equals(outcomes["episode_id"].filter(present), check_names=False):
        return None
    return pl.Series("row", np.repeat(np.arange(outcomes.height, dtype=np.uint32), counts))


def with_episode_columns(frame: pl.DataFrame, episodes: pl.DataFrame, columns: list[str],
                         rows: pl.Series | None = None) -> pl.DataFrame:
    """``frame.join(episodes.select("episode_id", *columns), on="episode_id", maintain_order="left")``:
    the rows of ``frame`` whose episode is in ``episodes``, in frame's order, with that
    episode's ``columns`` (which ``frame`` must not have). ``rows``: each row's row of
    ``episodes`` when known (:func:`episode_rows`): the columns are taken from there.

    Scored sessions come in runs of one episode's rows, so the episodes are looked up once
    per run (by :func:`left_join_by_hash`) and the columns repeated along each run: at a
    million episodes that is a fifth of the lookups of a join per session. Any row order
    gives the same result (more runs); an episode_id repeated in ``episodes`` (which would
    repeat rows) means the plain join."""
    if rows is not None:
        return frame.hstack(episodes.select(columns).rechunk().gather(rows).get_columns())
    matched = "__episode_matched"
    new_run = (pl.col("episode_id") != pl.col("episode_id").shift()).fill_null(True)
    starts = frame.select(new_run).to_series()
    runs = frame.select("episode_id").filter(starts)
    per_run = left_join_by_hash(runs, episodes.select("episode_id", *columns, pl.lit(True).alias(matched)),
                                "episode_id")
    if per_run.height != runs.height:
        return frame.join(episodes.select("episode_id", *columns), on="episode_id", maintain_order="left")
    run_of_row = starts.cum_sum() - 1
    # one chunk first: gathering from many chunks is several times slower
    out = frame.hstack(per_run.select(columns).rechunk().gather(run_of_row).get_columns())
    if per_run[matched].null_count():
        out = out.filter(per_run[matched].gather(run_of_row).is_not_null())
    return out


def latest_record_date(sessions: pl.DataFrame, pain_scores: pl.DataFrame) -> date | None:
    """The default as-of date: the latest accepted session date or follow-up date."""
    candidates = [
        sessions.select(pl.col("session_date").max()).item() if sessions.height else None,
        pain_scores.filter(pl.col("timepoint") == "followup").select(pl.col("recorded_on").max()).item()
        if pain_scores.height else None,
    ]
    candidates = [c for c in candidates if c is not None]
    return max(candidates) if candidates else None


def _dated_records(episodes: pl.DataFrame | None, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                   ids: bool = True) -> list[pl.LazyFrame]:
    """The date ``_d`` (and with ``ids`` the episode_id) of every dated record (METRICS.md
    "As of a date"): referrals (when ``episodes`` is given), sessions (which also date their
    pre/post scores) and follow-ups. ``pain_scores`` needs timepoint and recorded_on."""
    id_column = ["episode_id"] if ids else []
    dated = [sessions.lazy().select(*id_column, pl.col("session_date").alias("_d")),
             pain_scores.lazy().filter(pl.col("timepoint") == "followup")
             .select(*id_column, pl.col("recorded_on").alias("_d"))]
    if episodes is not None:
        dated.insert(0, episodes.lazy().select(*id_column, pl.col("referral_date").alias("_d")))
    return dated


def episodes_with_records_between(episodes: pl.DataFrame | None, sessions: pl.DataFrame,
                                  pain_scores: pl.DataFrame, first: date, second: date) -> pl.Series:
    """episode_id of every episode with a record (:func:`_dated_records`) dated after the
    earlier of the two dates and on or before the later one."""
    low, high = min(first, second), max(first, second)
    between = pl.col("_d").is_between(low, high, closed="right")
    found = [frame.filter(between).select("episode_id") for frame in _dated_records(episodes, sessions, pain_scores)]
    return pl.concat(found, how="vertical").unique().collect()["episode_id"]


def same_records_as_of(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                       first: date, second: date) -> bool:
    """True when the same records count as of both dates (METRICS.md "As of a date"): no
    episode referred, session held or follow-up recorded after the earlier date and on or
    before the later one. A date enters every metric only through that filter, so then every
    metric as of one date equals the metric as of the other (``pre``/``post`` scores follow
    their session's date).

    ``pain_scores`` needs ``timepoint`` and ``recorded_on``; the other two their date column.
    """
    low, high = min(first, second), max(first, second)
    if low == high:
        return True
    between = pl.col("_d").is_between(low, high, closed="right")
    return not any(frame.select(between.any()).collect().item()
                   for frame in _dated_records(episodes, sessions, pain_scores, ids=False))
