"""Ingest every export under the raw folder into accepted tables, rejected rows and an audit.

CONTRACT.md, "Rows that break a rule": files (rule 1, :mod:`reader`), rows on their own
(rule 2, :mod:`validate`), references (rule 3, here) and keys (rule 4, :mod:`keys`).
Tables are settled in the order episodes, sessions, pain_scores, each against the
accepted rows of the one before. Every row of a read file ends in exactly one of
accepted, duplicate, superseded or rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from pipelines.ingest.cache import IngestCache
from pipelines.ingest.keys import settle_keys
from pipelines.ingest.privacy import mask_expr
from pipelines.ingest.reader import RawFile, RefusedFile, discover, read_file
from pipelines.ingest.spec import TABLE_ORDER, TABLES, TableSpec
from pipelines.ingest.validate import _reason as _rule
from pipelines.ingest.validate import check_rows, reasons_for_failures, with_run_date_rule
from pipelines.vocabulary import Vocabulary

STATUSES = ("accepted", "duplicate", "superseded", "rejected")

REJECTED_SCHEMA = {"source_file": pl.String, "line": pl.Int64, "table": pl.String,
                   "reasons": pl.String, "raw": pl.String}
AUDIT_SCHEMA = {"source_file": pl.String, "table": pl.String, "status": pl.String, "reason": pl.String,
                "rows_read": pl.Int64, "accepted": pl.Int64, "duplicate": pl.Int64,
                "superseded": pl.Int64, "rejected": pl.Int64, "sha256": pl.String}


@dataclass
class IngestResult:
    episodes: pl.DataFrame
    sessions: pl.DataFrame
    pain_scores: pl.DataFrame
    rejected: pl.DataFrame
    audit: pl.DataFrame

    def table(self, name: str) -> pl.DataFrame:
        return getattr(self, name)


def _reference_reasons(table: str, rows: pl.DataFrame, accepted: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Rule 3: add ``ref_reasons`` (list) against the accepted rows of earlier tables."""
    if table == "episodes":
        return rows.with_columns(pl.lit([], pl.List(pl.String)).alias("ref_reasons"))
    episodes = accepted["episodes"].select("episode_id", pl.col("referral_date").alias("_referral"),
                                           pl.lit(True).alias("_episode_ok"))
    rows = rows.join(episodes, on="episode_id", how="left")
    no_episode = _rule(pl.col("_episode_ok").is_null(), "episode_id: '", pl.col("episode_id"),
                       "' is not an accepted episode")
    if table == "sessions":
        rules = [no_episode,
                 _rule(pl.col("session_date") < pl.col("_referral"), "session_date: ",
                       pl.col("session_date").cast(pl.String), " is before the episode's referral_date ",
                       pl.col("_referral").cast(pl.String))]
        drop = ["_referral", "_episode_ok"]
    else:
        sessions = accepted["sessions"].select("session_id", pl.col("episode_id").alias("_session_episode"))
        rows = rows.join(sessions, on="session_id", how="left")
        prepost = pl.col("timepoint").is_in(["pre", "post"])
        rules = [
            no_episode,
            _rule(prepost & pl.col("_session_episode").is_null(), "session_id: '", pl.col("session_id"),
                  "' is not an accepted session"),
            _rule(prepost & (pl.col("_session_episode") != pl.col("episode_id")), "session_id: '",
                  pl.col("session_id"), "' belongs to episode '", pl.col("_session_episode"),
                  "', not '", pl.col("episode_id"), "'"),
            _rule((pl.col("timepoint") == "followup") & (pl.col("recorded_on") < pl.col("_referral")),
                  "recorded_on: ", pl.col("recorded_on").cast(pl.String),
                  " is before the episode's referral_date ", pl.col("_referral").cast(pl.String)),
        ]
        drop = ["_referral", "_episode_ok", "_session_episode"]
    identity = {c: c for c in rows.columns}
    checked = reasons_for_failures(rows, rules, identity)
    return checked.rename({"reasons": "ref_reasons"}).drop(drop)


