"""Run the Dagster asset graph from Python (the `outcomes run` command, tests, benchmarks)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from pipelines.ingest.core import AUDIT_SCHEMA, REJECTED_SCHEMA
from pipelines.ingest.reasons import rejection_reasons
from pipelines.defs.reports.partitions import first_week, monday_of
from pipelines.reports.weekly import week_label
from pipelines.settings import Settings


@dataclass
class RunOutcome:
    success: bool
    run_id: str
    processed_dir: Path
    reports_dir: Path
    failure: str = ""
    as_of: str = ""
    report_paths: list[Path] = field(default_factory=list)
    report_run_id: str = ""

    def audit(self) -> pl.DataFrame:
        return pl.read_csv(self.processed_dir / "ingest_audit.csv", schema=AUDIT_SCHEMA)

    def rejected(self) -> pl.DataFrame:
        return pl.read_csv(self.processed_dir / "rejected_rows.csv", schema=REJECTED_SCHEMA)

    def summary_text(self, seconds: float) -> str:
        lines = [f"{'Run finished' if self.success else 'Run FAILED'} in {seconds:.1f}s (Dagster run {self.run_id[:8]})"]
        audit_path = self.processed_dir / "ingest_audit.csv"
        if audit_path.exists():
            audit = self.audit()
            count = {s: int((audit["status"] == s).sum()) for s in ("ingested", "refused", "ignored")}
            lines.append(f"Files: {count['ingested']} ingested, {count['refused']} refused, {count['ignored']} ignored")
            for row in audit.filter(pl.col("status") == "refused").head(10).iter_rows(named=True):
                lines.append(f"  refused {row['source_file']}: {row['reason']}")
            if count["refused"] > 10:
                lines.append(f"  ... and {count['refused'] - 10} more refused files (see ingest_audit.csv)")
            totals = {c: int(audit[c].sum()) for c in ("rows_read", "accepted", "duplicate", "superseded", "rejected")}
            lines.append(f"Rows: {totals['rows_read']:,} read = {totals['accepted']:,} accepted + "
                         f"{totals['duplicate']:,} duplicate + {totals['superseded']:,} superseded + "
                         f"{totals['rejected']:,} rejected")
            rejected = self.rejected()
            if rejected.height:
                lines.append("Rejected rows by reason:")
                for reason, n in rejection_reasons(rejected).head(12).iter_rows():
                    lines.append(f"  {n:>8,}  {reason}")
        if self.as_of:
            lines.append(f"Metrics as of {self.as_of}")
        lines.append(f"Processed tables: {self.processed_dir}/ (episode_outcomes.parquet, condition_summary.csv, "
                     "rejected_rows.csv, ingest_audit.csv, ...)")
        for path in self.report_paths:
            lines.append(f"Report: {path} (and report.pdf, summary.csv, figures/ beside it)")
        return "\n".join(lines)


def run_config(raw_dir: Path, processed_dir: Path, reports_dir: Path, as_of: str, today: str,
               settings: Settings, vocabulary_file: Path | None, progress: bool) -> dict:
    paths = {"raw_dir": str(raw_dir), "processed_dir": str(processed_dir), "reports_dir": str(reports_dir),
             "today": today, "as_of": as_of, "vocabulary_file": str(vocabulary_file or "")}
    config = {
        "resources": {
            "paths": {"config": paths},
            "analysis_settings": {"config": settings.as_dict()},
            "processed_io_manager": {"config": {"processed_dir": str(processed_dir)}},
        },
    }
    config["loggers"] = {"progress": {}} if progress else {"console": {"config": {"log_level": "ERROR"}}}
    return config


def run_pipeline(raw_dir: str | Path = "data/raw", processed_dir: str | Path = "data/processed",
                 reports_dir: str | Path = "reports", as_of: str = "", today: str = "",
                 settings: Settings | None = None, vocabulary_file: str | Path | None = None,
                 progress: bool = False, instance: dg.DagsterInstance | None = None) -> RunOutcome:
    """Execute the outcomes job in process; recorded in $DAGSTER_HOME's instance when set."""
    from pipelines.definitions import make_definitions

    raw_dir, processed_dir, reports_dir = Path(raw_dir), Path(processed_dir), Path(reports_dir)
    settings = settings or Settings()
    config = run_config(raw_dir, processed_dir, reports_dir, as_of, today, settings,
                        Path(vocabulary_file) if vocabulary_file else None, progress)
    if instance is None:
        instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    # 1. ingest and outcomes (unpartitioned), as of --as-of or the latest record
    defs = make_definitions(settings)
    result = defs.resolve_job_def("outcomes_job").execute_in_process(
        run_config=config, instance=instance, raise_on_error=False)
    outcome = RunOutcome(success=result.success, run_id=result.run_id, processed_dir=processed_dir,
                         reports_dir=reports_dir, failure=_failure(result), as_of=_as_of(result))
    if not result.success or not outcome.as_of:
        return outcome
    # 2. the report for the ISO week of the as-of date (a weekly partition), as of its Sunday
    as_of_day = date.fromisoformat(outcome.as_of)
    start = min(first_week(processed_dir), monday_of(as_of_day))
    defs = make_definitions(settings, start=start)
    report = defs.resolve_job_def("weekly_report_job").execute_in_process(
        run_config=config, instance=instance, raise_on_error=False,
        partition_key=monday_of(as_of_day).isoformat(), asset_selection=[dg.AssetKey("weekly_report")])
    outcome.report_run_id = report.run_id
    if report.success:
        outcome.report_paths = [reports_dir / "weekly" / week_label(as_of_day) / "report.html"]
    else:
        outcome.success = False
        outcome.failure = _failure(report)
    return outcome


def _failure(result) -> str:
    if result.success:
        return ""
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE"):
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and error.cause is not None:  # the user code's own exception
                error = error.cause
            if error is not None:
                return f"{event.step_key or 'run'}: {error.message.strip().splitlines()[-1]}"
    return "see the Dagster run log"


def _as_of(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION" and event.asset_key == dg.AssetKey("episode_outcomes"):
            meta = event.event_specific_data.materialization.metadata
            if "as_of" in meta:
                return meta["as_of"].value
    return ""
