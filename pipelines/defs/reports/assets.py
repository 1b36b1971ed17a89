"""The weekly directors' report as a weekly-partitioned asset."""

import subprocess
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

import pipelines
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, RunGuard
from pipelines.reports.render import write_report
from pipelines.reports.weekly import ReportInputs, build_report, week_label

REPORT_FILES = ("report.html", "report.pdf", "summary.csv")


def code_version() -> str:
    """Package version and, when run from a git checkout, the commit."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                timeout=5, cwd=Path(pipelines.__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"pipelines {pipelines.__version__}" + (f" (git {commit})" if commit else "")


def build_weekly_report_asset(partitions_def: dg.WeeklyPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="weekly_report",
        group_name="reports",
        partitions_def=partitions_def,
        description="The directors' weekly report for one ISO week, computed as of its Sunday: "
                    "reports/weekly/<week>/report.html, report.pdf, summary.csv and figures/.",
        kinds={"html", "pdf"},
        # only the columns the report uses of the two large tables (see ProcessedTableIOManager)
        ins={"sessions": dg.AssetIn(metadata={"columns": ["session_id", "episode_id", "session_date"]}),
             "pain_scores": dg.AssetIn(metadata={"columns": ["episode_id", "session_id", "timepoint", "score",
                                                             "recorded_on"]})},
    )
    def weekly_report(context: dg.AssetExecutionContext, paths: PipelineConfig, analysis_settings: AnalysisSettings,
                      run_guard: RunGuard,
                      episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                      ingest_audit: pl.DataFrame, rejected_rows: pl.DataFrame) -> dg.MaterializeResult:
        settings = analysis_settings.to_settings()
        week = week_label(date.fromisoformat(context.partition_key))
        vocabulary = paths.vocabulary()
        inputs = ReportInputs(episodes=episodes, sessions=sessions, pain_scores=pain_scores, audit=ingest_audit,
                              rejected=rejected_rows, settings=settings, labels=vocabulary.labels,
                              run_date=paths.run_date(settings.timezone), code_version=code_version(),
                              vocabulary_fingerprint=vocabulary.fingerprint())
        content = build_report(inputs, week)
        folder = write_report(content, Path(paths.reports_dir) / "weekly")
        context.log.info(f"report for {week} written to {folder}")
        return dg.MaterializeResult(metadata={
            "week": week,
            "folder": dg.MetadataValue.path(str(folder)),
            "report": dg.MetadataValue.path(str(folder / "report.html")),
            "headline": dg.MetadataValue.md("\n".join(
                f"- {r['label']}: {r['value']} {r['interval']}" for r in content.headline_to_date)),
            "input_fingerprint": content.provenance["Input fingerprint"],
        })

    return weekly_report


def build_report_checks(partitions_def: dg.WeeklyPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="weekly_report", partitions_def=partitions_def, blocking=False,
                    description="The week's folder is complete and its summary.csv shows no count from 1 to k-1.")
    def weekly_report_published_safely(context: dg.AssetCheckExecutionContext, paths: PipelineConfig,
                                       analysis_settings: AnalysisSettings) -> dg.AssetCheckResult:
        from pipelines.reports.audit import published_problems

        week = week_label(date.fromisoformat(context.partition_key))
        folder = Path(paths.reports_dir) / "weekly" / week
        problems = published_problems(folder, analysis_settings.min_cell_size)
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})

    return [weekly_report_published_safely]
