"""The settled state of the last ingest: what rules 3 and 4 need to settle only what changed.

The per-file cache (:mod:`pipelines.ingest.cache`) spares a weekly run the parsing and the
row rules of the files it has seen; but keys are settled across files and references
across tables, so without this state every row would be settled again each run. After
each run the state keeps, per table:

* ``accepted``: the accepted rows, with their file (``file_idx``), line and the hash of
  their key (``_h``);
* ``others``: every other row that passed rule 2 (duplicate, superseded, or rejected by
  rules 3 or 4), with its status;
* ``later``: the rejected-row records of the rows rejected by rules 3 and 4;
* the rows rule 2 concerns on a later day: the side rows of rows failing rule 2
  (``failed``), which the run date adds reasons to, and the rows that failed only the run
  date (``future``), which a later run date may accept; and the raw cells of passing rows
  that do not print back (``kept``);

and, for the run: the audit entries of every file, the per-file status counts, the ragged
lines' rejected rows and the run date.

A run whose files are the last run's files (same path, same content) plus new ones
settles again only the keys the new files touch, the keys of rows that may pass the run
date now, and the rows whose referenced episode or session changed
(:func:`pipelines.ingest.core._settle`): the result is the same as settling every row,
which the tests check on random folders. Anything else (a file changed or deleted, a run
date earlier than the last, another vocabulary, rules, code or polars version) settles
everything. The state is derived: it is written to a new folder that replaces the old one
with a rename, read back only when every part is intact, and deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

import pipelines
from pipelines.io import owner_gone

STATE_FORMAT = "outcomes-ingest-settled-3"
#: rows per part file of a frame (read when a state is saved, so that tests can make it small)
PART_ROWS = 1 << 19
#: threads reading a frame's parts back (the machine this is tuned on has two cores)
READERS = 2
#: the frames of one table's state (TableState's fields)
TABLE_PARTS = ("accepted", "others", "later", "failed", "kept", "future")


@dataclass
class TableState:
    accepted: pl.DataFrame
    others: pl.DataFrame
    later: pl.DataFrame
    failed: pl.DataFrame
    kept: pl.DataFrame
    future: pl.DataFrame

    def remapped(self, old_to_new: np.ndarray) -> "TableState":
        """The same rows with ``file_idx`` renumbered (``old_to_new[old]``, order-preserving)."""
        return TableState(**{f.name: self.remap_frame(getattr(self, f.name), old_to_new) for f in fields(self)})

    @staticmethod
    def remap_frame(frame: pl.DataFrame, old_to_new: np.ndarray) -> pl.DataFrame:
        if frame.schema["file_idx"] == pl.Int32 and np.array_equal(old_to_new, np.arange(len(old_to_new))):
            return frame  # every file kept its number (new files came after the old ones)
        lookup = pl.Series(old_to_new.astype(np.int32))
        return frame.with_columns(lookup.gather(frame.get_column("file_idx").cast(pl.UInt32)).alias("file_idx"))


class StateUnreadable(Exception):
    """A part of the state read back damaged: settle everything instead."""


@dataclass
class SettledState:
    #: audit entries of every discovered file, in file order (source_file, table, status, reason, sha256)
    files: list[dict]
    today: date
    #: rejected rows of ragged lines (REJECTED_SCHEMA columns with ``file_idx`` for source_file)
    ragged: pl.DataFrame
    #: per file: accepted, duplicate, superseded rows, as ``[file_idx, status]``
    counts: np.ndarray
    #: the tables' states (a loaded state reads each only when asked, :meth:`table`)
    tables: dict[str, TableState] = field(default_factory=dict)
    folder: Path | None = None
    #: per frame (``<table>.<part>``, ``ragged``, ``counts``): its part files' [rows, length, crc32]
    parts: dict = field(default_factory=dict)
    #: the state this one was settled from (its folder and parts), and per frame how many
    #: leading rows are that state's rows as stored: its full parts within them are linked
    base: "SettledState | None" = None
    unchanged: dict[str, int] = field(default_factory=dict)
    #: per table, the digests of the parts its accepted table is stored in
    #: (:func:`pipelines.io.part_digests`): the next run carries over those of the rows it keeps
    accepted_parts: dict[str, dict] = field(default_factory=dict)

    def table(self, name: str) -> TableState:
        """One table's state, read now (one at a time keeps memory to one table's state);
        raises :class:`StateUnreadable` when a part is damaged."""
        if name in self.tables:
            return self.tables.pop(name)
        return TableState(**{part: _read_part(self.folder, f"{name}.{part}", self.parts) for part in TABLE_PARTS})


def state_identity(vocabulary_fingerprint: str) -> dict:
    """What a state is valid for: its format, the ingest rules and code, the vocabulary and
    the polars version (the key hashes are polars' own)."""
    from pipelines.ingest.cache import RULES_VERSION

    root = Path(pipelines.__file__).parent / "ingest"
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"format": STATE_FORMAT, "rules": RULES_VERSION, "code": digest.hexdigest(),
            "vocabulary": vocabulary_fingerprint, "polars": pl.__version__}


