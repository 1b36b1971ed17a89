"""Checks a published report folder: complete, and no small count in its published table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

REQUIRED = ("report.html", "report.pdf", "summary.csv")
COUNT_COLUMNS = ("n_episodes", "n_analysed")


def small_counts(summary: pl.DataFrame, k: int) -> list[str]:
    """Count cells of a published summary.csv that show a number from 1 to k-1."""
    found = []
    for column in COUNT_COLUMNS:
        if column not in summary.columns:
            continue
        for label, text in zip(summary["condition"].to_list(), summary[column].cast(pl.String).to_list()):
            digits = (text or "").replace(",", "")
            if digits.isdigit() and 1 <= int(digits) < k:
                found.append(f"{label}.{column}={text}")
    return found


def published_problems(folder: Path, k: int) -> list[str]:
    problems = [f"missing {name}" for name in REQUIRED if not (folder / name).is_file()]
    if not (folder / "figures").is_dir() or not any((folder / "figures").glob("*.png")):
        problems.append("no figures")
    if (folder / "summary.csv").is_file():
        summary = pl.read_csv(folder / "summary.csv", infer_schema=False)
        problems += [f"small count shown: {cell}" for cell in small_counts(summary, k)]
    return problems
