"""The processed tables on object storage by configuration only: the same definitions, with
the I/O manager's and the pipeline's ``processed_dir`` set to an ``s3://`` URL, give the same
tables and report as on a local folder, also in a weekly run that splices the previous
run's tables read back from the bucket.

The S3 server is moto's (``moto.server.ThreadedMotoServer``, on a free port of 127.0.0.1):
the requests are real HTTP requests of polars' object-store client, against a server that
speaks the S3 protocol. Credentials and endpoint come from the standard ``AWS_*``
environment variables, as in a deployment.
"""

import asyncio
import json
import os
import shutil
import subprocess
from datetime import date

import boto3
import numpy as np
import dagster as dg
import polars as pl
import pytest
from moto.server import ThreadedMotoServer

from pipelines.defs.resources import CSV_SCHEMAS, PipelineConfig, ProcessedTableIOManager
from pipelines.definitions import EXECUTOR_ENV, folders_from_environment, make_definitions
from pipelines.defs.reports.partitions import FALLBACK_FIRST_WEEK, first_week
from pipelines.io import is_url, locate, read_table, write_table
from pipelines.outcomes.lineage import STAMP_KEY, Lineage
from pipelines.research import _FILES as RESEARCH_FILES
from pipelines.research import PROCESSED_DIR_ENV, find_processed_dir, load_tables
from test_celery import BIN, FIRST_WEEK, ROOT, WEEK
from test_multiprocess import write_raw
from test_notebooks import NOTEBOOKS_DIR, _run_all, _stdout, demo_processed, kernel_name  # noqa: F401 (fixtures)
from weekly_helpers import add_week, raw_but_last_week

BUCKET = "outcomes-test"
TODAY = "2026-11-27"
TABLES = ("episodes.parquet", "sessions.parquet", "pain_scores.parquet", "rejected_rows.csv", "ingest_audit.csv",
          "scored_sessions.parquet", "episode_outcomes.parquet", "session_relief.parquet",
          "pain_trajectories.parquet", "condition_summary.csv", "condition_summary.parquet",
          "clinic_condition_summary.parquet", "km_curves.parquet", "episode_input_digests.parquet")


@pytest.fixture(scope="module")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A new empty bucket, reached through the AWS_* variables polars and boto3 both read."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": s3_server, "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _keys(client, prefix: str) -> set[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"].removeprefix(prefix) for item in listed}


def test_locations():
    assert is_url("s3://bucket/processed") and is_url("gs://b/p") and is_url("az://c/p")
    assert not is_url("data/processed") and not is_url("/abs/path")
    from pathlib import Path
    assert not is_url(Path("s3:/bucket"))  # a Path is always local
    assert locate("s3://bucket/processed/", "t.parquet") == "s3://bucket/processed/t.parquet"
    assert locate("data/processed", "t.parquet") == Path("data/processed/t.parquet")


def test_tables_round_trip_through_the_bucket(s3):
    base = f"s3://{BUCKET}/processed"
    frame = pl.DataFrame({"episode_id": ["E1", "E2", None], "score": [1.5, None, -0.0],
                          "day": [date(2026, 1, 1), None, date(2026, 1, 3)]})
    stamp = Lineage(inputs="i", as_of="2026-01-04", code="c")
    write_table(frame, locate(base, "t.parquet"), {STAMP_KEY: stamp.to_json()})
    write_table(frame, locate(base, "t.csv"))
    assert _keys(s3, "processed/") == {"t.parquet", "t.csv"}
    store = ProcessedTableIOManager(processed_dir=base)
    assert store.read_file("t.parquet").equals(frame)
    assert store.read_file("t.parquet", columns=["score"]).equals(frame.select("score"))
    assert store.lineage("t.parquet") == stamp
    assert store.lineage("missing.parquet") is None
    assert store.part_records("t") is None  # one object per table: no parts to reuse
    assert read_table(locate(base, "t.csv"), frame.schema).equals(frame)
    with pytest.raises(FileNotFoundError):
        store.read_file("missing.parquet")