def _key(table: str) -> tuple[pl.Expr, pl.Expr]:
    """The key of a row as one comparable string, and a label for reasons."""
    if table == "episodes":
        return pl.col("episode_id"), pl.concat_str([pl.lit("episode_id '"), pl.col("episode_id"), pl.lit("'")])
    if table == "sessions":
        return pl.col("session_id"), pl.concat_str([pl.lit("session_id '"), pl.col("session_id"), pl.lit("'")])
    followup = pl.col("timepoint") == "followup"
    key = pl.when(followup).then(
        pl.concat_str([pl.lit("F\x1f"), pl.col("episode_id"), pl.lit("\x1f"), pl.col("recorded_on").cast(pl.String)])
    ).otherwise(pl.concat_str([pl.lit("S\x1f"), pl.col("session_id"), pl.lit("\x1f"), pl.col("timepoint")]))
    label = pl.when(followup).then(
        pl.concat_str([pl.lit("followup key (episode_id '"), pl.col("episode_id"), pl.lit("', recorded_on "),
                       pl.col("recorded_on").cast(pl.String), pl.lit(")")])
    ).otherwise(pl.concat_str([pl.lit("score key (session_id '"), pl.col("session_id"), pl.lit("', "),
                               pl.col("timepoint"), pl.lit(")")]))
    return key, label


