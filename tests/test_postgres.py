"""The Dagster instance on PostgreSQL storage (`dagster-postgres`, deploy/dagster-postgres.yaml).

Needs a PostgreSQL server: ``OUTCOMES_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:PORT/DB``
for a role that may create databases (``.ci/run`` starts a throwaway server and sets it);
without it the test is skipped. Each session creates a database of its own, named
``outcomes_test_<random>``, and drops it at the end, so runs never see each other's history.

The test copies deploy/dagster-postgres.yaml, unchanged, into a new ``$DAGSTER_HOME``, runs the
real ``outcomes run`` command as a subprocess (the way an operator does), turns the weekly
schedule off with the ``dagster`` CLI, and then reads everything back from the database through
a separate ``DagsterInstance``: the storage classes, the two runs and their status, every
asset's materialisation, the report's partition, the asset checks, the schedule's state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dagster as dg
import pytest

from test_defs import ASSETS, CHECKS

URL_VAR = "OUTCOMES_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parents[1]
DEPLOY_YAML = REPO / "deploy" / "dagster-postgres.yaml"
TODAY = "2026-11-27"  # synthetic data end on Sunday 2026-11-22 (as in test_reliability.py)
RUN_TIMEOUT = 600  # seconds; generous, for a loaded 2-core machine
BIN = Path(sys.executable).parent
OUTCOMES = [str(BIN / "outcomes")] if (BIN / "outcomes").exists() else [sys.executable, "-m", "pipelines.cli"]
DAGSTER = [str(BIN / "dagster")] if (BIN / "dagster").exists() else [sys.executable, "-m", "dagster"]

pytestmark = pytest.mark.skipif(
    not os.environ.get(URL_VAR),
    reason=f"{URL_VAR} is not set: no PostgreSQL server to test against (.ci/run starts one when it can "
           "install PostgreSQL; or set it to postgresql://USER:PASSWORD@HOST:PORT/DB for a role with CREATEDB)")


def _server() -> dict[str, str]:
    url = urlsplit(os.environ[URL_VAR])
    if url.scheme not in ("postgres", "postgresql") or not url.hostname or not url.username:
        pytest.fail(f"{URL_VAR} must look like postgresql://USER:PASSWORD@HOST:PORT/DB, not {url.scheme}://...")
    return {"host": url.hostname, "port": str(url.port or 5432), "user": unquote(url.username),
            "password": unquote(url.password or ""), "dbname": url.path.lstrip("/") or "postgres"}


def _connect(server: dict[str, str], dbname: str):
    import psycopg2

    conn = psycopg2.connect(host=server["host"], port=server["port"], user=server["user"],
                            password=server["password"], dbname=dbname, connect_timeout=10)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def pg_env() -> dict[str, str]:
    """A new, empty database for this session; the DAGSTER_PG_* variables that point at it."""
    server = _server()
    db_name = f"outcomes_test_{uuid.uuid4().hex[:12]}"
    admin = _connect(server, server["dbname"])
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db_name}"')
        yield {"DAGSTER_PG_HOST": server["host"], "DAGSTER_PG_PORT": server["port"],
               "DAGSTER_PG_USER": server["user"], "DAGSTER_PG_PASSWORD": server["password"],
               "DAGSTER_PG_DB": db_name}
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')  # PostgreSQL 13+
        admin.close()


def _cli_env(tmp_path_factory: pytest.TempPathFactory, home: Path, pg_env: dict[str, str]) -> dict[str, str]:
    """Environment of the subprocesses: this DAGSTER_HOME and database, and the bytecode cache
    test_reliability.py shares (this environment sets PYTHONDONTWRITEBYTECODE)."""
    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PG_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(pg_env, DAGSTER_HOME=str(home), PYTHONPYCACHEPREFIX=str(session.parent / "outcomes-test-pycache"),
               PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_outcomes_run_records_everything_in_postgres(pg_env, tmp_path, tmp_path_factory, monkeypatch):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
    from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

    from pipelines.synth import generate

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DEPLOY_YAML, home / "dagster.yaml")  # the shipped file, as an operator would
    raw, processed, reports = tmp_path / "raw", tmp_path / "processed", tmp_path / "reports"
    generate(300, 5, raw)  # = outcomes synth --episodes 300 --seed 5 --out raw
    env = _cli_env(tmp_path_factory, home, pg_env)

    run = _run([*OUTCOMES, "run", "--raw-dir", str(raw), "--processed-dir", str(processed), "--reports-dir",
                str(reports), "--today", TODAY, "--quiet"], env, cwd=tmp_path)
    run_prefix = re.search(r"\(Dagster run ([0-9a-f]{8})\)", run.stdout)
    as_of = re.search(r"Metrics as of (\d{4}-\d{2}-\d{2})", run.stdout)
    assert run_prefix and as_of, run.stdout
    monday = date.fromisoformat(as_of[1]) - timedelta(days=date.fromisoformat(as_of[1]).weekday())
    # the operator turns the schedule off (it is on by default in code, so only a state written
    # to the schedule storage can say STOPPED)
    _run([*DAGSTER, "schedule", "stop", "weekly_report_schedule", "-m", "pipelines.definitions"], env, cwd=tmp_path)

    # read it all back, in this process, from the database only
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    assert not list(home.rglob("*.db")), "SQLite storage was created in DAGSTER_HOME instead of PostgreSQL"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert pg_env["DAGSTER_PG_DB"] in instance.run_storage.postgres_url

        runs = {r.job_name: r for r in instance.get_runs()}
        assert len(instance.get_runs()) == 2 and set(runs) == {"outcomes_job", "weekly_report_job"}, runs
        for r in runs.values():
            assert r.status == dg.DagsterRunStatus.SUCCESS, (r.job_name, r.status)
        outcomes_run, report_run = runs["outcomes_job"], runs["weekly_report_job"]
        assert outcomes_run.run_id.startswith(run_prefix[1])
        assert report_run.tags.get("dagster/partition") == monday.isoformat()

        for name in sorted(ASSETS):
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            assert event is not None, f"no materialisation of {name} in the event log"
            assert event.run_id == outcomes_run.run_id, name
        outcomes_event = instance.get_latest_materialization_event(dg.AssetKey("episode_outcomes"))
        assert outcomes_event.asset_materialization.metadata["as_of"].value == as_of[1]
        report_event = instance.get_latest_materialization_event(dg.AssetKey("weekly_report"))
        assert report_event is not None and report_event.run_id == report_run.run_id
        assert instance.get_materialized_partitions(dg.AssetKey("weekly_report")) == {monday.isoformat()}

        for asset, check in sorted(CHECKS):
            key = dg.AssetCheckKey(dg.AssetKey(asset), check)
            history = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
            assert len(history) == 1, (key, history)
            assert history[0].status.value == "SUCCEEDED", (key, history[0].status)

        states = [(s.name, s.instigator_type, s.status) for s in instance.all_instigator_state()]
        assert states == [("weekly_report_schedule", InstigatorType.SCHEDULE, InstigatorStatus.STOPPED)], states

    # and the tables really are in this session's database
    conn = _connect(_server(), pg_env["DAGSTER_PG_DB"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone()[0] == 2
            cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
            assert cur.fetchone()[0] >= len(ASSETS) + 1
            cur.execute("SELECT status FROM instigators")
            assert cur.fetchall() == [("STOPPED",)]
    finally:
        conn.close()