def test_a_large_table_goes_up_in_parts_and_comes_back_whole(s3):
    """Tables of a million episodes (100-200 MB) are sent as S3 multipart uploads: the object
    appears only when the upload completes, whole, with its footer."""
    rng = np.random.default_rng(3)
    frame = pl.DataFrame({"x": rng.random(2_500_000), "k": rng.integers(0, 1 << 62, 2_500_000)})
    write_table(frame, f"s3://{BUCKET}/big.parquet", {STAMP_KEY: "{}"})
    head = s3.head_object(Bucket=BUCKET, Key="big.parquet")
    assert head["ETag"].strip('"').rsplit("-", 1)[-1].isdigit() and "-" in head["ETag"]  # a multipart upload's ETag
    assert head["ContentLength"] > 30_000_000
    assert pl.read_parquet(f"s3://{BUCKET}/big.parquet").equals(frame)
    assert pl.read_parquet_metadata(f"s3://{BUCKET}/big.parquet")[STAMP_KEY] == "{}"


def test_no_local_cache_for_object_storage_unless_configured(tmp_path):
    remote = PipelineConfig(processed_dir=f"s3://{BUCKET}/processed")
    assert remote.ingest_cache_dir() is None and remote.digest_cache_dir() is None
    pinned = PipelineConfig(processed_dir=f"s3://{BUCKET}/processed", cache_dir=str(tmp_path / "c"))
    assert pinned.ingest_cache_dir() == tmp_path / "c" / "ingest"
    assert pinned.digest_cache_dir() == tmp_path / "c" / "outcomes" / "digest-parts"
    local = PipelineConfig(processed_dir=str(tmp_path / "p"))
    assert local.ingest_cache_dir() == tmp_path / "p" / ".cache" / "ingest"
    assert PipelineConfig(processed_dir=str(tmp_path / "p"), ingest_cache=False).ingest_cache_dir() is None


def _config(raw, processed, reports, cache_dir="", today=TODAY):
    return {"resources": {
        "paths": {"config": {"raw_dir": str(raw), "processed_dir": str(processed), "reports_dir": str(reports),
                             "today": today, "cache_dir": cache_dir}},
        "processed_io_manager": {"config": {"processed_dir": str(processed)}},
        "run_guard": {"config": {"processed_dir": str(processed), "reports_dir": str(reports)}},
    }}


