"""Outcome metrics exactly as METRICS.md defines them (pure functions over polars frames)."""
