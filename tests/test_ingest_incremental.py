"""Incremental settlement (pipelines.ingest.state): a run that builds on the last run's
settled state gives exactly what settling every row gives.

1. Random folders (the junk and near-valid files of test_ingest_property, whose few ids
   collide across files all the time), then more random files anywhere in the file order
   and a later (or, sometimes, earlier) run date: the cached run equals a run without any
   cache, table for table, row for row; and so does a third run with nothing new.
2. Hand-made cases where new files change what old rows reference: an episode corrected
   to a later referral date rejects an old session; an episode arriving late accepts old
   orphan sessions and scores; a later run date accepts a row that was in the future.
3. What must settle everything: a changed, deleted or refused file, an earlier run date,
   a damaged or foreign state; and the results still equal.

The weekly pipeline run (ingest settling incrementally inside Dagster, published tables
equal to a fresh run's) is tested with the incremental outcome tables, in
``tests/test_outcomes_incremental.py``.
"""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_ingest_property import TODAY, raw_folder

from pipelines import io as table_io
from pipelines.ingest import core, ingest_folder
from pipelines.ingest import state as state_module

TABLES = ("episodes", "sessions", "pain_scores", "rejected", "audit")


@pytest.fixture(autouse=True)
def small_parts_read_back(monkeypatch):
    """State parts of 3 rows, so that these small folders have many and later runs link the
    unchanged ones; and every state saved must read back as exactly the state computed."""
    monkeypatch.setattr(state_module, "PART_ROWS", 3)
    monkeypatch.setattr(table_io, "PART_ROWS", 4)  # the accepted tables' parts (their digests carry over)
    save = core.save_state

    def save_and_compare(folder, state, identity):
        save(folder, state, identity)
        loaded = state_module.load_state(folder, identity)
        assert loaded is not None and loaded.files == state.files and loaded.today == state.today
        assert_frame_equal(loaded.ragged, state.ragged, check_exact=True)
        assert (loaded.counts == state.counts).all()
        for table, saved in state.tables.items():
            read = loaded.table(table)
            for part in state_module.TABLE_PARTS:
                assert_frame_equal(getattr(read, part), getattr(saved, part), check_exact=True), (table, part)

    monkeypatch.setattr(core, "save_state", save_and_compare)


def assert_same(got, want):
    for name in TABLES:
        assert_frame_equal(got.table(name), want.table(name), check_exact=True), name
    # the digests of the accepted tables' parts, carried over or not, are their rows' digests
    for name in ("episodes", "sessions", "pain_scores"):
        assert got.part_digests[name] == want.part_digests[name] == table_io.part_digests(got.table(name)), name


def write(raw: Path, files: dict) -> None:
    for relpath, content in files.items():
        path = raw / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content[0] if isinstance(content, tuple) else content)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(first=raw_folder(), later=raw_folder(), prefix=st.sampled_from(["", "0/", "sub0/", "zz/", "2026-05/"]),
       days=st.sampled_from([0, 0, 1, 7, 30, 400, -1]))
def test_a_run_on_the_last_runs_state_equals_settling_every_row(first, later, prefix, days):
    with tempfile.TemporaryDirectory() as tmp:
        raw, cache = Path(tmp) / "raw", Path(tmp) / "cache"
        raw.mkdir()
        day1 = TODAY - timedelta(days=14)
        write(raw, first)
        assert_same(ingest_folder(raw, day1, cache_dir=cache), ingest_folder(raw, day1))
        # more files anywhere in the file order (a path already there is a changed file)
        write(raw, {prefix + path: content for path, content in later.items()})
        day2 = day1 + timedelta(days=days)
        second = ingest_folder(raw, day2, cache_dir=cache)
        assert_same(second, ingest_folder(raw, day2))
        event(f"incremental: {second.incremental is not None}")
        if days < 0:
            assert second.incremental is None and "earlier" in second.full_reason
        third = ingest_folder(raw, day2, cache_dir=cache)
        assert third.incremental is not None
        assert_same(third, second)


