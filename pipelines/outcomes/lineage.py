"""What an outcome table was computed from, so that a later step can reuse it only when safe.

The outcomes job writes the scored sessions, episode outcomes, session relief and pain
trajectories; the weekly report needs the same tables as of its Sunday. Recomputing them
costs about 20 seconds at a million episodes, so the report reuses the stored tables, but
only when they provably equal what it would compute itself
(``pipelines.defs.reports.assets.stored_outcomes``):

* the same accepted tables: :func:`inputs_digest` of the ingest audit (every file's path,
  content hash and row counts; the run date's future-date rule shows in the counts of
  rejected rows), the vocabulary fingerprint and the heights of the three accepted tables;
* the same code (:func:`code_fingerprint`, a digest of the package's files) and, for
  episode outcomes, the same settings;
* the same records as of both dates: no record counts as of one and not the other
  (:func:`pipelines.outcomes.metrics.same_records_as_of`), because a date changes the
  metrics only through which records are on or before it (METRICS.md "As of a date").

The stamp travels inside the Parquet file's key-value metadata (:data:`STAMP_KEY`), so it
is renamed into place with the table it describes and cannot drift from it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import polars as pl

import pipelines

#: key of the stamp in a Parquet file's key-value metadata
STAMP_KEY = "pipelines.lineage"


def code_version() -> str:
    """Package version and, when run from a git checkout, the commit."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                timeout=5, cwd=Path(pipelines.__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"pipelines {pipelines.__version__}" + (f" (git {commit})" if commit else "")


_CODE_FINGERPRINT: str | None = None


def code_fingerprint() -> str:
    """The package version and a sha256 of every source and reference file of the package:
    unlike the git description, it changes with every edit, committed or not."""
    global _CODE_FINGERPRINT
    if _CODE_FINGERPRINT is None:
        root = Path(pipelines.__file__).parent
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".csv", ".j2") and p.is_file()):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        _CODE_FINGERPRINT = f"pipelines {pipelines.__version__} sha256:{digest.hexdigest()}"
    return _CODE_FINGERPRINT


def inputs_digest(audit: pl.DataFrame, vocabulary_fingerprint: str, heights: dict[str, int]) -> str:
    """sha256 naming one set of accepted tables: the whole ingest audit (sorted by file), the
    vocabulary and the number of accepted rows per table."""
    text = audit.sort("source_file").write_csv()
    parts = [text, f"vocabulary:{vocabulary_fingerprint}",
             *(f"{name}:{heights[name]}" for name in sorted(heights))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Lineage:
    """What one stored table was computed from."""

    inputs: str
    as_of: str
    code: str
    #: the analysis settings, for tables that depend on them (None: the table does not)
    settings: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Lineage":
        data = json.loads(text)
        return cls(inputs=str(data["inputs"]), as_of=str(data["as_of"]), code=str(data["code"]),
                   settings=data.get("settings"))

    def as_of_date(self) -> date:
        return date.fromisoformat(self.as_of)


def read_lineage(path: str | Path) -> Lineage | None:
    """The stamp of a Parquet table, or None when the file is missing, unreadable or unstamped."""
    try:
        text = pl.read_parquet_metadata(path).get(STAMP_KEY)
        return Lineage.from_json(text) if text else None
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None