def save_state(folder: Path, state: SettledState, identity: dict) -> None:
    """Write the state to a new folder beside ``folder``, then put it in place with renames
    (first removing what killed runs left half-written). Parts of ``state.base`` whose rows
    the new state keeps as they were are hard-linked (copied where links fail)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", dir=folder.parent))
    try:
        parts = {}
        frames = {f"{table}.{part}": getattr(ts, part) for table, ts in state.tables.items() for part in TABLE_PARTS}
        frames["ragged"] = state.ragged
        frames["counts"] = pl.DataFrame({f"s{i}": state.counts[:, i] for i in range(state.counts.shape[1])})
        for name, frame in frames.items():
            parts[name] = _save_frame(tmp, name, frame, state.base, state.unchanged.get(name, 0))
        meta = {**identity, "today": state.today.isoformat(), "files": state.files, "parts": parts,
                "accepted_parts": state.accepted_parts}
        (tmp / "state.json").write_text(json.dumps(meta))
        old = folder.with_name(f".{folder.name}.old.{os.getpid()}")
        if folder.exists():
            os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _part_path(folder: Path, name: str, index: int) -> Path:
    return folder / f"{name}.{index:05d}.arrow"


def _save_frame(tmp: Path, name: str, frame: pl.DataFrame, base: SettledState | None, unchanged: int) -> list:
    """One frame's part files in ``tmp``; returns their [rows, length, crc32]."""
    rows_per_part = PART_ROWS
    parts: list = []
    offset = 0
    for index, record in enumerate(base.parts.get(name, []) if base is not None else []):
        # a full part of the last state lying within the rows kept as they were
        if record[0] != rows_per_part or offset + rows_per_part > min(unchanged, frame.height):
            break
        source = _part_path(base.folder, name, index)
        try:
            if source.stat().st_size != record[1]:
                break
            try:
                os.link(source, _part_path(tmp, name, index))
            except OSError:
                shutil.copy2(source, _part_path(tmp, name, index))
        except OSError:
            break
        parts.append(record)
        offset += rows_per_part
    starts = list(range(offset, frame.height, rows_per_part)) or ([] if parts else [0])  # [0]: keeps the schema
    for index, start in enumerate(starts, start=len(parts)):
        chunk = frame.slice(start, rows_per_part)
        path = _part_path(tmp, name, index)
        # Arrow IPC, uncompressed: read back whole, at a fraction of Parquet's cost. The
        # oldest Arrow layout copies each string into a new buffer: the string views of
        # polars share buffers with the raw text of other rows (maybe a rejected
        # identifier), which the newer layout would write out whole.
        chunk.write_ipc(path, compression="uncompressed", compat_level=pl.CompatLevel.oldest())
        parts.append([chunk.height, *_check(path)])
    return parts


def remove_leftovers(folder: Path) -> list[Path]:
    """The new and old state folders (``.<name>.<pid>.<random>``, ``.<name>.old.<pid>``) of
    runs killed while saving, when their process is gone: at a million episodes one is
    about 2 GB."""
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.(?:old\.)?(?P<pid>\d+)(?:\.|$)")
    removed = []
    try:
        entries = list(folder.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and owner_gone(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def load_state(folder: Path, identity: dict) -> SettledState | None:
    """The state in ``folder`` if it is made for ``identity`` (its tables are read later,
    :meth:`SettledState.table`), else None."""
    try:
        meta = json.loads((folder / "state.json").read_text())
        if any(meta.get(k) != v for k, v in identity.items()):
            return None
        parts = meta["parts"]
        if set(parts) != {f"{t}.{p}" for t in ("episodes", "sessions", "pain_scores") for p in TABLE_PARTS} | {
                "ragged", "counts"}:
            return None
        if not all(isinstance(r, list) and len(r) == 3 for records in parts.values() for r in records):
            return None
        counts = _read_part(folder, "counts", parts).to_numpy().astype(np.int64).reshape(-1, 3)
        files = meta["files"]
        if counts.shape[0] != len(files):
            return None
        accepted_parts = meta.get("accepted_parts")
        return SettledState(files=files, today=date.fromisoformat(meta["today"]),
                            ragged=_read_part(folder, "ragged", parts), counts=counts, folder=folder, parts=parts,
                            accepted_parts=accepted_parts if isinstance(accepted_parts, dict) else {})
    except (OSError, ValueError, KeyError, TypeError, StateUnreadable, pl.exceptions.PolarsError):
        return None


def _check(path: Path) -> list:
    """Length and CRC-32 of a part's file: a torn or altered part reads as no state."""
    crc, length = 0, 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
            length += len(block)
    return [length, crc]


def _read_part(folder: Path, name: str, parts: dict) -> pl.DataFrame:
    """A frame from its part files, each checked against its length and CRC-32 first.

    Parts are checked and read by two threads: the CRC, the file reads and polars' reading
    of the Arrow file (its strings converted to polars' own layout) all release the GIL,
    and one part at a time left a core idle through most of a weekly run's state read."""
    records = parts[name]

    def read(index: int) -> pl.DataFrame:
        rows, *check = records[index]
        path = _part_path(folder, name, index)
        if _check(path) != check:
            raise StateUnreadable(f"{path}: damaged")
        frame = pl.read_ipc(path)
        if frame.height != rows:
            raise StateUnreadable(f"{path}: {frame.height} rows, not {rows}")
        return frame

    try:
        if not records:
            raise StateUnreadable(f"{folder}: no part of {name}")
        if len(records) == 1:
            return read(0)
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            return pl.concat(list(pool.map(read, range(len(records)))), rechunk=False)
    except (OSError, KeyError, TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        raise StateUnreadable(f"{folder / name}: {exc}") from exc
