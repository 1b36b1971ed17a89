"""Reliability of `outcomes run` (issue 7): crashes, concurrent runs, idempotence.

The expensive tests run the real command as a subprocess, the way an operator or cron
does. They share one Python bytecode cache (``PYTHONPYCACHEPREFIX`` beside pytest's temp
folders, kept between sessions), because this environment sets PYTHONDONTWRITEBYTECODE and
every subprocess would otherwise compile Dagster, polars, scipy and matplotlib from source
again (about 15 s per process). PDFs are made
byte-reproducible with ``SOURCE_DATE_EPOCH`` (reportlab then writes a fixed creation date
and document id), so whole report folders can be compared byte for byte; ``GIT_DIR`` points at an empty
folder so that the report's code version does not change when someone commits or edits a
file while the tests run.

Kill points are chosen at stage boundaries by reading the progress lines `outcomes run`
prints on stderr, plus a random delay; the random seed is in every assertion message and
can be fixed with OUTCOMES_CRASH_SEED=<n>.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from pipelines.io import REPLACED, TEMP_FILE
from pipelines.locking import EX_TEMPFAIL, LOCK_NAME, RunLocked, folder_lock, holds_lock, read_holder, run_lock
from pipelines.pipeline import REPORT_STAGING, RUN_STAGING, TRASH, _interrupted, remove_leftovers, run_pipeline

TODAY = "2026-11-27"  # the run date of every run here: synthetic data end on Sunday 2026-11-22
SOURCE_DATE_EPOCH = "1795000000"
RUN_TIMEOUT = 600  # seconds; generous, for a loaded 2-core machine
CONSOLE_SCRIPT = Path(sys.executable).with_name("outcomes")
OUTCOMES = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "pipelines.cli"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def pycache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bytecode cache kept across sessions in pytest's per-user temp root (mode 0700)."""
    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return session.parent / "outcomes-test-pycache"


