"""Small tables as Markdown for Dagster metadata, without pandas.

``DataFrame.to_pandas().to_markdown()`` imports pandas and tabulate into the run's process
(about half a second) for a few rows of metadata.
"""

from __future__ import annotations

import polars as pl


def markdown_table(frame: pl.DataFrame, float_format: str | None = None) -> str:
    """A GitHub-style Markdown table of ``frame`` (missing values empty, floats formatted
    with ``float_format`` when given, ``|`` and line breaks escaped)."""

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and float_format:
            return format(value, float_format)
        return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "|" + "|".join(":---" if frame.schema[c] == pl.String else "---:" for c in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)
