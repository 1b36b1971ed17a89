"""The key and reference checks of the accepted tables, as plain functions of polars frames.

At a million episodes these checks look at about 25 million text ids, and grouping or joining
on text costs several times more than on integers. Equal ids have equal 64-bit hashes, so a
key whose hashes are all distinct is unique without comparing any text: only when hashes
repeat (a duplicate key, or a collision) are the rows with a repeated hash grouped on the ids
themselves. A session's episode is looked up by hash and the two episode_ids are then
compared, so a collision cannot make a session find an episode. A score's session is matched
on the ids themselves (by hash it needed a look-up of 12M rows and cost more); a pre/post
score's episode is then known from its session's.

Each count equals the one of the plain polars expression named in its docstring, nulls
included (``tests/test_checks_keys.py`` compares them on random tables, with forced
collisions).

It lives outside ``pipelines.ingest`` on purpose: that package's source is part of the
ingest state's identity, and a change to the checks must not make ingest settle every row.
"""

from __future__ import annotations

import polars as pl

FOUND = "_episode_found"


def _hash(values: pl.Series, seed: int) -> pl.Series:
    """64-bit hash of each value (a null hashes too). Tests replace it to force collisions."""
    return values.hash(seed)


def _key_hash(frame: pl.DataFrame, key: list[str]) -> pl.Series:
    # a seed per position, so that (a, b) and (b, a) do not collide by construction
    combined = _hash(frame[key[0]], 0)
    for seed, column in enumerate(key[1:], start=1):
        combined = combined ^ _hash(frame[column], seed)
    return combined


def duplicated_rows(frame: pl.DataFrame, key: list[str], rows: pl.Series | None = None) -> int:
    """Rows sharing their key with another row, among ``rows`` (a mask; all when None): the
    count of ``frame.filter(rows).group_by(key).len()`` over groups of more than one row."""
    hashes = _key_hash(frame, key)
    if rows is not None:
        frame, hashes = frame.lazy().filter(rows), hashes.filter(rows)
    if hashes.n_unique() == hashes.len():
        return 0
    # rows with equal keys have equal hashes: all of them are among the rows whose hash repeats
    repeated = frame.lazy().select(key).filter(hashes.is_duplicated())
    return int(repeated.group_by(key).len().filter(pl.col("len") > 1).select(pl.col("len").sum()).collect().item())


def prepost_rows(pain_scores: pl.DataFrame) -> pl.Series:
    """Scores that belong to a session: timepoint given and not ``followup``."""
    return (pain_scores["timepoint"] != "followup").fill_null(False)


def score_key_counts(pain_scores: pl.DataFrame) -> tuple[int, int]:
    """Pre/post scores sharing (session_id, timepoint), and follow-ups sharing (episode_id,
    recorded_on), with another score of their kind (see :func:`duplicated_rows`)."""
    # nearly all scores are pre/post: hash their columns whole and select the hashes; the few
    # follow-ups are selected first
    prepost = duplicated_rows(pain_scores, ["session_id", "timepoint"], prepost_rows(pain_scores))
    followups = pain_scores.filter((pain_scores["timepoint"] == "followup").fill_null(False))
    return prepost, duplicated_rows(followups, ["episode_id", "recorded_on"])


def sessions_with_episode(sessions: pl.DataFrame, episodes: pl.DataFrame) -> pl.DataFrame:
    """``sessions.join(episodes, on="episode_id", how="left")`` (the rows in some order), with
    ``FOUND``: true where an episode was found, null where not.

    When the episodes' hashes are distinct, each session's episode is found by hash and its
    episode_id compared with the session's; otherwise (a duplicate episode_id, or a collision)
    by the ordinary join."""
    episode_hashes = _hash(episodes["episode_id"], 0)
    if episode_hashes.n_unique() != episodes.height:
        return sessions.join(episodes.with_columns(pl.lit(True).alias(FOUND)), on="episode_id", how="left")
    # an unordered join then a sort by session costs a third of a join that keeps the order
    position = (pl.DataFrame({"h": _hash(sessions["episode_id"], 0)}).with_row_index("s").lazy()
                .join(pl.DataFrame({"h": episode_hashes}).with_row_index("e").lazy(), on="h", how="left")
                .select(pl.col("e").sort_by("s")).collect()["e"])
    # the episodes' hashes are distinct, so an episode with the session's episode_id would be
    # the one with its hash: a different episode_id there means that there is none
    found = (episodes["episode_id"].gather(position) == sessions["episode_id"]).fill_null(False)
    return sessions.with_columns(
        *(pl.when(found).then(episodes[column].gather(position)).alias(column)
          for column in episodes.columns if column != "episode_id"),
        pl.when(found).then(True).alias(FOUND))


def session_reference_counts(linked: pl.DataFrame) -> tuple[int, int]:
    """Sessions without an episode (or without its referral date), and sessions dated before
    their episode's referral, from :func:`sessions_with_episode`."""
    orphans = linked["referral_date"].null_count()
    early = int((linked["session_date"] < linked["referral_date"]).sum())
    return orphans, early


def score_reference_counts(pain_scores: pl.DataFrame, linked: pl.DataFrame,
                           episodes: pl.DataFrame) -> tuple[int, int]:
    """Scores whose episode_id is no episode's (``pain_scores.join(episodes, how="anti")``),
    and pre/post scores whose (session_id, episode_id) is no session's (anti join with the
    sessions), from :func:`sessions_with_episode` of the same sessions and episodes.

    A pre/post score that names a session of the same episode has an episode exactly when
    that session has one, so only the other scores are looked up among the episodes: those
    that are not pre/post (follow-ups, or no timepoint) and the pre/post scores without
    their session."""
    prepost = prepost_rows(pain_scores)
    pairs = ["session_id", "episode_id"]
    scored = pain_scores.lazy().filter(prepost).select(pairs)
    wrong = scored.join(linked.lazy().select(pairs), on=pairs, how="anti").collect()
    without_episode = linked.filter(pl.col(FOUND).is_null()).select(pairs)
    orphans = 0 if without_episode.is_empty() else (
        scored.join(without_episode.lazy(), on=pairs, how="semi").select(pl.len()).collect().item())
    others = pl.concat([pain_scores["episode_id"].filter(~prepost), wrong["episode_id"]]).to_frame()
    orphans += others.join(episodes.select("episode_id"), on="episode_id", how="anti").height
    return orphans, wrong.height
