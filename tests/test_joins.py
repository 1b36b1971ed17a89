"""Joins by hash (pipelines.outcomes.joins) equal the ordinary joins on the key, exactly:
same rows, same order, same dtypes; also when hashes collide or a key repeats."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.outcomes.joins import left_join_by_hash, semi_join_by_hash

KEYS = st.one_of(st.none(), st.sampled_from(["S1", "S2", "S3", "S10", "a", "", "é", "S1 "]))


def _collide(key: str) -> pl.Expr:
    """A deliberately bad hash: keys of equal length collide, nulls get none."""
    return pl.when(pl.col(key).is_not_null()).then(pl.col(key).str.len_bytes().cast(pl.UInt64)).alias("__key_hash")


def _frames(left_keys, right_keys):
    left = pl.DataFrame({"session_id": left_keys, "pos": list(range(len(left_keys)))},
                        schema={"session_id": pl.String, "pos": pl.Int64})
    right = pl.DataFrame({"session_id": right_keys, "score": [float(i) for i in range(len(right_keys))]},
                         schema={"session_id": pl.String, "score": pl.Float64})
    return left, right


@settings(max_examples=150, deadline=None)
@given(left_keys=st.lists(KEYS, max_size=12), right_keys=st.lists(KEYS, max_size=8),
       collide=st.booleans(), unique_right=st.booleans())
def test_left_join_by_hash_equals_the_join(left_keys, right_keys, collide, unique_right):
    if unique_right:
        right_keys = list(dict.fromkeys(right_keys))
    left, right = _frames(left_keys, right_keys)
    expected = left.join(right, on="session_id", how="left", maintain_order="left")
    got = left_join_by_hash(left, right, "session_id", hash_expr=_collide if collide else None)
    assert got.equals(expected)
    assert got.schema == expected.schema


@settings(max_examples=150, deadline=None)
@given(left_keys=st.lists(KEYS, max_size=12), right_keys=st.lists(KEYS, max_size=8), collide=st.booleans())
def test_semi_join_by_hash_equals_the_join(left_keys, right_keys, collide):
    left, right = _frames(left_keys, right_keys)
    expected = left.join(right.select("session_id"), on="session_id", how="semi", maintain_order="left")
    got = semi_join_by_hash(left, right, "session_id", hash_expr=_collide if collide else None)
    assert got.equals(expected)


def test_collisions_fall_back_to_the_key():
    # "S1" and "S2" collide under the bad hash: matching by hash alone would pair them
    left, right = _frames(["S1", "S2", None, "S3x"], ["S2", "S3x"])
    got = left_join_by_hash(left, right, "session_id", hash_expr=_collide)
    assert got["score"].to_list() == [None, 0.0, None, 1.0]


def test_lazy_inputs_and_clashing_columns():
    left = pl.LazyFrame({"session_id": ["S1", "S2"], "episode_id": ["E1", "E2"]})
    right = pl.LazyFrame({"session_id": ["S2"], "episode_id": ["E9"]})
    got = left_join_by_hash(left, right, "session_id")
    expected = left.join(right, on="session_id", how="left", maintain_order="left").collect()
    assert got.equals(expected)
    assert got.columns == ["session_id", "episode_id", "episode_id_right"]


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_sizes(n):
    left, right = _frames([f"S{i % 700}" for i in range(n)], [f"S{i}" for i in range(0, 900, 3)])
    assert left_join_by_hash(left, right, "session_id").equals(
        left.join(right, on="session_id", how="left", maintain_order="left"))
