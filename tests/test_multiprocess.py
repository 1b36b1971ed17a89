"""The asset graph runs unchanged under Dagster's multiprocess executor (one process per
step, data passed only through the I/O manager) and gives the same tables as in-process."""

import dagster as dg
import polars as pl

from pipelines.definitions import make_definitions, outcomes_job_multiprocess

EPISODES = ("episode_id,patient_id,clinic_id,condition,referral_date\n"
            + "".join(f"E{i},P{i},C{i % 2},lbp,2026-01-{1 + i % 20:02d}\n" for i in range(30)))
SESSIONS = ("session_id,episode_id,therapist_id,session_date\n"
            + "".join(f"S{i}a,E{i},T1,2026-01-{1 + i % 20:02d}\nS{i}b,E{i},T1,2026-01-{2 + i % 20:02d}\n"
                      for i in range(30)))
SCORES = ("episode_id,session_id,timepoint,score,recorded_on\n"
          + "".join(f"E{i},S{i}a,pre,{6 + i % 3},\nE{i},S{i}b,pre,{3 + i % 4},\n" for i in range(30)))


def _config(raw, processed, reports):
    return {"resources": {
        "paths": {"config": {"raw_dir": str(raw), "processed_dir": str(processed), "reports_dir": str(reports),
                             "today": "2026-03-01"}},
        "processed_io_manager": {"config": {"processed_dir": str(processed)}},
        "run_guard": {"config": {"processed_dir": str(processed), "reports_dir": str(reports)}},
    }}


def write_raw(folder):
    """A raw folder of one export of each table (30 episodes), as ``folder / "raw"``."""
    raw = folder / "raw"
    raw.mkdir()
    (raw / "episodes_1.csv").write_text(EPISODES)
    (raw / "sessions_1.csv").write_text(SESSIONS)
    (raw / "pain_scores_1.csv").write_text(SCORES)
    return raw


def test_outcomes_job_under_the_multiprocess_executor(tmp_path):
    raw = write_raw(tmp_path)
    multi, single = tmp_path / "multi", tmp_path / "single"
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.execute_job(dg.reconstructable(outcomes_job_multiprocess), instance=instance,
                                run_config=_config(raw, multi, tmp_path / "r1"))
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.run_config.get("execution") is None  # the job's own (multiprocess) executor
        step_pids = {e.dagster_event.pid for e in instance.all_logs(result.run_id)
                     if e.step_key and e.dagster_event is not None}
        assert len(step_pids) > 1  # steps really ran in separate processes
    inproc = make_definitions().resolve_job_def("outcomes_job").execute_in_process(
        run_config=_config(raw, single, tmp_path / "r2"), instance=dg.DagsterInstance.ephemeral())
    assert inproc.success
    for name in ("episode_outcomes.parquet", "condition_summary.csv", "episodes.parquet", "km_curves.parquet"):
        read = pl.read_parquet if name.endswith(".parquet") else pl.read_csv
        assert read(multi / name).equals(read(single / name)), name
