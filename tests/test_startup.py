"""The fixed costs of `outcomes run`: definitions built once and quietly, the garbage
collector kept off what lives until the end, and a prompt, complete exit."""

import gc
import os
import subprocess
import sys
import warnings
from datetime import date
from pathlib import Path

import dagster as dg

from pipelines import cli
from pipelines.definitions import make_definitions
from pipelines.defs.reports.assets import PARTITIONED_CHECK_PREVIEW
from pipelines.pipeline import job_for_run
from pipelines.settings import Settings
from test_cli import EPISODES, SCORES, SESSIONS


def test_definitions_build_without_the_partitioned_check_warning_and_the_check_stays_partitioned():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # over pytest's filterwarnings, which ignores PreviewWarning
        defs = make_definitions(Settings(), start=date(2026, 1, 5))
        defs.resolve_job_def("outcomes_job")
        defs.resolve_job_def("weekly_report_job").get_subset(asset_selection={dg.AssetKey("weekly_report")})
    assert not [w for w in caught if PARTITIONED_CHECK_PREVIEW in str(w.message)]
    # the filter is scoped to building the check: the warning itself is still Dagster's to give
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dg.AssetCheckSpec(name="probe", asset="weekly_report",
                          partitions_def=dg.WeeklyPartitionsDefinition(start_date="2026-01-05"))
    assert [w for w in caught if PARTITIONED_CHECK_PREVIEW in str(w.message)]
    specs = [spec for checks in defs.asset_checks for spec in checks.check_specs
             if spec.name == "weekly_report_published_safely"]
    assert len(specs) == 1 and specs[0].partitions_def is not None


def test_a_job_is_built_once_per_settings_and_first_week():
    settings = Settings().as_dict()
    job = job_for_run("weekly_report_job", settings, "2026-01-05")
    assert job_for_run("weekly_report_job", dict(settings), "2026-01-05") is job
    assert job_for_run("weekly_report_job", settings, "2026-01-12") is not job
    other = {**settings, "min_cell_size": settings["min_cell_size"] + 1}
    assert job_for_run("weekly_report_job", other, "2026-01-05") is not job
    assert job.partitions_def.get_first_partition_key() == "2026-01-05"


def test_loading_is_frozen_only_in_the_program():
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    with cli._loading(False):
        assert gc.isenabled() == enabled
    assert gc.get_freeze_count() == frozen
    try:
        with cli._loading(True):
            assert not gc.isenabled()
            loaded = [object() for _ in range(10)]  # noqa: F841 - alive while loading
        assert gc.isenabled() and gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()  # give this test process its collections back
        if not enabled:
            gc.disable()


def test_the_program_prints_everything_and_exits_with_its_status(tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "episodes_2026-01.csv").write_text(EPISODES)
    (raw / "sessions_2026-01.csv").write_text(SESSIONS)
    (raw / "pain_scores_2026-01.csv").write_text(SCORES)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    command = [sys.executable, "-m", "pipelines.cli", "run", "--raw-dir", str(raw),
               "--processed-dir", str(tmp_path / "p"), "--reports-dir", str(tmp_path / "r"), "--today", "2026-03-01"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"outcomes run: {raw} -> ")
    assert "Warning" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Run finished in ") and lines[-1].startswith("Report: "), result.stdout
    assert (tmp_path / "r" / "weekly" / "2026-W05" / "report.pdf").is_file()
    # a run that cannot take its folders still exits with its own status
    (tmp_path / "blocked").write_text("a file where the processed folder should be")
    blocked = subprocess.run([*command[:6], str(tmp_path / "blocked" / "p"), *command[7:]],
                             capture_output=True, text=True, env=env, timeout=600)
    assert blocked.returncode == 2, blocked.stderr
