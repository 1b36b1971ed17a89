"""The one entry point: every asset, check, job, schedule, sensor and resource.

``make_definitions`` builds them for a time zone and a first week; the module-level
``defs`` (what `dagster dev` / `dg` / a code server load) takes the time zone from
./outcomes.toml, the first week from the processed data (see
pipelines.defs.reports.partitions), and the executor and the folders from the environment
(:func:`executor_from_environment`, :func:`folders_from_environment`).
"""

import json
import os
from datetime import date
from pathlib import Path

import dagster as dg

from pipelines.defs.ingest import assets as ingest_assets
from pipelines.defs.ingest import checks as ingest_checks
from pipelines.defs.outcomes import assets as outcome_assets
from pipelines.defs.outcomes import checks as outcome_checks
from pipelines.defs.progress import progress_logger
from pipelines.defs.reports.assets import build_report_checks, build_weekly_report_asset
from pipelines.defs.reports.automation import build_new_exports_sensor, build_weekly_schedule
from pipelines.defs.reports.partitions import first_week, weekly_partitions
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, ProcessedTableIOManager, RunGuard
from pipelines.research import PROCESSED_DIR_ENV
from pipelines.settings import Settings

SETTINGS_FILE = Path("outcomes.toml")
#: the executor of ``defs``' jobs: ``in_process`` (default), ``multiprocess`` or ``celery``
EXECUTOR_ENV = "OUTCOMES_EXECUTOR"
#: that executor's config, a JSON object (e.g. the Celery broker); ``{}`` when unset
EXECUTOR_CONFIG_ENV = "OUTCOMES_EXECUTOR_CONFIG"
#: the folders of ``defs``' runs by resource field: what scheduled and sensor runs use, and
#: the defaults of any run's config. ``processed_dir`` may be an object-storage URL.
FOLDER_ENV = {"raw_dir": "OUTCOMES_RAW_DIR", "processed_dir": PROCESSED_DIR_ENV,  # the notebooks' too
              "reports_dir": "OUTCOMES_REPORTS_DIR", "cache_dir": "OUTCOMES_CACHE_DIR"}


def folders_from_environment(environ=os.environ) -> dict[str, str]:
    """The folders set in the environment (:data:`FOLDER_ENV`), by resource field; read
    where the definitions load (code server, run worker, Celery worker), so every process
    of a deployment must have the same values."""
    return {field: environ[name].strip() for field, name in FOLDER_ENV.items() if environ.get(name, "").strip()}


def executor_from_environment(environ=os.environ) -> dg.ExecutorDefinition:
    """The executor named by ``$OUTCOMES_EXECUTOR``, configured with ``$OUTCOMES_EXECUTOR_CONFIG``.

    A deployment picks where steps run by configuration alone (docs/deployment.md): every
    process that loads the definitions (code server, run worker, Celery worker) gets the
    same two variables. The config is fixed here, so scheduled and sensor runs use it too,
    without an ``execution`` section in their run config. ``celery`` needs the ``celery``
    extra (dagster-celery); its config keys are ``celery_executor``'s (broker, backend,
    include, config_source, retries). An unknown name, malformed JSON or a config the
    executor does not accept raises, naming the variable: a deployment must not run with
    another executor or config than the one it asked for.
    """
    name = environ.get(EXECUTOR_ENV, "").strip() or "in_process"
    text = environ.get(EXECUTOR_CONFIG_ENV, "").strip()
    try:
        config = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"${EXECUTOR_CONFIG_ENV} is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"${EXECUTOR_CONFIG_ENV} must be a JSON object, not {type(config).__name__}")
    if name == "in_process":
        executor = dg.in_process_executor
    elif name == "multiprocess":
        executor = dg.multiprocess_executor
    elif name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError:
            raise ValueError(f"${EXECUTOR_ENV}=celery needs dagster-celery: install the project "
                             "with its celery extra (pip install '.[celery]')") from None
        executor = celery_executor
    else:
        raise ValueError(f"${EXECUTOR_ENV} must be in_process, multiprocess or celery, not {name!r}")
    if not config:
        return executor
    configured = executor.configured(config, name=name)
    _check_config(configured)
    return configured


def _check_config(executor: dg.ExecutorDefinition) -> None:
    """Validate a configured executor's config now, when the definitions load, not when the
    first run starts (Dagster checks it against the executor's schema only then)."""

    @dg.op
    def probe() -> None:
        pass

    @dg.job(name="executor_config_probe", executor_def=executor)
    def job() -> None:
        probe()

    try:
        dg.validate_run_config(job)
    except dg.DagsterInvalidConfigError as exc:
        raise ValueError(f"${EXECUTOR_CONFIG_ENV} is not a config of the {executor.name} executor: {exc}") from None


def make_definitions(settings: Settings | None = None, start: date | None = None,
                     executor: dg.ExecutorDefinition = dg.in_process_executor,
                     folders: dict[str, str] | None = None) -> dg.Definitions:
    """Every definition, for a time zone (settings), a first week, an executor and the
    resources' folders (``folders``: fields of :class:`PipelineConfig`, default theirs).

    The default executor runs a whole run in one process, so the run lock (``run_guard``)
    covers every step; ``dg.multiprocess_executor`` runs the same graph unchanged, one
    process per step (the lock is then held by the ingest and report steps only).
    """
    settings = settings or (Settings.from_toml(SETTINGS_FILE) if SETTINGS_FILE.exists() else Settings())
    folders = folders or {}
    partitions = weekly_partitions(start or first_week(folders.get("processed_dir")), settings.timezone)
    paths = PipelineConfig(**folders)
    outcomes_job = dg.define_asset_job(
        "outcomes_job", selection=dg.AssetSelection.groups("ingest", "outcomes"),
        description="Ingest every export under the raw folder and compute the outcome tables.")
    weekly_report_job = dg.define_asset_job(
        "weekly_report_job", selection=dg.AssetSelection.all(),
        description="Ingest, outcomes, and the directors' report for one ISO week (as of its Sunday).")
    return dg.Definitions(
        assets=[*dg.load_assets_from_modules([ingest_assets, outcome_assets]), build_weekly_report_asset(partitions)],
        asset_checks=[*dg.load_asset_checks_from_modules([ingest_checks, outcome_checks]),
                      *build_report_checks(partitions)],
        jobs=[outcomes_job, weekly_report_job],
        schedules=[build_weekly_schedule(weekly_report_job, settings.timezone)],
        sensors=[build_new_exports_sensor(outcomes_job)],
        loggers={"console": dg.colored_console_logger, "progress": progress_logger},
        # one process per run: the run lock (RunGuard) then covers every step of it
        executor=executor,
        resources={
            "paths": paths,
            "analysis_settings": AnalysisSettings.from_settings(settings),
            "processed_io_manager": ProcessedTableIOManager(processed_dir=paths.processed_dir),
            "run_guard": RunGuard(processed_dir=paths.processed_dir, reports_dir=paths.reports_dir),
        },
    )


defs = make_definitions(executor=executor_from_environment(), folders=folders_from_environment())


def outcomes_job_multiprocess() -> dg.JobDefinition:
    """The outcomes job with one process per step (a reconstructable target for
    ``dagster.execute_job``; see docs/deployment.md)."""
    return make_definitions(executor=dg.multiprocess_executor).resolve_job_def("outcomes_job")
