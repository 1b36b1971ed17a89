"""The asset graph runs unchanged under Dagster's Celery executor, chosen by configuration alone.

A Celery worker (``dagster-celery worker start``) executes every step of a run of the
weekly report job (the scheduled job: ingest, outcomes and the report) launched with
``dagster job execute -m pipelines.definitions``: the same commands as a deployment, where
only the environment differs ($OUTCOMES_EXECUTOR, $OUTCOMES_EXECUTOR_CONFIG and
$DAGSTER_HOME, given to both processes). The tables and the report's published summary
equal an in-process run's.

It runs twice: with a Redis server as broker and result backend, as a deployment has it
(docs/deployment.md, "Celery"), here a throwaway ``redis-server`` on a Unix socket in the
test's folder (.ci/run installs Debian's package); and with Celery's filesystem transport
(kombu) and file backend, which need no server: the run process and the worker exchange
messages through folders.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pipelines.definitions import EXECUTOR_CONFIG_ENV, EXECUTOR_ENV, executor_from_environment, make_definitions
from test_multiprocess import _config, write_raw

ROOT = Path(__file__).resolve().parents[1]
FIRST_WEEK, WEEK = "2026-01-05", "2026-01-12"  # the partitions' first week; the week reported
BIN = Path(sys.executable).parent


def _celery_config(folder: Path) -> dict:
    for name in ("messages", "processed", "results"):
        (folder / name).mkdir(parents=True)
    return {
        "broker": "filesystem://",
        "backend": f"file://{folder / 'results'}",
        "config_source": {"broker_transport_options": {
            "data_folder_in": str(folder / "messages"), "data_folder_out": str(folder / "messages"),
            "data_folder_processed": str(folder / "processed")}},
    }


def _redis_config(socket: Path) -> dict:
    return {"broker": f"redis+socket://{socket}", "backend": f"redis+socket://{socket}"}


@pytest.fixture
def redis_socket(tmp_path):
    """A throwaway Redis server listening on a Unix socket only (no port), stopped afterwards."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian package 'redis-server'; .ci/run installs it)")
    pytest.importorskip("redis")
    folder = tmp_path / "redis"
    folder.mkdir()
    socket = folder / "redis.sock"
    process = subprocess.Popen([server, "--port", "0", "--unixsocket", str(socket), "--save", "",
                                "--appendonly", "no", "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(unix_socket_path=str(socket))
        for _ in range(200):
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, FileNotFoundError):
                pass
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}")
            time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer within 10 s")
        yield socket
    finally:
        process.terminate()
        process.wait(timeout=30)


