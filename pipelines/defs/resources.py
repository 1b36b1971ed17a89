"""Resources: where the folders are, which dates apply, and the analysis settings."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from pipelines.ingest.core import AUDIT_SCHEMA, REJECTED_SCHEMA
from pipelines.io import is_url, locate, read_table, stored_parts, write_parts, write_table
from pipelines.outcomes.lineage import STAMP_KEY, Lineage, read_lineage
from pipelines.outcomes.summary import SUMMARY_SCHEMA
from pipelines.outcomes.metrics import latest_record_date
from pipelines.settings import Settings
from pipelines.vocabulary import Vocabulary

_DEFAULTS = Settings()

#: CSV outputs are read back with their schema (CSV alone cannot say that an empty column is a number)
CSV_SCHEMAS = {"condition_summary.csv": SUMMARY_SCHEMA, "rejected_rows.csv": REJECTED_SCHEMA,
               "ingest_audit.csv": AUDIT_SCHEMA}


class AnalysisSettings(dg.ConfigurableResource):
    """METRICS.md settings; defaults are the published norms (see pipelines.settings)."""

    responder_30_threshold: float = _DEFAULTS.responder_30_threshold
    responder_50_threshold: float = _DEFAULTS.responder_50_threshold
    response_threshold: float = _DEFAULTS.response_threshold
    min_cell_size: int = _DEFAULTS.min_cell_size
    timezone: str = _DEFAULTS.timezone

    def to_settings(self) -> Settings:
        return Settings(responder_30_threshold=self.responder_30_threshold,
                        responder_50_threshold=self.responder_50_threshold,
                        response_threshold=self.response_threshold,
                        min_cell_size=self.min_cell_size, timezone=self.timezone)

    @classmethod
    def from_settings(cls, settings: Settings) -> "AnalysisSettings":
        return cls(**settings.as_dict())


class PipelineConfig(dg.ConfigurableResource):
    """Folders and dates of a run (CONTRACT.md "Output").

    ``processed_dir`` may be an object-storage URL (``s3://bucket/prefix``, ``gs://``,
    ``az://``) where the I/O manager's ``processed_dir`` is the same URL
    (docs/deployment.md); raw exports and reports are local folders."""

    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    reports_dir: str = "reports"
    #: run date for the future-date rule (YYYY-MM-DD); empty: today in the clinic's time zone
    today: str = ""
    #: compute metrics as of this date (YYYY-MM-DD); empty: latest accepted session or follow-up
    as_of: str = ""
    #: condition vocabulary CSV; empty: the packaged reference file
    vocabulary_file: str = ""
    #: re-read only new or changed export files (cache under <cache_dir>/ingest)
    ingest_cache: bool = True
    #: local folder of the derived caches (ingest cache and settled state, outcome digest
    #: sums); empty: <processed_dir>/.cache, or none when processed_dir is object storage
    #: (then every run parses every file and settles every key: slower, same tables)
    cache_dir: str = ""

    def _cache_root(self) -> Path | None:
        if self.cache_dir:
            return Path(self.cache_dir)
        return None if is_url(self.processed_dir) else Path(self.processed_dir) / ".cache"

    def ingest_cache_dir(self) -> Path | None:
        root = self._cache_root()
        return root / "ingest" if self.ingest_cache and root is not None else None

    def digest_cache_dir(self) -> Path | None:
        """Per-part sums of the outcome input digests (pipelines.outcomes.incremental.PartSums)."""
        root = self._cache_root()
        return root / "outcomes" / "digest-parts" if root is not None else None

    def run_date(self, timezone: str) -> date:
        if self.today:
            return date.fromisoformat(self.today)
        return datetime.now(ZoneInfo(timezone)).date()

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.load(self.vocabulary_file or None)

    def resolve_as_of(self, sessions: pl.DataFrame, pain_scores: pl.DataFrame, timezone: str) -> date:
        if self.as_of:
            return date.fromisoformat(self.as_of)
        latest = latest_record_date(sessions, pain_scores)
        return latest or self.run_date(timezone)


class RunGuard(dg.ConfigurableResource):
    """Holds the run lock of the processed and reports folders (pipelines.locking) for a whole
    Dagster run, so a run launched from the UI, the schedule or the sensor never overlaps an
    `outcomes run` (which takes the same lock; re-entrant within its own thread).

    Jobs use the in-process executor, so one process holds the lock for every step.
    """

    processed_dir: str = "data/processed"
    reports_dir: str = "reports"
    #: seconds to wait for another run before this one fails with a clear message
    wait_seconds: float = 3600.0

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext):
        from pipelines.locking import RunLocked, run_lock

        # object storage has no lock file: there one run at a time is the run queue's
        # (max_concurrent_runs: 1, docs/deployment.md)
        folders = [f for f in (self.processed_dir, self.reports_dir) if not is_url(f)]
        try:
            with run_lock(*folders, wait=self.wait_seconds,
                          command=f"dagster run {context.run.run_id}" if context.run else "dagster run"):
                yield self
        except RunLocked as exc:
            raise dg.Failure(description=str(exc)) from None


def _value(entry):
    """A metadata entry's plain value (Dagster may hand it over wrapped in a MetadataValue)."""
    return entry.value if hasattr(entry, "value") else entry


class ProcessedTableIOManager(dg.ConfigurableIOManager):
    """Stores polars frames in the processed folder under the file name each asset declares
    (metadata ``filename``; default ``<asset>.parquet``), written atomically.

    An input declared with ``dg.AssetIn(metadata={"columns": [...]})`` reads only those
    columns of a Parquet table (at a million episodes the text columns a step does not use
    are most of its memory).

    An output declared with metadata ``parts`` True is stored as a folder of Parquet parts
    under its file name (:func:`pipelines.io.write_parts`): the parts of the version in
    ``published_dir`` whose rows are unchanged are linked, not written again. Any Parquet
    reader reads the folder as one table.

    ``processed_dir`` may be an object-storage URL (``s3://bucket/prefix``; polars reads and
    writes it, with credentials and endpoint from the environment, e.g. ``AWS_*``): then
    every table is one object, the accepted tables too (no parts to reuse: correct, and it
    writes their every row each run)."""

    processed_dir: str = "data/processed"
    #: where the last published tables are, when outputs go to a staging folder first
    #: (``outcomes run``); empty: ``processed_dir``
    published_dir: str = ""

    @staticmethod
    def _filename(context: dg.InputContext | dg.OutputContext) -> str:
        output_ctx = context if isinstance(context, dg.OutputContext) else context.upstream_output
        metadata = (output_ctx.definition_metadata or {}) if output_ctx is not None else {}
        return _value(metadata.get("filename")) or f"{context.asset_key.path[-1]}.parquet"

    def _path(self, context: dg.InputContext | dg.OutputContext) -> str | Path:
        return locate(self.processed_dir, self._filename(context))

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        # a step's "lineage" output metadata (pipelines.outcomes.lineage) goes into the Parquet footer
        lineage = _value((context.output_metadata or {}).get("lineage"))
        path = self._path(context)
        if _value((context.definition_metadata or {}).get("parts")) and not is_url(path):
            previous = Path(self.published_dir or self.processed_dir) / path.name
            known = _value((context.output_metadata or {}).get("part_digests"))
            written = write_parts(obj, path, previous, known=known)
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "rows": obj.height, **written})
            return
        write_table(obj, path, {STAMP_KEY: lineage} if lineage else None)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "rows": obj.height})

    # Steps that read a stored table without it being an input (the key and reference checks,
    # the report's reuse of outcome tables) go through these, so that another storage behind
    # this resource key (docs/deployment.md) serves them too.

    def read_file(self, filename: str, columns: list[str] | None = None) -> pl.DataFrame:
        """A stored Parquet table by file name, only ``columns`` of it (all when None)."""
        return pl.read_parquet(locate(self.processed_dir, filename), columns=columns)

    def read(self, asset_name: str, columns: list[str] | None = None) -> pl.DataFrame:
        """An asset's stored table by asset name (``<asset>.parquet``)."""
        return self.read_file(f"{asset_name}.parquet", columns)

    def part_records(self, asset_name: str) -> list[tuple[int, str]] | None:
        """(rows, content digest) of each part of an asset's table stored as a folder of
        parts (:func:`pipelines.io.stored_parts`), in order; None for a single file."""
        if is_url(self.processed_dir):
            return None  # one object per table there
        parts = stored_parts(Path(self.processed_dir) / f"{asset_name}.parquet")
        if not parts or not all(isinstance(r.get("rows"), int) and isinstance(r.get("digest"), str)
                                for _, r in parts):
            return None
        return [(record["rows"], record["digest"]) for _, record in parts]

    def lineage(self, filename: str) -> Lineage | None:
        """What a stored table was computed from (pipelines.outcomes.lineage), if it says."""
        return read_lineage(locate(self.processed_dir, filename))

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        name = self._filename(context)
        path = locate(self.processed_dir, name)
        columns = (context.definition_metadata or {}).get("columns")
        if columns is not None and name.endswith(".parquet"):
            return pl.read_parquet(path, columns=list(columns))
        return read_table(path, CSV_SCHEMAS.get(name))
