"""Session relief and pain trajectories with each scored session's episode taken by position
in the episode outcomes (``pipelines.outcomes.metrics.episode_rows``) equal the ones that look
every episode up, exactly (values, dtypes, row order); the layout check refuses every frame
pair not laid out as the pipeline computes them, and the step then looks the episodes up."""

from __future__ import annotations

import random
from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.outcomes.metrics import episode_outcomes_from, episode_rows, episodes_as_of, scored_sessions
from pipelines.outcomes.metrics import session_relief_from, with_episode_columns
from pipelines.outcomes.summary import ALL
from pipelines.outcomes.tables import pain_trajectories
from pipelines.settings import Settings
from test_outcomes_incremental import START, accepted


def _tables(seed: int, n: int):
    rng = random.Random(seed)
    episodes, sessions, scores = accepted(n, seed, span_days=rng.choice([40, 120]))
    as_of = START + timedelta(days=rng.randrange(0, 200))
    return episodes, scored_sessions(episodes, sessions, scores, as_of), scores, as_of


@pytest.mark.parametrize("seed", range(16))
def test_relief_and_trajectories_by_position_equal_looking_every_episode_up(seed):
    episodes, scored, scores, as_of = _tables(seed, random.Random(seed).choice([1, 3, 40, 250]))
    if seed % 4 == 1:  # some episodes without a condition
        episodes = episodes.with_columns(pl.when(pl.col("episode_id").str.ends_with("1")).then(None)
                                         .otherwise(pl.col("condition")).alias("condition"))
    if seed % 4 == 2:  # a condition named ALL: its rows are grouped with the pooled ones
        episodes = episodes.with_columns(pl.when(pl.col("condition") == "neck_pain").then(pl.lit(ALL))
                                         .otherwise(pl.col("condition")).alias("condition"))
    outcomes = episode_outcomes_from(episodes, scored, scores, as_of, Settings())
    per_episode = outcomes.select("episode_id", "sessions_attended", "clinic_id", "condition")
    rows = episode_rows(scored, per_episode)
    assert rows is not None and rows.len() == scored.height
    assert_frame_equal(session_relief_from(per_episode, scored, as_of, rows),
                       session_relief_from(episodes, scored, as_of), check_exact=True)
    assert_frame_equal(pain_trajectories(scored, per_episode.select("episode_id", "condition"), rows),
                       pain_trajectories(scored, episodes_as_of(episodes, as_of)), check_exact=True)


def test_episode_rows_by_hand():
    scored = pl.DataFrame({"episode_id": ["a", "a", "c", "d", "d", "d"], "k": [1, 2, 1, 1, 2, 3]})
    outcomes = pl.DataFrame({"episode_id": ["a", "b", "c", "d", "e"], "sessions_attended": [2, 0, 1, 3, 0],
                             "condition": ["x", "y", "z", None, "x"]})
    rows = episode_rows(scored, outcomes)
    assert rows.to_list() == [0, 0, 2, 3, 3, 3]
    out = with_episode_columns(scored, outcomes, ["condition"], rows)
    assert out["condition"].to_list() == ["x", "x", "z", None, None, None]
    assert_frame_equal(out, with_episode_columns(scored, outcomes, ["condition"]), check_exact=True)
    # no sessions at all
    empty = scored.clear()
    assert episode_rows(empty, outcomes.with_columns(pl.lit(0, pl.Int64).alias("sessions_attended"))).len() == 0
    assert episode_rows(empty, outcomes.clear()).len() == 0


@pytest.mark.parametrize("change", [
    "count one more", "count one less", "counts moved", "run lengths moved", "negative count", "null count", "other id at a run start",
    "other id inside a run", "rows swapped", "null id", "episode missing", "outcomes reordered"])
def test_episode_rows_refuses_frames_not_laid_out_as_computed(change):
    scored = pl.DataFrame({"episode_id": ["a", "a", "c", "d", "d", "d"], "k": [1, 2, 1, 1, 2, 3]})
    outcomes = pl.DataFrame({"episode_id": ["a", "b", "c", "d"], "sessions_attended": [2, 0, 1, 3]})
    counts = pl.col("sessions_attended")
    ids = scored["episode_id"].to_list()
    if change == "count one more":
        outcomes = outcomes.with_columns(pl.when(pl.col("episode_id") == "c").then(2).otherwise(counts).alias(
            "sessions_attended"))
    elif change == "count one less":
        outcomes = outcomes.with_columns(pl.when(pl.col("episode_id") == "d").then(2).otherwise(counts).alias(
            "sessions_attended"))
    elif change == "counts moved":  # the same total, other run lengths
        outcomes = outcomes.with_columns(pl.Series("sessions_attended", [1, 1, 1, 3]))
    elif change == "run lengths moved":  # the same total, episodes and runs, other run lengths
        outcomes = outcomes.with_columns(pl.Series("sessions_attended", [1, 0, 2, 3]))
    elif change == "negative count":
        outcomes = outcomes.with_columns(pl.Series("sessions_attended", [2, -1, 2, 3]))
    elif change == "null count":
        outcomes = outcomes.with_columns(pl.Series("sessions_attended", [2, None, 1, 3]))
    elif change == "other id at a run start":
        scored = scored.with_columns(pl.Series("episode_id", ["a", "a", "b", "d", "d", "d"]))
    elif change == "other id inside a run":
        scored = scored.with_columns(pl.Series("episode_id", ["a", "a", "c", "d", "b", "d"]))
    elif change == "rows swapped":
        scored = scored.with_columns(pl.Series("episode_id", [ids[2], *ids[:2], *ids[3:]]))
    elif change == "null id":
        scored = scored.with_columns(pl.Series("episode_id", ["a", "a", None, "d", "d", "d"]))
    elif change == "episode missing":
        outcomes = outcomes.filter(pl.col("episode_id") != "c")
    elif change == "outcomes reordered":
        outcomes = outcomes.reverse()
    assert episode_rows(scored, outcomes) is None


def test_the_step_looks_the_episodes_up_when_the_layout_check_refuses(tmp_path, monkeypatch):
    """The outcomes job's relief and trajectories are the same tables when episode_rows
    refuses (the fallback), and the step says so."""
    import dagster as dg

    import pipelines.defs.outcomes.assets as assets
    from pipelines.pipeline import run_pipeline
    from pipelines.synth import generate

    raw = tmp_path / "raw"
    generate(150, 3, raw)
    instance = dg.DagsterInstance.ephemeral()
    names = ("session_relief.parquet", "pain_trajectories.parquet", "scored_sessions.parquet")

    def tables(folder):
        outcome = run_pipeline(raw, folder / "processed", folder / "reports", today="2026-11-27", instance=instance)
        assert outcome.success, outcome.failure
        return {name: pl.read_parquet(folder / "processed" / name) for name in names}, outcome.run_id

    by_position, _ = tables(tmp_path / "a")
    calls = []
    monkeypatch.setattr(assets, "episode_rows", lambda *args: calls.append(args) or None)
    looked_up, run_id = tables(tmp_path / "b")
    assert len(calls) == 1
    assert by_position["session_relief.parquet"].height > 0
    for name in names:
        assert_frame_equal(looked_up[name], by_position[name], check_exact=True)
    messages = [record.user_message for record in instance.all_logs(run_id)]
    assert any("relief and trajectories look every episode up" in message for message in messages)
