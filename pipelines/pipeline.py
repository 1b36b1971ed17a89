"""Run the Dagster asset graph from Python (the `outcomes run` command, tests, benchmarks).

A run is safe to kill at any moment (docs/reliability.md):

* it holds the run lock of the processed and reports folders (:mod:`pipelines.locking`),
  so two runs never write the same folders at once;
* the outcomes job writes every processed table into a staging folder inside the
  processed folder (``.outcomes-run.<pid>.<random>``); only when the whole job has
  succeeded are the tables renamed into place, one atomic rename each. A run killed or
  failed before that leaves every previous table untouched;
* the weekly report folder is published with one atomic rename (pipelines.reports.render);
* under the lock, a run first removes what killed runs left behind: staging folders and
  temporary files of processes that no longer exist, and report staging folders (a
  report folder caught half-way through the non-atomic fallback swap is put back).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from pipelines.ingest.core import AUDIT_SCHEMA, REJECTED_SCHEMA
from pipelines.ingest.reasons import rejection_reasons
from pipelines.defs.reports.partitions import first_week, monday_of
from pipelines.io import fsync_dir, owner_gone, remove_stale_temp_files, replace_with_folder, restore_replaced
from pipelines.locking import RunLocked, run_lock
from pipelines.reports.weekly import week_label
from pipelines.settings import Settings

__all__ = ["RunLocked", "RunOutcome", "default_instance", "run_config", "run_pipeline", "remove_leftovers"]

#: the staging folder of one run's processed tables, inside the processed folder
RUN_STAGING = re.compile(r"^\.outcomes-run\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}$")
#: what render.write_report leaves in reports/weekly when killed: its staging folder
#: (``.<week>.<random>``) and the previous folder during a fallback swap (``.<week>.old``)
REPORT_STAGING = re.compile(r"^\.(?P<week>\d{4}-W\d{2})\.(?P<rest>[A-Za-z0-9_]{8}|old)$")
TRASH = re.compile(r"^\.outcomes-trash\.(?P<pid>\d+)\.")


@dataclass
class RunOutcome:
    success: bool
    run_id: str
    processed_dir: Path
    reports_dir: Path
    failure: str = ""
    as_of: str = ""
    report_paths: list[Path] = field(default_factory=list)
    report_run_id: str = ""
    #: False when the outcomes job failed: the processed folder still holds the previous run's tables
    tables_published: bool = True
    #: stopped by SIGINT/SIGTERM (Dagster reports it as a failed step)
    interrupted: bool = False
    #: this run's audit and rejected rows when they were not published (a failed outcomes job)
    unpublished: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)

    def audit(self) -> pl.DataFrame:
        if "ingest_audit" in self.unpublished:
            return self.unpublished["ingest_audit"]
        return pl.read_csv(self.processed_dir / "ingest_audit.csv", schema=AUDIT_SCHEMA)

    def rejected(self) -> pl.DataFrame:
        if "rejected_rows" in self.unpublished:
            return self.unpublished["rejected_rows"]
        return pl.read_csv(self.processed_dir / "rejected_rows.csv", schema=REJECTED_SCHEMA)

    def summary_text(self, seconds: float) -> str:
        lines = [f"{'Run finished' if self.success else 'Run FAILED'} in {seconds:.1f}s (Dagster run {self.run_id[:8]})"]
        audit_path = self.processed_dir / "ingest_audit.csv"
        have_audit = "ingest_audit" in self.unpublished if not self.tables_published else audit_path.exists()
        if have_audit:
            audit = self.audit()
            count = {s: int((audit["status"] == s).sum()) for s in ("ingested", "refused", "ignored")}
            lines.append(f"Files: {count['ingested']} ingested, {count['refused']} refused, {count['ignored']} ignored")
            for row in audit.filter(pl.col("status") == "refused").head(10).iter_rows(named=True):
                lines.append(f"  refused {row['source_file']}: {row['reason']}")
            if count["refused"] > 10:
                lines.append(f"  ... and {count['refused'] - 10} more refused files (see ingest_audit.csv)")
            totals = {c: int(audit[c].sum()) for c in ("rows_read", "accepted", "duplicate", "superseded", "rejected")}
            lines.append(f"Rows: {totals['rows_read']:,} read = {totals['accepted']:,} accepted + "
                         f"{totals['duplicate']:,} duplicate + {totals['superseded']:,} superseded + "
                         f"{totals['rejected']:,} rejected")
            rejected = self.rejected()
            if rejected.height:
                lines.append("Rejected rows by reason:")
                for reason, n in rejection_reasons(rejected).head(12).iter_rows():
                    lines.append(f"  {n:>8,}  {reason}")
        if self.as_of:
            lines.append(f"Metrics as of {self.as_of}")
        if self.tables_published:
            lines.append(f"Processed tables: {self.processed_dir}/ (episode_outcomes.parquet, condition_summary.csv, "
                         "rejected_rows.csv, ingest_audit.csv, ...)")
        else:
            lines.append(f"Processed tables: {self.processed_dir}/ left as they were (this run failed before "
                         "publishing its tables)")
        for path in self.report_paths:
            lines.append(f"Report: {path} (and report.pdf, summary.csv, figures/ beside it)")
        return "\n".join(lines)


def run_config(raw_dir: Path, processed_dir: Path, reports_dir: Path, as_of: str, today: str,
               settings: Settings, vocabulary_file: Path | None, progress: bool) -> dict:
    paths = {"raw_dir": str(raw_dir), "processed_dir": str(processed_dir), "reports_dir": str(reports_dir),
             "today": today, "as_of": as_of, "vocabulary_file": str(vocabulary_file or "")}
    config = {
        "resources": {
            "paths": {"config": paths},
            "analysis_settings": {"config": settings.as_dict()},
            "processed_io_manager": {"config": {"processed_dir": str(processed_dir)}},
            "run_guard": {"config": {"processed_dir": str(processed_dir), "reports_dir": str(reports_dir)}},
        },
    }
    config["loggers"] = {"progress": {}} if progress else {"console": {"config": {"log_level": "ERROR"}}}
    return config


def run_pipeline(raw_dir: str | Path = "data/raw", processed_dir: str | Path = "data/processed",
                 reports_dir: str | Path = "reports", as_of: str = "", today: str = "",
                 settings: Settings | None = None, vocabulary_file: str | Path | None = None,
                 progress: bool = False, instance: dg.DagsterInstance | None = None,
                 wait: float = 0.0, on_wait=None) -> RunOutcome:
    """Execute the outcomes job in process; recorded in $DAGSTER_HOME's instance when set.

    Holds the run lock of ``processed_dir`` and ``reports_dir`` throughout; if another run
    holds it, waits up to ``wait`` seconds and then raises :class:`RunLocked`.
    """
    raw_dir, processed_dir, reports_dir = Path(raw_dir), Path(processed_dir), Path(reports_dir)
    with run_lock(processed_dir, reports_dir, wait=wait, on_wait=on_wait):
        remove_leftovers(processed_dir, reports_dir)
        return _run_locked(raw_dir, processed_dir, reports_dir, as_of, today, settings or Settings(),
                           Path(vocabulary_file) if vocabulary_file else None, progress, instance)


def _run_locked(raw_dir: Path, processed_dir: Path, reports_dir: Path, as_of: str, today: str,
                settings: Settings, vocabulary_file: Path | None, progress: bool,
                instance: dg.DagsterInstance | None) -> RunOutcome:
    config = run_config(raw_dir, processed_dir, reports_dir, as_of, today, settings, vocabulary_file, progress)
    if instance is None:
        instance = default_instance()
    # 1. ingest and outcomes (unpartitioned), as of --as-of or the latest record; the tables
    #    go to a staging folder and are published together once the whole job has succeeded
    staging = Path(tempfile.mkdtemp(prefix=f".outcomes-run.{os.getpid()}.", dir=processed_dir))
    try:
        staged_config = run_config(raw_dir, staging, reports_dir, as_of, today, settings, vocabulary_file, progress)
        staged_config["resources"]["paths"]["config"]["processed_dir"] = str(processed_dir)
        staged_config["resources"]["run_guard"]["config"]["processed_dir"] = str(processed_dir)
        staged_config["resources"]["processed_io_manager"]["config"]["published_dir"] = str(processed_dir)
        _announce(progress, "outcomes_job: ingest and outcome tables")
        result = _execute("outcomes_job", settings, None, staged_config, instance)
        outcome = RunOutcome(success=result.success, run_id=result.run_id, processed_dir=processed_dir,
                             reports_dir=reports_dir, failure=_failure(result), as_of=_as_of(result),
                             interrupted=_interrupted(result))
        if result.success:
            _publish_tables(staging, processed_dir)
        else:
            outcome.tables_published = False
            outcome.unpublished = _read_unpublished(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not result.success or not outcome.as_of:
        return outcome
    # 2. the report for the ISO week of the as-of date (a weekly partition), as of its Sunday
    as_of_day = date.fromisoformat(outcome.as_of)
    start = min(first_week(processed_dir), monday_of(as_of_day))
    _announce(progress, f"weekly_report_job: report for {week_label(as_of_day)}")
    report = _execute("weekly_report_job", settings, start, config, instance,
                      partition_key=monday_of(as_of_day).isoformat(), asset_selection=[dg.AssetKey("weekly_report")])
    outcome.report_run_id = report.run_id
    if report.success:
        outcome.report_paths = [reports_dir / "weekly" / week_label(as_of_day) / "report.html"]
    else:
        outcome.success = False
        outcome.failure = _failure(report)
        outcome.interrupted = _interrupted(report)
    return outcome


def default_instance() -> dg.DagsterInstance:
    """The instance a run is recorded in: $DAGSTER_HOME's when set, else an ephemeral one."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def job_for_run(job_name: str, settings: dict, start: str | None) -> dg.JobDefinition:
    """The named job of :func:`pipelines.definitions.make_definitions` for these settings and first week
    (module-level, so that :func:`_execute` can hand Dagster a reconstructable job)."""
    return _definitions(tuple(sorted(settings.items())), start).resolve_job_def(job_name)


