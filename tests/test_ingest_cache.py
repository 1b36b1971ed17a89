"""The per-file ingest cache: same result as a cold run, and invalidated exactly when it should."""

import os
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest import ingest_folder
from pipelines.ingest.cache import IngestCache
from pipelines.vocabulary import DEFAULT_VOCABULARY, Vocabulary

TODAY = date(2026, 3, 1)
EPISODES = "episode_id,patient_id,clinic_id,condition,referral_date\nE1,P1,C1,LBP,2026-01-05\nE2,P2,C1,neck,2026-01-06\n"
EPISODES_2 = "episode_id,patient_id,clinic_id,condition,referral_date\nE3,P3,C2,migraine,2026-02-01\nE1,P1,C1,lbp,2026-01-05\n"
SESSIONS = "session_id,episode_id,therapist_id,session_date\nS1,E1,T1,2026-01-05\nS2,E3,T1,2026-02-02\n"
SCORES = "episode_id,session_id,timepoint,score,recorded_on\nE1,S1,pre,7,\nE3,S2,pre,11,\n"


def tables(result):
    return {n: result.table(n) for n in ("episodes", "sessions", "pain_scores", "rejected", "audit")}


def assert_same(a, b):
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "episodes_1.csv").write_text(EPISODES)
    (raw / "episodes_2.csv").write_text(EPISODES_2)
    (raw / "sessions_1.csv").write_text(SESSIONS)
    (raw / "pain_scores_1.csv").write_text(SCORES)
    (raw / "notes.txt").write_text("ignored")
    return raw


def run(raw, cache, vocabulary=None, today=TODAY):
    return ingest_folder(raw, today=today, vocabulary=vocabulary, cache_dir=cache)


def test_warm_run_reads_nothing_and_matches_a_cold_run(raw, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cold = tables(ingest_folder(raw, today=TODAY))
    assert_same(tables(run(raw, cache)), cold)
    reads = []
    import pipelines.ingest.core as core
    real = core.read_file
    monkeypatch.setattr(core, "read_file", lambda raw_file, spec: reads.append(raw_file.relpath) or real(raw_file, spec))
    assert_same(tables(run(raw, cache)), cold)
    assert reads == []


def test_only_new_and_changed_files_are_read(raw, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run(raw, cache)
    import pipelines.ingest.core as core
    reads = []
    real = core.read_file
    monkeypatch.setattr(core, "read_file", lambda raw_file, spec: reads.append(raw_file.relpath) or real(raw_file, spec))
    (raw / "sessions_2.csv").write_text("session_id,episode_id,therapist_id,session_date\nS3,E2,T1,2026-01-07\n")
    (raw / "episodes_1.csv").write_text(EPISODES.replace("neck", "neck pain") + "E4,P4,C1,arthritis,2026-01-09\n")
    result = run(raw, cache)
    assert sorted(reads) == ["episodes_1.csv", "sessions_2.csv"]
    assert_same(tables(result), tables(ingest_folder(raw, today=TODAY)))
    assert "E4" in result.episodes["episode_id"].to_list()


def test_deleted_file_drops_out_and_its_entry_is_collected(raw, tmp_path):
    cache = tmp_path / "cache"
    run(raw, cache)
    entries_before = set(os.listdir(cache / "entries"))
    (raw / "episodes_2.csv").unlink()
    result = run(raw, cache)
    assert "E3" not in result.episodes["episode_id"].to_list()
    assert "episodes_2.csv" not in result.audit["source_file"].to_list()
    assert_same(tables(result), tables(ingest_folder(raw, today=TODAY)))
    assert len(set(os.listdir(cache / "entries"))) < len(entries_before)


def test_vocabulary_change_rechecks_every_file(raw, tmp_path):
    cache = tmp_path / "cache"
    (raw / "episodes_3.csv").write_text(
        "episode_id,patient_id,clinic_id,condition,referral_date\nE5,P5,C1,Lymphoedema,2026-01-10\n")
    first = run(raw, cache)
    assert "E5" not in first.episodes["episode_id"].to_list()
    vocab_file = tmp_path / "conditions.csv"
    shutil.copy(DEFAULT_VOCABULARY, vocab_file)
    with open(vocab_file, "a") as fh:
        fh.write("lymphoedema,,Lymphoedema\n")
    extended = Vocabulary.load(vocab_file)
    second = run(raw, cache, vocabulary=extended)
    assert second.episodes.filter(pl.col("episode_id") == "E5")["condition"].item() == "lymphoedema"
    assert_same(tables(second), tables(ingest_folder(raw, today=TODAY, vocabulary=extended)))


def test_run_date_rule_is_applied_on_cached_rows(raw, tmp_path):
    cache = tmp_path / "cache"
    early = run(raw, cache, today=date(2026, 1, 10))  # S2 (2026-02-02), E3 (2026-02-01) lie in the future
    assert "S2" not in early.sessions["session_id"].to_list()
    later = run(raw, cache, today=TODAY)
    assert "S2" in later.sessions["session_id"].to_list()
    assert_same(tables(later), tables(ingest_folder(raw, today=TODAY)))


def test_corrupt_cache_is_ignored(raw, tmp_path):
    cache = tmp_path / "cache"
    run(raw, cache)
    for entry in (cache / "entries").iterdir():
        entry.write_bytes(b"not parquet")
    assert_same(tables(run(raw, cache)), tables(ingest_folder(raw, today=TODAY)))
    assert IngestCache(cache, Vocabulary.load().fingerprint()).manifest


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "header"])
def test_torn_or_damaged_entry_is_a_miss(raw, tmp_path, damage):
    """Entries are not fsync'ed: one left torn or damaged by a crash must read as a miss."""
    cache = tmp_path / "cache"
    run(raw, cache)
    entries = sorted((cache / "entries").iterdir())
    assert entries and all(e.suffix == ".entry" for e in entries)  # one file per parsed file
    for entry in entries:
        data = entry.read_bytes()
        if damage == "truncate":
            data = data[: len(data) - 7]
        elif damage == "flip":
            data = data[:-20] + bytes([data[-20] ^ 0x55]) + data[-19:]
        elif damage == "empty":
            data = b""
        else:
            data = b"{}\n" + data.split(b"\n", 1)[1]
        entry.write_bytes(data)
    store = IngestCache(cache, Vocabulary.load().fingerprint())
    for path in sorted(raw.iterdir()):
        if path.suffix == ".csv":
            table = path.name.rsplit("_", 1)[0]
            assert store.load(path.name, path, table) is None, (damage, path.name)
    assert_same(tables(run(raw, cache)), tables(ingest_folder(raw, today=TODAY)))
