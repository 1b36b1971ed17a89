"""Rejected rows counted by rule, for run summaries and the report's data-quality section."""

from __future__ import annotations

import polars as pl


def rejection_reasons(rejected: pl.DataFrame) -> pl.DataFrame:
    """Columns ``reason``, ``n``: reason texts with their values blanked out, most common first.

    A row with several reasons counts once under each.
    """
    rule = (pl.col("reason")
            .str.replace_all(r"'[^']*'", "'…'")
            .str.replace_all(r"\d{4}-\d{2}-\d{2}", "<date>")
            .str.replace_all(r"\(lines [0-9, ]+\)", "(lines …)")
            .str.replace_all(r"^(\w+): -?[0-9.eE+]+ is outside", "$1: <value> is outside")
            .str.replace_all(r"has \d+ fields, the header has \d+", "has the wrong number of fields"))
    return (rejected.select(pl.col("reasons").str.split("; ").alias("reason")).explode("reason")
            .select(rule).group_by("reason").agg(pl.len().cast(pl.Int64).alias("n"))
            .sort(["n", "reason"], descending=[True, False]))