def _stop(worker: subprocess.Popen) -> None:
    """Stop the worker and the Celery processes it started (one process group)."""
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_weekly_report_job_under_the_celery_executor(broker, tmp_path, monkeypatch, request):
    pytest.importorskip("dagster_celery")
    if not (BIN / "celery").exists() or not (BIN / "dagster-celery").exists():
        pytest.skip("the celery and dagster-celery commands are not installed beside this Python")
    socket = request.getfixturevalue("redis_socket") if broker == "redis" else None
    raw = write_raw(tmp_path)
    celery, single = tmp_path / "celery", tmp_path / "single"
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    config = _redis_config(socket) if socket is not None else _celery_config(tmp_path / "broker")
    env = {**os.environ, "DAGSTER_HOME": str(home), EXECUTOR_ENV: "celery", EXECUTOR_CONFIG_ENV: json.dumps(config),
           "OUTCOMES_FIRST_WEEK": FIRST_WEEK,  # the same partitions in both processes, whatever is written
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    # the worker takes the same broker settings from the YAML file dagster-celery reads
    (tmp_path / "worker.yaml").write_text(json.dumps({"execution": {"config": config}}))
    (tmp_path / "run.yaml").write_text(json.dumps(_config(raw, celery, tmp_path / "r1")))
    # the instance's storage is created once, before two processes open it: the run process
    # and the worker creating a new SQLite instance at the same time can both stamp its schema
    # version, and the next process to open it then fails (seen here once)
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
         "-y", str(tmp_path / "worker.yaml"), "--", "--concurrency=1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # a run whose worker never answers waits for it: the timeout kills the run process
        run = subprocess.run([str(BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions",
                              "-j", "weekly_report_job", "-c", str(tmp_path / "run.yaml"),
                              "--tags", json.dumps({"dagster/partition": WEEK})],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        run = subprocess.CompletedProcess(exc.cmd, returncode=-1, stdout=str(exc.stdout or ""),
                                          stderr=f"{exc.stderr or ''}\nno result after {exc.timeout} s")
    finally:
        _stop(worker)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + "\nworker:\n" + worker_log[-3000:]

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        [record] = instance.get_run_records()
        assert record.dagster_run.job_name == "weekly_report_job"
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        logs = instance.all_logs(record.dagster_run.run_id)
    steps = {e.step_key for e in logs
             if e.dagster_event is not None and e.dagster_event.event_type_value == "STEP_SUCCESS"}
    assert {"ingest", "outcome_tables", "outcome_summaries", "accepted_keys_and_references", "weekly_report"} <= steps
    # every step was handed to Celery and run by the worker, in another process than the run's
    submitting = [e for e in logs if "Submitting celery task" in (e.message or "")]
    in_worker = {e.step_key for e in logs if "in celery worker" in (e.message or "")}
    assert steps == {e.step_key for e in submitting} == in_worker
    run_pids = {e.dagster_event.pid for e in submitting}
    step_pids = {e.dagster_event.pid for e in logs if e.dagster_event is not None
                 and e.dagster_event.event_type_value == "STEP_SUCCESS"}
    assert len(run_pids) == 1 and step_pids and not step_pids & run_pids
    if socket is not None:  # the steps' results went through Redis, one per task submitted
        import redis

        assert len(redis.Redis(unix_socket_path=str(socket)).keys("celery-task-meta-*")) == len(submitting)

    job = make_definitions(start=date.fromisoformat(FIRST_WEEK)).resolve_job_def("weekly_report_job")
    inproc = job.execute_in_process(
        run_config=_config(raw, single, tmp_path / "r2"), partition_key=WEEK, instance=dg.DagsterInstance.ephemeral())
    assert inproc.success
    for name in ("episode_outcomes.parquet", "condition_summary.csv", "episodes.parquet", "km_curves.parquet",
                 "scored_sessions.parquet", "rejected_rows.csv", "ingest_audit.csv"):
        read = pl.read_parquet if name.endswith(".parquet") else pl.read_csv
        assert read(celery / name).equals(read(single / name)), name
    [week] = [p.name for p in (tmp_path / "r1" / "weekly").iterdir()]
    assert week == "2026-W03"
    for name in ("report.html", "report.pdf"):
        assert (tmp_path / "r1" / "weekly" / week / name).stat().st_size > 0
    assert pl.read_csv(tmp_path / "r1" / "weekly" / week / "summary.csv").equals(
        pl.read_csv(tmp_path / "r2" / "weekly" / week / "summary.csv"))


def test_the_executor_is_chosen_by_the_environment():
    assert executor_from_environment({}).name == "in_process"
    assert executor_from_environment({EXECUTOR_ENV: " multiprocess "}).name == "multiprocess"
    configured = executor_from_environment({EXECUTOR_ENV: "multiprocess", EXECUTOR_CONFIG_ENV: '{"max_concurrent": 2}'})
    assert configured.name == "multiprocess" and configured is not dg.multiprocess_executor
    jobs = make_definitions(executor=configured)
    assert jobs.resolve_job_def("outcomes_job").executor_def is configured
    celery = {"broker": "redis://broker:6379/0", "backend": "redis://broker:6379/1"}
    assert executor_from_environment({EXECUTOR_ENV: "celery", EXECUTOR_CONFIG_ENV: json.dumps(celery)}).name == "celery"
    for environ, message in (({EXECUTOR_ENV: "threads"}, "must be in_process, multiprocess or celery"),
                             ({EXECUTOR_CONFIG_ENV: "{broker"}, "is not JSON"),
                             ({EXECUTOR_CONFIG_ENV: "[1]"}, "must be a JSON object"),
                             # checked against the executor's schema when the definitions load
                             ({EXECUTOR_ENV: "multiprocess", EXECUTOR_CONFIG_ENV: '{"max_concurrent": "two"}'},
                              "not a config of the multiprocess executor"),
                             ({EXECUTOR_ENV: "celery", EXECUTOR_CONFIG_ENV: '{"brokr": "redis://broker:6379/0"}'},
                              "not a config of the celery executor")):
        with pytest.raises(ValueError, match=message):
            executor_from_environment(environ)
