"""Data-quality checks on the ingest outputs, visible in the Dagster UI.

Inputs read only the columns a check uses (AssetIn metadata ``columns``)."""


import dagster as dg
import polars as pl

from pipelines.defs.resources import ProcessedTableIOManager
from pipelines import checks as logic

COUNTS = ["accepted", "duplicate", "superseded", "rejected"]


@dg.asset_check(asset="ingest_audit", blocking=True, additional_ins={"rejected_rows": dg.AssetIn("rejected_rows")},
                description="Per file: rows_read = accepted + duplicate + superseded + rejected.")
def audit_reconciles(ingest_audit: pl.DataFrame, rejected_rows: pl.DataFrame) -> dg.AssetCheckResult:
    audit = ingest_audit.with_columns(sum(pl.col(c) for c in COUNTS).alias("_sum"))
    broken = audit.filter(pl.col("_sum") != pl.col("rows_read"))
    per_file = rejected_rows.group_by("source_file").agg(pl.len().alias("_rejected_rows"))
    mismatch = (audit.join(per_file, on="source_file", how="left")
                .filter(pl.col("_rejected_rows").fill_null(0) != pl.col("rejected")))
    not_read = audit.filter((pl.col("status") != "ingested") & (pl.col("rows_read") != 0))
    passed = broken.is_empty() and mismatch.is_empty() and not_read.is_empty()
    return dg.AssetCheckResult(passed=passed, metadata={
        "files": audit.height,
        "files_not_reconciling": broken["source_file"].to_list(),
        "files_whose_rejected_rows_differ": mismatch["source_file"].to_list(),
        "rows_read": int(audit["rows_read"].sum()),
    })


# The key and reference checks of the three accepted tables run as one step that reads each
# table once, and only the columns the checks use: at a million episodes reading the whole
# tables once per check cost more than the checks themselves. Each check is still its own
# blocking check in Dagster, with its own result; the functions below are the checks.

KEY_AND_REFERENCE_SPECS = [
    dg.AssetCheckSpec("episodes_key_unique", asset="episodes", blocking=True,
                      description="episode_id is unique among accepted episodes."),
    dg.AssetCheckSpec("sessions_key_unique", asset="sessions", blocking=True,
                      description="session_id is unique among accepted sessions."),
    dg.AssetCheckSpec("pain_scores_key_unique", asset="pain_scores", blocking=True,
                      description="(session_id, timepoint) unique for pre/post; (episode_id, recorded_on) for follow-ups."),
    dg.AssetCheckSpec("sessions_reference_episodes", asset="sessions", blocking=True,
                      description="Every accepted session names an accepted episode and is not before its referral."),
    dg.AssetCheckSpec("pain_scores_reference_sessions", asset="pain_scores", blocking=True,
                      description="Every accepted score names an accepted episode; pre/post an accepted session of it."),
]
COLUMNS = {"episodes": ["episode_id", "referral_date"],
           "sessions": ["session_id", "episode_id", "session_date"],
           "pain_scores": ["episode_id", "session_id", "timepoint", "recorded_on"]}


@dg.multi_asset_check(specs=KEY_AND_REFERENCE_SPECS, name="accepted_keys_and_references",
                      description="Keys unique and references resolved in the accepted tables (one read of each).")
def accepted_keys_and_references(processed_io_manager: dg.ResourceParam[ProcessedTableIOManager]):
    # read through the I/O manager's storage with a column list (an AssetIn on a checked asset
    # cannot carry the "columns" metadata)
    tables = {name: processed_io_manager.read(name, columns) for name, columns in COLUMNS.items()}
    episodes, sessions, pain_scores = tables["episodes"], tables["sessions"], tables["pain_scores"]
    # each session's episode, looked up once for both reference checks
    linked = logic.sessions_with_episode(sessions, episodes)
    yield episodes_key_unique(episodes)
    yield sessions_key_unique(sessions)
    yield pain_scores_key_unique(pain_scores)
    yield sessions_reference_episodes(sessions, episodes, linked=linked)
    yield pain_scores_reference_sessions(pain_scores, sessions, episodes, linked=linked)


def episodes_key_unique(episodes: pl.DataFrame) -> dg.AssetCheckResult:
    dupes = logic.duplicated_rows(episodes, ["episode_id"])
    return dg.AssetCheckResult(asset_key="episodes", check_name="episodes_key_unique", passed=dupes == 0,
                               metadata={"duplicate_keys": dupes})


def sessions_key_unique(sessions: pl.DataFrame) -> dg.AssetCheckResult:
    dupes = logic.duplicated_rows(sessions, ["session_id"])
    return dg.AssetCheckResult(asset_key="sessions", check_name="sessions_key_unique", passed=dupes == 0,
                               metadata={"duplicate_keys": dupes})


def pain_scores_key_unique(pain_scores: pl.DataFrame) -> dg.AssetCheckResult:
    prepost, follow = logic.score_key_counts(pain_scores)
    return dg.AssetCheckResult(asset_key="pain_scores", check_name="pain_scores_key_unique",
                               passed=prepost + follow == 0,
                               metadata={"duplicate_prepost_keys": prepost, "duplicate_followup_keys": follow})


def sessions_reference_episodes(sessions: pl.DataFrame, episodes: pl.DataFrame,
                                linked: pl.DataFrame | None = None) -> dg.AssetCheckResult:
    """``linked``: ``logic.sessions_with_episode`` of these sessions and episodes, when already made."""
    if linked is None:
        linked = logic.sessions_with_episode(sessions, episodes.select("episode_id", "referral_date"))
    orphans, early = logic.session_reference_counts(linked)
    return dg.AssetCheckResult(asset_key="sessions", check_name="sessions_reference_episodes",
                               passed=orphans == 0 and early == 0,
                               metadata={"orphan_sessions": orphans, "sessions_before_referral": early})


def pain_scores_reference_sessions(pain_scores: pl.DataFrame, sessions: pl.DataFrame, episodes: pl.DataFrame,
                                   linked: pl.DataFrame | None = None) -> dg.AssetCheckResult:
    """``linked``: ``logic.sessions_with_episode`` of these sessions and episodes, when already made."""
    if linked is None:
        linked = logic.sessions_with_episode(sessions.select("session_id", "episode_id"), episodes.select("episode_id"))
    orphans, wrong = logic.score_reference_counts(pain_scores, linked, episodes)
    return dg.AssetCheckResult(asset_key="pain_scores", check_name="pain_scores_reference_sessions",
                               passed=orphans == 0 and wrong == 0,
                               metadata={"scores_without_episode": orphans, "prepost_without_own_session": wrong})
