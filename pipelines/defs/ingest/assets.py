"""Ingest as Dagster assets: one pass over data/raw yields the accepted tables, the rejected
rows and the per-file audit (CONTRACT.md)."""


import dagster as dg
import polars as pl

from pipelines.defs.markdown import markdown_table
from pipelines.defs.resources import AnalysisSettings, PipelineConfig, RunGuard
from pipelines.ingest import ingest_folder

INGEST_OUTPUTS = {
    "episodes": "episodes.parquet",
    "sessions": "sessions.parquet",
    "pain_scores": "pain_scores.parquet",
    "rejected_rows": "rejected_rows.csv",
    "ingest_audit": "ingest_audit.csv",
}
ACCEPTED = ("episodes", "sessions", "pain_scores")
DESCRIPTIONS = {
    "episodes": "Accepted episodes of care (one per episode_id), condition as vocabulary code.",
    "sessions": "Accepted treatment sessions (one per session_id).",
    "pain_scores": "Accepted pain ratings (0-10 NRS): pre/post per session, follow-ups per date.",
    "rejected_rows": "Every rejected input row with its file, line, reasons and masked raw values.",
    "ingest_audit": "One row per raw file: status, reason and rows read / accepted / duplicate / superseded / rejected.",
}


def _preview(frame: pl.DataFrame, rows: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(frame.head(rows)))


@dg.multi_asset(
    # the accepted tables are folders of parts: a weekly run rewrites only the parts that changed
    outs={name: dg.AssetOut(io_manager_key="processed_io_manager",
                            metadata={"filename": filename, "parts": name in ACCEPTED},
                            description=DESCRIPTIONS[name], group_name="ingest")
          for name, filename in INGEST_OUTPUTS.items()},
    description="Read every export under the raw folder and apply every rule of CONTRACT.md.",
)
def ingest(context: dg.AssetExecutionContext, paths: PipelineConfig, analysis_settings: AnalysisSettings,
           run_guard: RunGuard):
    settings = analysis_settings.to_settings()
    today = paths.run_date(settings.timezone)
    # the ingest cache and settled state are written while the tables are (result.finish)
    result = ingest_folder(paths.raw_dir, today=today, vocabulary=paths.vocabulary(),
                           cache_dir=paths.ingest_cache_dir(), background=True)
    try:
        audit = result.audit
        files = {status: int((audit["status"] == status).sum()) for status in ("ingested", "refused", "ignored")}
        context.log.info(f"ingest: {files['ingested']} files ingested, {files['refused']} refused, "
                         f"{files['ignored']} ignored; {result.rejected.height} rows rejected")
        settled = (f"incremental: {result.incremental}" if result.incremental
                   else f"every row settled: {result.full_reason}")
        context.log.info(f"ingest: {settled}")
        for name in ACCEPTED:
            frame = result.table(name)
            # the digests of its parts, which the I/O manager then need not compute (write_parts' known)
            yield dg.Output(frame, output_name=name, metadata={
                "run_date": today.isoformat(), "part_digests": dg.MetadataValue.json(result.part_digests[name])})
        yield dg.Output(result.rejected, output_name="rejected_rows", metadata={
            "by_table": dg.MetadataValue.json(
                {t: int((result.rejected["table"] == t).sum()) for t in ("episodes", "sessions", "pain_scores")})})
        yield dg.Output(audit, output_name="ingest_audit", metadata={
            **{f"files_{k}": v for k, v in files.items()},
            "audit": dg.MetadataValue.md(markdown_table(audit.drop("reason"))),
            "settled": settled,
        })
    finally:
        result.finish()
