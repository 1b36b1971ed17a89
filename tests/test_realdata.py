"""Real trial data (Chow et al., Pain 2006; ordinalCont `neck_pain`), read in place from
../shared/realdata/neck_pain_laser/ (never copied into the repository).

Facts from its README: 90 episodes; six patients lack one follow-up; the active arm's mean
score falls from about 5.9 to about 2.8 at week 7, the sham arm's barely moves. Only session 1
has a `pre` score; the week-7 and week-12 ratings are `followup` scores (the outcome
observations). Production is then compared with the independent reference cell by cell.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import reference_metrics as ref

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "neck_pain_laser"
if not REALDATA.is_dir():  # fall back to the absolute shared location
    REALDATA = Path("/work/shared/realdata/neck_pain_laser")

pytestmark = pytest.mark.skipif(
    not (REALDATA / "episodes.csv").is_file(),
    reason=f"real trial data not found at {REALDATA} (../shared/realdata/neck_pain_laser/)",
)


@pytest.fixture(scope="module")
def trial():
    from pipelines.ingest import ingest_folder

    # first pass only to learn the last follow-up date; `today` well after any record
    probe = pl.read_csv(REALDATA / "pain_scores.csv", try_parse_dates=True)
    last_followup = probe.filter(pl.col("timepoint") == "followup")["recorded_on"].max()
    today = last_followup + timedelta(days=400)
    result = ingest_folder(REALDATA, today)
    fu = result.pain_scores.filter(pl.col("timepoint") == "followup")
    as_of = fu["recorded_on"].max()
    assert as_of == last_followup
    return result, as_of


def test_ingest_accepts_everything(trial):
    result, _ = trial
    assert result.rejected.height == 0, result.rejected.head()
    assert result.episodes.height == 90
    assert result.pain_scores.height == 264   # README: 90 patients, 264 ratings
    assert result.sessions.height == 90 * 14  # 14 sessions per protocol


def test_readme_facts(trial):
    result, as_of = trial
    episodes, sessions, scores = result.episodes, result.sessions, result.pain_scores
    assert episodes.height == 90
    assert set(episodes["condition"].unique()) == {"neck_pain"}

    # six patients lack one follow-up; everyone else has two
    per_episode = (episodes.select("episode_id")
                   .join(scores.filter(pl.col("timepoint") == "followup")
                         .group_by("episode_id").agg(n_followups=pl.len()),
                         on="episode_id", how="left")
                   .with_columns(pl.col("n_followups").fill_null(0)))
    counts = dict(per_episode.group_by("n_followups").agg(pl.len()).iter_rows())
    assert counts == {2: 84, 1: 6}, counts

    # only session 1 has a pre score
    first = sessions.sort("session_date", "session_id").group_by("episode_id").first()
    pre = scores.filter(pl.col("timepoint") == "pre")
    assert pre.height == 90
    assert set(pre["session_id"]) == set(first["session_id"])

    # arm means: baseline (pre of session 1) and the week-7 follow-up (49 days after session 1)
    fu = (scores.filter(pl.col("timepoint") == "followup")
          .join(first.select("episode_id", pl.col("session_date").alias("d1")), on="episode_id")
          .with_columns(week=(pl.col("recorded_on") - pl.col("d1")).dt.total_days() / 7))
    assert set(fu["week"].unique()) == {7.0, 12.0}
    arm = episodes.select("episode_id", "clinic_id")
    base = pre.join(arm, on="episode_id").group_by("clinic_id").agg(pl.col("score").mean())
    wk7 = (fu.filter(pl.col("week") == 7).join(arm, on="episode_id")
           .group_by("clinic_id").agg(pl.col("score").mean()))
    base = dict(base.iter_rows())
    wk7 = dict(wk7.iter_rows())
    assert base["active_laser"] == pytest.approx(5.9, abs=0.05)
    assert wk7["active_laser"] == pytest.approx(2.8, abs=0.05)
    assert abs(wk7["sham_laser"] - base["sham_laser"]) < 1.0          # barely moves
    assert base["active_laser"] - wk7["active_laser"] > 2.5           # the active arm falls

    # the as-of date is the last follow-up: every record counts
    assert as_of == scores["recorded_on"].max()


def test_episode_outcomes_vs_reference(trial):
    from pipelines.outcomes.metrics import episode_outcomes

    result, as_of = trial
    e, s, p = result.episodes, result.sessions, result.pain_scores
    actual = episode_outcomes(e, s, p, as_of)
    expected = ref.reference_episode_outcomes(e, s, p, as_of)
    assert actual.height == 90
    # every episode has a baseline > 0 and at least one follow-up after its sessions
    assert expected["exclusion_reason"].isna().all()
    assert (expected["sessions_attended"] == 14).all()
    problems = ref.compare_frames(actual, expected, "episode_id", ref.EPISODE_COLUMNS)
    assert not problems, "\n".join(problems)


def test_condition_summary_vs_reference(trial):
    from pipelines.outcomes.summary import condition_summary

    result, as_of = trial
    e, s, p = result.episodes, result.sessions, result.pain_scores
    actual = condition_summary(e, s, p, as_of)
    expected = ref.reference_condition_summary(e, s, p, as_of)
    assert sorted(actual["condition"].to_list()) == ["ALL", "neck_pain"]
    row = expected.set_index("condition").loc["neck_pain"]
    assert row["n_episodes"] == 90 and row["n_analysed"] == 90
    assert row["adherence"] == pytest.approx(1.0) and row["mean_sessions_attended"] == 14
    problems = ref.compare_frames(actual, expected, "condition", ref.SUMMARY_COLUMNS)
    assert not problems, "\n".join(problems)


def test_per_arm_summary_vs_reference(trial):
    """The same with the trial arm as the 'condition' (codes a clinic added are allowed),
    so that BH, Wilcoxon and Kaplan-Meier run on two real groups that differ."""
    from pipelines.outcomes.summary import condition_summary

    result, as_of = trial
    e = result.episodes.with_columns(pl.col("clinic_id").alias("condition"))
    s, p = result.sessions, result.pain_scores
    actual = condition_summary(e, s, p, as_of)
    expected = ref.reference_condition_summary(e, s, p, as_of)
    assert sorted(actual["condition"].to_list()) == ["ALL", "active_laser", "sham_laser"]
    exp = expected.set_index("condition")
    # the active arm improves more than sham
    assert exp.loc["active_laser", "mean_change"] > exp.loc["sham_laser", "mean_change"]
    problems = ref.compare_frames(actual, expected, "condition", ref.SUMMARY_COLUMNS)
    assert not problems, "\n".join(problems)
