"""The key and reference checks of the accepted tables (pipelines.defs.ingest.checks on
pipelines.checks): each one fails on the break it is for and passes on good
tables, and every count equals the plain polars definition below, also when 64-bit hashes
collide (forced by replacing the hash)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.defs.ingest import checks
from pipelines.defs.resources import ProcessedTableIOManager
from pipelines import checks as checks_logic

D = dt.date(2026, 1, 5)
EPISODES = {"episode_id": pl.String, "referral_date": pl.Date}
SESSIONS = {"session_id": pl.String, "episode_id": pl.String, "session_date": pl.Date}
SCORES = {"episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String, "recorded_on": pl.Date}


def _episodes(*rows):
    return pl.DataFrame(list(rows), schema=EPISODES, orient="row")


def _sessions(*rows):
    return pl.DataFrame(list(rows), schema=SESSIONS, orient="row")


def _scores(*rows):
    return pl.DataFrame(list(rows), schema=SCORES, orient="row")


def _day(n: int) -> dt.date:
    return D + dt.timedelta(days=n)


GOOD_EPISODES = _episodes(("E1", D), ("E2", _day(3)))
GOOD_SESSIONS = _sessions(("S1", "E1", D), ("S2", "E1", _day(7)), ("S3", "E2", _day(3)))
GOOD_SCORES = _scores(("E1", "S1", "pre", None), ("E1", "S1", "post", D), ("E1", "S2", "pre", None),
                      ("E2", "S3", "post", None), ("E1", None, "followup", _day(30)),
                      ("E1", None, "followup", _day(60)), ("E2", None, "followup", _day(30)))


def _metadata(result):
    return {key: value.value for key, value in result.metadata.items()}


def _all_checks(episodes, sessions, scores):
    return [checks.episodes_key_unique(episodes), checks.sessions_key_unique(sessions),
            checks.pain_scores_key_unique(scores), checks.sessions_reference_episodes(sessions, episodes),
            checks.pain_scores_reference_sessions(scores, sessions, episodes)]


# The definitions: the checks as they were written before hashing (plain polars on the ids).

def _reference(episodes, sessions, scores) -> list[tuple[bool, dict]]:
    def duplicated(frame, rows, key):
        return (frame.lazy().filter(rows).group_by(key).len().filter(pl.col("len") > 1)
                .select(pl.col("len").sum()).collect().item() or 0)

    episode_dupes = episodes.filter(pl.col("episode_id").is_duplicated()).height
    session_dupes = sessions.filter(pl.col("session_id").is_duplicated()).height
    followup = pl.col("timepoint") == "followup"
    prepost = duplicated(scores, ~followup, ["session_id", "timepoint"])
    follow = duplicated(scores, followup, ["episode_id", "recorded_on"])
    joined = sessions.join(episodes, on="episode_id", how="left")
    orphans = joined.filter(pl.col("referral_date").is_null()).height
    early = joined.filter(pl.col("session_date") < pl.col("referral_date")).height
    scoreless = scores.join(episodes, on="episode_id", how="anti").height
    wrong = (scores.filter(pl.col("timepoint") != "followup")
             .join(sessions, on=["session_id", "episode_id"], how="anti").height)
    return [(episode_dupes == 0, {"duplicate_keys": episode_dupes}),
            (session_dupes == 0, {"duplicate_keys": session_dupes}),
            (prepost + follow == 0, {"duplicate_prepost_keys": prepost, "duplicate_followup_keys": follow}),
            (orphans == 0 and early == 0, {"orphan_sessions": orphans, "sessions_before_referral": early}),
            (scoreless == 0 and wrong == 0,
             {"scores_without_episode": scoreless, "prepost_without_own_session": wrong})]


def _constant_hash(values: pl.Series, seed: int) -> pl.Series:
    return pl.Series(values.name, [7] * values.len(), dtype=pl.UInt64)


def _length_hash(values: pl.Series, seed: int) -> pl.Series:
    """Values of equal text length collide (nulls and dates all hash alike)."""
    if values.dtype == pl.String:
        return values.str.len_bytes().fill_null(99).cast(pl.UInt64)
    return pl.Series(values.name, [seed] * values.len(), dtype=pl.UInt64)


HASHES = {"real": checks_logic._hash, "constant": _constant_hash, "length": _length_hash}


@pytest.fixture(params=list(HASHES))
def hash_kind(request, monkeypatch):
    monkeypatch.setattr(checks_logic, "_hash", HASHES[request.param])
    return request.param


def test_good_tables_pass_every_check(hash_kind):
    results = _all_checks(GOOD_EPISODES, GOOD_SESSIONS, GOOD_SCORES)
    assert all(result.passed for result in results), [_metadata(r) for r in results]
    assert [_metadata(r) for r in results] == [m for _, m in _reference(GOOD_EPISODES, GOOD_SESSIONS, GOOD_SCORES)]


def test_duplicate_episode_and_session_keys_fail(hash_kind):
    episodes = pl.concat([GOOD_EPISODES, _episodes(("E1", _day(1)), ("E1", _day(2)))])
    result = checks.episodes_key_unique(episodes)
    assert not result.passed and _metadata(result) == {"duplicate_keys": 3}
    sessions = pl.concat([GOOD_SESSIONS, _sessions(("S3", "E1", _day(9)))])
    result = checks.sessions_key_unique(sessions)
    assert not result.passed and _metadata(result) == {"duplicate_keys": 2}
    # one missing id is no duplicate; two are (as polars groups nulls)
    assert checks.sessions_key_unique(pl.concat([GOOD_SESSIONS, _sessions((None, "E1", D))])).passed
    result = checks.sessions_key_unique(pl.concat([GOOD_SESSIONS, _sessions((None, "E1", D), (None, "E2", D))]))
    assert not result.passed and _metadata(result) == {"duplicate_keys": 2}


def test_duplicate_score_keys_fail(hash_kind):
    prepost = pl.concat([GOOD_SCORES, _scores(("E1", "S1", "pre", _day(1)))])
    result = checks.pain_scores_key_unique(prepost)
    assert not result.passed
    assert _metadata(result) == {"duplicate_prepost_keys": 2, "duplicate_followup_keys": 0}
    # the same date again for an episode's follow-up; another episode's follow-up that day is fine
    follow = pl.concat([GOOD_SCORES, _scores(("E1", None, "followup", _day(60)), ("E2", "S9", "followup", _day(60)))])
    result = checks.pain_scores_key_unique(follow)
    assert not result.passed
    assert _metadata(result) == {"duplicate_prepost_keys": 0, "duplicate_followup_keys": 2}
    # pre/post without a session twice, and follow-ups without a date twice, are duplicates
    nulls = pl.concat([GOOD_SCORES, _scores(("E1", None, "pre", None), ("E2", None, "pre", None),
                                            ("E2", None, "followup", None), ("E2", None, "followup", None))])
    assert _metadata(checks.pain_scores_key_unique(nulls)) == {
        "duplicate_prepost_keys": 2, "duplicate_followup_keys": 2}
    # a score without a timepoint belongs to neither key
    untimed = pl.concat([GOOD_SCORES, _scores(("E1", "S1", None, None), ("E1", "S1", None, None))])
    assert checks.pain_scores_key_unique(untimed).passed


def test_sessions_must_name_an_episode_and_not_precede_its_referral(hash_kind):
    sessions = pl.concat([GOOD_SESSIONS, _sessions(("S4", "E9", D), ("S5", None, D), ("S6", "E2", _day(2)),
                                                   ("S7", "E2", None))])
    result = checks.sessions_reference_episodes(sessions, GOOD_EPISODES)
    assert not result.passed
    assert _metadata(result) == {"orphan_sessions": 2, "sessions_before_referral": 1}
    # an episode without its referral date leaves its sessions without one: orphans
    episodes = pl.concat([GOOD_EPISODES, _episodes(("E3", None))])
    result = checks.sessions_reference_episodes(pl.concat([GOOD_SESSIONS, _sessions(("S8", "E3", D))]), episodes)
    assert _metadata(result) == {"orphan_sessions": 1, "sessions_before_referral": 0}
    # a duplicated episode: each session of it counts once per copy, as in a join
    episodes = pl.concat([GOOD_EPISODES, _episodes(("E2", _day(5)))])
    result = checks.sessions_reference_episodes(GOOD_SESSIONS, episodes)
    assert _metadata(result) == {"orphan_sessions": 0, "sessions_before_referral": 1}


def test_scores_must_name_an_episode_and_their_own_session(hash_kind):
    scores = pl.concat([GOOD_SCORES, _scores(
        ("E9", None, "followup", D),       # follow-up of no episode
        ("E2", "S1", "pre", None),         # S1 is a session of E1
        ("E1", "S9", "post", None),        # no session S9
        ("E1", None, "pre", None),         # pre without a session
        ("E8", "S8", "pre", None),         # neither episode nor session
        (None, None, "followup", D),       # follow-up without an episode
        ("E7", "S1", None, None),          # no timepoint: checked for its episode only
    )])
    result = checks.pain_scores_reference_sessions(scores, GOOD_SESSIONS, GOOD_EPISODES)
    assert not result.passed
    assert _metadata(result) == {"scores_without_episode": 4, "prepost_without_own_session": 4}


def test_a_score_of_a_session_without_episode_has_no_episode(hash_kind):
    """The path that takes a score's episode from its session: the session names a missing episode."""
    sessions = pl.concat([GOOD_SESSIONS, _sessions(("S4", "E9", D))])
    scores = pl.concat([GOOD_SCORES, _scores(("E9", "S4", "pre", None), ("E9", "S4", "post", None))])
    result = checks.pain_scores_reference_sessions(scores, sessions, GOOD_EPISODES)
    assert _metadata(result) == {"scores_without_episode": 2, "prepost_without_own_session": 0}
    linked = checks_logic.sessions_with_episode(sessions, GOOD_EPISODES)
    again = checks.pain_scores_reference_sessions(scores, sessions, GOOD_EPISODES, linked=linked)
    assert _metadata(again) == _metadata(result)


