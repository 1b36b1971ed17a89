"""Incremental outcome tables (pipelines.outcomes.incremental) equal a full recomputation.

The previous run's ``scored_sessions`` and ``episode_outcomes`` are reused for episodes
whose inputs are unchanged and which have no record dated between the two as-of dates;
the rest are recomputed and spliced in. Every case here compares the spliced table with a
full recomputation exactly (``assert_frame_equal``: values, dtypes, row order), and, when
anything is doubtful, checks that the step computed in full and said why.

The accepted tables are generated here (:func:`accepted`) rather than ingested, so that
hundreds of random edits run in seconds; the last tests run the real Dagster pipeline.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.io import write_table
from pipelines.outcomes import incremental as inc
from pipelines.outcomes.lineage import STAMP_KEY, Lineage, read_lineage
from pipelines.outcomes.metrics import EXTRA_COLUMNS, OUTCOME_COLUMNS, episode_outcomes_from, scored_sessions
from pipelines.settings import Settings

START = date(2026, 1, 5)
CONDITIONS = ["low_back_pain", "neck_pain", "shoulder_pain", "knee_oa"]


# --------------------------------------------------------------------------------------
# accepted tables, generated
# --------------------------------------------------------------------------------------

def accepted(n: int, seed: int, span_days: int = 120) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Accepted episodes, sessions and pain scores with the dtypes ingest gives them, in no
    particular order; dates within ``span_days`` of START. Includes the awkward cases:
    episodes without sessions, sessions without scores, zero and decimal scores, several
    sessions on one day, follow-ups before the first session, nulls in optional columns."""
    rng = random.Random(seed)
    episodes, sessions, scores = [], [], []
    ids = rng.sample(range(10 * n + 10), n)
    for i in ids:
        eid = f"E{i:05d}"
        referral = START + timedelta(days=rng.randrange(span_days))
        episodes.append(_episode(rng, eid, referral))
        sessions_, scores_ = _records(rng, eid, referral, rng.choice([0, 1, 2, 3, 4, 6, 8]), f"S{i:05d}")
        sessions += sessions_
        scores += scores_
    rng.shuffle(sessions)
    rng.shuffle(scores)
    return _frames(episodes, sessions, scores)


def _episode(rng: random.Random, eid: str, referral: date) -> dict:
    return {"episode_id": eid, "patient_id": f"P{rng.randrange(10**6):06d}", "clinic_id": f"C{rng.randrange(4)}",
            "condition": rng.choice(CONDITIONS), "referral_date": referral,
            "prescribed_sessions": rng.choice([None, 4, 6, 8, 10]), "age_band": rng.choice(["18-29", "45-59", None]),
            "sex": rng.choice(["F", "M", None]), "chronicity": rng.choice(["acute", "chronic", None]),
            "source_file": "episodes_x.csv", "line": rng.randrange(2, 10**6)}


def _score(rng: random.Random) -> float:
    return rng.choice([0.0, 1.0, 2.5, 3.0, 4.0, 4.9, 5.0, 6.0, 7.0, 8.0, 10.0, rng.randrange(0, 101) / 10])


def _records(rng: random.Random, eid: str, referral: date, count: int, prefix: str) -> tuple[list, list]:
    sessions, scores = [], []
    day = referral
    for s in range(count):
        day = day + timedelta(days=rng.choice([0, 0, 2, 3, 7, 7, 14]))
        sid = f"{prefix}-{s}-{rng.randrange(10**6)}"
        sessions.append({"session_id": sid, "episode_id": eid, "therapist_id": f"T{rng.randrange(9)}",
                         "session_date": day, "duration_min": rng.choice([30, 45, 60]),
                         "source_file": "sessions_x.csv", "line": rng.randrange(2, 10**6)})
        for tp, p in (("pre", 0.9), ("post", 0.7)):
            if rng.random() < p:
                scores.append({"episode_id": eid, "session_id": sid, "timepoint": tp, "score": _score(rng),
                               "recorded_on": rng.choice([None, day, day + timedelta(days=1)])})
    followup_days = set()
    for _ in range(rng.choice([0, 0, 1, 2])):
        followup_days.add(referral + timedelta(days=rng.randrange(0, 150)))
    for d in sorted(followup_days):
        scores.append({"episode_id": eid, "session_id": None, "timepoint": "followup", "score": _score(rng),
                       "recorded_on": d})
    return sessions, scores


