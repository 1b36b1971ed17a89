"""The Monday schedule and the new-export sensor."""

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from pipelines.defs.reports.partitions import monday_of
from pipelines.defs.resources import PipelineConfig
from pipelines.ingest.spec import table_for_filename


def build_weekly_schedule(job, timezone: str) -> dg.ScheduleDefinition:
    @dg.schedule(job=job, cron_schedule="0 6 * * 1", execution_timezone=timezone, name="weekly_report_schedule",
                 description="Every Monday at 06:00 (clinic time zone): ingest, outcomes, and last week's report.",
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def weekly_report_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        today = context.scheduled_execution_time.astimezone(ZoneInfo(timezone)).date()
        last_week = monday_of(today) - timedelta(days=7)
        return dg.RunRequest(run_key=f"weekly-{last_week.isoformat()}", partition_key=last_week.isoformat())

    return weekly_report_schedule


def export_signatures(raw_dir: str | Path) -> dict[str, str]:
    """Every export file under the raw folder with its size and modification time."""
    root = Path(raw_dir)
    signatures = {}
    if not root.is_dir():
        return signatures
    for path in sorted(root.rglob("*")):
        if path.is_file() and table_for_filename(path.name):
            stat = path.stat()
            signatures[path.relative_to(root).as_posix()] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return signatures


def build_new_exports_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(job=job, name="new_exports_sensor", minimum_interval_seconds=60,
               description="Starts ingestion when new or changed export files land in the raw folder.",
               default_status=dg.DefaultSensorStatus.RUNNING)
    def new_exports_sensor(context: dg.SensorEvaluationContext, paths: PipelineConfig):
        current = export_signatures(paths.raw_dir)
        seen = json.loads(context.cursor) if context.cursor else {}
        new = sorted(p for p, sig in current.items() if seen.get(p) != sig)
        context.update_cursor(json.dumps(current, sort_keys=True))
        if not new:
            return dg.SkipReason("no new or changed export files")
        key = hashlib.sha256(json.dumps({p: current[p] for p in new}, sort_keys=True).encode()).hexdigest()[:16]
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        return dg.RunRequest(run_key=f"exports-{key}", tags={"new_files": shown[:200]})

    return new_exports_sensor
