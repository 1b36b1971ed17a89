"""Validated ingest of clinic exports (pure logic; Dagster wiring lives in pipelines.defs)."""

from pipelines.ingest.core import IngestResult, ingest_folder

__all__ = ["IngestResult", "ingest_folder"]
