"""Incremental outcome tables: recompute only the episodes whose inputs changed.

METRICS.md makes every per-episode row of ``scored_sessions`` and ``episode_outcomes`` a
function of that episode's own episode row, sessions and pain scores, and of the as-of
date D only through which of those records are dated on or before D. So an episode whose
input rows are unchanged since the previous run, and which has no record dated between
the previous as-of date and this one, has exactly the rows it had last run. The rest
(changed, new, or with records between the two dates) are recomputed from their own rows
only and spliced in; removed episodes drop out. The result equals a full recomputation,
row order and dtypes included (``tests/test_outcomes_incremental.py``).

**Digests.** :func:`episode_digests` gives every episode two 64-bit sums (wrapping, modulo
2**64) of 64-bit polars row hashes, one per seed, over exactly the input columns the
outcome computations read: the episode's row (:func:`episode_columns`: every episode column
that ends in an output table, with referral_date), its sessions (:data:`SESSION_COLUMNS`)
and its pain scores (:data:`SCORE_COLUMNS`, grouped by the score's own episode_id: a
pre/post score's episode is its session's, which ingest and the blocking reference check
enforce). Each table hashes with seeds of its own, so a row cannot pass for a row of
another table. The sums do not depend on row order (ingest's order follows the export
files). Rows are unique within a table (their keys are, and the key columns are hashed),
so an edit changes a digest unless the hash differences cancel: treating polars' hash as
a random function, one edited episode keeps both of its sums with probability 2**-128
(2**-64 if the two seeds were fully correlated), under 1e-13 per run even for 1e6 changed
episodes at the pessimistic 2**-64. The hash is not cryptographic: exports crafted to
collide could defeat it; the clinic's own exports are not an adversary. polars does not
promise stable hashes across versions, so the digests record the polars version and a
scheme name (:data:`SCHEME`); another version means a full computation.

**Summed part by part.** The accepted tables are stored as folders of Parquet parts whose
footers hold a digest of their content (:func:`pipelines.io.write_parts`), and a weekly run
leaves all but their last parts as they were. The sums of each part are kept between runs
(:class:`PartSums`, under the processed folder's ``.cache``), named by that content digest,
so only new or changed parts are hashed: at a million episodes 1.3-1.6 CPU-s against
5.3-6.1 for hashing every row. The sums wrap, so adding them part by part gives the same
digests.

**Stored with the tables.** The digests are one more processed table,
:data:`DIGESTS_FILE`, written by the ``outcome_tables`` step into the same folder as the
outcome tables (the run's staging folder) and published with them. It is a pure function
of the accepted tables, stamped with the same :class:`~pipelines.outcomes.lineage.Lineage`
as ``scored_sessions`` (inputs, as-of date, code). A previous table is reused only when
its stamp names the same computation as the previous digests' stamp (inputs, as-of date
and code; publishing renames file by file, so this is what ties a table to the digests
that describe it), the code and the polars version are this run's, and for
``episode_outcomes`` the settings are too. Anything doubtful, or more than
:data:`MAX_RECOMPUTE_SHARE` of the episodes to recompute, means a full computation.

**One step, both tables.** The two tables are made by one step (``outcome_tables``), so the
inputs are digested and compared with the previous digests once (:class:`Planner`), the
rows of the episodes to recompute are picked out of the accepted tables once
(:func:`rows_of`), and their scored sessions are computed once for both tables. Where the
previous and this run's digests list the same episodes in the same order (a week of
exports mostly appends), they are compared row by row and only the rest is joined
(:func:`compare`). The splice (:func:`splice`) is planned per run of one
episode's rows and keeps the rows before the first change as they are.

Pure logic, no Dagster: ``pipelines/defs/outcomes/assets.py`` does the wiring.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from pipelines.checks import duplicated_rows
from pipelines.io import write_unsynced
from pipelines.outcomes.lineage import STAMP_KEY, Lineage
from pipelines.outcomes.metrics import EXTRA_COLUMNS, OUTCOME_COLUMNS, episodes_with_records_between

#: the digests table, beside the outcome tables
DIGESTS_FILE = "episode_input_digests.parquet"
#: footer key of the digests table: scheme and polars version (the stamp is under STAMP_KEY)
DIGEST_KEY = "pipelines.episode_digests"
#: names the digest definition below; change it whenever that definition changes
SCHEME = "episode-input-digest/1: wrapping sums of polars row hashes, two seeds per table, per episode_id hash"
#: recompute in full when more than this share of the episodes would be recomputed
MAX_RECOMPUTE_SHARE = 0.4

SESSION_COLUMNS = ("session_id", "episode_id", "session_date")
SCORE_COLUMNS = ("episode_id", "session_id", "timepoint", "score", "recorded_on")
#: episode columns read by the computations although not all of them are output columns
_EPISODE_READ = ("episode_id", "referral_date", "clinic_id", "condition")
#: two seeds per table (episodes, sessions, pain scores)
_SEEDS = {"episodes": (0x0E9150DE, 0x5EED0E91), "sessions": (0x5E551045, 0x5EED5E55),
          "pain_scores": (0x9A175C03, 0x5EED9A17)}
_KEY_SEED = 0x0E915EED
DIGEST_SCHEMA = {"episode_id": pl.String, "digest_a": pl.UInt64, "digest_b": pl.UInt64}


def episode_columns(columns) -> list[str]:
    """The episode columns the outcome computations read: every one that ends in an output
    table (episode_outcomes, session relief, trajectories) and referral_date (sorted, so the
    hash does not depend on the order of the columns)."""
    wanted = set(OUTCOME_COLUMNS) | set(EXTRA_COLUMNS) | set(_EPISODE_READ)
    return sorted(c for c in columns if c in wanted)


_KEY = "_episode_key"


def _hashed(frame: pl.DataFrame | pl.LazyFrame, columns: list[str], table: str) -> pl.LazyFrame:
    exprs: list[pl.Expr] = [pl.col(c) for c in columns]
    if "score" in columns:
        # polars hashes -0.0 as 0.0; the sign of a zero score still reaches the outputs
        exprs.append((1.0 / pl.col("score").cast(pl.Float64) < 0).alias("_negative_zero"))
    row = pl.struct(exprs)
    seed_a, seed_b = _SEEDS[table]
    return frame.lazy().select(pl.col("episode_id").hash(_KEY_SEED).alias(_KEY), row.hash(seed_a).alias("digest_a"),
                               row.hash(seed_b).alias("digest_b"))


def _part_sums(frame: pl.DataFrame, columns: list[str], table: str, lengths: list[int]) -> list[pl.DataFrame]:
    """Per 64-bit episode_id hash, the wrapping sums of the rows of each part of ``frame``
    (consecutive parts of ``lengths`` rows), in one grouping on (part, hash): grouping
    integers is several times cheaper than grouping millions of text ids, and hashing the
    two keys costs what sorting one and grouping its runs does (sorting both, twice that)."""
    part = np.repeat(np.arange(len(lengths), dtype=np.uint32), lengths)
    grouped = (_hashed(frame, columns, table).with_columns(pl.lit(pl.Series("_part", part)))
               .group_by("_part", _KEY)
               .agg(pl.col("digest_a").sum(), pl.col("digest_b").sum())
               .collect()
               .partition_by("_part", as_dict=True, include_key=False))
    empty = pl.DataFrame(schema=_SUMS_SCHEMA)
    return [grouped.get((index,), empty) for index in range(len(lengths))]


class PartSums:
    """Per-episode sums of the parts of the stored accepted tables, kept between runs in
    ``folder`` (one Arrow file per part) under a name made of the part's content digest
    (:func:`pipelines.io.rows_digest`, from the part's footer), the table, the columns
    hashed, :data:`SCHEME` and the polars version. A weekly run adds rows at the ends of the
    tables, so all but their last parts come from here instead of being hashed again.

    Derived and safe to delete; a file is used only when its CRC-32 (in its name) matches,
    else its part is hashed again. :meth:`finish` removes the files this run did not use."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.used: set[str] = set()
        self.hashed = 0
        self.reused = 0

    def _stem(self, table: str, columns: list[str], digest: str) -> str:
        text = json.dumps([SCHEME, pl.__version__, table, columns, digest])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def load(self, table: str, columns: list[str], digest: str) -> pl.DataFrame | None:
        """The stored sums of one part, or None."""
        stem = self._stem(table, columns, digest)
        for path in self.folder.glob(f"{stem}.*.arrow"):
            try:
                data = path.read_bytes()
                if f"{zlib.crc32(data):08x}" != path.name.split(".")[1]:
                    continue
                sums = pl.read_ipc(io.BytesIO(data))
            except (OSError, pl.exceptions.PolarsError):
                continue
            if sums.schema == pl.Schema(_SUMS_SCHEMA):
                self.used.add(path.name)
                self.reused += 1
                return sums
        return None

    def compute(self, frame: pl.DataFrame, columns: list[str], table: str,
                missing: list[tuple[int, int, str]]) -> list[pl.DataFrame]:
        """The sums of the parts ``missing`` of ``frame`` (first row, rows, digest), each
        stored; hashed and grouped in one pass over those rows."""
        source = pl.concat([frame.slice(first, rows) for first, rows, _ in missing], rechunk=False)
        results = _part_sums(source, columns, table, [rows for _, rows, _ in missing])
        for (_, _, digest), sums in zip(missing, results):
            self.hashed += 1
            self._store(self._stem(table, columns, digest), sums)
        return results

    def _store(self, stem: str, sums: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        sums.write_ipc(buffer, compression="uncompressed")
        data = buffer.getvalue()
        name = f"{stem}.{zlib.crc32(data):08x}.arrow"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_unsynced(self.folder / name, [data])  # the CRC in its name finds a torn file
            self.used.add(name)
        except OSError:
            pass  # only a cache

    def finish(self) -> None:
        """Remove the files of parts this run did not read (replaced or gone)."""
        try:
            for path in self.folder.glob("*.arrow"):
                if path.name not in self.used:
                    path.unlink(missing_ok=True)
        except OSError:
            pass


_SUMS_SCHEMA = {_KEY: pl.UInt64, "digest_a": pl.UInt64, "digest_b": pl.UInt64}


def episode_digests(episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                    parts: dict[str, list[tuple[int, str]]] | None = None,
                    part_sums: PartSums | None = None) -> pl.DataFrame:
    """One row per episode, in the order of ``episodes``: (episode_id, digest_a, digest_b).
    ``sessions`` needs :data:`SESSION_COLUMNS`, ``pain_scores`` :data:`SCORE_COLUMNS`;
    ``episodes`` its columns listed by :func:`episode_columns`.

    Rows are summed per 64-bit hash of their episode_id. Two episode_ids with the same hash
    share one pair of sums: both then change together, which only recomputes more.
    Rows of an episode_id that is not in ``episodes`` count for nothing (the outcome tables
    ignore them too).

    ``parts`` (with ``part_sums``): per table name, the (rows, content digest) of the parts
    the table was read from, in order; a table whose parts add up to its rows is summed part
    by part through ``part_sums`` (the sums are wrapping, so the order of adding does not
    matter and the digests are the same)."""
    tables = {"episodes": (episodes, episode_columns(episodes.columns)),
              "sessions": (sessions, list(SESSION_COLUMNS)), "pain_scores": (pain_scores, list(SCORE_COLUMNS))}
    pieces = []
    for table, (frame, columns) in tables.items():
        records = (parts or {}).get(table)
        if part_sums is None or not records or sum(rows for rows, _ in records) != frame.height:
            pieces += _part_sums(frame, columns, table, [frame.height])
            continue
        missing, offset = [], 0
        for rows, digest in records:
            stored = part_sums.load(table, columns, digest)
            if stored is None:
                missing.append((offset, rows, digest))
            else:
                pieces.append(stored)
            offset += rows
        if missing:
            pieces += part_sums.compute(frame, columns, table, missing)
    sums = (pl.concat(pieces, how="vertical").lazy()
            .group_by(_KEY).agg(pl.col("digest_a").sum(), pl.col("digest_b").sum()))
    return (episodes.lazy().select("episode_id", pl.col("episode_id").hash(_KEY_SEED).alias(_KEY))
            .join(sums, on=_KEY, how="left", maintain_order="left")
            .select("episode_id", "digest_a", "digest_b")
            .collect()
            .cast(DIGEST_SCHEMA))


def digest_footer() -> dict:
    """What must match for two digest tables to be comparable."""
    return {"scheme": SCHEME, "polars": pl.__version__}


def digests_metadata(stamp: Lineage) -> dict[str, str]:
    """Parquet key-value metadata of a digests table: its stamp and :func:`digest_footer`."""
    return {STAMP_KEY: stamp.to_json(), DIGEST_KEY: json.dumps(digest_footer(), sort_keys=True)}


@dataclass
class StoredDigests:
    """A digests table read back, with its stamp; ``problem`` says why it cannot be used."""

    frame: pl.DataFrame | None = None
    stamp: Lineage | None = None
    problem: str = ""


def read_digests(path: str | Path) -> StoredDigests:
    """The digests table at ``path`` and its stamp, or the reason it is unusable (missing,
    unreadable, unstamped, another scheme or polars version, malformed)."""
    name = Path(path).name
    try:
        meta = pl.read_parquet_metadata(path)
    except FileNotFoundError:
        return StoredDigests(problem=f"no {name}")
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        return StoredDigests(problem=f"{name} is unreadable ({type(exc).__name__})")
    try:
        stamp = Lineage.from_json(meta[STAMP_KEY])
        footer = json.loads(meta[DIGEST_KEY])
    except (KeyError, ValueError, TypeError):
        return StoredDigests(problem=f"{name} has no stamp")
    if footer != digest_footer():
        return StoredDigests(problem=f"{name} was made by another digest scheme or polars version")
    try:
        frame = pl.read_parquet(path)
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        return StoredDigests(problem=f"{name} is unreadable ({type(exc).__name__})")
    if (frame.schema != pl.Schema(DIGEST_SCHEMA) or frame["episode_id"].null_count()
            or duplicated_rows(frame, ["episode_id"])):
        return StoredDigests(problem=f"{name} is malformed")
    return StoredDigests(frame=frame, stamp=stamp)


def same_computation(a: Lineage, b: Lineage) -> bool:
    """Two stamps name the same computation from the same accepted tables (settings aside)."""
    return a.inputs == b.inputs and a.as_of == b.as_of and a.code == b.code


@dataclass
class Plan:
    """What one outcome table's step does this run."""

    incremental: bool
    reason: str
    #: episode_id whose previous rows are dropped: recomputed or removed (incremental only)
    drop: pl.Series | None = field(default=None, repr=False)
    #: episode_id to recompute (incremental only)
    recompute: pl.Series | None = field(default=None, repr=False)
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.incremental:
            return f"full: {self.reason}"
        c = self.counts
        return (f"incremental: recomputed {c['recompute']:,} of {c['episodes']:,} episodes "
                f"({c['new']:,} new, {c['changed']:,} changed, {c['dated_between']:,} more with records "
                f"between {self.reason}; {c['removed']:,} removed)")


def full(reason: str) -> Plan:
    return Plan(incremental=False, reason=reason)


class Planner:
    """Plans the incremental tables of one run (:meth:`plan`, one per table) against the
    previous run's digests.

    ``current_digests``: this run's; ``previous``: the previous run's;
    ``records_between(d1, d2)``: episode_id of episodes with a record dated between two dates
    (:func:`episodes_with_records_between` over this run's accepted tables). The digests are
    compared once for every table that can use them (the comparison depends on the two
    as-of dates only, which the tables of one run share)."""

    def __init__(self, current_digests: pl.DataFrame, previous: StoredDigests,
                 records_between: Callable[[date, date], pl.Series], max_share: float = MAX_RECOMPUTE_SHARE):
        self.current_digests = current_digests
        self.previous = previous
        self.records_between = records_between
        self.max_share = max_share
        self._compared: dict[tuple[date, date], Changes] = {}

    def plan(self, table: str, current: Lineage, previous_stamp: Lineage | None) -> Plan:
        """Whether ``table`` (its previous stamp ``previous_stamp``) can be updated
        incrementally to the computation ``current`` (settings included for tables that
        depend on them), and which episodes to keep and recompute."""
        previous = self.previous
        if previous.frame is None or previous.stamp is None:
            return full(previous.problem or f"no previous {DIGESTS_FILE}")
        if previous_stamp is None:
            return full(f"the previous {table} is missing or unstamped")
        if previous_stamp.code != current.code or previous.stamp.code != current.code:
            return full("the code changed")
        if not same_computation(previous_stamp, previous.stamp):
            return full(f"the previous {table} and {DIGESTS_FILE} are not from the same computation")
        if previous_stamp.settings != current.settings:
            return full("the settings changed")
        try:
            before = previous.stamp.as_of_date()
            after = current.as_of_date()
        except ValueError:
            return full("unreadable as-of date in a stamp")
        if (before, after) not in self._compared:
            self._compared[before, after] = compare(self.current_digests, previous.frame,
                                                    self.records_between(before, after))
        changes = self._compared[before, after]
        counts = changes.counts
        if counts["recompute"] > self.max_share * max(counts["episodes"], 1):
            return full(f"{counts['recompute']:,} of {counts['episodes']:,} episodes changed "
                        f"(more than {self.max_share:.0%}: cheaper in full)")
        return Plan(incremental=True, reason=f"{min(before, after)} and {max(before, after)}",
                    drop=pl.concat([changes.recompute, changes.removed]), recompute=changes.recompute,
                    counts=dict(counts))


@dataclass
class Changes:
    """This run's episodes against the previous digests (:func:`compare`)."""

    #: episode_id of the episodes to recompute (new, changed, or with records between the dates)
    recompute: pl.Series
    #: episode_id of the previous digests' episodes that are gone
    removed: pl.Series
    counts: dict[str, int]


def compare(current: pl.DataFrame, previous: pl.DataFrame, between: pl.Series) -> Changes:
    """Which episodes of ``current`` (digests) keep their previous rows: those with the same
    digests in ``previous`` and not in ``between``; and which episodes of ``previous`` are gone.

    Both tables follow the accepted episodes' order, which a week of exports mostly leaves as
    it was: where the two start with the same episode_ids, the digests are compared row by
    row; only the rest is joined on episode_id. The rest's episodes are not among the common
    first ones: ``previous`` holds each episode_id once (:func:`read_digests` checks) and so
    do the accepted episodes (a repeated one would only count as new, and be recomputed)."""
    common = _common_prefix(current["episode_id"], previous["episode_id"])
    digests = ["digest_a", "digest_b"]
    head = current.head(common).hstack(previous.head(common).select(pl.col(digests).name.suffix("_prev")))
    tail = current.slice(common).join(previous.slice(common), on="episode_id", how="left", suffix="_prev",
                                      maintain_order="left")
    joined = pl.concat([head, tail.select(head.columns)], how="vertical")
    same = ((pl.col("digest_a") == pl.col("digest_a_prev")) & (pl.col("digest_b") == pl.col("digest_b_prev"))
            ).fill_null(False)
    flags = joined.select(
        "episode_id", same.alias("same"), pl.col("digest_a_prev").is_null().alias("new"),
        pl.col("episode_id").is_in(between.implode()).alias("dated"))
    keep_expr = pl.col("same") & ~pl.col("dated")
    counts = flags.select(
        pl.len().alias("episodes"),
        pl.col("new").sum().alias("new"),
        (~pl.col("same") & ~pl.col("new")).sum().alias("changed"),
        (pl.col("same") & pl.col("dated")).sum().alias("dated_between"),
        (~keep_expr).sum().alias("recompute"),
    ).row(0, named=True)
    removed = previous.slice(common).filter(
        ~pl.col("episode_id").is_in(current.slice(common)["episode_id"].implode()))["episode_id"]
    counts = {**{k: int(v) for k, v in counts.items()}, "removed": removed.len()}
    return Changes(recompute=flags.filter(~keep_expr)["episode_id"], removed=removed, counts=counts)


def _common_prefix(a: pl.Series, b: pl.Series) -> int:
    """How many first values ``a`` and ``b`` share, position by position."""
    n = min(a.len(), b.len())
    differs = np.flatnonzero(~(a.head(n) == b.head(n)).fill_null(False).to_numpy())
    return int(differs[0]) if len(differs) else n


def only(frame: pl.DataFrame, ids: pl.Series, key: str = "episode_id") -> pl.DataFrame:
    """The rows of ``frame`` whose ``key`` is one of ``ids`` (in frame's order)."""
    return frame.filter(pl.col(key).is_in(ids.implode()))


def splice(previous: pl.DataFrame, drop: pl.Series, recomputed: pl.DataFrame, key: str = "episode_id"
           ) -> pl.DataFrame | None:
    """The previous rows of the episodes not in ``drop`` merged with the recomputed rows, in
    the order of a full computation: both are sorted by ``key`` (each episode's rows one run,
    in their own order) and no episode is in both, so the merge by ``key`` is that order.
    None when the previous table cannot be spliced (another schema, not sorted by key) or
    an episode would be in both.

    The merge is planned per run of one episode's rows (a million runs at a million
    episodes, against six million rows) and carried out by one gather, after the rows
    before the first change, which stay as they are (the result has two chunks).

    ``drop`` must hold every episode of the previous table that is not kept: the recomputed
    ones and those removed since (the previous digests list every episode the previous
    tables can hold, as their stamps name the same accepted tables)."""
    if previous.schema != recomputed.schema:
        return None
    old, new = _runs(previous[key]), _runs(recomputed[key])
    if old is None or new is None:
        return None
    (old_starts, old_lengths, old_ids), (new_starts, new_lengths, new_ids) = old, new
    keep = ~old_ids.is_in(drop.implode()).to_numpy()
    kept_ids = old_ids.filter(keep)
    # each recomputed run goes before the first kept run with a larger key
    before = kept_ids.search_sorted(new_ids, side="left").to_numpy().astype(np.int64)
    inside = before < kept_ids.len()
    if (kept_ids.gather(before[inside]) == new_ids.filter(inside)).any():
        return None
    runs = len(kept_ids) + len(new_ids)
    from_new = np.zeros(runs, dtype=bool)
    from_new[before + np.arange(len(new_ids))] = True
    first = np.empty(runs, dtype=np.int64)  # in pl.concat([previous, recomputed])
    first[~from_new], first[from_new] = old_starts[keep], previous.height + new_starts
    length = np.empty(runs, dtype=np.int64)
    length[~from_new], length[from_new] = old_lengths[keep], new_lengths
    rows = np.repeat(first - (np.cumsum(length) - length), length) + np.arange(length.sum())
    # the leading kept runs (before the first dropped or recomputed one) are rows 0..head-1
    dropped = np.flatnonzero(~keep)
    leading = min(dropped[0] if len(dropped) else len(old_ids), before[0] if len(before) else len(kept_ids))
    head = int(old_starts[leading]) if leading < len(old_starts) else previous.height
    rest = pl.concat([previous, recomputed], how="vertical", rechunk=False).gather(rows[head:])
    return pl.concat([previous.head(head), rest], how="vertical", rechunk=False)


def _runs(ids: pl.Series) -> tuple[np.ndarray, np.ndarray, pl.Series] | None:
    """First row, length and value of every run of equal values of ``ids``; None when the
    runs do not strictly increase (not sorted, or a value in two runs) or a value is null."""
    if ids.null_count():
        return None
    starts = np.flatnonzero((ids != ids.shift()).fill_null(True).to_numpy())
    values = ids.gather(starts)
    if not (values.shift() < values).fill_null(True).all():
        return None
    return starts, np.diff(np.append(starts, ids.len())), values


def apply(plan: Plan, read_previous: Callable[[], pl.DataFrame], recompute: Callable[[pl.Series], pl.DataFrame],
          compute_all: Callable[[], pl.DataFrame], table: str, expected_rows: int | None = None
          ) -> tuple[pl.DataFrame, Plan]:
    """Carry out a plan: ``recompute(plan.recompute)`` spliced into ``read_previous()``, or
    ``compute_all()`` when the plan says full or the splice fails (unreadable previous
    table, another schema or order, or not ``expected_rows`` rows when that is given).
    Returns the table and the plan that was followed."""
    if plan.incremental:
        try:
            previous = read_previous()
        except (OSError, pl.exceptions.PolarsError) as exc:
            plan = full(f"the previous {table} is unreadable ({type(exc).__name__})")
        else:
            result = splice(previous, plan.drop, recompute(plan.recompute))
            if result is None:
                plan = full(f"the previous {table} has another schema or order")
            elif expected_rows is not None and result.height != expected_rows:
                plan = full(f"the spliced {table} has {result.height:,} rows, not {expected_rows:,}")
            else:
                return result, plan
    return compute_all().rechunk(), plan


def rows_of(ids: pl.Series, episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame
            ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The episode rows, sessions and pain scores of the episodes ``ids`` (each by its own
    episode_id): all that :func:`scored_sessions_of` and :func:`episode_outcomes_of` read of
    them, filtered once for both. A pre/post score's episode is its session's (ingest and the
    blocking reference check enforce it, and the digests rely on it too), so these pain
    scores hold every score of these sessions."""
    return only(episodes, ids), only(sessions, ids), only(pain_scores, ids)


def scored_sessions_of(ids: pl.Series, episodes: pl.DataFrame, sessions: pl.DataFrame, pain_scores: pl.DataFrame,
                       as_of: date) -> pl.DataFrame:
    """:func:`pipelines.outcomes.metrics.scored_sessions` of the episodes ``ids`` only: their
    episode rows, their sessions and the pre/post scores of those sessions (matched by
    session_id, as the full computation matches them). The tables may hold other episodes'
    rows too (the whole tables, or :func:`rows_of`)."""
    from pipelines.outcomes.metrics import scored_sessions

    mine = only(sessions, ids)
    scores = pain_scores.filter(pl.col("session_id").is_in(mine["session_id"].implode()))
    return scored_sessions(only(episodes, ids), mine, scores, as_of)


def episode_outcomes_of(ids: pl.Series, episodes: pl.DataFrame, scored: pl.DataFrame, pain_scores: pl.DataFrame,
                        as_of: date, settings) -> pl.DataFrame:
    """:func:`pipelines.outcomes.metrics.episode_outcomes_from` of the episodes ``ids`` only
    (their scored sessions and their follow-ups, matched by episode_id as in the full one).
    The tables may hold other episodes' rows too."""
    from pipelines.outcomes.metrics import episode_outcomes_from

    return episode_outcomes_from(only(episodes, ids), only(scored, ids), only(pain_scores, ids), as_of, settings)