def test_a_colliding_id_is_no_match(monkeypatch):
    """E9 and E1 (and S9, S1) have equal hashes under the length hash, while the episodes'
    hashes stay distinct: the lookup by hash finds E1 for E9 and must reject it."""
    monkeypatch.setattr(checks_logic, "_hash", _length_hash)
    episodes = _episodes(("E1", D), ("E22", D))
    sessions = _sessions(("S1", "E1", D), ("S2", "E9", _day(1)))
    assert checks_logic._hash(episodes["episode_id"], 0).n_unique() == 2
    assert _metadata(checks.sessions_reference_episodes(sessions, episodes)) == {
        "orphan_sessions": 1, "sessions_before_referral": 0}
    scores = _scores(("E9", "S2", "pre", None), ("E1", "S9", "pre", None), ("E9", None, "followup", D))
    assert _metadata(checks.pain_scores_reference_sessions(scores, sessions, episodes)) == {
        "scores_without_episode": 2, "prepost_without_own_session": 1}
    # equal hashes, different keys: no duplicate
    assert checks.sessions_key_unique(_sessions(("S1", "E1", D), ("S2", "E1", D))).passed


def test_the_step_reads_the_stored_tables_and_runs_the_five_checks(tmp_path):
    episodes = pl.concat([GOOD_EPISODES, _episodes(("E2", D))])
    sessions = pl.concat([GOOD_SESSIONS, _sessions(("S4", "E9", D))])
    scores = pl.concat([GOOD_SCORES, _scores(("E2", "S2", "post", None))])
    for name, frame in [("episodes", episodes), ("sessions", sessions), ("pain_scores", scores)]:
        frame.with_columns(pl.lit("unused").alias("source_file")).write_parquet(tmp_path / f"{name}.parquet")
    results = list(checks.accepted_keys_and_references(
        processed_io_manager=ProcessedTableIOManager(processed_dir=str(tmp_path))))
    assert [r.check_name for r in results] == [spec.key.name for spec in checks.KEY_AND_REFERENCE_SPECS]
    assert [(r.passed, _metadata(r)) for r in results] == _reference(episodes, sessions, scores)
    assert [r.passed for r in results] == [False, True, True, False, False]


