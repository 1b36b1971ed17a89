"""Rule 4 of CONTRACT.md: settle rows that share a key, within each file, then across files."""

from __future__ import annotations

import numpy as np
import polars as pl

ACCEPTED, DUPLICATE, SUPERSEDED, REJECTED = 0, 1, 2, 3
STATUS_NAMES = ("accepted", "duplicate", "superseded", "rejected")


def _same(column: str, dtype: pl.DataType, other: pl.Expr) -> pl.Expr:
    """Exactly equal (nulls equal each other). Floats also by the sign of zero: versions are
    compared as written once normalised, and ``-0`` is not written ``0``."""
    this = pl.col(column)
    equal = this.eq_missing(other)
    if dtype.is_float():
        equal = equal & (pl.lit(1.0) / this).eq_missing(pl.lit(1.0) / other)
    return equal


def settle_keys(rows: pl.DataFrame, key: list[pl.Expr], content_columns: list[str],
                alive: np.ndarray | None = None, hashed: pl.Series | None = None) -> tuple[np.ndarray, pl.DataFrame]:
    """The status of every row (accepted / duplicate / superseded / rejected, as codes).

    ``rows`` passed rules 2 and 3, carries ``file_idx`` (file order) and ``line`` and is in
    that order; with ``alive`` (a mask), only those rows take part. ``key``: expressions
    whose values together are a row's key (row by row: they are evaluated on the rows that
    share a hash only). Conflicting versions inside one file are all
    rejected; identical rows inside one file keep one representative (the last); across
    files the last file's representative is accepted and earlier ones are duplicates if
    equal, else superseded. Versions are compared on their normalised ``content_columns``,
    exactly.

    ``hashed``: the 64-bit hash of each row's key, as computed here when not given.

    Returns the status codes (aligned with ``rows``; meaningless where not ``alive``) and,
    for the rejected rows, a frame with their position ``_i`` and the ``_lines`` of their
    file that hold the key.
    """
    n = rows.height
    status = np.full(n, ACCEPTED, dtype=np.uint8)
    no_conflicts = pl.DataFrame(schema={"_i": pl.Int64, "_lines": pl.String})
    if n == 0:
        return status, no_conflicts
    key_names = [f"_k{i}" for i in range(len(key))]
    # a key seen once is accepted as it is; a hash finds the shared keys cheaply (sorted
    # hashes, not polars' is_duplicated: 0.4 vs 3 CPU-s on 14M rows), and everything after
    # compares the keys themselves (a hash collision only costs time)
    if hashed is None:
        hashed = rows.select(
            pl.struct([k.alias(name) for k, name in zip(key, key_names)]).hash().alias("_h")).to_series()
    # hashes that repeat among the rows taking part: neighbours once sorted
    values = np.sort((hashed if alive is None else hashed.filter(pl.Series(alive))).to_numpy())
    repeated = values[1:][values[1:] == values[:-1]]
    if repeated.size == 0:
        return status, no_conflicts
    shared = hashed.is_in(pl.Series(repeated).implode()).to_numpy()
    shared = np.flatnonzero(shared if alive is None else shared & alive)
    dtypes = rows.schema
    # the key of the shared rows only (its expressions are row by row)
    columns = ["file_idx", "line", *content_columns]
    columns += sorted({name for k in key for name in k.meta.root_names()} - set(columns))
    sub = rows.select(pl.col(columns).gather(shared), pl.lit(hashed).gather(shared).alias("_h"),
                      pl.lit(pl.Series("_i", shared, dtype=pl.Int64)))
    # rows are in file order, so a stable sort by key puts each key's rows in file, line order
    sub = sub.sort("_h", maintain_order=True).with_columns(k.alias(name) for k, name in zip(key, key_names))
    first = pl.int_range(pl.len()) == 0
    key_change = pl.any_horizontal([~pl.col(k).eq_missing(pl.col(k).shift()) for k in key_names])
    hash_change = (pl.col("_h") != pl.col("_h").shift()).fill_null(True)
    if sub.select((key_change & ~hash_change & ~first).any()).item():
        sub = sub.sort(key_names, maintain_order=True)
        boundary = key_change | first
    else:
        boundary = hash_change
    pos = pl.int_range(pl.len(), dtype=pl.Int64)
    same_as_previous = pl.all_horizontal([_same(c, dtypes[c], pl.col(c).shift()) for c in content_columns])
    sub = sub.with_columns(boundary.alias("_g_start")).with_columns(
        (pl.col("_g_start") | (pl.col("file_idx") != pl.col("file_idx").shift()).fill_null(True)).alias("_f_start"))
    sub = sub.with_columns(
        (~pl.col("_f_start") & ~same_as_previous).cast(pl.UInt32).cum_sum().alias("_changes"),
        pl.col("_f_start").shift(-1, fill_value=True).alias("_f_end"),
        pl.col("_g_start").shift(-1, fill_value=True).alias("_g_end"),
    )
    # a file's rows of one key conflict when any of them differs from the one before it
    sub = sub.with_columns(
        (pl.when(pl.col("_f_end")).then(pl.col("_changes")).backward_fill()
         > pl.when(pl.col("_f_start")).then(pl.col("_changes")).forward_fill()).alias("_conflict"))
    # the winner: the last representative (last row of its file) of a file without conflict
    candidate = pl.col("_f_end") & ~pl.col("_conflict")
    sub = sub.with_columns(
        pl.when(candidate).then(pos).forward_fill().alias("_last_candidate"),
        pl.when(pl.col("_g_start")).then(pos).forward_fill().alias("_g_first"))
    winner_at_end = pl.when(pl.col("_g_end")).then(pl.col("_last_candidate")).backward_fill()
    sub = sub.with_columns(
        pl.when(winner_at_end >= pl.col("_g_first")).then(winner_at_end).otherwise(pos).alias("_winner"))
    winner = pl.col("_winner")
    equal_to_winner = pl.all_horizontal([_same(c, dtypes[c], pl.col(c).gather(winner)) for c in content_columns])
    code = (
        pl.when(pl.col("_conflict")).then(pl.lit(REJECTED))
        .when(~pl.col("_f_end")).then(pl.lit(DUPLICATE))
        .when(pos == winner).then(pl.lit(ACCEPTED))
        .when(equal_to_winner).then(pl.lit(DUPLICATE))
        .otherwise(pl.lit(SUPERSEDED))
    ).cast(pl.UInt8)
    settled = sub.select("_i", code.alias("_status"), "_conflict", "line",
                         pl.col("_f_start").cum_sum().alias("_f_group"))
    status[settled["_i"].to_numpy()] = settled["_status"].to_numpy()
    conflicted = settled.filter(pl.col("_conflict"))
    if conflicted.height == 0:
        return status, no_conflicts
    lines = conflicted.group_by("_f_group").agg(
        pl.col("line").sort().cast(pl.String).str.join(", ").alias("_lines"))
    conflicts = conflicted.join(lines, on="_f_group", how="left").select("_i", "_lines")
    return status, conflicts
