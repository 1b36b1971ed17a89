"""Ingest every export under the raw folder into accepted tables, rejected rows and an audit.

CONTRACT.md, "Rows that break a rule": files (rule 1, :mod:`reader`), rows on their own
(rule 2, :mod:`validate`), references (rule 3, here) and keys (rule 4, :mod:`keys`).
Tables are settled in the order episodes, sessions, pain_scores, each against the
accepted rows of the one before. Every row of a read file ends in exactly one of
accepted, duplicate, superseded or rejected.

Rows travel as typed values only, in file and line order; raw text is kept only for rows
rejected by rule 2 and for the few cells their typed values do not print back
(:func:`pipelines.ingest.validate.check_rows`), and is put back on the rows a later rule
rejects.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl

from pipelines import io as table_io
from pipelines.ingest.cache import IngestCache
from pipelines.ingest.keys import ACCEPTED, REJECTED, STATUS_NAMES, settle_keys
from pipelines.ingest.privacy import mask_expr
from pipelines.ingest.reader import RawFile, ReadFile, RefusedFile, discover, read_file
from pipelines.ingest.spec import TABLE_ORDER, TABLES, TableSpec
from pipelines.ingest.state import (
    SettledState, StateUnreadable, TableState, load_state, save_state, state_identity,
)
from pipelines.ingest.validate import _reason as _rule
from pipelines.ingest.validate import (
    check_rows, failing_rows, rows_schema, run_date_rules, side_schema, with_raw,
)
from pipelines.outcomes.joins import left_join_by_hash
from pipelines.vocabulary import Vocabulary

STATUSES = ("accepted", "duplicate", "superseded", "rejected")
assert STATUSES == STATUS_NAMES

REJECTED_SCHEMA = {"source_file": pl.String, "line": pl.Int64, "table": pl.String,
                   "reasons": pl.String, "raw": pl.String}
AUDIT_SCHEMA = {"source_file": pl.String, "table": pl.String, "status": pl.String, "reason": pl.String,
                "rows_read": pl.Int64, "accepted": pl.Int64, "duplicate": pl.Int64,
                "superseded": pl.Int64, "rejected": pl.Int64, "sha256": pl.String}
RAGGED_SCHEMA = {"line": pl.Int64, "reasons": pl.String, "raw": pl.String}

#: rows checked in one vectorised pass: large enough that per-operation costs vanish, small
#: enough that the raw text of one batch is all that is held at a time
CHUNK_ROWS = int(os.environ.get("OUTCOMES_INGEST_CHUNK_ROWS", "1000000"))
#: files read at the same time (reading, hashing and parsing release the GIL)
READ_THREADS = max(1, int(os.environ.get("OUTCOMES_INGEST_THREADS", str(min(4, os.cpu_count() or 1)))))


@dataclass
class IngestResult:
    episodes: pl.DataFrame
    sessions: pl.DataFrame
    pain_scores: pl.DataFrame
    rejected: pl.DataFrame
    audit: pl.DataFrame
    #: how the keys were settled: None when every row was, else what was settled again
    incremental: str | None = None
    #: why every row was settled (None when incremental)
    full_reason: str | None = None
    #: waits for the cache and the state being written (ingest_folder's ``background``)
    finish: Callable[[], None] = lambda: None
    #: per accepted table, the digests of the parts it is stored in
    #: (:func:`pipelines.io.part_digests`, for ``write_parts(..., known=...)``)
    part_digests: dict[str, dict] = field(default_factory=dict)

    def table(self, name: str) -> pl.DataFrame:
        return getattr(self, name)


def _look_up(rows: pl.DataFrame, accepted: pl.DataFrame, key: str, column: str, alias: str) -> pl.Series:
    """``rows.join(accepted, on=key, how="left", maintain_order="left")[column]`` as ``alias``:
    each row's value of the accepted row with its key, null when none (accepted keys are
    unique, so there is one value per row), joined on 64-bit hashes
    (:func:`pipelines.outcomes.joins.left_join_by_hash`). A weekly run settles a few rows
    against millions: the accepted rows with one of their keys are picked first."""
    if rows.height * 4 < accepted.height:
        accepted = accepted.filter(pl.col(key).is_in(rows.get_column(key).drop_nulls().implode()))
    return left_join_by_hash(rows.select(key), accepted.select(key, pl.col(column).alias(alias)), key,
                             hash_expr=_hash_expr).get_column(alias)


#: the hash of :func:`_look_up` (None: the join's own); tests replace it to force collisions
_hash_expr = None


def _reference_rules(table: str, rows: pl.DataFrame,
                     accepted: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, list]:
    """Rule 3: the rows with the looked-up columns the rules need (``_referral``,
    ``_session_episode``; the other columns are shared, not copied), and the rules."""
    if table == "episodes":
        return rows, []
    # (null: no such accepted episode, referral_date being required)
    rows = rows.with_columns(_look_up(rows, accepted["episodes"], "episode_id", "referral_date", "_referral"))
    no_episode = _rule(pl.col("_referral").is_null(), "episode_id: '", pl.col("episode_id"),
                       "' is not an accepted episode")
    if table == "sessions":
        rules = [no_episode,
                 _rule(pl.col("session_date") < pl.col("_referral"), "session_date: ",
                       pl.col("session_date").cast(pl.String), " is before the episode's referral_date ",
                       pl.col("_referral").cast(pl.String))]
        return rows, rules
    rows = rows.with_columns(_look_up(rows, accepted["sessions"], "session_id", "episode_id", "_session_episode"))
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
    return rows, rules


def _key(table: str) -> tuple[list[pl.Expr], pl.Expr]:
    """The key of a row (expressions whose values together are the key), and a label for reasons."""
    if table == "episodes":
        return [pl.col("episode_id")], pl.concat_str([pl.lit("episode_id '"), pl.col("episode_id"), pl.lit("'")])
    if table == "sessions":
        return [pl.col("session_id")], pl.concat_str([pl.lit("session_id '"), pl.col("session_id"), pl.lit("'")])
    followup = pl.col("timepoint") == "followup"
    # followups by (episode_id, recorded_on), pre/post by (session_id, timepoint)
    key = [pl.col("timepoint"),
           pl.when(followup).then(pl.col("episode_id")).otherwise(pl.col("session_id")),
           pl.when(followup).then(pl.col("recorded_on"))]
    label = pl.when(followup).then(
        pl.concat_str([pl.lit("followup key (episode_id '"), pl.col("episode_id"), pl.lit("', recorded_on "),
                       pl.col("recorded_on").cast(pl.String), pl.lit(")")])
    ).otherwise(pl.concat_str([pl.lit("score key (session_id '"), pl.col("session_id"), pl.lit("', "),
                               pl.col("timepoint"), pl.lit(")")]))
    return key, label


def _notes(extra_columns: list[str], blank_lines: int) -> str | None:
    notes = []
    if extra_columns:
        notes.append("extra columns ignored: " + ", ".join(extra_columns))
    if blank_lines:
        notes.append(f"{blank_lines} blank line(s) skipped")
    return "; ".join(notes) or None


def _read_one(raw: RawFile) -> ReadFile | dict:
    try:
        return read_file(raw, TABLES[raw.table])
    except RefusedFile as exc:
        return {"status": "refused", "reason": str(exc), "sha256": None}
    except OSError as exc:
        return {"status": "refused", "reason": f"cannot be opened: {exc.strerror or exc}", "sha256": None}


def _read_files(files: list[RawFile]) -> Iterator[tuple[int, ReadFile | dict]]:
    """Each file read (or its refusal), in order; a few files are read ahead in threads."""
    if READ_THREADS == 1 or len(files) < 2:
        for position, raw in enumerate(files):
            yield position, _read_one(raw)
        return
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ingest-read") as pool:
        ahead: deque = deque()
        upcoming = iter(enumerate(files))
        for position, raw in upcoming:
            ahead.append((position, pool.submit(_read_one, raw)))
            if len(ahead) >= 2 * READ_THREADS:
                break
        while ahead:
            position, future = ahead.popleft()
            for next_position, raw in upcoming:
                ahead.append((next_position, pool.submit(_read_one, raw)))
                break
            yield position, future.result()


def _split(frame: pl.DataFrame, parts: int) -> list[pl.DataFrame]:
    """``frame`` (in ``_part`` order) cut into one frame per part, without copying."""
    counts = np.bincount(frame["_part"].to_numpy(), minlength=parts)
    frame = frame.drop("_part")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [frame.slice(int(start), int(count)) for start, count in zip(starts, counts)]


def parse_files(files: list[RawFile], vocabulary: Vocabulary,
                on_parsed: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Rules 1 and 2 (without the run-date rule) for each file: status, reason, sha256 and,
    for readable files, the rows that passed (``rows``, typed), the ``side`` table
    (:func:`check_rows`) and the rows with the wrong number of fields (``ragged``).

    The row rules run in one vectorised pass per table over batches of files.
    ``on_parsed(position, parsed)`` is called for each file as soon as it is done.
    """
    done = on_parsed or (lambda position, parsed: None)
    parsed: list[dict] = [{} for _ in files]
    pending: dict[str, list[tuple[int, ReadFile]]] = {t: [] for t in TABLE_ORDER}
    pending_rows = dict.fromkeys(TABLE_ORDER, 0)

    def check(table: str) -> None:
        parts = pending[table]
        if not parts:
            return
        frame = pl.concat([read.frame for _, read in parts], how="diagonal_relaxed")
        heights = [read.frame.height for _, read in parts]
        frame = frame.with_columns(
            pl.Series("_part", np.repeat(np.arange(len(parts), dtype=np.int32), heights)),
            pl.Series("_blank_is_no_row", np.repeat([not read.blank_lines_are_rows for _, read in parts], heights)))
        rows, side, blank = check_rows(frame, TABLES[table], vocabulary)
        blank_lines = np.bincount(blank.to_numpy(), minlength=len(parts))
        for k, ((position, read), r, s) in enumerate(zip(parts, _split(rows, len(parts)), _split(side, len(parts)))):
            parsed[position].update(rows=r, side=s, reason=_notes(read.extra_columns, int(blank_lines[k])))
            done(position, parsed[position])
        pending[table] = []
        pending_rows[table] = 0

    for position, read in _read_files(files):
        if isinstance(read, dict):
            parsed[position] = read
            done(position, read)
            continue
        table = files[position].table
        parsed[position] = {"status": "ingested", "reason": None, "sha256": read.sha256, "ragged": read.ragged}
        pending[table].append((position, read))
        pending_rows[table] += read.frame.height
        if pending_rows[table] >= CHUNK_ROWS:
            check(table)
    for table in TABLE_ORDER:
        check(table)
    return parsed