EPISODE_SCHEMA = {"episode_id": pl.String, "patient_id": pl.String, "clinic_id": pl.String, "condition": pl.String,
                  "referral_date": pl.Date, "prescribed_sessions": pl.Int64, "age_band": pl.String, "sex": pl.String,
                  "chronicity": pl.String, "source_file": pl.String, "line": pl.Int64}
SESSION_SCHEMA = {"session_id": pl.String, "episode_id": pl.String, "therapist_id": pl.String,
                  "session_date": pl.Date, "duration_min": pl.Int64, "source_file": pl.String, "line": pl.Int64}
SCORE_SCHEMA = {"episode_id": pl.String, "session_id": pl.String, "timepoint": pl.String, "score": pl.Float64,
                "recorded_on": pl.Date}


def _frames(episodes, sessions, scores):
    return (pl.DataFrame(episodes, schema=EPISODE_SCHEMA, orient="row"),
            pl.DataFrame(sessions, schema=SESSION_SCHEMA, orient="row"),
            pl.DataFrame(scores, schema=SCORE_SCHEMA, orient="row"))


# --------------------------------------------------------------------------------------
# one run of the two steps, as pipelines/defs/outcomes/assets.py does it, on files
# --------------------------------------------------------------------------------------

@dataclass
class Tables:
    episodes: pl.DataFrame
    sessions: pl.DataFrame
    pain_scores: pl.DataFrame

    def inputs(self) -> str:
        """Stands for accepted_digest: names these tables (any change gives another name)."""
        parts = [f.sort(f.columns, nulls_last=True).write_csv() for f in (self.episodes, self.sessions, self.pain_scores)]
        return str(hash("\n".join(parts)))


def run(folder: Path, tables: Tables, as_of: date, settings: Settings | None = None, code: str = "code-1",
        max_share: float = inc.MAX_RECOMPUTE_SHARE) -> dict[str, inc.Plan]:
    """One run of the scored_sessions and episode_outcomes steps against the previous
    tables in ``folder``, written back into it (as the outcomes job publishes them)."""
    settings = settings or Settings()
    ep, se, ps = tables.episodes, tables.sessions, tables.pain_scores
    scored_stamp = Lineage(inputs=tables.inputs(), as_of=as_of.isoformat(), code=code)
    outcomes_stamp = Lineage(inputs=tables.inputs(), as_of=as_of.isoformat(), code=code,
                             settings=json.loads(json.dumps(settings.as_dict())))
    digests = inc.episode_digests(ep, se, ps)
    previous = inc.read_digests(folder / inc.DIGESTS_FILE)

    def between(a, b):
        return inc.episodes_with_records_between(ep, se, ps, a, b)

    plans = {}
    planner = inc.Planner(digests, previous, between, max_share)
    scored_plan = planner.plan("scored_sessions", scored_stamp, read_lineage(folder / "scored_sessions.parquet"))
    outcomes_plan = planner.plan("episode_outcomes", outcomes_stamp, read_lineage(folder / "episode_outcomes.parquet"))
    recompute = next((p.recompute for p in (scored_plan, outcomes_plan) if p.incremental), None)
    mine = inc.rows_of(recompute, ep, se, ps) if recompute is not None else None
    scored, plans["scored_sessions"] = inc.apply(
        scored_plan, lambda: pl.read_parquet(folder / "scored_sessions.parquet"),
        lambda ids: inc.scored_sessions_of(ids, *mine, as_of), lambda: scored_sessions(ep, se, ps, as_of),
        "scored_sessions.parquet")
    outcomes, plans["episode_outcomes"] = inc.apply(
        outcomes_plan, lambda: pl.read_parquet(folder / "episode_outcomes.parquet"),
        lambda ids: inc.episode_outcomes_of(ids, mine[0], scored, mine[2], as_of, settings),
        lambda: episode_outcomes_from(ep, scored, ps, as_of, settings), "episode_outcomes.parquet",
        expected_rows=ep.filter(pl.col("referral_date") <= as_of).height)
    write_table(scored, folder / "scored_sessions.parquet", {STAMP_KEY: scored_stamp.to_json()})
    write_table(outcomes, folder / "episode_outcomes.parquet", {STAMP_KEY: outcomes_stamp.to_json()})
    write_table(digests, folder / inc.DIGESTS_FILE, inc.digests_metadata(scored_stamp))
    return plans