EPISODES = "episode_id,patient_id,clinic_id,condition,referral_date\n"
SESSIONS = "session_id,episode_id,therapist_id,session_date\n"
SCORES = "episode_id,session_id,timepoint,score,recorded_on\n"


def run_both(raw: Path, cache: Path, today: date):
    got = ingest_folder(raw, today, cache_dir=cache)
    assert_same(got, ingest_folder(raw, today))
    return got


def status_of(result, source_file: str) -> dict:
    return result.audit.filter(pl.col("source_file") == source_file).select(
        "accepted", "duplicate", "superseded", "rejected").to_dicts()[0]


def test_a_corrected_referral_date_rejects_an_old_session_and_its_scores(tmp_path):
    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    write(raw, {
        "w1/episodes.csv": (EPISODES + "E1,P1,C1,LBP,2026-01-05\nE2,P2,C1,neck,2026-01-05\n").encode(),
        "w1/sessions.csv": (SESSIONS + "S1,E1,T1,2026-01-10\nS2,E2,T1,2026-01-10\n").encode(),
        "w1/pain_scores.csv": (SCORES + "E1,S1,pre,7,\nE1,S1,post,5,\nE2,S2,pre,6,\n").encode(),
    })
    first = run_both(raw, cache, today)
    assert first.sessions.height == 2 and first.pain_scores.height == 3
    # next week: E1's referral was really on 2026-01-20, after its session
    write(raw, {"w2/episodes.csv": (EPISODES + "E1,P1,C1,LBP,2026-01-20\n").encode()})
    second = run_both(raw, cache, today)
    assert second.incremental is not None
    assert second.sessions["session_id"].to_list() == ["S2"]
    assert status_of(second, "w1/sessions.csv") == {"accepted": 1, "duplicate": 0, "superseded": 0, "rejected": 1}
    assert status_of(second, "w1/pain_scores.csv")["rejected"] == 2
    assert status_of(second, "w1/episodes.csv")["superseded"] == 1
    # and back: the week after, the first date was right after all
    write(raw, {"w3/episodes.csv": (EPISODES + "E1,P1,C1,LBP,2026-01-05\n").encode()})
    third = run_both(raw, cache, today)
    assert third.incremental is not None
    assert sorted(third.sessions["session_id"].to_list()) == ["S1", "S2"] and third.pain_scores.height == 3