def _concat(frames: list[pl.DataFrame], file_idx: list[int], schema: dict) -> pl.DataFrame:
    """Frames of several files as one, with ``file_idx`` (in file order)."""
    if not frames:
        return pl.DataFrame(schema={**schema, "file_idx": pl.Int32})
    frame = pl.concat([f.select(list(schema)) for f in frames], how="vertical")
    idx = np.repeat(np.asarray(file_idx, dtype=np.int32), [f.height for f in frames])
    return frame.with_columns(pl.Series("file_idx", idx, dtype=pl.Int32))


def _flagged(frame: pl.DataFrame, rules: list[tuple[pl.Expr, pl.Expr]]) -> np.ndarray:
    """Where any of ``rules`` fails, as a numpy mask."""
    return frame.select(pl.any_horizontal([cond for cond, _ in rules])).to_series().to_numpy()


def _gather(frame: pl.DataFrame, positions: np.ndarray) -> pl.DataFrame:
    return frame.select(pl.all().gather(positions))


@dataclass
class TableOutcome:
    """What rules 2 (run date), 3 and 4 made of one table's rows (:func:`_settle_table`)."""

    #: accepted rows (contract columns, ``line``, ``file_idx`` and ``_h``, the key's hash), in file order
    accepted: pl.DataFrame
    #: rejected rows (``file_idx``, ``line``, ``reasons``, ``raw_<col>``) by rule 2 (the row
    #: on its own, with the run date), and by rules 3 and 4
    rejected_alone: list[pl.DataFrame]
    rejected_later: list[pl.DataFrame]
    #: per file: rows accepted, duplicate, superseded, ``[file_idx, status]``
    counts: np.ndarray
    #: the other rows that passed rule 2: duplicate, superseded or rejected by rules 3 and 4
    #: (contract columns, ``file_idx``, ``line``, ``_h``, ``status``), in file order
    others: pl.DataFrame
    #: side rows (:func:`check_rows`) of rows failing rule 2 apart from the run date (with
    #: ``reasons``), and of passing rows whose raw cells do not print back (``kept``)
    failed: pl.DataFrame
    kept: pl.DataFrame
    #: rows that passed rule 2 apart from the run date, and failed that (typed, ``file_idx``)
    future: pl.DataFrame