def assert_equals_full(folder: Path, tables: Tables, as_of: date, settings: Settings | None = None) -> None:
    settings = settings or Settings()
    ep, se, ps = tables.episodes, tables.sessions, tables.pain_scores
    scored = scored_sessions(ep, se, ps, as_of)
    outcomes = episode_outcomes_from(ep, scored, ps, as_of, settings)
    assert_frame_equal(pl.read_parquet(folder / "scored_sessions.parquet"), scored, check_exact=True)
    assert_frame_equal(pl.read_parquet(folder / "episode_outcomes.parquet"), outcomes, check_exact=True)


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------
# digests
# --------------------------------------------------------------------------------------

def test_episode_columns_are_every_episode_column_the_outcomes_carry():
    ep, _, _ = accepted(5, 1)
    columns = inc.episode_columns(ep.columns)
    assert set(columns) == {c for c in ep.columns if c in OUTCOME_COLUMNS + EXTRA_COLUMNS}
    assert "referral_date" in columns and "source_file" not in columns and "line" not in columns


def test_digests_ignore_row_order_and_unread_columns_and_see_every_read_one():
    ep, se, ps = accepted(60, 2)
    base = inc.episode_digests(ep, se, ps)
    assert base.columns == ["episode_id", "digest_a", "digest_b"] and base.height == ep.height
    assert base["episode_id"].to_list() == ep["episode_id"].to_list()
    # another row order, other values in columns the outcomes do not read: the same digests
    shuffled = inc.episode_digests(ep, se.sample(fraction=1.0, shuffle=True, seed=3).with_columns(
        pl.lit("T0").alias("therapist_id"), pl.lit(99).alias("duration_min"), pl.lit("other.csv").alias("source_file")),
        ps.sample(fraction=1.0, shuffle=True, seed=4))
    assert_frame_equal(shuffled, base)
    # a change to any read column of one row changes that episode's digests only
    edits = [("episodes", "condition", "neck_pain_x"), ("episodes", "referral_date", date(2025, 1, 1)),
             ("episodes", "sex", "X"), ("episodes", "prescribed_sessions", 99), ("episodes", "patient_id", "P?"),
             ("sessions", "session_date", date(2026, 9, 9)), ("sessions", "session_id", "S-new"),
             ("pain_scores", "score", 9.75), ("pain_scores", "timepoint", "post_x"),
             ("pain_scores", "recorded_on", date(2026, 9, 9))]
    frames = {"episodes": ep, "sessions": se, "pain_scores": ps}
    for table, column, value in edits:
        frame = frames[table]
        row = 0 if table == "episodes" else 1
        eid = frame["episode_id"][row]
        edited = frame.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value))
                                    .otherwise(pl.col(column)).cast(frame.schema[column]).alias(column))
        changed = inc.episode_digests(**{**frames, table: edited})
        differs = base.join(changed, on="episode_id", suffix="_new").filter(
            (pl.col("digest_a") != pl.col("digest_a_new")) | (pl.col("digest_b") != pl.col("digest_b_new")))
        assert differs["episode_id"].to_list() == [eid], (table, column)