def test_an_episode_arriving_late_accepts_old_orphans_and_a_later_run_date_accepts_the_future(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    write(raw, {
        "a/sessions.csv": (SESSIONS + "S1,E9,T1,2026-01-10\nS2,E9,T1,2026-03-05\n").encode(),
        "a/pain_scores.csv": (SCORES + "E9,S1,pre,7,\nE9,,followup,4,2026-03-06\n").encode(),
    })
    first = run_both(raw, cache, date(2026, 3, 1))
    assert first.sessions.height == 0 and first.rejected.height == 4
    write(raw, {"b/episodes.csv": (EPISODES + "E9,P9,C1,LBP,2026-01-02\n").encode()})
    second = run_both(raw, cache, date(2026, 3, 1))
    assert second.incremental is not None
    assert second.sessions["session_id"].to_list() == ["S1"]          # S2 is still in the future
    assert any("after the run date" in r for r in second.rejected["reasons"].to_list())
    third = run_both(raw, cache, date(2026, 3, 10))                   # nothing new, a later day
    assert third.incremental is not None
    assert third.sessions["session_id"].to_list() == ["S1", "S2"] and third.pain_scores.height == 2
    assert third.rejected.height == 0


@pytest.mark.parametrize("change", ["edit", "delete", "refuse", "earlier", "damage", "vocabulary", "no state"])
def test_what_settles_every_row_again(tmp_path, change):
    from pipelines.vocabulary import DEFAULT_VOCABULARY, Vocabulary

    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    write(raw, {
        "w1/episodes.csv": (EPISODES + "E1,P1,C1,LBP,2026-01-05\nE2,P2,C1,neck,2026-01-05\n").encode(),
        "w1/sessions.csv": (SESSIONS + "S1,E1,T1,2026-01-10\nS2,E2,T1,2026-01-10\n").encode(),
        "w2/sessions.csv": (SESSIONS + "S3,E1,T1,2026-01-17\n").encode(),
    })
    run_both(raw, cache, today)
    vocabulary = None
    if change == "edit":
        (raw / "w1/sessions.csv").write_text(SESSIONS + "S1,E1,T1,2026-01-11\n")
    elif change == "delete":
        (raw / "w2/sessions.csv").unlink()
    elif change == "refuse":
        (raw / "w2/sessions.csv").write_text("session_id,email\nS3,x@y.org\n")
    elif change == "earlier":
        today = date(2026, 2, 1)
    elif change == "damage":
        part = cache / "settled" / "sessions.accepted.00000.arrow"
        part.write_bytes(part.read_bytes()[:-20])
    elif change == "vocabulary":
        vocab_file = tmp_path / "conditions.csv"
        vocab_file.write_text(DEFAULT_VOCABULARY.read_text() + "jaw_pain,,Jaw pain\n")
        vocabulary = Vocabulary.load(vocab_file)
    elif change == "no state":
        import shutil
        shutil.rmtree(cache / "settled")
    got = ingest_folder(raw, today, vocabulary=vocabulary, cache_dir=cache)
    assert_same(got, ingest_folder(raw, today, vocabulary=vocabulary))
    assert got.incremental is None and got.full_reason
    # and the run after builds on the state this one wrote
    again = ingest_folder(raw, today, vocabulary=vocabulary, cache_dir=cache)
    assert again.incremental is not None
    assert_same(again, got)


def test_a_state_part_damaged_after_loading_settles_everything(tmp_path, monkeypatch):
    """The tables' states are read one at a time: damage found late still settles all."""
    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    write(raw, {"w1/episodes.csv": (EPISODES + "E1,P1,C1,LBP,2026-01-05\n").encode(),
                "w1/sessions.csv": (SESSIONS + "S1,E1,T1,2026-01-10\n").encode()})
    run_both(raw, cache, today)
    write(raw, {"w2/sessions.csv": (SESSIONS + "S2,E1,T1,2026-01-17\n").encode()})
    part = cache / "settled" / "pain_scores.others.00000.arrow"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    got = ingest_folder(raw, today, cache_dir=cache)
    assert got.incremental is None and "damaged" in got.full_reason
    assert_same(got, ingest_folder(raw, today))



def test_state_folders_of_killed_runs_are_removed(tmp_path):
    import os
    import subprocess

    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    write(raw, {"w1/episodes.csv": (EPISODES + "E1,P1,C1,LBP,2026-01-05\n").encode()})
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, alive = gone.pid, os.getppid()
    (cache / f".settled.{dead}.abcd1234").mkdir(parents=True)
    (cache / f".settled.old.{dead}").mkdir()
    (cache / f".settled.{alive}.efgh5678").mkdir()
    (cache / f".settled.{dead}.abcd1234" / "pain_scores.accepted.arrow").write_bytes(b"half")
    run_both(raw, cache, today)
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted([f".settled.{alive}.efgh5678", "entries", "manifest.json", "settled"])


def test_a_weekly_state_links_the_parts_it_keeps_and_checks_them(tmp_path):
    """A new week's rows come last: the state's leading full parts are the last state's
    files (the same inode), only the rest is written; a linked part damaged later is found."""
    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    episodes = "".join(f"E{i},P{i},C1,LBP,2026-01-05\n" for i in range(10))
    sessions = "".join(f"S{i},E{i},T1,2026-01-10\n" for i in range(10))
    write(raw, {"w1/episodes.csv": (EPISODES + episodes).encode(), "w1/sessions.csv": (SESSIONS + sessions).encode()})
    run_both(raw, cache, today)
    settled = cache / "settled"
    before = {p.name: p.stat().st_ino for p in settled.glob("sessions.accepted.*.arrow")}
    assert len(before) == 4  # 10 rows in parts of 3
    write(raw, {"w2/sessions.csv": (SESSIONS + "S10,E1,T1,2026-01-17\nS11,E2,T1,2026-01-17\n").encode()})
    got = run_both(raw, cache, today)
    assert got.incremental is not None
    after = {p.name: p.stat().st_ino for p in settled.glob("sessions.accepted.*.arrow")}
    assert len(after) == 4  # 12 rows
    linked = sorted(name for name in after if before.get(name) == after[name])
    assert linked == ["sessions.accepted.00000.arrow", "sessions.accepted.00001.arrow",
                      "sessions.accepted.00002.arrow"]
    # a correction to an old session: its part and every part after it are written again
    write(raw, {"w3/sessions.csv": (SESSIONS + "S4,E4,T1,2026-01-11\n").encode()})
    run_both(raw, cache, today)
    again = {p.name: p.stat().st_ino for p in settled.glob("sessions.accepted.*.arrow")}
    assert sorted(name for name in again if after.get(name) == again[name]) == ["sessions.accepted.00000.arrow"]
    part = settled / "sessions.accepted.00000.arrow"
    part.write_bytes(part.read_bytes()[:-8] + b"\0" * 8)
    write(raw, {"w4/sessions.csv": (SESSIONS + "S12,E3,T1,2026-01-24\n").encode()})
    got = run_both(raw, cache, today)
    assert got.incremental is None and "damaged" in got.full_reason


def linked_parts(settled: Path, frame: str, run) -> list[str]:
    """The part files of ``frame`` that ``run()`` kept (hard-linked) from the last state."""
    before = {p.name: p.stat().st_ino for p in settled.glob(f"{frame}.*.arrow")}
    run()
    return sorted(p.name for p in settled.glob(f"{frame}.*.arrow") if before.get(p.name) == p.stat().st_ino)


def test_a_file_inserted_in_the_order_renumbers_the_rows_after_it(tmp_path):
    """A new file (even an ignored one) sorting among old ones renumbers the files after it:
    no part holding a row of those is linked (the autouse check reads every state back)."""
    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    write(raw, {"b/episodes.csv": (EPISODES + "".join(f"E{i},P{i},C1,LBP,2026-01-05\n" for i in range(7))).encode(),
                "c/episodes.csv": (EPISODES + "".join(f"F{i},P{i},C1,LBP,2026-01-05\n" for i in range(7))).encode()})
    run_both(raw, cache, today)
    write(raw, {"b/notes.txt": b"not an export", "d/episodes.csv": (EPISODES + "G1,P1,C1,LBP,2026-01-05\n").encode()})
    linked = linked_parts(cache / "settled", "episodes.accepted",
                          lambda: run_both(raw, cache, today).incremental or pytest.fail("not incremental"))
    # rows 0-6 are b's (file 0 both times), rows 7-13 c's (file 1, now 2): parts of 3 rows
    assert linked == ["episodes.accepted.00000.arrow", "episodes.accepted.00001.arrow"]


def test_old_rows_accepted_late_are_merged_in_and_the_parts_from_them_on_written(tmp_path):
    """An episode arriving late accepts an old orphan session in the middle of the file
    order: nothing leaves the accepted rows, but the parts from that row on are written."""
    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    sessions = [f"S{i},E{i},T1,2026-01-10" for i in range(1, 7)] + ["S7,E9,T1,2026-01-10"]
    sessions += [f"S{i},E1,T1,2026-01-1{i - 7}" for i in range(8, 11)]
    write(raw, {"a/episodes.csv": (EPISODES + "".join(f"E{i},P{i},C1,LBP,2026-01-05\n" for i in range(1, 7))).encode(),
                "a/sessions.csv": (SESSIONS + "\n".join(sessions) + "\n").encode()})
    first = run_both(raw, cache, today)
    assert first.sessions.height == 9
    write(raw, {"b/episodes.csv": (EPISODES + "E9,P9,C1,LBP,2026-01-02\n").encode()})
    second = []
    linked = linked_parts(cache / "settled", "sessions.accepted", lambda: second.append(run_both(raw, cache, today)))
    assert second[0].incremental is not None
    assert second[0].sessions["session_id"].to_list() == [f"S{i}" for i in range(1, 11)]
    assert linked == ["sessions.accepted.00000.arrow", "sessions.accepted.00001.arrow"]


def test_a_weekly_run_carries_over_the_digests_of_the_accepted_parts_it_keeps(tmp_path, monkeypatch):
    """The accepted tables' leading parts whose rows a run keeps as they were get the last
    run's digests, not hashed again (write_parts then links them without hashing either);
    a correction to an old row hashes its part and every part after it."""
    raw, cache, today = tmp_path / "raw", tmp_path / "cache", date(2026, 3, 1)
    episodes = "".join(f"E{i},P{i},C1,LBP,2026-01-05\n" for i in range(10))
    sessions = "".join(f"S{i},E{i},T1,2026-01-10\n" for i in range(10))
    write(raw, {"w1/episodes.csv": (EPISODES + episodes).encode(), "w1/sessions.csv": (SESSIONS + sessions).encode()})
    first = ingest_folder(raw, today, cache_dir=cache)
    hashed: list = []
    real = table_io.rows_digest
    monkeypatch.setattr(table_io, "rows_digest", lambda chunk: hashed.append(chunk.height) or real(chunk))

    write(raw, {"w2/sessions.csv": (SESSIONS + "S10,E1,T1,2026-01-17\nS11,E2,T1,2026-01-17\n").encode()})
    second = ingest_folder(raw, today, cache_dir=cache)
    assert second.incremental is not None
    # sessions in parts of 4: [4, 4, 2] -> [4, 4, 4], the first two kept; episodes [4, 4, 2] kept
    # whole (a short last part is hashed again); no pain scores: one empty part
    assert sorted(hashed) == sorted([4, 2, 0])
    assert second.part_digests["sessions"]["parts"][:2] == first.part_digests["sessions"]["parts"][:2]
    assert second.part_digests["episodes"] == first.part_digests["episodes"]

    hashed.clear()
    write(raw, {"w3/sessions.csv": (SESSIONS + "S4,E4,T1,2026-01-11\n").encode()})  # a correction to row 4
    third = ingest_folder(raw, today, cache_dir=cache)
    assert third.incremental is not None
    assert sorted(hashed) == sorted([4, 4, 2, 0])  # sessions' parts 1 and 2 and the last; episodes; scores
    monkeypatch.undo()
    for result in (second, third):
        for name in ("episodes", "sessions", "pain_scores"):
            assert result.part_digests[name] == table_io.part_digests(result.table(name), 4)


def test_file_numbers_are_remapped_unless_every_file_kept_its_number():
    import numpy as np

    frame = pl.DataFrame({"file_idx": pl.Series([0, 2, 2, 1], dtype=pl.Int32), "line": [1, 2, 3, 4]})
    same = state_module.TableState.remap_frame(frame, np.arange(3))
    assert same is frame  # nothing to do: a week's new files sort after the old ones
    moved = state_module.TableState.remap_frame(frame, np.array([0, 3, 4]))
    assert moved["file_idx"].to_list() == [0, 4, 4, 3] and moved.schema["file_idx"] == pl.Int32
    wide = frame.with_columns(pl.col("file_idx").cast(pl.Int64))
    assert state_module.TableState.remap_frame(wide, np.arange(3)).schema["file_idx"] == pl.Int32