def key_hash(table: str, rows: pl.DataFrame) -> pl.Series:
    """The 64-bit hash of each row's key (:func:`_key`), as :func:`settle_keys` groups rows."""
    key, _ = _key(table)
    return rows.select(pl.struct([k.alias(f"_k{i}") for i, k in enumerate(key)]).hash().alias("_h")).to_series()


def _settle_table(spec: TableSpec, held: list[pl.DataFrame], today: date,
                  accepted: dict[str, pl.DataFrame], source_files: pl.Series) -> TableOutcome:
    """Rules 2 (run date), 3 and 4 for one table.

    ``held``: ``[rows, side]``, which this empties so that the caller holds neither: each
    column of ``rows`` is freed once its values are taken (at a million episodes the pain
    scores' rows are about 1 GB, at the run's peak of memory). ``rows``: the rows that
    passed the rest of rule 2 (typed, with ``file_idx`` and ``line``), in file order;
    ``side``: their side table (:func:`check_rows`, with ``file_idx``). Every row of a key
    must be here (rule 4 settles a key over all its rows).
    """
    rows, side = held.pop(0), held.pop(0)
    raw_columns = [f"raw_{c}" for c in spec.names]
    out_columns = ["file_idx", "line", "reasons", *raw_columns]
    failed = side.filter(pl.col("reasons").list.len() > 0)
    kept = side.filter(pl.col("reasons").list.len() == 0)
    del side
    date_rules = run_date_rules(spec, today)
    alone: list[pl.DataFrame] = []
    later: list[pl.DataFrame] = []
    # rows are not filtered (a copy of every column) but marked: rows still in the running
    alive = np.ones(rows.height, dtype=bool)

    # rule 2, the run date: added to the reasons of rows failing already, and rejecting others
    passing_failed, failed_later = failing_rows(failed, date_rules, existing="reasons")
    alone += [passing_failed.select(out_columns), failed_later.select(out_columns)]
    future_rows = rows.clear().select(*rows_schema(spec), "file_idx")
    if date_rules:
        future = _flagged(rows, date_rules)
        if future.any():
            future_rows = _gather(rows, np.flatnonzero(future)).select(*rows_schema(spec), "file_idx")
            _, bad = failing_rows(with_raw(future_rows, kept, spec), date_rules)
            alone.append(bad.select(out_columns))
            alive &= ~future
    candidate = alive.copy()

    # rule 3, references
    looked_up, rules = _reference_rules(spec.name, rows, accepted)
    broken = np.zeros(rows.height, dtype=bool)
    if rules:
        broken = _flagged(looked_up, rules) & alive
        if broken.any():
            _, bad = failing_rows(_gather(looked_up, np.flatnonzero(broken)), rules)
            later.append(with_raw(bad.select(rows.columns + ["reasons"]), kept, spec).select(out_columns))
            alive &= ~broken
    del looked_up

    # rule 4, keys
    key, label = _key(spec.name)
    hashed = key_hash(spec.name, rows)
    status, conflicts = settle_keys(rows, key, spec.names, alive, hashed=hashed)
    if conflicts.height:
        conflicts = conflicts.sort("_i")
        reason = pl.concat_str([label, pl.lit(": different versions of this key in the same file (lines "),
                                pl.col("_lines"), pl.lit("), keep one version per export")])
        bad = _gather(rows, conflicts["_i"].to_numpy()).with_columns(conflicts["_lines"]).with_columns(
            pl.concat_list([reason]).alias("reasons"))
        later.append(with_raw(bad, kept, spec).select(out_columns))
    file_idx = rows["file_idx"].to_numpy()
    settled = alive & (status < REJECTED)  # conflicts inside a file are counted as rejected rows
    counts = np.bincount(file_idx[settled].astype(np.int64) * 3 + status[settled],
                         minlength=3 * len(source_files)).reshape(-1, 3)
    status[broken] = REJECTED
    take = pl.Series(candidate & (status == ACCEPTED))
    other = pl.Series(candidate & (status != ACCEPTED))
    del file_idx, alive, broken, settled
    # the accepted and the other rows, column by column, each column of rows freed once taken
    out, rest = [], []
    for name in [*spec.names, "file_idx", "line"]:
        column = rows.get_column(name)
        rows = rows.drop(name)
        out.append(column.filter(take))
        rest.append(column.filter(other))
        del column
    del rows
    others = pl.DataFrame([*rest, hashed.filter(other), pl.Series("status", status, dtype=pl.UInt8).filter(other)])
    table = pl.DataFrame(out[:-2] + [out[-1], out[-2], hashed.filter(take)])
    del status, hashed, other, out, rest
    return TableOutcome(accepted=table, rejected_alone=alone, rejected_later=later, counts=counts,
                        others=others, failed=failed, kept=kept, future=future_rows)