def test_a_negative_zero_score_changes_the_digest():
    ep, se, ps = accepted(20, 5)
    row = ps.with_row_index().filter(pl.col("score") == 0.0)["index"][0]
    negative = ps.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(-0.0)).otherwise(pl.col("score"))
                               .alias("score"))
    assert not inc.episode_digests(ep, se, negative).equals(inc.episode_digests(ep, se, ps))


def test_records_between_two_dates_by_hand():
    ep = pl.DataFrame({"episode_id": ["A", "B", "C", "D"],
                       "referral_date": [date(2026, 3, 1), date(2026, 3, 5), date(2026, 2, 1), date(2026, 2, 1)]})
    se = pl.DataFrame({"session_id": ["s1", "s2"], "episode_id": ["C", "D"],
                       "session_date": [date(2026, 3, 2), date(2026, 3, 8)]})
    ps = pl.DataFrame({"episode_id": ["A", "D", "C"], "session_id": [None, "s2", None],
                       "timepoint": ["followup", "pre", "followup"], "score": [1.0, 2.0, 3.0],
                       "recorded_on": [date(2026, 3, 6), date(2026, 3, 4), date(2026, 3, 1)]})
    found = inc.episodes_with_records_between(ep, se, ps, date(2026, 3, 1), date(2026, 3, 6))
    # A: follow-up on 3-6; B: referred 3-5; C: session 3-2 (its follow-up on 3-1 is not after the
    # earlier date); D's pre is dated by its session (3-8), not by recorded_on
    assert sorted(found.to_list()) == ["A", "B", "C"]
    assert sorted(inc.episodes_with_records_between(ep, se, ps, date(2026, 3, 6), date(2026, 3, 1)).to_list()) \
        == ["A", "B", "C"]
    assert inc.episodes_with_records_between(ep, se, ps, date(2026, 3, 6), date(2026, 3, 6)).is_empty()


# --------------------------------------------------------------------------------------
# by hand
# --------------------------------------------------------------------------------------

def test_one_changed_score_recomputes_that_episode_only(tmp_path):
    ep, se, ps = accepted(40, 7)
    as_of = START + timedelta(days=200)
    first = run(tmp_path, Tables(ep, se, ps), as_of)
    assert not first["scored_sessions"].incremental and "no episode_input_digests.parquet" in first["scored_sessions"].reason
    pre = ps.with_row_index().filter(pl.col("timepoint") == "pre").row(0, named=True)
    edited = ps.with_columns(pl.when(pl.int_range(pl.len()) == pre["index"]).then(pl.lit(pre["score"] + 0.5))
                             .otherwise(pl.col("score")).alias("score"))
    plans = run(tmp_path, Tables(ep, se, edited), as_of)
    for name, plan in plans.items():
        assert plan.incremental, (name, plan.reason)
        assert plan.recompute.to_list() == [pre["episode_id"]]
        assert plan.counts == {"episodes": 40, "new": 0, "changed": 1, "dated_between": 0, "recompute": 1, "removed": 0}
        assert plan.summary() == (f"incremental: recomputed 1 of 40 episodes (0 new, 1 changed, 0 more with records "
                                  f"between {as_of} and {as_of}; 0 removed)")
    assert_equals_full(tmp_path, Tables(ep, se, edited), as_of)


