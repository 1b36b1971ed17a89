"""Rule 4 of CONTRACT.md: settle rows that share a key, within each file, then across files."""

from __future__ import annotations

import polars as pl

_SEP = "\x1f"
_NULL = "\x00"


def content_expr(columns: list[str]) -> pl.Expr:
    """Exact, comparable text of a row's normalised contract columns (nulls distinct from "")."""
    return pl.concat_str([pl.col(c).cast(pl.String).fill_null(_NULL) for c in columns], separator=_SEP)


def settle_keys(rows: pl.DataFrame, key: pl.Expr, key_label: pl.Expr, content_columns: list[str]) -> pl.DataFrame:
    """Give every row a ``status`` (accepted / duplicate / superseded / rejected).

    ``rows`` passed rules 2 and 3 and carries ``file_idx`` (file order) and ``line``.
    Conflicting versions inside one file are all rejected (with a reason); identical rows
    inside one file keep one representative (the last); across files the last file's
    representative is accepted and earlier ones are duplicates if equal, else superseded.
    """
    if rows.height == 0:
        return rows.with_columns(pl.lit(None, pl.String).alias("status"),
                                 pl.lit([], pl.List(pl.String)).alias("key_reasons"))
    rows = rows.with_columns(key.alias("_key"))
    # a key seen once is accepted as it is; only shared keys need their contents compared
    shared = pl.col("_key").is_duplicated()
    single = rows.filter(~shared).with_columns(pl.lit("accepted").alias("status"),
                                               pl.lit([], pl.List(pl.String)).alias("key_reasons")).drop("_key")
    rows = rows.filter(shared)
    if rows.height == 0:
        return single
    rows = rows.with_columns(content_expr(content_columns).alias("_content"))
    in_file = ["file_idx", "_key"]
    rows = rows.with_columns(
        (pl.col("_content").n_unique().over(in_file) > 1).alias("_conflict"),
        (pl.col("line") == pl.col("line").max().over(in_file)).alias("_representative"),
    )
    conflict_lines = (
        rows.filter(pl.col("_conflict"))
        .group_by(in_file)
        .agg(pl.col("line").sort().cast(pl.String).str.join(", ").alias("_lines"))
    )
    rows = rows.join(conflict_lines, on=in_file, how="left")
    candidates = pl.col("_representative") & ~pl.col("_conflict")
    rows = rows.with_columns(
        pl.when(candidates).then(pl.col("file_idx")).otherwise(None).max().over("_key").alias("_winner_file"))
    winner_content = (
        rows.filter(candidates & (pl.col("file_idx") == pl.col("_winner_file")))
        .select("_key", pl.col("_content").alias("_winner_content"))
    )
    rows = rows.join(winner_content, on="_key", how="left")
    status = (
        pl.when(pl.col("_conflict")).then(pl.lit("rejected"))
        .when(~pl.col("_representative")).then(pl.lit("duplicate"))
        .when(pl.col("file_idx") == pl.col("_winner_file")).then(pl.lit("accepted"))
        .when(pl.col("_content") == pl.col("_winner_content")).then(pl.lit("duplicate"))
        .otherwise(pl.lit("superseded"))
    )
    reason = pl.when(pl.col("_conflict")).then(pl.concat_list([
        pl.concat_str([key_label, pl.lit(": different versions of this key in the same file (lines "),
                       pl.col("_lines"), pl.lit("), keep one version per export")])
    ])).otherwise(pl.lit([], pl.List(pl.String)))
    settled = rows.with_columns(status.alias("status"), reason.alias("key_reasons")).drop(
        "_key", "_content", "_conflict", "_representative", "_lines", "_winner_file", "_winner_content")
    return pl.concat([single, settled], how="vertical")