@functools.lru_cache(maxsize=8)
def _definitions(settings: tuple, start: str | None) -> dg.Definitions:
    """:func:`pipelines.definitions.make_definitions`, built once per settings and first week.

    Dagster reconstructs a job from its pointer several times per run (four or five), and
    building every definition costs some 30-40 ms each time. Definitions are immutable and
    hold no run state, so one build serves every run of this process with the same
    arguments. (With ``start`` None the first week is read from the
    environment or the processed folder when first built; only the weekly report asset
    depends on it, and every job that includes that asset is given ``start``.)
    """
    from pipelines.definitions import make_definitions

    return make_definitions(Settings(**dict(settings)), start=date.fromisoformat(start) if start else None)


def _execute(job_name: str, settings: Settings, start: date | None, config: dict, instance: dg.DagsterInstance,
             partition_key: str | None = None, asset_selection: list[dg.AssetKey] | None = None):
    """Run a job in this process with ``dg.execute_job`` (the job's in-process executor).

    Not ``JobDefinition.execute_in_process``: that test API keeps every step's output in
    memory until the run ends (to offer ``output_for_node``), which at a million episodes is
    every accepted table and outcome table at once. Here outputs live only in the processed
    tables the I/O manager writes, and a step's frames are freed when it ends.
    """
    job = dg.build_reconstructable_job(
        "pipelines.pipeline", "job_for_run",
        reconstructable_kwargs={"job_name": job_name, "settings": dataclasses.asdict(settings),
                                "start": start.isoformat() if start else None})
    tags = {"dagster/partition": partition_key} if partition_key else None
    return dg.execute_job(job, instance=instance, run_config=config, tags=tags, raise_on_error=False,
                          asset_selection=asset_selection)