def ingest_folder(raw_dir: str | Path, today: date, vocabulary: Vocabulary | None = None,
                  cache_dir: str | Path | None = None, background: bool = False,
                  use_state: bool = True) -> IngestResult:
    """Read, validate and settle every export file under ``raw_dir`` (never modified).

    With ``cache_dir``, files unchanged since an earlier run are not read again
    (:mod:`pipelines.ingest.cache`), and when the files are the last run's plus new ones,
    only the keys the new files touch are settled again (:mod:`pipelines.ingest.state`);
    the result is the same either way. ``IngestResult.incremental`` says which happened.

    With ``background``, the cache and the state are still being written when this
    returns (while the caller writes the tables): call ``IngestResult.finish()``.
    """
    vocabulary = vocabulary or Vocabulary.load()
    raw_dir = Path(raw_dir)
    cache = IngestCache(cache_dir, vocabulary.fingerprint()) if cache_dir is not None else None
    files = discover(raw_dir)
    previous, old_files, why = None, {}, "no ingest cache"
    if cache is not None:
        identity = state_identity(vocabulary.fingerprint())
        previous = load_state(Path(cache_dir) / "settled", identity) if use_state else None
        why = "no usable state of the last run" if use_state else "the last run's state was damaged"
        if previous is not None:
            old_files, why = _match_previous(previous, files, today, cache)
            if why:
                previous, old_files = None, {}
    results: dict[int, dict] = {}
    pending: list[tuple[int, RawFile, dict | None]] = []
    for file_idx, raw in enumerate(files):
        if raw.table is None or file_idx in old_files:
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
    # a fresh parse is stored in the cache in the background, while the next files are read
    # and the tables settled (writing Parquet releases the GIL)
    storing = ThreadPoolExecutor(1, thread_name_prefix="ingest-cache") if cache is not None else None
    stored: list = []

    def store(position: int, parsed: dict) -> None:
        file_idx, raw, signature = pending[position]
        results[file_idx] = parsed
        if storing is not None and not raw.refusal:
            stored.append(storing.submit(cache.store, raw.relpath, raw.path, raw.table, parsed, signature))

    def finish() -> None:
        try:
            for future in stored:
                future.result()
        finally:
            if storing is not None:
                storing.shutdown(wait=True, cancel_futures=True)
        if cache is not None:
            cache.finish()

    try:
        parse_files([p[1] for p in pending], vocabulary, on_parsed=store)
        result, state = _settle(files, results, today, previous, old_files)
        if cache is not None:
            stored.append(storing.submit(save_state, Path(cache_dir) / "settled", state, identity))
        del state
    except StateUnreadable:
        finish()
        return ingest_folder(raw_dir, today, vocabulary, cache_dir, background, use_state=False)
    except BaseException:
        if storing is not None:
            storing.shutdown(wait=True, cancel_futures=True)
        raise
    new_files = sum(1 for i, raw in enumerate(files) if raw.table is not None and i not in old_files)
    result.incremental = None if previous is None else (
        f"{len(old_files)} files as settled last run; settled again what {new_files} new file(s) touch")
    result.full_reason = why if previous is None else None
    if background:
        result.finish = finish
    else:
        finish()
    return result


