"""Joins on text keys that match 64-bit hashes first and then check the keys themselves.

At a million episodes the metrics join millions of rows on text ids (session_id,
episode_id). polars joins text keys about twice as slowly as integer keys, while hashing
the text is nearly free. :func:`left_join_by_hash` joins on the hash, then checks that
every matched row's key equals its partner's (a collision is no match) and does the
ordinary join on the key when a hash repeats on the right. So the result is always exactly ``left.join(right, on=key, how="left",
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
    when ``key`` is unique in ``right`` (the usual case), without joining on text.

    The rows' hashes are joined without keeping an order, which costs about half of a join
    that keeps it, and each left row's partner is then found by sorting on the left row
    number; a partner whose key differs (a collision) is no partner. A hash repeated in
    ``right`` means the ordinary join. ``hash_expr`` (tests only) replaces the hash, to
    force collisions.
    """
    left = left.collect() if isinstance(left, pl.LazyFrame) else left
    right = right.collect() if isinstance(right, pl.LazyFrame) else right
    hashed = hash_expr if hash_expr is not None else _hashed
    pairs = (left.select(hashed(key)).with_row_index("__left").lazy()
             .join(right.select(hashed(key)).with_row_index("__right").lazy(), on=_HASH, how="left")
             .select("__left", "__right").collect())
    if pairs.height != left.height:  # a hash repeated in right
        return left.join(right, on=key, how="left", maintain_order="left")
    position = pairs.sort("__left").get_column("__right")
    found = (right.get_column(key).gather(position) == left.get_column(key)).fill_null(False)
    return left.with_columns(
        pl.when(found).then(right.get_column(column).gather(position))
        .alias(f"{column}_right" if column in left.columns else column)
        for column in right.columns if column != key)


def semi_join_by_hash(left: pl.DataFrame | pl.LazyFrame, keys: pl.DataFrame | pl.LazyFrame, key: str,
                      hash_expr=None) -> pl.DataFrame:
    """``left.join(keys.select(key), on=key, how="semi")``, collected, in left's order; exact,
    by :func:`left_join_by_hash` against the distinct keys."""
    marker = "__in_keys"
    present = keys.lazy().select(key).unique().with_columns(pl.lit(True).alias(marker))
    return (left_join_by_hash(left, present, key, hash_expr=hash_expr)
            .filter(pl.col(marker).is_not_null()).drop(marker))