IDS = st.one_of(st.none(), st.sampled_from(["E1", "E2", "E10", "S1", "S2", "S10", "", "é", "E1 "]))
DAYS = st.one_of(st.none(), st.integers(0, 3).map(_day))
TIMEPOINTS = st.one_of(st.none(), st.sampled_from(["pre", "post", "followup"]))


@settings(max_examples=200, deadline=None)
@given(episodes=st.lists(st.tuples(IDS, DAYS), max_size=6),
       sessions=st.lists(st.tuples(IDS, IDS, DAYS), max_size=8),
       scores=st.lists(st.tuples(IDS, IDS, TIMEPOINTS, DAYS), max_size=12),
       hash_name=st.sampled_from(list(HASHES)))
def test_every_check_equals_its_definition(episodes, sessions, scores, hash_name):
    episodes, sessions, scores = _episodes(*episodes), _sessions(*sessions), _scores(*scores)
    real = checks_logic._hash
    checks_logic._hash = HASHES[hash_name]
    try:
        results = _all_checks(episodes, sessions, scores)
        linked = checks_logic.sessions_with_episode(sessions, episodes)
        shared = [checks.sessions_reference_episodes(sessions, episodes, linked=linked),
                  checks.pain_scores_reference_sessions(scores, sessions, episodes, linked=linked)]
    finally:
        checks_logic._hash = real
    expected = _reference(episodes, sessions, scores)
    assert [(r.passed, _metadata(r)) for r in results] == expected
    assert [(r.passed, _metadata(r)) for r in shared] == expected[3:]