def test_unchanged_inputs_reuse_every_row_and_write_the_same_bytes(tmp_path):
    ep, se, ps = accepted(50, 8)
    as_of = START + timedelta(days=90)
    run(tmp_path, Tables(ep, se, ps), as_of)
    before = {name: (tmp_path / name).read_bytes() for name in ("scored_sessions.parquet", "episode_outcomes.parquet",
                                                                 inc.DIGESTS_FILE)}
    plans = run(tmp_path, Tables(ep, se, ps), as_of)
    assert all(p.incremental and p.counts["recompute"] == 0 for p in plans.values())
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_spliced_table_writes_the_bytes_of_a_full_one(tmp_path):
    ep, se, ps = accepted(300, 9)
    as_of = START + timedelta(days=60)
    run(tmp_path, Tables(ep, se, ps), as_of)
    later = as_of + timedelta(days=7)
    plans = run(tmp_path, Tables(ep, se, ps), later)
    assert plans["scored_sessions"].incremental and plans["scored_sessions"].counts["dated_between"] > 0
    scored = scored_sessions(ep, se, ps, later)
    assert pl.read_parquet(tmp_path / "scored_sessions.parquet").n_chunks() == 1
    assert _parquet_bytes(pl.read_parquet(tmp_path / "scored_sessions.parquet")) == _parquet_bytes(scored.rechunk())
    assert_equals_full(tmp_path, Tables(ep, se, ps), later)


# --------------------------------------------------------------------------------------
# seeded random edits
# --------------------------------------------------------------------------------------

def _edit(rng: random.Random, t: Tables, kind: str) -> Tables:
    ep, se, ps = t.episodes, t.sessions, t.pain_scores
    eid = rng.choice(ep["episode_id"].to_list())
    row = lambda frame: rng.randrange(frame.height)  # noqa: E731
    at = lambda frame, i: pl.int_range(pl.len()) == i  # noqa: E731
    if kind == "new sessions":
        referral = ep.filter(pl.col("episode_id") == eid)["referral_date"][0]
        news, newp = _records(rng, eid, referral + timedelta(days=rng.randrange(0, 160)), rng.randrange(1, 4),
                              f"N{rng.randrange(10**6)}")
        newp = [p for p in newp if p["timepoint"] != "followup"]
        a, b, c = _frames([], news, newp)
        return Tables(ep, pl.concat([se, b]), pl.concat([ps, c]))
    if kind == "changed score":
        i = row(ps)
        return Tables(ep, se, ps.with_columns(pl.when(at(ps, i)).then(pl.lit(_score(rng))).otherwise("score")
                                              .alias("score")))
    if kind == "removed score":
        return Tables(ep, se, ps.filter(~at(ps, row(ps))))
    if kind == "changed condition":
        return Tables(ep.with_columns(pl.when(pl.col("episode_id") == eid).then(pl.lit(rng.choice(CONDITIONS)))
                                      .otherwise("condition").alias("condition")), se, ps)
    if kind == "changed referral date":
        return Tables(ep.with_columns(pl.when(pl.col("episode_id") == eid)
                                      .then(pl.col("referral_date") + timedelta(days=rng.randrange(-20, 40)))
                                      .otherwise("referral_date").alias("referral_date")), se, ps)
    if kind == "changed session date":
        i = row(se)
        return Tables(ep, se.with_columns(pl.when(at(se, i)).then(pl.col("session_date") + timedelta(days=rng.choice([-3, 1, 9])))
                                          .otherwise("session_date").alias("session_date")), ps)
    if kind == "removed session":
        sid = se["session_id"][row(se)]
        return Tables(ep, se.filter(pl.col("session_id") != sid), ps.filter(pl.col("session_id").ne_missing(sid)))
    if kind == "removed episode":
        return Tables(ep.filter(pl.col("episode_id") != eid), se.filter(pl.col("episode_id") != eid),
                      ps.filter(pl.col("episode_id") != eid))
    if kind == "new episode":
        new_id = f"N{rng.randrange(10**7):07d}"
        referral = START + timedelta(days=rng.randrange(160))
        news, newp = _records(rng, new_id, referral, rng.randrange(0, 5), f"NS{rng.randrange(10**6)}")
        a, b, c = _frames([_episode(rng, new_id, referral)], news, newp)
        return Tables(pl.concat([ep, a]), pl.concat([se, b]), pl.concat([ps, c]))
    if kind == "new follow-up":
        referral = ep.filter(pl.col("episode_id") == eid)["referral_date"][0]
        day = referral + timedelta(days=rng.randrange(0, 170))
        if ps.filter((pl.col("episode_id") == eid) & (pl.col("recorded_on") == day)
                     & (pl.col("timepoint") == "followup")).height:
            return t
        a, b, c = _frames([], [], [{"episode_id": eid, "session_id": None, "timepoint": "followup",
                                    "score": _score(rng), "recorded_on": day}])
        return Tables(ep, se, pl.concat([ps, c]))
    if kind == "reordered rows":
        return Tables(ep.sample(fraction=1.0, shuffle=True, seed=rng.randrange(10**6)),
                      se.sample(fraction=1.0, shuffle=True, seed=rng.randrange(10**6)), ps)
    raise AssertionError(kind)