def _metadata(result, output: str) -> dict:
    [event] = [e for e in result.all_events
               if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.path[-1] == output]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_the_pipeline_on_a_bucket_equals_it_on_a_folder(s3, tmp_path, monkeypatch):
    """Three deployments of the same definitions over the same exports: the tables in a
    bucket with no cache (object storage's default), in a bucket with a local cache folder,
    and in a local folder. A full run, then the scheduled job a week later."""
    monkeypatch.chdir(tmp_path)  # a URL taken for a path would leave an "s3:" folder here
    source, raw, weeks = raw_but_last_week(tmp_path, 250, 7)
    local = tmp_path / "local"
    deployments = {  # name: (processed_dir, cache_dir)
        "s3": (f"s3://{BUCKET}/network/processed", ""),
        "s3-cached": (f"s3://{BUCKET}/cached/processed", str(tmp_path / "cache")),
        "local": (local, ""),
    }
    defs = make_definitions(start=date(2025, 1, 6))
    outcomes_job = defs.resolve_job_def("outcomes_job")
    for name, (processed, cache_dir) in deployments.items():
        assert outcomes_job.execute_in_process(run_config=_config(raw, processed, tmp_path / f"r-{name}", cache_dir),
                                               instance=dg.DagsterInstance.ephemeral()).success
    add_week(source, raw, weeks[-1])
    partition = date.fromisocalendar(int(weeks[-1][:4]), int(weeks[-1][-2:]), 1).isoformat()
    weekly = defs.resolve_job_def("weekly_report_job")
    results = {}
    for name, (processed, cache_dir) in deployments.items():
        results[name] = weekly.execute_in_process(run_config=_config(raw, processed, tmp_path / f"r-{name}", cache_dir),
                                                  partition_key=partition, instance=dg.DagsterInstance.ephemeral())
        assert results[name].success, name

    for name in ("s3", "s3-cached"):
        bucket = deployments[name][0]
        prefix = bucket.removeprefix(f"s3://{BUCKET}/") + "/"
        # every table is one object in the bucket, equal to the local run's table
        stored = _keys(s3, prefix)
        assert set(TABLES) <= stored, set(TABLES) - stored
        assert not any(k.startswith(".cache") for k in stored)  # caches are local, or none
        for table in TABLES:
            schema = CSV_SCHEMAS.get(table)
            assert read_table(locate(bucket, table), schema).equals(read_table(local / table, schema)), (name, table)
        # the report read its tables from the bucket: the same published summary
        week_dir = f"weekly/{weeks[-1]}"
        assert ((tmp_path / f"r-{name}" / week_dir / "summary.csv").read_bytes()
                == (tmp_path / "r-local" / week_dir / "summary.csv").read_bytes()), name
        assert (tmp_path / f"r-{name}" / week_dir / "report.pdf").stat().st_size > 0
    # the weekly runs read the previous tables and digests back (from the bucket) and spliced
    for name, result in results.items():
        for output in ("scored_sessions", "episode_outcomes"):
            assert _metadata(result, output)["incremental"].startswith("incremental: recomputed"), (name, output)
    # the ingest cache: in the folder given, or none
    assert "incremental" in _metadata(results["s3-cached"], "ingest_audit")["settled"]
    assert "every row settled" in _metadata(results["s3"], "ingest_audit")["settled"]
    assert (tmp_path / "cache" / "ingest").is_dir() and not (tmp_path / "s3:").exists()


def test_first_week_from_episodes_in_a_bucket(s3, monkeypatch):
    monkeypatch.delenv("OUTCOMES_FIRST_WEEK", raising=False)
    base = f"s3://{BUCKET}/processed"
    assert first_week(base) == FALLBACK_FIRST_WEEK  # nothing there yet: the definitions still load
    write_table(pl.DataFrame({"referral_date": [date(2025, 3, 13), date(2025, 2, 5)]}), locate(base, "episodes.parquet"))
    assert first_week(base) == date(2025, 2, 3)


def test_folders_from_the_environment(tmp_path):
    environ = {"OUTCOMES_PROCESSED_DIR": f"s3://{BUCKET}/p", "OUTCOMES_RAW_DIR": " /exports ",
               "OUTCOMES_REPORTS_DIR": "", "OUTCOMES_EXECUTOR": "celery"}
    folders = folders_from_environment(environ)
    assert folders == {"processed_dir": f"s3://{BUCKET}/p", "raw_dir": "/exports"}
    built = make_definitions(start=date(2026, 1, 5), folders=folders)
    assert built.resources["paths"].processed_dir == f"s3://{BUCKET}/p"
    assert built.resources["paths"].raw_dir == "/exports"
    assert built.resources["paths"].reports_dir == "reports"  # unset: the default
    assert built.resources["processed_io_manager"].processed_dir == f"s3://{BUCKET}/p"
    assert built.resources["run_guard"].processed_dir == f"s3://{BUCKET}/p"
    assert folders_from_environment({}) == {}


