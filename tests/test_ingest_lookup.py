"""The reference look-up of ingest (``pipelines.ingest.core._look_up``) equals the plain left
join it replaces, whatever the hashes do: real hashes, hashes that collide between a row's
unknown id and an accepted one, accepted ids whose hashes repeat (the join is used then),
null ids, and the weekly path that first picks the accepted rows with the rows' keys."""

from __future__ import annotations

import random

import polars as pl
import pytest
from polars.testing import assert_series_equal

from pipelines.ingest import core
from pipelines.outcomes import joins


def plain(rows: pl.DataFrame, accepted: pl.DataFrame, key: str, column: str) -> pl.Series:
    return rows.select(key).join(accepted.select(key, pl.col(column).alias("_v")), on=key, how="left",
                                 maintain_order="left").get_column("_v")


def by_length(key: str) -> pl.Expr:
    """A hash under which ids of equal length collide (a null one with those of length 2)."""
    return pl.col(key).str.len_bytes().cast(pl.UInt64).fill_null(2).alias(joins._HASH)


def test_a_colliding_unknown_id_and_a_null_find_nothing(monkeypatch):
    monkeypatch.setattr(core, "_hash_expr", by_length)
    accepted = pl.DataFrame({"episode_id": ["E1", "E22", "E333"], "referral_date": [1, 2, 3]})
    rows = pl.DataFrame({"episode_id": ["X9", None, "E22", "E333", "E1", "Y22"]})
    got = core._look_up(rows, accepted, "episode_id", "referral_date", "_v")
    assert got.to_list() == [None, None, 2, 3, 1, None]
    assert_series_equal(got, plain(rows, accepted, "episode_id", "referral_date"))


def test_accepted_ids_whose_hashes_repeat_are_joined_on_the_ids(monkeypatch):
    monkeypatch.setattr(core, "_hash_expr", by_length)
    accepted = pl.DataFrame({"session_id": ["S1", "S2", "S33"], "episode_id": ["E1", "E2", "E3"]})
    rows = pl.DataFrame({"session_id": ["S2", "S1", "S4", "S33", None]})
    got = core._look_up(rows, accepted, "session_id", "episode_id", "_v")
    assert got.to_list() == ["E2", "E1", None, "E3", None]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hashing", ["real", "length"])
def test_random_rows_equal_the_plain_join(monkeypatch, seed, hashing):
    if hashing == "length":
        monkeypatch.setattr(core, "_hash_expr", by_length)
    rng = random.Random(seed)
    ids = [f"S{rng.randrange(10 ** rng.randrange(1, 5))}" for _ in range(300)]
    accepted = pl.DataFrame({"session_id": list(dict.fromkeys(ids))}).with_row_index("value")
    # few rows (the weekly path picks accepted rows first) or many (every row settled)
    n = rng.choice([3, 20, 2000])
    rows = pl.DataFrame({"session_id": [None if rng.random() < 0.05 else rng.choice(ids + ["S-x", "Q1"])
                                        for _ in range(n)]})
    got = core._look_up(rows, accepted, "session_id", "value", "_v")
    assert_series_equal(got, plain(rows, accepted, "session_id", "value"))
