"""Outcome metrics as assets (METRICS.md), computed as of the run's as-of date.

Two multi-asset steps do most of the work, each reading its large inputs once:

* ``outcome_tables``: ``scored_sessions``, ``episode_outcomes``, ``session_relief_table``
  and ``pain_trajectories``. The first two are incremental (pipelines.outcomes.incremental):
  they splice the previous run's rows of unchanged episodes (from ``paths.processed_dir``)
  with the rows of the episodes they recompute, and say which they did in their Dagster
  metadata (``incremental``); the other two are computed from the scored sessions and
  episode outcomes in memory.
* ``outcome_summaries``: ``condition_summary`` (with its typed, stamped Parquet twin
  ``condition_summary_table``) and ``clinic_condition_summary``, which read the same columns
  and share their groupings. They wait for the blocking ``episode_outcomes_consistent`` check.
"""

import json

import dagster as dg
import polars as pl

from pipelines.defs.markdown import markdown_table
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, ProcessedTableIOManager
from pipelines.io import locate, write_table
from pipelines.outcomes import incremental as inc
from pipelines.outcomes.lineage import Lineage, code_fingerprint, inputs_digest
from pipelines.outcomes.metrics import episode_outcomes_from, episodes_as_of, scored_sessions as compute_scored
from pipelines.outcomes.metrics import episode_rows, session_relief_from
from pipelines.outcomes.summary import STATISTICS_COLUMNS, summaries
from pipelines.outcomes.tables import KM_COLUMNS
from pipelines.outcomes.tables import km_curves as compute_km_curves
from pipelines.outcomes.tables import pain_trajectories as compute_trajectories

GROUP = "outcomes"
IO = "processed_io_manager"

# Each step reads only the columns it uses of the large tables (see ProcessedTableIOManager).
_SCORED_FILE = "scored_sessions.parquet"
_OUTCOMES_FILE = "episode_outcomes.parquet"


def _columns(**tables: list[str]) -> dict[str, dg.AssetIn]:
    return {name: dg.AssetIn(metadata={"columns": columns}) for name, columns in tables.items()}


def accepted_digest(paths: PipelineConfig, audit: pl.DataFrame, episodes: pl.DataFrame, sessions: pl.DataFrame,
                    pain_scores: pl.DataFrame) -> str:
    """Names the accepted tables a step read (pipelines.outcomes.lineage.inputs_digest)."""
    return inputs_digest(audit, paths.vocabulary().fingerprint(),
                         {"episodes": episodes.height, "sessions": sessions.height, "pain_scores": pain_scores.height})


def _stamp_of(store: ProcessedTableIOManager, filename: str) -> Lineage:
    """The stamp of this run's ``filename``, for a table computed from it: the same accepted
    tables, as-of date, code (and settings, which the two share or neither has). The I/O
    manager stores a step's "lineage" output metadata in the Parquet footer, and the weekly
    report reuses the table only when its own inputs match."""
    lineage = store.lineage(filename)
    if lineage is None:
        raise dg.Failure(description=f"{filename}, which this step is computed from, has no lineage")
    return lineage


def _md(frame: pl.DataFrame, rows: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(frame.head(rows), float_format=".3g"))


def _previous_store(paths: PipelineConfig) -> ProcessedTableIOManager:
    """The previous run's published tables (the outcomes job's own I/O manager writes to its
    staging folder)."""
    return ProcessedTableIOManager(processed_dir=paths.processed_dir)


def _records_between(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame):
    return lambda first, second: inc.episodes_with_records_between(episodes, sessions, pain_scores, first, second)


def _incrementally(context: dg.AssetExecutionContext, plan: inc.Plan, filename: str, output: str,
                   paths: PipelineConfig, recompute, compute_all, expected_rows: int | None = None) -> pl.DataFrame:
    """The table by :func:`pipelines.outcomes.incremental.apply`; the output's metadata
    ``incremental`` says whether it was spliced or computed in full, and why."""
    result, plan = inc.apply(plan, lambda: _previous_store(paths).read_file(filename), recompute, compute_all,
                             filename, expected_rows)
    context.log.info(f"{filename}: {plan.summary()}")
    context.add_output_metadata({"incremental": plan.summary()}, output_name=output)
    return result


