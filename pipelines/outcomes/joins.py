"""Joins on text keys that match 64-bit hashes first and then check the keys themselves.

At a million episodes the metrics join millions of rows on text ids (session_id,
episode_id). polars joins text keys about twice as slowly as integer keys, while hashing
the text is nearly free. :func:`left_join_by_hash` joins on the hash, then verifies that
every matched row's key equals its partner's and that no row was matched twice; if either
fails (a hash collision, or a key repeated on the right) it does the ordinary join on the
key instead. So the result is always exactly ``left.join(right, on=key, how="left",
maintain_order="left")``; ``tests/test_joins.py`` checks this, collisions included.
"""

from __future__ import annotations

import polars as pl

_HASH = "__key_hash"
_RIGHT_KEY = "__right_key"


def _hashed(key: str) -> pl.Expr:
    # a null key matches nothing, as in an ordinary join: give it no hash
    return pl.when(pl.col(key).is_not_null()).then(pl.col(key).hash()).alias(_HASH)


def left_join_by_hash(left: pl.DataFrame | pl.LazyFrame, right: pl.DataFrame | pl.LazyFrame,
                      key: str, hash_expr=None) -> pl.DataFrame:
    """``left.join(right, on=key, how="left", maintain_order="left")``, collected: exact and,
    when ``key`` is unique in ``right`` (the usual case), without comparing text for every row.

    ``hash_expr`` (tests only) replaces the hash, to force collisions.
    """
    left, right = left.lazy(), right.lazy()
    hashed = hash_expr if hash_expr is not None else _hashed
    joined = (left.with_columns(hashed(key))
              .join(right.with_columns(hashed(key)).rename({key: _RIGHT_KEY}), on=_HASH, how="left",
                    maintain_order="left")
              .collect())
    matched_right = joined.select(
        (pl.col(_RIGHT_KEY).is_null() | (pl.col(_RIGHT_KEY) == pl.col(key))).all()).item()
    if matched_right and joined.height == left.select(pl.len()).collect().item():
        return joined.drop(_HASH, _RIGHT_KEY)
    return left.join(right, on=key, how="left", maintain_order="left").collect()


def semi_join_by_hash(left: pl.DataFrame | pl.LazyFrame, keys: pl.DataFrame | pl.LazyFrame, key: str,
                      hash_expr=None) -> pl.DataFrame:
    """``left.join(keys.select(key), on=key, how="semi")``, collected, in left's order; exact,
    by :func:`left_join_by_hash` against the distinct keys."""
    marker = "__in_keys"
    present = keys.lazy().select(key).unique().with_columns(pl.lit(True).alias(marker))
    return (left_join_by_hash(left, present, key, hash_expr=hash_expr)
            .filter(pl.col(marker).is_not_null()).drop(marker))