def _shared_root_for(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Environment for `outcomes` subprocesses: shared bytecode cache, reproducible PDFs,
    ephemeral Dagster instance."""
    env = dict(os.environ)
    env.pop("DAGSTER_HOME", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache_dir(tmp_path_factory))
    env["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    # the report's provenance names the git commit and whether the checkout is dirty; others
    # commit and edit while these tests run, so the subprocesses see no repository at all
    no_git = _shared_root_for(tmp_path_factory) / "no-git-repository"
    no_git.mkdir(exist_ok=True)
    env["GIT_DIR"] = str(no_git)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("OUTCOMES_FIRST_WEEK", None)
    return env


@dataclass
class Proc:
    popen: subprocess.Popen
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"pid {self.pid} still running after {timeout}s:\n{self.stderr()[-3000:]}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: the whole process group
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=60)

    def wait_for(self, text: str, timeout: float = RUN_TIMEOUT) -> bool:
        """Until ``text`` appears on stderr (True) or the process ends without it (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return True
            if self.popen.poll() is not None:
                return text in self.stderr()
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"no {text!r} on stderr of pid {self.pid} after {timeout}s:\n{self.stderr()[-3000:]}")


def start(env: dict, cwd: Path, name: str, *args: str) -> Proc:
    logs = cwd / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    tmp = cwd / "tmp"
    tmp.mkdir(exist_ok=True)
    with open(out, "wb") as fo, open(err, "wb") as fe:
        popen = subprocess.Popen([*OUTCOMES, *args], cwd=cwd, env={**env, "TMPDIR": str(tmp)}, stdout=fo, stderr=fe,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Proc(popen, out, err)


def start_run(env: dict, cwd: Path, name: str, raw: Path, out: Path, *extra: str) -> Proc:
    return start(env, cwd, name, "run", "--raw-dir", str(raw), "--processed-dir", str(out / "processed"),
                 "--reports-dir", str(out / "reports"), "--today", TODAY, *extra)


def run_ok(proc: Proc) -> None:
    code = proc.wait()
    assert code == 0, f"outcomes run failed ({code}):\n{proc.stderr()[-4000:]}\n{proc.stdout()[-2000:]}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Snapshot:
    """What a reader finds in the output folders at one moment."""

    tables: dict[str, str]                 # processed/*.parquet|csv -> sha256
    reports: dict[str, dict[str, str]]     # week -> {path in the week folder -> sha256}
    leftovers: list[str] = field(default_factory=list)   # temp/staging entries of killed runs
    unexpected: list[str] = field(default_factory=list)  # anything else hidden or odd
    unreadable: list[str] = field(default_factory=list)  # tables polars cannot read


def _allowed_leftover(path: Path) -> bool:
    return bool(RUN_STAGING.match(path.name) or TEMP_FILE.match(path.name) or REPORT_STAGING.match(path.name)
                or TRASH.match(path.name) or REPLACED.match(path.name))


def snapshot(out: Path) -> Snapshot:
    processed, reports = out / "processed", out / "reports"
    snap = Snapshot({}, {})
    if processed.is_dir():
        for path in sorted(processed.iterdir()):
            if path.name in (LOCK_NAME, ".cache"):
                continue
            if path.name.startswith("."):
                (snap.leftovers if _allowed_leftover(path) else snap.unexpected).append(str(path.relative_to(out)))
                continue
            if path.suffix == ".parquet" and path.is_dir():  # a table stored as a folder of parts
                parts = sorted(path.iterdir())
                snap.tables[path.name] = sha(b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in parts))
                try:
                    pl.read_parquet(path)
                except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
                    snap.unreadable.append(f"{path.name}: {exc}")
                continue
            if path.suffix not in (".parquet", ".csv") or not path.is_file():
                snap.unexpected.append(str(path.relative_to(out)))
                continue
            data = path.read_bytes()
            snap.tables[path.name] = sha(data)
            try:
                if path.suffix == ".parquet":
                    pl.read_parquet(io.BytesIO(data))
                else:
                    pl.read_csv(io.BytesIO(data), infer_schema_length=0)
            except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
                snap.unreadable.append(f"{path.name}: {exc}")
        for path in (processed / ".cache").rglob("*") if (processed / ".cache").is_dir() else []:
            if TEMP_FILE.match(path.name):
                snap.leftovers.append(str(path.relative_to(out)))
    if reports.is_dir():
        for path in sorted(reports.iterdir()):
            if path.name not in (LOCK_NAME, "weekly"):
                snap.unexpected.append(str(path.relative_to(out)))
        weekly = reports / "weekly"
        for folder in sorted(weekly.iterdir()) if weekly.is_dir() else []:
            if folder.name.startswith("."):
                (snap.leftovers if _allowed_leftover(folder) else snap.unexpected).append(
                    str(folder.relative_to(out)))
                continue
            snap.reports[folder.name] = {p.relative_to(folder).as_posix(): sha(p.read_bytes())
                                         for p in sorted(folder.rglob("*")) if p.is_file()}
    return snap


def add_followups(raw: Path) -> Path:
    """A new export, sorting after every other file: follow-up scores for 40 episodes."""
    episodes = pl.concat([pl.read_csv(p, infer_schema_length=0) for p in sorted(raw.rglob("episodes_*.csv"))],
                         how="diagonal_relaxed")
    ids = (episodes.filter(pl.col("referral_date") < "2026-09-01")["episode_id"].unique().sort().head(40).to_list())
    lines = ["episode_id,session_id,timepoint,score,recorded_on"]
    lines += [f"{eid},,followup,{i % 3},2026-11-21" for i, eid in enumerate(ids)]
    last = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())[-1]
    target = raw / "2026-W48" / "pain_scores_2026-11-24.csv"  # next week's export folder
    target.parent.mkdir()
    target.write_text("\n".join(lines) + "\n")
    assert target.relative_to(raw).as_posix() > last
    return target


def small_raw(raw: Path, episodes: int = 60, seed: int = 11) -> Path:
    from pipelines.synth import generate

    generate(episodes, seed, raw)
    return raw


