"""Dagster wiring: thin assets over the pure functions in pipelines.ingest / pipelines.outcomes."""
