"""Tables stored as folders of Parquet parts (pipelines.io.write_parts): what a new version
reuses of the last one, that it reads back exactly, and that a killed writer leaves
nothing behind that a later run cannot clean up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pipelines.io as io
from pipelines.io import (PART_KEY, remove_stale_temp_files, replace_with_folder, restore_replaced, rows_digest,
                          stored_parts, write_parts)


def frame(n: int, start: int = 0) -> pl.DataFrame:
    ids = list(range(start, start + n))
    return pl.DataFrame({
        "id": [f"S{i:05d}" for i in ids],
        "episode_id": [None if i % 7 == 3 else f"E{i // 3:04d}" for i in ids],
        "day": [date(2026, 1, 1 + i % 28) for i in ids],
        "score": [float(i % 11) / 2 for i in ids],
        "line": ids,
    })


def parts(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_a_folder_of_parts_reads_back_as_the_frame(tmp_path):
    table = frame(23)
    result = write_parts(table, tmp_path / "t.parquet", part_rows=5)
    assert result == {"parts_reused": 0, "parts_written": 5, "rows_written": 23}
    assert [p.name for p in parts(tmp_path / "t.parquet")] == [f"part-{i:06d}.parquet" for i in range(5)]
    assert_frame_equal(pl.read_parquet(tmp_path / "t.parquet"), table, check_exact=True)
    assert_frame_equal(pl.scan_parquet(tmp_path / "t.parquet").collect(), table, check_exact=True)
    records = [record for _, record in stored_parts(tmp_path / "t.parquet")]
    assert [r["rows"] for r in records] == [5, 5, 5, 5, 3]
    assert records[0]["digest"] == rows_digest(table.slice(0, 5))


def test_an_empty_table_keeps_its_schema(tmp_path):
    table = frame(0)
    assert write_parts(table, tmp_path / "t.parquet", part_rows=5)["parts_written"] == 1
    assert_frame_equal(pl.read_parquet(tmp_path / "t.parquet"), table)


def test_rows_added_at_the_end_reuse_every_full_part_by_link(tmp_path):
    target = tmp_path / "t.parquet"
    write_parts(frame(12), target, part_rows=5)
    before = {p.name: p.stat().st_ino for p in parts(target)}
    grown = frame(19)
    # the 2-row last part is not kept with rows after it: it is written again with them
    assert write_parts(grown, target, part_rows=5) == {"parts_reused": 2, "parts_written": 2, "rows_written": 9}
    after = {p.name: p.stat().st_ino for p in parts(target)}
    assert after["part-000000.parquet"] == before["part-000000.parquet"]
    assert after["part-000001.parquet"] == before["part-000001.parquet"]
    assert after["part-000002.parquet"] != before["part-000002.parquet"]
    assert_frame_equal(pl.read_parquet(target), grown, check_exact=True)
    # nothing new: every part is reused
    assert write_parts(grown, target, part_rows=5) == {"parts_reused": 4, "parts_written": 0, "rows_written": 0}
    assert_frame_equal(pl.read_parquet(target), grown, check_exact=True)


@pytest.mark.parametrize("change, first_changed_part", [
    (lambda f: f.with_columns(pl.when(pl.col("line") == 7).then(pl.lit("X")).otherwise("id").alias("id")), 1),
    (lambda f: f.with_columns(pl.when(pl.col("line") == 12).then(None).otherwise("episode_id").alias("episode_id")), 2),
    (lambda f: f.with_columns(pl.when(pl.col("line") == 0).then(-0.0).otherwise("score").alias("score")), 0),
    (lambda f: pl.concat([f.slice(0, 5), f.slice(6, 1), f.slice(5, 1), f.slice(7)]), 1),  # two rows swapped
    (lambda f: f.filter(pl.col("line") != 11), 2),  # a row removed: the parts after it shift
    (lambda f: f.with_columns(pl.col("line").cast(pl.Int32)), 0),  # another type: nothing reused
    (lambda f: f.rename({"line": "row"}), 0),
])
def test_a_change_rewrites_from_its_part_on(tmp_path, change, first_changed_part):
    target = tmp_path / "t.parquet"
    table = frame(20)
    write_parts(table, target, part_rows=5)
    changed = change(table)
    result = write_parts(changed, target, part_rows=5)
    assert result["parts_reused"] == first_changed_part
    assert result["rows_written"] == changed.height - 5 * first_changed_part
    assert_frame_equal(pl.read_parquet(target), changed, check_exact=True)
    if "score" in changed.columns:  # the sign of a zero survives
        signs = pl.read_parquet(target).select((1.0 / pl.col("score") < 0).alias("negative"))["negative"]
        assert signs.to_list() == changed.select((1.0 / pl.col("score") < 0).alias("negative"))["negative"].to_list()


def test_another_polars_version_or_format_reuses_nothing(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_parts(frame(10), target, part_rows=5)
    monkeypatch.setattr(io.pl, "__version__", "0.0.0-other")
    assert write_parts(frame(10), target, part_rows=5)["parts_reused"] == 0
    monkeypatch.undo()
    monkeypatch.setattr(io, "PART_FORMAT", io.PART_FORMAT + 1)
    assert write_parts(frame(10), target, part_rows=5)["parts_reused"] == 0


def test_a_part_without_its_record_or_a_foreign_file_means_no_reuse(tmp_path):
    target = tmp_path / "t.parquet"
    write_parts(frame(10), target, part_rows=5)
    frame(5).write_parquet(parts(target)[0])  # same rows, no footer record
    assert stored_parts(target) == []
    assert write_parts(frame(10), target, part_rows=5)["parts_reused"] == 0
    (target / "notes.txt").write_text("x")
    assert stored_parts(target) == []


def test_a_single_file_table_is_replaced_by_a_folder_and_a_separate_previous_is_read(tmp_path):
    published, staging = tmp_path / "published", tmp_path / "staging"
    published.mkdir()
    staging.mkdir()
    frame(8).write_parquet(published / "t.parquet")  # the layout of an older version
    assert write_parts(frame(8), published / "t.parquet", part_rows=5)["parts_reused"] == 0
    assert (published / "t.parquet").is_dir()
    # a staged run: the new version goes to staging, linking the published parts
    result = write_parts(frame(13), staging / "t.parquet", previous=published / "t.parquet", part_rows=5)
    assert result["parts_reused"] == 1
    assert parts(staging / "t.parquet")[0].stat().st_ino == parts(published / "t.parquet")[0].stat().st_ino
    replace_with_folder(staging / "t.parquet", published / "t.parquet")
    assert not (staging / "t.parquet").exists()
    assert_frame_equal(pl.read_parquet(published / "t.parquet"), frame(13), check_exact=True)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []


def test_without_an_atomic_swap_the_fallback_leaves_the_old_folder_to_restore(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_parts(frame(5), target)
    monkeypatch.setattr(io, "exchange_paths", lambda a, b: False)
    write_parts(frame(6), target)
    assert_frame_equal(pl.read_parquet(target), frame(6))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    # a writer killed between the fallback's two renames: the old folder is put back
    dead = _dead_pid()
    os.rename(target, tmp_path / f".t.parquet.old.{dead}")
    assert restore_replaced(tmp_path) == [f"restored {target} from .t.parquet.old.{dead}"]
    assert_frame_equal(pl.read_parquet(target), frame(6))
    # killed after both renames: the old one is only removed
    (tmp_path / f".t.parquet.old.{dead}").mkdir()
    assert restore_replaced(tmp_path) == [f"removed {tmp_path / f'.t.parquet.old.{dead}'}"]
    # a live writer's is left alone
    (tmp_path / f".t.parquet.old.{os.getppid()}").mkdir()
    assert restore_replaced(tmp_path) == []


def test_a_killed_writers_half_written_folder_is_removed_a_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    for pid in (dead, live):
        folder = tmp_path / f".t.parquet.{pid}.abcd_123.tmp"
        folder.mkdir()
        frame(3).write_parquet(folder / "part-000000.parquet")
    assert remove_stale_temp_files(tmp_path) == [tmp_path / f".t.parquet.{dead}.abcd_123.tmp"]
    assert (tmp_path / f".t.parquet.{live}.abcd_123.tmp").is_dir()


def test_a_write_that_fails_leaves_the_last_version(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_parts(frame(10), target, part_rows=5)

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_parts(frame(14), target, part_rows=5)
    assert_frame_equal(pl.read_parquet(target), frame(10))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_part_records_are_json_in_the_footer(tmp_path):
    write_parts(frame(3), tmp_path / "t.parquet")
    record = json.loads(pl.read_parquet_metadata(parts(tmp_path / "t.parquet")[0])[PART_KEY])
    assert record["rows"] == 3 and record["polars"] == pl.__version__ and len(record["digest"]) == 32


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# Known part digests (pipelines.io.part_digests): what ingest hands write_parts so that it
# hashes no row, and what it carries over for the rows a weekly run keeps.

def _counting_digests(monkeypatch) -> list:
    calls: list = []
    real = io.rows_digest

    def counted(chunk):
        calls.append(chunk.height)
        return real(chunk)

    monkeypatch.setattr(io, "rows_digest", counted)
    return calls


@pytest.mark.parametrize("rows", [0, 4, 5, 23, 25])
def test_part_digests_are_the_digests_write_parts_stores(tmp_path, rows):
    table = frame(rows)
    known = io.part_digests(table, 5)
    write_parts(table, tmp_path / "t.parquet", part_rows=5)
    assert known == {"part_rows": 5, "format": io.PART_FORMAT, "polars": pl.__version__,
                     "parts": [[r["rows"], r["digest"]] for _, r in stored_parts(tmp_path / "t.parquet")]}


def test_part_digests_carry_over_the_full_parts_within_the_unchanged_rows_only(monkeypatch):
    old, new = frame(23), pl.concat([frame(12), frame(14, start=100)])  # rows 0-11 kept, the rest new
    base = io.part_digests(old, 5)
    calls = _counting_digests(monkeypatch)
    got = io.part_digests(new, 5, base, unchanged=12)
    assert calls == [5, 5, 5, 1]  # parts 0 and 1 (rows 0-9) carried over; rows 10-25 hashed
    assert got["parts"][:2] == base["parts"][:2]
    monkeypatch.undo()
    assert got == io.part_digests(new, 5)
    # made another way (part size, format, polars version), or no unchanged rows: nothing carried over
    for other in ({"part_rows": 4}, {"format": io.PART_FORMAT + 1}, {"polars": "0.0.1"}):
        assert io.part_digests(new, 5, {**base, **other}, unchanged=12) == io.part_digests(new, 5), other
    assert io.part_digests(new, 5, base, unchanged=4) == io.part_digests(new, 5)


def test_write_parts_with_known_digests_hashes_nothing_and_writes_the_same_folder(tmp_path, monkeypatch):
    first, grown = frame(12), frame(23)
    write_parts(first, tmp_path / "a.parquet", part_rows=5)
    write_parts(first, tmp_path / "b.parquet", part_rows=5, known=io.part_digests(first, 5))
    known = io.part_digests(grown, 5)
    calls = _counting_digests(monkeypatch)
    with_known = write_parts(grown, tmp_path / "b.parquet", part_rows=5, known=known)
    assert calls == []
    without = write_parts(grown, tmp_path / "a.parquet", part_rows=5)
    assert calls  # the same write without them hashes the parts it compares and writes
    assert with_known == without == {"parts_reused": 2, "parts_written": 3, "rows_written": 13}
    for a, b in zip(stored_parts(tmp_path / "a.parquet"), stored_parts(tmp_path / "b.parquet"), strict=True):
        assert a[1] == b[1]
        assert_frame_equal(pl.read_parquet(a[0]), pl.read_parquet(b[0]), check_exact=True)


@pytest.mark.parametrize("known", [
    {"part_rows": 4, "parts": [[4, "x"], [4, "y"], [4, "z"]]},  # another part size
    {"parts": [[5, "x"], [5, "y"]]},  # not the frame's height
    {"parts": [[5, "x"], [2, "y"], [5, "z"]]},  # a short part before the last
    {"parts": [[5, 1], [5, 2], [2, 3]]},  # not digests
    {"format": 0, "parts": [[5, "x"], [5, "y"], [2, "z"]]},  # another part format
    {"polars": "0.0.1", "parts": [[5, "x"], [5, "y"], [2, "z"]]},  # another polars version
    "not a record",
])
def test_known_digests_that_do_not_describe_the_frame_are_ignored(tmp_path, known):
    if isinstance(known, dict):
        known = {"part_rows": 5, "format": io.PART_FORMAT, "polars": pl.__version__, **known}
    table = frame(12)
    write_parts(table, tmp_path / "t.parquet", part_rows=5, known=known)
    assert [r["digest"] for _, r in stored_parts(tmp_path / "t.parquet")] == \
        [d for _, d in io.part_digests(table, 5)["parts"]]


def test_a_weekly_pipeline_run_links_the_accepted_parts_it_keeps_with_their_true_digests(tmp_path, monkeypatch):
    """Through Dagster: ingest hands each accepted table's part digests to the I/O manager,
    carried over for the rows a weekly run keeps; the parts are reused, every footer's
    digest is its rows' digest, and the tables equal a fresh run's."""

    import dagster as dg

    from pipelines.pipeline import run_pipeline
    from weekly_helpers import add_week, raw_but_last_week

    monkeypatch.setattr(io, "PART_ROWS", 64)
    source, raw, weeks = raw_but_last_week(tmp_path, 150, 7)
    instance = dg.DagsterInstance.ephemeral()

    def go(raw_dir, folder):
        outcome = run_pipeline(raw_dir, folder / "processed", folder / "reports", today="2026-11-27", instance=instance)
        assert outcome.success, outcome.failure
        return outcome

    go(raw, tmp_path / "work")
    add_week(source, raw, weeks[-1])
    hashed: list = []
    real = io.rows_digest
    monkeypatch.setattr(io, "rows_digest", lambda chunk: hashed.append(chunk.height) or real(chunk))
    second = go(raw, tmp_path / "work")
    monkeypatch.setattr(io, "rows_digest", real)
    go(source, tmp_path / "fresh")
    reused = 0
    for table in ("episodes", "sessions", "pain_scores"):
        record = next(r for r in instance.fetch_materializations(dg.AssetKey(table), limit=5).records
                      if r.run_id == second.run_id)
        reused += record.asset_materialization.metadata["parts_reused"].value
        mine, fresh = (stored_parts(tmp_path / f / "processed" / f"{table}.parquet") for f in ("work", "fresh"))
        assert len(mine) > 1
        assert [r for _, r in mine] == [r for _, r in fresh], table
        for path, record in mine:
            assert record["digest"] == real(pl.read_parquet(path)), path
        assert_frame_equal(pl.read_parquet(tmp_path / "work" / "processed" / f"{table}.parquet"),
                           pl.read_parquet(tmp_path / "fresh" / "processed" / f"{table}.parquet"), check_exact=True)
    assert reused > 0
    # the weekly run hashed fewer accepted rows than it stored (the outcome step's part sums
    # hash only the parts it has not seen: no more than the parts written)
    stored = sum(pl.read_parquet(tmp_path / "work" / "processed" / f"{t}.parquet").height
                 for t in ("episodes", "sessions", "pain_scores"))
    assert sum(hashed) < stored
