"""The Definitions load, and their asset keys, checks, jobs and resources are pinned."""

import dagster as dg

from pipelines.definitions import defs

ASSETS = {
    "episodes", "sessions", "pain_scores", "rejected_rows", "ingest_audit",
    "scored_sessions", "episode_outcomes", "session_relief_table", "condition_summary", "condition_summary_table",
    "clinic_condition_summary", "pain_trajectories", "km_curves",
}
CHECKS = {
    ("ingest_audit", "audit_reconciles"),
    ("episodes", "episodes_key_unique"),
    ("sessions", "sessions_key_unique"),
    ("pain_scores", "pain_scores_key_unique"),
    ("sessions", "sessions_reference_episodes"),
    ("pain_scores", "pain_scores_reference_sessions"),
    ("episode_outcomes", "episode_outcomes_consistent"),
    ("condition_summary", "condition_summary_invariants"),
    ("weekly_report", "weekly_report_published_safely"),
}


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_asset_keys_are_pinned():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys >= ASSETS
    assert keys == ASSETS | {"weekly_report"}


def test_asset_checks_are_pinned():
    graph = defs.resolve_asset_graph()
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert CHECKS <= checks


def test_ingest_and_outcome_checks_are_blocking():
    graph = defs.resolve_asset_graph()
    for key in graph.asset_check_keys:
        if (key.asset_key.to_user_string(), key.name) in CHECKS and key.name != "weekly_report_published_safely":
            assert graph.get_check_spec(key).blocking, key


def test_jobs_and_resources():
    job = defs.resolve_job_def("outcomes_job")
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert ASSETS <= selected
    assert {"paths", "analysis_settings", "processed_io_manager"} <= set(defs.resources)
    report_job = defs.resolve_job_def("weekly_report_job")
    assert "weekly_report" in {k.to_user_string() for k in report_job.asset_layer.selected_asset_keys}
    assert report_job.partitions_def is not None
    assert {s.name for s in defs.schedules} == {"weekly_report_schedule"}
    assert {s.name for s in defs.sensors} == {"new_exports_sensor"}


def test_reference_checks_fail_on_orphans_with_projected_inputs():
    """The reference checks read only a few columns of their extra inputs and still catch orphans."""
    import datetime as dt

    import polars as pl

    from pipelines.defs.ingest.checks import pain_scores_reference_sessions, sessions_reference_episodes

    episodes = pl.DataFrame({"episode_id": ["E1"], "referral_date": [dt.date(2026, 1, 5)]})
    sessions = pl.DataFrame({"session_id": ["S1", "S2", "S3"], "episode_id": ["E1", "E9", "E1"],
                             "session_date": [dt.date(2026, 1, 6), dt.date(2026, 1, 6), dt.date(2026, 1, 4)]})
    result = sessions_reference_episodes(sessions=sessions, episodes=episodes)
    assert not result.passed
    assert result.metadata["orphan_sessions"].value == 1
    assert result.metadata["sessions_before_referral"].value == 1
    scores = pl.DataFrame({"episode_id": ["E1", "E1", "E7"], "session_id": ["S1", "S2", None],
                           "timepoint": ["pre", "pre", "followup"], "score": [3.0, 4.0, 2.0],
                           "recorded_on": [None, None, dt.date(2026, 2, 1)]})
    result = pain_scores_reference_sessions(pain_scores=scores, sessions=sessions.select("session_id", "episode_id"),
                                            episodes=episodes.select("episode_id"))
    assert not result.passed
    assert result.metadata["scores_without_episode"].value == 1
    assert result.metadata["prepost_without_own_session"].value == 1


def test_pain_scores_key_check_counts_every_row_of_a_duplicated_key():
    import datetime as dt

    import polars as pl

    from pipelines.defs.ingest.checks import pain_scores_key_unique

    day = dt.date(2026, 1, 1)
    scores = pl.DataFrame({
        "episode_id": ["E1", "E1", "E1", "E2", "E2", "E2"], "session_id": ["S1", "S1", "S2", None, None, None],
        "timepoint": ["pre", "pre", "pre", "followup", "followup", "followup"], "score": [1.0] * 6,
        "recorded_on": [None, None, None, day, day, dt.date(2026, 1, 2)]})
    result = pain_scores_key_unique(pain_scores=scores)
    assert not result.passed
    assert result.metadata["duplicate_prepost_keys"].value == 2
    assert result.metadata["duplicate_followup_keys"].value == 2
    assert pain_scores_key_unique(pain_scores=scores.slice(2, 2)).passed


def test_key_and_reference_checks_share_one_step_and_still_block(tmp_path, monkeypatch):
    """The five key and reference checks run in one step (each table read once); a failing
    one still stops the outcome assets, and the run publishes no table."""
    import polars as pl

    from pipelines.defs.ingest import checks
    from pipelines.pipeline import run_pipeline
    from pipelines.synth import generate

    step_checks = {spec.key.name for spec in checks.KEY_AND_REFERENCE_SPECS}
    assert step_checks == {name for _, name in CHECKS} & {
        "episodes_key_unique", "sessions_key_unique", "pain_scores_key_unique",
        "sessions_reference_episodes", "pain_scores_reference_sessions"}
    assert all(spec.blocking for spec in checks.KEY_AND_REFERENCE_SPECS)

    raw = tmp_path / "raw"
    generate(60, 3, raw)
    real = checks.sessions_key_unique

    def failing(sessions: pl.DataFrame) -> dg.AssetCheckResult:
        result = real(sessions)
        assert result.passed  # the real check passes on these data: the failure below is the stand-in
        return dg.AssetCheckResult(asset_key="sessions", check_name="sessions_key_unique", passed=False,
                                   metadata={"duplicate_keys": 1})

    monkeypatch.setattr(checks, "sessions_key_unique", failing)
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(raw, tmp_path / "processed", tmp_path / "reports", today="2026-11-27", instance=instance)
    assert not outcome.success and not outcome.tables_published
    assert "sessions_key_unique" in outcome.failure, outcome.failure
    assert not (tmp_path / "processed" / "episode_outcomes.parquet").exists()
    assert not (tmp_path / "processed" / "sessions.parquet").exists()
    materialized = {key.to_user_string() for key in instance.get_asset_keys()
                    if instance.get_latest_materialization_event(key) is not None}
    assert "sessions" in materialized and "scored_sessions" not in materialized
