"""Weekly partitions: ISO weeks, Monday to Sunday, in the clinic's time zone."""

import os
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from pipelines.io import is_url, locate

#: used when neither OUTCOMES_FIRST_WEEK nor processed episodes say where the data start
FALLBACK_FIRST_WEEK = date(2024, 1, 1)


def monday_of(day: date) -> date:
    return day - timedelta(days=day.weekday())


def first_week(processed_dir: str | Path | None = None) -> date:
    """Monday of the first week in the data: $OUTCOMES_FIRST_WEEK, else the earliest referral
    in the processed episodes (of ``processed_dir``, default ``data/processed``; ``defs``
    passes $OUTCOMES_PROCESSED_DIR's, pipelines.definitions.folders_from_environment), else
    a fixed fallback."""
    override = os.environ.get("OUTCOMES_FIRST_WEEK")
    if override:
        return monday_of(date.fromisoformat(override))
    path = locate(processed_dir or "data/processed", "episodes.parquet")
    if is_url(path) or path.exists():
        try:
            earliest = pl.scan_parquet(path).select(pl.col("referral_date").min()).collect().item()
        except Exception:  # noqa: BLE001 - a missing or unreadable table must not stop the definitions loading
            earliest = None
        if earliest is not None:
            return monday_of(earliest)
    return FALLBACK_FIRST_WEEK


def weekly_partitions(start: date, timezone: str) -> dg.WeeklyPartitionsDefinition:
    """Weeks starting on Monday (day_offset=1), up to and including the current week."""
    return dg.WeeklyPartitionsDefinition(start_date=start.isoformat(), day_offset=1, timezone=timezone, end_offset=1)