def _match_previous(previous: SettledState, files: list[RawFile], today: date,
                    cache: IngestCache) -> tuple[dict[int, int], str | None]:
    """Which of ``files`` are the last run's ingested files, unchanged (``{new index: old
    index}``), or why the last run's state cannot be built on."""
    if today < previous.today:
        return {}, f"the run date {today} is earlier than the last run's ({previous.today})"
    position = {entry["source_file"]: i for i, entry in enumerate(previous.files)}
    mapping: dict[int, int] = {}
    for file_idx, raw in enumerate(files):
        old = position.pop(raw.relpath, None)
        if old is None or previous.files[old]["status"] != "ingested":
            continue  # new, or without rows last time: read like a new file
        if raw.refusal:
            return {}, f"{raw.relpath} is refused now"
        if cache.known_sha256(raw.relpath, raw.path) != previous.files[old]["sha256"]:
            return {}, f"{raw.relpath} changed"
        mapping[file_idx] = old
    for relpath, old in position.items():
        if previous.files[old]["status"] == "ingested":
            return {}, f"{relpath} is gone"
    return mapping, None


def _order(frame: pl.DataFrame) -> pl.Series:
    """Each row's place in file order, as one integer (and its status, where it has one)."""
    order = pl.col("file_idx").cast(pl.Int64) * (1 << 32) + pl.col("line")
    if "status" in frame.columns:
        order = order * 4 + pl.col("status").cast(pl.Int64)
    return frame.select(order).to_series()