EDITS = ["new sessions", "changed score", "removed score", "changed condition", "changed referral date",
         "changed session date", "removed session", "removed episode", "new episode", "new follow-up",
         "reordered rows"]


@pytest.mark.parametrize("seed", range(40))
def test_random_edits_and_as_of_dates_splice_to_a_full_recomputation(tmp_path, seed):
    rng = random.Random(seed)
    tables = Tables(*accepted(rng.randrange(30, 150), seed, span_days=rng.choice([60, 120])))
    as_of = START + timedelta(days=rng.randrange(30, 200))
    run(tmp_path, tables, as_of)
    for step in range(4):
        for _ in range(rng.choice([0, 1, 1, 2, 3, 6])):
            tables = _edit(rng, tables, rng.choice(EDITS))
        as_of = as_of + timedelta(days=rng.choice([0, 0, 1, 3, 7, 7, 14, -1, -7, -30]))
        # always splice, however many episodes changed (the share limit is tested below)
        plans = run(tmp_path, tables, as_of, max_share=1.0)
        assert all(p.incremental for p in plans.values()), plans
        assert_equals_full(tmp_path, tables, as_of)


def test_many_changes_compute_in_full(tmp_path):
    ep, se, ps = accepted(60, 11)
    as_of = START + timedelta(days=200)
    run(tmp_path, Tables(ep, se, ps), as_of)
    shifted = se.with_columns(pl.col("session_date") + timedelta(days=1))
    plans = run(tmp_path, Tables(ep, shifted, ps), as_of)
    for plan in plans.values():
        assert not plan.incremental and "cheaper in full" in plan.reason
    assert_equals_full(tmp_path, Tables(ep, shifted, ps), as_of)


# --------------------------------------------------------------------------------------
# anything doubtful: computed in full
# --------------------------------------------------------------------------------------

def _previous_run(tmp_path: Path, seed: int = 12, edit: bool = True):
    tables = Tables(*accepted(80, seed))
    as_of = START + timedelta(days=100)
    run(tmp_path, tables, as_of)
    return (_edit(random.Random(seed), tables, "changed score") if edit else tables), as_of


def test_other_settings_recompute_episode_outcomes_in_full(tmp_path):
    tables, as_of = _previous_run(tmp_path)
    settings = Settings(responder_30_threshold=25.0)
    plans = run(tmp_path, tables, as_of, settings=settings)
    assert plans["scored_sessions"].incremental
    assert not plans["episode_outcomes"].incremental and plans["episode_outcomes"].reason == "the settings changed"
    assert_equals_full(tmp_path, tables, as_of, settings)


def test_other_code_computes_in_full(tmp_path):
    tables, as_of = _previous_run(tmp_path)
    plans = run(tmp_path, tables, as_of, code="code-2")
    assert all(not p.incremental and p.reason == "the code changed" for p in plans.values())
    assert_equals_full(tmp_path, tables, as_of)


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unstamp(path: Path) -> None:
    pl.read_parquet(path).write_parquet(path)


def _restamp(path: Path, **changes) -> None:
    stamp = read_lineage(path)
    meta = pl.read_parquet_metadata(path)
    fields = {"inputs": stamp.inputs, "as_of": stamp.as_of, "code": stamp.code, "settings": stamp.settings, **changes}
    meta[STAMP_KEY] = Lineage(**fields).to_json()
    pl.read_parquet(path).write_parquet(path, metadata=meta)