def tiny_raw(raw: Path) -> Path:
    """Three hand-made exports: 24 episodes, 3 sessions each with pre/post scores (quick to run)."""
    raw.mkdir(parents=True, exist_ok=True)
    episodes = ["episode_id,patient_id,clinic_id,condition,referral_date,prescribed_sessions"]
    sessions = ["session_id,episode_id,therapist_id,session_date,duration_min"]
    scores = ["episode_id,session_id,timepoint,score,recorded_on"]
    for i in range(24):
        eid, condition = f"E{i:03d}", ("low_back_pain", "neck_pain")[i % 2]
        episodes.append(f"{eid},P{i:03d},C{i % 3},{condition},2026-10-{1 + i % 9:02d},6")
        for s in range(3):
            sid = f"S{i:03d}{s}"
            sessions.append(f"{sid},{eid},T{i % 4},2026-10-{10 + 7 * s + i % 3:02d},45")
            pre = 7 - s - i % 3 if s else 7
            scores += [f"{eid},{sid},pre,{max(pre, 0)},", f"{eid},{sid},post,{max(pre - 1, 0)},"]
    for name, lines in (("episodes", episodes), ("sessions", sessions), ("pain_scores", scores)):
        (raw / f"{name}_2026-11-01.csv").write_text("\n".join(lines) + "\n")
    return raw


# --------------------------------------------------------------------------------------
# 1. crash safety (and idempotence of a rerun)
# --------------------------------------------------------------------------------------

KILL_POINTS = [
    # (name, raw folder, stderr line to wait for, random delay after it in seconds)
    ("early: during ingest, inputs unchanged", "raw", "  run   outcomes_job", (0.0, 1.5)),
    ("mid: after ingest, during the outcome tables, one export added", "raw_new", "  ok    ingest", (0.0, 2.5)),
    ("late: during the weekly report, one export added", "raw_new", "  run   weekly_report_job", (0.5, 6.0)),
]


def _state(snap: Snapshot, old: Snapshot, new: Snapshot) -> str:
    tables = [("same" if old.tables.get(t) == new.tables.get(t) == d else "old" if d == old.tables.get(t)
               else "new" if d == new.tables.get(t) else "OTHER") for t, d in snap.tables.items()]
    reports = ["old" if files == old.reports.get(w) else "new" if files == new.reports.get(w) else "OTHER"
               for w, files in snap.reports.items()]
    return (f"tables {tables.count('old')} old / {tables.count('new')} new / {tables.count('same')} same in both"
            f" / {tables.count('OTHER')} other; "
            f"report {'/'.join(reports)}; leftovers {len(snap.leftovers)}")