def _announce(progress: bool, text: str) -> None:
    """A progress line on stderr when a job starts (the steps print theirs when they finish)."""
    if progress:
        print(f"  run   {text}", file=sys.stderr, flush=True)


def _publish_tables(staging: Path, processed_dir: Path) -> None:
    """Move every table of a finished job into the processed folder (each move atomic; a
    folder of parts is swapped in, pipelines.io.replace_with_folder)."""
    for path in sorted(staging.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            replace_with_folder(path, processed_dir / path.name)
        elif path.is_file():
            os.replace(path, processed_dir / path.name)
    fsync_dir(processed_dir)


def _read_unpublished(staging: Path) -> dict[str, pl.DataFrame]:
    frames = {}
    for name, schema in (("ingest_audit", AUDIT_SCHEMA), ("rejected_rows", REJECTED_SCHEMA)):
        try:
            frames[name] = pl.read_csv(staging / f"{name}.csv", schema=schema)
        except (OSError, pl.exceptions.PolarsError):
            pass
    return frames


def _discard(folder: Path) -> None:
    """Remove a folder: first renamed out of the way (atomic), then deleted."""
    trash = folder.with_name(f".outcomes-trash.{os.getpid()}.{folder.name.lstrip('.')}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(processed_dir: str | Path, reports_dir: str | Path) -> list[str]:
    """Clean up after runs that were killed; call only while holding the run lock.

    Removes, in the processed folder, staging folders and temporary files of processes
    that no longer run; in ``reports/weekly``, report staging folders, and an old week
    folder left by an interrupted fallback swap (put back if its week folder is missing).
    Returns a description of each thing done.
    """
    processed_dir, reports_dir = Path(processed_dir), Path(reports_dir)
    done: list[str] = []
    if processed_dir.is_dir():
        for entry in processed_dir.iterdir():
            match = RUN_STAGING.match(entry.name) or TRASH.match(entry.name)
            if match and entry.is_dir() and owner_gone(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}")
        done += [f"removed {p}" for p in remove_stale_temp_files(processed_dir)]
        done += restore_replaced(processed_dir)
    weekly = reports_dir / "weekly"
    if weekly.is_dir():
        for entry in sorted(weekly.iterdir()):
            trash = TRASH.match(entry.name)
            if trash and entry.is_dir() and owner_gone(int(trash["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}")
                continue
            match = REPORT_STAGING.match(entry.name)
            if not match or not entry.is_dir():
                continue
            target = weekly / match["week"]
            if match["rest"] == "old" and not target.exists():
                os.rename(entry, target)  # the swap was interrupted between its two renames
                done.append(f"restored {target} from {entry.name}")
            else:
                _discard(entry)
                done.append(f"removed {entry}")
        done += [f"removed {p}" for p in remove_stale_temp_files(weekly, recursive=False)]
    return done


def _failure(result) -> str:
    if result.success:
        return ""
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE"):
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and error.cause is not None:  # the user code's own exception
                error = error.cause
            if error is not None:
                return f"{event.step_key or 'run'}: {error.message.strip().splitlines()[-1]}"
    return "see the Dagster run log"


_INTERRUPTS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


def _interrupted(result) -> bool:
    """Whether a step or the run failed because the run was interrupted (SIGINT or SIGTERM,
    which Dagster raises as DagsterExecutionInterruptedError in the step).

    The signal may arrive while polars is calling Python code from Rust (e.g. a scan's
    default options); the exception raised there reaches polars as an error it does not
    expect, and polars panics. The step then fails with a ``PanicException`` whose message
    names the interrupt (``PyErr { type: <class '...DagsterExecutionInterruptedError'> ...``):
    that too is an interrupted run, not a broken one."""
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE"):
            error = getattr(event.event_specific_data, "error", None)
            while error is not None:
                if error.cls_name in _INTERRUPTS:
                    return True
                if error.cls_name == "PanicException" and any(
                        f"{name}'>" in (error.message or "") for name in _INTERRUPTS):
                    return True
                error = error.cause
    return False


def _as_of(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION" and event.asset_key == dg.AssetKey("episode_outcomes"):
            meta = event.event_specific_data.materialization.metadata
            if "as_of" in meta:
                return meta["as_of"].value
    return ""
