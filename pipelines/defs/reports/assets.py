"""The weekly directors' report as a weekly-partitioned asset."""

import json
import re
import warnings
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from pipelines.defs.outcomes.assets import accepted_digest
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, ProcessedTableIOManager, RunGuard
from pipelines.outcomes.lineage import code_fingerprint, code_version
from pipelines.outcomes.metrics import same_records_as_of
from pipelines.reports.render import write_report
from pipelines.reports.weekly import REPORT_OUTCOME_COLUMNS, ReportInputs, build_report, week_label
from pipelines.settings import Settings

REPORT_FILES = ("report.html", "report.pdf", "summary.csv")


#: outcome tables the report can take from the outcomes job instead of computing them again:
#: asset name -> (file name, whether the table depends on the analysis settings)
REUSABLE = {
    "scored_sessions": ("scored_sessions.parquet", False),
    "episode_outcomes": ("episode_outcomes.parquet", True),
    "session_relief_table": ("session_relief.parquet", False),
    "pain_trajectories": ("pain_trajectories.parquet", False),
    "condition_summary_table": ("condition_summary.parquet", True),
    "clinic_condition_summary": ("clinic_condition_summary.parquet", True),
}
#: the columns the report reads of a reused table (all when not listed): at a million
#: episodes scored sessions and session relief have five to six million rows
REUSED_COLUMNS = {"scored_sessions": ["episode_id", "session_date", "k", "pre", "post"],
                  "episode_outcomes": REPORT_OUTCOME_COLUMNS,
                  "session_relief_table": ["episode_id", "clinic_id", "condition", "relief"]}
#: columns of a reused table read only to compute a later table of REUSABLE, and so not read
#: when that one is reused too: the post scores (for session relief), a relief row's clinic
#: (for the clinic summary)
ONLY_TO_COMPUTE = {"scored_sessions": {"post": "session_relief_table"},
                   "session_relief_table": {"clinic_id": "clinic_condition_summary"}}
#: the columns the report reads of the two large accepted tables. Not their session ids: only
#: computing scored sessions again needs them (see with_session_ids), and at a million
#: episodes they are a third of what reading these two inputs costs
REPORT_COLUMNS = {"sessions": ["episode_id", "session_date"],
                  "pain_scores": ["episode_id", "timepoint", "score", "recorded_on"]}