def _settle_table(spec: TableSpec, rows: pl.DataFrame, accepted: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Run rules 3 and 4 on rows that passed rule 2; returns rows with status and reasons."""
    passed = rows.filter(pl.col("reasons").list.len() == 0).drop("reasons")
    failed = rows.filter(pl.col("reasons").list.len() > 0).with_columns(pl.lit("rejected").alias("status"))
    passed = _reference_reasons(spec.name, passed, accepted).with_columns(
        pl.lit([], pl.List(pl.String)).alias("reasons"))
    ref_failed = passed.filter(pl.col("ref_reasons").list.len() > 0).with_columns(
        pl.col("ref_reasons").alias("reasons"), pl.lit("rejected").alias("status"))
    passed = passed.filter(pl.col("ref_reasons").list.len() == 0)
    key, label = _key(spec.name)
    settled = settle_keys(passed, key, label, spec.names).with_columns(
        pl.when(pl.col("status") == "rejected").then(pl.col("key_reasons")).otherwise(pl.col("reasons"))
        .alias("reasons"))
    columns = failed.columns
    return pl.concat([failed, ref_failed.select(columns), settled.select(columns)], how="vertical")


def _empty_checked(spec: TableSpec) -> pl.DataFrame:
    frame = pl.DataFrame(schema={"line": pl.Int64, **{c: pl.String for c in spec.names}}).with_columns(
        pl.lit(None, pl.String).alias("source_file"), pl.lit(None, pl.Int64).alias("file_idx"))
    return check_rows(frame, spec, Vocabulary(lookup={}, labels={}, source=""))


def _notes(read) -> str | None:
    notes = []
    if read.extra_columns:
        notes.append("extra columns ignored: " + ", ".join(read.extra_columns))
    if read.blank_lines:
        notes.append(f"{read.blank_lines} blank line(s) skipped")
    return "; ".join(notes) or None


def parse_files(files: list[RawFile], vocabulary: Vocabulary) -> list[dict]:
    """Rules 1 and 2 (without the run-date rule) for each file: status, reason, sha256 and,
    for readable files, the row-checked rows and the rows with the wrong number of fields.

    The row rules run in one vectorised pass per table over all the files given.
    """
    parsed: list[dict] = []
    frames: dict[str, list[pl.DataFrame]] = {t: [] for t in TABLE_ORDER}
    positions: dict[str, list[int]] = {t: [] for t in TABLE_ORDER}
    for position, raw in enumerate(files):
        spec = TABLES[raw.table]
        try:
            read = read_file(raw, spec)
        except RefusedFile as exc:
            parsed.append({"status": "refused", "reason": str(exc), "sha256": None})
            continue
        except OSError as exc:
            parsed.append({"status": "refused", "reason": f"cannot be opened: {exc.strerror or exc}", "sha256": None})
            continue
        parsed.append({"status": "ingested", "reason": _notes(read), "sha256": read.sha256, "ragged": read.ragged})
        frames[raw.table].append(read.frame.with_columns(pl.lit(position, pl.Int64).alias("_part")))
        positions[raw.table].append(position)
    for table, parts in frames.items():
        if not parts:
            continue
        checked = check_rows(pl.concat(parts, how="diagonal_relaxed"), TABLES[table], vocabulary)
        by_part = checked.partition_by("_part", as_dict=True, include_key=False)
        empty = checked.clear().drop("_part")
        for part in positions[table]:
            parsed[part]["checked"] = by_part.get((part,), empty)
    return parsed


def ingest_folder(raw_dir: str | Path, today: date, vocabulary: Vocabulary | None = None,
                  cache_dir: str | Path | None = None) -> IngestResult:
    """Read, validate and settle every export file under ``raw_dir`` (never modified).

    With ``cache_dir``, files unchanged since an earlier run are not read again
    (:mod:`pipelines.ingest.cache`); the result is the same either way.
    """
    vocabulary = vocabulary or Vocabulary.load()
    raw_dir = Path(raw_dir)
    cache = IngestCache(cache_dir, vocabulary.fingerprint()) if cache_dir is not None else None
    files = discover(raw_dir)
    results: dict[int, dict] = {}
    pending: list[tuple[int, RawFile, dict | None]] = []
    for file_idx, raw in enumerate(files):
        if raw.table is None:
            continue
        cached = cache.load(raw.relpath, raw.path, raw.table) if cache and not raw.refusal else None
        if cached is not None:
            results[file_idx] = cached
        else:
            try:
                signature = IngestCache._signature(raw.path) if cache else None
            except OSError:
                signature = None
            pending.append((file_idx, raw, signature))
    for (file_idx, raw, signature), parsed in zip(pending, parse_files([p[1] for p in pending], vocabulary)):
        results[file_idx] = parsed
        if cache is not None and not raw.refusal:
            cache.store(raw.relpath, raw.path, raw.table, parsed, signature)
    if cache is not None:
        cache.finish()

    file_rows: list[dict] = []
    checked: dict[str, list[pl.DataFrame]] = {t: [] for t in TABLE_ORDER}
    ragged: list[pl.DataFrame] = []
    for file_idx, raw in enumerate(files):
        entry = {"source_file": raw.relpath, "table": raw.table, "status": "ignored", "reason": None,
                 "sha256": None}
        file_rows.append(entry)
        if raw.table is None:
            entry["reason"] = "name does not match episodes*, sessions* or pain_scores* (.csv or .parquet)"
            continue
        parsed = results[file_idx]
        entry.update(status=parsed["status"], reason=parsed["reason"], sha256=parsed["sha256"])
        if parsed["status"] != "ingested":
            continue
        checked[raw.table].append(parsed["checked"].with_columns(
            pl.lit(raw.relpath).alias("source_file"), pl.lit(file_idx, pl.Int64).alias("file_idx")))
        if parsed["ragged"].height:
            ragged.append(parsed["ragged"].with_columns(pl.lit(raw.relpath).alias("source_file"),
                                                       pl.lit(raw.table).alias("table")))

    accepted: dict[str, pl.DataFrame] = {}
    statuses: list[pl.DataFrame] = []
    rejected: list[pl.DataFrame] = [r.select(list(REJECTED_SCHEMA)) for r in ragged]
    for table in TABLE_ORDER:
        spec = TABLES[table]
        rows = pl.concat(checked[table], how="vertical_relaxed") if checked[table] else _empty_checked(spec)
        rows = with_run_date_rule(rows, spec, today)
        settled = _settle_table(spec, rows, accepted)
        accepted[table] = (settled.filter(pl.col("status") == "accepted")
                           .sort("file_idx", "line").select(*spec.names, "source_file", "line"))
        statuses.append(settled.select("source_file", "status"))
        bad = settled.filter(pl.col("status") == "rejected")
        raw_json = pl.struct([mask_expr(pl.col(f"raw_{c}")).alias(c) for c in spec.names]).struct.json_encode()
        rejected.append(bad.sort("file_idx", "line").select(
            "source_file", "line", pl.lit(table).alias("table"),
            pl.col("reasons").list.join("; ").alias("reasons"), raw_json.alias("raw")))

    rejected_df = pl.concat([r.cast(REJECTED_SCHEMA) for r in rejected], how="vertical")
    rejected_df = rejected_df.sort("source_file", "line")
    audit = _audit(file_rows, statuses, rejected_df)
    return IngestResult(episodes=accepted["episodes"], sessions=accepted["sessions"],
                        pain_scores=accepted["pain_scores"], rejected=rejected_df, audit=audit)


def _audit(file_rows: list[dict], statuses: list[pl.DataFrame], rejected: pl.DataFrame) -> pl.DataFrame:
    files = pl.DataFrame(file_rows, schema={k: AUDIT_SCHEMA[k] for k in ("source_file", "table", "status", "reason",
                                                                          "sha256")})
    status_rows = pl.concat(statuses, how="vertical").filter(pl.col("status") != "rejected")
    counts = (status_rows.group_by("source_file").agg(
        [(pl.col("status") == s).sum().cast(pl.Int64).alias(s) for s in STATUSES[:3]]))
    rejected_counts = rejected.group_by("source_file").agg(pl.len().cast(pl.Int64).alias("rejected"))
    audit = (files.join(counts, on="source_file", how="left")
             .join(rejected_counts, on="source_file", how="left")
             .with_columns([pl.col(s).fill_null(0) for s in STATUSES]))
    audit = audit.with_columns(sum(pl.col(s) for s in STATUSES).alias("rows_read"))
    return audit.select(list(AUDIT_SCHEMA)).cast(AUDIT_SCHEMA)
