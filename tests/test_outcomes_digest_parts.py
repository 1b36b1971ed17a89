"""Outcome input digests summed part by part (pipelines.outcomes.incremental.PartSums).

A weekly run reads the accepted tables from folders of Parquet parts whose leading parts
are last week's, unchanged; their per-episode sums come from the cache instead of being
hashed again. The digests must be exactly those of hashing every row, whatever the parts,
and a cached file is used only for the part content it was made from.
"""

from __future__ import annotations

import random
import zlib

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_outcomes_incremental import accepted

from pipelines.io import rows_digest
from pipelines.outcomes import incremental as inc

TABLES = ("episodes", "sessions", "pain_scores")


def _parts(frame: pl.DataFrame, rng: random.Random) -> list[tuple[int, str]]:
    """Random part sizes adding up to the frame, each with its real content digest."""
    records, offset = [], 0
    while offset < frame.height:
        rows = min(rng.randrange(1, max(2, frame.height // 2)), frame.height - offset)
        records.append((rows, rows_digest(frame.slice(offset, rows))))
        offset += rows
    return records


def _frames(seed: int) -> dict[str, pl.DataFrame]:
    episodes, sessions, scores = accepted(60, seed)
    return {"episodes": episodes, "sessions": sessions.select(inc.SESSION_COLUMNS),
            "pain_scores": scores.select(inc.SCORE_COLUMNS)}


@pytest.mark.parametrize("seed", range(8))
def test_digests_by_parts_equal_hashing_every_row_cold_and_warm(tmp_path, seed):
    rng = random.Random(seed)
    frames = _frames(seed)
    plain = inc.episode_digests(**frames)
    records = {t: _parts(frames[t], rng) for t in TABLES}
    count = sum(len(r) for r in records.values())

    cold = inc.PartSums(tmp_path)
    assert_frame_equal(inc.episode_digests(**frames, parts=records, part_sums=cold), plain, check_exact=True)
    assert (cold.hashed, cold.reused) == (count, 0)
    cold.finish()
    assert len(list(tmp_path.glob("*.arrow"))) == len({(t, d) for t in TABLES for _, d in records[t]})

    warm = inc.PartSums(tmp_path)
    assert_frame_equal(inc.episode_digests(**frames, parts=records, part_sums=warm), plain, check_exact=True)
    assert (warm.hashed, warm.reused) == (0, count)


def test_a_week_later_only_the_changed_parts_are_hashed_and_stale_files_go(tmp_path):
    frames = _frames(3)
    sessions = frames["sessions"]
    half = sessions.height // 2
    records = {t: [(frames[t].height, rows_digest(frames[t]))] for t in ("episodes", "pain_scores")}
    records["sessions"] = [(half, rows_digest(sessions.head(half))),
                           (sessions.height - half, rows_digest(sessions.tail(sessions.height - half)))]
    first = inc.PartSums(tmp_path)
    inc.episode_digests(**frames, parts=records, part_sums=first)
    first.finish()

    # a session of the second part moves by a day: that part is another one now
    edited = sessions.with_columns(
        pl.when(pl.int_range(pl.len()) == sessions.height - 1)
        .then(pl.col("session_date") + pl.duration(days=1)).otherwise(pl.col("session_date")).alias("session_date"))
    changed = {**frames, "sessions": edited}
    records["sessions"][1] = (sessions.height - half, rows_digest(edited.tail(sessions.height - half)))
    second = inc.PartSums(tmp_path)
    result = inc.episode_digests(**changed, parts=records, part_sums=second)
    assert_frame_equal(result, inc.episode_digests(**changed), check_exact=True)
    assert (second.hashed, second.reused) == (1, 3)
    assert not result.equals(inc.episode_digests(**frames))
    second.finish()
    assert len(list(tmp_path.glob("*.arrow"))) == 4  # the old second part's sums are gone


def test_a_damaged_file_is_hashed_again_and_replaced(tmp_path):
    frames = _frames(5)
    records = {t: [(frames[t].height, rows_digest(frames[t]))] for t in TABLES}
    first = inc.PartSums(tmp_path)
    plain = inc.episode_digests(**frames, parts=records, part_sums=first)
    first.finish()
    victim = sorted(tmp_path.glob("*.arrow"))[0]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0x01
    victim.write_bytes(bytes(data))

    again = inc.PartSums(tmp_path)
    assert_frame_equal(inc.episode_digests(**frames, parts=records, part_sums=again), plain, check_exact=True)
    assert (again.hashed, again.reused) == (1, 2)
    again.finish()
    # written again under the same name (the same sums have the same CRC), now intact
    assert len(list(tmp_path.glob("*.arrow"))) == 3
    assert f"{zlib.crc32(victim.read_bytes()):08x}" == victim.name.split(".")[1]


def test_parts_that_do_not_add_up_to_the_table_are_not_used(tmp_path):
    frames = _frames(7)
    records = {t: [(frames[t].height - 1, rows_digest(frames[t]))] for t in TABLES}
    part_sums = inc.PartSums(tmp_path)
    assert_frame_equal(inc.episode_digests(**frames, parts=records, part_sums=part_sums),
                       inc.episode_digests(**frames), check_exact=True)
    assert (part_sums.hashed, part_sums.reused) == (0, 0)
    assert not list(tmp_path.glob("*.arrow"))


def test_the_same_part_read_with_other_columns_is_another_file(tmp_path):
    frames = _frames(9)
    records = {t: [(frames[t].height, rows_digest(frames[t]))] for t in TABLES}
    part_sums = inc.PartSums(tmp_path)
    inc.episode_digests(**frames, parts=records, part_sums=part_sums)
    fewer = {**frames, "episodes": frames["episodes"].drop("age_band")}
    again = inc.PartSums(tmp_path)
    assert_frame_equal(inc.episode_digests(**fewer, parts=records, part_sums=again),
                       inc.episode_digests(**fewer), check_exact=True)
    assert (again.hashed, again.reused) == (1, 2)