def with_session_ids(store: ProcessedTableIOManager, sessions: pl.DataFrame, pain_scores: pl.DataFrame
                     ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The report's sessions and pain scores (:data:`REPORT_COLUMNS`) with their session_id
    column, read from the same stored tables (row for row: a table is read in its stored order)."""
    return (sessions.hstack(store.read("sessions", ["session_id"])),
            pain_scores.hstack(store.read("pain_scores", ["session_id"])))


def stored_outcomes(store: ProcessedTableIOManager, inputs: str, settings: Settings, sunday: date,
                    episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame
                    ) -> tuple[dict[str, pl.DataFrame], str]:
    """The outcomes job's tables (:data:`REUSABLE`) that equal what the report would compute as
    of ``sunday`` from these accepted tables (pipelines.outcomes.lineage), by asset name; the
    report computes the others. Also says what was reused or why not, for the log and metadata."""
    code = code_fingerprint()
    settings_json = json.loads(json.dumps(settings.as_dict()))
    same_records: dict[str, bool] = {}

    def records_match(stamp) -> bool:  # once per distinct as-of date (the tables share one)
        if stamp.as_of not in same_records:
            same_records[stamp.as_of] = same_records_as_of(episodes, sessions, pain_scores, stamp.as_of_date(),
                                                            sunday)
        return same_records[stamp.as_of]

    same, refused = [], []
    for name, (filename, with_settings) in REUSABLE.items():
        stamp = store.lineage(filename)
        if stamp is None:
            refused.append(f"{filename} is missing or has no lineage")
        elif stamp.inputs != inputs or stamp.code != code:
            refused.append(f"{filename} was computed from other accepted tables or code")
        elif stamp.settings != (settings_json if with_settings else None):
            refused.append(f"{filename} was computed with other settings")
        elif not records_match(stamp):
            refused.append(f"{filename} is as of {stamp.as_of}, and records differ as of {sunday}")
        else:
            same.append(name)
    found = {}
    for name in reversed(same):  # a table's ONLY_TO_COMPUTE columns depend on the later tables read
        filename = REUSABLE[name][0]
        unused = {column for column, table in ONLY_TO_COMPUTE.get(name, {}).items() if table in found}
        columns = [c for c in REUSED_COLUMNS[name] if c not in unused] if name in REUSED_COLUMNS else None
        try:
            found[name] = store.read_file(filename, columns=columns)
        except (OSError, pl.exceptions.PolarsError) as exc:
            refused.append(f"could not read {filename} ({type(exc).__name__})")
    found = {name: found[name] for name in REUSABLE if name in found}
    said = f"reused {', '.join(found)} (same records)" if found else "reused nothing"
    return found, said + (f"; recomputed: {'; '.join(refused)}" if refused else "")


def build_weekly_report_asset(partitions_def: dg.WeeklyPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="weekly_report",
        group_name="reports",
        partitions_def=partitions_def,
        description="The directors' weekly report for one ISO week, computed as of its Sunday: "
                    "reports/weekly/<week>/report.html, report.pdf, summary.csv and figures/.",
        kinds={"html", "pdf"},
        # read directly (not as inputs) and only when their lineage shows they are the same
        # computation as of the week's Sunday; see stored_outcomes
        deps=list(REUSABLE),
        # only the columns the report uses of the two large tables (see ProcessedTableIOManager)
        ins={name: dg.AssetIn(metadata={"columns": columns}) for name, columns in REPORT_COLUMNS.items()},
    )
    def weekly_report(context: dg.AssetExecutionContext, paths: PipelineConfig, analysis_settings: AnalysisSettings,
                      run_guard: RunGuard, processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                      episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                      ingest_audit: pl.DataFrame, rejected_rows: pl.DataFrame) -> dg.MaterializeResult:
        settings = analysis_settings.to_settings()
        week = week_label(date.fromisoformat(context.partition_key))
        vocabulary = paths.vocabulary()
        sunday = date.fromisoformat(context.partition_key) + timedelta(days=6)
        stored, reuse = stored_outcomes(
            processed_io_manager, accepted_digest(paths, ingest_audit, episodes, sessions, pain_scores),
            settings, sunday, episodes, sessions, pain_scores)
        context.log.info(f"report for {week}: {reuse}")
        if "scored_sessions" not in stored:
            sessions, pain_scores = with_session_ids(processed_io_manager, sessions, pain_scores)
        inputs = ReportInputs(episodes=episodes, sessions=sessions, pain_scores=pain_scores, audit=ingest_audit,
                              rejected=rejected_rows, settings=settings, labels=vocabulary.labels,
                              run_date=paths.run_date(settings.timezone), code_version=code_version(),
                              vocabulary_fingerprint=vocabulary.fingerprint(), stored=stored)
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
            "outcomes": reuse,
        })

    return weekly_report


#: what Dagster 1.13 says, as a PreviewWarning, each time a check is given a partitions_def
PARTITIONED_CHECK_PREVIEW = "Specifying a partitions_def on an AssetCheckSpec"


def build_report_checks(partitions_def: dg.WeeklyPartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    # The check is partitioned like its asset, so that each week's report has its own result.
    # Dagster marks partitioned checks as a preview feature and warns every time one is
    # built, which `outcomes run` does for each job; that one warning (and no other) is not
    # for operators, so it is silenced here, where the check is built, and only here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(PARTITIONED_CHECK_PREVIEW), category=dg.PreviewWarning)
        return [_build_report_check(partitions_def)]


def _build_report_check(partitions_def: dg.WeeklyPartitionsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset="weekly_report", partitions_def=partitions_def, blocking=False,
                    description="The week's folder is complete and its summary.csv shows no count from 1 to k-1.")
    def weekly_report_published_safely(context: dg.AssetCheckExecutionContext, paths: PipelineConfig,
                                       analysis_settings: AnalysisSettings) -> dg.AssetCheckResult:
        from pipelines.reports.audit import published_problems

        week = week_label(date.fromisoformat(context.partition_key))
        folder = Path(paths.reports_dir) / "weekly" / week
        problems = published_problems(folder, analysis_settings.min_cell_size)
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})

    return weekly_report_published_safely