def _splice(old: pl.DataFrame, again: np.ndarray, settled: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``old`` (in file order) with its rows ``again`` replaced by ``settled`` (in file order),
    and how many leading rows of the result are ``old``'s rows at the same place.

    Most rows settled again keep their place (an old row settled as it was, status and all),
    so they stay where they are; the others leave, and the rows that are new to ``old`` are appended
    when they all come after it in file order (one week's new files), else merged in.
    """
    if not again.any():
        keep, new = np.ones(old.height, dtype=bool), settled
    else:
        positions = np.flatnonzero(again)
        stays = _order(old[positions]).is_in(_order(settled).implode()).to_numpy()
        keep = ~again
        keep[positions[stays]] = True
        new = settled.filter(~_order(settled).is_in(_order(old[positions[stays]]).implode()))
    # rows before the first one leaving are taken as they are (a slice shares memory)
    first = int(np.argmin(keep)) if not keep.all() else old.height
    kept = pl.concat([old.slice(0, first), old.slice(first).filter(pl.Series(keep[first:]))], rechunk=False)
    if new.height == 0:
        return kept, first
    if kept.height == 0 or _order(new).min() > _order(kept.tail(1)).item():
        return pl.concat([kept, new], rechunk=False), first
    with_order = (pl.col("file_idx").cast(pl.Int64) * (1 << 32) + pl.col("line")).alias("_o")
    kept, new = kept.with_columns(with_order), new.with_columns(with_order)
    # the old rows strictly before the first new one keep their place
    before = int((kept.get_column("_o").slice(0, first) < new.get_column("_o").min()).sum())
    return kept.merge_sorted(new, key="_o").drop("_o"), min(first, before)


def _same_files(old: pl.DataFrame, old_to_new: np.ndarray) -> int:
    """How many leading rows of ``old`` (in file order, ``file_idx`` already renumbered by
    ``old_to_new``) have the file number they had in the last state. A row numbered below
    every number given to a renumbered file cannot be one of its rows, so it kept its number."""
    kept = old_to_new >= 0
    renumbered = old_to_new[kept & (old_to_new != np.arange(len(old_to_new)))]
    if not renumbered.size:
        return old.height
    return int((old.get_column("file_idx") < renumbered.min()).sum())


#: the columns of an accepted row that rule 3 reads in the tables after it
REFERENCED = {"episodes": ["episode_id", "referral_date"], "sessions": ["session_id", "episode_id"]}


def _settle(files: list[RawFile], results: dict[int, dict], today: date, previous: SettledState | None = None,
            old_files: dict[int, int] | None = None) -> tuple[IngestResult, SettledState]:
    """Rules 2 (run date), 3 and 4 over the parsed files, in order; the audit; and the state
    a later run settles from.

    ``results``: the parsed files (:func:`parse_files`) but those in ``old_files`` (``{file
    index: index in previous.files}``), whose rows ``previous`` holds settled. Rows of old
    files are settled again only where their key is touched by a row of a parsed file, by
    a row that may pass the run date now, or by a changed row they reference; all other
    old rows keep their status.
    """
    old_files = old_files or {}
    file_rows: list[dict] = []
    parts: dict[str, dict[str, list]] = {t: {"rows": [], "side": [], "idx": []} for t in TABLE_ORDER}
    ragged: list[pl.DataFrame] = []
    for file_idx, raw in enumerate(files):
        entry = {"source_file": raw.relpath, "table": raw.table, "status": "ignored", "reason": None,
                 "sha256": None}
        file_rows.append(entry)
        if raw.table is None:
            entry["reason"] = "name does not match episodes*, sessions* or pain_scores* (.csv or .parquet)"
            continue
        if file_idx in old_files:
            old = previous.files[old_files[file_idx]]
            entry.update(status=old["status"], reason=old["reason"], sha256=old["sha256"])
            continue
        parsed = results.pop(file_idx)
        entry.update(status=parsed["status"], reason=parsed["reason"], sha256=parsed["sha256"])
        if parsed["status"] != "ingested":
            continue
        table = parts[raw.table]
        table["rows"].append(parsed["rows"])
        table["side"].append(parsed["side"])
        table["idx"].append(file_idx)
        if parsed["ragged"].height:
            ragged.append(parsed["ragged"].with_columns(pl.lit(file_idx, dtype=pl.Int32).alias("file_idx"),
                                                       pl.lit(raw.table).alias("table")))

    source_files = pl.Series("source_file", [f.relpath for f in files], dtype=pl.String)
    counts = np.zeros((len(files), 3), dtype=np.int64)
    ragged_schema = {"file_idx": pl.Int32, "line": pl.Int64, "table": pl.String, "reasons": pl.String,
                     "raw": pl.String}
    ragged_rows = pl.concat([r.select(list(ragged_schema)) for r in ragged] or [pl.DataFrame(schema=ragged_schema)])
    if previous is not None:
        old_to_new = np.full(len(previous.files), -1, dtype=np.int64)
        for new, old in old_files.items():
            old_to_new[old] = new
            counts[new] = previous.counts[old]
        previous_ragged = TableState.remap_frame(previous.ragged, old_to_new)
        ragged_rows = pl.concat([previous_ragged, ragged_rows]).sort("file_idx", "line")
    accepted: dict[str, pl.DataFrame] = {}
    changed: dict[str, pl.Series] = {}
    left: dict[str, pl.Series] = {}
    state_tables: dict[str, TableState] = {}
    unchanged: dict[str, int] = {}
    rejected: list[pl.DataFrame] = [ragged_rows.select(
        _source_file(ragged_rows["file_idx"], source_files), "line", "table", "reasons", "raw")]
    for table in TABLE_ORDER:
        spec = TABLES[table]
        table_parts = parts.pop(table)
        rows = _concat(table_parts["rows"], table_parts["idx"], rows_schema(spec))
        side = _concat(table_parts["side"], table_parts["idx"], side_schema(spec))
        del table_parts
        old = previous.table(table).remapped(old_to_new) if previous is not None else None
        if old is not None:
            # the keys to settle again: touched by a new row or by a row that may pass the
            # run date now, or held by a row whose referenced episode or session changed
            touched = [key_hash(table, rows), key_hash(table, old.future)]
            if table != "episodes":
                # the columns of this table's references (rule 3) and the tables they name
                refs = [("episode_id", "episodes")] + ([("session_id", "sessions")] if table == "pain_scores" else [])
                refer = pl.any_horizontal([pl.col(c).is_in(changed[t].implode()) for c, t in refs])
                touched.append(old.others.filter(refer).get_column("_h"))
                # an accepted row references an episode (and session) accepted last run (rule
                # 3): of the changed ones, only those whose accepted version changed or left
                # concern it, and a weekly run mostly has none (its new ids were not accepted)
                gone = [(c, left[t]) for c, t in refs if left[t].len()]
                if gone:
                    touched.append(old.accepted.filter(
                        pl.any_horizontal([pl.col(c).is_in(ids.implode()) for c, ids in gone])).get_column("_h"))
            keys = pl.concat(touched).unique()
            in_acc = old.accepted.get_column("_h").is_in(keys.implode())
            in_oth = old.others.get_column("_h").is_in(keys.implode())
            again_acc, again_oth = old.accepted.filter(in_acc), old.others.filter(in_oth)
            columns = [*rows_schema(spec), "file_idx"]
            rows = pl.concat([again_acc.select(columns), again_oth.select(columns), old.future.select(columns),
                              rows]).sort("file_idx", "line")
            side = pl.concat([old.failed, old.kept, side])
            # the rows settled again leave the counts and the rejected rows they were in
            for frame in (again_acc.with_columns(pl.lit(ACCEPTED, dtype=pl.UInt8).alias("status")),
                          again_oth.filter(pl.col("status") < REJECTED)):
                idx = frame.get_column("file_idx").to_numpy().astype(np.int64)
                st = frame.get_column("status").to_numpy().astype(np.int64)
                counts -= np.bincount(idx * 3 + st, minlength=3 * len(files)).reshape(-1, 3)
            later_kept = old.later.join(again_oth.filter(pl.col("status") == REJECTED).select("file_idx", "line"),
                                        on=["file_idx", "line"], how="anti")
        held = [rows, side]
        del rows, side
        outcome = _settle_table(spec, held, today, accepted, source_files)
        counts += outcome.counts
        if old is not None:
            table_accepted, same_acc = _splice(old.accepted, in_acc.to_numpy(), outcome.accepted)
            others, same_oth = _splice(old.others, in_oth.to_numpy(), outcome.others)
            unchanged[f"{table}.accepted"] = min(same_acc, _same_files(old.accepted, old_to_new))
            unchanged[f"{table}.others"] = min(same_oth, _same_files(old.others, old_to_new))
            later = pl.concat([later_kept, *outcome.rejected_later])
            if table in REFERENCED:
                cols = REFERENCED[table]
                before, after = again_acc.select(cols), outcome.accepted.select(cols)
                # the ids whose accepted version changed or left, and those accepted anew
                left[table] = before.join(after, on=cols, how="anti", nulls_equal=True).get_column(cols[0])
                changed[table] = pl.concat([
                    left[table], after.join(before, on=cols, how="anti", nulls_equal=True).get_column(cols[0])
                ]).unique()
            del old, again_acc, again_oth, in_acc, in_oth
        else:
            table_accepted, others = outcome.accepted, outcome.others
            later = pl.concat([pl.DataFrame(schema=_later_schema(spec)), *outcome.rejected_later])
        accepted[table] = table_accepted
        state_tables[table] = TableState(accepted=table_accepted, others=others, later=later,
                                         failed=outcome.failed, kept=outcome.kept, future=outcome.future)
        raw_json = pl.struct([mask_expr(pl.col(f"raw_{c}")).alias(c) for c in spec.names]).struct.json_encode()
        bad_rows = pl.concat([*outcome.rejected_alone, later], how="vertical")
        rejected.append(bad_rows.select(
            _source_file(bad_rows["file_idx"], source_files), "line", pl.lit(table).alias("table"),
            pl.col("reasons").list.join("; ").alias("reasons"), raw_json.alias("raw")))
        del outcome

    rejected_df = pl.concat([r.cast(REJECTED_SCHEMA) for r in rejected], how="vertical")
    rejected_df = rejected_df.sort("source_file", "line")
    audit = _audit(file_rows, counts, rejected_df)
    output = {t: accepted[t].select(*TABLES[t].names, _source_file(accepted[t]["file_idx"], source_files), "line")
              for t in TABLE_ORDER}
    # the rows kept as they were are the last state's accepted rows, file names included
    # (the rows' files kept their numbers): the digests of the parts within them carry over
    digests = {t: table_io.part_digests(output[t], None, previous.accepted_parts.get(t) if previous else None,
                                        unchanged.get(f"{t}.accepted", 0))
               for t in TABLE_ORDER}
    state = SettledState(files=file_rows, today=today, ragged=ragged_rows, counts=counts, tables=state_tables,
                         base=previous, unchanged=unchanged, accepted_parts=digests)
    return IngestResult(episodes=output["episodes"], sessions=output["sessions"],
                        pain_scores=output["pain_scores"], rejected=rejected_df, audit=audit,
                        part_digests=digests), state


def _later_schema(spec: TableSpec) -> dict:
    return {"file_idx": pl.Int32, "line": pl.Int64, "reasons": pl.List(pl.String),
            **{f"raw_{c}": pl.String for c in spec.names}}


def _source_file(file_idx: pl.Series, source_files: pl.Series) -> pl.Series:
    """The relative path of each row's file."""
    return source_files.gather(file_idx.cast(pl.UInt32)).alias("source_file")


def _audit(file_rows: list[dict], counts: np.ndarray, rejected: pl.DataFrame) -> pl.DataFrame:
    files = pl.DataFrame(file_rows, schema={k: AUDIT_SCHEMA[k] for k in ("source_file", "table", "status", "reason",
                                                                          "sha256")})
    files = files.with_columns([pl.Series(s, counts[:, i], dtype=pl.Int64) for i, s in enumerate(STATUSES[:3])])
    rejected_counts = rejected.group_by("source_file").agg(pl.len().cast(pl.Int64).alias("rejected"))
    audit = (files.join(rejected_counts, on="source_file", how="left", maintain_order="left")
             .with_columns([pl.col(s).fill_null(0) for s in STATUSES]))
    audit = audit.with_columns(sum(pl.col(s) for s in STATUSES).alias("rows_read"))
    return audit.select(list(AUDIT_SCHEMA)).cast(AUDIT_SCHEMA)
