"""Synthetic exports for a weekly run: every week but the last in a raw folder, and the last
week added later (what the next Monday's run finds)."""

import shutil
from pathlib import Path

from pipelines.synth import generate


def raw_but_last_week(folder: Path, episodes: int, seed: int) -> tuple[Path, Path, list[str]]:
    """``outcomes synth`` exports in ``folder / "source"``, and ``folder / "raw"`` holding
    every week of them but the last: (source, raw, the weeks' folder names in order)."""
    source, raw = folder / "source", folder / "raw"
    generate(episodes, seed, source)
    weeks = sorted(p.name for p in source.iterdir() if p.is_dir())
    raw.mkdir()
    for week in weeks[:-1]:
        add_week(source, raw, week)
    return source, raw, weeks


def add_week(source: Path, raw: Path, week: str) -> None:
    shutil.copytree(source / week, raw / week)
