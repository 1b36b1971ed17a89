"""The one entry point: every asset, check, job, schedule, sensor and resource."""

import dagster as dg

from pipelines.defs.ingest import assets as ingest_assets
from pipelines.defs.ingest import checks as ingest_checks
from pipelines.defs.outcomes import assets as outcome_assets
from pipelines.defs.outcomes import checks as outcome_checks
from pipelines.defs.progress import progress_logger
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, ProcessedTableIOManager

outcomes_job = dg.define_asset_job(
    "outcomes_job", selection=dg.AssetSelection.groups("ingest", "outcomes"),
    description="Ingest every export under the raw folder and compute the outcome tables.")

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingest_assets, outcome_assets]),
    asset_checks=dg.load_asset_checks_from_modules([ingest_checks, outcome_checks]),
    jobs=[outcomes_job],
    loggers={"console": dg.colored_console_logger, "progress": progress_logger},
    resources={
        "paths": PipelineConfig(),
        "analysis_settings": AnalysisSettings(),
        "processed_io_manager": ProcessedTableIOManager(),
    },
)
