"""Outcome metrics as assets (METRICS.md), computed as of the run's as-of date.

``scored_sessions`` and ``episode_outcomes`` are incremental (pipelines.outcomes.incremental):
they splice the previous run's rows of unchanged episodes (from ``paths.processed_dir``)
with the rows of the episodes they recompute, and say which they did in their Dagster
metadata (``incremental``).
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from pipelines.defs.markdown import markdown_table
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, ProcessedTableIOManager
from pipelines.io import write_table
from pipelines.outcomes import incremental as inc
from pipelines.outcomes.lineage import Lineage, code_fingerprint, inputs_digest
from pipelines.outcomes.metrics import episode_outcomes_from, episodes_as_of, scored_sessions as compute_scored
from pipelines.outcomes.metrics import session_relief_from
from pipelines.outcomes.summary import clinic_condition_summary as compute_clinic_summary
from pipelines.outcomes.summary import STATISTICS_COLUMNS, condition_summary_from
from pipelines.outcomes.tables import KM_COLUMNS
from pipelines.outcomes.tables import km_curves as compute_km_curves
from pipelines.outcomes.tables import pain_trajectories as compute_trajectories

GROUP = "outcomes"
IO = "processed_io_manager"

# Each step reads only the columns it uses of the large tables (see ProcessedTableIOManager).
# follow-ups are matched by episode_id and recorded_on (scored_sessions reads the columns the
# input digests hash: pipelines.outcomes.incremental.SCORE_COLUMNS)
_FOLLOWUP_SCORES = ["episode_id", "timepoint", "score", "recorded_on"]
_SCORED_FILE = "scored_sessions.parquet"
_OUTCOMES_FILE = "episode_outcomes.parquet"


def _columns(**tables: list[str]) -> dict[str, dg.AssetIn]:
    return {name: dg.AssetIn(metadata={"columns": columns}) for name, columns in tables.items()}


def accepted_digest(paths: PipelineConfig, audit: pl.DataFrame, episodes: pl.DataFrame, sessions: pl.DataFrame,
                    pain_scores: pl.DataFrame) -> str:
    """Names the accepted tables a step read (pipelines.outcomes.lineage.inputs_digest)."""
    return inputs_digest(audit, paths.vocabulary().fingerprint(),
                         {"episodes": episodes.height, "sessions": sessions.height, "pain_scores": pain_scores.height})


def _stamp_as(context: dg.AssetExecutionContext, store: ProcessedTableIOManager, filename: str) -> Lineage:
    """Stamp the step's table with the stamp of this run's ``filename``, the table it is
    computed from: the same accepted tables, as-of date, code (and settings, which the two
    share or neither has). The I/O manager stores the stamp in the Parquet footer, and the
    weekly report reuses the table only when its own inputs match. Returns the stamp."""
    lineage = store.lineage(filename)
    if lineage is None:
        raise dg.Failure(description=f"{filename}, which this step is computed from, has no lineage")
    context.add_output_metadata({"lineage": lineage.to_json()})
    return lineage


def _md(frame: pl.DataFrame, rows: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(frame.head(rows), float_format=".3g"))


def _previous_store(paths: PipelineConfig) -> ProcessedTableIOManager:
    """The previous run's published tables (the outcomes job's own I/O manager writes to its
    staging folder)."""
    return ProcessedTableIOManager(processed_dir=paths.processed_dir)


def _records_between(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame):
    return lambda first, second: inc.episodes_with_records_between(episodes, sessions, pain_scores, first, second)


def _incrementally(context: dg.AssetExecutionContext, plan: inc.Plan, filename: str, paths: PipelineConfig,
                   recompute, compute_all, expected_rows: int | None = None) -> pl.DataFrame:
    """The table by :func:`pipelines.outcomes.incremental.apply`; its output metadata
    ``incremental`` says whether it was spliced or computed in full, and why."""
    result, plan = inc.apply(plan, lambda: _previous_store(paths).read_file(filename), recompute, compute_all,
                             filename, expected_rows)
    context.log.info(f"{filename}: {plan.summary()}")
    context.add_output_metadata({"incremental": plan.summary()})
    return result


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": _SCORED_FILE},
          ins=_columns(sessions=list(inc.SESSION_COLUMNS), pain_scores=list(inc.SCORE_COLUMNS)),
          description="Sessions on or before the as-of date, numbered k = 1..n per episode, with their pre and "
                      "post scores: the step every session-level metric starts from, computed once. Also "
                      f"writes {inc.DIGESTS_FILE}, the per-episode input digests the next run compares with.")
def scored_sessions(context: dg.AssetExecutionContext, paths: PipelineConfig, analysis_settings: AnalysisSettings,
                    processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                    episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                    ingest_audit: pl.DataFrame) -> pl.DataFrame:
    as_of = paths.resolve_as_of(sessions, pain_scores, analysis_settings.timezone)
    current = Lineage(inputs=accepted_digest(paths, ingest_audit, episodes, sessions, pain_scores),
                      as_of=as_of.isoformat(), code=code_fingerprint())
    digests = inc.episode_digests(episodes, sessions, pain_scores)
    # read the previous digests before writing this run's (the same file when the I/O manager
    # writes straight into the processed folder)
    previous = inc.read_digests(Path(paths.processed_dir) / inc.DIGESTS_FILE)
    plan = inc.plan_update("scored_sessions", current, digests, previous,
                           _previous_store(paths).lineage(_SCORED_FILE),
                           _records_between(episodes, sessions, pain_scores))
    result = _incrementally(context, plan, _SCORED_FILE, paths,
                            lambda ids: inc.scored_sessions_of(ids, episodes, sessions, pain_scores, as_of),
                            lambda: compute_scored(episodes, sessions, pain_scores, as_of))
    # published with the tables (pipelines.pipeline._publish_tables), stamped like them
    write_table(digests, Path(processed_io_manager.processed_dir) / inc.DIGESTS_FILE, inc.digests_metadata(current))
    context.add_output_metadata({"lineage": current.to_json()})
    return result


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": _OUTCOMES_FILE},
          ins=_columns(sessions=["episode_id", "session_date"], pain_scores=_FOLLOWUP_SCORES),
          description="One row per accepted episode referred on or before the as-of date: baseline, "
                      "final, change, responders, sessions to response, exclusion reason (METRICS.md).")
def episode_outcomes(context: dg.AssetExecutionContext, paths: PipelineConfig, analysis_settings: AnalysisSettings,
                     processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                     episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                     scored_sessions: pl.DataFrame, ingest_audit: pl.DataFrame) -> pl.DataFrame:
    settings = analysis_settings.to_settings()
    as_of = paths.resolve_as_of(sessions, pain_scores, settings.timezone)
    current = Lineage(inputs=accepted_digest(paths, ingest_audit, episodes, sessions, pain_scores),
                      as_of=as_of.isoformat(), code=code_fingerprint(),
                      settings=json.loads(json.dumps(settings.as_dict())))
    # this run's digests, written by the scored_sessions step
    mine = inc.read_digests(Path(processed_io_manager.processed_dir) / inc.DIGESTS_FILE)
    if mine.frame is None or mine.stamp is None or not inc.same_computation(mine.stamp, current):
        plan = inc.full(f"this run's {inc.DIGESTS_FILE} is missing ({mine.problem or 'another computation'})")
    else:
        plan = inc.plan_update("episode_outcomes", current, mine.frame,
                               inc.read_digests(Path(paths.processed_dir) / inc.DIGESTS_FILE),
                               _previous_store(paths).lineage(_OUTCOMES_FILE),
                               _records_between(episodes, sessions, pain_scores))
    outcomes = _incrementally(
        context, plan, _OUTCOMES_FILE, paths,
        lambda ids: inc.episode_outcomes_of(ids, episodes, scored_sessions, pain_scores, as_of, settings),
        lambda: episode_outcomes_from(episodes, scored_sessions, pain_scores, as_of, settings),
        expected_rows=episodes_as_of(episodes, as_of).height)
    context.add_output_metadata({"lineage": current.to_json()})
    reasons = outcomes.group_by("exclusion_reason").len().sort("exclusion_reason")
    context.add_output_metadata({
        "as_of": as_of.isoformat(),
        "episodes": outcomes.height,
        "analysed": int(outcomes["analysed"].sum()),
        "exclusions": _md(reasons),
    })
    return outcomes


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": "session_relief.parquet"},
          ins=_columns(episodes=["episode_id", "referral_date", "clinic_id", "condition"]),
          description="Within-session relief (pre - post) of every session with both scores, as of the as-of date.")
def session_relief_table(context: dg.AssetExecutionContext,
                         processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                         episodes: pl.DataFrame, scored_sessions: pl.DataFrame) -> pl.DataFrame:
    as_of = _stamp_as(context, processed_io_manager, _SCORED_FILE).as_of_date()
    return session_relief_from(episodes, scored_sessions, as_of)


def _summary_inputs(*by: str) -> dict[str, dg.AssetIn]:
    return _columns(episode_outcomes=[*by, *STATISTICS_COLUMNS], session_relief_table=[*by, "relief"])


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": "condition_summary.csv"},
          ins=_summary_inputs("condition"),
          description="Per-condition outcomes with the ALL row, every column of METRICS.md.")
def condition_summary(context: dg.AssetExecutionContext, analysis_settings: AnalysisSettings,
                      episode_outcomes: pl.DataFrame, session_relief_table: pl.DataFrame) -> pl.DataFrame:
    summary = condition_summary_from(episode_outcomes, session_relief_table, analysis_settings.to_settings())
    context.add_output_metadata({"conditions": summary.height - 1, "table": _md(summary.select(
        "condition", "n_episodes", "n_analysed", "mean_change", "responder_30_rate",
        "median_sessions_to_response", "suppressed"))})
    return summary


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": "clinic_condition_summary.parquet"},
          ins=_summary_inputs("clinic_id", "condition"),
          description="The condition summary per clinic and condition (with a per-clinic ALL), for funnel plots.")
def clinic_condition_summary(context: dg.AssetExecutionContext, analysis_settings: AnalysisSettings,
                             processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                             episode_outcomes: pl.DataFrame, session_relief_table: pl.DataFrame) -> pl.DataFrame:
    _stamp_as(context, processed_io_manager, _OUTCOMES_FILE)
    return compute_clinic_summary(episode_outcomes, session_relief_table, analysis_settings.to_settings())


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": "pain_trajectories.parquet"},
          ins=_columns(episodes=["episode_id", "referral_date", "condition"],
                       scored_sessions=["episode_id", "k", "pre"]),
          description="Mean pre-session pain by session number per condition (and ALL), with n and 95% t interval.")
def pain_trajectories(context: dg.AssetExecutionContext,
                      processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                      episodes: pl.DataFrame, scored_sessions: pl.DataFrame) -> pl.DataFrame:
    as_of = _stamp_as(context, processed_io_manager, _SCORED_FILE).as_of_date()
    return compute_trajectories(scored_sessions, episodes_as_of(episodes, as_of))


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": "km_curves.parquet"},
          ins=_columns(episode_outcomes=list(KM_COLUMNS)),
          description="Kaplan-Meier curves of sessions to response per condition (and ALL): S(t), band, at risk.")
def km_curves(episode_outcomes: pl.DataFrame) -> pl.DataFrame:
    return compute_km_curves(episode_outcomes)