def test_sigkill_at_random_points_leaves_old_or_new_outputs_and_a_rerun_matches(tmp_path, cli_env,
                                                                                 record_property):
    seed = int(os.environ.get("OUTCOMES_CRASH_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    raw = small_raw(tmp_path / "raw", episodes=600, seed=3)  # = outcomes synth --episodes 600 --seed 3
    raw_new = tmp_path / "raw_new"
    shutil.copytree(raw, raw_new)
    add_followups(raw_new)
    work, fresh = tmp_path / "work", tmp_path / "fresh"

    # A: the previous outputs (uninterrupted, in the folder we will crash into), and
    # C: an uninterrupted run over the new inputs in a fresh folder, the reference for "new"
    run_c = start_run(cli_env, tmp_path, "C-uninterrupted-new", raw_new, fresh)
    run_a = start_run(cli_env, tmp_path, "A-uninterrupted-old", raw, work)
    run_ok(run_a)
    old = snapshot(work)
    assert old.tables and old.reports and not old.leftovers and not old.unexpected and not old.unreadable, old

    observed = []
    for i, (name, which, marker, (low, high)) in enumerate(KILL_POINTS):
        proc = start_run(cli_env, tmp_path, f"K{i}", raw if which == "raw" else raw_new, work)
        reached = proc.wait_for(marker)
        delay = rng.uniform(low, high)
        time.sleep(delay)
        finished_before_kill = proc.popen.poll() is not None
        proc.kill()
        observed.append((name, which, delay, reached, finished_before_kill, snapshot(work), read_holder(work / "processed")))

    run_ok(run_c)
    new = snapshot(fresh)
    assert not new.leftovers and not new.unexpected and not new.unreadable, new
    assert set(new.tables) == set(old.tables)
    assert new.tables != old.tables, "the added export should change the processed tables"

    for name, which, delay, reached, finished, snap, holder in observed:
        where = f"[seed {seed}] kill '{name}' {delay:.2f}s after its marker (reached: {reached}, " \
                f"finished first: {finished})"
        print(f"{where}: {_state(snap, old, new)}")
        record_property(name.split(":")[0], f"{delay:.2f}s: {_state(snap, old, new)}")
        assert not snap.unreadable, f"{where}: unreadable tables {snap.unreadable}"
        assert not snap.unexpected, f"{where}: unexpected files {snap.unexpected}"
        assert set(snap.tables) == set(old.tables), f"{where}: tables missing or added: {set(snap.tables) ^ set(old.tables)}"
        for table, digest in snap.tables.items():
            assert digest in (old.tables[table], new.tables[table]), f"{where}: {table} is neither the old nor the new"
        if which == "raw":  # nothing changed: every table and the report are exactly the old ones
            assert snap.tables == old.tables, f"{where}: outputs changed although the inputs did not"
        assert set(snap.reports) == set(old.reports), where
        for week, files in snap.reports.items():
            assert files in (old.reports[week], new.reports[week]), f"{where}: report {week} is neither old nor new"
        if not finished:
            assert holder.pid is not None, f"{where}: the lock file does not name the killed run"

    # the next run cleans up after the killed ones and gives exactly the uninterrupted outputs
    rerun = start_run(cli_env, tmp_path, "R-rerun", raw_new, work)
    run_ok(rerun)
    after = snapshot(work)
    assert not after.leftovers, f"[seed {seed}] leftovers not cleaned by the next run: {after.leftovers}"
    assert not after.unexpected and not after.unreadable, after
    assert after.tables == new.tables, f"[seed {seed}] rerun differs from an uninterrupted run: " + ", ".join(
        t for t in new.tables if after.tables.get(t) != new.tables[t])
    assert after.reports == new.reports, f"[seed {seed}] rerun report differs from an uninterrupted run"
    assert (work / "processed" / LOCK_NAME).read_text() == "", "a finished run leaves an empty lock file"


# --------------------------------------------------------------------------------------
# 2. idempotence
# --------------------------------------------------------------------------------------

def _contract(frame: pl.DataFrame) -> pl.DataFrame:
    frame = frame.drop("source_file", "line")
    return frame.sort(frame.columns)


def test_reingesting_a_copy_of_an_export_changes_no_accepted_row(tmp_path):
    """A clinic sends an export again under a new name (sorting right after the original):
    the accepted tables are the same; the copy's rows become duplicates of it (CONTRACT
    rule 4: the later copy is accepted, the original's rows are the duplicates)."""
    from pipelines.ingest import ingest_folder

    raw = small_raw(tmp_path / "raw", episodes=300, seed=5)
    today = date.fromisoformat(TODAY)
    before = ingest_folder(raw, today)
    files = sorted(p for p in raw.rglob("*.csv"))
    middle_week = sorted({p.parent for p in files})[len({p.parent for p in files}) // 2]
    copies = {}
    for original in sorted(middle_week.glob("*.csv")) + [files[-1]]:
        copy = original.with_name(original.stem + "_copy.csv")
        shutil.copyfile(original, copy)
        copies[original.relative_to(raw).as_posix()] = copy.relative_to(raw).as_posix()
    after = ingest_folder(raw, today)

    for table in ("episodes", "sessions", "pain_scores"):
        assert _contract(after.table(table)).equals(_contract(before.table(table))), table
    audit_before = {r["source_file"]: r for r in before.audit.to_dicts()}
    audit_after = {r["source_file"]: r for r in after.audit.to_dicts()}
    for original, copy in copies.items():
        was, orig_now, dup = audit_before[original], audit_after[original], audit_after[copy]
        assert dup["status"] == "ingested" and dup["rows_read"] == was["rows_read"], dup
        assert dup["accepted"] == was["accepted"] and orig_now["accepted"] == 0, (was, orig_now, dup)
        assert orig_now["duplicate"] == was["duplicate"] + was["accepted"], (was, orig_now)
        assert dup["rejected"] == was["rejected"] and orig_now["rejected"] == was["rejected"]
    total = lambda audit, col: int(audit[col].sum())  # noqa: E731
    assert total(after.audit, "accepted") == total(before.audit, "accepted")
    assert total(after.audit, "duplicate") > total(before.audit, "duplicate")


# --------------------------------------------------------------------------------------
# 3. concurrent runs
# --------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pipelines.locking import run_lock
with run_lock(*sys.argv[2:], command="test holder"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _hold(cli_env: dict, seconds: float, *folders: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(seconds), *map(str, folders)], env=cli_env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_wait_gives_up_after_its_timeout_with_exit_75(tmp_path, cli_env):
    out = tmp_path / "out"
    raw = tmp_path / "raw"
    raw.mkdir()
    holder = _hold(cli_env, 120, out / "processed")
    try:
        proc = start_run(cli_env, tmp_path, "gives-up", raw, out, "--wait", "1.5")
        assert proc.wait(timeout=120) == EX_TEMPFAIL
        lines = proc.stderr().strip().splitlines()
        assert f"pid {holder.pid}" in lines[-1] and "; waited " in lines[-1], lines
        assert "waiting up to 1.5s" in lines[0]
    finally:
        holder.kill()
        holder.wait()
    # the lock went with the holder's process: no stale lock to remove by hand
    with folder_lock(out / "processed"):
        assert holds_lock(out / "processed")


def test_lock_is_reentrant_names_its_holder_and_blocks_run_pipeline(tmp_path, cli_env):
    processed, reports = tmp_path / "p", tmp_path / "q"
    with run_lock(processed, reports, processed, command="outer"):
        with run_lock(processed, command="inner"):  # re-entrant within a thread
            assert holds_lock(processed)
        other: list = []

        def from_another_thread() -> None:  # ... but not for another thread of the process
            try:
                with folder_lock(processed):
                    other.append("acquired")
            except RunLocked as exc:
                other.append(exc)

        thread = threading.Thread(target=from_another_thread)
        thread.start()
        thread.join(timeout=60)
        assert len(other) == 1 and isinstance(other[0], RunLocked), other
        assert holds_lock(processed) and holds_lock(reports)
        info = json.loads((processed / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "outer" and info["started"]
    assert not holds_lock(processed) and (processed / LOCK_NAME).read_text() == ""

    holder = _hold(cli_env, 60, reports)  # another process holds the reports folder only
    try:
        with pytest.raises(RunLocked) as refused:
            run_pipeline(tmp_path / "raw", processed, reports, today=TODAY)
        assert f"pid {holder.pid}" in str(refused.value) and str(reports) in str(refused.value)
        assert not holds_lock(processed), "the processed lock is released when the reports lock is refused"
        assert not [p for p in processed.iterdir() if p.name != LOCK_NAME], "a refused run writes nothing"
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_run_publishes_no_table_and_leaves_no_staging(tmp_path):
    """The outcomes job fails (here: its vocabulary file is missing, so ingest raises):
    the previous tables stay exactly as they were and the summary says so."""
    raw = tiny_raw(tmp_path / "raw")
    processed, reports = tmp_path / "p", tmp_path / "q"
    processed.mkdir()
    previous = {name: f"previous {name}".encode() for name in ("episodes.parquet", "ingest_audit.csv")}
    for name, data in previous.items():
        (processed / name).write_bytes(data)
    outcome = run_pipeline(raw, processed, reports, today=TODAY, vocabulary_file=tmp_path / "missing.csv")
    assert not outcome.success and not outcome.tables_published and "ingest" in outcome.failure, outcome
    assert {p.name: p.read_bytes() for p in processed.iterdir() if p.is_file() and p.name != LOCK_NAME} == previous
    assert not [p for p in processed.iterdir() if p.name.startswith(".outcomes-run")], "staging folder left"
    assert "left as they were" in outcome.summary_text(0.0)


def test_leftovers_of_killed_runs_are_removed_and_a_half_swapped_report_is_restored(tmp_path):
    processed, reports = tmp_path / "p", tmp_path / "q"
    weekly = reports / "weekly"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    processed.mkdir(parents=True)
    (processed / "episodes.parquet").write_bytes(b"published")
    stale_tmp = processed / f".episodes.parquet.{dead.pid}.abcd1234.tmp"
    live_tmp = processed / f".sessions.parquet.{live}.abcd1234.tmp"
    cache_tmp = processed / ".cache" / "ingest" / f".manifest.json.{dead.pid}.zz_99abc.tmp"
    staging = processed / f".outcomes-run.{dead.pid}.q1w2e3r4"
    for path in (stale_tmp, live_tmp, cache_tmp, staging / "episodes.parquet"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    (weekly / "2026-W46").mkdir(parents=True)
    (weekly / ".2026-W47.old").mkdir()                  # a fallback swap killed between its renames
    (weekly / ".2026-W47.old" / "report.html").write_text("W47")
    (weekly / ".2026-W46.k9j8h7g6" / "figures").mkdir(parents=True)   # a report staging folder
    (weekly / ".2026-W46.old").mkdir()                  # old copy whose week folder is there

    with run_lock(processed, reports):
        done = remove_leftovers(processed, reports)
    assert not stale_tmp.exists() and not cache_tmp.exists() and not staging.exists(), done
    assert live_tmp.exists(), "a temporary file of a live process must stay"
    assert (processed / "episodes.parquet").read_bytes() == b"published"
    assert sorted(p.name for p in weekly.iterdir()) == ["2026-W46", "2026-W47"], done
    assert (weekly / "2026-W47" / "report.html").read_text() == "W47"


def _failed_with(*chain: tuple[str, str], event: str = "STEP_FAILURE"):
    """A stand-in for a Dagster run result with one failure event whose error has ``chain``
    ((class name, message), outermost first) as its causes."""
    from types import SimpleNamespace

    error = None
    for cls_name, message in reversed(chain):
        error = SimpleNamespace(cls_name=cls_name, message=message, cause=error)
    return SimpleNamespace(all_events=[SimpleNamespace(event_type_value=event,
                                                       event_specific_data=SimpleNamespace(error=error))])


# what a step reported when SIGTERM arrived while polars ran Python code from Rust (CI, once)
PANIC = ("called `Result::unwrap()` on an `Err` value: PyErr { type: <class "
         "'dagster._core.errors.DagsterExecutionInterruptedError'>, value: DagsterExecutionInterruptedError(), "
         "traceback: Some(...) }")


def test_an_interrupt_is_recognised_however_the_step_failed():
    assert _interrupted(_failed_with(("DagsterExecutionInterruptedError", "")))
    assert _interrupted(_failed_with(("DagsterExecutionStepExecutionError", "step failed"),
                                     ("KeyboardInterrupt", "")))
    assert _interrupted(_failed_with(("DagsterExecutionStepExecutionError", "step failed"), ("PanicException", PANIC)))
    assert _interrupted(_failed_with(("PanicException", PANIC.replace(
        "dagster._core.errors.DagsterExecutionInterruptedError", "KeyboardInterrupt")), event="RUN_FAILURE"))
    # other failures, panics included, are failures
    other_error = PANIC.replace("DagsterExecutionInterruptedError", "ValueError")
    assert not _interrupted(_failed_with(("PanicException", other_error)))
    assert not _interrupted(_failed_with(("PanicException", "index out of bounds")))
    assert not _interrupted(_failed_with(("ValueError", "DagsterExecutionInterruptedError in a message")))
    assert not _interrupted(_failed_with(("DagsterExecutionInterruptedError", ""), event="STEP_OUTPUT"))


# --------------------------------------------------------------------------------------
# the slower subprocess tests last: xdist queues the next tests of a worker behind the
# crash test, so those should be the quick ones
# --------------------------------------------------------------------------------------

def test_sigterm_stops_the_run_cleanly(tmp_path, cli_env):
    """SIGTERM (systemd, docker stop, kill) is handled like Ctrl-C (as Dagster does): exit
    status 130, nothing half-written, no temporary file or staging folder left behind."""
    raw = tiny_raw(tmp_path / "raw")
    # the signal goes out as soon as ingest is reported done: the outcome steps and the
    # report (seconds of work) are still to come. A test process descheduled on a loaded
    # machine may see that line late, so a run that finished first is tried again.
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        proc = start_run(cli_env, tmp_path, f"term{attempt}", raw, out)
        assert proc.wait_for("  ok    ingest")
        proc.popen.send_signal(signal.SIGTERM)
        code = proc.wait()
        err = proc.stderr()
        if not ("Run finished" in proc.stdout() and code == 0):
            break
    else:
        pytest.fail("three runs finished before SIGTERM arrived")
    assert code == 130, err[-3000:]
    assert "outcomes: interrupted" in err
    snap = snapshot(out)
    assert not snap.leftovers and not snap.unexpected and not snap.unreadable, snap
    for week in snap.reports.values():
        assert {"report.html", "report.pdf", "summary.csv"} <= set(week)


def test_second_run_is_refused_or_waits_and_two_runs_give_identical_outputs(tmp_path, cli_env):
    raw = tiny_raw(tmp_path / "raw")
    out = tmp_path / "out"
    first = start_run(cli_env, tmp_path, "first", raw, out)
    deadline = time.monotonic() + RUN_TIMEOUT
    while read_holder(out / "processed").pid != first.pid:
        assert first.popen.poll() is None, f"first run ended early:\n{first.stderr()[-3000:]}"
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    started_text = read_holder(out / "processed").started

    refused = start_run(cli_env, tmp_path, "refused", raw, out)
    assert refused.wait(timeout=120) == EX_TEMPFAIL, refused.stderr()
    message = refused.stderr().strip()
    assert len(message.splitlines()) == 1, message
    assert f"pid {first.pid}" in message and "in use" in message and "--wait" in message, message
    assert started_text[:10] in message, message  # the start time (date part, at least)
    assert not refused.stdout().strip()

    waiter = start_run(cli_env, tmp_path, "waiter", raw, out, "--wait", "600")
    assert waiter.wait_for(f"pid {first.pid}"), waiter.stderr()  # "... in use by ...; waiting up to 600s"
    assert "waiting up to 600s" in waiter.stderr()
    assert waiter.popen.poll() is None, "the waiting run should still be waiting"
    run_ok(first)
    first_outputs = snapshot(out)
    run_ok(waiter)
    second_outputs = snapshot(out)
    assert "Run finished" in waiter.stdout()
    for snap in (first_outputs, second_outputs):
        assert snap.tables and snap.reports and not snap.unexpected and not snap.unreadable, snap
    # idempotence: the second run over the same inputs gives byte-identical tables and report
    assert second_outputs.tables == first_outputs.tables
    assert second_outputs.reports == first_outputs.reports
    assert not second_outputs.leftovers


def test_a_dagster_launched_run_waits_for_the_run_lock(tmp_path):
    """A run started by Dagster itself (UI, schedule, sensor) takes the same lock as
    `outcomes run`: while another process holds it, the run fails with a clear message."""
    import dagster as dg

    from pipelines.definitions import make_definitions
    from pipelines.locking import run_lock

    processed, reports = tmp_path / "processed", tmp_path / "reports"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "episodes_1.csv").write_text(
        "episode_id,patient_id,clinic_id,condition,referral_date\nE1,P1,C1,lbp,2026-01-05\n")
    config = {"resources": {
        "paths": {"config": {"raw_dir": str(raw), "processed_dir": str(processed), "reports_dir": str(reports),
                             "today": "2026-03-01"}},
        "processed_io_manager": {"config": {"processed_dir": str(processed)}},
        "run_guard": {"config": {"processed_dir": str(processed), "reports_dir": str(reports), "wait_seconds": 0.5}},
    }}
    job = make_definitions().resolve_job_def("outcomes_job")
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipelines.locking import run_lock\n"
        f"with run_lock({str(processed)!r}, {str(reports)!r}):\n"
        "    print('held', flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with dg.instance_for_test() as instance:
            blocked = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
        assert not blocked.success
        messages = " ".join(str(e.event_specific_data) for e in blocked.all_events if e.is_failure)
        assert "in use by another run" in messages or "another run" in messages
        assert not (processed / "episodes.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    with dg.instance_for_test() as instance:
        assert job.execute_in_process(run_config=config, instance=instance, raise_on_error=False).success
    with run_lock(processed, reports):  # released after the run
        pass
    assert (processed / "episodes.parquet").exists()
