"""`outcomes run` end to end on a small hand-made export folder."""

import gc
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pipelines.cli import build_parser, main
from pipelines.pipeline import run_pipeline

EPISODES = """episode_id,patient_id,clinic_id,condition,referral_date,prescribed_sessions
E1,P1,C1,LBP,2026-01-05,4
E2,P2,C1,neck pain,2026-01-06,
E3,P3,C2,migraine,2026-01-07,2
"""
SESSIONS = """session_id,episode_id,therapist_id,session_date
S1,E1,T1,2026-01-05
S2,E1,T1,2026-01-12
S3,E2,T1,2026-01-06
S4,E2,T1,2026-01-13
S5,E9,T1,2026-01-13
"""
SCORES = """episode_id,session_id,timepoint,score,recorded_on
E1,S1,pre,8,
E1,S1,post,5,
E1,S2,pre,4,
E2,S3,pre,6,
E2,S4,pre,6,
E2,,followup,3,2026-02-01
E3,,followup,11,2026-02-01
"""


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "episodes_2026-01.csv").write_text(EPISODES)
    (raw / "sessions_2026-01.csv").write_text(SESSIONS)
    (raw / "pain_scores_2026-01.csv").write_text(SCORES)
    (raw / "patients.csv").write_text("name\nAlice\n")
    return raw


def test_run_writes_contract_outputs_and_summary(raw, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    # the deployment's folder variables (docs/deployment.md) are not this command's: its options are
    for name in ("OUTCOMES_RAW_DIR", "OUTCOMES_PROCESSED_DIR", "OUTCOMES_REPORTS_DIR", "OUTCOMES_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "elsewhere" / name))
    processed = tmp_path / "processed"
    collector = (gc.isenabled(), gc.get_freeze_count())
    code = main(["run", "--raw-dir", str(raw), "--processed-dir", str(processed),
                 "--reports-dir", str(tmp_path / "reports"), "--today", "2026-03-01"])
    out = capsys.readouterr()
    assert code == 0, out.err
    # called from Python (argv given), main leaves the garbage collector as it was (see cli._loading)
    assert (gc.isenabled(), gc.get_freeze_count()) == collector
    for name in ("episode_outcomes.parquet", "condition_summary.csv", "rejected_rows.csv", "ingest_audit.csv"):
        assert (processed / name).is_file(), name
    assert (processed / ".cache" / "ingest").is_dir() and not (tmp_path / "elsewhere").exists()
    assert "Files: 3 ingested, 0 refused, 1 ignored" in out.out
    assert "Rows: 15 read = 13 accepted + 0 duplicate + 0 superseded + 2 rejected" in out.out
    assert "episode_id: '…' is not an accepted episode" in out.out
    assert "score: <value> is outside 0..10" in out.out
    assert "Metrics as of 2026-02-01" in out.out

    outcomes = pl.read_parquet(processed / "episode_outcomes.parquet").sort("episode_id")
    # E1: B = 8, F = pre of session 2 = 4 -> change 4, 50 %, response at t = 1
    e1 = outcomes.row(0, named=True)
    assert (e1["baseline_pain"], e1["final_pain"], e1["change"], e1["pct_change"]) == (8, 4, 4, 50)
    assert (e1["responder_30"], e1["responder_50"], e1["sessions_to_response"], e1["response_observed"]) == (
        True, True, 1, True)
    # E2: B = 6; observations pre(S4) 6 at t=1, followup 3 at t=2 -> final 3, response at t=2
    e2 = outcomes.row(1, named=True)
    assert (e2["final_pain"], e2["change"], e2["sessions_to_response"]) == (3, 3, 2)
    assert outcomes.row(2, named=True)["exclusion_reason"] == "no sessions"

    summary = pl.read_csv(processed / "condition_summary.csv")
    assert summary["condition"].to_list() == ["headache_migraine", "low_back_pain", "neck_pain", "ALL"]
    assert summary.filter(pl.col("condition") == "ALL")["n_analysed"].item() == 2
    audit = pl.read_csv(processed / "ingest_audit.csv")
    assert audit.filter(pl.col("source_file") == "patients.csv")["status"].item() == "ignored"
    rejected = pl.read_csv(processed / "rejected_rows.csv")
    assert sorted(rejected["line"].to_list()) == [6, 8]
    assert json.loads(rejected.filter(pl.col("table") == "pain_scores")["raw"].item())["score"] == "11"


def test_run_is_recorded_in_the_instance(raw, tmp_path):
    with dg.instance_for_test() as instance:
        outcome = run_pipeline(raw_dir=raw, processed_dir=tmp_path / "p", reports_dir=tmp_path / "q",
                               today="2026-03-01", instance=instance)
        assert outcome.success
        record = instance.get_run_by_id(outcome.run_id)
        assert record is not None and record.is_success
        materialized = instance.get_latest_materialization_event(dg.AssetKey("condition_summary"))
        assert materialized is not None


def test_missing_raw_dir_is_a_one_line_error(tmp_path, capsys):
    code = main(["run", "--raw-dir", str(tmp_path / "nope"), "--processed-dir", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]


def test_an_object_storage_url_is_refused_with_a_pointer(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    code = main(["run", "--raw-dir", "raw", "--processed-dir", "s3://bucket/processed", "--reports-dir", "r"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--processed-dir s3:/bucket/processed looks like object storage" in err[0] and "deployment.md" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no "s3:" folder, no lock files


def test_bad_date_option_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--as-of", "2026-02-30"])
    assert exc.value.code == 2
    assert "not a date" in capsys.readouterr().err


def test_help_explains_every_option():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--help"], capture_output=True,
                            text=True, check=True)
    for option in ("--raw-dir", "--processed-dir", "--reports-dir", "--as-of", "--today", "--settings",
                   "--vocabulary", "--quiet"):
        assert option in result.stdout
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "synth", "--help"], capture_output=True,
                            text=True, check=True)
    for option in ("--episodes", "--seed", "--out"):
        assert option in result.stdout