def _out(filename: str, description: str) -> dg.AssetOut:
    return dg.AssetOut(io_manager_key=IO, metadata={"filename": filename}, description=description)


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "scored_sessions": _out(
            _SCORED_FILE, "Sessions on or before the as-of date, numbered k = 1..n per episode, with their pre "
            "and post scores: the table every session-level metric starts from, computed once. The step also "
            f"writes {inc.DIGESTS_FILE}, the per-episode input digests the next run compares with."),
        "episode_outcomes": _out(
            _OUTCOMES_FILE, "One row per accepted episode referred on or before the as-of date: baseline, final, "
            "change, responders, sessions to response, exclusion reason (METRICS.md)."),
        "session_relief_table": _out(
            "session_relief.parquet",
            "Within-session relief (pre - post) of every session with both scores, as of the as-of date."),
        "pain_trajectories": _out(
            "pain_trajectories.parquet",
            "Mean pre-session pain by session number per condition (and ALL), with n and 95% t interval."),
    },
    ins=_columns(sessions=list(inc.SESSION_COLUMNS), pain_scores=list(inc.SCORE_COLUMNS)),
)
def outcome_tables(context: dg.AssetExecutionContext, paths: PipelineConfig, analysis_settings: AnalysisSettings,
                   processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                   episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                   ingest_audit: pl.DataFrame):
    """The four tables computed from the accepted sessions, in one step: each large input is
    read and each episode's rows are found once for all of them, and the scored sessions
    stay in memory for the three tables computed from them. Scored sessions and episode
    outcomes are incremental (pipelines.outcomes.incremental), and the scored sessions of
    the episodes they recompute are computed once for both; session relief and the
    trajectories are computed from the scored sessions (reading last run's relief table
    costs more than computing it), each session's episode columns taken by position in the
    episode outcomes (pipelines.outcomes.metrics.episode_rows) instead of looked up."""
    settings = analysis_settings.to_settings()
    as_of = paths.resolve_as_of(sessions, pain_scores, settings.timezone)
    inputs = accepted_digest(paths, ingest_audit, episodes, sessions, pain_scores)
    scored_stamp = Lineage(inputs=inputs, as_of=as_of.isoformat(), code=code_fingerprint())
    outcomes_stamp = Lineage(inputs=inputs, as_of=as_of.isoformat(), code=code_fingerprint(),
                             settings=json.loads(json.dumps(settings.as_dict())))
    # parts of the accepted tables seen last run are not hashed again (inc.PartSums)
    # (no cache folder when the processed tables are on object storage: every row is hashed)
    cache = paths.digest_cache_dir()
    part_sums = inc.PartSums(cache) if cache is not None else None
    digests = inc.episode_digests(episodes, sessions, pain_scores,
                                  {t: processed_io_manager.part_records(t) for t in ("episodes", "sessions", "pain_scores")},
                                  part_sums)
    if part_sums is not None:
        part_sums.finish()
        context.log.info(f"{inc.DIGESTS_FILE}: {part_sums.reused} parts of the accepted tables summed last run, "
                         f"{part_sums.hashed} hashed")
    # read the previous digests and stamps before writing this run's (the same files when the
    # I/O manager writes straight into the processed folder)
    previous = _previous_store(paths)
    planner = inc.Planner(digests, inc.read_digests(locate(paths.processed_dir, inc.DIGESTS_FILE)),
                          _records_between(episodes, sessions, pain_scores))
    scored_plan = planner.plan("scored_sessions", scored_stamp, previous.lineage(_SCORED_FILE))
    outcomes_plan = planner.plan("episode_outcomes", outcomes_stamp, previous.lineage(_OUTCOMES_FILE))
    # published with the tables (pipelines.pipeline._publish_tables), stamped like scored_sessions
    write_table(digests, locate(processed_io_manager.processed_dir, inc.DIGESTS_FILE),
                inc.digests_metadata(scored_stamp))
    # the incremental plans of one run recompute the same episodes: their rows are picked out
    # and their scored sessions computed once for both tables, before the previous tables are read
    recompute = next((p.recompute for p in (scored_plan, outcomes_plan) if p.incremental), None)
    mine_scored = mine_outcomes = None
    if recompute is not None:
        mine = inc.rows_of(recompute, episodes, sessions, pain_scores)
        mine_scored = inc.scored_sessions_of(recompute, *mine, as_of)
        if outcomes_plan.incremental:
            mine_outcomes = inc.episode_outcomes_of(recompute, mine[0], mine_scored, mine[2], as_of, settings)
        del mine

    scored = _incrementally(context, scored_plan, _SCORED_FILE, "scored_sessions", paths,
                            lambda ids: inc.only(mine_scored, ids),
                            lambda: compute_scored(episodes, sessions, pain_scores, as_of))
    del mine_scored
    yield dg.Output(scored, output_name="scored_sessions", metadata={"lineage": scored_stamp.to_json()})

    outcomes = _incrementally(
        context, outcomes_plan, _OUTCOMES_FILE, "episode_outcomes", paths, lambda ids: inc.only(mine_outcomes, ids),
        lambda: episode_outcomes_from(episodes, scored, pain_scores, as_of, settings),
        expected_rows=episodes.select((pl.col("referral_date") <= as_of).sum()).item())
    del mine_outcomes
    reasons = outcomes.group_by("exclusion_reason").len().sort("exclusion_reason")
    yield dg.Output(outcomes, output_name="episode_outcomes", metadata={
        "lineage": outcomes_stamp.to_json(),
        "as_of": as_of.isoformat(),
        "episodes": outcomes.height,
        "analysed": int(outcomes["analysed"].sum()),
        "exclusions": _md(reasons),
    })
    # computed from the scored sessions, so stamped like them; each reads a few episode
    # columns, by position in the episode outcomes when the two are laid out as computed
    per_episode = outcomes.select("episode_id", "sessions_attended", "clinic_id", "condition")
    del outcomes  # not needed below: free it before the relief table is built
    rows = episode_rows(scored, per_episode)
    if rows is None:
        context.log.warning("scored_sessions and episode_outcomes are not laid out as computed: "
                            "relief and trajectories look every episode up")
        per_episode = episodes_as_of(episodes.select("episode_id", "referral_date", "clinic_id", "condition"), as_of)
    yield dg.Output(session_relief_from(per_episode, scored, as_of, rows), output_name="session_relief_table",
                    metadata={"lineage": scored_stamp.to_json()})
    yield dg.Output(compute_trajectories(scored, per_episode.select("episode_id", "condition"), rows),
                    output_name="pain_trajectories", metadata={"lineage": scored_stamp.to_json()})


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "condition_summary": _out(
            "condition_summary.csv", "Per-condition outcomes with the ALL row, every column of METRICS.md."),
        "condition_summary_table": _out(
            "condition_summary.parquet",
            "The same table as condition_summary.csv, typed and stamped with its lineage (what the weekly "
            "report reuses instead of computing it again; notebooks may read either)."),
        "clinic_condition_summary": _out(
            "clinic_condition_summary.parquet",
            "The condition summary per clinic and condition (with a per-clinic ALL), for funnel plots."),
    },
    ins=_columns(episode_outcomes=["clinic_id", "condition", *STATISTICS_COLUMNS],
                 session_relief_table=["clinic_id", "condition", "relief"]),
)
def outcome_summaries(analysis_settings: AnalysisSettings,
                      processed_io_manager: dg.ResourceParam[ProcessedTableIOManager],
                      episode_outcomes: pl.DataFrame, session_relief_table: pl.DataFrame):
    """Both summaries in one step: they read the same columns and share their groupings
    (pipelines.outcomes.summary.summaries). Computed from the episode outcomes alone (and
    the relief computed with them), both are stamped like episode_outcomes."""
    summary, clinics = summaries(episode_outcomes, session_relief_table, analysis_settings.to_settings())
    stamp = _stamp_of(processed_io_manager, _OUTCOMES_FILE).to_json()
    yield dg.Output(summary, output_name="condition_summary", metadata={
        "conditions": summary.height - 1, "table": _md(summary.select(
            "condition", "n_episodes", "n_analysed", "mean_change", "responder_30_rate",
            "median_sessions_to_response", "suppressed"))})
    yield dg.Output(summary, output_name="condition_summary_table", metadata={"lineage": stamp})
    yield dg.Output(clinics, output_name="clinic_condition_summary", metadata={"lineage": stamp})


@dg.asset(group_name=GROUP, io_manager_key=IO, metadata={"filename": "km_curves.parquet"},
          ins=_columns(episode_outcomes=list(KM_COLUMNS)),
          description="Kaplan-Meier curves of sessions to response per condition (and ALL): S(t), band, at risk.")
def km_curves(episode_outcomes: pl.DataFrame) -> pl.DataFrame:
    return compute_km_curves(episode_outcomes)