def test_a_scheduled_run_on_a_bucket_configured_by_environment_alone(s3, tmp_path, monkeypatch):
    """What a deployment does: ``dagster job execute -m pipelines.definitions`` for one week,
    as the schedule launches it (a partition, no run config), with the folders, the
    executor (a process per step, as Celery or Kubernetes run them) and the S3 endpoint
    and credentials in the environment only. Steps share tables only through the bucket."""
    raw = write_raw(tmp_path)
    bucket = f"s3://{BUCKET}/scheduled/processed"
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), EXECUTOR_ENV: "multiprocess",
           "OUTCOMES_FIRST_WEEK": FIRST_WEEK, "OUTCOMES_RAW_DIR": str(raw), "OUTCOMES_PROCESSED_DIR": bucket,
           "OUTCOMES_REPORTS_DIR": str(tmp_path / "reports"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    run = subprocess.run([str(BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions",
                          "-j", "weekly_report_job", "--tags", json.dumps({"dagster/partition": WEEK})],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        [record] = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert not record.dagster_run.run_config.get("resources")  # the folders came from the environment
        step_pids = {e.dagster_event.pid for e in instance.all_logs(record.dagster_run.run_id)
                     if e.step_key and e.dagster_event is not None}
        assert len(step_pids) > 1  # steps really ran in separate processes
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "data").exists()

    single = tmp_path / "single"
    job = make_definitions(start=date.fromisoformat(FIRST_WEEK)).resolve_job_def("weekly_report_job")
    assert job.execute_in_process(run_config=_config(raw, single, tmp_path / "r2", today=date.today().isoformat()),
                                  partition_key=WEEK, instance=dg.DagsterInstance.ephemeral()).success
    for table in TABLES:
        schema = CSV_SCHEMAS.get(table)
        assert read_table(locate(bucket, table), schema).equals(read_table(single / table, schema)), table
    [week] = [p.name for p in (tmp_path / "reports" / "weekly").iterdir()]
    assert ((tmp_path / "reports" / "weekly" / week / "summary.csv").read_bytes()
            == (tmp_path / "r2" / "weekly" / week / "summary.csv").read_bytes())


def test_notebooks_read_the_tables_from_a_bucket(s3, tmp_path, monkeypatch):
    raw = write_raw(tmp_path)
    bucket = f"s3://{BUCKET}/research/processed"
    assert make_definitions().resolve_job_def("outcomes_job").execute_in_process(
        run_config=_config(raw, bucket, tmp_path / "r"), instance=dg.DagsterInstance.ephemeral()).success
    monkeypatch.setenv("OUTCOMES_PROCESSED_DIR", bucket)
    assert find_processed_dir() == bucket
    tables = load_tables(find_processed_dir())
    assert tables.episode_outcomes.equals(pl.read_parquet(locate(bucket, "episode_outcomes.parquet")))
    assert tables.condition_summary.height > 1 and tables.processed_dir == bucket
    with pytest.raises(FileNotFoundError, match="nothing-here has no episodes.parquet"):
        load_tables(f"s3://{BUCKET}/nothing-here")


def test_a_notebook_runs_on_tables_in_a_bucket(s3, demo_processed, kernel_name):
    """The first notebook (the condition table, recomputed and checked against the stored
    one) with ``OUTCOMES_PROCESSED_DIR`` naming a bucket that holds the demo run's tables."""
    bucket = f"s3://{BUCKET}/notebooks/processed"
    for filename in RESEARCH_FILES.values():
        schema = CSV_SCHEMAS.get(filename)
        write_table(read_table(demo_processed / filename, schema), locate(bucket, filename))
    notebook = NOTEBOOKS_DIR / "1.0-condition-outcomes.ipynb"
    env = {**os.environ, PROCESSED_DIR_ENV: bucket}
    [(nb, error, _)] = asyncio.run(_run_all([notebook], kernel_name, env)).values()
    assert error is None, error
    assert bucket in _stdout(next(c for c in nb.cells if c.cell_type == "code"))
    checked = _stdout(next(c for c in nb.cells if "assert_frame_equal(summary" in c.source))
    assert checked.startswith(f"OK: the recomputed table equals {bucket}/condition_summary.csv"), checked