@pytest.mark.parametrize("damage, which, reason", [
    (lambda p: p.unlink(), inc.DIGESTS_FILE, "no episode_input_digests.parquet"),
    (_corrupt, inc.DIGESTS_FILE, "episode_input_digests.parquet is unreadable"),
    (_unstamp, inc.DIGESTS_FILE, "episode_input_digests.parquet has no stamp"),
    (lambda p: _restamp(p, as_of="2020-01-01"), inc.DIGESTS_FILE, "are not from the same computation"),
    (lambda p: p.write_bytes(b"not parquet"), inc.DIGESTS_FILE, "unreadable"),
    (lambda p: p.unlink(), "scored_sessions.parquet", "the previous scored_sessions is missing or unstamped"),
    (_corrupt, "scored_sessions.parquet", "the previous scored_sessions is missing or unstamped"),
    (_unstamp, "episode_outcomes.parquet", "the previous episode_outcomes is missing or unstamped"),
    (lambda p: _restamp(p, inputs="other"), "episode_outcomes.parquet", "not from the same computation"),
])
def test_missing_corrupt_or_mismatched_previous_files_compute_in_full(tmp_path, damage, which, reason):
    tables, as_of = _previous_run(tmp_path)
    damage(tmp_path / which)
    plans = run(tmp_path, tables, as_of)
    affected = list(plans) if which == inc.DIGESTS_FILE else [which.split(".")[0]]
    for name in affected:
        assert not plans[name].incremental and reason in plans[name].reason, plans[name].reason
    assert_equals_full(tmp_path, tables, as_of)


def test_a_digests_file_of_another_polars_version_is_not_used(tmp_path, monkeypatch):
    tables, as_of = _previous_run(tmp_path)
    monkeypatch.setattr(inc, "digest_footer", lambda: {"scheme": inc.SCHEME, "polars": "0.0.1"})
    plans = run(tmp_path, tables, as_of)
    assert all(not p.incremental and "another digest scheme or polars version" in p.reason for p in plans.values())


def test_a_stamped_table_with_other_content_is_caught_when_it_can_be(tmp_path):
    """Stamps are trusted (as the report trusts them), but a previous table with another
    schema, out of order, or with the wrong number of outcome rows is not spliced."""
    tables, as_of = _previous_run(tmp_path, edit=False)
    path = tmp_path / "episode_outcomes.parquet"
    meta = pl.read_parquet_metadata(path)
    pl.read_parquet(path).slice(1).write_parquet(path, metadata=meta)
    scored = tmp_path / "scored_sessions.parquet"
    pl.read_parquet(scored).reverse().write_parquet(scored, metadata=pl.read_parquet_metadata(scored))
    plans = run(tmp_path, tables, as_of)
    assert "rows, not" in plans["episode_outcomes"].reason and not plans["episode_outcomes"].incremental
    assert "another schema or order" in plans["scored_sessions"].reason
    assert_equals_full(tmp_path, tables, as_of)


# --------------------------------------------------------------------------------------
# the real Dagster pipeline, twice
# --------------------------------------------------------------------------------------

def _materialization(instance, run_id: str, asset: str) -> dict:
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey(asset), limit=20).records
    for record in records:
        if record.run_id == run_id:
            return {k: v.value for k, v in record.asset_materialization.metadata.items()}
    raise AssertionError(f"no materialization of {asset} in run {run_id}")


