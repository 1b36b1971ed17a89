"""Markdown tables for Dagster metadata (pipelines.defs.markdown)."""

import polars as pl

from pipelines.defs.markdown import markdown_table


def test_markdown_table_escapes_formats_and_leaves_missing_values_empty():
    frame = pl.DataFrame({"file": ["a|b.csv", "c\nd.csv", None], "rate": [0.123456, None, 2.0], "n": [1, 22, 333]})
    assert markdown_table(frame, float_format=".3g") == "\n".join([
        "| file | rate | n |",
        "|:---|---:|---:|",
        "| a\\|b.csv | 0.123 | 1 |",
        "| c d.csv |  | 22 |",
        "|  | 2 | 333 |",
    ])
    assert markdown_table(frame.select("rate")).splitlines()[2] == "| 0.123456 |"
    assert markdown_table(frame.clear()) == "| file | rate | n |\n|:---|---:|---:|"