def _tables_of(folder: Path) -> dict[str, pl.DataFrame]:
    return {p.name: pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def test_the_weekly_pipeline_run_splices_and_equals_a_fresh_full_run(tmp_path):

    import dagster as dg

    from pipelines.pipeline import run_pipeline
    from weekly_helpers import add_week, raw_but_last_week

    source, raw, weeks = raw_but_last_week(tmp_path, 400, 5)
    instance = dg.DagsterInstance.ephemeral()
    work, fresh = tmp_path / "work", tmp_path / "fresh"

    def go(raw_dir, folder):
        outcome = run_pipeline(raw_dir, folder / "processed", folder / "reports", today="2026-11-27", instance=instance)
        assert outcome.success, outcome.failure
        return outcome

    first = go(raw, work)
    assert _materialization(instance, first.run_id, "ingest_audit")["settled"].startswith("every row settled")
    for asset in ("scored_sessions", "episode_outcomes"):
        said = _materialization(instance, first.run_id, asset)["incremental"]
        assert said == f"full: no {inc.DIGESTS_FILE}", said
    assert (work / "processed" / inc.DIGESTS_FILE).is_file()
    assert not [p for p in (work / "processed").iterdir() if p.name.startswith(".outcomes-run")]
    # the per-part sums of the digests: one part per accepted table at this size
    part_sums = work / "processed" / ".cache" / "outcomes" / "digest-parts"
    first_sums = {p.name for p in part_sums.glob("*.arrow")}
    assert len(first_sums) == 3

    # the next week's exports arrive
    add_week(source, raw, weeks[-1])
    second = go(raw, work)
    assert second.as_of > first.as_of
    # ingest settled again only what the new week's three files touch (pipelines.ingest.state)
    settled = _materialization(instance, second.run_id, "ingest_audit")["settled"]
    assert settled.startswith("incremental:") and "3 new file(s)" in settled, settled
    # every table gained rows, so its one part is another part: hashed again, the old sums gone
    second_sums = {p.name for p in part_sums.glob("*.arrow")}
    assert len(second_sums) == 3 and not first_sums & second_sums
    for asset in ("scored_sessions", "episode_outcomes"):
        said = _materialization(instance, second.run_id, asset)["incremental"]
        assert said.startswith("incremental: recomputed "), said
        recomputed, total = (int(x.replace(",", "")) for x in said.split("recomputed ")[1].split(" episodes")[0]
                             .split(" of "))
        assert 0 < recomputed < total
    # the weekly report still reuses the (spliced) outcome tables: their stamps are a full run's
    said = _materialization(instance, second.report_run_id, "weekly_report")["outcomes"]
    assert said.startswith("reused scored_sessions, episode_outcomes, session_relief_table, pain_trajectories"), said

    reference = go(source, fresh)
    assert reference.as_of == second.as_of
    mine, theirs = _tables_of(work / "processed"), _tables_of(fresh / "processed")
    assert set(mine) == set(theirs)
    for name in theirs:
        assert_frame_equal(mine[name], theirs[name], check_exact=True)
    for name in ("rejected_rows.csv", "ingest_audit.csv"):
        assert (work / "processed" / name).read_bytes() == (fresh / "processed" / name).read_bytes(), name
    # the tables computed from the spliced ones carry their stamps (the report reuses them by these)
    for name in ("scored_sessions.parquet", "episode_outcomes.parquet", inc.DIGESTS_FILE, "session_relief.parquet",
                 "pain_trajectories.parquet", "clinic_condition_summary.parquet"):
        assert (work / "processed" / name).read_bytes() == (fresh / "processed" / name).read_bytes(), name
        assert read_lineage(work / "processed" / name) == read_lineage(fresh / "processed" / name)
    for name, source in (("session_relief.parquet", "scored_sessions.parquet"),
                         ("pain_trajectories.parquet", "scored_sessions.parquet"),
                         ("clinic_condition_summary.parquet", "episode_outcomes.parquet")):
        assert read_lineage(work / "processed" / name) == read_lineage(work / "processed" / source), name
    assert (work / "processed" / "condition_summary.csv").read_bytes() == \
        (fresh / "processed" / "condition_summary.csv").read_bytes()

    # the same inputs again: nothing to recompute
    third = go(raw, work)
    said = _materialization(instance, third.run_id, "episode_outcomes")["incremental"]
    assert said.startswith("incremental: recomputed 0 of "), said
